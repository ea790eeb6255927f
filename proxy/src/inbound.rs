//! Inbound (15006): terminates mTLS from peer sidecars (a client certificate chaining to the
//! trust bundle is required), learns the target app port from the SNI, and forwards each
//! request to the app on the workload's own address, speaking what the port speaks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use palisade_certs::{ALPN_H2, SpiffeId};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::app::AppClients;
use crate::http::{Failure, ProxyBody, XFCC, is_grpc, streamed, strip_hop_by_hop};
use crate::metrics::{Direction, Metrics};
use crate::model::{MeshView, Protocol};
use crate::pool::port_from_sni;
use crate::tls::TlsState;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// Response header describing the mTLS hop, when debug headers are on.
const MTLS_DEBUG: http::HeaderName = http::HeaderName::from_static("x-palisade-mtls");

/// What is known about one accepted connection.
#[derive(Debug)]
struct ConnContext {
    peer_identity: Option<SpiffeId>,
    peer_label: String,
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
            target_port,
            own_identity: tls.credentials().identity().clone(),
        });
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
                tracing::info!(direction = "inbound", peer = %conn.peer_label, error = %failure, "request failed");
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
        let port = match conn.target_port {
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
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
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
