//! CA rotation under load: `palisade ca rotate` (the real binary) takes a running mesh from
//! one CA to another in three stages while clients keep sending HTTP/1.1, HTTP/2 and gRPC
//! through the sidecars. No request may fail; at the end every sidecar serves a leaf from the
//! new CA and trusts the new root only.

use std::time::Duration;

use palisade_certs::ca::fingerprint;
use palisade_certs::tls::{Usage, verify_chain};
use palisade_certs::{CaState, TrustBundle, TrustDomain};

use crate::support::load::{Load, Protocol};
use crate::support::mesh::{self, MESH_CONFIG};
use crate::support::procs::palisade_bin;
use crate::support::timed;

/// Longest the whole rotation may take here (each stage waits for a few 200 ms CA polls and
/// proxies' renewals spread over up to 3 s).
const ROTATION: Duration = Duration::from_secs(90);

fn der_of(pem: &str) -> Vec<u8> {
    palisade_certs::pem::decode_certs(pem).unwrap()[0]
        .as_ref()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rotation_under_load_fails_no_request() {
    const TEST: &str = "ca_rotation_under_load_fails_no_request";
    let mesh = mesh::shop(TEST)
        .file("mesh.yaml", MESH_CONFIG)
        .ca_dir()
        .start()
        .await;
    let ca_dir = mesh.ca_dir.as_ref().unwrap().path().to_owned();
    let new_dir = tempfile::tempdir().unwrap();

    // The new CA, made by the CLI as an operator would (also its Secret manifest).
    let init = std::process::Command::new(palisade_bin())
        .args(["ca", "init", "--out"])
        .arg(new_dir.path())
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    assert!(new_dir.path().join("palisade-ca.yaml").exists());
    let new_root_pem = std::fs::read_to_string(new_dir.path().join("root-cert.pem")).unwrap();
    let new_issuer = fingerprint(&der_of(
        &std::fs::read_to_string(new_dir.path().join("ca-cert.pem")).unwrap(),
    ));
    let old_root = der_of(&mesh.ca_material.root_cert_pem);
    let old_issuer = fingerprint(&der_of(&mesh.ca_material.ca_cert_pem));

    let workloads = ["client", "search", "payments"];
    let issuer_of = |w: &str| {
        mesh.sidecar(w)
            .proxy
            .tls_state()
            .expect("ready")
            .credentials()
            .issuer_fingerprint()
            .to_owned()
    };
    for w in workloads {
        assert_eq!(issuer_of(w), old_issuer, "{w} starts on the old CA");
    }

    // Load through two sidecars, every protocol.
    let load_client = Load::start(
        mesh.sidecar("client").outbound(),
        &[Protocol::Http1, Protocol::Http2, Protocol::Grpc],
    );
    let load_search = Load::start(mesh.sidecar("search").outbound(), &[Protocol::Grpc]);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let rotate = tokio::process::Command::new(palisade_bin())
        .args(["ca", "rotate", "--dir"])
        .arg(&ca_dir)
        .arg("--new")
        .arg(new_dir.path())
        .args(["--control-plane", &mesh.cp_admin().to_string()])
        .args(["--stage-timeout-seconds", "60"])
        .kill_on_drop(true)
        .output();
    let out = timed("palisade ca rotate", async {
        tokio::time::timeout(ROTATION, rotate)
            .await
            .expect("the rotation finishes in time")
            .unwrap()
    })
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("palisade ca rotate:\n{stderr}");
    assert!(out.status.success(), "ca rotate failed: {stderr}");
    for stage in [
        "stage 1/3 done",
        "stage 2/3 done",
        "stage 3/3 done",
        "rotation complete",
    ] {
        assert!(stderr.contains(stage), "{stage:?} missing:\n{stderr}");
    }

    // Traffic keeps flowing after the rotation too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut totals = (0, 0);
    for load in [load_client, load_search] {
        let tally = load.stop().await;
        let (ok, failed) = tally.counts();
        assert_eq!(
            failed,
            0,
            "{failed} of {} requests failed during the rotation; first: {:?}",
            ok + failed,
            tally.first()
        );
        totals = (totals.0 + ok, totals.1 + failed);
    }
    assert!(totals.0 >= 300, "only {} requests completed", totals.0);
    println!("{} requests, 0 failed, across the rotation", totals.0);

    // Every sidecar: a leaf from the new CA, verified against the new root alone, and only
    // the new root trusted.
    let td = TrustDomain::new("cluster.local").unwrap();
    let new_only = TrustBundle::from_pem(td.clone(), &new_root_pem).unwrap();
    for w in workloads {
        let tls = mesh.sidecar(w).proxy.tls_state().unwrap();
        let creds = tls.credentials();
        assert_eq!(creds.issuer_fingerprint(), new_issuer, "{w}: leaf issuer");
        verify_chain(
            &creds.chain()[0],
            &creds.chain()[1..],
            &new_only,
            Usage::Server,
        )
        .unwrap_or_else(|e| panic!("{w}: leaf does not chain to the new root: {e}"));
        let roots: Vec<&[u8]> = tls.bundle().roots().iter().map(|r| r.as_ref()).collect();
        assert_eq!(roots, [new_only.roots()[0].as_ref()], "{w}: trust bundle");
        assert!(
            !roots.contains(&old_root.as_slice()),
            "{w} still trusts the old root"
        );
    }

    // The control plane serves the new CA outside any rotation, and the directory holds
    // only it.
    let state = CaState::read_dir(&ca_dir).unwrap();
    assert!(state.rotation().unwrap().is_none());
    assert_eq!(
        state.active(&td).unwrap().ca.issuer_fingerprint(),
        new_issuer
    );
    let status = palisade_control_plane::ca_status::fetch(mesh.cp_admin())
        .await
        .unwrap();
    assert!(status.rotation.is_none());
    assert_eq!(status.roots.len(), 1);
    assert_eq!(
        status.proxies.leaves_by_issuer.get(&new_issuer).copied(),
        Some(status.proxies.connected),
        "{status:?}"
    );

    // A request on a new connection still works end to end with only the new CA.
    let mut client = crate::support::clients::H1Client::new(mesh.sidecar("client").outbound());
    let reply = client
        .get("http://search.shop:8080/search?q=lamp", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    mesh.stop().await;
}
