//! Authorization on real traffic: the shop's policies enforced by running sidecars, denials
//! answered as the contract says (HTTP 403 with `x-palisade-denied-by`, gRPC status 7) and
//! counted, policy edits applied to open connections without restarts, and a bad policy file
//! changing nothing.

use std::time::Duration;

use crate::support::clients::{H1Client, admin_get, payments_client};
use crate::support::mesh::{SHOP_SERVICES, SHOP_WORKLOADS, TestMesh};
use crate::support::{metric, poll};
use palisade_example_shop::payments_proto::ChargeRequest;

use crate::support::mesh::DENY_MESH_CONFIG as DENY_BY_DEFAULT;

/// The shop's rules, with the test shop's `client` in the frontend's role.
const POLICIES: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: search-from-client, namespace: shop}
spec:
  selector: {matchLabels: {app: search}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [\"cluster.local/ns/shop/sa/client\"]}}]
    to: [{operation: {methods: [\"GET\"], paths: [\"/search*\"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: payments-from-client, namespace: shop}
spec:
  selector: {matchLabels: {app: payments}}
  rules:
  - from: [{source: {principals: [\"cluster.local/ns/shop/sa/client\"]}}]
    to: [{operation: {paths: [\"/payments.Payments/Charge\"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: payments-deny-search, namespace: shop}
spec:
  selector: {matchLabels: {app: payments}}
  action: DENY
  rules:
  - from: [{source: {principals: [\"cluster.local/ns/shop/sa/search\"]}}]
---
apiVersion: palisade.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: payments-audit, namespace: shop}
spec:
  selector: {matchLabels: {app: payments}}
  action: AUDIT
  rules:
  - to: [{operation: {paths: [\"/payments.Payments/*\"]}}]
";

const SEARCH_ID: &str = "spiffe://cluster.local/ns/shop/sa/search";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";

fn charge(order: &str) -> ChargeRequest {
    ChargeRequest {
        order_id: order.into(),
        cents: 100,
    }
}

async fn shop(test: &'static str, watch: bool) -> TestMesh {
    let builder = TestMesh::builder(test)
        .file("mesh.yaml", DENY_BY_DEFAULT)
        .file("workloads.yaml", SHOP_WORKLOADS)
        .file("services.yaml", SHOP_SERVICES)
        .file("policies.yaml", POLICIES);
    if watch { builder.watch() } else { builder }.start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_policies_are_enforced_and_violations_counted() {
    let mesh = shop("shop_policies_are_enforced_and_violations_counted", false).await;
    let search = mesh.sidecar("search");
    let client = mesh.sidecar("client");
    let payments = mesh.sidecar("payments");

    // search -> payments over gRPC: PERMISSION_DENIED (7) with the deciding policy named.
    let mut from_search = payments_client(search.outbound(), "payments.shop:9090").await;
    let status = from_search.charge(charge("o-search")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("shop/payments-deny-search"),
        "{status:?}"
    );
    assert_eq!(
        status
            .metadata()
            .get("x-palisade-denied-by")
            .and_then(|v| v.to_str().ok()),
        Some("shop/payments-deny-search")
    );

    // search -> payments over plain HTTP: 403 with the header, before anything reaches the app.
    let mut http_from_search = H1Client::new(search.outbound());
    let reply = http_from_search
        .get("http://payments.shop:9090/payments.Payments/Charge", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(
        reply.header("x-palisade-denied-by"),
        Some("shop/payments-deny-search")
    );

    // client (the frontend's role) -> payments Charge works; any other method is denied.
    let mut from_client = payments_client(client.outbound(), "payments.shop:9090").await;
    let ok = from_client
        .charge(charge("o-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.status, "charged o-1");

    // client -> search: GET /search* allowed, anything else default-deny.
    let mut http_from_client = H1Client::new(client.outbound());
    let reply = http_from_client
        .get("http://search.shop:8080/search?q=lamp", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = http_from_client
        .get("http://search.shop:8080/echo", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 403);
    assert_eq!(reply.header("x-palisade-denied-by"), Some("default-deny"));
    let reply = http_from_client
        .get("http://search.shop:8080/search/../echo", &[])
        .await
        .unwrap();
    assert_eq!(
        reply.status, 403,
        "dot segments must not bypass the path rule"
    );

    // Every denial and audit is counted on the refusing sidecar, with policy and source.
    let text = admin_get(payments.admin(), "/metrics").await.text();
    let denied = metric(
        &text,
        "palisade_proxy_authz_denials_total",
        &[
            "policy=\"shop/payments-deny-search\"",
            &format!("source=\"{SEARCH_ID}\""),
        ],
    );
    assert!(denied >= 2.0, "denials counted: {denied}\n{text}");
    let audited = metric(
        &text,
        "palisade_proxy_authz_audits_total",
        &[
            "policy=\"shop/payments-audit\"",
            &format!("source=\"{CLIENT_ID}\""),
        ],
    );
    assert!(audited >= 1.0, "audits counted: {audited}\n{text}");
    let search_text = admin_get(search.admin(), "/metrics").await.text();
    assert!(
        metric(
            &search_text,
            "palisade_proxy_authz_denials_total",
            &["policy=\"default-deny\""]
        ) >= 2.0,
        "{search_text}"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_edits_apply_to_running_proxies_and_bad_files_change_nothing() {
    let mesh = shop(
        "policy_edits_apply_to_running_proxies_and_bad_files_change_nothing",
        true,
    )
    .await;
    let client = mesh.sidecar("client");
    let search = mesh.sidecar("search");
    // One keep-alive connection for the whole test: decisions are per request, so a policy
    // change must apply to connections that are already open.
    let mut conn = H1Client::new(client.outbound());
    let reply = conn
        .get("http://search.shop:8080/search?q=lamp", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 200);

    // Narrow the rule: /search is no longer allowed.
    let narrowed = POLICIES.replace("paths: [\"/search*\"]", "paths: [\"/nothing*\"]");
    assert_ne!(narrowed, POLICIES);
    std::fs::write(mesh.dir.path().join("policies.yaml"), &narrowed).unwrap();
    until_status(&mut conn, 403, "the narrowed policy applies").await;

    // A bad file next to it: rejected, reported, and nothing changes anywhere.
    let versions_before = admin_get(search.admin(), "/config").await.json()["versions"].clone();
    std::fs::write(
        mesh.dir.path().join("zz-bad.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: jwt, namespace: shop}\nspec:\n  rules:\n  - from: [{source: {requestPrincipals: [\"*\"]}}]\n",
    )
    .unwrap();
    let cp_admin = mesh.cp_admin();
    poll(
        Duration::from_secs(15),
        Duration::from_millis(50),
        "the control plane reports the bad file",
        || async move {
            let text = admin_get(cp_admin, "/metrics").await.text();
            (metric(
                &text,
                "palisade_config_reloads_total",
                &["result=\"failure\""],
            ) >= 1.0)
                .then_some(())
        },
    )
    .await;
    let reply = conn
        .get("http://search.shop:8080/search?q=lamp", &[])
        .await
        .unwrap();
    assert_eq!(
        reply.status, 403,
        "the last good configuration stays in force"
    );
    let versions_after = admin_get(search.admin(), "/config").await.json()["versions"].clone();
    assert_eq!(
        versions_before, versions_after,
        "no new snapshot reached the proxy"
    );

    // Fix everything: the original policy is back in force on the same connection.
    std::fs::remove_file(mesh.dir.path().join("zz-bad.yaml")).unwrap();
    std::fs::write(mesh.dir.path().join("policies.yaml"), POLICIES).unwrap();
    until_status(&mut conn, 200, "the original policy applies again").await;
    mesh.stop().await;
}

/// Sends GET /search on `conn` (the same keep-alive connection) until it answers `status`,
/// for at most 15 s: a pushed policy has no notification a test could await.
async fn until_status(conn: &mut H1Client, status: u16, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = conn.get("http://search.shop:8080/search?q=lamp", &[]).await
            && r.status == status
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached within 15 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
