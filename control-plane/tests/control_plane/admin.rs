//! The admin endpoint: liveness, readiness and metrics over plain HTTP.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::support::{shop, start_shop, timed};

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

#[tokio::test]
async fn ca_expiry_is_in_metrics() {
    use palisade_control_plane::test_util::{TestControlPlane, TestOptions};
    let day = std::time::Duration::from_secs(86_400);
    let options = TestOptions {
        ca: palisade_certs::CaOptions {
            root_lifetime: day * 20,
            intermediate_lifetime: day * 5,
            ..Default::default()
        },
        ..TestOptions::default()
    };
    let cp = timed("start", TestControlPlane::start_with(&shop(), options))
        .await
        .unwrap();
    let addr = cp.control_plane.admin_addr().unwrap();
    let metrics = get(addr, "/metrics").await;
    let left = |role: &str| -> Vec<f64> {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("palisade_ca_certificate_expiry_seconds{")
                    && l.contains(&format!("role=\"{role}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect()
    };
    let days = |v: f64| v / 86_400.0;
    let roots = left("root");
    assert_eq!(roots.len(), 1, "{metrics}");
    assert!((19.9..=20.0).contains(&days(roots[0])), "{roots:?}");
    let intermediates = left("intermediate");
    assert_eq!(intermediates.len(), 1, "{metrics}");
    assert!(
        (4.9..=5.0).contains(&days(intermediates[0])),
        "{intermediates:?}"
    );
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn ca_status_reports_certificates_and_trust_bundle_acks() {
    use palisade_control_plane::ca_status;
    let cp = start_shop().await;
    let addr = cp.control_plane.admin_addr().unwrap();
    let before = timed("GET /ca", ca_status::fetch(addr)).await.unwrap();
    assert_eq!(before.trust_domain, "cluster.local");
    assert_eq!(before.roots.len(), 1, "{before:?}");
    assert!(before.roots[0].expires_in_seconds > 365 * 86_400);
    assert_eq!(before.proxies.connected, 0);

    // A proxy that has acknowledged everything it was sent.
    let (_client, stream, got) = super::support::connect_as(&cp, "search").await;
    for resp in got.values() {
        stream.send(super::support::ack(resp)).await;
    }
    let bundle_version = got[palisade_proto::v1::TRUST_BUNDLE_TYPE_URL]
        .version_info
        .clone();
    let synced = timed("the ACKs are recorded", async {
        loop {
            let status = ca_status::fetch(addr).await.unwrap();
            if status.proxies.trust_bundle_pending == 0 && status.proxies.connected == 1 {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        synced.proxies.trust_bundle_acked,
        std::collections::BTreeMap::from([(bundle_version, 1)])
    );
    // Something that is not a control plane's admin port is a clear error.
    let err = ca_status::fetch(cp.addr()).await.expect_err("gRPC port");
    assert!(err.to_string().contains(&cp.addr().to_string()), "{err}");
    cp.stop().await.unwrap();
}
