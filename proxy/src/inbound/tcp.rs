//! Opaque TCP on an inbound connection (ALPN `palisade-tcp`): the stream is authorized at
//! connection level before any byte reaches the app, and re-checked whenever the
//! configuration changes; a stream the new policies deny is closed ("late rejection").
//!
//! Only a port declared TCP is reached this way. A port declared HTTP, HTTP/2 or gRPC is
//! reached only as HTTP, where each request is authorized and rewritten (normalised path,
//! verified `x-forwarded-client-cert`); an opaque stream to it would hand the app whatever
//! bytes the caller chose, so it is refused and counted as a denial
//! (`tunnel-to-http-port`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ConnContext, Inbound, attrs, destination_label, target};
use crate::enforce::{self, Subject};
use crate::http::TUNNEL_TO_HTTP_PORT;
use crate::metrics::Direction;
use crate::model::{MeshView, Protocol};
use crate::netgate::{self, NetConn};

/// How long connecting to the app for an opaque TCP stream may take.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

// === impl Inbound: opaque TCP ===

impl Inbound {
    /// Serves an opaque TCP stream: connection-level authorization before any byte reaches
    /// the app, then bytes both ways until either side closes or a new configuration
    /// denies the stream.
    pub(super) async fn serve_tcp<S>(
        &self,
        mut stream: S,
        conn: &ConnContext,
        target_port: Option<u16>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut view_rx = self.view.clone();
        let Some(view) = view_rx.borrow_and_update().clone() else {
            tracing::debug!(peer = %conn.peer_addr, "inbound TCP refused: no configuration yet");
            return;
        };
        let port = match target(&view.workload, target_port) {
            Ok((port, Protocol::Tcp)) => port,
            Ok((port, _)) => {
                let destination = destination_label(&view, port);
                let subject = Subject {
                    direction: Direction::Inbound,
                    source: conn.peer_identity.as_ref(),
                    destination: &destination,
                    method: None,
                    path: None,
                };
                enforce::denial(
                    &self.metrics,
                    &subject,
                    TUNNEL_TO_HTTP_PORT,
                    None,
                    "DENY: opaque TCP to a port declared HTTP or gRPC",
                );
                let _ = stream.shutdown().await;
                return;
            }
            Err(e) => {
                tracing::info!(peer = %conn.peer_label, error = %e, "inbound TCP refused");
                return;
            }
        };
        let decision = view
            .authz
            .decide(&attrs(conn, port, None), view.settings.default_allow);
        self.observe(&view, conn, port, None, &decision);
        // NetworkPolicy admitted the connection at accept; this view may be newer.
        let net = NetConn::ingress(conn.peer_addr.ip(), conn.peer_identity.clone(), port);
        if !decision.allowed || netgate::admit(&self.metrics, &view, &net).is_err() {
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
        let net = NetConn::ingress(conn.peer_addr.ip(), conn.peer_identity.clone(), port);
        let netpol = net.decide(&view.netpol);
        if !netpol.allowed {
            netgate::record_denial(&self.metrics, view, &net, &netpol, true);
            return false;
        }
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
