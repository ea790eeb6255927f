//! Connections to the control plane: gRPC over TLS, verifying that the server presents the
//! control plane's SPIFFE ID, and presenting the workload certificate once there is one.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use palisade_certs::tls::{self, Credentials};
use palisade_certs::{ALPN_H2, SpiffeId, TrustBundle};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// How long to wait for the TCP connect plus TLS handshake to the control plane.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Failure to reach the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// The address is not usable as a URI authority.
    #[error("control plane address {0:?} is invalid")]
    BadAddress(String),
    /// TLS configuration failed.
    #[error("control plane TLS: {0}")]
    Tls(#[from] palisade_certs::TlsError),
    /// Connecting failed.
    #[error("cannot reach control plane at {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        source: tonic::transport::Error,
    },
}

/// Where the control plane is and how to recognise it.
#[derive(Debug, Clone)]
pub struct ControlPlaneTarget {
    /// `host:port` of the gRPC listener (15012); several, comma-separated, are replicas
    /// tried in turn (as are the several addresses a name may resolve to).
    pub addr: String,
    /// The SPIFFE ID it must present.
    pub identity: SpiffeId,
}

impl ControlPlaneTarget {
    /// Opens a gRPC channel, verifying the server against `bundle` and presenting `creds` if any.
    pub async fn connect(
        &self,
        bundle: &TrustBundle,
        creds: Option<&Credentials>,
    ) -> Result<Channel, ControlPlaneError> {
        let config = Arc::new(tls::client_config(
            creds,
            bundle,
            self.identity.clone(),
            &[ALPN_H2],
        )?);
        let replicas: Vec<String> = self
            .addr
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        let Some(first) = replicas.first() else {
            return Err(ControlPlaneError::BadAddress(self.addr.clone()));
        };
        // The URI only names the channel; the connector below picks the replica.
        let endpoint = Endpoint::from_shared(format!("https://{first}"))
            .map_err(|_| ControlPlaneError::BadAddress(self.addr.clone()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let replicas = Arc::new(replicas);
        let connector = tower::service_fn(move |_uri: http::Uri| {
            let config = config.clone();
            let replicas = replicas.clone();
            async move {
                let tcp = connect_any(&replicas).await?;
                tcp.set_nodelay(true)?;
                let tls = TlsConnector::from(config)
                    .connect(tls::placeholder_server_name(), tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        });
        endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|source| ControlPlaneError::Connect {
                addr: self.addr.clone(),
                source,
            })
    }
}

/// Connects to the first replica that answers, starting from a random one so that proxies
/// spread over the replicas; a replica that is down costs one refused or timed-out connect.
async fn connect_any(replicas: &[String]) -> std::io::Result<TcpStream> {
    let start = fastrand::usize(..replicas.len().max(1));
    let mut last_error = None;
    for i in 0..replicas.len() {
        let addr = &replicas[(start + i) % replicas.len()];
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr.as_str())).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => last_error = Some(std::io::Error::new(e.kind(), format!("{addr}: {e}"))),
            Err(_) => {
                last_error = Some(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{addr}: no answer within {CONNECT_TIMEOUT:?}"),
                ))
            }
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no control plane address")))
}

/// Exponential backoff with full jitter, for reconnects and certificate retries.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, doubles per failure, never above `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay: uniform in [base/2, cap] where cap doubles with each attempt.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let low = (self.base / 2).min(cap);
        let span = cap.saturating_sub(low).as_millis() as u64;
        low + Duration::from_millis(fastrand::u64(0..=span))
    }

    /// Back to the first delay after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut last_cap = Duration::ZERO;
        for attempt in 0..12u32 {
            let d = b.next_delay();
            let cap =
                (Duration::from_millis(100) * (1 << attempt.min(16))).min(Duration::from_secs(2));
            assert!(
                d >= Duration::from_millis(50) && d <= cap,
                "attempt {attempt}: {d:?}"
            );
            last_cap = cap;
        }
        assert_eq!(last_cap, Duration::from_secs(2));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}

/// Why a stream to the control plane (discovery, telemetry) ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error(transparent)]
    Connect(#[from] ControlPlaneError),
    #[error("control plane: {0}")]
    Status(#[from] tonic::Status),
    #[error("request channel closed")]
    Closed,
}

/// The workload certificate, once there is one (streams to the control plane are
/// authenticated by it); `None` on shutdown or when certificates stop coming.
pub(crate) async fn credentials(
    creds: &mut tokio::sync::watch::Receiver<Option<Arc<Credentials>>>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<Arc<Credentials>> {
    loop {
        if let Some(c) = creds.borrow_and_update().clone() {
            return Some(c);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            changed = creds.changed() => if changed.is_err() { return None },
        }
    }
}
