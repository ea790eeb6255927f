//! Connections to peer sidecars: one multiplexed HTTP/2 connection over mTLS per
//! (sidecar address, expected identity, target port), opened on first use and reused.
//!
//! The target app port travels in the TLS SNI (`port-<n>.palisade.mesh`), so the peer's
//! inbound knows where to deliver before reading any request. Opaque TCP streams get a
//! connection each, with ALPN `palisade-tcp` ([`PeerPool::connect_tcp`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use palisade_certs::{ALPN_H2, SpiffeId};
use rustls_pki_types::{DnsName, ServerName};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::http::ProxyBody;
use crate::limits::{self, Limits};
use crate::tls::{ALPN_TCP, TlsState};

/// How long to wait for TCP connect plus TLS handshake to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Identifies one pooled connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// The peer sidecar's mTLS address.
    pub addr: SocketAddr,
    /// The SPIFFE ID it must present.
    pub identity: SpiffeId,
    /// The app port on the peer's workload.
    pub target_port: u16,
}

/// Why a request could not be delivered to a peer sidecar.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No certificate yet.
    #[error("no workload certificate yet")]
    NoCredentials,
    /// TCP connect failed or timed out.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed (this includes a server presenting the wrong identity).
    #[error("mTLS handshake: {0}")]
    Handshake(std::io::Error),
    /// The peer did not agree on HTTP/2.
    #[error("peer did not negotiate h2")]
    NoH2,
    /// The peer did not agree to carry opaque TCP.
    #[error("peer did not negotiate palisade-tcp")]
    NoTcp,
    /// TLS configuration error.
    #[error("TLS: {0}")]
    Tls(#[from] palisade_certs::TlsError),
    /// HTTP/2 failure.
    #[error("http/2: {0}")]
    Http(#[from] hyper::Error),
}

/// Parses the target port a client put in the SNI: only the canonical
/// `port-<n>.palisade.mesh` (the form [`sni_for`] writes: decimal digits, no sign, no leading
/// zero, 1..=65535). Any other spelling is refused, so a policy on `connection.sni` sees
/// exactly one name per port.
pub fn port_from_sni(sni: &str) -> Option<u16> {
    let digits = sni.strip_prefix("port-")?.strip_suffix(".palisade.mesh")?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sni_for(port: u16) -> ServerName<'static> {
    match DnsName::try_from(format!("port-{port}.palisade.mesh")) {
        Ok(name) => ServerName::DnsName(name),
        Err(_) => palisade_certs::tls::placeholder_server_name(),
    }
}

/// One pooled connection and when it stops taking new requests.
#[derive(Debug)]
struct Pooled {
    send: SendRequest<ProxyBody>,
    /// The maximum age or the peer certificate's expiry, whichever comes first: no new
    /// request is sent on it from then on (it closes once its streams are done).
    retire_at: Instant,
    /// When it last carried a request; after the idle timeout it is let go.
    last_used: Instant,
}

/// Pooled HTTP/2 connections to peer sidecars.
#[derive(Debug)]
pub struct PeerPool {
    tls: watch::Receiver<Option<Arc<TlsState>>>,
    /// Source address for connections to peers on loopback (see [`PeerPool::new`]).
    loopback_source: Option<std::net::IpAddr>,
    /// Keepalive, maximum age and idle bounds of pooled connections.
    limits: Limits,
    ready: Mutex<HashMap<PeerKey, Pooled>>,
    /// Serialises connection setup per key, so a burst opens one connection, not many.
    connecting: Mutex<HashMap<PeerKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl PeerPool {
    /// A pool that uses the current TLS state for every new connection. When the workload's
    /// address is a loopback address (directory mode, where each workload has its own
    /// 127.x.y.z standing in for a pod IP), connections to peers on loopback leave from it,
    /// so peers see the workload's address as the source, as they would see a pod IP.
    pub fn new(
        tls: watch::Receiver<Option<Arc<TlsState>>>,
        workload_ip: std::net::IpAddr,
        limits: &Limits,
    ) -> Self {
        Self {
            tls,
            loopback_source: workload_ip.is_loopback().then_some(workload_ip),
            limits: limits.clone(),
            ready: Mutex::new(HashMap::new()),
            connecting: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &PeerKey) -> Option<SendRequest<ProxyBody>> {
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match ready.get_mut(key) {
            Some(conn)
                if !conn.send.is_closed()
                    && now < conn.retire_at
                    && now.duration_since(conn.last_used) < self.limits.idle_timeout =>
            {
                conn.last_used = now;
                Some(conn.send.clone())
            }
            Some(_) => {
                // Dropping our handle lets the connection close once its streams are done.
                ready.remove(key);
                None
            }
            None => None,
        }
    }

    async fn connection(&self, key: &PeerKey) -> Result<SendRequest<ProxyBody>, PeerError> {
        if let Some(conn) = self.cached(key) {
            return Ok(conn);
        }
        let gate = self
            .connecting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let _guard = gate.lock().await;
        if let Some(conn) = self.cached(key) {
            return Ok(conn);
        }
        let (send, retire_at) = self.connect(key).await?;
        self.ready.lock().unwrap_or_else(|p| p.into_inner()).insert(
            key.clone(),
            Pooled {
                send: send.clone(),
                retire_at,
                last_used: Instant::now(),
            },
        );
        Ok(send)
    }

    /// TCP connect plus mTLS handshake with `config`, which verifies the peer's identity;
    /// the target port travels in the SNI.
    async fn handshake(
        &self,
        key: &PeerKey,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<TlsStream<TcpStream>, PeerError> {
        let handshake = async {
            let tcp = self
                .tcp_connect(key.addr)
                .await
                .map_err(PeerError::Connect)?;
            let _ = tcp.set_nodelay(true);
            TlsConnector::from(config)
                .connect(sni_for(key.target_port), tcp)
                .await
                .map_err(PeerError::Handshake)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| PeerError::Connect(std::io::ErrorKind::TimedOut.into()))?
    }

    async fn tcp_connect(&self, addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
        let source = self
            .loopback_source
            .filter(|ip| addr.ip().is_loopback() && ip.is_ipv4() == addr.is_ipv4());
        let Some(source) = source else {
            return TcpStream::connect(addr).await;
        };
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        socket.connect(addr).await
    }

    /// Opens a new mTLS connection to the peer for one opaque TCP stream (ALPN
    /// `palisade-tcp`), verifying its identity exactly as for HTTP. Never pooled: a TCP
    /// stream owns its connection.
    pub async fn connect_tcp(&self, key: &PeerKey) -> Result<TlsStream<TcpStream>, PeerError> {
        let tls = self.tls.borrow().clone().ok_or(PeerError::NoCredentials)?;
        let stream = self
            .handshake(key, tls.tcp_client_for(&key.identity)?)
            .await?;
        if stream.get_ref().1.alpn_protocol() != Some(ALPN_TCP) {
            return Err(PeerError::NoTcp);
        }
        Ok(stream)
    }

    /// A new pooled connection and when it retires: at the maximum age, or shortly before
    /// the peer's certificate or our own expires (the peer closes the connection at once
    /// when ours does), whichever is first. At the peer's expiry the connection is closed
    /// outright: its identity is no longer vouched for.
    async fn connect(&self, key: &PeerKey) -> Result<(SendRequest<ProxyBody>, Instant), PeerError> {
        let tls = self.tls.borrow().clone().ok_or(PeerError::NoCredentials)?;
        let stream = self.handshake(key, tls.client_for(&key.identity)?).await?;
        if stream.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err(PeerError::NoH2);
        }
        let expiry = limits::chain_not_after(stream.get_ref().1.peer_certificates())
            .map(limits::expiry_instant);
        let own_expiry = limits::expiry_instant(tls.credentials().not_after());
        let aged = Instant::now() + self.limits.max_connection_age;
        let first_expiry = expiry.map_or(own_expiry, |e| e.min(own_expiry));
        let retire_at = limits::retire_before(first_expiry).min(aged);
        let (send, conn) = crate::h2::client(&self.limits)
            .handshake(TokioIo::new(stream))
            .await?;
        let addr = key.addr;
        tokio::spawn(async move {
            let expired = async move {
                match expiry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(peer = %addr, error = %e, "peer connection closed");
                },
                () = expired => tracing::debug!(peer = %addr, "peer connection closed: the peer's certificate expired"),
            }
        });
        Ok((send, retire_at))
    }

    /// Sends `request` to the peer; if a pooled connection turns out to be dead before the
    /// request left, retries once on a new connection.
    pub async fn send(
        &self,
        key: &PeerKey,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, PeerError> {
        let mut conn = self.connection(key).await?;
        match conn.try_send_request(request).await {
            Ok(response) => Ok(response),
            Err(mut e) => match e.take_message() {
                Some(request) => {
                    self.forget(key);
                    let mut fresh = self.connection(key).await?;
                    Ok(fresh.send_request(request).await?)
                }
                None => Err(PeerError::Http(e.into_error())),
            },
        }
    }

    fn forget(&self, key: &PeerKey) {
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_round_trip() {
        let name = sni_for(8080);
        let ServerName::DnsName(dns) = &name else {
            panic!("dns name expected")
        };
        assert_eq!(port_from_sni(dns.as_ref()), Some(8080));
        assert_eq!(port_from_sni("port-0.palisade.mesh"), None);
        assert_eq!(port_from_sni("port-70000.palisade.mesh"), None);
        assert_eq!(port_from_sni("example.com"), None);
        assert_eq!(port_from_sni("port-65535.palisade.mesh"), Some(65535));
        for odd in [
            "port-08080.palisade.mesh",
            "port-+8080.palisade.mesh",
            "port-00.palisade.mesh",
            "port-.palisade.mesh",
            "port-8080.palisade.mesh.",
            "port- 8080.palisade.mesh",
            "port-8080.Palisade.mesh",
            "port-99999999999999999999.palisade.mesh",
        ] {
            assert_eq!(port_from_sni(odd), None, "{odd}");
        }
    }
}
