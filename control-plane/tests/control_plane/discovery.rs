//! The discovery stream over real mTLS: authentication, every type, ACK/NACK tracking,
//! and pushes of only what changed (policies only to the proxies they select).

use std::collections::BTreeMap;

use palisade_control_plane::ResourceType;
use palisade_control_plane::config::load_files;
use palisade_proto::v1 as pb;
use palisade_proto::v1::discovery_client::DiscoveryClient;
use palisade_proto::v1::discovery_response::Resources;
use tonic::Code;

use super::support::{
    MESH, POLICIES, ProxyStream, SERVICES, WORKLOADS, ack, connect_as, nack, start_shop, subscribe,
    timed,
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
    connect_as(cp, "search").await
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
        ("p.yaml", POLICIES),
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

#[tokio::test]
async fn policies_are_pushed_only_to_the_proxies_they_select() {
    let cp = start_shop().await;
    let (search_client, mut search, search_first) = connect_as(&cp, "search").await;
    let (frontend_client, mut frontend, frontend_first) = connect_as(&cp, "frontend").await;

    // Each proxy holds the policies selecting it: search-from-frontend selects search only.
    let policies = |resp: &pb::DiscoveryResponse| match &resp.resources {
        Some(Resources::Authorization(a)) => a
            .policies
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect::<Vec<_>>(),
        other => panic!("authorization snapshot expected, got {other:?}"),
    };
    let search_authz = &search_first[pb::AUTHORIZATION_TYPE_URL];
    let frontend_authz = &frontend_first[pb::AUTHORIZATION_TYPE_URL];
    assert_eq!(policies(search_authz), ["shop/search-from-frontend"]);
    assert!(policies(frontend_authz).is_empty());
    match &search_authz.resources {
        Some(Resources::Authorization(a)) => {
            let from = &a.policies[0].rules[0].from[0];
            assert_eq!(
                from.principals[0].kind,
                Some(pb::string_match::Kind::Exact(
                    "cluster.local/ns/shop/sa/frontend".into()
                ))
            );
        }
        other => panic!("authorization snapshot expected, got {other:?}"),
    }
    for resp in search_first.values() {
        search.send(ack(resp)).await;
    }
    for resp in frontend_first.values() {
        frontend.send(ack(resp)).await;
    }
    timed(
        "both synced",
        cp.control_plane
            .wait_for_proxies(|p| p.len() == 2 && p.iter().all(|p| p.is_synced())),
    )
    .await;

    // Change the policy: only search's proxy gets a new authorization snapshot.
    let changed = POLICIES.replace("sa/frontend", "sa/payments");
    let files = |policies: &str, egress: Option<&str>| {
        let mut files = vec![
            ("mesh.yaml", MESH.to_owned()),
            ("w.yaml", WORKLOADS.to_owned()),
            ("s.yaml", SERVICES.to_owned()),
            ("p.yaml", policies.to_owned()),
        ];
        if let Some(e) = egress {
            files.push(("e.yaml", e.to_owned()));
        }
        load_files(&files).unwrap()
    };
    cp.control_plane.update(files(&changed, None)).unwrap();
    let pushed = search.recv().await;
    assert_eq!(pushed.type_url, pb::AUTHORIZATION_TYPE_URL);
    assert_ne!(pushed.version_info, search_authz.version_info);
    match &pushed.resources {
        Some(Resources::Authorization(a)) => assert_eq!(
            a.policies[0].rules[0].from[0].principals[0].kind,
            Some(pb::string_match::Kind::Exact(
                "cluster.local/ns/shop/sa/payments".into()
            ))
        ),
        other => panic!("authorization snapshot expected, got {other:?}"),
    }
    search.send(ack(&pushed)).await;

    // Then a mesh-wide egress policy, pushed to both. A stream sends the types of one change
    // in a fixed order (authorization before egress) and handles changes in order, so if
    // frontend's next message is the egress snapshot, no authorization snapshot was pushed
    // to it for the policy change.
    let egress = "\
apiVersion: palisade.dev/v1alpha1
kind: EgressPolicy
metadata: {name: telemetry, namespace: palisade-system}
spec: {hosts: [collector.example.org], ports: [4317]}
";
    cp.control_plane
        .update(files(&changed, Some(egress)))
        .unwrap();
    for stream in [&mut search, &mut frontend] {
        let next = stream.recv().await;
        assert_eq!(next.type_url, pb::EGRESS_TYPE_URL, "{next:?}");
        match &next.resources {
            Some(Resources::Egress(e)) => {
                assert_eq!(e.rules.len(), 1);
                assert_eq!(e.rules[0].policy, "palisade-system/telemetry");
                assert_eq!(e.rules[0].ports, [4317]);
            }
            other => panic!("egress snapshot expected, got {other:?}"),
        }
    }
    let proxies = cp.control_plane.proxies();
    let frontend_status = proxies
        .iter()
        .find(|p| p.workload.name == "frontend")
        .unwrap();
    assert_eq!(
        frontend_status.types[&ResourceType::Authorization]
            .sent_version
            .as_deref(),
        Some(frontend_authz.version_info.as_str()),
        "frontend's authorization snapshot was never re-sent"
    );
    drop((search_client, search, frontend_client, frontend));
    cp.stop().await.unwrap();
}
