//! Inbound (15006): terminates mTLS from peer sidecars (a client certificate chaining to the
//! trust bundle is required), learns the target app port from the SNI, authorizes each
//! request, and forwards it to the app on the workload's own address, speaking what the
//! port speaks.
//!
//! Authorization is per request against the view current at that moment, so a policy push
//! applies to open connections at once (STYLE habit 6). With ALPN `palisade-tcp` the
//! connection is an opaque TCP stream: it is authorized at connection level before any byte
//! reaches the app, and re-checked whenever the configuration changes; a stream the new
//! policies deny is closed ("late rejection").

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use palisade_certs::{ALPN_H2, SpiffeId};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::app::AppClients;
use crate::authz::{Decision, HttpAttrs, RequestAttrs, normalized};
use crate::enforce::{self, Subject};
use crate::http::{Failure, ProxyBody, XFCC, is_grpc, streamed, strip_hop_by_hop};
use crate::metrics::{Direction, Metrics};
use crate::model::{MeshView, Protocol};
use crate::pool::port_from_sni;
use crate::tls::{ALPN_TCP, TlsState};

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the app for an opaque TCP stream may take.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Shared state of the inbound listener.
#[derive(Debug)]
pub struct Inbound {
    /// Current mesh view.
    pub view: watch::Receiver<Option<Arc<MeshView>>>,
    /// Current TLS material.
    pub tls: watch::Receiver<Option<Arc<TlsState>>>,
    /// Clients to the local app.
    pub apps: Arc<AppClients>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Whether responses carry `x-palisade-mtls`.
    pub debug_headers: bool,
    /// Whether every ALLOW decision is logged too (denials and audits always are).
    pub log_decisions: bool,
}

/// Response header describing the mTLS hop, when debug headers are on.
const MTLS_DEBUG: http::HeaderName = http::HeaderName::from_static("x-palisade-mtls");

/// What is known about one accepted connection.
#[derive(Debug)]
struct ConnContext {
    peer_identity: Option<SpiffeId>,
    peer_label: String,
    /// The caller's address.
    peer_addr: SocketAddr,
    /// The address the caller connected to.
    local_ip: Option<IpAddr>,
    /// The TLS server name the caller sent.
    sni: Option<String>,
    /// Target app port from SNI; `None` means "the workload's only port".
    target_port: Option<u16>,
    own_identity: SpiffeId,
    /// `x-palisade-mtls` value, when debug headers are on.
    debug: Option<HeaderValue>,
}

impl Inbound {
    /// Serves one accepted connection: mTLS handshake, then HTTP.
    pub async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        watcher: Watcher,
    ) {
        self.metrics.connection(Direction::Inbound);
        let local_ip = stream.local_addr().ok().map(|a| a.ip());
        let Some(tls) = self.tls.borrow().clone() else {
            tracing::debug!(%peer, "inbound connection refused: no certificate yet");
            return;
        };
        let accept = TlsAcceptor::from(tls.inbound()).accept(stream);
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.metrics.handshake_failure(Direction::Inbound);
                tracing::info!(%peer, error = %e, "inbound mTLS handshake refused");
                return;
            }
            Err(_) => {
                self.metrics.handshake_failure(Direction::Inbound);
                tracing::info!(%peer, "inbound mTLS handshake timed out");
                return;
            }
        };
        let (_, session) = stream.get_ref();
        let peer_identity = palisade_certs::tls::peer_identity(session.peer_certificates());
        let target_port = session.server_name().and_then(port_from_sni);
        let h2 = session.alpn_protocol() == Some(ALPN_H2);
        let tcp = session.alpn_protocol() == Some(ALPN_TCP);
        let sni = session.server_name().map(str::to_owned);
        let debug = self.debug_headers.then(|| {
            let version = session
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
                .replace("TLSv1_3", "TLSv1.3")
                .replace("TLSv1_2", "TLSv1.2");
            let cipher = session
                .negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str())
                .unwrap_or("unknown");
            let peer = peer_identity
                .as_ref()
                .map_or("none".to_owned(), |p| p.to_string());
            HeaderValue::try_from(format!("{version} {cipher} peer={peer}")).ok()
        });
        let ctx = Arc::new(ConnContext {
            debug: debug.flatten(),
            peer_label: peer_identity
                .as_ref()
                .map_or_else(|| "none".to_owned(), |id| id.to_string()),
            peer_identity,
            peer_addr: peer,
            local_ip,
            sni,
            target_port,
            own_identity: tls.credentials().identity().clone(),
        });
        if tcp {
            // The watcher is held for the stream's life: a drain waits for it, up to the
            // deadline.
            let _drain = watcher;
            self.serve_tcp(stream, &ctx).await;
            return;
        }
        let this = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let this = this.clone();
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(this.handle(req, &ctx).await) }
        });
        let io = TokioIo::new(stream);
        let result = if h2 {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(4 << 20)
                .max_concurrent_streams(1024)
                .serve_connection(io, service);
            watcher.watch(conn).await
        } else {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(io, service);
            watcher.watch(conn).await
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "inbound connection ended with an error");
        }
    }

    async fn handle(&self, req: Request<Incoming>, conn: &ConnContext) -> Response<ProxyBody> {
        let start = Instant::now();
        let grpc = is_grpc(req.headers());
        let response = match self.forward(req, conn).await {
            Ok(r) => r,
            Err(failure) => {
                // Denials were logged with their policy where they were decided.
                if !matches!(failure, Failure::Denied { .. }) {
                    tracing::info!(direction = "inbound", peer = %conn.peer_label, error = %failure, "request failed");
                }
                failure.into_response(grpc)
            }
        };
        self.metrics.request(
            Direction::Inbound,
            response.status().as_u16(),
            &conn.peer_label,
            start.elapsed().as_secs_f64(),
        );
        response
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        conn: &ConnContext,
    ) -> Result<Response<ProxyBody>, Failure> {
        let view = self.view.borrow().clone().ok_or(Failure::NotReady(
            "no configuration from the control plane yet",
        ))?;
        let (port, protocol) = target(&view, conn.target_port)?;
        self.authorize(&view, &req, port, conn)?;
        let request = to_app_request(req, protocol, conn)?;
        let response = self
            .apps
            .get(port, protocol)
            .request(request)
            .await
            .map_err(|e| Failure::AppUnavailable {
                port,
                reason: error_chain(&e),
            })?;
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(debug) = &conn.debug {
            parts.headers.insert(MTLS_DEBUG, debug.clone());
        }
        Ok(Response::from_parts(parts, streamed(body)))
    }
}

// === impl Inbound: authorization ===

impl Inbound {
    /// Decides one HTTP request; counts and logs denials and audits.
    fn authorize(
        &self,
        view: &MeshView,
        req: &Request<Incoming>,
        port: u16,
        conn: &ConnContext,
    ) -> Result<(), Failure> {
        let host = req
            .uri()
            .authority()
            .map(Authority::as_str)
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        let path = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path(), PathAndQuery::as_str);
        let http = HttpAttrs {
            method: req.method().as_str(),
            host,
            path,
            headers: req.headers(),
        };
        let decision = view
            .authz
            .decide(&attrs(conn, port, Some(http)), view.settings.default_allow);
        self.observe(view, conn, port, Some((http.method, path)), &decision);
        if decision.allowed {
            Ok(())
        } else {
            Err(Failure::Denied {
                by: decision.policy_label(),
                hide: view.settings.hide_denial_reasons,
            })
        }
    }

    /// Counts and logs a decision, building labels only when something is recorded.
    fn observe(
        &self,
        view: &MeshView,
        conn: &ConnContext,
        port: u16,
        http: Option<(&str, &str)>,
        decision: &Decision<&str>,
    ) {
        if decision.allowed && decision.audits.is_empty() && !self.log_decisions {
            return;
        }
        let destination = destination_label(view, port);
        let subject = Subject {
            direction: Direction::Inbound,
            source: conn.peer_identity.as_ref(),
            destination: &destination,
            method: http.map(|(m, _)| m),
            path: http.map(|(_, p)| p),
        };
        enforce::record(&self.metrics, self.log_decisions, &subject, decision);
    }

    /// Serves an opaque TCP stream: connection-level authorization before any byte reaches
    /// the app, then bytes both ways until either side closes or a new configuration
    /// denies the stream.
    async fn serve_tcp(&self, mut stream: TlsStream<TcpStream>, conn: &ConnContext) {
        let mut view_rx = self.view.clone();
        let Some(view) = view_rx.borrow_and_update().clone() else {
            tracing::debug!(peer = %conn.peer_addr, "inbound TCP refused: no configuration yet");
            return;
        };
        let port = match target(&view, conn.target_port) {
            Ok((port, _)) => port,
            Err(e) => {
                tracing::info!(peer = %conn.peer_label, error = %e, "inbound TCP refused");
                return;
            }
        };
        let decision = view
            .authz
            .decide(&attrs(conn, port, None), view.settings.default_allow);
        self.observe(&view, conn, port, None, &decision);
        if !decision.allowed {
            // Closed before a byte reached the app (CONTRACT); close_notify, then EOF.
            let _ = stream.shutdown().await;
            return;
        }
        let app_addr = SocketAddr::new(self.apps.host(), port);
        let mut app = match tokio::time::timeout(APP_CONNECT_TIMEOUT, TcpStream::connect(app_addr))
            .await
        {
            Ok(Ok(app)) => app,
            Ok(Err(e)) => {
                tracing::info!(peer = %conn.peer_label, app = %app_addr, error = %e, "inbound TCP: app unavailable");
                return;
            }
            Err(_) => {
                tracing::info!(peer = %conn.peer_label, app = %app_addr, "inbound TCP: app connect timed out");
                return;
            }
        };
        let _ = app.set_nodelay(true);
        {
            let copy = tokio::io::copy_bidirectional(&mut stream, &mut app);
            tokio::pin!(copy);
            loop {
                tokio::select! {
                    result = &mut copy => {
                        if let Err(e) = result {
                            tracing::debug!(peer = %conn.peer_label, error = %e, "inbound TCP stream ended with an error");
                        }
                        return;
                    }
                    changed = view_rx.changed() => {
                        if changed.is_err() {
                            // The proxy is stopping: finish the stream within the drain.
                            let _ = (&mut copy).await;
                            return;
                        }
                        let Some(view) = view_rx.borrow_and_update().clone() else {
                            continue;
                        };
                        if self.still_allowed(&view, conn, port) {
                            continue;
                        }
                        break;
                    }
                }
            }
        }
        let _ = stream.shutdown().await;
        let _ = app.shutdown().await;
    }

    /// Re-checks an open TCP stream after a configuration change; a denial is counted and
    /// logged as a late rejection.
    fn still_allowed(&self, view: &MeshView, conn: &ConnContext, port: u16) -> bool {
        let decision = view
            .authz
            .decide(&attrs(conn, port, None), view.settings.default_allow);
        if decision.allowed {
            return true;
        }
        let destination = destination_label(view, port);
        let subject = Subject {
            direction: Direction::Inbound,
            source: conn.peer_identity.as_ref(),
            destination: &destination,
            method: None,
            path: None,
        };
        let explain = format!(
            "{} (open connection closed after a policy change)",
            decision.explain()
        );
        enforce::denial(
            &self.metrics,
            &subject,
            &decision.policy_label(),
            decision.rule(),
            &explain,
        );
        false
    }
}

/// The app port a connection is for (from SNI, or the workload's only port) and its protocol.
fn target(view: &MeshView, from_sni: Option<u16>) -> Result<(u16, Protocol), Failure> {
    let port = match from_sni {
        Some(p) => p,
        None if view.workload.ports.len() == 1 => view
            .workload
            .ports
            .keys()
            .next()
            .copied()
            .ok_or(Failure::UnknownPort(0))?,
        None => return Err(Failure::UnknownPort(0)),
    };
    let protocol = *view
        .workload
        .ports
        .get(&port)
        .ok_or(Failure::UnknownPort(port))?;
    Ok((port, protocol))
}

fn attrs<'a>(conn: &'a ConnContext, port: u16, http: Option<HttpAttrs<'a>>) -> RequestAttrs<'a> {
    RequestAttrs {
        source: conn.peer_identity.as_ref(),
        source_ip: Some(conn.peer_addr.ip()),
        destination_ip: conn.local_ip,
        destination_port: port,
        sni: conn.sni.as_deref(),
        http,
    }
}

/// `<workload namespace>/<workload name>:<port>`, the metric and log `destination`.
fn destination_label(view: &MeshView, port: u16) -> String {
    format!("{}/{}:{port}", view.workload.namespace, view.workload.name)
}

/// Rewrites a request from a peer for the app: hop-by-hop headers removed, the caller's
/// identity in `x-forwarded-client-cert` (any value the caller sent is replaced), and the
/// version the app port speaks.
fn to_app_request(
    req: Request<Incoming>,
    protocol: Protocol,
    conn: &ConnContext,
) -> Result<Request<ProxyBody>, Failure> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(XFCC);
    if let Some(peer) = &conn.peer_identity
        && let Ok(value) = HeaderValue::try_from(format!("By={};URI={}", conn.own_identity, peer))
    {
        parts.headers.insert(XFCC, value);
    }
    let authority = match parts.uri.authority() {
        Some(a) => a.clone(),
        None => {
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            host.parse::<Authority>()
                .map_err(|_| Failure::BadAuthority(host.to_owned()))?
        }
    };
    let mut uri = parts.uri.clone().into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority.clone());
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    // The app gets the path that was authorized (as Istio's sidecar does), so it cannot
    // read `/a/../admin` or `/%61dmin` differently from the policy.
    if let Some(pq) = &uri.path_and_query
        && let Ok(Cow::Owned(path)) = normalized(pq.as_str())
    {
        let rebuilt = match pq.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        if let Ok(pq) = PathAndQuery::try_from(rebuilt) {
            uri.path_and_query = Some(pq);
        }
    }
    parts.uri = Uri::from_parts(uri).map_err(|_| Failure::BadAuthority(authority.to_string()))?;
    if protocol.is_http2() {
        parts.version = Version::HTTP_2;
        parts.headers.remove(header::HOST);
    } else {
        parts.version = Version::HTTP_11;
        if !parts.headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, v);
        }
    }
    Ok(Request::from_parts(parts, streamed(body)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
