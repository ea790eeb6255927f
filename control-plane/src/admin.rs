//! The admin HTTP endpoint (plaintext): `/live`, `/ready`, `/metrics`, `/ca` (the CA's
//! certificates and the trust bundle versions proxies hold, JSON).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// How long open admin connections get to finish after shutdown is signalled.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Idle admin connections are closed after this; scrapers reconnect.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin endpoint reports on.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub ready: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    pub ca: tokio::sync::watch::Receiver<Arc<palisade_certs::ActiveCa>>,
    pub state: tokio::sync::watch::Receiver<Arc<crate::index::Published>>,
    pub proxies: crate::discovery::ProxyRegistry,
    /// The live view (`/tap`, `/top`).
    pub hub: Arc<crate::telemetry::Hub>,
    /// Answer the live view to callers other than loopback ones.
    pub live_view_remote: bool,
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub(crate) fn route(state: &AdminState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match path {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if state.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(palisade_proto::exposition::PROMETHEUS_TEXT),
            );
            resp
        }
        "/ca" => {
            let active = Arc::clone(&state.ca.borrow());
            let bundle_version = state.state.borrow().trust_bundle_version();
            let status = crate::ca_status::status(
                &active,
                &state.proxies.list(),
                &bundle_version,
                crate::transport::unix_now(),
            );
            let body = serde_json::to_string_pretty(&status).unwrap_or_else(|_| "{}".into());
            let mut resp = Response::new(Full::new(Bytes::from(body + "\n")));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found (try /live, /ready, /metrics, /ca)\n",
        ),
    }
}

/// The live view's endpoints (`/tap`, `/top`, `/ui`), or `None` for another path. They show who
/// calls whom, so they answer loopback callers only unless the control plane was told
/// otherwise (`--live-view-remote`).
fn live_view(
    state: &AdminState,
    method: &Method,
    uri: &http::Uri,
    peer: std::net::SocketAddr,
) -> Option<Response<crate::telemetry::http::Body>> {
    let path = uri.path();
    if path != "/tap"
        && path != "/top"
        && path != "/observed"
        && path != "/suggest"
        && path != "/ui"
        && !path.starts_with("/ui/")
    {
        return None;
    }
    if method != Method::GET {
        return Some(
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").map(BodyExt::boxed),
        );
    }
    if !state.live_view_remote && !peer.ip().is_loopback() {
        return Some(
            text(
                StatusCode::FORBIDDEN,
                "the live view answers loopback callers only (start the control plane with \
                 --live-view-remote to change that)\n",
            )
            .map(BodyExt::boxed),
        );
    }
    let query = uri.query().unwrap_or("");
    Some(match path {
        "/tap" => crate::telemetry::http::tap(&state.hub, query),
        "/top" => crate::telemetry::http::top(&state.hub),
        "/observed" | "/suggest" => {
            let published = Arc::clone(&state.state.borrow());
            let suggest = path == "/suggest";
            crate::telemetry::http::observed(&state.hub, query, &published.snapshot, suggest)
        }
        _ => {
            let published = Arc::clone(&state.state.borrow());
            crate::telemetry::ui::route(&state.hub, &published, path, query).unwrap_or_else(|| {
                text(StatusCode::NOT_FOUND, "not found (try /ui)\n").map(BodyExt::boxed)
            })
        }
    })
}

/// Serves the admin endpoint until `shutdown`, then gives open connections a grace period.
pub(crate) async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let graceful = GracefulShutdown::new();
    // Cancelled after the grace period: closes connections that did not finish in time.
    let force = CancellationToken::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let state = state.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let resp = live_view(&state, req.method(), req.uri(), peer).unwrap_or_else(|| {
                route(&state, req.method(), req.uri().path()).map(BodyExt::boxed)
            });
            async move { Ok::<_, Infallible>(resp) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(tcp), service);
        let conn = graceful.watch(conn);
        let force = force.clone();
        tracker.spawn(async move {
            tokio::select! {
                result = conn => if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "admin connection failed");
                },
                _ = force.cancelled() => {}
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("admin connections still open after the grace period: closing them");
    }
    force.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn routes() {
        let td = palisade_certs::TrustDomain::new("cluster.local").expect("trust domain");
        let (ca, _) =
            palisade_certs::CertificateAuthority::generate(td, &Default::default()).expect("CA");
        let ca = Arc::new(ca);
        let snapshot = Arc::new(crate::model::MeshSnapshot::default());
        let published =
            crate::index::Published::new(snapshot, ca.bundle().clone(), ca.issuer_fingerprint());
        let state = AdminState {
            ready: Arc::new(AtomicBool::new(false)),
            metrics: Arc::new(Metrics::new()),
            ca: tokio::sync::watch::channel(Arc::new(palisade_certs::ActiveCa::steady(ca))).1,
            state: tokio::sync::watch::channel(Arc::new(published)).1,
            proxies: crate::discovery::ProxyRegistry::new(),
            hub: Arc::default(),
            live_view_remote: false,
        };
        assert_eq!(
            route(&state, &Method::GET, "/live").status(),
            StatusCode::OK
        );
        assert_eq!(
            route(&state, &Method::GET, "/ready").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.ready.store(true, Ordering::Release);
        assert_eq!(
            route(&state, &Method::GET, "/ready").status(),
            StatusCode::OK
        );
        assert_eq!(
            route(&state, &Method::GET, "/metrics").status(),
            StatusCode::OK
        );
        assert_eq!(
            route(&state, &Method::GET, "/nope").status(),
            StatusCode::NOT_FOUND
        );
        // The live view shows who calls whom: loopback callers only, unless allowed.
        let top: http::Uri = "/top".parse().expect("uri");
        let remote = std::net::SocketAddr::from(([10, 0, 0, 7], 40000));
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
        let status = |state: &AdminState, peer| {
            live_view(state, &Method::GET, &top, peer).map(|r| r.status())
        };
        assert_eq!(status(&state, remote), Some(StatusCode::FORBIDDEN));
        assert_eq!(status(&state, local), Some(StatusCode::OK));
        let open = AdminState {
            live_view_remote: true,
            ..state.clone()
        };
        assert_eq!(status(&open, remote), Some(StatusCode::OK));
        let tap: http::Uri = "/tap?workload=a%20b".parse().expect("uri");
        assert_eq!(
            live_view(&state, &Method::GET, &tap, local).map(|r| r.status()),
            Some(StatusCode::BAD_REQUEST)
        );
        assert!(live_view(&state, &Method::GET, &"/ca".parse().expect("uri"), local).is_none());
        assert_eq!(
            route(&state, &Method::POST, "/live").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
