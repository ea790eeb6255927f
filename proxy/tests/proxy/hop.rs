//! How requests cross the hop between sidecars: HTTP/1.1 app requests to an HTTP/1.1 port
//! over pooled HTTP/1.1 connections (reused, bounded per peer, HTTP/2 beyond the bound), and
//! a connection whose response was abandoned half-read never carries another request.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const HOST: &str = "search.shop:8080";

fn inbound_connections(mesh: &Mesh) -> f64 {
    metric(
        &mesh.search,
        "palisade_proxy_connections_total",
        &[("direction", "inbound")],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn sequential_requests_reuse_one_pooled_connection() {
    let mesh = Mesh::start(MeshOptions::default()).await;
    for i in 0..20 {
        // Each on a new app connection: the pool belongs to the sidecar, not to the caller.
        let r = mesh.get(HOST, &format!("/n{i}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.body(), &Bytes::from(format!("/n{i}")));
    }
    assert_eq!(inbound_connections(&mesh), 1.0);
    mesh.stop().await;
}

#[tokio::test]
async fn past_the_per_peer_bound_requests_share_the_http2_connection() {
    let limits = palisade_proxy::Limits {
        peer_http1_connections: 2,
        ..Default::default()
    };
    let mesh = Mesh::start(MeshOptions {
        limits,
        ..Default::default()
    })
    .await;
    // Eight requests at once, each holding its connection for 300 ms.
    let answers = step("8 concurrent slow requests", async {
        let paths: Vec<String> = (0..8).map(|i| format!("/slow{i}")).collect();
        futures_util::future::join_all(paths.iter().map(|path| mesh.get(HOST, path))).await
    })
    .await;
    for (i, r) in answers.iter().enumerate() {
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.body(), &Bytes::from(format!("/slow{i}")));
    }
    // Two HTTP/1.1 connections and the shared HTTP/2 one; never one per request.
    let opened = inbound_connections(&mesh);
    assert!(
        (2.0..=3.0).contains(&opened),
        "{opened} inbound connections"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn a_response_abandoned_half_read_never_answers_the_next_request() {
    let mesh = Mesh::start(MeshOptions::default()).await;
    step("abandon a 4 MiB response after its first bytes", async {
        let mut tcp = TcpStream::connect(mesh.frontend.outbound_addr())
            .await
            .unwrap();
        tcp.write_all(format!("GET /big HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut first = [0u8; 4096];
        let n = tcp.read(&mut first).await.unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
        drop(tcp);
    })
    .await;
    // Whatever connection the pool hands out next must start with this request's response,
    // never with the rest of the abandoned body.
    for i in 0..5 {
        let req = Request::get(format!("/after{i}"))
            .header(http::header::HOST, HOST)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = send(mesh.frontend.outbound_addr(), req).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.body(), &Bytes::from(format!("/after{i}")));
    }
    assert_eq!(mesh.app.requests.load(Ordering::SeqCst), 6);
    // The abandoned connection was closed, not reused: a second one was opened.
    assert_eq!(inbound_connections(&mesh), 2.0);
    mesh.stop().await;
}
