//! The accept loop every listener shares: stop accepting on shutdown, then let open
//! connections finish (HTTP/1 completes the request in flight, HTTP/2 sends GOAWAY) within
//! the drain deadline. Also the data runtime's timer tick ([`timer_floor`]), which serves
//! every listener alike.

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

/// Keeps a timer at most a second away on the calling runtime until `shutdown`.
///
/// Why: tokio's timer driver writes its wake-up eventfd whenever a timer is set to fire
/// before the driver's planned wake-up, even from the driver's own thread while it is busy.
/// With no timer nearer than hyper's header-read deadline, the first request of every burst
/// after a quiet spell paid that write and one more `epoll_wait` (`bench/peers-syscalls.sh`:
/// 0.19 writes per request in the outbound sidecar at 1,000 req/s). With this tick planned,
/// request deadlines (seconds away) are never the nearest.
pub async fn timer_floor(shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::timer_floor;

    /// The tick runs for as long as the proxy does and ends with its shutdown.
    #[tokio::test(start_paused = true)]
    async fn timer_floor_ticks_until_shutdown() {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(timer_floor(shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!task.is_finished(), "the tick ended before shutdown");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the tick did not end within a second of shutdown")
            .expect("the tick panicked");
    }
}
