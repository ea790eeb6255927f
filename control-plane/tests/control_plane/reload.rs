//! Runtime configuration changes: `reload()` keeps the last good configuration on error,
//! and the directory watcher pushes valid changes.

use palisade_control_plane::test_util::{
    TestControlPlane, TestOptions, generate_ca, write_config_dir,
};
use palisade_control_plane::{ControlPlaneConfig, StartError, TokenStore, start};
use palisade_proto::v1 as pb;
use palisade_proto::v1::discovery_client::DiscoveryClient;
use palisade_proto::v1::discovery_response::Resources;
use tokio_util::sync::CancellationToken;

use super::support::{POLICIES, ProxyStream, SERVICES, ack, shop, start_shop, subscribe, timed};

#[tokio::test]
async fn bad_file_keeps_the_last_good_snapshot() {
    let cp = start_shop().await;
    let good = cp.control_plane.snapshot();

    cp.write_file(
        "broken.yaml",
        "apiVersion: palisade.dev/v1alpha1\nkind: Gadget\nmetadata: {name: g}\n",
    )
    .unwrap();
    let err = cp.control_plane.reload().unwrap_err();
    assert!(
        err.to_string()
            .contains("broken.yaml: document 1 (Gadget default/g): kind"),
        "{err}"
    );
    assert_eq!(
        cp.control_plane.snapshot(),
        good,
        "last good configuration stays in force"
    );

    cp.remove_file("broken.yaml").unwrap();
    cp.write_file(
        "services.yml",
        &SERVICES.replace("port: 80, targetPort", "port: 81, targetPort"),
    )
    .unwrap();
    cp.control_plane.reload().unwrap();
    let now = cp.control_plane.snapshot();
    assert_eq!(now.service("shop", "frontend").unwrap().ports[0].port, 81);
    let metrics = cp.control_plane.metrics_text();
    assert!(
        metrics.contains("palisade_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("palisade_config_reloads_total{result=\"success\"} 1"),
        "{metrics}"
    );
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn trust_domain_cannot_change_at_runtime() {
    let cp = start_shop().await;
    cp.write_file("mesh.yaml", "apiVersion: palisade.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {trustDomain: example.org}\n")
        .unwrap();
    let err = cp.control_plane.reload().unwrap_err();
    assert!(
        err.to_string()
            .contains("mesh.yaml: document 1 (MeshConfig): spec.trustDomain"),
        "{err}"
    );
    assert_eq!(
        cp.control_plane.snapshot().settings().trust_domain.as_str(),
        "cluster.local"
    );
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn start_refuses_a_ca_of_another_trust_domain() {
    let dir = write_config_dir(&shop()).unwrap();
    let (ca, _) = generate_ca("example.org").unwrap();
    let result = start(
        ControlPlaneConfig {
            config_dir: dir.path().to_owned(),
            ca: ca.into(),
            tokens: TokenStore::new(),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            admin_addr: None,
            watch: false,
            assigned_addresses: Default::default(),
            limits: Default::default(),
            observe: Default::default(),
            kubernetes: None,
            live_view_remote: false,
        },
        CancellationToken::new(),
    )
    .await;
    match result {
        Err(e @ StartError::TrustDomainMismatch { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("example.org") && msg.contains("cluster.local"),
                "{msg}"
            );
        }
        other => panic!("expected a trust domain mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn start_reports_invalid_configuration() {
    let result = TestControlPlane::start(&[("w.yaml", "kind: Workload\n")]).await;
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("w.yaml: document 1 (Workload): apiVersion: is required"),
        "{err}"
    );
}

#[tokio::test]
async fn watcher_reloads_and_pushes_changes() {
    let options = TestOptions {
        watch: true,
        ..TestOptions::default()
    };
    let cp = timed("start", TestControlPlane::start_with(&shop(), options))
        .await
        .unwrap();
    let (creds, _) = cp.certify("shop", "search").await.unwrap();
    let mut client = DiscoveryClient::new(cp.channel(Some(&creds)).await.unwrap());
    let mut stream = ProxyStream::open(
        &mut client,
        subscribe(pb::SERVICES_TYPE_URL, Some(("shop", "search"))),
    )
    .await
    .unwrap();
    let first = stream.recv().await;
    stream.send(ack(&first)).await;

    // An invalid edit is ignored (logged), then a valid one is pushed.
    cp.write_file("broken.yaml", "kind: [").unwrap();
    cp.remove_file("broken.yaml").unwrap();
    cp.write_file(
        "services.yml",
        &SERVICES.replace("port: 80, targetPort", "port: 81, targetPort"),
    )
    .unwrap();
    let pushed = stream.recv().await;
    assert_eq!(pushed.type_url, pb::SERVICES_TYPE_URL);
    match pushed.resources {
        Some(Resources::Services(s)) => assert_eq!(s.services[0].ports[0].port, 81),
        other => panic!("service snapshot expected, got {other:?}"),
    }
    drop((client, stream));
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn update_and_snapshot_round_trip() {
    let cp = start_shop().await;
    let before = cp.control_plane.snapshot();
    let dir = write_config_dir(&shop()).unwrap();
    let same = palisade_control_plane::load_dir(dir.path()).unwrap();
    assert_eq!(before.services().len(), same.services().len());
    cp.control_plane.update(same).unwrap();
    assert_eq!(cp.control_plane.snapshot().workloads().len(), 3);
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_policy_keeps_the_last_good_configuration_everywhere() {
    let cp = start_shop().await;
    let good = cp.control_plane.snapshot();
    let (creds, _) = cp.certify("shop", "search").await.unwrap();
    let mut client = DiscoveryClient::new(cp.channel(Some(&creds)).await.unwrap());
    let mut stream = ProxyStream::open(
        &mut client,
        subscribe(pb::AUTHORIZATION_TYPE_URL, Some(("shop", "search"))),
    )
    .await
    .unwrap();
    let first = stream.recv().await;
    stream.send(ack(&first)).await;

    // A policy using JWT principals would be enforced only partially: rejected whole, named.
    let jwt = POLICIES.replace(
        "principals: [cluster.local/ns/shop/sa/frontend]",
        "principals: [cluster.local/ns/shop/sa/frontend], requestPrincipals: [\"*\"]",
    );
    assert_ne!(jwt, POLICIES);
    cp.write_file("policies.yaml", &jwt).unwrap();
    let err = cp.control_plane.reload().unwrap_err();
    assert!(
        err.to_string().contains(
            "policies.yaml: document 1 (AuthorizationPolicy shop/search-from-frontend): \
             spec.rules[0].from[0].source.requestPrincipals: not supported by Palisade"
        ),
        "{err}"
    );
    assert_eq!(cp.control_plane.snapshot(), good);

    // The next snapshot the proxy sees is the next valid configuration's.
    let valid = POLICIES.replace("sa/frontend", "sa/payments");
    cp.write_file("policies.yaml", &valid).unwrap();
    cp.control_plane.reload().unwrap();
    let pushed = stream.recv().await;
    assert_eq!(pushed.type_url, pb::AUTHORIZATION_TYPE_URL);
    match &pushed.resources {
        Some(Resources::Authorization(a)) => assert_eq!(
            a.policies[0].rules[0].from[0].principals[0].kind,
            Some(pb::string_match::Kind::Exact(
                "cluster.local/ns/shop/sa/payments".into()
            ))
        ),
        other => panic!("authorization snapshot expected, got {other:?}"),
    }
    drop((client, stream));
    cp.stop().await.unwrap();
}
