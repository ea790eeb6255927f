//! One multiplexed HTTP/2 connection per peer key, opened on first use and shared by every
//! request to it: the hop for HTTP/2 and gRPC ports (streams, trailers), and for an HTTP/1.1
//! port's requests once all its HTTP/1.1 connections are busy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::{PeerError, PeerKey, PeerPool, close_at_peer_expiry};
use crate::http::ProxyBody;
use crate::tls::Alpn;

/// One pooled connection and when it stops taking new requests.
#[derive(Debug)]
struct Pooled {
    send: SendRequest<ProxyBody>,
    /// The maximum age or a certificate's expiry, whichever comes first: no new request is
    /// sent on it from then on (it closes once its streams are done).
    retire_at: Instant,
    /// When it last carried a request; after the idle timeout it is let go.
    last_used: Instant,
}

/// The shared HTTP/2 connections, by peer key.
#[derive(Debug, Default)]
pub(super) struct Http2Conns {
    ready: Mutex<HashMap<PeerKey, Pooled>>,
    /// Serialises connection setup per key, so a burst opens one connection, not many.
    connecting: Mutex<HashMap<PeerKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl PeerPool {
    /// Sends `request` over the peer's shared HTTP/2 connection; if that connection turns
    /// out to be dead before the request left, retries once on a new one.
    pub(super) async fn send_http2(
        &self,
        key: &PeerKey,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, PeerError> {
        let mut conn = self.http2_connection(key).await?;
        match conn.try_send_request(request).await {
            Ok(response) => Ok(response),
            Err(mut e) => match e.take_message() {
                Some(request) => {
                    self.http2
                        .ready
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(key);
                    let mut fresh = self.http2_connection(key).await?;
                    Ok(fresh.send_request(request).await?)
                }
                None => Err(PeerError::Http(e.into_error())),
            },
        }
    }

    fn cached_http2(&self, key: &PeerKey) -> Option<SendRequest<ProxyBody>> {
        let mut ready = self.http2.ready.lock().unwrap_or_else(|p| p.into_inner());
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

    async fn http2_connection(&self, key: &PeerKey) -> Result<SendRequest<ProxyBody>, PeerError> {
        if let Some(conn) = self.cached_http2(key) {
            return Ok(conn);
        }
        let gate = {
            let mut connecting = self
                .http2
                .connecting
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // Gates nobody waits on are forgotten whenever the map doubles, so it stays
            // proportional to the peers being connected to, whatever the endpoint churn.
            if connecting.len() >= 64 && connecting.len().is_power_of_two() {
                connecting.retain(|_, gate| Arc::strong_count(gate) > 1);
            }
            connecting.entry(key.clone()).or_default().clone()
        };
        let _guard = gate.lock().await;
        if let Some(conn) = self.cached_http2(key) {
            return Ok(conn);
        }
        let (stream, tls) = self.connect(key, Alpn::H2).await?;
        let (retire_at, peer_expiry) = self.retirement(&tls, &stream);
        let (send, conn) = crate::h2::client(&self.limits)
            .handshake(TokioIo::new(stream))
            .await?;
        close_at_peer_expiry(conn, peer_expiry, key.addr, None);
        self.http2
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                key.clone(),
                Pooled {
                    send: send.clone(),
                    retire_at,
                    last_used: Instant::now(),
                },
            );
        Ok(send)
    }
}
