use std::sync::atomic::Ordering;

use http::StatusCode;
use palisade_proto::v1;

use crate::support::*;

fn denied_by(r: &http::Response<bytes::Bytes>) -> &str {
    r.headers()
        .get("x-palisade-denied-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
}

#[tokio::test]
async fn registry_only_refuses_destinations_outside_the_mesh() {
    let logs = Logs::default();
    let _guard = logs.install();
    let mesh = Mesh::start(MeshOptions::default()).await;
    let external = http_app(mesh.shutdown.clone()).await;
    let external_echo = echo_app(mesh.shutdown.clone()).await;

    let host = external.addr.to_string();
    let r = mesh.get(&host, "/x?k=v").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(denied_by(&r), "outbound-registry-only");
    assert_eq!(external.requests.load(Ordering::SeqCst), 0);

    let tunnel_target = external_echo.addr.to_string();
    let (head, _) = connect(mesh.frontend.outbound_addr(), &tunnel_target).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.contains("x-palisade-denied-by: outbound-registry-only"),
        "{head}"
    );
    assert_eq!(external_echo.connections.load(Ordering::SeqCst), 0);

    // Both refusals count under the bounded `external`; the hosts are in the log lines.
    assert_eq!(
        metric(
            &mesh.frontend,
            "palisade_proxy_authz_denials_total",
            &[
                ("direction", "outbound"),
                ("policy", "outbound-registry-only"),
                ("source", FRONTEND),
                ("destination", "external"),
            ]
        ),
        Some(2.0),
        "{}",
        mesh.frontend.metrics().encode()
    );
    mesh.stop().await;
    let lines = logs.authz_lines();
    let denied = lines
        .iter()
        .find(|l| l.contains("WARN") && l.contains("method=GET"))
        .unwrap_or_else(|| panic!("no egress denial line in:\n{}", lines.join("\n")));
    for field in [
        format!("source={FRONTEND}"),
        format!("destination={host}"),
        "path=/x ".to_owned(),
        "policy=outbound-registry-only".to_owned(),
    ] {
        assert!(denied.contains(&field), "{field} missing in {denied}");
    }
}

#[tokio::test]
async fn an_egress_policy_allows_its_hosts_and_ports_only() {
    let mesh = Mesh::start(MeshOptions::default()).await;
    let external = http_app(mesh.shutdown.clone()).await;
    let external_echo = echo_app(mesh.shutdown.clone()).await;
    let other = http_app(mesh.shutdown.clone()).await;
    mesh.frontend
        .apply_static(&egress(vec![v1::EgressRule {
            policy: "shop/to-partner".into(),
            hosts: vec![exact("127.0.0.1")],
            ports: vec![
                external.addr.port().into(),
                external_echo.addr.port().into(),
            ],
            ip_blocks: vec![],
        }]))
        .unwrap();

    let r = mesh.get(&external.addr.to_string(), "/x").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.body(), "/x");
    let (head, mut tunnel) = connect(
        mesh.frontend.outbound_addr(),
        &external_echo.addr.to_string(),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(echo_round_trip(&mut tunnel, b"ping").await, b"ping");

    // Same host, a port the rule does not list.
    let r = mesh.get(&other.addr.to_string(), "/x").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(other.requests.load(Ordering::SeqCst), 0);
    mesh.stop().await;
}

#[tokio::test]
async fn allow_any_passes_every_destination_through() {
    let mesh = Mesh::start(MeshOptions {
        allow_any: true,
        ..Default::default()
    })
    .await;
    let external = http_app(mesh.shutdown.clone()).await;
    let external_echo = echo_app(mesh.shutdown.clone()).await;
    let r = mesh.get(&external.addr.to_string(), "/y").await;
    assert_eq!(r.status(), StatusCode::OK);
    let (head, mut tunnel) = connect(
        mesh.frontend.outbound_addr(),
        &external_echo.addr.to_string(),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(echo_round_trip(&mut tunnel, b"pong").await, b"pong");
    mesh.stop().await;
}
