use std::sync::atomic::Ordering;

use palisade_proto::v1;

use crate::support::*;

fn tcp_target() -> String {
    format!("search.shop:{TCP_PORT}")
}

/// ALLOW for the frontend on the echo port, at connection level.
fn frontend_may_connect(echo_port: u16) -> v1::AuthorizationPolicy {
    policy(
        "frontend-tcp",
        v1::Action::Allow,
        vec![v1::Rule {
            from: vec![v1::Source {
                principals: vec![exact("cluster.local/ns/shop/sa/frontend")],
                ..Default::default()
            }],
            to: vec![v1::Operation {
                ports: vec![echo_port.into()],
                ..Default::default()
            }],
            when: vec![],
        }],
    )
}

#[tokio::test]
async fn connect_tunnels_bytes_to_a_mesh_tcp_service() {
    let mesh = Mesh::start(MeshOptions {
        default_allow: false,
        ..Default::default()
    })
    .await;
    mesh.search
        .apply_static(&authz(vec![frontend_may_connect(mesh.echo.addr.port())]))
        .unwrap();
    let (head, mut tunnel) = connect(mesh.frontend.outbound_addr(), &tcp_target()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for message in [
        &b"hello"[..],
        &[0u8, 255, 13, 10, 0][..],
        &[7u8; 100_000][..],
    ] {
        assert_eq!(echo_round_trip(&mut tunnel, message).await, message);
    }
    assert_eq!(mesh.echo.connections.load(Ordering::SeqCst), 1);
    mesh.stop().await;
}

#[tokio::test]
async fn a_denied_tcp_connection_is_closed_before_any_byte_reaches_the_app() {
    let logs = Logs::default();
    let _guard = logs.install();
    // The only ALLOW rule uses an HTTP-only field: at connection level it cannot match.
    let http_only = policy(
        "gets-only",
        v1::Action::Allow,
        vec![v1::Rule {
            to: vec![v1::Operation {
                methods: vec![exact("GET")],
                ..Default::default()
            }],
            ..Default::default()
        }],
    );
    let mesh = Mesh::start(MeshOptions {
        search_policies: vec![http_only],
        ..Default::default()
    })
    .await;
    let (head, mut tunnel) = connect(mesh.frontend.outbound_addr(), &tcp_target()).await;
    // The mTLS connection to the peer sidecar is up, so the tunnel opens; the peer then
    // refuses it at connection level.
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    use tokio::io::AsyncWriteExt;
    let _ = tunnel.write_all(b"must not arrive").await;
    assert!(read_to_close(&mut tunnel).await.is_empty());
    assert_eq!(mesh.echo.connections.load(Ordering::SeqCst), 0);

    let destination = format!("shop/search:{}", mesh.echo.addr.port());
    assert_eq!(
        metric(
            &mesh.search,
            "palisade_proxy_authz_denials_total",
            &[
                ("direction", "inbound"),
                ("policy", "default-deny"),
                ("source", FRONTEND),
                ("destination", destination.as_str()),
            ]
        ),
        Some(1.0)
    );
    mesh.stop().await;
    let lines = logs.authz_lines();
    assert!(
        lines.iter().any(|l| l.contains("WARN")
            && l.contains("connection denied")
            && l.contains("method=- path=-")
            && l.contains("policy=default-deny")),
        "{}",
        lines.join("\n")
    );
}

#[tokio::test]
async fn an_open_tcp_stream_is_closed_when_a_new_policy_denies_it() {
    let mesh = Mesh::start(MeshOptions::default()).await;
    let (head, mut tunnel) = connect(mesh.frontend.outbound_addr(), &tcp_target()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(echo_round_trip(&mut tunnel, b"before").await, b"before");

    // A push that still allows it changes nothing.
    let unrelated = policy(
        "unrelated",
        v1::Action::Deny,
        vec![v1::Rule {
            to: vec![v1::Operation {
                ports: vec![1],
                ..Default::default()
            }],
            ..Default::default()
        }],
    );
    mesh.search.apply_static(&authz(vec![unrelated])).unwrap();
    assert_eq!(echo_round_trip(&mut tunnel, b"still").await, b"still");

    let cut = policy(
        "no-tcp",
        v1::Action::Deny,
        vec![v1::Rule {
            to: vec![v1::Operation {
                ports: vec![mesh.echo.addr.port().into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
    );
    mesh.search.apply_static(&authz(vec![cut])).unwrap();
    assert!(read_to_close(&mut tunnel).await.is_empty());
    assert_eq!(
        metric(
            &mesh.search,
            "palisade_proxy_authz_denials_total",
            &[("policy", "shop/no-tcp")]
        ),
        Some(1.0)
    );
    // New streams are refused too.
    let (_, mut again) = connect(mesh.frontend.outbound_addr(), &tcp_target()).await;
    assert!(read_to_close(&mut again).await.is_empty());
    assert_eq!(mesh.echo.connections.load(Ordering::SeqCst), 1);
    mesh.stop().await;
}

#[tokio::test]
async fn connect_answers_502_unless_the_peer_is_up_and_presents_the_expected_identity() {
    let mesh = Mesh::start(MeshOptions::default()).await;
    let (app, echo) = (mesh.app.addr.port(), mesh.echo.addr.port());
    // Nobody listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    mesh.frontend
        .apply_static(&search_service(app, echo, dead, SEARCH))
        .unwrap();
    let (head, _) = connect(mesh.frontend.outbound_addr(), &tcp_target()).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");

    // The sidecar is there but is not who the endpoint says: refused like HTTP would be.
    let impostor = "spiffe://cluster.local/ns/shop/sa/payments";
    let real = mesh.search.inbound_addr().port();
    mesh.frontend
        .apply_static(&search_service(app, echo, real, impostor))
        .unwrap();
    let (head, _) = connect(mesh.frontend.outbound_addr(), &tcp_target()).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert_eq!(mesh.echo.connections.load(Ordering::SeqCst), 0);

    // CONNECT needs a port.
    let (head, _) = connect(mesh.frontend.outbound_addr(), "search.shop").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    mesh.stop().await;
}
