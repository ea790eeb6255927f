//! The accept loop every listener shares: stop accepting on shutdown, then let open
//! connections finish (HTTP/1 completes the request in flight, HTTP/2 sends GOAWAY) within
//! the drain deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Accepts connections until `shutdown`, handing each to `handle` with a drain watcher, then
/// drains for at most `drain_timeout`.
pub async fn accept_loop<H, F>(
    name: &'static str,
    listener: TcpListener,
    shutdown: CancellationToken,
    drain_timeout: Duration,
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr, Watcher) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(handle(stream, peer, graceful.watcher()).in_current_span());
                }
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!(listener = name, "drained"),
        _ = tokio::time::sleep(drain_timeout) => {
            tracing::warn!(listener = name, timeout_s = drain_timeout.as_secs(), "drain deadline passed; closing remaining connections");
        }
    }
}
