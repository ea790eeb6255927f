//! The accept loop shared by the HTTP apps: HTTP/1.1 and h2c on one listener, with a
//! bounded graceful drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::APP_HEADER;

/// How long in-flight requests may run after shutdown before their connections are cut.
pub(crate) const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Pause after a failed `accept`; failures such as EMFILE persist for a while, and
/// retrying at once would spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The body every shop HTTP response carries: the apps answer small, complete bodies.
pub(crate) type Body = Full<Bytes>;

/// Serves `handler` on `listener` until `shutdown` is cancelled, then drains.
pub(crate) async fn serve<H, F>(
    app: &'static str,
    listener: TcpListener,
    handler: H,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(app, %addr, "listening (HTTP/1.1 and h2c)");
    }
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();

    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            // Reap finished connections so the set does not grow with every request.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(app, %error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        let service = service_fn(move |request| {
            let response = handler(request);
            async move {
                let mut response = response.await;
                response
                    .headers_mut()
                    .insert(APP_HEADER, HeaderValue::from_static(app));
                Ok::<_, Infallible>(response)
            }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(app, %peer, %error, "connection ended with an error");
            }
        });
    }

    drop(listener);
    tracing::info!(
        app,
        open = graceful.count(),
        "shutting down; draining connections"
    );
    if tokio::time::timeout(DRAIN_DEADLINE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(app, "drain deadline passed; closing remaining connections");
    }
    connections.shutdown().await;
}

/// A response with `status`, a content type and a complete body.
pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body)
}

/// A JSON response; serializing the apps' own plain structs cannot fail, but if it ever
/// did the caller gets a 500 rather than a panic.
pub(crate) fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => respond(status, "application/json", body),
        Err(error) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the response: {error}\n"),
        ),
    }
}

/// `404 Not Found` for a path the app does not serve.
pub(crate) fn not_found(path: &str) -> Response<Body> {
    text(StatusCode::NOT_FOUND, format!("no route for {path}\n"))
}

/// `405 Method Not Allowed` naming the methods the route accepts.
pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}\n"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}
