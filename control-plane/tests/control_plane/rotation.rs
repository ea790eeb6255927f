//! `rotate`: stage 3 is refused while a connected proxy still serves a certificate from the
//! old CA, naming it; `force` goes ahead with a warning naming it; and what the control
//! plane serves at each stage (roots, issuer) follows the CA directory.

use std::time::Duration;

use palisade_certs::ca::fingerprint;
use palisade_certs::rotation;
use palisade_control_plane::ca_status::fetch;
use palisade_control_plane::rotate::{CaStore, Progress, RotateError, RotateOptions, rotate};
use palisade_control_plane::test_util::{TestControlPlane, TestOptions, generate_ca};

use super::support::{ack, connect_as, shop, timed};

/// The shop, with its CA in a directory the control plane polls.
async fn start_with_ca_dir() -> TestControlPlane {
    let options = TestOptions {
        ca_dir: true,
        ..TestOptions::default()
    };
    timed("start", TestControlPlane::start_with(&shop(), options))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_root_stays_while_a_proxy_holds_its_certificate_unless_forced() {
    let cp = start_with_ca_dir().await;
    let ca_dir = cp.ca_dir.as_ref().unwrap().path().to_owned();
    let admin = cp.control_plane.admin_addr().unwrap();
    let old_issuer = cp.ca.issuer_fingerprint().to_owned();

    // A proxy that acknowledges every push but never renews: it keeps reporting a leaf
    // from the old issuer.
    let (_client, mut stream, _) = connect_as(&cp, "frontend").await;
    let stale = {
        let old_issuer = old_issuer.clone();
        tokio::spawn(async move {
            loop {
                let Ok(Some(resp)) = stream.rx.message().await else {
                    return;
                };
                let mut answer = ack(&resp);
                answer.certificate_issuer.clone_from(&old_issuer);
                if stream.tx.send(answer).await.is_err() {
                    return;
                }
            }
        })
    };
    let new_dir = tempfile::tempdir().unwrap();
    let (new_ca, material) = generate_ca("cluster.local").unwrap();
    material.replace_in(new_dir.path()).unwrap();
    let options = RotateOptions {
        store: CaStore::Dir(ca_dir.clone()),
        new: Some(new_dir.path().to_owned()),
        control_planes: vec![admin],
        trust_domain: palisade_certs::TrustDomain::new("cluster.local").unwrap(),
        stage_timeout: Duration::from_secs(3),
        poll: Duration::from_millis(100),
        force: false,
    };
    let mut seen = Vec::new();
    let err = timed("rotate", rotate(&options, |p| seen.push(p)))
        .await
        .unwrap_err();
    match &err {
        RotateError::WouldBreak { count, names } => {
            assert_eq!(*count, 1, "{err}");
            assert!(names.contains("shop/frontend"), "{err}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    assert!(seen.contains(&Progress::Completed(rotation::Stage::TrustNewRoot)));
    // Still at stage 2: both roots trusted, the new CA issuing.
    let status = fetch(admin).await.unwrap();
    assert_eq!(status.rotation.as_ref().unwrap().stage_number, 2);
    assert_eq!(status.roots.len(), 2);
    assert_eq!(status.issuer_fingerprint, new_ca.issuer_fingerprint());
    assert_eq!(status.proxies.not_on_current_issuer, ["shop/frontend"]);
    assert_eq!(
        status.proxies.leaves_by_issuer.get(&old_issuer).copied(),
        Some(1)
    );

    // Forced: it goes ahead, naming the workload it breaks.
    let forced = RotateOptions {
        new: None,
        force: true,
        ..options
    };
    let mut seen = Vec::new();
    timed("rotate --force", rotate(&forced, |p| seen.push(p)))
        .await
        .unwrap();
    assert!(
        seen.iter().any(
            |p| matches!(p, Progress::Forced(names) if names == &["shop/frontend".to_owned()])
        ),
        "{seen:?}"
    );
    assert!(seen.contains(&Progress::Finished));
    let status = fetch(admin).await.unwrap();
    assert!(status.rotation.is_none());
    assert_eq!(status.roots.len(), 1);
    assert_eq!(
        fingerprint(
            palisade_certs::pem::decode_certs(&material.root_cert_pem).unwrap()[0].as_ref()
        ),
        fingerprint(
            palisade_certs::pem::decode_certs(
                &std::fs::read_to_string(ca_dir.join("root-cert.pem")).unwrap()
            )
            .unwrap()[0]
                .as_ref()
        ),
        "the directory holds the new root only"
    );
    stale.abort();
    cp.stop().await.unwrap();
}

/// In a cluster the CA lives in a Secret that the replicas mount as their CA directory:
/// `rotate` with the Secret store patches it stage by stage (against the kmock emulator),
/// and a control plane whose directory mirrors the Secret, as the kubelet keeps a mounted
/// Secret, follows every stage to the new CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_kept_in_the_cluster_secret_reaches_a_control_plane_mounting_it() {
    use palisade_certs::CaState;
    use palisade_certs::rotation::{Change, NEXT_PREFIX, ROTATION_FILE};
    use palisade_control_plane::k8s::ca_secret::CaSecret;
    use palisade_control_plane::test_util::kmock::{self, Kmock};

    const TEST: &str = "a_rotation_kept_in_the_cluster_secret_reaches_a_control_plane_mounting_it";
    let Some(python) = kmock::python().await else {
        println!(
            "SKIPPED: {TEST}: Python's kmock not found (pip install kmock; tests/run.sh installs it)"
        );
        return;
    };
    let k = Kmock::start(python, None).await.unwrap();
    let cp = start_with_ca_dir().await;
    let ca_dir = cp.ca_dir.as_ref().unwrap().path().to_owned();
    let admin = cp.control_plane.admin_addr().unwrap();

    // The Secret as `palisade install` creates it, from the same CA.
    let b64 =
        |s: &str| serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec())).unwrap();
    let m = &cp.ca_material;
    k.create(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "palisade-ca", "namespace": "palisade-system"},
        "type": "Opaque",
        "data": {
            "ca-cert.pem": b64(&m.ca_cert_pem), "ca-key.pem": b64(&m.ca_key_pem),
            "cert-chain.pem": b64(&m.cert_chain_pem), "root-cert.pem": b64(&m.root_cert_pem),
        }
    }))
    .await
    .unwrap();

    // The kubelet's part: the mounted directory follows the Secret.
    let mirror = {
        let secret = CaSecret::new(k.client().unwrap(), "palisade-system", "palisade-ca");
        let dir = ca_dir.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(state) = secret.read().await {
                    let mounted = CaState::read_dir(&dir).unwrap();
                    let mut changes: Vec<Change> = state
                        .files()
                        .iter()
                        .filter(|(name, text)| mounted.files().get(*name) != Some(*text))
                        .map(|(name, text)| Change::Write {
                            name: name.clone(),
                            contents: text.clone(),
                            secret: true,
                        })
                        .collect();
                    changes.extend(
                        mounted
                            .files()
                            .keys()
                            .filter(|name| !state.files().contains_key(*name))
                            .map(|name| Change::Remove { name: name.clone() }),
                    );
                    palisade_certs::rotation::apply_to_dir(&dir, &changes).unwrap();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let new_dir = tempfile::tempdir().unwrap();
    let (new_ca, material) = generate_ca("cluster.local").unwrap();
    material.replace_in(new_dir.path()).unwrap();
    let options = RotateOptions {
        store: CaStore::Secret(Box::new(CaSecret::new(
            k.client().unwrap(),
            "palisade-system",
            "palisade-ca",
        ))),
        new: Some(new_dir.path().to_owned()),
        control_planes: vec![admin],
        trust_domain: palisade_certs::TrustDomain::new("cluster.local").unwrap(),
        stage_timeout: Duration::from_secs(20),
        poll: Duration::from_millis(100),
        force: false,
    };
    let mut seen = Vec::new();
    timed("rotate", rotate(&options, |p| seen.push(p)))
        .await
        .unwrap();
    for stage in rotation::Stage::ALL {
        assert!(seen.contains(&Progress::Completed(stage)), "{seen:?}");
    }
    assert!(seen.contains(&Progress::Finished));

    // The Secret holds the new CA only, and the control plane serves it.
    let secret = CaSecret::new(k.client().unwrap(), "palisade-system", "palisade-ca");
    let state = secret.read().await.unwrap();
    assert!(state.rotation().unwrap().is_none());
    assert!(
        !state
            .files()
            .keys()
            .any(|n| n.starts_with(NEXT_PREFIX) || n == ROTATION_FILE),
        "{:?}",
        state.files().keys()
    );
    assert_eq!(state.files()["ca-cert.pem"], material.ca_cert_pem);
    let status = fetch(admin).await.unwrap();
    assert!(status.rotation.is_none());
    assert_eq!(status.issuer_fingerprint, new_ca.issuer_fingerprint());
    assert_eq!(status.roots.len(), 1);
    mirror.abort();
    cp.stop().await.unwrap();
}
