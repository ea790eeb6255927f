//! HTTP/2 settings, in one place for every HTTP/2 connection the proxy serves (inbound mTLS,
//! inbound plaintext h2c, outbound from the app) or opens (pooled connections to peers).
//!
//! Windows larger than the 64 KiB default let one stream carry a large body at loopback and
//! LAN speed without waiting on WINDOW_UPDATE round trips; both ends of the sidecar-to-sidecar
//! hop use the same values. Only the client pings (keep-alive); a server's timer is used by
//! hyper for pings alone, so it is inert there today but set everywhere alike.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Initial flow-control window of each stream.
const STREAM_WINDOW: u32 = 1 << 20;
/// Initial flow-control window of a whole connection.
const CONNECTION_WINDOW: u32 = 4 << 20;
/// Streams a client may open at once on one served connection.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Largest frame a peer may send on a pooled connection (the protocol's default is 16 KiB).
const CLIENT_MAX_FRAME: u32 = 1 << 16;
/// How often a pooled connection pings an idle peer, so a dead one is noticed and replaced.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the pooled connection is closed.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A server builder for HTTP/2 only (ALPN `h2` on the inbound mTLS listener).
pub(crate) fn server() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    builder
}

/// A server builder that speaks HTTP/1.1 or h2c (prior knowledge), with the HTTP/2 side set
/// up as [`server`]; the HTTP/1 side is left to the caller.
pub(crate) fn auto_server() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    builder
}

/// A client builder for a pooled connection to a peer sidecar.
pub(crate) fn client() -> hyper::client::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(CLIENT_MAX_FRAME)
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    builder
}
