//! Connections to peer sidecars over mTLS, by (sidecar address, expected identity, target
//! port), opened on first use and reused.
//!
//! The target app port travels in the TLS SNI (`port-<n>.palisade.mesh`), so the peer's
//! inbound knows where to deliver before reading any request. How a request crosses the hop
//! follows the port ([`Hop`]): HTTP/1.1 connections of their own for a port whose app speaks
//! HTTP/1.1 (`http1`), one multiplexed HTTP/2 connection for HTTP/2 and gRPC ports (`http2`).
//! Opaque TCP streams get a connection each, with ALPN `palisade-tcp`
//! ([`PeerPool::connect_tcp`]).

mod http1;
mod http2;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Version, header};
use palisade_certs::SpiffeId;
use rustls_pki_types::{DnsName, ServerName};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use futures_util::future::Either;

use crate::http::{ProxyBody, streamed};
use crate::limits::{self, Limits};
use crate::tls::{Alpn, TlsState};

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
    /// The peer did not agree on HTTP/1.1.
    #[error("peer did not negotiate http/1.1")]
    NoHttp1,
    /// The request names no authority to address the peer's app with.
    #[error("the request has no usable authority")]
    NoAuthority,
    /// The peer did not agree to carry opaque TCP.
    #[error("peer did not negotiate palisade-tcp")]
    NoTcp,
    /// TLS configuration error.
    #[error("TLS: {0}")]
    Tls(#[from] palisade_certs::TlsError),
    /// HTTP failure on the hop.
    #[error("http: {0}")]
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

/// Which HTTP a request crosses the hop between sidecars with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// HTTP/1.1, one exchange per connection at a time: for ports whose app speaks
    /// HTTP/1.1, which then cannot use streams or trailers anyway.
    Http1,
    /// The peer's shared HTTP/2 connection: for HTTP/2 and gRPC ports.
    Http2,
}

/// Pooled connections to peer sidecars.
#[derive(Debug)]
pub struct PeerPool {
    tls: watch::Receiver<Option<Arc<TlsState>>>,
    /// Source address for connections to peers on loopback (see [`PeerPool::new`]).
    loopback_source: Option<std::net::IpAddr>,
    /// Keepalive, maximum age, idle and per-peer bounds of pooled connections.
    limits: Limits,
    http1: http1::Http1Conns,
    http2: http2::Http2Conns,
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
            http1: http1::Http1Conns::default(),
            http2: http2::Http2Conns::default(),
        }
    }

    /// Sends `request` (absolute URI, no `Host`) to the peer over `hop`. An HTTP/1.1
    /// request finding every connection to the peer busy goes over HTTP/2 instead.
    pub async fn send(
        &self,
        key: &PeerKey,
        request: Request<ProxyBody>,
        hop: Hop,
    ) -> Result<Response<ProxyBody>, PeerError> {
        let request = match hop {
            Hop::Http1 => match self.send_http1(key, request).await? {
                http1::Sent::Answered(response) => return Ok(response),
                http1::Sent::Busy(request) => request,
            },
            Hop::Http2 => request,
        };
        let (mut parts, body) = request.into_parts();
        // HTTP/2 carries the authority as :authority; a Host header would duplicate it.
        parts.headers.remove(header::HOST);
        parts.version = Version::HTTP_2;
        let response = self
            .send_http2(key, Request::from_parts(parts, body))
            .await?;
        Ok(response.map(streamed))
    }

    /// When a new connection stops taking requests, and when the peer's certificate
    /// expires: it retires at the maximum age, or shortly before the peer's certificate or
    /// our own expires (the peer closes the connection at once when ours does), whichever is
    /// first. At the peer's expiry the connection is closed outright: its identity is no
    /// longer vouched for.
    fn retirement(
        &self,
        tls: &TlsState,
        stream: &TlsStream<TcpStream>,
    ) -> (Instant, Option<Instant>) {
        let expiry = limits::chain_not_after(stream.get_ref().1.peer_certificates())
            .map(limits::expiry_instant);
        let own_expiry = limits::expiry_instant(tls.credentials().not_after());
        let aged = Instant::now() + self.limits.max_connection_age;
        let first_expiry = expiry.map_or(own_expiry, |e| e.min(own_expiry));
        // The receiving sidecar sends GOAWAY at `retire_before` of the same expiry: the
        // caller stops sending a head start before that, so no new request races the GOAWAY
        // (a request refused after it was sent cannot be retried safely).
        let retire = limits::retire_before(limits::retire_before(first_expiry));
        (retire.min(aged), expiry)
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
        Ok(self.connect(key, Alpn::Tcp).await?.0)
    }

    /// TCP connect and mTLS handshake offering only `alpn`, verifying the peer's identity;
    /// also the TLS state the connection was made with (its certificate bounds the
    /// connection's life).
    async fn connect(
        &self,
        key: &PeerKey,
        alpn: Alpn,
    ) -> Result<(TlsStream<TcpStream>, Arc<TlsState>), PeerError> {
        let tls = self.tls.borrow().clone().ok_or(PeerError::NoCredentials)?;
        let stream = self
            .handshake(key, tls.client(&key.identity, alpn)?)
            .await?;
        if stream.get_ref().1.alpn_protocol() != Some(alpn.id()) {
            return Err(match alpn {
                Alpn::H2 => PeerError::NoH2,
                Alpn::Http1 => PeerError::NoHttp1,
                Alpn::Tcp => PeerError::NoTcp,
            });
        }
        Ok((stream, tls))
    }
}

/// Drives a pooled connection until it ends, or until the peer's certificate expires (then
/// it is dropped, closing it); `permit`, if any, is held until then.
fn close_at_peer_expiry<C, E>(
    conn: C,
    peer_expiry: Option<Instant>,
    addr: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
) where
    C: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        let expired = async move {
            match peer_expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        // The timer is polled only when it fires, not on each of the connection's wake-ups.
        match limits::Beside::new(conn, expired).await {
            Either::Left(Err(e)) => {
                tracing::debug!(peer = %addr, error = %e, "peer connection closed");
            }
            Either::Left(Ok(())) => {}
            Either::Right(()) => {
                tracing::debug!(peer = %addr, "peer connection closed: the peer's certificate expired");
            }
        }
        drop(permit);
    });
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
