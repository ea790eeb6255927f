//! Connections the capture rules redirected to the outbound port: the app dialled an
//! address, knowing nothing of the mesh, and that address (the original destination)
//! decides where the connection goes.
//!
//! - A mesh destination (a Service's cluster IP and port, or an endpoint's workload address
//!   and port) goes to that Service's sidecars over mTLS. A port declared TCP (or another
//!   opaque protocol) is spliced at once into an mTLS stream (ALPN `palisade-tcp`), with no
//!   detection wait, so server-speaks-first protocols work; an HTTP or gRPC port must carry
//!   HTTP (anything else is refused: opaque tunnels go only to ports declared TCP).
//! - Anything else is egress. ALLOW_ANY passes it through untouched. Under REGISTRY_ONLY an
//!   EgressPolicy must allow it: by the name the bytes carry (the Host of plain HTTP, the SNI
//!   of the app's own TLS, read from its ClientHello without terminating it) or, for traffic
//!   that carries no name, by address (`ipBlocks`). A named destination is connected to at
//!   an address its name resolves to (the one the app dialled if it is among them), so a
//!   forged SNI or Host cannot carry bytes to an address the name does not have. Refusals
//!   are closed before any byte leaves, counted and logged.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{CapturedTarget, EXTERNAL_CONNECT_TIMEOUT, Outbound, egress_by_name};
use crate::detect::{self, Prefixed, Protocol as Detected};
use crate::metrics::{CaptureRefusal, Direction};
use crate::model::{MeshView, OutboundPolicy, Protocol, Route};

/// How long resolving an allowed name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

// === impl Outbound: captured connections ===

impl Outbound {
    /// Serves one captured connection by its original destination.
    pub(super) async fn serve_captured(
        self: Arc<Self>,
        stream: TcpStream,
        original: SocketAddr,
        watcher: Watcher,
    ) {
        self.metrics.captured(Direction::Outbound);
        let Some(view) = self.view.borrow().clone() else {
            tracing::info!(destination = %original, "captured connection refused: no configuration yet");
            return;
        };
        match view.services.by_address(original).cloned() {
            Some(route) => {
                self.captured_to_mesh(stream, &view, route, original, watcher)
                    .await
            }
            None => self.captured_egress(stream, &view, original, watcher).await,
        }
    }

    /// To a mesh Service: opaque ports spliced into mTLS at once, HTTP ports served as HTTP.
    async fn captured_to_mesh(
        self: Arc<Self>,
        mut stream: TcpStream,
        view: &MeshView,
        route: Arc<Route>,
        original: SocketAddr,
        watcher: Watcher,
    ) {
        if route.protocol == Protocol::Tcp {
            // Refused (counted, logged) before the peer sidecar is dialled.
            let Ok((key, endpoint)) = self.pick_peer(view, &route) else {
                return;
            };
            match self.pool.connect_tcp(&key).await {
                Ok(upstream) => {
                    let _drain = watcher;
                    let revoked = self.netpol_revoked(endpoint.proxy_addr.ip(), route.target_port);
                    pipe(stream, upstream, BytesMut::new(), original, revoked).await;
                }
                Err(e) => {
                    let failure = self.peer_failure(endpoint, e);
                    tracing::info!(destination = %original, error = %failure, "captured TCP connection failed");
                }
            }
            return;
        }
        let (detection, prefix) = match detect::detect(&mut stream, self.detect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(destination = %original, error = %e, "captured connection failed during detection");
                return;
            }
        };
        self.metrics.detection(Direction::Outbound, &detection);
        match detection.protocol {
            Detected::Http1 | Detected::Http2 => {
                let stream = Prefixed::new(prefix, stream);
                self.serve_http(stream, Some(CapturedTarget::Mesh(route)), watcher)
                    .await;
            }
            other => {
                self.metrics
                    .capture_refused(Direction::Outbound, CaptureRefusal::NotHttp);
                tracing::info!(
                    destination = %original,
                    service = %route.service,
                    detected = other.label(),
                    "captured connection refused: the port is declared HTTP, the app sent something else"
                );
            }
        }
    }

    /// Outside the mesh: by the outbound policy, then EgressPolicy by name or address.
    async fn captured_egress(
        self: Arc<Self>,
        mut stream: TcpStream,
        view: &MeshView,
        original: SocketAddr,
        watcher: Watcher,
    ) {
        let port = original.port();
        // An address allowance (or ALLOW_ANY) needs no look at the bytes, so
        // server-speaks-first protocols pass without a detection wait.
        let by_address = match view.settings.outbound_policy {
            OutboundPolicy::AllowAny => Some(super::ALLOW_ANY),
            OutboundPolicy::RegistryOnly => view.egress.allows_address(original.ip(), port),
        };
        if by_address.is_some() {
            let destination = original.to_string();
            if self
                .egress(view, by_address, &destination, None, None)
                .is_ok()
                && self.netpol_address(view, original.ip(), port).is_ok()
            {
                let _drain = watcher;
                self.pass_through(stream, original, BytesMut::new(), original)
                    .await;
            }
            return;
        }
        let (detection, prefix) = match detect::detect(&mut stream, self.detect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(destination = %original, error = %e, "captured connection failed during detection");
                return;
            }
        };
        self.metrics.detection(Direction::Outbound, &detection);
        match detection.protocol {
            // Decided per request, by each request's Host.
            Detected::Http1 | Detected::Http2 => {
                let stream = Prefixed::new(prefix, stream);
                self.serve_http(stream, Some(CapturedTarget::External(original)), watcher)
                    .await;
            }
            Detected::Tls { sni: Some(name) } => {
                let destination = format!("{name}:{port}");
                let allowed_by = egress_by_name(view, &name, port);
                if self
                    .egress(view, allowed_by, &destination, None, None)
                    .is_err()
                {
                    return;
                }
                let Some(target) = self.resolve_allowed(&name, original).await else {
                    return;
                };
                if self.netpol_address(view, target.ip(), port).is_err() {
                    return;
                }
                let _drain = watcher;
                self.pass_through(stream, target, prefix, original).await;
            }
            Detected::Tls { sni: None } | Detected::Opaque => {
                // No name to match, and the address matched no `ipBlocks` above.
                let destination = original.to_string();
                let _ = self.egress(view, None, &destination, None, None);
            }
        }
    }

    /// Where an allowed name is connected to: the address the app dialled if the name has
    /// it, else the name's first address. `None` (counted, logged) if it has none.
    async fn resolve_allowed(&self, name: &str, original: SocketAddr) -> Option<SocketAddr> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Some(SocketAddr::new(ip, original.port()));
        }
        let answers: Vec<SocketAddr> = match tokio::time::timeout(
            RESOLVE_TIMEOUT,
            tokio::net::lookup_host((name, original.port())),
        )
        .await
        {
            Ok(Ok(found)) => found.collect(),
            Ok(Err(_)) | Err(_) => Vec::new(),
        };
        let dialled = original.ip().to_canonical();
        if let Some(same) = answers.iter().find(|a| a.ip().to_canonical() == dialled) {
            return Some(*same);
        }
        match answers.first() {
            Some(first) => {
                tracing::info!(
                    name,
                    dialled = %original,
                    connecting = %first,
                    "the address the app dialled is not one of the name's; connecting to the name's own"
                );
                Some(*first)
            }
            None => {
                self.metrics
                    .capture_refused(Direction::Outbound, CaptureRefusal::Unresolvable);
                tracing::info!(name, dialled = %original, "captured connection refused: the allowed name does not resolve");
                None
            }
        }
    }

    /// Connects to `target` outside the mesh and copies bytes both ways, the bytes detection
    /// read first.
    async fn pass_through(
        &self,
        app: TcpStream,
        target: SocketAddr,
        prefix: BytesMut,
        original: SocketAddr,
    ) {
        let upstream = match tokio::time::timeout(
            EXTERNAL_CONNECT_TIMEOUT,
            TcpStream::connect(target),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::info!(destination = %target, error = %e, "egress connection failed");
                return;
            }
            Err(_) => {
                tracing::info!(destination = %target, "egress connection timed out");
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        let revoked = self.netpol_revoked(target.ip(), target.port());
        pipe(app, upstream, prefix, original, revoked).await;
    }
}

/// Copies bytes between the app and `upstream` until either side closes, or `revoked`
/// resolves (NetworkPolicy no longer allows the stream: both sides are dropped); `prefix`
/// (bytes already read from the app) goes first.
async fn pipe<A, U>(
    mut app: A,
    mut upstream: U,
    prefix: BytesMut,
    original: SocketAddr,
    revoked: impl Future<Output = ()>,
) where
    A: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    if !prefix.is_empty()
        && let Err(e) = upstream.write_all(&prefix).await
    {
        tracing::debug!(destination = %original, error = %e, "captured stream ended before its first bytes left");
        return;
    }
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut app, &mut upstream) => match r {
            Ok((sent, received)) => {
                tracing::debug!(destination = %original, sent, received, "captured stream closed")
            }
            Err(e) => {
                tracing::debug!(destination = %original, error = %e, "captured stream ended with an error")
            }
        },
        () = revoked => {
            tracing::debug!(destination = %original, "captured stream closed: NetworkPolicy no longer allows it")
        }
    }
}
