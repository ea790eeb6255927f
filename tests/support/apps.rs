//! Upstream apps behind the sidecars: the shop's own apps, a counting app (an impostor must
//! receive no request) and a recording app that keeps what each request looked like on
//! arrival (so a test checks what the app got, not only what the caller was told).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use palisade_example_shop::FrontendConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What to run on an app port.
#[derive(Debug, Clone)]
pub enum App {
    /// One of the shop's apps by name (`search`, `payments`, `frontend`), via the same
    /// `serve_app` entry point `palisade up` uses; the frontend calls through `outbound`.
    Shop {
        /// App name.
        name: String,
        /// The local sidecar's outbound listener (used by the frontend only).
        outbound: SocketAddr,
    },
    /// Answers every request (HTTP/1.1 or h2c) with 200 and counts it.
    Counting(Arc<AtomicUsize>),
}

impl App {
    /// A shop app.
    pub fn shop(name: &str, outbound: SocketAddr) -> Self {
        App::Shop {
            name: name.to_owned(),
            outbound,
        }
    }
}

async fn bind(addr: SocketAddr) -> TcpListener {
    TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind app on {addr}: {e}"))
}

/// Binds `addr` and serves `app` until `shutdown`.
pub async fn start(addr: SocketAddr, app: App, shutdown: CancellationToken) {
    let listener = bind(addr).await;
    match app {
        App::Shop { name, outbound } => {
            tokio::spawn(async move {
                let frontend = FrontendConfig::new(outbound);
                if let Err(e) =
                    palisade_example_shop::serve_app(&name, listener, frontend, shutdown).await
                {
                    panic!("app {name} on {addr} failed: {e}");
                }
            });
        }
        App::Counting(count) => {
            let answer = move |_: &Request<Incoming>| {
                count.fetch_add(1, Ordering::SeqCst);
                &b"impostor app\n"[..]
            };
            tokio::spawn(serve_http(listener, shutdown, || {}, answer));
        }
    }
}

/// What a [`Recorder`] saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The method.
    pub method: Method,
    /// The request target as it arrived.
    pub uri: String,
    /// The headers as they arrived.
    pub headers: HeaderMap,
}

/// An app that answers 200 `recorded` to every HTTP/1.1 or h2c request and records it, and
/// counts the connections it accepted (an opaque stream that reached it shows up there too).
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    /// Binds `addr` and records until `shutdown`.
    pub async fn start(addr: SocketAddr, shutdown: CancellationToken) -> Self {
        let listener = bind(addr).await;
        let recorder = Recorder::default();
        let connections = recorder.connections.clone();
        let seen = recorder.seen.clone();
        let accepted = move || {
            connections.fetch_add(1, Ordering::SeqCst);
        };
        let answer = move |req: &Request<Incoming>| {
            seen.lock().expect("recorder lock").push(Seen {
                method: req.method().clone(),
                uri: req.uri().to_string(),
                headers: req.headers().clone(),
            });
            &b"recorded\n"[..]
        };
        tokio::spawn(serve_http(listener, shutdown, accepted, answer));
        recorder
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("recorder lock").clone()
    }
}

/// Accepts on `listener` until `shutdown`, calls `accepted` for every connection, and serves
/// each (HTTP/1.1 or h2c) by answering 200 with the body `answer` returns for the request.
async fn serve_http<A, F>(
    listener: TcpListener,
    shutdown: CancellationToken,
    accepted: A,
    answer: F,
) where
    A: Fn() + Send + 'static,
    F: Fn(&Request<Incoming>) -> &'static [u8] + Clone + Send + Sync + 'static,
{
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r { Ok(a) => a, Err(_) => continue },
        };
        accepted();
        let answer = answer.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let body = Bytes::from_static(answer(&req));
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}
