//! HTTP/2 settings, in one place for every HTTP/2 connection the proxy serves (inbound mTLS,
//! inbound plaintext h2c, outbound from the app) or opens (pooled connections to peers).
//!
//! Windows larger than the 64 KiB default let one stream carry a large body at loopback and
//! LAN speed without waiting on WINDOW_UPDATE round trips; both ends of the sidecar-to-sidecar
//! hop use the same values. Both sides ping a silent peer ([`Limits::keepalive_interval`]),
//! so a dead one is noticed and its connection's memory given back; a served connection
//! lets a peer open at most [`Limits::max_concurrent_streams`] streams at once. The idle
//! timeout and maximum age are enforced around the connection (`limits::supervise`).

use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::limits::Limits;

/// Initial flow-control window of each stream.
const STREAM_WINDOW: u32 = 1 << 20;
/// Initial flow-control window of a whole connection.
const CONNECTION_WINDOW: u32 = 4 << 20;
/// Largest frame a peer may send on a pooled connection (the protocol's default is 16 KiB).
const CLIENT_MAX_FRAME: u32 = 1 << 16;
/// Largest header block a peer may send (hyper's default is 16 MiB, far more than any
/// request needs, and held per stream).
const MAX_HEADER_LIST: u32 = 64 << 10;

/// A server builder for HTTP/2 only (ALPN `h2` on the inbound mTLS listener).
pub(crate) fn server(limits: &Limits) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(MAX_HEADER_LIST)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
    builder
}

/// A server builder that speaks HTTP/1.1 or h2c (prior knowledge), with the HTTP/2 side set
/// up as [`server`] and the HTTP/1 side bounded by the header-read timeout.
pub(crate) fn auto_server(
    limits: &Limits,
) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(MAX_HEADER_LIST)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
}

/// An HTTP/1.1 server builder with the header-read timeout.
pub(crate) fn http1_server(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
}

/// A client builder for a pooled connection to a peer sidecar.
pub(crate) fn client(limits: &Limits) -> hyper::client::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(CLIENT_MAX_FRAME)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
    builder
}
