//! HTTP/1.1 connections to peer sidecars, for ports whose app speaks HTTP/1.1: one exchange
//! at a time per connection, the cheapest framing there is for it (no stream bookkeeping,
//! header compression or flow control on either side), kept for reuse.
//!
//! A peer key has at most [`Limits::peer_http1_connections`] of them, busy or idle. A
//! request takes the most recently used idle one, else opens one while under the bound;
//! when all are busy it goes over the peer's shared HTTP/2 connection instead, so a burst
//! neither queues nor opens connections without bound. A connection goes back to the idle
//! list when its response body has ended (the body's release, no task per request); one
//! whose body was dropped half-read is closed. Idle connections past the idle timeout, and
//! any past their retirement (maximum age, or shortly before a certificate expires), are
//! dropped when the list is next used; at the peer's expiry a connection is closed outright.
//!
//! [`Limits::peer_http1_connections`]: crate::limits::Limits::peer_http1_connections

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::uri::Authority;
use http::{HeaderValue, Request, Response, Version, header};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::{PeerError, PeerKey, PeerPool, close_at_peer_expiry};
use crate::http::{ProxyBody, releasing};
use crate::tls::Alpn;

/// What became of a request offered to the HTTP/1.1 connections.
#[derive(Debug)]
pub(super) enum Sent {
    /// It was answered.
    Answered(Response<ProxyBody>),
    /// Every connection to the peer is busy and the bound is reached: the request, untouched.
    Busy(Request<ProxyBody>),
}

/// Size of the peer map from which unused entries are pruned (at each doubling).
const PRUNE_FROM: usize = 64;

/// The HTTP/1.1 connections, by peer key.
#[derive(Debug, Default)]
pub(super) struct Http1Conns {
    peers: Mutex<HashMap<PeerKey, Arc<PeerConns>>>,
}

/// The connections to one peer key.
#[derive(Debug)]
struct PeerConns {
    /// Idle connections, oldest first.
    idle: Mutex<Vec<Idle>>,
    /// One permit per open connection, held by its driver task until it closes.
    permits: Arc<Semaphore>,
}

/// A connection and when it stops taking requests.
#[derive(Debug)]
struct Conn {
    send: SendRequest<ProxyBody>,
    retire_at: Instant,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

/// What a request gets when it asks for a connection.
enum Checkout {
    Idle(Conn),
    Open(OwnedSemaphorePermit),
    Busy,
}

impl PeerPool {
    /// Sends `request` (absolute URI, no `Host`) over an HTTP/1.1 connection to the peer,
    /// or gives it back if all of them are busy.
    pub(super) async fn send_http1(
        &self,
        key: &PeerKey,
        request: Request<ProxyBody>,
    ) -> Result<Sent, PeerError> {
        let peer = self.http1_peer(key);
        let authority = request
            .uri()
            .authority()
            .cloned()
            .ok_or(PeerError::NoAuthority)?;
        let mut request = origin_form(request, &authority)?;
        loop {
            let (mut conn, fresh) = match peer.checkout(self.limits.idle_timeout) {
                Checkout::Idle(conn) => (conn, false),
                Checkout::Open(permit) => (self.open_http1(key, permit).await?, true),
                Checkout::Busy => return Ok(Sent::Busy(absolute_form(request, &authority)?)),
            };
            match conn.send.try_send_request(request).await {
                Ok(response) => {
                    let peer = peer.clone();
                    let release = Box::new(move || peer.give_back(conn));
                    return Ok(Sent::Answered(
                        response.map(|body| releasing(body, release)),
                    ));
                }
                // An idle connection the peer closed meanwhile: the request never left, so
                // it goes on another one (each dead connection is dropped, so this ends).
                Err(mut e) if !fresh => match e.take_message() {
                    Some(req) => request = req,
                    None => return Err(PeerError::Http(e.into_error())),
                },
                Err(e) => return Err(PeerError::Http(e.into_error())),
            }
        }
    }

    fn http1_peer(&self, key: &PeerKey) -> Arc<PeerConns> {
        let mut peers = self.http1.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(peer) = peers.get(key) {
            return peer.clone();
        }
        // Endpoints come and go with the configuration: whenever the map doubles, peers
        // with no open connection and no request under way are forgotten, so it stays
        // proportional to the peers in use.
        let max = self.limits.peer_http1_connections;
        if peers.len() >= PRUNE_FROM && peers.len().is_power_of_two() {
            peers.retain(|_, p| Arc::strong_count(p) > 1 || p.permits.available_permits() < max);
        }
        let peer = Arc::new(PeerConns {
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max)),
        });
        peers.insert(key.clone(), peer.clone());
        peer
    }

    /// A new HTTP/1.1 connection over mTLS (ALPN `http/1.1`), driven by a task that holds
    /// `permit` until it closes.
    async fn open_http1(
        &self,
        key: &PeerKey,
        permit: OwnedSemaphorePermit,
    ) -> Result<Conn, PeerError> {
        let (stream, tls) = self.connect(key, Alpn::Http1).await?;
        let (retire_at, peer_expiry) = self.retirement(&tls, &stream);
        let (send, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        close_at_peer_expiry(conn, peer_expiry, key.addr, Some(permit));
        Ok(Conn { send, retire_at })
    }
}

impl PeerConns {
    fn checkout(&self, idle_timeout: std::time::Duration) -> Checkout {
        let now = Instant::now();
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle
                .first()
                .is_some_and(|i| now.duration_since(i.since) >= idle_timeout)
            {
                idle.retain(|i| now.duration_since(i.since) < idle_timeout);
            }
            while let Some(Idle { conn, .. }) = idle.pop() {
                if !conn.send.is_closed() && now < conn.retire_at {
                    return Checkout::Idle(conn);
                }
            }
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Checkout::Open(permit),
            Err(_) => Checkout::Busy,
        }
    }

    /// Returns a connection whose response has ended. It takes the next request once hyper
    /// has seen the exchange end, which has almost always happened by the time the body's
    /// last frame is read; otherwise a task waits for it.
    fn give_back(self: Arc<Self>, mut conn: Conn) {
        if conn.send.is_closed() || Instant::now() >= conn.retire_at {
            return;
        }
        if conn.send.is_ready() {
            self.push_idle(conn);
            return;
        }
        tokio::spawn(async move {
            if conn.send.ready().await.is_ok() {
                self.push_idle(conn);
            }
        });
    }

    fn push_idle(&self, conn: Conn) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Idle {
                conn,
                since: Instant::now(),
            });
    }
}

/// The request as HTTP/1.1 writes it to an origin: the path in the request line and the
/// authority in `Host`.
fn origin_form(
    request: Request<ProxyBody>,
    authority: &Authority,
) -> Result<Request<ProxyBody>, PeerError> {
    let (mut parts, body) = request.into_parts();
    let host = HeaderValue::from_str(authority.as_str()).map_err(|_| PeerError::NoAuthority)?;
    parts.headers.insert(header::HOST, host);
    parts.uri = crate::http::origin_form(&parts.uri);
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

/// Undoes [`origin_form`], for a request that goes over HTTP/2 after all.
fn absolute_form(
    request: Request<ProxyBody>,
    authority: &Authority,
) -> Result<Request<ProxyBody>, PeerError> {
    let (mut parts, body) = request.into_parts();
    parts.headers.remove(header::HOST);
    parts.uri = crate::authority::absolute_uri(std::mem::take(&mut parts.uri), authority)
        .map_err(|_| PeerError::NoAuthority)?;
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_certs::SpiffeId;
    use std::net::SocketAddr;

    #[test]
    fn the_peer_map_forgets_unused_peers_as_endpoints_churn() {
        let (_tx, tls) = tokio::sync::watch::channel(None);
        let pool = PeerPool::new(
            tls,
            "10.0.0.1".parse().unwrap_or_else(|e| panic!("{e}")),
            &crate::limits::Limits::default(),
        );
        let identity = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/search")
            .unwrap_or_else(|e| panic!("{e}"));
        let key = |i: u16| PeerKey {
            addr: SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 15006)),
            identity: identity.clone(),
            target_port: 8080,
        };
        // One in use throughout: it must survive every pruning.
        let in_use = pool.http1_peer(&key(0));
        for i in 1..10_000 {
            drop(pool.http1_peer(&key(i)));
        }
        let peers = pool.http1.peers.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            peers.len() <= 2 * PRUNE_FROM.max(64),
            "{} entries",
            peers.len()
        );
        assert!(Arc::ptr_eq(&peers[&key(0)], &in_use));
    }
}
