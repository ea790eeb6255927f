//! Clients to the local app: a bounded pool of HTTP/1.1 connections, or one shared HTTP/2
//! cleartext connection, per app port. The pool always dials the app's own address, so the
//! request keeps the authority the caller used.
//!
//! However many requests arrive (500 streams on one inbound connection, or many
//! connections), a port never has more than [`Limits::app_max_connections`] connections to
//! the app: a request takes an idle connection, else opens one while under the limit, else
//! queues until one is free, for at most [`Limits::app_queue_timeout`] (then 502, gRPC UNAVAILABLE, as any app failure). A request
//! body that stalls for [`Limits::body_timeout`] aborts its request and frees the
//! connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::http::{BoxError, ProxyBody, origin_form, releasing, streamed};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::model::Protocol;

/// How long dialling the app may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle HTTP/1 connection to the app is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a request could not be delivered to the app.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Dialling the app failed or timed out.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The app's address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Every connection to the app stayed busy for the queue timeout.
    #[error("all {max} connections to {addr} stayed busy for {waited:?}")]
    QueueTimeout {
        /// The app's address.
        addr: SocketAddr,
        /// The per-port connection limit.
        max: usize,
        /// How long the request queued.
        waited: Duration,
    },
    /// The HTTP exchange with the app failed (this includes a stalled request body).
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// Bounds of one port's pool, from [`Limits`].
#[derive(Debug, Clone, Copy)]
struct PoolLimits {
    max_connections: usize,
    queue_timeout: Duration,
    body_timeout: Duration,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
}

/// Clients to the local app, one pool per (port, protocol), created on first use.
#[derive(Debug)]
pub struct AppClients {
    host: IpAddr,
    limits: PoolLimits,
    metrics: Arc<Metrics>,
    clients: RwLock<HashMap<(u16, bool), AppClient>>,
}

impl AppClients {
    /// Clients to the app at `host`, bounded by `limits`; refusals are counted in
    /// `metrics`.
    pub fn new(host: IpAddr, limits: &Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            host,
            metrics,
            limits: PoolLimits {
                max_connections: limits.app_max_connections.max(1),
                queue_timeout: limits.app_queue_timeout,
                body_timeout: limits.body_timeout,
                keepalive_interval: limits.keepalive_interval,
                keepalive_timeout: limits.keepalive_timeout,
            },
            clients: RwLock::new(HashMap::new()),
        })
    }

    /// The app's address (opaque TCP connects there directly).
    pub fn host(&self) -> IpAddr {
        self.host
    }

    /// The client for `port`, speaking what `protocol` says.
    pub fn get(&self, port: u16, protocol: Protocol) -> AppClient {
        let http2 = protocol.is_http2();
        if let Some(c) = self
            .clients
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(port, http2))
        {
            return c.clone();
        }
        let client = AppClient(Arc::new(Pool {
            addr: SocketAddr::new(self.host, port),
            http2,
            limits: self.limits,
            metrics: self.metrics.clone(),
            permits: Arc::new(Semaphore::new(self.limits.max_connections)),
            idle: Mutex::new(Vec::new()),
            returned: Notify::new(),
            shared: tokio::sync::Mutex::new(None),
        }));
        self.clients
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry((port, http2))
            .or_insert(client)
            .clone()
    }
}

/// The body sent to the app: the caller's, bounded in how long it may stall.
type AppBody = Stalling<ProxyBody>;

/// A bounded pool of connections to one app port.
#[derive(Debug, Clone)]
pub struct AppClient(Arc<Pool>);

#[derive(Debug)]
struct Pool {
    addr: SocketAddr,
    http2: bool,
    limits: PoolLimits,
    metrics: Arc<Metrics>,
    /// One permit per open connection, held by its driver task until it closes.
    permits: Arc<Semaphore>,
    /// HTTP/1 connections waiting for a request, with when they became idle.
    idle: Mutex<Vec<(http1::SendRequest<AppBody>, Instant)>>,
    /// Woken when an HTTP/1 connection becomes idle.
    returned: Notify,
    /// The HTTP/2 connection every request of the port shares.
    shared: tokio::sync::Mutex<Option<http2::SendRequest<AppBody>>>,
}

impl AppClient {
    /// Sends `request` to the app, queueing while every connection is busy.
    pub async fn request(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, AppError> {
        let pool = &self.0;
        let (mut parts, body) = request.into_parts();
        if !pool.http2 {
            // HTTP/1 to an origin server: origin-form (the Host header names the authority).
            parts.uri = origin_form(&parts.uri);
        }
        let request = Request::from_parts(
            parts,
            Stalling::new(body, pool.limits.body_timeout, pool.metrics.clone()),
        );
        if pool.http2 {
            let mut sender = pool.http2_sender().await?;
            return Ok(sender.send_request(request).await?.map(streamed));
        }
        let mut sender = pool.http1_sender().await?;
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            // An idle connection the app closed meanwhile: the request never left, so it
            // goes once more, over another connection.
            Err(mut e) => match e.take_message() {
                Some(request) => {
                    sender = pool.http1_sender().await?;
                    sender.send_request(request).await?
                }
                None => return Err(e.into_error().into()),
            },
        };
        // The connection is free once the response body is done; then it goes back.
        let pool = self.0.clone();
        Ok(response.map(|body| releasing(body, Box::new(move || pool.give_back(sender)))))
    }
}

impl Pool {
    /// Returns a connection whose response has ended to the idle list. It takes the next
    /// request once hyper has seen the exchange end, which has almost always happened by
    /// the time the body's last frame is read; otherwise a task waits for it.
    fn give_back(self: Arc<Self>, sender: http1::SendRequest<AppBody>) {
        if sender.is_ready() {
            self.push_idle(sender);
            return;
        }
        tokio::spawn(async move {
            let mut sender = sender;
            if sender.ready().await.is_ok() {
                self.push_idle(sender);
            }
        });
    }

    fn push_idle(&self, sender: http1::SendRequest<AppBody>) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((sender, Instant::now()));
        self.returned.notify_one();
    }

    fn take_idle(&self) -> Option<http1::SendRequest<AppBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Newest first, so rarely used connections age out.
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    async fn http1_sender(self: &Arc<Self>) -> Result<http1::SendRequest<AppBody>, AppError> {
        let deadline = Instant::now() + self.limits.queue_timeout;
        loop {
            let notified = self.returned.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(sender) = self.take_idle() {
                return Ok(sender);
            }
            let permit = tokio::select! {
                p = self.permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    // The semaphore is never closed.
                    Err(_) => continue,
                },
                () = &mut notified => continue,
                () = tokio::time::sleep_until(deadline) => return Err(self.queue_timeout()),
            };
            let io = self.dial().await?;
            let (sender, conn) = http1::Builder::new().handshake(io).await?;
            spawn_driver(conn, permit, self.addr);
            return Ok(sender);
        }
    }

    async fn http2_sender(&self) -> Result<http2::SendRequest<AppBody>, AppError> {
        let mut shared = tokio::time::timeout(self.limits.queue_timeout, self.shared.lock())
            .await
            .map_err(|_| self.queue_timeout())?;
        if let Some(sender) = shared.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let permit = tokio::time::timeout(
            self.limits.queue_timeout,
            self.permits.clone().acquire_owned(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| self.queue_timeout())?;
        let io = self.dial().await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(self.limits.keepalive_interval)
            .keep_alive_timeout(self.limits.keepalive_timeout)
            .handshake(io)
            .await?;
        spawn_driver(conn, permit, self.addr);
        *shared = Some(sender.clone());
        Ok(sender)
    }

    fn queue_timeout(&self) -> AppError {
        self.metrics.app_refusal("queue-timeout");
        AppError::QueueTimeout {
            addr: self.addr,
            max: self.limits.max_connections,
            waited: self.limits.queue_timeout,
        }
    }

    async fn dial(&self) -> Result<TokioIo<TcpStream>, AppError> {
        let addr = self.addr;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))
            .and_then(|r| r)
            .map_err(|source| AppError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        Ok(TokioIo::new(tcp))
    }
}

/// Drives one app connection; its permit is given back when it closes.
fn spawn_driver<C, E>(conn: C, permit: OwnedSemaphorePermit, addr: SocketAddr)
where
    C: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(app = %addr, error = %e, "app connection closed");
        }
        drop(permit);
    });
}

pin_project_lite::pin_project! {
    /// A body that fails if its source stalls (no frame for `timeout` while the app waits
    /// for one), so a caller cannot hold an app connection by sending nothing.
    #[derive(Debug)]
    pub struct Stalling<B> {
        #[pin]
        inner: B,
        timeout: Duration,
        timer: Option<Pin<Box<Sleep>>>,
        metrics: Arc<Metrics>,
    }
}

impl<B> Stalling<B> {
    fn new(inner: B, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            timeout,
            timer: None,
            metrics,
        }
    }
}

/// A request body sent nothing for the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("request body stalled for {0:?}")]
pub struct BodyStalled(Duration);

impl<B> http_body::Body for Stalling<B>
where
    B: http_body::Body<Error = BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.timer = None;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                // The clock starts when the app asks and nothing is there.
                let timeout = *this.timeout;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.metrics.app_refusal("body-stalled");
                        Poll::Ready(Some(Err(BodyStalled(timeout).into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
