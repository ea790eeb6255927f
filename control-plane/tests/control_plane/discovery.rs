//! The discovery stream over real mTLS: authentication, the four types, ACK/NACK tracking,
//! and pushes of only what changed.

use std::collections::BTreeMap;

use palisade_control_plane::ResourceType;
use palisade_control_plane::config::load_files;
use palisade_proto::v1 as pb;
use palisade_proto::v1::discovery_client::DiscoveryClient;
use palisade_proto::v1::discovery_response::Resources;
use tonic::Code;

use super::support::{
    MESH, POLICIES, ProxyStream, SERVICES, WORKLOADS, ack, nack, start_shop, subscribe, timed,
};

#[tokio::test]
async fn stream_without_client_certificate_is_unauthenticated() {
    let cp = start_shop().await;
    let mut client = DiscoveryClient::new(cp.channel(None).await.unwrap());
    let first = subscribe(pb::WORKLOAD_TYPE_URL, Some(("shop", "search")));
    let status = match ProxyStream::open(&mut client, first).await {
        Err(status) => status,
        Ok(mut stream) => stream.end().await.unwrap_err(),
    };
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    drop(client);
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn stream_for_another_workload_is_permission_denied() {
    let cp = start_shop().await;
    let (frontend, _) = cp.certify("shop", "frontend").await.unwrap();
    let mut client = DiscoveryClient::new(cp.channel(Some(&frontend)).await.unwrap());
    let first = subscribe(pb::WORKLOAD_TYPE_URL, Some(("shop", "search")));
    let status = match ProxyStream::open(&mut client, first).await {
        Err(status) => status,
        Ok(mut stream) => stream.end().await.unwrap_err(),
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("shop/search"), "{status:?}");
    assert!(cp.control_plane.proxies().is_empty());
    drop(client);
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn first_request_without_node_is_invalid() {
    let cp = start_shop().await;
    let (search, _) = cp.certify("shop", "search").await.unwrap();
    let mut client = DiscoveryClient::new(cp.channel(Some(&search)).await.unwrap());
    let status = match ProxyStream::open(&mut client, subscribe(pb::MESH_TYPE_URL, None)).await {
        Err(status) => status,
        Ok(mut stream) => stream.end().await.unwrap_err(),
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    drop(client);
    cp.stop().await.unwrap();
}

/// Subscribes to every type as search's proxy and returns the stream and the first
/// response of each type.
async fn connect_search(
    cp: &palisade_control_plane::test_util::TestControlPlane,
) -> (
    DiscoveryClient<tonic::transport::Channel>,
    ProxyStream,
    BTreeMap<String, pb::DiscoveryResponse>,
) {
    let (creds, _) = cp.certify("shop", "search").await.unwrap();
    let mut client = DiscoveryClient::new(cp.channel(Some(&creds)).await.unwrap());
    let mut urls = pb::ALL_TYPE_URLS.iter();
    let first = subscribe(urls.next().unwrap(), Some(("shop", "search")));
    let mut stream = ProxyStream::open(&mut client, first).await.unwrap();
    for url in urls {
        stream.send(subscribe(url, None)).await;
    }
    let mut got = BTreeMap::new();
    for _ in 0..pb::ALL_TYPE_URLS.len() {
        let resp = stream.recv().await;
        assert!(!resp.nonce.is_empty());
        assert_eq!(resp.version_info.len(), 16, "FNV-1a 64 in hex");
        assert!(
            got.insert(resp.type_url.clone(), resp).is_none(),
            "one response per type"
        );
    }
    (client, stream, got)
}

#[tokio::test]
async fn proxy_receives_all_types_and_only_changes_are_pushed() {
    let cp = start_shop().await;
    let (client, mut stream, got) = connect_search(&cp).await;

    // The four snapshots.
    match &got[pb::WORKLOAD_TYPE_URL].resources {
        Some(Resources::Workload(w)) => {
            assert_eq!((w.name.as_str(), w.namespace.as_str()), ("search", "shop"));
            assert_eq!(w.spiffe_id, "spiffe://cluster.local/ns/shop/sa/search");
            assert_eq!(w.labels.get("app").map(String::as_str), Some("search"));
            assert_eq!(w.ports.len(), 1);
            assert_eq!(w.ports[0].port, 8080);
            assert_eq!(w.ports[0].protocol, pb::Protocol::Http as i32);
        }
        other => panic!("workload snapshot expected, got {other:?}"),
    }
    match &got[pb::SERVICES_TYPE_URL].resources {
        Some(Resources::Services(s)) => {
            let names: Vec<_> = s.services.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["frontend", "payments", "search"]);
            let payments = &s.services[1];
            assert_eq!(
                payments.hostnames,
                [
                    "payments",
                    "payments.shop",
                    "payments.shop.svc",
                    "payments.shop.svc.cluster.local"
                ]
            );
            assert_eq!(payments.ports[0].protocol, pb::Protocol::Grpc as i32);
            assert_eq!(payments.ports[0].target_port, 9090);
            let ep = &payments.endpoints[0];
            assert_eq!(ep.address, "127.0.1.3");
            assert_eq!(ep.proxy_port, 15006);
            assert_eq!(ep.spiffe_id, "spiffe://cluster.local/ns/shop/sa/payments");
            assert_eq!(ep.workload, "payments");
        }
        other => panic!("service snapshot expected, got {other:?}"),
    }
    match &got[pb::TRUST_BUNDLE_TYPE_URL].resources {
        Some(Resources::TrustBundle(b)) => {
            assert_eq!(b.trust_domain, "cluster.local");
            assert_eq!(b.roots_pem, cp.bundle().to_pem_list());
        }
        other => panic!("trust bundle expected, got {other:?}"),
    }
    match &got[pb::MESH_TYPE_URL].resources {
        Some(Resources::Mesh(m)) => {
            assert_eq!(m.trust_domain, "cluster.local");
            assert_eq!(m.mtls_mode, pb::MtlsMode::Strict as i32);
            assert_eq!(
                m.default_authorization,
                pb::DefaultAuthorization::Deny as i32
            );
            assert_eq!(m.certificate_lifetime_seconds, 3600);
        }
        other => panic!("mesh settings expected, got {other:?}"),
    }

    // ACK everything; the control plane records it.
    for resp in got.values() {
        stream.send(ack(resp)).await;
    }
    let proxies = timed(
        "all ACKed",
        cp.control_plane
            .wait_for_proxies(|p| p.len() == 1 && p[0].is_synced()),
    )
    .await;
    assert_eq!(proxies[0].workload.to_string(), "shop/search");
    assert_eq!(proxies[0].proxy_version, "test-proxy 0.1");
    let before = proxies[0].types.clone();

    // A new Service: only the service snapshot changes.
    let extra = "\
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: search-internal, namespace: shop}
spec:
  selector: {app: search}
  ports:
  - {port: 8080}
";
    let snapshot = load_files(&[
        ("mesh.yaml", MESH),
        ("w.yaml", WORKLOADS),
        ("s.yaml", SERVICES),
        ("x.yaml", extra),
        ("p.yaml", POLICIES),
    ])
    .unwrap();
    cp.control_plane.update(snapshot.clone()).unwrap();
    let pushed = stream.recv().await;
    assert_eq!(pushed.type_url, pb::SERVICES_TYPE_URL);
    assert_ne!(pushed.version_info, got[pb::SERVICES_TYPE_URL].version_info);
    match &pushed.resources {
        Some(Resources::Services(s)) => assert_eq!(s.services.len(), 4),
        other => panic!("service snapshot expected, got {other:?}"),
    }
    stream.send(ack(&pushed)).await;
    let proxies = timed(
        "services ACKed",
        cp.control_plane.wait_for_proxies(|p| {
            p.len() == 1
                && p[0].types[&ResourceType::Services].acked_version.as_deref()
                    == Some(pushed.version_info.as_str())
        }),
    )
    .await;
    // Nothing else was sent: every other type still has its first version.
    for (ty, status) in &proxies[0].types {
        if *ty != ResourceType::Services {
            assert_eq!(
                status.sent_version, before[ty].sent_version,
                "{ty} was pushed again"
            );
        }
    }

    // The same snapshot again: nothing changes, nothing is sent; a mesh change is next.
    cp.control_plane.update(snapshot).unwrap();
    let mesh = MESH.replace("mode: STRICT", "mode: PERMISSIVE");
    let snapshot = load_files(&[
        ("mesh.yaml", mesh.as_str()),
        ("w.yaml", WORKLOADS),
        ("s.yaml", SERVICES),
        ("x.yaml", extra),
    ])
    .unwrap();
    cp.control_plane.update(snapshot).unwrap();
    let pushed = stream.recv().await;
    assert_eq!(
        pushed.type_url,
        pb::MESH_TYPE_URL,
        "only the mesh settings changed"
    );
    match &pushed.resources {
        Some(Resources::Mesh(m)) => assert_eq!(m.mtls_mode, pb::MtlsMode::Permissive as i32),
        other => panic!("mesh settings expected, got {other:?}"),
    }

    // Shutdown ends the stream with UNAVAILABLE so the proxy reconnects with backoff.
    cp.shutdown.cancel();
    let status = stream.end().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    drop((client, stream));
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn nack_is_recorded() {
    let cp = start_shop().await;
    let (client, stream, got) = connect_search(&cp).await;
    let services = &got[pb::SERVICES_TYPE_URL];
    stream
        .send(nack(services, "", "unknown protocol on port 8080"))
        .await;
    let proxies = timed(
        "NACK recorded",
        cp.control_plane.wait_for_proxies(|p| {
            p.first()
                .and_then(|p| p.types.get(&ResourceType::Services))
                .is_some_and(|t| t.last_nack.is_some())
        }),
    )
    .await;
    let status = &proxies[0].types[&ResourceType::Services];
    let nack = status.last_nack.as_ref().unwrap();
    assert_eq!(nack.message, "unknown protocol on port 8080");
    assert_eq!(nack.version, services.version_info);
    assert_eq!(status.acked_version, None);
    assert!(!proxies[0].is_synced());
    let metrics = cp.control_plane.metrics_text();
    assert!(
        metrics.contains("palisade_discovery_nacks_total{type=\"services\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("palisade_discovery_connected_proxies 1"),
        "{metrics}"
    );
    drop((client, stream));
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn removing_the_workload_ends_its_stream() {
    let cp = start_shop().await;
    let (client, mut stream, _) = connect_search(&cp).await;
    let without_search: Vec<&str> = WORKLOADS
        .split("---\n")
        .filter(|d| !d.contains("name: search"))
        .collect();
    let workloads = without_search.join("---\n");
    let services: Vec<&str> = SERVICES
        .split("---\n")
        .filter(|d| !d.contains("name: search"))
        .collect();
    let services = services.join("---\n");
    let snapshot = load_files(&[
        ("w.yaml", workloads.as_str()),
        ("s.yaml", services.as_str()),
    ])
    .unwrap();
    cp.control_plane.update(snapshot).unwrap();
    let status = stream.end().await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    timed(
        "proxy gone",
        cp.control_plane.wait_for_proxies(|p| p.is_empty()),
    )
    .await;
    drop((client, stream));
    cp.stop().await.unwrap();
}
