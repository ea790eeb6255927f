//! The Kubernetes source against a Kubernetes API emulator on loopback (kmock, from PyPI; not
//! a real API server: no admission, no validation, no resource versions): objects appearing,
//! relabelled and deleted change what proxies receive; a malformed policy is rejected and the
//! last good view kept; two replicas on the same API serve the same versions.

use std::collections::BTreeMap;
use std::time::Duration;

use http::Method;
use palisade_control_plane::k8s::{KubernetesSource, RunningSource};
use palisade_control_plane::test_util::kmock::{self, Kmock, meshed_pod, review};
use palisade_control_plane::test_util::{TestControlPlane, TestOptions};
use palisade_proto::v1 as pb;
use palisade_proto::v1::discovery_response::Resources;
use serde_json::{Value, json};

use super::support::*;

/// The emulator (SKIPPED without Python's kmock) answering TokenReviews from `reviews`.
async fn kmock(test: &str, reviews: &Value) -> Option<Kmock> {
    let Some(python) = kmock::python().await else {
        println!(
            "SKIPPED: {test}: Python's kmock not found (pip install kmock; tests/run.sh installs it)"
        );
        return None;
    };
    Some(Kmock::start(python, Some(reviews)).await.unwrap())
}

/// A Kubernetes source on the emulator, listed once.
async fn source(k: &Kmock) -> RunningSource {
    KubernetesSource::new(k.client().unwrap())
        .start(TIMEOUT, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap()
}

/// The shop in the emulator: a labelled namespace, the web and client pods (meshed), a pod
/// without a sidecar, the web Service, a MeshConfig and a policy letting client call web.
async fn seed(k: &Kmock) {
    k.create(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"palisade.dev/inject": "enabled"}}}))
        .await
        .unwrap();
    k.create(meshed_pod("web-1", "web", "10.1.0.7"))
        .await
        .unwrap();
    k.create(meshed_pod("client-1", "client", "10.1.0.8"))
        .await
        .unwrap();
    k.create(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "legacy", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "legacy", "image": "x"}]},
        "status": {"phase": "Running", "podIP": "10.1.0.9"}}))
        .await
        .unwrap();
    k.create(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "batch", "namespace": "shop", "annotations": {"palisade.dev/inject": "disabled"}},
        "spec": {"containers": [{"name": "batch", "image": "x"}]},
        "status": {"phase": "Running", "podIP": "10.1.0.12"}})).await.unwrap();
    k.create(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}))
        .await
        .unwrap();
    k.create(
        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "MeshConfig",
        "metadata": {"name": "mesh", "namespace": "palisade-system"},
        "spec": {"certificateLifetime": "1h"}}),
    )
    .await
    .unwrap();
    k.create(json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "web-callers", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "ALLOW",
                 "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/client"]}}]}]}})).await.unwrap();
}

/// The web Service's endpoint addresses in a Services snapshot.
fn web_endpoints(resp: &pb::DiscoveryResponse) -> Vec<String> {
    let Some(Resources::Services(s)) = &resp.resources else {
        panic!("services snapshot expected: {resp:?}");
    };
    let mut addresses: Vec<String> = s
        .services
        .iter()
        .filter(|s| s.name == "web")
        .flat_map(|s| s.endpoints.iter().map(|e| e.address.clone()))
        .collect();
    addresses.sort();
    addresses
}

/// Waits for the next Services push, ACKing every response on the way.
async fn next_services(stream: &mut ProxyStream) -> pb::DiscoveryResponse {
    loop {
        let resp = stream.recv().await;
        stream.send(ack(&resp)).await;
        if resp.type_url == pb::SERVICES_TYPE_URL {
            return resp;
        }
    }
}

#[tokio::test]
async fn cluster_changes_reach_the_proxies() {
    let Some(k) = kmock("cluster_changes_reach_the_proxies", &client_token()).await else {
        return;
    };
    seed(&k).await;
    let source = source(&k).await;
    let names: Vec<String> = source
        .initial()
        .workloads()
        .map(|w| w.key().to_string())
        .collect();
    assert_eq!(
        names,
        ["shop/client-1", "shop/web-1"],
        "only meshed pods are workloads"
    );
    let cp = timed(
        "start",
        TestControlPlane::start_kubernetes(source, TestOptions::default()),
    )
    .await
    .unwrap();
    let (_client, mut stream, got) = connect_with_token(&cp, "client-1", "tok-client").await;
    for resp in got.values() {
        stream.send(ack(resp)).await;
    }
    assert_eq!(web_endpoints(&got[pb::SERVICES_TYPE_URL]), ["10.1.0.7"]);
    assert!(
        cp.control_plane
            .metrics_text()
            .contains("\npalisade_kubernetes_unmeshed_pods 1\n"),
        "{}",
        cp.control_plane.metrics_text()
    );
    // The meshed namespace got the trust anchors the injector mounts.
    let anchors = timed("trust anchors written", async {
        loop {
            let list = k
                .send(Method::GET, "/api/v1/namespaces/shop/configmaps", None)
                .await
                .unwrap();
            if let Some(cm) = list["items"].as_array().and_then(|items| items.first()) {
                return cm.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(anchors["metadata"]["name"], "palisade-trust-anchors");
    assert_eq!(
        anchors["data"]["ca.crt"].as_str(),
        Some(cp.bundle().to_pem_list().concat().as_str())
    );
    match &got[pb::WORKLOAD_TYPE_URL].resources {
        Some(Resources::Workload(w)) => {
            assert_eq!(w.spiffe_id, "spiffe://cluster.local/ns/shop/sa/client");
        }
        other => panic!("workload expected: {other:?}"),
    }

    // A new replica of web appears.
    k.create(meshed_pod("web-2", "web", "10.1.0.10"))
        .await
        .unwrap();
    let resp = timed("web-2 pushed", next_services(&mut stream)).await;
    assert_eq!(web_endpoints(&resp), ["10.1.0.10", "10.1.0.7"]);

    // Relabelled out of the Service.
    k.patch(
        "/api/v1/namespaces/shop/pods/web-1",
        json!({"metadata": {"labels": {"app": "retired"}}}),
    )
    .await
    .unwrap();
    let resp = timed("web-1 relabelled", next_services(&mut stream)).await;
    assert_eq!(web_endpoints(&resp), ["10.1.0.10"]);

    // Deleted.
    k.delete("/api/v1/namespaces/shop/pods/web-2")
        .await
        .unwrap();
    let resp = timed("web-2 deleted", next_services(&mut stream)).await;
    assert!(web_endpoints(&resp).is_empty());

    // A malformed policy: rejected, the last good view kept, the rejection counted.
    let rejected_before = rejected_reloads(&cp);
    k.create(
        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "broken", "namespace": "shop"},
        "spec": {"action": "MAYBE"}}),
    )
    .await
    .unwrap();
    timed("rejection counted", async {
        while rejected_reloads(&cp) == rejected_before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let snapshot = cp.control_plane.snapshot();
    assert!(
        snapshot.authorization_policy("shop", "broken").is_none(),
        "the malformed policy is not in force"
    );
    assert!(snapshot.workload("shop", "client-1").is_some());
    // Once it is fixed, changes flow again.
    k.delete("/apis/palisade.dev/v1alpha1/namespaces/shop/authorizationpolicies/broken")
        .await
        .unwrap();
    k.create(meshed_pod("web-3", "web", "10.1.0.11"))
        .await
        .unwrap();
    let resp = timed("web-3 pushed", next_services(&mut stream)).await;
    assert_eq!(web_endpoints(&resp), ["10.1.0.11"]);

    // Kubernetes reports web-3 not ready (its EndpointSlice): it leaves the Service, and
    // comes back when ready.
    let slice = |ready: bool| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abcde", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.11"], "conditions": {"ready": ready}}]})
    };
    k.create(slice(false)).await.unwrap();
    let resp = timed("web-3 not ready", next_services(&mut stream)).await;
    assert!(web_endpoints(&resp).is_empty());
    k.patch(
        "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/web-abcde",
        json!({"endpoints": [{"addresses": ["10.1.0.11"], "conditions": {"ready": true}}]}),
    )
    .await
    .unwrap();
    let resp = timed("web-3 ready again", next_services(&mut stream)).await;
    assert_eq!(web_endpoints(&resp), ["10.1.0.11"]);
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn two_replicas_serve_the_same_versions() {
    let Some(k) = kmock("two_replicas_serve_the_same_versions", &client_token()).await else {
        return;
    };
    seed(&k).await;
    let a = timed(
        "replica a",
        TestControlPlane::start_kubernetes(source(&k).await, TestOptions::default()),
    )
    .await
    .unwrap();
    let b = timed(
        "replica b",
        TestControlPlane::start_kubernetes(source(&k).await, TestOptions::default()),
    )
    .await
    .unwrap();
    let versions = |got: &BTreeMap<String, pb::DiscoveryResponse>| -> BTreeMap<String, String> {
        got.iter()
            .filter(|(url, _)| url.as_str() != pb::TRUST_BUNDLE_TYPE_URL)
            .map(|(url, r)| (url.clone(), r.version_info.clone()))
            .collect()
    };
    let (_ca, _sa, got_a) = connect_with_token(&a, "client-1", "tok-client").await;
    let (_cb, _sb, got_b) = connect_with_token(&b, "client-1", "tok-client").await;
    assert_eq!(versions(&got_a), versions(&got_b));
    assert!(versions(&got_a).len() >= 5, "{:?}", versions(&got_a));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// The recorded review of client-1's projected token.
fn client_token() -> Value {
    json!({"tok-client": review("shop", "client", Some("client-1"), &["palisade"])})
}

#[tokio::test]
async fn token_review_decides_who_may_bootstrap() {
    let reviews = json!({
        "tok-client": review("shop", "client", Some("client-1"), &["palisade"]),
        "tok-web-9": review("shop", "web", Some("web-9"), &["palisade"]),
        "tok-web": review("shop", "web", None, &["palisade"]),
        "tok-apiserver": review("shop", "client", Some("client-1"), &["https://kubernetes.default.svc"]),
        "tok-other-ns": review("prod", "client", Some("client-1"), &["palisade"]),
        "tok-node": {"authenticated": true, "user": {"username": "system:node:n1"}, "audiences": ["palisade"]},
        "tok-expired": {"authenticated": false, "error": "token has expired"},
    });
    let Some(k) = kmock("token_review_decides_who_may_bootstrap", &reviews).await else {
        return;
    };
    seed(&k).await;
    let cp = timed(
        "start",
        TestControlPlane::start_kubernetes(source(&k).await, TestOptions::default()),
    )
    .await
    .unwrap();
    // The identity comes from the reviewed token, and a restarted proxy of the same pod
    // bootstraps again with the same projected token.
    for attempt in 0..2 {
        let (_, issued) = cp
            .certify_with_token("shop", "client-1", "tok-client")
            .await
            .unwrap_or_else(|e| panic!("attempt {attempt}: {e}"));
        assert_eq!(issued.spiffe_id, "spiffe://cluster.local/ns/shop/sa/client");
    }
    for (workload, token, refusal) in [
        ("web-1", "tok-client", "cannot prove shop/web-1"),
        ("web-1", "tok-web-9", "of pod web-9"),
        ("client-1", "tok-web", "service account shop/web"),
        ("client-1", "tok-apiserver", "audiences"),
        ("client-1", "tok-other-ns", "service account prod/client"),
        ("client-1", "tok-node", "not a service account"),
        ("client-1", "tok-expired", "token has expired"),
        ("client-1", "tok-unknown", "invalid bearer token"),
    ] {
        let err = cp
            .certify_with_token("shop", workload, token)
            .await
            .expect_err(token)
            .to_string();
        assert!(err.contains(refusal), "{workload} with {token}: {err}");
    }
    // A token without a pod name still binds namespace and service account.
    let (_, issued) = cp
        .certify_with_token("shop", "web-1", "tok-web")
        .await
        .unwrap();
    assert_eq!(issued.spiffe_id, "spiffe://cluster.local/ns/shop/sa/web");
    cp.stop().await.unwrap();
}

fn rejected_reloads(cp: &TestControlPlane) -> u64 {
    cp.control_plane
        .metrics_text()
        .lines()
        .filter(|l| l.starts_with("palisade_config_reloads_total") && l.contains("failure"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}
