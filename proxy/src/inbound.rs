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
//!
//! **Plaintext (MeshConfig `mtls.mode: PERMISSIVE` only).** The first byte of every accepted
//! connection is peeked (within the handshake timeout): `0x16`, a TLS handshake record, takes
//! the mTLS path above. Anything else is plaintext:
//! - if the current view's mode is PERMISSIVE, it is served as HTTP/1.1 or h2c (prior
//!   knowledge) with no verified identity: authorization sees `source: None` (the
//!   evaluator's fail-closed rule), the app gets no `x-forwarded-client-cert` (any the caller
//!   sent is removed), and metrics and logs name the caller `unauthenticated`. The target
//!   app port is chosen per request (see `plaintext_target`). Opaque (non-HTTP) plaintext
//!   is not supported: such a caller gets an HTTP parse error and a closed connection.
//! - otherwise (STRICT, or no configuration yet) the connection is closed before any byte
//!   reaches the app, counted in `palisade_proxy_inbound_plaintext_refused_total{stage=
//!   "connection"}` and logged at INFO with the caller's address.
//!
//! A switch back to STRICT applies to new connections at once, and to plaintext connections
//! opened earlier from their next request on: the mode is checked per request (one field
//! read of the current view), and such a request is refused with 403
//! (`x-palisade-denied-by: mtls-strict`, gRPC: `grpc-status: 7`), never forwarded, counted
//! with `stage="request"`; HTTP/1 responses carry `connection: close`, so the caller
//! reconnects and meets the connection-level refusal. STRICT is never weakened by a
//! connection opened before it.

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
use crate::enforce::{self, Subject, UNAUTHENTICATED};
use crate::http::{Failure, ProxyBody, XFCC, is_grpc, streamed, strip_hop_by_hop};
use crate::metrics::{Direction, Metrics, PlaintextStage};
use crate::model::{LocalWorkload, MeshView, MtlsMode, Protocol};
use crate::pool::port_from_sni;
use crate::tls::{ALPN_TCP, TlsState};

/// How long a client may take to send its first byte and complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the app for an opaque TCP stream may take.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first byte of a TLS connection: a handshake record (RFC 8446 section 5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

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

/// How a connection reached the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// mTLS from a peer sidecar. `target_port` comes from SNI; `None` means "the workload's
    /// only port".
    Mtls { target_port: Option<u16> },
    /// Plaintext, accepted in PERMISSIVE mode; the target port is chosen per request.
    Plaintext,
}

/// What is known about one accepted connection.
#[derive(Debug)]
struct ConnContext {
    transport: Transport,
    /// The caller's verified identity; `None` for a plaintext caller.
    peer_identity: Option<SpiffeId>,
    /// The `peer` label of request metrics and logs: the identity, or `unauthenticated`.
    peer_label: String,
    /// The caller's address.
    peer_addr: SocketAddr,
    /// The address the caller connected to.
    local_ip: Option<IpAddr>,
    /// The TLS server name the caller sent.
    sni: Option<String>,
    /// The `x-forwarded-client-cert` the app gets; only a verified caller has one.
    xfcc: Option<HeaderValue>,
    /// `x-palisade-mtls` value, when debug headers are on.
    debug: Option<HeaderValue>,
}

impl Inbound {
    /// Serves one accepted connection: by its first byte, mTLS (handshake, then HTTP or an
    /// opaque stream) or, in PERMISSIVE mode only, plaintext HTTP.
    pub async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        watcher: Watcher,
    ) {
        self.metrics.connection(Direction::Inbound);
        // One deadline for the first byte and the whole TLS handshake.
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
            Ok(Ok(0)) => {
                tracing::debug!(%peer, "inbound connection closed before its first byte");
            }
            Ok(Ok(_)) if first[0] == TLS_HANDSHAKE_RECORD => {
                self.serve_mtls(stream, peer, deadline, watcher).await;
            }
            Ok(Ok(_)) => self.serve_plaintext(stream, peer, watcher).await,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "inbound connection failed before its first byte");
            }
            Err(_) => {
                // Nothing arrived: as before plaintext existed, a handshake that timed out.
                self.metrics.handshake_failure(Direction::Inbound);
                tracing::info!(%peer, "inbound mTLS handshake timed out");
            }
        }
    }

    /// mTLS handshake (by `deadline`), then HTTP or an opaque TCP stream by ALPN.
    async fn serve_mtls(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        deadline: Instant,
        watcher: Watcher,
    ) {
        let local_ip = stream.local_addr().ok().map(|a| a.ip());
        let Some(tls) = self.tls.borrow().clone() else {
            tracing::debug!(%peer, "inbound connection refused: no certificate yet");
            return;
        };
        let accept = TlsAcceptor::from(tls.inbound()).accept(stream);
        let stream = match tokio::time::timeout_at(deadline, accept).await {
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
        // Computed once per connection; the app never sees a caller-supplied value.
        let own_identity = tls.credentials().identity();
        let xfcc = peer_identity
            .as_ref()
            .and_then(|peer| HeaderValue::try_from(format!("By={own_identity};URI={peer}")).ok());
        let ctx = Arc::new(ConnContext {
            transport: Transport::Mtls { target_port },
            peer_label: peer_identity
                .as_ref()
                .map_or_else(|| UNAUTHENTICATED.to_owned(), |id| id.to_string()),
            peer_identity,
            peer_addr: peer,
            local_ip,
            sni,
            xfcc,
            debug: debug.flatten(),
        });
        if tcp {
            // The watcher is held for the stream's life: a drain waits for it, up to the
            // deadline.
            let _drain = watcher;
            self.serve_tcp(stream, &ctx, target_port).await;
            return;
        }
        let io = TokioIo::new(stream);
        let service = self.service(ctx);
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

    /// A plaintext connection: served as HTTP/1.1 or h2c if the current view is PERMISSIVE,
    /// else closed before any byte reaches the app.
    async fn serve_plaintext(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        watcher: Watcher,
    ) {
        let mode = self
            .view
            .borrow()
            .as_ref()
            .map(|view| view.settings.mtls_mode);
        if mode != Some(MtlsMode::Permissive) {
            let reason = match mode {
                None => "no configuration yet",
                Some(_) => "the mesh mTLS mode is STRICT",
            };
            self.metrics.plaintext_refused(PlaintextStage::Connection);
            tracing::info!(%peer, reason, "inbound plaintext connection refused");
            // Dropping the socket with the caller's bytes unread closes it (RST on Linux).
            return;
        }
        let debug = self
            .debug_headers
            .then(|| HeaderValue::from_static("plaintext peer=unauthenticated"));
        let ctx = Arc::new(ConnContext {
            transport: Transport::Plaintext,
            peer_identity: None,
            peer_label: UNAUTHENTICATED.to_owned(),
            peer_addr: peer,
            local_ip: stream.local_addr().ok().map(|a| a.ip()),
            sni: None,
            xfcc: None,
            debug,
        });
        let io = TokioIo::new(stream);
        let service = self.service(ctx);
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        builder
            .http2()
            .timer(TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_concurrent_streams(1024);
        let conn = builder.serve_connection(io, service);
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(%peer, error = %e, "inbound plaintext connection ended with an error");
        }
    }

    /// The per-request service of one connection.
    fn service(
        self: Arc<Self>,
        ctx: Arc<ConnContext>,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<ProxyBody>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
    > + Clone {
        hyper::service::service_fn(move |req| {
            let this = self.clone();
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(this.handle(req, &ctx).await) }
        })
    }

    async fn handle(&self, req: Request<Incoming>, conn: &ConnContext) -> Response<ProxyBody> {
        let start = Instant::now();
        let grpc = is_grpc(req.headers());
        let version = req.version();
        let response = match self.forward(req, conn).await {
            Ok(r) => r,
            Err(failure) => {
                // Denials were logged with their policy where they were decided, plaintext
                // refusals with the caller's address.
                if !matches!(failure, Failure::Denied { .. } | Failure::PlaintextRefused) {
                    tracing::info!(direction = "inbound", peer = %conn.peer_label, error = %failure, "request failed");
                }
                let close =
                    matches!(failure, Failure::PlaintextRefused) && version < Version::HTTP_2;
                let mut response = failure.into_response(grpc);
                if close {
                    // The caller reconnects and is refused at connection level.
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                response
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
        let (port, protocol) = match conn.transport {
            Transport::Mtls { target_port } => target(&view.workload, target_port)?,
            Transport::Plaintext => {
                // A connection opened in PERMISSIVE mode gets nothing once the mesh is STRICT.
                if view.settings.mtls_mode != MtlsMode::Permissive {
                    self.metrics.plaintext_refused(PlaintextStage::Request);
                    tracing::info!(
                        peer = %conn.peer_addr,
                        reason = "the mesh mTLS mode is STRICT",
                        "inbound plaintext request refused"
                    );
                    return Err(Failure::PlaintextRefused);
                }
                plaintext_target(&view.workload, authority_port(&req))?
            }
        };
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
    async fn serve_tcp(
        &self,
        mut stream: TlsStream<TcpStream>,
        conn: &ConnContext,
        target_port: Option<u16>,
    ) {
        let mut view_rx = self.view.clone();
        let Some(view) = view_rx.borrow_and_update().clone() else {
            tracing::debug!(peer = %conn.peer_addr, "inbound TCP refused: no configuration yet");
            return;
        };
        let port = match target(&view.workload, target_port) {
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

/// The app port an mTLS connection is for (from SNI, or the workload's only port) and its
/// protocol.
fn target(workload: &LocalWorkload, from_sni: Option<u16>) -> Result<(u16, Protocol), Failure> {
    let port = match from_sni {
        Some(p) => p,
        None if workload.ports.len() == 1 => workload
            .ports
            .keys()
            .next()
            .copied()
            .ok_or(Failure::UnknownPort(0))?,
        None => return Err(Failure::UnknownPort(0)),
    };
    let protocol = *workload
        .ports
        .get(&port)
        .ok_or(Failure::UnknownPort(port))?;
    Ok((port, protocol))
}

/// The app port a plaintext request is for: a plaintext caller sends no SNI, so the
/// workload's only port if it has exactly one, else the port of the request's authority
/// (`:authority` or `Host`) if it is one of the workload's ports; anything else is
/// [`Failure::UnknownPort`] (404).
///
/// With transparent capture (`palisade init`'s iptables REDIRECT) the connection's original
/// destination (`SO_ORIGINAL_DST`) names the port the caller dialled; once the inbound
/// listener reads it, it should take precedence over the authority here.
fn plaintext_target(
    workload: &LocalWorkload,
    authority_port: Option<u16>,
) -> Result<(u16, Protocol), Failure> {
    if workload.ports.len() == 1 {
        return target(workload, None);
    }
    target(
        workload,
        Some(authority_port.ok_or(Failure::UnknownPort(0))?),
    )
}

/// The port of a request's authority: the URI's (HTTP/2 `:authority`, absolute form), else
/// the `Host` header's.
fn authority_port<B>(req: &Request<B>) -> Option<u16> {
    if let Some(authority) = req.uri().authority() {
        return authority.port_u16();
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<Authority>().ok())
        .and_then(|a| a.port_u16())
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
/// verified identity in `x-forwarded-client-cert` (any value the caller sent is removed, and
/// a plaintext caller gets none), and the version the app port speaks.
fn to_app_request(
    req: Request<Incoming>,
    protocol: Protocol,
    conn: &ConnContext,
) -> Result<Request<ProxyBody>, Failure> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(XFCC);
    if let Some(xfcc) = &conn.xfcc {
        parts.headers.insert(XFCC, xfcc.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(ports: &[(u16, Protocol)]) -> LocalWorkload {
        LocalWorkload {
            name: "search".into(),
            namespace: "shop".into(),
            identity: SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/search")
                .unwrap_or_else(|e| panic!("{e}")),
            labels: Default::default(),
            ports: ports.iter().copied().collect(),
        }
    }

    fn port_of(result: Result<(u16, Protocol), Failure>) -> Result<u16, u16> {
        match result {
            Ok((port, _)) => Ok(port),
            Err(Failure::UnknownPort(p)) => Err(p),
            Err(other) => panic!("unexpected failure {other}"),
        }
    }

    #[test]
    fn a_plaintext_request_goes_to_the_only_port_whatever_its_authority_says() {
        let one = workload(&[(8080, Protocol::Http1)]);
        assert_eq!(port_of(plaintext_target(&one, None)), Ok(8080));
        // A Service port in the Host header (80 → targetPort 8080) still reaches the app.
        assert_eq!(port_of(plaintext_target(&one, Some(80))), Ok(8080));
    }

    #[test]
    fn with_several_ports_the_authority_port_must_be_one_of_them() {
        let two = workload(&[(8080, Protocol::Http1), (9090, Protocol::Grpc)]);
        assert_eq!(port_of(plaintext_target(&two, Some(9090))), Ok(9090));
        assert_eq!(port_of(plaintext_target(&two, Some(8080))), Ok(8080));
        assert_eq!(port_of(plaintext_target(&two, Some(80))), Err(80));
        assert_eq!(port_of(plaintext_target(&two, None)), Err(0));
        assert_eq!(port_of(plaintext_target(&workload(&[]), Some(80))), Err(80));
    }

    #[test]
    fn the_authority_port_comes_from_the_uri_then_the_host_header() {
        let req = |uri: &str, host: Option<&str>| {
            let mut b = Request::get(uri);
            if let Some(h) = host {
                b = b.header(header::HOST, h);
            }
            b.body(()).unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(
            authority_port(&req("/", Some("search.shop:8080"))),
            Some(8080)
        );
        assert_eq!(authority_port(&req("/", Some("10.0.0.1:9090"))), Some(9090));
        assert_eq!(authority_port(&req("/", Some("[::1]:81"))), Some(81));
        assert_eq!(authority_port(&req("/", Some("search.shop"))), None);
        assert_eq!(authority_port(&req("/", None)), None);
        assert_eq!(authority_port(&req("/", Some("bad host:1"))), None);
        assert_eq!(
            authority_port(&req("http://search.shop:7000/", Some("search.shop:8080"))),
            Some(7000)
        );
    }
}
