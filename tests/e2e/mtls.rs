//! mTLS at the edges of a sidecar: the inbound port (15006) admits only clients with a
//! certificate from the mesh CA, and the outbound side refuses a server that holds the wrong
//! identity for the Service, before any request reaches it. Certificates crafted to look
//! like the mesh CA's (expired, not yet valid, signed by the wrong key) are refused both ways.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_certs::tls::{Credentials, Usage, verify_chain};
use palisade_certs::{CaMaterial, CaOptions, CertificateAuthority, SpiffeId, TrustDomain};
use palisade_example_shop::payments_proto::ChargeRequest;
use palisade_proxy::INBOUND_PORT;
use tonic::Code;

use crate::support::clients::{admin_get, get_h1, payments_client};
use crate::support::craft::{self, Validity};
use crate::support::mesh::{self, MESH_CONFIG, shop_id};
use crate::support::tls::{InboundAttempt, STAND_IN_BODY, attempt_inbound, issue, stand_in_peer};
use crate::support::tools::{self, output_text};
use crate::support::{App, TestMesh, metric, poll};

/// Whether the attempt was refused: either the handshake failed, or (TLS 1.3, where the
/// server checks the client certificate after the client has finished) the first request
/// on the connection failed.
fn refused(attempt: &InboundAttempt) -> bool {
    attempt.handshake.is_err() || attempt.reply.is_err()
}

async fn inbound_handshake_failures(mesh: &TestMesh, workload: &str) -> f64 {
    mesh.sidecar(workload)
        .metric(
            "palisade_proxy_tls_handshake_failures_total",
            &["direction=\"inbound\""],
        )
        .await
}

/// Waits (bounded) until the sidecar has counted `expected` inbound handshake failures: it
/// counts a refusal just after sending the alert the client reacts to.
async fn await_inbound_failures(mesh: &TestMesh, workload: &str, expected: f64) {
    let mut last = 0.0;
    let reached = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            last = inbound_handshake_failures(mesh, workload).await;
            if last >= expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok() && last == expected,
        "{workload}: inbound handshake failures {last}, expected {expected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_admits_only_mesh_certificates() {
    const TEST: &str = "inbound_admits_only_mesh_certificates";
    let mesh = mesh::shop(TEST).start().await;
    let search = mesh.sidecar("search");
    let bundle = mesh.bundle();
    let client_id = mesh.identity("shop", "client");
    let attempt = |creds| {
        attempt_inbound(
            search.inbound(),
            creds,
            &bundle,
            &search.identity,
            8080,
            "search.shop:8080",
            "/echo",
        )
    };

    // Control: a certificate from the mesh CA is admitted, and the app learns who called.
    let good = mesh.issue(&client_id);
    let ok = attempt(Some(&good)).await;
    assert_eq!(ok.handshake, Ok(()));
    let reply = ok.reply.expect("request with a mesh certificate");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json()["headers"]["x-forwarded-client-cert"][0],
        format!("By={};URI={}", shop_id("search"), shop_id("client"))
    );
    let before = inbound_handshake_failures(&mesh, "search").await;

    // No client certificate at all.
    let none = attempt(None).await;
    assert!(
        refused(&none),
        "a client without a certificate got in: {none:?}"
    );

    // A certificate for the same trust domain and even the same SPIFFE ID, from another CA.
    let td = TrustDomain::new("cluster.local").unwrap();
    let (foreign_ca, _) = CertificateAuthority::generate(td, &CaOptions::default()).unwrap();
    let foreign = issue(&foreign_ca, &client_id);
    let impostor = attempt(Some(&foreign)).await;
    assert!(
        refused(&impostor),
        "a client with a foreign CA's certificate got in: {impostor:?}"
    );

    // The sidecar counted both refusals.
    await_inbound_failures(&mesh, "search", before + 2.0).await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_client_without_certificate_is_refused() {
    const TEST: &str = "openssl_client_without_certificate_is_refused";
    let Some(openssl) = tools::require(TEST, "openssl") else {
        return;
    };
    let mesh = mesh::shop(TEST).start().await;
    let search = mesh.sidecar("search");
    let root = mesh.dir.path().join("root-cert.pem");
    std::fs::write(&root, &mesh.ca_material.root_cert_pem).unwrap();
    let before = inbound_handshake_failures(&mesh, "search").await;
    // -ign_eof keeps s_client reading after the handshake, where TLS 1.3 delivers the
    // server's verdict on the (missing) client certificate.
    let out = tools::run_ok(
        &openssl,
        [
            "s_client",
            "-connect",
            &search.inbound().to_string(),
            "-servername",
            "port-8080.palisade.mesh",
            "-alpn",
            "h2",
            "-CAfile",
            root.to_str().unwrap(),
            "-ign_eof",
        ],
        Duration::from_secs(30),
    )
    .await;
    let text = output_text(&out);
    assert!(!out.status.success(), "openssl s_client succeeded: {text}");
    assert!(
        text.contains("certificate required"),
        "expected the server's certificate_required alert: {text}"
    );
    // It did reach the server and verify its chain: the refusal is about the client.
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    await_inbound_failures(&mesh, "search", before + 1.0).await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslyze_reports_required_client_auth_and_tls13_only() {
    const TEST: &str = "sslyze_reports_required_client_auth_and_tls13_only";
    let Some(sslyze) = tools::require(TEST, "sslyze") else {
        return;
    };
    let mesh = mesh::shop(TEST).start().await;
    let search = mesh.sidecar("search");
    // Scanned as an outsider, without a client certificate: sslyze's connectivity check
    // detects that one is required, and TLS 1.3 handshakes still complete on the client side
    // (the server rejects the missing certificate afterwards), so every version is probed.
    let json_out = mesh.dir.path().join("sslyze.json");
    let out = tools::run_ok(
        &sslyze,
        [
            format!("--json_out={}", json_out.display()),
            "--sslv2".into(),
            "--sslv3".into(),
            "--tlsv1".into(),
            "--tlsv1_1".into(),
            "--tlsv1_2".into(),
            "--tlsv1_3".into(),
            search.inbound().to_string(),
        ],
        Duration::from_secs(120),
    )
    .await;
    assert!(out.status.success(), "{}", output_text(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    let server = &report["server_scan_results"][0];
    assert_eq!(server["scan_status"], "COMPLETED", "{server:#}");
    assert_eq!(
        server["connectivity_result"]["highest_tls_version_supported"], "TLS_1_3",
        "{server:#}"
    );
    assert_eq!(
        server["connectivity_result"]["client_auth_requirement"], "REQUIRED",
        "{:#}",
        server["connectivity_result"]
    );
    let accepted = |scan: &str| {
        let result = &server["scan_result"][scan];
        assert_eq!(result["status"], "COMPLETED", "{scan}: {result:#}");
        result["result"]["accepted_cipher_suites"]
            .as_array()
            .map_or(0, Vec::len)
    };
    for old in [
        "ssl_2_0_cipher_suites",
        "ssl_3_0_cipher_suites",
        "tls_1_0_cipher_suites",
        "tls_1_1_cipher_suites",
        "tls_1_2_cipher_suites",
    ] {
        assert_eq!(accepted(old), 0, "{old} accepted by the inbound port");
    }
    assert!(
        accepted("tls_1_3_cipher_suites") > 0,
        "TLS 1.3 not accepted"
    );
    mesh.stop().await;
}

/// `payments` (HTTP on 8080, gRPC on 9090) is served at its address by a sidecar holding
/// `search`'s identity, with a counting app behind it; no `payments` sidecar exists.
const IMPOSTOR_WORKLOADS: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  serviceAccount: client
  address: {block}.1
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: search, namespace: shop, labels: {app: search}}
spec:
  serviceAccount: search
  address: {block}.2
  ports:
  - {name: http, port: 8080}
  - {name: grpc, port: 9090}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: payments, namespace: shop, labels: {app: payments}}
spec:
  serviceAccount: payments
  address: {block}.3
  ports:
  - {name: http, port: 8080}
  - {name: grpc, port: 9090}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: payments, namespace: shop}
spec:
  selector: {app: payments}
  ports:
  - {name: http, port: 8080}
  - {name: grpc, port: 9090}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_with_the_wrong_identity_is_refused() {
    const TEST: &str = "server_with_the_wrong_identity_is_refused";
    let hits = Arc::new(AtomicUsize::new(0));
    let mesh = TestMesh::builder(TEST)
        .file("mesh.yaml", MESH_CONFIG)
        .file("workloads.yaml", IMPOSTOR_WORKLOADS)
        .without_sidecar("payments")
        .sidecar_on("search", 3)
        .app(3, 8080, App::Counting(hits.clone()))
        .app(3, 9090, App::Counting(hits.clone()))
        .start()
        .await;
    let client = mesh.sidecar("client");
    let impostor = mesh.sidecar("search");
    assert_eq!(impostor.ip, mesh.block.ip(3));
    assert_eq!(impostor.identity.as_str(), shop_id("search"));

    // HTTP: a generic 502; the peer and the identity it should have had are in the log only.
    let reply = get_h1(client.outbound(), "http://payments.shop:8080/", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 502, "{}", reply.text());
    let body = reply.text();
    assert_eq!(body, "502 Bad Gateway: upstream unavailable\n");

    // gRPC: UNAVAILABLE (14), as a gRPC answer rather than an HTTP error.
    let mut payments = payments_client(client.outbound(), "payments.shop:9090").await;
    let status = payments
        .charge(ChargeRequest {
            order_id: "o-1".into(),
            cents: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "upstream unavailable", "{status:?}");

    // Both handshakes failed on both sides, and nothing reached the impostor's app.
    let client_metrics = admin_get(client.admin(), "/metrics").await.text();
    let failures = "palisade_proxy_tls_handshake_failures_total";
    // The impostor notices the client's abort a moment after the client answered the app.
    let impostor_admin = impostor.admin();
    let impostor_metrics = poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        "the impostor counts two failed handshakes",
        || async move {
            let text = admin_get(impostor_admin, "/metrics").await.text();
            (metric(&text, failures, &["direction=\"inbound\""]) >= 2.0).then_some(text)
        },
    )
    .await;
    assert_eq!(
        metric(&client_metrics, failures, &["direction=\"outbound\""]),
        2.0,
        "{client_metrics}"
    );
    assert_eq!(
        metric(&impostor_metrics, failures, &["direction=\"inbound\""]),
        2.0,
        "{impostor_metrics}"
    );
    assert_eq!(
        metric(
            &impostor_metrics,
            "palisade_proxy_requests_total",
            &["direction=\"inbound\""]
        ),
        0.0
    );
    assert_eq!(
        metric(
            &client_metrics,
            "palisade_proxy_requests_total",
            &["direction=\"outbound\"", "status=\"502\""]
        ),
        1.0
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a request reached the impostor's app"
    );
    mesh.stop().await;
}

// === crafted certificates ===

/// `client` (a sidecar without app, where outbound requests start), `search` (a sidecar with
/// the search app, whose inbound port is tried with crafted client certificates), and two
/// Services whose workloads run no sidecar: a stand-in takes each one's place, presenting a
/// crafted certificate at `genuine` (the control) and at `forged`.
const CRAFTED_WORKLOADS: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  serviceAccount: client
  address: {block}.1
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: search, namespace: shop, labels: {app: search}, annotations: {palisade.dev/app: search}}
spec:
  serviceAccount: search
  address: {block}.2
  ports:
  - {name: http, port: 8080, appProtocol: http}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: forged, namespace: shop, labels: {app: forged}}
spec:
  serviceAccount: forged
  address: {block}.3
  ports:
  - {name: http, port: 8080, appProtocol: http}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: genuine, namespace: shop, labels: {app: genuine}}
spec:
  serviceAccount: genuine
  address: {block}.4
  ports:
  - {name: http, port: 8080, appProtocol: http}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: search, namespace: shop}
spec:
  selector: {app: search}
  ports:
  - {name: http, port: 8080, appProtocol: http}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: forged, namespace: shop}
spec:
  selector: {app: forged}
  ports:
  - {name: http, port: 8080, appProtocol: http}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: genuine, namespace: shop}
spec:
  selector: {app: genuine}
  ports:
  - {name: http, port: 8080, appProtocol: http}
";

const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;

/// What a crafting function is asked for: the forgery under test, or the control that the
/// same code makes with valid parameters and the mesh's real keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Make {
    Control,
    Forgery,
}

async fn outbound_handshake_failures(mesh: &TestMesh, workload: &str) -> f64 {
    mesh.sidecar(workload)
        .metric(
            "palisade_proxy_tls_handshake_failures_total",
            &["direction=\"outbound\""],
        )
        .await
}

/// Shows that real sidecars refuse what `craft` forges and admit its control, both ways:
/// inbound, `search`'s sidecar refuses a client presenting the forgery for `client`'s
/// identity; outbound, `client`'s sidecar refuses a server presenting it for the identity
/// of the Service's workload. Each refusal is one more failed handshake in the refusing
/// sidecar's metrics, and reaches no app. `reason` is what the sidecars' verifier, called
/// directly, must say about the forgery (the refusal on the wire carries no reason).
async fn refused_both_ways<F>(test: &'static str, reason: &str, craft: F)
where
    F: Fn(&CaMaterial, &SpiffeId, Make) -> Credentials,
{
    let mesh = TestMesh::builder(test)
        .file("mesh.yaml", MESH_CONFIG)
        .file("workloads.yaml", CRAFTED_WORKLOADS)
        .without_sidecar("forged")
        .without_sidecar("genuine")
        .start()
        .await;
    let ca = &mesh.ca_material;
    let bundle = mesh.bundle();
    let search = mesh.sidecar("search");
    let client = mesh.sidecar("client");
    let client_id = mesh.identity("shop", "client");
    let attempt = |creds| {
        attempt_inbound(
            search.inbound(),
            Some(creds),
            &bundle,
            &search.identity,
            8080,
            "search.shop:8080",
            "/echo",
        )
    };

    // Inbound control: the crafted leaf made right is admitted, under the identity it carries.
    let control = craft(ca, &client_id, Make::Control);
    let admitted = attempt(&control).await;
    assert_eq!(admitted.handshake, Ok(()), "control refused: {admitted:?}");
    let reply = admitted
        .reply
        .expect("request with the control certificate");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json()["headers"]["x-forwarded-client-cert"][0],
        format!("By={};URI={}", shop_id("search"), shop_id("client"))
    );
    let before = inbound_handshake_failures(&mesh, "search").await;

    // The forgery fails the sidecars' own chain check for the reason meant, not for a slip
    // in crafting; the control passes it.
    let forgery = craft(ca, &client_id, Make::Forgery);
    assert_eq!(forgery.identity(), &client_id);
    let verdict = |creds: &Credentials| {
        let (leaf, chain) = creds.chain().split_first().expect("a leaf");
        verify_chain(leaf, chain, &bundle, Usage::Client)
    };
    assert_eq!(verdict(&control).unwrap(), client_id);
    let why = verdict(&forgery)
        .expect_err("the forgery verifies")
        .to_string();
    assert!(why.contains(reason), "expected {reason}: {why}");

    // Inbound forgery: refused at the handshake, and counted.
    let turned_away = attempt(&forgery).await;
    assert!(
        refused(&turned_away),
        "a client with the forged certificate got in: {turned_away:?}"
    );
    await_inbound_failures(&mesh, "search", before + 1.0).await;

    // Outbound: stand-ins in place of the peer sidecars of `genuine` (control) and `forged`.
    let genuine = stand_in_peer(
        mesh.block.addr(4, INBOUND_PORT),
        &craft(ca, &mesh.identity("shop", "genuine"), Make::Control),
        &bundle,
        mesh.shutdown.clone(),
    )
    .await;
    let forged = stand_in_peer(
        mesh.block.addr(3, INBOUND_PORT),
        &craft(ca, &mesh.identity("shop", "forged"), Make::Forgery),
        &bundle,
        mesh.shutdown.clone(),
    )
    .await;
    let reply = get_h1(client.outbound(), "http://genuine.shop:8080/", &[])
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        200,
        "control server refused: {}",
        reply.text()
    );
    assert_eq!(reply.text(), STAND_IN_BODY);
    assert_eq!(genuine.load(Ordering::SeqCst), 1);

    let before = outbound_handshake_failures(&mesh, "client").await;
    let reply = get_h1(client.outbound(), "http://forged.shop:8080/", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.text(), "502 Bad Gateway: upstream unavailable\n");
    assert_eq!(
        outbound_handshake_failures(&mesh, "client").await,
        before + 1.0
    );
    assert_eq!(
        forged.load(Ordering::SeqCst),
        0,
        "a request reached the server with the forged certificate"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_leaf_of_the_mesh_ca_is_refused() {
    // Right in every field and signed by the real issuing CA, but past notAfter by an hour:
    // more than any clock skew a verifier might forgive.
    refused_both_ways(
        "expired_leaf_of_the_mesh_ca_is_refused",
        "CertExpired",
        |ca, id, make| {
            let validity = match make {
                Make::Control => Validity::CURRENT,
                Make::Forgery => Validity {
                    from: -2 * HOUR,
                    until: -HOUR,
                },
            };
            craft::leaf(id, validity, &craft::mesh_issuer(ca), &[&ca.ca_cert_pem])
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_yet_valid_leaf_of_the_mesh_ca_is_refused() {
    refused_both_ways(
        "not_yet_valid_leaf_of_the_mesh_ca_is_refused",
        "CertNotValidYet",
        |ca, id, make| {
            let validity = match make {
                Make::Control => Validity::CURRENT,
                Make::Forgery => Validity {
                    from: DAY,
                    until: 2 * DAY,
                },
            };
            craft::leaf(id, validity, &craft::mesh_issuer(ca), &[&ca.ca_cert_pem])
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_signed_by_another_key_in_the_issuing_ca_name_is_refused() {
    // The forgery names the real issuing CA as issuer (subject and key identifier alike) and
    // is presented with the real issuing CA certificate; only its signature is not that CA's.
    refused_both_ways(
        "leaf_signed_by_another_key_in_the_issuing_ca_name_is_refused",
        "InvalidSignatureForPublicKey",
        |ca, id, make| {
            let key = match make {
                Make::Control => craft::key_of(&ca.ca_key_pem),
                Make::Forgery => craft::new_key(),
            };
            let issuer = craft::issuer_as(&ca.ca_cert_pem, key);
            craft::leaf(id, Validity::CURRENT, &issuer, &[&ca.ca_cert_pem])
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_under_a_forged_intermediate_is_refused() {
    // The presented intermediate has the real intermediate's subject and claims the real root
    // as its issuer, but holds another key and is signed by another key. The control re-issues
    // the real intermediate from the real root with the real keys.
    refused_both_ways(
        "leaf_under_a_forged_intermediate_is_refused",
        "InvalidSignatureForPublicKey",
        |ca, id, make| {
            let (intermediate_key, root_key) = match make {
                Make::Control => (
                    craft::key_of(&ca.ca_key_pem),
                    craft::key_of(&ca.root_key_pem),
                ),
                Make::Forgery => (craft::new_key(), craft::new_key()),
            };
            let root = craft::issuer_as(&ca.root_cert_pem, root_key);
            let (intermediate, issuer) =
                craft::intermediate_as(&ca.ca_cert_pem, intermediate_key, &root);
            assert_eq!(
                craft::raw_subject(&intermediate),
                craft::raw_subject(&ca.ca_cert_pem),
                "the crafted intermediate must carry the real one's subject"
            );
            craft::leaf(id, Validity::CURRENT, &issuer, &[&intermediate])
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_of_a_self_made_ca_beside_the_real_intermediate_is_refused() {
    // Signed straight by a CA nobody trusts, with the mesh's real intermediate in the chain
    // as if that lent it standing. The control signs with the real intermediate instead.
    refused_both_ways(
        "leaf_of_a_self_made_ca_beside_the_real_intermediate_is_refused",
        "UnknownIssuer",
        |ca, id, make| {
            let issuer = match make {
                Make::Control => craft::mesh_issuer(ca),
                Make::Forgery => craft::self_made_ca("Self-made CA").1,
            };
            craft::leaf(id, Validity::CURRENT, &issuer, &[&ca.ca_cert_pem])
        },
    )
    .await;
}
