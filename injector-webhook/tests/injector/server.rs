//! The webhook over real HTTPS on 127.0.0.1:0, with an rcgen certificate made here: answers
//! (uid, allowed, patch), malformed bodies, wrong paths and methods, and the bounds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use palisade_injector::server::{self, Config, Handle, Limits};
use palisade_injector::value::{Value, from_json};
use palisade_injector::{Settings, review};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

/// Bound on every network await here.
const LIMIT: Duration = Duration::from_secs(10);

struct Webhook {
    handle: Option<Handle>,
    shutdown: CancellationToken,
    client: TlsConnector,
    _dir: tempfile::TempDir,
}

impl Webhook {
    /// A webhook with these limits, serving a fresh self-signed `localhost` certificate read
    /// from files (as `--tls-cert`/`--tls-key` are).
    async fn start(limits: Limits) -> Self {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_path, certified.cert.pem()).unwrap();
        std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
        let tls = server::load_tls(&cert_path, &key_path).unwrap();
        let shutdown = CancellationToken::new();
        let handle = server::run(
            Config {
                listen: "127.0.0.1:0".parse().unwrap(),
                tls: Arc::new(tls),
                settings: Settings::default(),
                limits,
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(certified.cert.der().to_vec()))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Webhook {
            handle: Some(handle),
            shutdown,
            client: TlsConnector::from(Arc::new(client)),
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.handle.as_ref().unwrap().local_addr()
    }

    async fn tls(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr()).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        tokio::time::timeout(LIMIT, self.client.connect(name, tcp))
            .await
            .unwrap()
            .unwrap()
    }

    /// One request on a fresh connection: status and body text.
    async fn send(&self, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, String) {
        let io = TokioIo::new(self.tls().await);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = tokio::time::timeout(LIMIT, sender.send_request(request))
            .await
            .unwrap()
            .unwrap();
        let status = response.status();
        let bytes = tokio::time::timeout(LIMIT, response.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> (StatusCode, String) {
        self.send(Method::POST, path, body).await
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        let handle = self.handle.take().unwrap();
        tokio::time::timeout(LIMIT, handle.wait()).await.unwrap();
    }
}

fn golden(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.review.json"));
    std::fs::read(path).unwrap()
}

fn response_of(body: &str) -> Value {
    let review = from_json(body.as_bytes()).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(
        review.get("apiVersion").and_then(Value::as_str),
        Some("admission.k8s.io/v1")
    );
    assert_eq!(
        review.get("kind").and_then(Value::as_str),
        Some("AdmissionReview")
    );
    review.get("response").unwrap().clone()
}

fn uid_of(review: &[u8]) -> String {
    from_json(review)
        .unwrap()
        .get("request")
        .unwrap()
        .get("uid")
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn pod_creation_is_answered_with_a_patch() {
    let webhook = Webhook::start(Limits::default()).await;
    let body = golden("inject/full-native");
    let (status, text) = webhook.post("/inject", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let response = response_of(&text);
    assert_eq!(
        response.get("uid").and_then(Value::as_str),
        Some(uid_of(&body).as_str())
    );
    assert_eq!(response.get("allowed"), Some(&Value::Bool(true)));
    assert_eq!(
        response.get("patchType").and_then(Value::as_str),
        Some("JSONPatch")
    );
    let review = from_json(text.as_bytes()).unwrap();
    let patch = review::decoded_patch(&review).expect("a base64 JSON patch");
    assert!(patch.as_array().is_some_and(|ops| !ops.is_empty()));
    webhook.stop().await;
}

#[tokio::test]
async fn require_annotation_only_injects_annotated_pods() {
    let webhook = Webhook::start(Limits::default()).await;
    // The path `palisade install` configures, and the query form.
    for path in [
        palisade_injector::install::REQUIRE_ANNOTATION_PATH,
        "/inject?require-annotation=true",
    ] {
        let (_, text) = webhook
            .post(path, golden("inject-require-annotation/not-annotated"))
            .await;
        let response = response_of(&text);
        assert_eq!(response.get("allowed"), Some(&Value::Bool(true)));
        assert!(response.get("patch").is_none(), "{path}: {text}");
        let (_, text) = webhook
            .post(path, golden("inject-require-annotation/annotated"))
            .await;
        assert!(response_of(&text).get("patch").is_some(), "{path}: {text}");
    }
    // Without the annotation requirement (a labelled namespace), the same pod is injected.
    let (_, text) = webhook
        .post("/inject", golden("inject-require-annotation/not-annotated"))
        .await;
    assert!(response_of(&text).get("patch").is_some(), "/inject: {text}");
    let (status, text) = webhook
        .post(
            "/inject?require-annotation=yes",
            golden("inject-require-annotation/annotated"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    webhook.stop().await;
}

#[tokio::test]
async fn malformed_reviews_get_clear_errors() {
    let webhook = Webhook::start(Limits::default()).await;

    // Not JSON at all: HTTP 400 with text.
    let (status, text) = webhook.post("/inject", b"hello".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("not a JSON AdmissionReview"), "{text}");

    // JSON, but no request (so no uid to answer): HTTP 400 with text.
    let (status, text) = webhook
        .post(
            "/inject",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("request.uid is missing"), "{text}");

    // A uid, but the review is malformed: an AdmissionReview refusing it, naming the field.
    for (body, field) in [
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"Nope","request":{"uid":"u1"}}"#,
            "kind",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1beta9","kind":"AdmissionReview","request":{"uid":"u1"}}"#,
            "apiVersion",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE"}}"#,
            "request.object",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","object":{"metadata":{},"spec":{"containers":"web"}}}}"#,
            "spec.containers",
        ),
    ] {
        let (status, text) = webhook.post("/inject", body.as_bytes().to_vec()).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let response = response_of(&text);
        assert_eq!(response.get("uid").and_then(Value::as_str), Some("u1"));
        assert_eq!(response.get("allowed"), Some(&Value::Bool(false)), "{text}");
        let status = response.get("status").unwrap();
        assert_eq!(status.get("code"), Some(&Value::Int(400)));
        let message = status.get("message").and_then(Value::as_str).unwrap();
        assert!(
            message.starts_with(field) || message.contains(field),
            "{message}"
        );
    }

    // Another kind than Pod: allowed, untouched.
    let (_, text) = webhook.post("/inject", golden("inject/not-a-pod")).await;
    let response = response_of(&text);
    assert_eq!(response.get("allowed"), Some(&Value::Bool(true)));
    assert!(response.get("patch").is_none());

    // A pod that cannot be injected safely: refused, naming the annotation.
    let (_, text) = webhook
        .post("/inject", golden("inject/bad-annotation"))
        .await;
    let response = response_of(&text);
    assert_eq!(response.get("allowed"), Some(&Value::Bool(false)));
    let message = response
        .get("status")
        .and_then(|s| s.get("message"))
        .and_then(Value::as_str)
        .unwrap();
    assert!(
        message.contains("palisade.dev/exclude-inbound-ports"),
        "{message}"
    );
    webhook.stop().await;
}

#[tokio::test]
async fn wrong_paths_methods_and_oversized_bodies() {
    let webhook = Webhook::start(Limits::default()).await;
    let (status, _) = webhook.post("/mutate", b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = webhook.send(Method::GET, "/inject", Vec::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let big = vec![b' '; 3 * 1024 * 1024 + 1];
    let (status, text) = webhook.post("/inject", big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    webhook.stop().await;
}

#[tokio::test]
async fn oversized_body_without_length_is_cut_off() {
    let webhook = Webhook::start(Limits {
        max_body_bytes: 1024,
        ..Limits::default()
    })
    .await;
    // Chunked: no Content-Length to refuse early; the limit applies while reading.
    let mut tls = webhook.tls().await;
    let mut request =
        b"POST /inject HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'x'; 512]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    tls.write_all(&request).await.unwrap();
    let mut reply = vec![0u8; 512];
    let n = tokio::time::timeout(LIMIT, tls.read(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&reply[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    webhook.stop().await;
}

#[tokio::test]
async fn slow_headers_and_extra_connections_are_dropped() {
    let webhook = Webhook::start(Limits {
        max_connections: 1,
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    // The one slot: a client that never finishes its headers is closed after the timeout.
    let mut slow = webhook.tls().await;
    slow.write_all(b"POST /inject HTTP/1.1\r\nhost: local")
        .await
        .unwrap();
    // A second connection while the slot is taken is closed without a handshake.
    let tcp = TcpStream::connect(webhook.addr()).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let second = tokio::time::timeout(LIMIT, webhook.client.connect(name, tcp))
        .await
        .unwrap();
    assert!(second.is_err(), "a connection beyond the limit was served");
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(LIMIT, slow.read(&mut buf))
        .await
        .expect("the slow client is closed after the header timeout")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    drop(slow);
    // The slot is free again.
    let mut served = None;
    for _ in 0..50 {
        let tcp = TcpStream::connect(webhook.addr()).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        if let Ok(Ok(tls)) = tokio::time::timeout(LIMIT, webhook.client.connect(name, tcp)).await {
            served = Some(tls);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served.is_some(), "the freed slot was never reused");
    drop(served);
    webhook.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_at_their_age_and_on_shutdown() {
    let webhook = Webhook::start(Limits {
        max_connection_age: Duration::from_millis(200),
        ..Limits::default()
    })
    .await;
    let mut idle = webhook.tls().await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(LIMIT, idle.read(&mut buf))
        .await
        .expect("an idle connection is closed at its age")
        .unwrap_or(0);
    assert_eq!(n, 0);
    webhook.stop().await;

    // Shutdown with a connection open: the server still stops within the drain timeout.
    let webhook = Webhook::start(Limits {
        drain_timeout: Duration::from_millis(200),
        ..Limits::default()
    })
    .await;
    let _open = webhook.tls().await;
    webhook.stop().await;
}

fn client_trusting(cert: &rcgen::Certificate) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.der().to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn handshake_ok(client: &TlsConnector, addr: SocketAddr) -> bool {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    matches!(
        tokio::time::timeout(LIMIT, client.connect(name, tcp)).await,
        Ok(Ok(_))
    )
}

#[tokio::test]
async fn a_rotated_serving_certificate_is_picked_up_without_restart() {
    let first = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let second = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, first.cert.pem()).unwrap();
    std::fs::write(&key_path, first.signing_key.serialize_pem()).unwrap();
    let tls =
        server::load_tls_with_recheck(&cert_path, &key_path, Duration::from_millis(50)).unwrap();
    let shutdown = CancellationToken::new();
    let handle = server::run(
        Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: Arc::new(tls),
            settings: Settings::default(),
            limits: Limits::default(),
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let addr = handle.local_addr();
    let (old_client, new_client) = (client_trusting(&first.cert), client_trusting(&second.cert));
    assert!(handshake_ok(&old_client, addr).await);
    assert!(!handshake_ok(&new_client, addr).await);

    // A half-written rotation (garbage certificate): the last good pair stays in service.
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(handshake_ok(&old_client, addr).await);

    std::fs::write(&key_path, second.signing_key.serialize_pem()).unwrap();
    std::fs::write(&cert_path, second.cert.pem()).unwrap();
    let mut rotated = false;
    for _ in 0..100 {
        if handshake_ok(&new_client, addr).await {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated, "the new certificate was never served");
    assert!(!handshake_ok(&old_client, addr).await);
    shutdown.cancel();
    tokio::time::timeout(LIMIT, handle.wait()).await.unwrap();
}
