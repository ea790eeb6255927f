//! Kubernetes NetworkPolicy at both ends: ingress decided by the receiving sidecar on the
//! caller's address together with its verified identity, egress by the sending sidecar
//! before any byte leaves; changes close open connections they no longer allow.
//!
//! Every proxy of the test mesh lives on 127.0.0.1, so "another address" is a peer entry
//! naming 127.0.0.2.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use palisade_proto::v1::{self, discovery_response::Resources};
use tokio::io::AsyncWriteExt;

use crate::support::*;

const LOOPBACK: &str = "127.0.0.1";

fn peer(name: &str, address: &str, spiffe_id: &str) -> v1::NetworkPeerWorkload {
    v1::NetworkPeerWorkload {
        namespace: "shop".into(),
        name: name.into(),
        address: address.into(),
        spiffe_id: spiffe_id.into(),
        ports: vec![],
    }
}

fn tcp_port(port: u16) -> v1::NetworkPort {
    v1::NetworkPort {
        protocol: v1::L4Protocol::Tcp as i32,
        port: Some(v1::network_port::Port::Range(v1::NetworkPortRange {
            first: port.into(),
            last: port.into(),
        })),
    }
}

/// A rule allowing the peer at index 0 on any port.
fn from_peer_zero() -> v1::NetworkPolicyRule {
    v1::NetworkPolicyRule {
        workloads: vec![0],
        any_port: true,
        ..Default::default()
    }
}

fn from_block(cidr: &str) -> v1::NetworkPolicyRule {
    v1::NetworkPolicyRule {
        ip_blocks: vec![v1::NetworkIpBlock {
            cidr: cidr.into(),
            except: vec![],
        }],
        any_port: true,
        ..Default::default()
    }
}

/// Which direction a test policy isolates.
#[derive(Clone, Copy)]
enum Isolates {
    Ingress,
    Egress,
}

/// One direction isolated by `shop/<name>` with `rules`, naming `peers`.
fn isolated(
    direction: Isolates,
    name: &str,
    rules: Vec<v1::NetworkPolicyRule>,
    peers: Vec<v1::NetworkPeerWorkload>,
) -> v1::DiscoveryResponse {
    let policies = vec![v1::NetworkPolicyRules {
        policy: format!("shop/{name}"),
        rules,
    }];
    let mut snapshot = v1::NetworkPolicySnapshot {
        peers,
        ..Default::default()
    };
    match direction {
        Isolates::Ingress => {
            snapshot.ingress_isolated = true;
            snapshot.ingress = policies;
        }
        Isolates::Egress => {
            snapshot.egress_isolated = true;
            snapshot.egress = policies;
        }
    }
    response(Resources::NetworkPolicy(snapshot))
}

/// Ingress isolated by `shop/<name>` with `rules`, naming `peers`.
fn ingress(
    name: &str,
    rules: Vec<v1::NetworkPolicyRule>,
    peers: Vec<v1::NetworkPeerWorkload>,
) -> v1::DiscoveryResponse {
    isolated(Isolates::Ingress, name, rules, peers)
}

/// Egress isolated by `shop/<name>` with `rules`, naming `peers`.
fn egress_policy(
    name: &str,
    rules: Vec<v1::NetworkPolicyRule>,
    peers: Vec<v1::NetworkPeerWorkload>,
) -> v1::DiscoveryResponse {
    isolated(Isolates::Egress, name, rules, peers)
}

fn netpol_denials(proxy: &palisade_proxy::Proxy, direction: &str, policy: &str) -> f64 {
    metric(
        proxy,
        "palisade_proxy_netpol_denials_total",
        &[("direction", direction), ("policy", policy)],
    )
    .unwrap_or(0.0)
}

fn inbound_connections(proxy: &palisade_proxy::Proxy) -> f64 {
    metric(
        proxy,
        "palisade_proxy_connections_total",
        &[("direction", "inbound")],
    )
    .unwrap_or(0.0)
}

fn tcp_target() -> String {
    format!("search.shop:{TCP_PORT}")
}

fn http_host() -> String {
    format!("search.shop:{HTTP_PORT}")
}

fn denied_by(r: &http::Response<Bytes>) -> &str {
    r.headers()
        .get("x-palisade-denied-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
}

#[tokio::test]
async fn ingress_allows_the_peer_by_address_and_identity_and_refuses_impersonation() {
    let logs = Logs::default();
    let _guard = logs.install();
    let mesh = Mesh::start(MeshOptions::default()).await;

    // The frontend, from its address, with its certificate: allowed.
    mesh.search
        .apply_static(&ingress(
            "from-frontend",
            vec![from_peer_zero()],
            vec![peer("frontend", LOOPBACK, FRONTEND)],
        ))
        .unwrap();
    let r = mesh.get(&http_host(), "/ok").await;
    assert_eq!(r.status(), StatusCode::OK);
    let (head, mut tunnel) = connect(mesh.frontend.outbound_addr(), &tcp_target()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(echo_round_trip(&mut tunnel, b"hi").await, b"hi");
    drop(tunnel);

    // The rule names frontend at another address: the frontend's certificate presented
    // from 127.0.0.1 is not that pod.
    mesh.search
        .apply_static(&ingress(
            "elsewhere",
            vec![from_peer_zero()],
            vec![peer("frontend", "127.0.0.2", FRONTEND)],
        ))
        .unwrap();
    let echo_before = mesh.echo.connections.load(Ordering::SeqCst);
    let (head, mut tunnel) = connect(mesh.frontend.outbound_addr(), &tcp_target()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let _ = tunnel.write_all(b"must not arrive").await;
    assert!(read_to_close(&mut tunnel).await.is_empty());
    assert_eq!(mesh.echo.connections.load(Ordering::SeqCst), echo_before);
    assert!(netpol_denials(&mesh.search, "ingress", "shop/elsewhere") >= 1.0);

    // The right address with another identity: refused too.
    mesh.search
        .apply_static(&ingress(
            "search-only",
            vec![from_peer_zero()],
            vec![peer("search", LOOPBACK, SEARCH)],
        ))
        .unwrap();
    let (_, mut tunnel) = connect(mesh.frontend.outbound_addr(), &tcp_target()).await;
    let _ = tunnel.write_all(b"must not arrive").await;
    assert!(read_to_close(&mut tunnel).await.is_empty());
    assert_eq!(mesh.echo.connections.load(Ordering::SeqCst), echo_before);
    assert!(netpol_denials(&mesh.search, "ingress", "shop/search-only") >= 1.0);

    // HTTP: the connection is refused before a byte reaches the app.
    let requests_before = mesh.app.requests.load(Ordering::SeqCst);
    let r = mesh.get(&http_host(), "/no").await;
    assert_ne!(r.status(), StatusCode::OK);
    assert_eq!(mesh.app.requests.load(Ordering::SeqCst), requests_before);
    mesh.stop().await;

    let lines = logs.authz_lines();
    assert!(
        lines.iter().any(|l| l.contains("WARN")
            && l.contains("connection denied by NetworkPolicy")
            && l.contains("direction=ingress")
            && l.contains("source=127.0.0.1")
            && l.contains(&format!("identity={FRONTEND}"))
            && l.contains("policies=shop/search-only")),
        "{}",
        lines.join("\n")
    );
}

#[tokio::test]
async fn a_plaintext_caller_matches_only_ip_blocks() {
    let mesh = Mesh::start(MeshOptions {
        permissive: true,
        ..Default::default()
    })
    .await;
    let authority = format!("127.0.0.1:{}", mesh.app.addr.port());
    let plain = || {
        Request::get("/plain")
            .header(http::header::HOST, authority.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // A workload rule for the pod at 127.0.0.1: a caller without a certificate is not it.
    mesh.search
        .apply_static(&ingress(
            "from-frontend",
            vec![from_peer_zero()],
            vec![peer("frontend", LOOPBACK, FRONTEND)],
        ))
        .unwrap();
    let r = send(mesh.search.inbound_addr(), plain()).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(denied_by(&r), "shop/from-frontend");
    assert_eq!(mesh.app.requests.load(Ordering::SeqCst), 0);
    assert_eq!(
        netpol_denials(&mesh.search, "ingress", "shop/from-frontend"),
        1.0
    );

    // An ipBlock holding its address: allowed.
    mesh.search
        .apply_static(&ingress(
            "loopback",
            vec![from_block("127.0.0.0/8")],
            vec![],
        ))
        .unwrap();
    let r = send(mesh.search.inbound_addr(), plain()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(mesh.app.requests.load(Ordering::SeqCst), 1);
    mesh.stop().await;
}

#[tokio::test]
async fn egress_is_refused_before_any_byte_leaves() {
    let logs = Logs::default();
    let _guard = logs.install();
    let mesh = Mesh::start(MeshOptions::default()).await;
    let app_port = mesh.app.addr.port();
    // Egress allowed only to search's HTTP port.
    mesh.frontend
        .apply_static(&egress_policy(
            "to-search-http",
            vec![v1::NetworkPolicyRule {
                workloads: vec![0],
                ports: vec![tcp_port(mesh.app.addr.port())],
                ..Default::default()
            }],
            vec![peer("search", LOOPBACK, SEARCH)],
        ))
        .unwrap();
    let r = mesh.get(&http_host(), "/allowed").await;
    assert_eq!(r.status(), StatusCode::OK);
    let inbound_before = inbound_connections(&mesh.search);

    // The TCP port is not allowed: 403 to the CONNECT, the peer sidecar is never dialled.
    let (head, _) = connect(mesh.frontend.outbound_addr(), &tcp_target()).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.contains("x-palisade-denied-by: shop/to-search-http"),
        "{head}"
    );
    assert_eq!(inbound_connections(&mesh.search), inbound_before);
    assert_eq!(mesh.echo.connections.load(Ordering::SeqCst), 0);

    // Nothing allowed any more: HTTP requests are refused at the sender.
    mesh.frontend
        .apply_static(&egress_policy("deny-all", vec![], vec![]))
        .unwrap();
    let r = mesh.get(&http_host(), "/refused").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(denied_by(&r), "shop/deny-all");
    assert_eq!(mesh.app.requests.load(Ordering::SeqCst), 1);
    assert_eq!(
        netpol_denials(&mesh.frontend, "egress", "shop/deny-all"),
        1.0
    );
    assert_eq!(
        netpol_denials(&mesh.frontend, "egress", "shop/to-search-http"),
        1.0
    );
    mesh.stop().await;
    let lines = logs.authz_lines();
    assert!(
        lines.iter().any(|l| l.contains("direction=egress")
            && l.contains("source=shop/frontend")
            && l.contains(&format!("destination=127.0.0.1:{app_port}"))
            && l.contains("policies=shop/deny-all")),
        "{}",
        lines.join("\n")
    );
}

#[tokio::test]
async fn egress_hides_the_policy_name_when_the_mesh_hides_reasons() {
    let mesh = Mesh::start(MeshOptions {
        hide_denial_reasons: true,
        ..Default::default()
    })
    .await;
    mesh.frontend
        .apply_static(&egress_policy("deny-all", vec![], vec![]))
        .unwrap();
    let r = mesh.get(&http_host(), "/refused").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(denied_by(&r), "hidden");
    let grpc = Request::post("/payments.Payments/Charge")
        .header(http::header::HOST, http_host())
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(mesh.frontend.outbound_addr(), grpc).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["grpc-status"], "7");
    mesh.stop().await;
}

#[tokio::test]
async fn a_policy_change_closes_open_connections_it_no_longer_allows() {
    let mesh = Mesh::start(MeshOptions::default()).await;
    // Ingress at search: an open stream is cut when a new policy denies it.
    let (head, mut tunnel) = connect(mesh.frontend.outbound_addr(), &tcp_target()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(echo_round_trip(&mut tunnel, b"before").await, b"before");
    mesh.search
        .apply_static(&ingress(
            "from-frontend",
            vec![from_peer_zero()],
            vec![peer("frontend", LOOPBACK, FRONTEND)],
        ))
        .unwrap();
    assert_eq!(echo_round_trip(&mut tunnel, b"still").await, b"still");
    mesh.search
        .apply_static(&ingress("deny-all", vec![], vec![]))
        .unwrap();
    assert!(read_to_close(&mut tunnel).await.is_empty());
    assert_eq!(
        netpol_denials(&mesh.search, "ingress", "shop/deny-all"),
        1.0
    );
    drop(tunnel);

    // Egress at the frontend: the spliced tunnel closes when egress is cut.
    mesh.search
        .apply_static(&unrestricted_network_policy())
        .unwrap();
    let (head, mut tunnel) = connect(mesh.frontend.outbound_addr(), &tcp_target()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(echo_round_trip(&mut tunnel, b"again").await, b"again");
    mesh.frontend
        .apply_static(&egress_policy("no-egress", vec![], vec![]))
        .unwrap();
    assert!(read_to_close(&mut tunnel).await.is_empty());
    // At least this tunnel: the first one may still be half open at the frontend (closed
    // by search, not yet by the app's side), and is then closed and counted too.
    assert!(netpol_denials(&mesh.frontend, "egress", "shop/no-egress") >= 1.0);

    // Inbound HTTP: the pooled connection from the frontend is closed at search.
    mesh.frontend
        .apply_static(&unrestricted_network_policy())
        .unwrap();
    let r = mesh.get(&http_host(), "/warm").await;
    assert_eq!(r.status(), StatusCode::OK);
    mesh.search
        .apply_static(&ingress("http-cut", vec![], vec![]))
        .unwrap();
    step("the HTTP connection is closed", async {
        loop {
            let closed = metric(
                &mesh.search,
                "palisade_proxy_connections_closed_total",
                &[("direction", "inbound"), ("reason", "network-policy")],
            );
            if closed == Some(1.0) {
                break;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let before = mesh.app.requests.load(Ordering::SeqCst);
    let r = mesh.get(&http_host(), "/after").await;
    assert_ne!(r.status(), StatusCode::OK);
    assert_eq!(mesh.app.requests.load(Ordering::SeqCst), before);
    mesh.stop().await;
}

#[tokio::test]
async fn an_invalid_snapshot_is_rejected_and_the_last_good_one_kept() {
    let mesh = Mesh::start(MeshOptions::default()).await;
    mesh.frontend
        .apply_static(&egress_policy("deny-all", vec![], vec![]))
        .unwrap();
    let bad = egress_policy(
        "bad",
        vec![v1::NetworkPolicyRule {
            workloads: vec![3],
            any_port: true,
            ..Default::default()
        }],
        vec![],
    );
    let e = mesh.frontend.apply_static(&bad).unwrap_err();
    assert!(e.to_string().contains("workloads[0]"), "{e}");
    assert!(e.to_string().contains("out of range"), "{e}");
    // Still the deny-all from before.
    let r = mesh.get(&http_host(), "/refused").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(denied_by(&r), "shop/deny-all");
    let view = mesh.frontend.view().unwrap();
    assert_eq!(
        view.netpol.summary().egress_policies,
        vec!["shop/deny-all".to_string()]
    );
    // `/config` shows the policies in force and the rejection.
    let config = send(
        mesh.frontend.admin_addr(),
        Request::get("/config")
            .header(http::header::HOST, "admin")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let config: serde_json::Value = serde_json::from_slice(config.body()).unwrap();
    assert_eq!(
        config["network_policy"]["egress_policies"][0],
        "shop/deny-all"
    );
    assert_eq!(config["network_policy"]["egress_isolated"], true);
    let rejection = config["rejections"][v1::NETWORK_POLICY_TYPE_URL]
        .as_str()
        .unwrap_or_default();
    assert!(rejection.contains("out of range"), "{config}");
    mesh.stop().await;
}
