//! The Kubernetes source against a Kubernetes API emulator on loopback (kmock, from PyPI; not
//! a real API server: no admission, no validation, no resource versions): objects appearing,
//! relabelled and deleted change what proxies receive; a malformed policy is rejected and the
//! last good view kept; two replicas on the same API serve the same versions.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use palisade_control_plane::k8s::{KubernetesSource, RunningSource};
use palisade_control_plane::test_util::{TestControlPlane, TestOptions};
use palisade_proto::v1 as pb;
use palisade_proto::v1::discovery_response::Resources;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::support::*;

/// The emulator, killed when dropped.
struct Kmock {
    url: String,
    /// kmock keeps no resource versions; watchers need them to resume, so each write stamps
    /// the next one, as an API server would.
    resource_version: std::sync::atomic::AtomicU64,
    _reviews_file: Option<tempfile::NamedTempFile>,
    _child: Child,
}

impl Kmock {
    /// Starts the emulator answering TokenReviews from `reviews` (token → recorded status),
    /// or prints `SKIPPED:` and returns `None` without Python's kmock.
    async fn start_with_reviews(test: &str, reviews: Option<&Value>) -> Option<Kmock> {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/control_plane/kmock_server.py"
        );
        for python in ["/opt/meshtools/bin/python", "python3"] {
            let has_kmock = Command::new(python)
                .args(["-c", "import kmock"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success());
            if !has_kmock {
                continue;
            }
            let reviews_file = reviews.map(|r| {
                let file = tempfile::NamedTempFile::new().unwrap();
                std::fs::write(file.path(), r.to_string()).unwrap();
                file
            });
            let mut args = vec![script.to_owned(), "120".to_owned()];
            if let Some(file) = &reviews_file {
                args.push(file.path().display().to_string());
            }
            let mut child = Command::new(python)
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let line = timed("kmock prints its URL", lines.next_line())
                .await
                .unwrap()
                .expect("kmock exited before serving");
            let url = line.strip_prefix("URL ").expect("URL line").to_owned();
            return Some(Kmock {
                _reviews_file: reviews_file,
                url,
                resource_version: std::sync::atomic::AtomicU64::new(1),
                _child: child,
            });
        }
        println!(
            "SKIPPED: {test}: Python's kmock not found (pip install kmock; tests/run.sh installs it)"
        );
        None
    }

    fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    async fn send(&self, method: Method, path: &str, mut body: Option<Value>) -> Value {
        if let Some(body) = &mut body {
            let version = self
                .resource_version
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            body["metadata"]["resourceVersion"] = Value::String(version.to_string());
        }
        let tcp = TcpStream::connect(self.addr()).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let content_type = if method == Method::PATCH {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", self.addr())
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let response = timed("kmock request", sender.send_request(request))
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert!(status.is_success(), "{method} {path}: {status} {bytes:?}");
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }

    async fn create(&self, object: Value) {
        let path = collection_path(&object);
        self.send(Method::POST, &path, Some(object)).await;
    }

    async fn patch(&self, object_path: &str, patch: Value) {
        self.send(Method::PATCH, object_path, Some(patch)).await;
    }

    async fn delete(&self, object_path: &str) {
        self.send(Method::DELETE, object_path, None).await;
    }

    async fn source(&self) -> RunningSource {
        let config = kube::Config::new(self.url.parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        KubernetesSource::new(client)
            .start(TIMEOUT, tokio_util::sync::CancellationToken::new())
            .await
            .unwrap()
    }
}

/// The collection URL of an object, from its apiVersion, kind and namespace.
fn collection_path(object: &Value) -> String {
    let api_version = object["apiVersion"].as_str().unwrap();
    let kind = object["kind"].as_str().unwrap();
    let plural = format!("{}s", kind.to_ascii_lowercase()).replace("policys", "policies");
    let prefix = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{prefix}/namespaces/{ns}/{plural}"),
        None => format!("{prefix}/{plural}"),
    }
}

fn meshed_pod(name: &str, app: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}, "uid": format!("uid-{name}")},
        "spec": {
            "serviceAccountName": app,
            "initContainers": [{"name": "palisade-init", "image": "palisade"},
                               {"name": "palisade-proxy", "image": "palisade", "restartPolicy": "Always"}],
            "containers": [{"name": app, "image": app, "ports": [{"name": "http", "containerPort": 8080}]}]
        },
        "status": {"phase": "Running", "podIP": ip}
    })
}

/// The shop in the emulator: a labelled namespace, the web and client pods (meshed), a pod
/// without a sidecar, the web Service, a MeshConfig and a policy letting client call web.
async fn seed(k: &Kmock) {
    k.create(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"palisade.dev/inject": "enabled"}}}))
        .await;
    k.create(meshed_pod("web-1", "web", "10.1.0.7")).await;
    k.create(meshed_pod("client-1", "client", "10.1.0.8")).await;
    k.create(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "legacy", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "legacy", "image": "x"}]},
        "status": {"phase": "Running", "podIP": "10.1.0.9"}}))
        .await;
    k.create(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "batch", "namespace": "shop", "annotations": {"palisade.dev/inject": "disabled"}},
        "spec": {"containers": [{"name": "batch", "image": "x"}]},
        "status": {"phase": "Running", "podIP": "10.1.0.12"}}))
        .await;
    k.create(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}))
        .await;
    k.create(
        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "MeshConfig",
        "metadata": {"name": "mesh", "namespace": "palisade-system"},
        "spec": {"certificateLifetime": "1h"}}),
    )
    .await;
    k.create(json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "web-callers", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "ALLOW",
                 "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/client"]}}]}]}}))
        .await;
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
    let Some(k) =
        Kmock::start_with_reviews("cluster_changes_reach_the_proxies", Some(&client_token())).await
    else {
        return;
    };
    seed(&k).await;
    let source = k.source().await;
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
                .await;
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
    k.create(meshed_pod("web-2", "web", "10.1.0.10")).await;
    let resp = timed("web-2 pushed", next_services(&mut stream)).await;
    assert_eq!(web_endpoints(&resp), ["10.1.0.10", "10.1.0.7"]);

    // Relabelled out of the Service.
    k.patch(
        "/api/v1/namespaces/shop/pods/web-1",
        json!({"metadata": {"labels": {"app": "retired"}}}),
    )
    .await;
    let resp = timed("web-1 relabelled", next_services(&mut stream)).await;
    assert_eq!(web_endpoints(&resp), ["10.1.0.10"]);

    // Deleted.
    k.delete("/api/v1/namespaces/shop/pods/web-2").await;
    let resp = timed("web-2 deleted", next_services(&mut stream)).await;
    assert!(web_endpoints(&resp).is_empty());

    // A malformed policy: rejected, the last good view kept, the rejection counted.
    let rejected_before = rejected_reloads(&cp);
    k.create(
        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "broken", "namespace": "shop"},
        "spec": {"action": "MAYBE"}}),
    )
    .await;
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
        .await;
    k.create(meshed_pod("web-3", "web", "10.1.0.11")).await;
    let resp = timed("web-3 pushed", next_services(&mut stream)).await;
    assert_eq!(web_endpoints(&resp), ["10.1.0.11"]);
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn two_replicas_serve_the_same_versions() {
    let Some(k) = Kmock::start_with_reviews(
        "two_replicas_serve_the_same_versions",
        Some(&client_token()),
    )
    .await
    else {
        return;
    };
    seed(&k).await;
    let a = timed(
        "replica a",
        TestControlPlane::start_kubernetes(k.source().await, TestOptions::default()),
    )
    .await
    .unwrap();
    let b = timed(
        "replica b",
        TestControlPlane::start_kubernetes(k.source().await, TestOptions::default()),
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

/// A recorded TokenReview status for a projected token of `namespace/service_account`.
fn review(namespace: &str, service_account: &str, pod: Option<&str>, audiences: &[&str]) -> Value {
    let mut user = json!({"username": format!("system:serviceaccount:{namespace}:{service_account}"),
                          "uid": "u-1", "groups": ["system:serviceaccounts"]});
    if let Some(pod) = pod {
        user["extra"] = json!({"authentication.kubernetes.io/pod-name": [pod]});
    }
    json!({"authenticated": true, "user": user, "audiences": audiences})
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
    let Some(k) =
        Kmock::start_with_reviews("token_review_decides_who_may_bootstrap", Some(&reviews)).await
    else {
        return;
    };
    seed(&k).await;
    let cp = timed(
        "start",
        TestControlPlane::start_kubernetes(k.source().await, TestOptions::default()),
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
