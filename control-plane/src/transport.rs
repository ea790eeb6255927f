//! The gRPC listener's TLS: accept, handshake off the accept loop, hand tonic a stream whose
//! connect info carries the verified client identity, and keep the serving certificate fresh.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_certs::tls::{ClientAuth, Credentials, server_config};
use palisade_certs::{ActiveCa, CaError, CertificateAuthority, SpiffeId, TlsError};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected;

use crate::index::Published;
use crate::metrics::Metrics;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Retry delay after a failed renewal of the serving certificate.
const RENEW_RETRY: Duration = Duration::from_secs(30);
/// Shortest wait between renewals, whatever the schedule says.
const MIN_RENEW_DELAY: Duration = Duration::from_secs(1);

/// What a gRPC handler knows about the connection: read it from
/// `request.extensions().get::<PeerInfo>()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The SPIFFE ID of the client certificate, verified against the trust bundle during
    /// the handshake; `None` when the client presented none.
    pub identity: Option<SpiffeId>,
}

/// A server-side TLS connection with its peer information computed once.
pub(crate) struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    /// Its places under the connection caps, given back when tonic drops the connection.
    _slots: ConnectionSlots,
}

/// Caps on what clients of the gRPC listener can hold before they prove anything: the port
/// is reachable without a certificate, so every count an outsider can grow is bounded here.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimits {
    /// Open connections, handshaking ones included; one more is closed at once.
    connections: Arc<Semaphore>,
    /// Connections whose client presented no certificate (bootstrap `Certify` only); one
    /// more is closed after its handshake. Kept below `connections`, so proxies holding a
    /// mesh certificate keep room when certificate-less clients fill theirs.
    anonymous: Arc<Semaphore>,
    /// TLS handshakes in progress; at the cap the listener stops accepting until one ends,
    /// so further clients wait in the kernel's backlog instead of in memory.
    handshakes: Arc<Semaphore>,
    /// A client that has not finished its handshake by then is dropped, so half-open
    /// connections cannot pile up.
    handshake_timeout: Duration,
}

impl ConnectionLimits {
    /// The caps, from the configured counts.
    pub fn new(
        connections: usize,
        anonymous: usize,
        handshakes: usize,
        handshake_timeout: Duration,
    ) -> Self {
        // `Semaphore::new` panics past its maximum: a huge flag value means "no limit".
        let permits = |n: usize| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)));
        Self {
            connections: permits(connections),
            anonymous: permits(anonymous),
            handshakes: permits(handshakes.max(1)),
            handshake_timeout,
        }
    }
}

/// The permits a connection holds; dropping it frees them.
struct ConnectionSlots {
    _connection: OwnedSemaphorePermit,
    _anonymous: Option<OwnedSemaphorePermit>,
    metrics: Arc<Metrics>,
}

impl Drop for ConnectionSlots {
    fn drop(&mut self) {
        self.metrics.grpc_connection_closed();
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts TCP connections and completes TLS handshakes, each in its own task, sending
/// finished connections to tonic. New handshakes use the latest server configuration.
/// Connections over the caps of `limits` are closed and counted.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: watch::Receiver<Arc<ServerConfig>>,
    incoming: mpsc::Sender<io::Result<TlsConnection>>,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        // Waiting here leaves further clients in the kernel's bounded backlog.
        let handshake = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = Arc::clone(&limits.handshakes).acquire_owned() => match permit {
                Ok(p) => p,
                // Never closed; stop accepting if it were.
                Err(_) => return,
            },
        };
        let (tcp, remote_addr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC listener: accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                    }
                }
            },
        };
        let Ok(connection) = Arc::clone(&limits.connections).try_acquire_owned() else {
            // Dropping the socket closes it: the client sees the refusal at once.
            metrics.grpc_connection_refused("connection_limit");
            tracing::debug!(peer = %remote_addr, "gRPC connection refused: connection limit reached");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.borrow()));
        let incoming = incoming.clone();
        let shutdown = shutdown.clone();
        let limits = limits.clone();
        let metrics = Arc::clone(&metrics);
        tracker.spawn(async move {
            let handshake_result =
                tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = handshake_result => match result {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %remote_addr, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        metrics.grpc_connection_refused("handshake_timeout");
                        tracing::debug!(peer = %remote_addr, "TLS handshake timed out");
                        return;
                    }
                },
            };
            drop(handshake);
            let identity =
                palisade_certs::tls::peer_identity(stream.get_ref().1.peer_certificates());
            let anonymous = if identity.is_none() {
                match Arc::clone(&limits.anonymous).try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        metrics.grpc_connection_refused("anonymous_limit");
                        tracing::debug!(
                            peer = %remote_addr,
                            "gRPC connection without a client certificate refused: limit reached"
                        );
                        return;
                    }
                }
            } else {
                None
            };
            metrics.grpc_connection_opened();
            let slots = ConnectionSlots {
                _connection: connection,
                _anonymous: anonymous,
                metrics,
            };
            let info = PeerInfo {
                remote_addr,
                identity,
            };
            // Fails only once tonic has stopped accepting; the connection is then dropped.
            let _ = incoming
                .send(Ok(TlsConnection {
                    stream,
                    info,
                    _slots: slots,
                }))
                .await;
        });
    }
}

/// The control plane's serving credentials and when they were made.
pub(crate) struct ServingCert {
    pub config: Arc<ServerConfig>,
    pub issued_at: i64,
    pub not_after: i64,
}

/// Why the serving certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServingCertError {
    #[error("cannot issue the control plane's certificate: {0}")]
    Issue(#[from] CaError),
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] TlsError),
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Issues a certificate for `identity` and builds the gRPC server configuration with it.
pub(crate) fn issue_serving_cert(
    ca: &CertificateAuthority,
    identity: &SpiffeId,
    lifetime: Duration,
) -> Result<ServingCert, ServingCertError> {
    let issued_at = unix_now();
    let (leaf, key) = ca.issue(identity, lifetime)?;
    let creds = Credentials::new(&leaf, &key)?;
    let config = server_config(
        &creds,
        ca.bundle(),
        ClientAuth::Optional,
        &[palisade_certs::ALPN_H2],
    )?;
    Ok(ServingCert {
        config: Arc::new(config),
        issued_at,
        not_after: leaf.not_after,
    })
}

/// How long to wait before renewing a certificate issued at `issued_at` (Unix seconds) and
/// expiring at `not_after`, seen at `now`: at 70% of the lifetime, at least one second.
///
/// Measured from the issue time rather than the certificate's `notBefore`, which the CA
/// backdates for clock skew: with short lifetimes, 70% of the backdated window would
/// already be over.
pub(crate) fn renew_delay(issued_at: i64, not_after: i64, now: i64) -> Duration {
    let lifetime = (not_after - issued_at).max(0);
    let renew_at = issued_at + lifetime * 7 / 10;
    let secs = u64::try_from(renew_at - now).unwrap_or(0);
    Duration::from_secs(secs).max(MIN_RENEW_DELAY)
}

/// Renews the serving certificate at 70% of its lifetime (with the mesh's current
/// certificate lifetime) and publishes the new configuration for new handshakes; open
/// connections keep theirs.
pub(crate) async fn renew_serving_cert(
    mut ca: watch::Receiver<Arc<ActiveCa>>,
    identity: SpiffeId,
    mut current: (i64, i64),
    state: watch::Receiver<Arc<Published>>,
    tls: watch::Sender<Arc<ServerConfig>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut delay = renew_delay(current.0, current.1, unix_now());
    loop {
        // A new CA (a rotation stage) means a new issuer or new roots to verify clients
        // with: both take a fresh configuration at once.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
            changed = ca.changed() => if changed.is_err() { return },
        }
        let lifetime = state.borrow().snapshot.settings().certificate_lifetime;
        let issuer = Arc::clone(&ca.borrow_and_update().ca);
        match issue_serving_cert(&issuer, &identity, lifetime) {
            Ok(cert) => {
                tracing::info!(
                    identity = %identity,
                    not_after = %palisade_certs::ca::fmt_unix(cert.not_after),
                    "renewed the control plane's serving certificate"
                );
                current = (cert.issued_at, cert.not_after);
                tls.send_replace(cert.config);
                metrics.serving_certificate_renewed();
                delay = renew_delay(current.0, current.1, unix_now());
            }
            Err(e) => {
                let left = u64::try_from(current.1 - unix_now()).unwrap_or(0);
                delay = RENEW_RETRY
                    .min(Duration::from_secs(left / 2))
                    .max(MIN_RENEW_DELAY);
                tracing::error!(error = %e, retry_in = ?delay, "cannot renew the serving certificate");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_at_seventy_percent() {
        // 24h certificate issued at t=1000: renew at 1000 + 0.7 * 86400.
        assert_eq!(
            renew_delay(1000, 1000 + 86400, 1000),
            Duration::from_secs(60480)
        );
        assert_eq!(
            renew_delay(1000, 1000 + 86400, 1000 + 60000),
            Duration::from_secs(480)
        );
        // Overdue or degenerate: retry soon, never in a hot loop.
        assert_eq!(renew_delay(1000, 1100, 5000), MIN_RENEW_DELAY);
        assert_eq!(renew_delay(1000, 900, 1000), MIN_RENEW_DELAY);
        // Minimum lifetime of 5s: 3s after issue (integer seconds).
        assert_eq!(renew_delay(0, 5, 0), Duration::from_secs(3));
    }
}
