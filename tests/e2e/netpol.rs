//! Kubernetes NetworkPolicy on real connections between pods in network namespaces
//! (`support::bed`): an allowed pair connects, a denied pair is refused before any byte
//! reaches the app, and both sidecars count and log what they refused (ingress at the
//! receiver, egress at the sender).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::bed::{Bed, PodSpec, connect_in, http_get_in};
use crate::support::{metric, poll};

/// How long a sidecar may take to show a count.
const METRIC_LIMIT: Duration = Duration::from_secs(10);

/// `client` may reach `server` on its echo port (and only there); `intruder` is in the
/// mesh with a valid certificate but no NetworkPolicy lets it in. Authorization allows
/// everything, so every refusal here is NetworkPolicy's.
const MESH: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec:
  mtls: {mode: STRICT}
  defaultAuthorization: allow
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
metadata: {name: intruder, namespace: shop, labels: {app: intruder}}
spec:
  serviceAccount: intruder
  address: {pod:intruder}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: server, namespace: shop, labels: {app: server}}
spec:
  serviceAccount: server
  address: {pod:server}
  ports:
  - {name: http, port: 8080, appProtocol: http}
  - {name: echo, port: 7000, appProtocol: tcp}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: server, namespace: shop}
spec:
  selector: {app: server}
  clusterIP: 10.96.0.21
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
  - {name: echo, port: 7000, appProtocol: tcp}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-ingress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}
    ports:
    - {protocol: TCP, port: echo}
    - {protocol: TCP, port: 8080}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {matchLabels: {app: server}}
    ports:
    - {protocol: TCP, port: 7000}
";

const CLIENT: PodSpec = PodSpec::meshed("client", 2);
const SERVER: PodSpec = PodSpec::meshed("server", 3);
const INTRUDER: PodSpec = PodSpec::meshed("intruder", 4);

/// Accepts on `listener`, counting connections; echoes what arrives.
fn counting_echo(listener: TcpListener, stop: CancellationToken) -> Arc<AtomicUsize> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => return },
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    accepted
}

/// Sends `line` from inside `ns` to `addr` and reads it back; `Err` with what happened if
/// the connection fails or closes first.
async fn echo_from(ns: &str, addr: SocketAddr, line: &[u8]) -> Result<(), String> {
    let mut stream = connect_in(ns, addr).await.map_err(|e| e.to_string())?;
    stream.write_all(line).await.map_err(|e| e.to_string())?;
    let mut got = vec![0u8; line.len()];
    match tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut got)).await {
        Ok(Ok(_)) if got == line => Ok(()),
        Ok(Ok(_)) => Err(format!("got {:?}", String::from_utf8_lossy(&got))),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_pair_connects_and_a_denied_pair_is_refused_before_the_app() {
    const TEST: &str = "an_allowed_pair_connects_and_a_denied_pair_is_refused_before_the_app";
    if !Bed::can_run(TEST) {
        return;
    }
    let bed = Bed::start(TEST, MESH, &[CLIENT, SERVER, INTRUDER]).await;
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let server = bed.pod("server");
    let echo = counting_echo(server.listen(7000), stop.clone());
    let http = counting_echo(server.listen(8080), stop.clone());
    let client = bed.pod("client");
    let intruder = bed.pod("intruder");

    // The allowed pair, by pod address and by cluster IP.
    for addr in [server.addr(7000), "10.96.0.21:7000".parse().unwrap()] {
        echo_from(client.ns(), addr, b"ping\n")
            .await
            .unwrap_or_else(|e| panic!("client -> {addr}: {e}\n{}", bed.logs()));
    }
    assert_eq!(echo.load(Ordering::SeqCst), 2);

    // The intruder: a valid mesh identity, no rule for it. Its own sidecar connects, the
    // server's closes the connection before the app sees anything.
    let refused = echo_from(intruder.ns(), server.addr(7000), b"let me in\n").await;
    assert!(refused.is_err(), "the intruder got through\n{}", bed.logs());
    let status = http_get_in(intruder.ns(), server.addr(8080), "/").await;
    assert!(
        !matches!(status, Some((200, _))),
        "intruder HTTP: {status:?}"
    );
    assert_eq!(
        echo.load(Ordering::SeqCst),
        2,
        "the echo app saw the intruder"
    );
    assert_eq!(
        http.load(Ordering::SeqCst),
        0,
        "the HTTP app saw the intruder"
    );
    let denials = poll(
        METRIC_LIMIT,
        Duration::from_millis(100),
        "server counts the ingress denials",
        || async move {
            let n = metric(
                &server.metrics().await,
                "palisade_proxy_netpol_denials_total",
                &[r#"direction="ingress""#, r#"policy="shop/server-ingress""#],
            );
            (n >= 2.0).then_some(n)
        },
    )
    .await;
    assert!(denials >= 2.0);
    let log = server.proxy_log();
    assert!(
        log.lines()
            .any(|l| l.contains("connection denied by NetworkPolicy")
                && l.contains("direction=ingress")
                && l.contains("identity=spiffe://cluster.local/ns/shop/sa/intruder")
                && l.contains("policies=shop/server-ingress")),
        "server sidecar log:\n{log}"
    );

    // Egress at the sender: the client may reach only the echo port; its HTTP request to
    // the server never leaves its pod.
    let status = http_get_in(client.ns(), server.addr(8080), "/").await;
    assert!(
        matches!(status, Some((403, _))),
        "client HTTP to a port its egress does not allow: {status:?}\n{}",
        bed.logs()
    );
    assert_eq!(
        http.load(Ordering::SeqCst),
        0,
        "the HTTP app saw the client"
    );
    let egress = metric(
        &client.metrics().await,
        "palisade_proxy_netpol_denials_total",
        &[r#"direction="egress""#, r#"policy="shop/client-egress""#],
    );
    assert!(egress >= 1.0, "client egress denials: {egress}");
    let log = client.proxy_log();
    assert!(
        log.lines()
            .any(|l| l.contains("connection denied by NetworkPolicy")
                && l.contains("direction=egress")
                && l.contains(&format!("destination={}", server.addr(8080)))),
        "client sidecar log:\n{log}"
    );
}
