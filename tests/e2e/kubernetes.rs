//! The cluster as configuration source, with the real binary: two `palisade control-plane
//! --kubernetes` replicas (KUBECONFIG naming the kmock API emulator, one CA directory as the
//! mounted Secret would be) and a `palisade proxy` given both. The proxy bootstraps with a
//! projected token (TokenReview, recorded answer), and when the replica it streams from is
//! killed it reconnects to the other, stays ready and keeps receiving cluster changes.
//!
//! kmock is an emulator, not kube-apiserver: what a real cluster adds (admission, RBAC,
//! resource versions of its own) is not exercised here.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use palisade_control_plane::test_util::kmock::{self, Kmock, meshed_pod as pod, review};
use serde_json::json;
use tokio::process::Command;

use crate::support::clients::try_admin_get;
use crate::support::net::Block;
use crate::support::procs::{ChildGuard, palisade_bin, run_palisade, workspace_root};
use crate::support::{metric, poll, skip};

const LIMIT: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_millis(50);

/// A control-plane replica reading the cluster through `kubeconfig`.
fn replica(name: &str, dir: &std::path::Path, grpc: SocketAddr, admin: SocketAddr) -> ChildGuard {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(palisade_bin())
        .args(["control-plane", "--kubernetes", "--ca-dir"])
        .arg(dir.join("ca"))
        .args([
            "--grpc-addr",
            &grpc.to_string(),
            "--admin-addr",
            &admin.to_string(),
        ])
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .env("PALISADE_LOG_FORMAT", "text")
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    ChildGuard::from_child(name, child, log)
}

async fn connected_proxies(admin: SocketAddr) -> Option<f64> {
    let reply = try_admin_get(admin, "/metrics").await?;
    Some(metric(
        &reply.text(),
        "palisade_discovery_connected_proxies",
        &[],
    ))
}

/// The addresses of the web Service's endpoints in the proxy's view (`/config`: routes by
/// host and port).
async fn web_endpoints(proxy_admin: SocketAddr) -> Option<Vec<String>> {
    let config = try_admin_get(proxy_admin, "/config").await?.json();
    let routes = config["services"]["routes"].as_object()?.clone();
    let mut addresses: Vec<String> = routes
        .values()
        .filter_map(|ports| ports.as_object())
        .flat_map(|ports| ports.values())
        .filter(|route| route["service"] == "shop/web")
        .flat_map(|route| route["endpoints"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| {
            let addr: SocketAddr = e["proxy_addr"].as_str()?.parse().ok()?;
            Some(addr.ip().to_string())
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    Some(addresses)
}

#[tokio::test]
async fn proxies_fail_over_between_control_plane_replicas() {
    const TEST: &str = "proxies_fail_over_between_control_plane_replicas";
    let Some(python) = kmock::python().await else {
        skip(TEST, "Python's kmock not found (tests/run.sh installs it)");
        return;
    };
    let reviews = json!({"tok-client": review("shop", "client", Some("client-1"), &["palisade"])});
    let k = Kmock::start(python, Some(&reviews)).await.unwrap();
    k.create(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"palisade.dev/inject": "enabled"}}}))
        .await
        .unwrap();
    k.create(pod("web-1", "web", "10.1.0.7")).await.unwrap();
    k.create(pod("client-1", "client", "10.1.0.8"))
        .await
        .unwrap();
    k.create(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}))
        .await
        .unwrap();

    let dir = tempfile::Builder::new()
        .prefix("palisade-e2e-k8s-")
        .tempdir()
        .unwrap();
    let ca = dir.path().join("ca");
    let out = run_palisade(&["ca", "init", "--out", ca.to_str().unwrap()]).await;
    assert!(out.status.success(), "ca init failed");
    std::fs::write(dir.path().join("kubeconfig"), k.kubeconfig()).unwrap();
    std::fs::write(dir.path().join("token"), "tok-client").unwrap();

    let block = Block::next();
    let grpc = [block.addr(250, 15012), block.addr(251, 15012)];
    let admin = [block.addr(250, 15014), block.addr(251, 15014)];
    let mut replicas = [
        Some(replica("cp-a", dir.path(), grpc[0], admin[0])),
        Some(replica("cp-b", dir.path(), grpc[1], admin[1])),
    ];
    for a in admin {
        poll(LIMIT, EVERY, "replica ready", || async move {
            try_admin_get(a, "/ready").await.filter(|r| r.status == 200)
        })
        .await;
    }

    let proxy_admin = block.addr(8, 15000);
    let proxy = ChildGuard::palisade(
        "proxy",
        &[
            "proxy".into(),
            "--workload".into(),
            "client-1".into(),
            "--namespace".into(),
            "shop".into(),
            "--service-account".into(),
            "client".into(),
            "--control-plane".into(),
            format!("{},{}", grpc[0], grpc[1]),
            "--trust-anchors".into(),
            ca.join("root-cert.pem").display().to_string(),
            "--token-file".into(),
            dir.path().join("token").display().to_string(),
            "--inbound".into(),
            block.addr(8, 15006).to_string(),
            "--outbound".into(),
            block.addr(8, 15001).to_string(),
            "--admin".into(),
            proxy_admin.to_string(),
            "--app-host".into(),
            block.ip(8).to_string(),
        ],
        dir.path(),
    );
    poll(LIMIT, EVERY, "proxy ready", || async {
        try_admin_get(proxy_admin, "/ready")
            .await
            .filter(|r| r.status == 200)
    })
    .await;
    assert_eq!(
        web_endpoints(proxy_admin).await,
        Some(vec!["10.1.0.7".to_owned()])
    );

    // Kill the replica the proxy streams from.
    let serving = poll(LIMIT, EVERY, "the proxy's stream on a replica", || async {
        for (i, a) in admin.iter().enumerate() {
            if connected_proxies(*a).await == Some(1.0) {
                return Some(i);
            }
        }
        None
    })
    .await;
    if let Some(mut killed) = replicas[serving].take() {
        killed.kill9().await;
    }
    let other = 1 - serving;
    poll(
        LIMIT,
        EVERY,
        "the proxy reconnects to the other replica",
        || async move { (connected_proxies(admin[other]).await == Some(1.0)).then_some(()) },
    )
    .await;
    assert_eq!(
        try_admin_get(proxy_admin, "/ready")
            .await
            .map(|r| r.status.as_u16()),
        Some(200),
        "the proxy kept serving"
    );

    // A change in the cluster still reaches it, through the surviving replica.
    k.create(pod("web-2", "web", "10.1.0.10")).await.unwrap();
    poll(LIMIT, EVERY, "web-2 in the proxy's view", || async {
        web_endpoints(proxy_admin)
            .await
            .filter(|e| *e == ["10.1.0.10", "10.1.0.7"])
    })
    .await;
    // The surviving replica's CA view, through the CLI.
    let surviving = admin[other].to_string();
    let out = run_palisade(&["ca", "status", "--control-plane", &surviving]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("trust domain: cluster.local")
            && text.contains("root 0:")
            && text.contains("proxies: 1 connected"),
        "{text}"
    );
    drop(proxy);
    drop(replicas);
}

/// `palisade check --kubernetes` with `KUBECONFIG` naming the emulator.
async fn check_cluster(kubeconfig: &std::path::Path) -> std::process::Output {
    let child = Command::new(palisade_bin())
        .args(["check", "--kubernetes", "--kubernetes-sync-seconds", "20"])
        .env("KUBECONFIG", kubeconfig)
        .env_remove("RUST_LOG")
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("palisade check exits")
        .unwrap()
}

#[tokio::test]
async fn check_lists_opted_in_pods_without_a_sidecar_and_invalid_objects() {
    const TEST: &str = "check_lists_opted_in_pods_without_a_sidecar_and_invalid_objects";
    let Some(python) = kmock::python().await else {
        skip(TEST, "Python's kmock not found (tests/run.sh installs it)");
        return;
    };
    let k = Kmock::start(python, None).await.unwrap();
    k.create(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"palisade.dev/inject": "enabled"}}}))
        .await
        .unwrap();
    k.create(pod("web-1", "web", "10.1.0.7")).await.unwrap();
    for (name, annotations) in [
        ("legacy", json!({})),
        ("batch", json!({"palisade.dev/inject": "disabled"})),
    ] {
        k.create(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
            "spec": {"containers": [{"name": name, "image": "x"}]},
            "status": {"phase": "Running", "podIP": "10.1.0.30"}}))
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, k.kubeconfig()).unwrap();

    let out = check_cluster(&kubeconfig).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("pod shop/legacy is opted in to the mesh but runs without a sidecar")
            && stderr.contains("kubectl delete pod -n shop legacy"),
        "{stderr}"
    );
    assert!(!stderr.contains("batch"), "opted out: {stderr}");

    k.delete("/api/v1/namespaces/shop/pods/legacy")
        .await
        .unwrap();
    let out = check_cluster(&kubeconfig).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    k.create(
        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "broken", "namespace": "shop"}, "spec": {"action": "MAYBE"}}),
    )
    .await
    .unwrap();
    let out = check_cluster(&kubeconfig).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("authorizationpolicies.palisade.dev shop/broken")
            && stderr.contains("spec.action"),
        "the error names the object and field: {stderr}"
    );
}
