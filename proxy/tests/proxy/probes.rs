//! The admin port: kubelet probes rewritten to it, each handler kind against a real app (HTTP,
//! HTTPS with a certificate nobody verifies, TCP, a real gRPC health server), the verdict only
//! (never the app's body), and a flood held to the concurrency bound;
//! and the seconds left on each certificate in `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use palisade_certs::{CaOptions, CertificateAuthority, TrustDomain};
use palisade_proxy::probes::AppProbes;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::support::*;

/// An HTTP/1.1 app: `/fail` answers 500, anything else 200 with the path as body; it records
/// the user agent and `x-probe` header it saw.
async fn status_app(
    shutdown: CancellationToken,
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            let record = record.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let header = |name: &str| {
                            req.headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned()
                        };
                        record.lock().unwrap().push(format!(
                            "{} ua={} x-probe={}",
                            req.uri().path(),
                            header("user-agent"),
                            header("x-probe")
                        ));
                        let fail = req.uri().path() == "/fail";
                        let body = Bytes::from(format!("secret app body {}", req.uri().path()));
                        async move {
                            let mut response = Response::new(Full::new(body));
                            if fail {
                                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// The same app behind TLS with a certificate no client could verify.
async fn https_app(shutdown: CancellationToken) -> SocketAddr {
    let td = TrustDomain::new("cluster.local").unwrap();
    let (ca, _) = CertificateAuthority::generate(td, &CaOptions::default()).unwrap();
    let (leaf, key) = ca
        .issue(
            &id("spiffe://cluster.local/ns/shop/sa/web"),
            std::time::Duration::from_secs(600),
        )
        .unwrap();
    let certs = vec![leaf.leaf.clone()];
    let key = key.private_key_der();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("tls ok"))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// A real gRPC health server (tonic-health): "shop" SERVING, "down" NOT_SERVING.
async fn grpc_health_app(shutdown: CancellationToken) -> SocketAddr {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop", tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("down", tonic_health::ServingStatus::NotServing)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _keep = reporter;
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown.cancelled_owned(),
            )
            .await;
    });
    addr
}

/// An HTTP app that accepts every connection and answers each only once given a permit,
/// counting the connections.
async fn holding_app(
    shutdown: CancellationToken,
    release: Arc<Semaphore>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            count.fetch_add(1, Ordering::SeqCst);
            let release = release.clone();
            tokio::spawn(async move {
                let Ok(_permit) = release.acquire().await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

async fn probe(mesh: &Mesh, path: &str) -> (StatusCode, String) {
    let reply = send(
        mesh.search.admin_addr(),
        Request::get(path).body(Full::new(Bytes::new())).unwrap(),
    )
    .await;
    (
        reply.status(),
        String::from_utf8_lossy(reply.body()).into_owned(),
    )
}

#[tokio::test]
async fn each_probe_kind_reports_the_app_health_and_nothing_else() {
    let apps = CancellationToken::new();
    let (web, seen) = status_app(apps.clone()).await;
    let tls = https_app(apps.clone()).await;
    let grpc = grpc_health_app(apps.clone()).await;
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let json = serde_json::json!({
        "/app-health/web/livez": {"httpGet": {"path": "/healthz", "port": web.port(), "scheme": "HTTP",
            "httpHeaders": [{"name": "x-probe", "value": "kubelet"}]}},
        "/app-health/web/readyz": {"httpGet": {"path": "/fail", "port": web.port()}},
        "/app-health/tls/livez": {"httpGet": {"path": "/", "port": tls.port(), "scheme": "HTTPS"}},
        "/app-health/tcp/livez": {"tcpSocket": {"port": web.port()}},
        "/app-health/tcp/readyz": {"tcpSocket": {"port": closed}},
        "/app-health/grpc/livez": {"grpc": {"port": grpc.port(), "service": "shop"}},
        "/app-health/grpc/readyz": {"grpc": {"port": grpc.port(), "service": "down"}},
        "/app-health/grpc/startupz": {"grpc": {"port": grpc.port(), "service": "unknown"}},
        "/app-health/grpc/plain": {"grpc": {"port": web.port()}},
    });
    let mesh = Mesh::start(MeshOptions {
        search_probes: Some(Arc::new(AppProbes::parse(&json.to_string()).unwrap())),
        ..MeshOptions::default()
    })
    .await;

    for (path, want) in [
        ("/app-health/web/livez", StatusCode::OK),
        ("/app-health/web/readyz", StatusCode::SERVICE_UNAVAILABLE),
        ("/app-health/tls/livez", StatusCode::OK),
        ("/app-health/tcp/livez", StatusCode::OK),
        ("/app-health/tcp/readyz", StatusCode::SERVICE_UNAVAILABLE),
        ("/app-health/grpc/livez", StatusCode::OK),
        ("/app-health/grpc/readyz", StatusCode::SERVICE_UNAVAILABLE),
        ("/app-health/grpc/startupz", StatusCode::SERVICE_UNAVAILABLE),
        ("/app-health/grpc/plain", StatusCode::SERVICE_UNAVAILABLE),
        // Only the configured probes run: no path of the caller's choosing reaches the app.
        ("/app-health/web/livez/../../config", StatusCode::NOT_FOUND),
        ("/app-health/web/other", StatusCode::NOT_FOUND),
    ] {
        let (status, body) = probe(&mesh, path).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(
            !body.contains("secret app body"),
            "{path} leaked the app's body: {body}"
        );
    }
    let (_, body) = probe(&mesh, "/app-health/web/readyz").await;
    assert!(
        body.contains("500"),
        "the reason names the app's answer: {body}"
    );

    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|l| l == "/healthz ua=kube-probe x-probe=kubelet"),
        "the app saw the probe as kubelet sends it: {seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("config") || l.contains("other")),
        "unconfigured paths never reached the app: {seen:?}"
    );
    mesh.stop().await;
    apps.cancel();
}

#[tokio::test]
async fn a_probe_flood_is_held_to_the_concurrency_bound() {
    const CALLERS: usize = 20;
    const BOUND: usize = 8;
    let apps = CancellationToken::new();
    let release = Arc::new(Semaphore::new(0));
    let (held, accepted) = holding_app(apps.clone(), release.clone()).await;
    let json = serde_json::json!({
        "/app-health/held/livez": {"httpGet": {"path": "/", "port": held.port()}, "timeoutSeconds": 30},
    });
    let mesh = Mesh::start(MeshOptions {
        search_probes: Some(Arc::new(AppProbes::parse(&json.to_string()).unwrap())),
        ..MeshOptions::default()
    })
    .await;
    let admin = mesh.search.admin_addr();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..CALLERS {
        let tx = tx.clone();
        tokio::spawn(async move {
            let reply = send(
                admin,
                Request::get("/app-health/held/livez")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await;
            let _ = tx.send(reply.status());
        });
    }
    // The held probes cannot answer before the release, so the first answers are exactly the
    // callers turned away at the bound.
    for _ in 0..CALLERS - BOUND {
        let status = step("a turned-away probe", rx.recv()).await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    release.add_permits(BOUND);
    for _ in 0..BOUND {
        let status = step("a held probe", rx.recv()).await.unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        BOUND,
        "connections to the app"
    );
    mesh.stop().await;
    apps.cancel();
}

#[tokio::test]
async fn admin_metrics_give_seconds_until_each_certificate_expires() {
    let mesh = Mesh::start(MeshOptions::default()).await;
    let reply = send(
        mesh.search.admin_addr(),
        Request::get("/metrics")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let text = String::from_utf8_lossy(reply.body()).into_owned();
    let left = |role: &str| -> Vec<f64> {
        text.lines()
            .filter(|l| {
                l.starts_with("palisade_proxy_certificate_expiry_seconds{")
                    && l.contains(&format!("role=\"{role}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect()
    };
    // The test mesh's leaves live an hour; its CA the default years.
    let leaf = left("leaf");
    assert_eq!(leaf.len(), 1, "{text}");
    assert!((3_500.0..=3_600.0).contains(&leaf[0]), "{leaf:?}");
    let roots = left("root");
    assert_eq!(roots.len(), 1, "{text}");
    assert!(roots[0] > 365.0 * 86_400.0, "{roots:?}");
    mesh.stop().await;
}
