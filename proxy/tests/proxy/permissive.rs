//! MeshConfig `mtls.mode`: plaintext callers at the inbound listener. STRICT closes them
//! before a byte reaches the app; PERMISSIVE serves them (HTTP/1.1 and h2c) as callers
//! without a verified identity, under the same authorization as mTLS callers (CONTRACT: a
//! caller without a verified identity never matches a `from` field of an ALLOW rule).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_proto::v1;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::support::*;

/// What a plaintext caller sends unasked, to see it removed.
const FORGED_XFCC: &str =
    "By=spiffe://cluster.local/ns/shop/sa/search;URI=spiffe://cluster.local/ns/shop/sa/admin";

/// `principals: ["*"]` / `notPrincipals: ["*"]`: any verified identity.
fn any_identity() -> v1::StringMatch {
    v1::StringMatch {
        kind: Some(v1::string_match::Kind::Presence(true)),
    }
}

fn denied_by(r: &Response<Bytes>) -> &str {
    r.headers()
        .get("x-palisade-denied-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
}

/// The authority a plaintext caller names to reach the HTTP app (the workload has two
/// ports and there is no SNI, so the port in `Host`/`:authority` chooses).
fn app_authority(mesh: &Mesh) -> String {
    format!("127.0.0.1:{}", mesh.app.addr.port())
}

fn plain_request(authority: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header(http::header::HOST, authority)
        .header("x-forwarded-client-cert", FORGED_XFCC)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// An h2c request (prior knowledge): the authority travels as `:authority`.
fn h2c_request(authority: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{authority}{path}"))
        .header("x-forwarded-client-cert", FORGED_XFCC)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// An open plaintext HTTP/1.1 connection to the inbound listener.
struct H1 {
    sender: http1::SendRequest<Full<Bytes>>,
    conn: JoinHandle<()>,
}

async fn h1_connect(inbound: SocketAddr) -> H1 {
    step("plaintext HTTP/1.1 connection", async {
        let tcp = TcpStream::connect(inbound).await.unwrap();
        let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        H1 { sender, conn }
    })
    .await
}

/// An open h2c connection to the inbound listener.
async fn h2c_connect(inbound: SocketAddr) -> http2::SendRequest<Full<Bytes>> {
    step("h2c connection", async {
        let tcp = TcpStream::connect(inbound).await.unwrap();
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
    })
    .await
}

async fn collect(response: Response<hyper::body::Incoming>) -> Response<Bytes> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Response::from_parts(parts, body)
}

async fn h1_send(h1: &mut H1, req: Request<Full<Bytes>>) -> Response<Bytes> {
    step("plaintext HTTP/1.1 request", async {
        h1.sender.ready().await.unwrap();
        collect(h1.sender.send_request(req).await.unwrap()).await
    })
    .await
}

async fn h2c_send(
    sender: &mut http2::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Response<Bytes> {
    step("h2c request", async {
        sender.ready().await.unwrap();
        collect(sender.send_request(req).await.unwrap()).await
    })
    .await
}

/// One plaintext HTTP/1.1 request on a new connection.
async fn plain_get(mesh: &Mesh, authority: &str, path: &str) -> Response<Bytes> {
    let mut h1 = h1_connect(mesh.search.inbound_addr()).await;
    h1_send(&mut h1, plain_request(authority, path)).await
}

/// One h2c request on a new connection.
async fn h2c_get(mesh: &Mesh, authority: &str, path: &str) -> Response<Bytes> {
    let mut sender = h2c_connect(mesh.search.inbound_addr()).await;
    h2c_send(&mut sender, h2c_request(authority, path)).await
}

/// Sends a plaintext request on a new raw connection; returns what came back before the
/// proxy closed it.
async fn refused_plaintext(inbound: SocketAddr, authority: &str) -> Vec<u8> {
    let mut tcp = TcpStream::connect(inbound).await.unwrap();
    let request = format!("GET /must-not-arrive HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    // The proxy may already have closed it; what matters is what comes back.
    let _ = tcp.write_all(request.as_bytes()).await;
    read_to_close(&mut tcp).await
}

/// The `x-forwarded-client-cert` values of every request the app received.
fn xfcc_seen(app: &HttpApp) -> Vec<Option<String>> {
    app.headers
        .lock()
        .unwrap()
        .iter()
        .map(|h| {
            h.get("x-forwarded-client-cert")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect()
}

fn plaintext_refused(proxy: &palisade_proxy::Proxy, stage: &str) -> Option<f64> {
    metric(
        proxy,
        "palisade_proxy_inbound_plaintext_refused_total",
        &[("stage", stage)],
    )
}

/// `curl` with `args`, if installed: `Some((exit code, stdout, stderr))`, else a visible skip.
async fn curl(test: &str, args: &[&str]) -> Option<(i32, String, String)> {
    let out = match tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .output()
        .await
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIP {test}: curl part (curl is not installed)");
            return None;
        }
        Err(e) => panic!("{test}: cannot run curl: {e}"),
    };
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn strict_closes_plaintext_connections_before_any_byte_reaches_the_app() {
    const TEST: &str = "strict_closes_plaintext_connections_before_any_byte_reaches_the_app";
    let logs = Logs::default();
    let _guard = logs.install();
    let mesh = Mesh::start(MeshOptions::default()).await;
    let inbound = mesh.search.inbound_addr();
    let authority = app_authority(&mesh);

    assert!(refused_plaintext(inbound, &authority).await.is_empty());
    // Aimed at the opaque TCP port: not a byte reaches the echo app either.
    let echo_authority = format!("127.0.0.1:{}", mesh.echo.addr.port());
    assert!(refused_plaintext(inbound, &echo_authority).await.is_empty());
    // An HTTP client sees a connection closed without a response.
    let tcp = TcpStream::connect(inbound).await.unwrap();
    let (mut sender, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let sent = step(
        "refused request",
        sender.send_request(plain_request(&authority, "/x")),
    )
    .await;
    assert!(
        sent.is_err(),
        "a plaintext request got a response: {sent:?}"
    );
    let mut refusals = 3.0;
    if let Some((code, stdout, stderr)) = curl(
        TEST,
        &[
            "-H",
            &format!("Host: {authority}"),
            &format!("http://{inbound}/x"),
        ],
    )
    .await
    {
        // 52: empty reply; 55/56: connection reset while sending/receiving.
        assert!(
            matches!(code, 52 | 55 | 56),
            "curl exit {code}: {stdout} {stderr}"
        );
        refusals += 1.0;
    }

    assert_eq!(mesh.app.requests.load(Ordering::SeqCst), 0);
    assert_eq!(mesh.echo.connections.load(Ordering::SeqCst), 0);
    assert_eq!(
        plaintext_refused(&mesh.search, "connection"),
        Some(refusals)
    );
    assert_eq!(plaintext_refused(&mesh.search, "request"), None);
    // Not a TLS handshake failure: nobody tried TLS.
    assert_eq!(
        metric(
            &mesh.search,
            "palisade_proxy_tls_handshake_failures_total",
            &[("direction", "inbound")]
        ),
        None
    );
    // mTLS is unaffected.
    assert_eq!(
        mesh.get("search.shop:8080", "/ok").await.status(),
        StatusCode::OK
    );
    mesh.stop().await;
    let text = logs.text();
    assert!(
        text.lines().any(|l| l.contains("INFO")
            && l.contains("inbound plaintext connection refused")
            && l.contains("peer=127.0.0.1:")
            && l.contains("STRICT")),
        "{text}"
    );
}

#[tokio::test]
async fn permissive_serves_plaintext_http1_and_h2c_without_a_client_certificate_header() {
    const TEST: &str =
        "permissive_serves_plaintext_http1_and_h2c_without_a_client_certificate_header";
    // Default deny, and one ALLOW policy that says nothing about the source (`rules: [{}]`).
    let mesh = Mesh::start(MeshOptions {
        permissive: true,
        default_allow: false,
        search_policies: vec![policy(
            "anyone",
            v1::Action::Allow,
            vec![v1::Rule::default()],
        )],
        ..Default::default()
    })
    .await;
    let authority = app_authority(&mesh);

    let r = plain_get(&mesh, &authority, "/h1?q=1").await;
    assert_eq!(r.status(), StatusCode::OK, "{r:?}");
    assert_eq!(r.body(), "/h1?q=1");
    let r = h2c_get(&mesh, &authority, "/h2c").await;
    assert_eq!(r.status(), StatusCode::OK, "{r:?}");
    assert_eq!(r.body(), "/h2c");
    let mut expected = 2;
    if let Some((code, body, stderr)) = curl(
        TEST,
        &[
            "-H",
            &format!("Host: {authority}"),
            "-H",
            &format!("x-forwarded-client-cert: {FORGED_XFCC}"),
            &format!("http://{}/curl", mesh.search.inbound_addr()),
        ],
    )
    .await
    {
        assert_eq!((code, body.as_str()), (0, "/curl"), "{stderr}");
        let (code, body, stderr) = curl(
            TEST,
            &[
                "--http2-prior-knowledge",
                &format!("http://{authority}/curl-h2c"),
                "--connect-to",
                &format!("::{}", mesh.search.inbound_addr()),
            ],
        )
        .await
        .unwrap();
        assert_eq!((code, body.as_str()), (0, "/curl-h2c"), "{stderr}");
        expected += 2;
    }
    assert_eq!(mesh.app.requests.load(Ordering::SeqCst), expected);
    // The forged header never reached the app, and none was added.
    assert_eq!(xfcc_seen(&mesh.app), vec![None; expected]);

    // Metrics name the caller as the authorization metrics do.
    assert_eq!(
        metric(
            &mesh.search,
            "palisade_proxy_requests_total",
            &[
                ("direction", "inbound"),
                ("status", "200"),
                ("peer", "unauthenticated")
            ]
        ),
        Some(expected as f64)
    );

    // No SNI and two ports: the authority must name one of them, else 404.
    for unknown in ["127.0.0.1:1", "search.shop"] {
        let r = plain_get(&mesh, unknown, "/x").await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{unknown}: {r:?}");
        let r = h2c_get(&mesh, unknown, "/x").await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{unknown}: {r:?}");
    }
    assert_eq!(mesh.app.requests.load(Ordering::SeqCst), expected);
    assert_eq!(plaintext_refused(&mesh.search, "connection"), None);
    mesh.stop().await;
}

#[tokio::test]
async fn an_allow_rule_on_principals_never_admits_a_plaintext_caller() {
    // `principals: ["*"]`: any verified identity; a plaintext caller has none.
    let authenticated_only = policy(
        "authenticated-only",
        v1::Action::Allow,
        vec![v1::Rule {
            from: vec![v1::Source {
                principals: vec![any_identity()],
                ..Default::default()
            }],
            ..Default::default()
        }],
    );
    let mesh = Mesh::start(MeshOptions {
        permissive: true,
        search_policies: vec![authenticated_only],
        ..Default::default()
    })
    .await;
    let authority = app_authority(&mesh);
    for r in [
        plain_get(&mesh, &authority, "/x").await,
        h2c_get(&mesh, &authority, "/x").await,
    ] {
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{r:?}");
        assert_eq!(denied_by(&r), "default-deny");
    }
    assert_eq!(mesh.app.requests.load(Ordering::SeqCst), 0);

    let ok = mesh.get("search.shop:8080", "/mtls").await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(mesh.app.requests.load(Ordering::SeqCst), 1);

    let destination = format!("shop/search:{}", mesh.app.addr.port());
    assert_eq!(
        metric(
            &mesh.search,
            "palisade_proxy_authz_denials_total",
            &[
                ("direction", "inbound"),
                ("policy", "default-deny"),
                ("source", "unauthenticated"),
                ("destination", destination.as_str()),
            ]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &mesh.search,
            "palisade_proxy_requests_total",
            &[("status", "403"), ("peer", "unauthenticated")]
        ),
        Some(2.0)
    );
    mesh.stop().await;
}

#[tokio::test]
async fn a_deny_rule_on_not_principals_denies_plaintext_callers() {
    let require_identity = policy(
        "require-identity",
        v1::Action::Deny,
        vec![v1::Rule {
            from: vec![v1::Source {
                not_principals: vec![any_identity()],
                ..Default::default()
            }],
            ..Default::default()
        }],
    );
    let mesh = Mesh::start(MeshOptions {
        permissive: true,
        search_policies: vec![require_identity],
        ..Default::default()
    })
    .await;
    let authority = app_authority(&mesh);
    for r in [
        plain_get(&mesh, &authority, "/x").await,
        h2c_get(&mesh, &authority, "/x").await,
    ] {
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{r:?}");
        assert_eq!(denied_by(&r), "shop/require-identity");
    }
    assert_eq!(mesh.app.requests.load(Ordering::SeqCst), 0);
    assert_eq!(
        mesh.get("search.shop:8080", "/mtls").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        metric(
            &mesh.search,
            "palisade_proxy_authz_denials_total",
            &[
                ("policy", "shop/require-identity"),
                ("source", "unauthenticated")
            ]
        ),
        Some(2.0)
    );
    mesh.stop().await;
}

#[tokio::test]
async fn switching_to_strict_refuses_new_and_already_open_plaintext_connections() {
    let mesh = Mesh::start(MeshOptions {
        permissive: true,
        ..Default::default()
    })
    .await;
    let inbound = mesh.search.inbound_addr();
    let authority = app_authority(&mesh);
    let mut h1 = h1_connect(inbound).await;
    let mut h2c = h2c_connect(inbound).await;
    assert_eq!(
        h1_send(&mut h1, plain_request(&authority, "/before"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        h2c_send(&mut h2c, h2c_request(&authority, "/before"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(mesh.app.requests.load(Ordering::SeqCst), 2);

    // The same settings, STRICT (MeshOptions::default: default allow, REGISTRY_ONLY).
    mesh.search
        .apply_static(&mesh_settings(true, false, false, false))
        .unwrap();

    // Requests on connections opened in PERMISSIVE mode are refused from now on.
    let r = h1_send(&mut h1, plain_request(&authority, "/after")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(denied_by(&r), "mtls-strict");
    assert_eq!(r.headers()["connection"], "close");
    // ... and the HTTP/1 connection is closed after the answer.
    step("the refused HTTP/1 connection closes", &mut h1.conn)
        .await
        .unwrap();
    for _ in 0..2 {
        let r = h2c_send(&mut h2c, h2c_request(&authority, "/after")).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{r:?}");
        assert_eq!(denied_by(&r), "mtls-strict");
    }
    // New plaintext connections are closed unanswered.
    assert!(refused_plaintext(inbound, &authority).await.is_empty());
    assert_eq!(mesh.app.requests.load(Ordering::SeqCst), 2);
    assert_eq!(plaintext_refused(&mesh.search, "request"), Some(3.0));
    assert_eq!(plaintext_refused(&mesh.search, "connection"), Some(1.0));

    // mTLS callers are unaffected, and PERMISSIVE again admits plaintext again.
    assert_eq!(
        mesh.get("search.shop:8080", "/mtls").await.status(),
        StatusCode::OK
    );
    mesh.search
        .apply_static(&mesh_settings(true, false, false, true))
        .unwrap();
    assert_eq!(
        h2c_send(&mut h2c, h2c_request(&authority, "/again"))
            .await
            .status(),
        StatusCode::OK
    );
    mesh.stop().await;
}

#[tokio::test]
async fn mtls_callers_are_served_unchanged_in_permissive_mode() {
    let mesh = Mesh::start(MeshOptions {
        permissive: true,
        ..Default::default()
    })
    .await;
    let r = mesh.get("search.shop:8080", "/mtls").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.body(), "/mtls");
    // The verified caller is named to the app.
    assert_eq!(
        xfcc_seen(&mesh.app),
        vec![Some(format!("By={SEARCH};URI={FRONTEND}"))]
    );
    assert_eq!(
        metric(
            &mesh.search,
            "palisade_proxy_requests_total",
            &[("status", "200"), ("peer", FRONTEND)]
        ),
        Some(1.0)
    );
    // Opaque TCP over mTLS too.
    let (head, mut tunnel) = connect(
        mesh.frontend.outbound_addr(),
        &format!("search.shop:{TCP_PORT}"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(echo_round_trip(&mut tunnel, b"bytes").await, b"bytes");
    assert_eq!(plaintext_refused(&mesh.search, "connection"), None);
    mesh.stop().await;
}
