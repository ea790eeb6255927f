//! The admin endpoint: liveness, readiness and metrics over plain HTTP.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::support::{start_shop, timed};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut tcp = timed("connect admin", TcpStream::connect(addr))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    timed("write", tcp.write_all(request.as_bytes()))
        .await
        .unwrap();
    let mut response = String::new();
    timed("read", tcp.read_to_string(&mut response))
        .await
        .unwrap();
    response
}

#[tokio::test]
async fn live_ready_and_metrics() {
    let cp = start_shop().await;
    let addr = cp.control_plane.admin_addr().unwrap();
    assert!(get(addr, "/live").await.starts_with("HTTP/1.1 200"));
    assert!(
        get(addr, "/ready").await.starts_with("HTTP/1.1 200"),
        "ready once start returned"
    );
    let metrics = get(addr, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("# TYPE palisade_discovery_connected_proxies gauge"),
        "{metrics}"
    );
    assert!(
        metrics.contains("palisade_discovery_connected_proxies 0"),
        "{metrics}"
    );
    assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    cp.stop().await.unwrap();
}
