//! Kubelet probes under default deny, in the network-namespace bed: a pod injected by
//! `palisade inject` gets its liveness probe rewritten to the sidecar's admin port and the
//! original handed to the sidecar (`PALISADE_APP_PROBES`). Its sidecar runs with exactly the
//! environment the injected `palisade-proxy` container has; then the "kubelet" (the node's
//! namespace) probes the rewritten path and passes, while another pod calling the same app
//! path is denied, and nobody outside the pod reads the sidecar's `/config`.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::support::bed::{Bed, PodSpec, http_get_in};
use crate::support::procs::{palisade_bin, workspace_root};
use crate::support::{poll, within};

/// Default deny: no policy lets anyone call the server.
const MESH: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec:
  mtls: {mode: STRICT}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  serviceAccount: client
  address: {pod:client}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: server, namespace: shop, labels: {app: server}}
spec:
  serviceAccount: server
  address: {pod:server}
  ports:
  - {name: http, port: 8080, appProtocol: http}
";

/// The server's pod as its owner wrote it: probes on the app's own port.
const POD: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: shop, labels: {app: server}}
spec:
  serviceAccountName: server
  containers:
  - name: search
    image: shop/search
    ports: [{name: http, containerPort: 8080}]
    livenessProbe:
      httpGet: {path: /healthz, port: http}
      periodSeconds: 5
    readinessProbe:
      tcpSocket: {port: 8080}
";

/// `palisade inject -f -` of [`POD`], as JSON.
async fn injected_pod() -> serde_json::Value {
    let mut child = tokio::process::Command::new(palisade_bin())
        .args(["inject", "-f", "-"])
        .current_dir(workspace_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(POD.as_bytes()).await.unwrap();
    drop(stdin);
    let out = within(
        Duration::from_secs(60),
        "palisade inject",
        child.wait_with_output(),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "inject: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml_ng::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_probes_pass_under_default_deny_and_open_no_path_to_the_app() {
    const TEST: &str = "rewritten_probes_pass_under_default_deny_and_open_no_path_to_the_app";
    if !Bed::can_run(TEST) {
        return;
    }
    let pod = injected_pod().await;
    let proxy = pod["spec"]["initContainers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "palisade-proxy"))
        .expect("native sidecar")
        .clone();
    let app = &pod["spec"]["containers"][0];
    let liveness = &app["livenessProbe"];
    assert_eq!(liveness["periodSeconds"], 5, "other probe fields kept");
    let probe_path = liveness["httpGet"]["path"].as_str().unwrap().to_owned();
    let probe_port = u16::try_from(liveness["httpGet"]["port"].as_u64().unwrap()).unwrap();
    assert_eq!(
        (probe_path.as_str(), probe_port),
        ("/app-health/search/livez", 15000)
    );
    let readiness_path = app["readinessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap()
        .to_owned();
    // The sidecar's environment as injected, minus what the bed provides itself (identity
    // from the downward API, control plane, trust anchors and token files).
    let sidecar_env: Vec<(String, String)> = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .filter(|(k, _)| matches!(k.as_str(), "PALISADE_APP_PROBES" | "PALISADE_ADMIN_ADDR"))
        .collect();
    assert_eq!(sidecar_env.len(), 2, "{:?}", proxy["env"]);

    let server = PodSpec {
        sidecar_env,
        ..PodSpec::meshed("server", 3)
    };
    let outsider = PodSpec::plain("outsider", 9);
    let bed = Bed::start(
        TEST,
        MESH,
        &[PodSpec::meshed("client", 2), server, outsider],
    )
    .await;
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let listener = bed.pod("server").listen(8080);
    tokio::spawn(palisade_example_shop::serve_app(
        "search",
        listener,
        Default::default(),
        stop.clone(),
    ));

    // The kubelet, on the node, probes the rewritten paths: both pass with no policy.
    let node = bed.node.netns().name().to_owned();
    let admin = bed.pod("server").addr(probe_port);
    for path in [&probe_path, &readiness_path] {
        let (status, body) = poll(
            Duration::from_secs(20),
            Duration::from_millis(50),
            "probe",
            || {
                let node = node.clone();
                async move {
                    http_get_in(&node, admin, path)
                        .await
                        .filter(|(s, _)| *s == 200)
                }
            },
        )
        .await;
        assert_eq!(
            (status, body.as_str()),
            (200, "ok\n"),
            "{path}\n{}",
            bed.logs()
        );
    }

    // Another pod calling the app's health path itself is denied by default.
    let app_addr = bed.pod("server").addr(8080);
    let (status, body) = http_get_in(bed.pod("client").ns(), app_addr, "/healthz")
        .await
        .expect("an answer from the client's sidecar");
    assert_eq!(status, 403, "{body}\n{}", bed.logs());
    // A caller outside the mesh does not even reach it (STRICT mTLS).
    let direct = http_get_in(bed.pod("outsider").ns(), app_addr, "/healthz").await;
    assert!(
        direct.as_ref().is_none_or(|(s, _)| *s != 200),
        "plaintext reached the app: {direct:?}"
    );
    // The admin port answers the probe's verdict to anyone, but its configuration only to the
    // pod itself.
    let (status, _) = http_get_in(bed.pod("outsider").ns(), admin, &probe_path)
        .await
        .expect("admin answers");
    assert_eq!(status, 200);
    let (status, body) = http_get_in(bed.pod("outsider").ns(), admin, "/config")
        .await
        .expect("admin answers");
    assert_eq!(status, 403, "{body}");
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], probe_port));
    let (status, _) = http_get_in(bed.pod("server").ns(), local, "/config")
        .await
        .expect("admin answers on loopback");
    assert_eq!(status, 200);
}
