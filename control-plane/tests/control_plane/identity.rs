//! The identity service over real TLS: bootstrap with a token, refusals, renewal over mTLS.

use palisade_certs::svid::validate_leaf;
use palisade_control_plane::test_util::{credentials, csr_for, identity};
use palisade_proto::v1::CertifyRequest;
use palisade_proto::v1::identity_client::IdentityClient;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tonic::Code;

use super::support::{WORKLOADS, start_shop, timed};

fn request(ns: &str, workload: &str, csr_pem: String, token: &str) -> CertifyRequest {
    CertifyRequest {
        csr_pem,
        workload: workload.to_owned(),
        namespace: ns.to_owned(),
        token: token.to_owned(),
    }
}

#[tokio::test]
async fn certify_with_token_issues_a_valid_svid() {
    let cp = start_shop().await;
    let id = identity("cluster.local", "shop", "search").unwrap();
    let (key, csr) = csr_for(&id).unwrap();
    let mut client = IdentityClient::new(cp.channel(None).await.unwrap());
    let token = cp.token("shop", "search").unwrap();
    let resp = timed(
        "certify",
        client.certify(request("shop", "search", csr, token)),
    )
    .await
    .unwrap()
    .into_inner();

    assert_eq!(resp.spiffe_id, id.as_str());
    let leaf = CertificateDer::from_pem_slice(resp.certificate_pem.as_bytes()).unwrap();
    assert_eq!(validate_leaf(leaf.as_ref()).unwrap(), id);
    assert!(!resp.chain_pem.is_empty(), "the intermediate is sent");
    assert_eq!(resp.trust_bundle_pem, cp.bundle().to_pem_list());
    // MeshConfig says 1h; the CA backdates notBefore by up to a minute.
    let validity = resp.not_after_unix - resp.not_before_unix;
    assert!((3600..=3660).contains(&validity), "validity {validity}s");
    // The credentials work with the key that never left the "proxy".
    credentials(&resp, &key).unwrap();
    assert!(
        cp.control_plane
            .metrics_text()
            .contains("palisade_identity_certificates_issued_total 1")
    );
    drop(client);
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn wrong_token_is_unauthenticated() {
    let cp = start_shop().await;
    let id = identity("cluster.local", "shop", "search").unwrap();
    let (_, csr) = csr_for(&id).unwrap();
    let mut client = IdentityClient::new(cp.channel(None).await.unwrap());
    // Another workload's token does not prove this one.
    let other = cp.token("shop", "payments").unwrap();
    let status = timed(
        "certify",
        client.certify(request("shop", "search", csr, other)),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .contains("bootstrap token rejected for shop/search"),
        "{status:?}"
    );
    assert!(
        cp.control_plane
            .metrics_text()
            .contains("palisade_identity_refusals_total{reason=\"unauthenticated\"} 1")
    );
    drop(client);
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn csr_for_another_workloads_identity_is_refused() {
    let cp = start_shop().await;
    // search's proxy, with search's token, asks for payments' identity.
    let payments = identity("cluster.local", "shop", "payments").unwrap();
    let (_, csr) = csr_for(&payments).unwrap();
    let mut client = IdentityClient::new(cp.channel(None).await.unwrap());
    let token = cp.token("shop", "search").unwrap();
    let status = timed(
        "certify",
        client.certify(request("shop", "search", csr, token)),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("asking for another workload's SPIFFE ID is refused"),
        "{status:?}"
    );
    assert!(
        !cp.control_plane
            .metrics_text()
            .contains("certificates_issued_total 1")
    );
    drop(client);
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn bad_csr_is_invalid_argument() {
    let cp = start_shop().await;
    let mut client = IdentityClient::new(cp.channel(None).await.unwrap());
    let token = cp.token("shop", "search").unwrap();
    let status = timed(
        "certify",
        client.certify(request("shop", "search", "not a CSR".into(), token)),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    drop(client);
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn renewal_over_mtls_needs_the_same_identity() {
    let cp = start_shop().await;
    let (search_creds, _) = cp.certify("shop", "search").await.unwrap();
    let id = identity("cluster.local", "shop", "search").unwrap();

    // With search's certificate and no token: renewed.
    let mut client = IdentityClient::new(cp.channel(Some(&search_creds)).await.unwrap());
    let (key, csr) = csr_for(&id).unwrap();
    let resp = timed("renew", client.certify(request("shop", "search", csr, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.spiffe_id, id.as_str());
    credentials(&resp, &key).unwrap();

    // With search's certificate, asking for payments: refused.
    let payments = identity("cluster.local", "shop", "payments").unwrap();
    let (_, csr) = csr_for(&payments).unwrap();
    let status = timed(
        "renew other",
        client.certify(request("shop", "payments", csr, "")),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Without a certificate and without a token: unauthenticated.
    let mut anonymous = IdentityClient::new(cp.channel(None).await.unwrap());
    let (_, csr) = csr_for(&id).unwrap();
    let status = timed(
        "renew anonymous",
        anonymous.certify(request("shop", "search", csr, "")),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    drop((client, anonymous));
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn workload_removed_from_the_mesh_is_not_found() {
    let cp = start_shop().await;
    // A configuration without payments, applied at runtime.
    let only_two: String = WORKLOADS
        .split("---\n")
        .take(2)
        .collect::<Vec<_>>()
        .join("---\n");
    let files = [("w.yaml", only_two.as_str())];
    let snapshot = palisade_control_plane::config::load_files(&files).unwrap();
    cp.control_plane.update(snapshot).unwrap();

    let payments = identity("cluster.local", "shop", "payments").unwrap();
    let (_, csr) = csr_for(&payments).unwrap();
    let mut client = IdentityClient::new(cp.channel(None).await.unwrap());
    let token = cp.token("shop", "payments").unwrap();
    let status = timed(
        "certify",
        client.certify(request("shop", "payments", csr, token)),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    drop(client);
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn a_bootstrap_token_is_refused_while_its_certificate_lives() {
    let cp = start_shop().await;
    let (creds, _) = cp.certify("shop", "search").await.unwrap();
    let id = identity("cluster.local", "shop", "search").unwrap();
    let token = cp.token("shop", "search").unwrap().to_owned();

    // Someone else holding the token (read from a file, a log, a process listing) asks for
    // the same identity with a key of their own.
    let mut stranger = IdentityClient::new(cp.channel(None).await.unwrap());
    let (_, csr) = csr_for(&id).unwrap();
    let status = timed(
        "second bootstrap",
        stranger.certify(request("shop", "search", csr, &token)),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("was used already"), "{status:?}");

    // The holder renews over mTLS, and its token stays refused.
    let mut holder = IdentityClient::new(cp.channel(Some(&creds)).await.unwrap());
    let (_, csr) = csr_for(&id).unwrap();
    timed("renew", holder.certify(request("shop", "search", csr, "")))
        .await
        .unwrap();
    let (_, csr) = csr_for(&id).unwrap();
    let status = timed(
        "bootstrap after renewal",
        stranger.certify(request("shop", "search", csr, &token)),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        cp.control_plane
            .metrics_text()
            .contains("palisade_identity_refusals_total{reason=\"token_in_use\"} 2")
    );
    // A failed bootstrap does not use the token up: another workload's first one works.
    let payments = identity("cluster.local", "shop", "payments").unwrap();
    let (_, bad) = csr_for(&id).unwrap();
    let ptoken = cp.token("shop", "payments").unwrap().to_owned();
    timed(
        "bootstrap with the wrong CSR",
        stranger.certify(request("shop", "payments", bad, &ptoken)),
    )
    .await
    .unwrap_err();
    let (_, csr) = csr_for(&payments).unwrap();
    timed(
        "bootstrap",
        stranger.certify(request("shop", "payments", csr, &ptoken)),
    )
    .await
    .unwrap();
    drop((stranger, holder));
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn failed_bootstrap_attempts_are_rate_limited_per_peer_address() {
    let cp = start_shop().await;
    let id = identity("cluster.local", "shop", "search").unwrap();
    let mut client = IdentityClient::new(cp.channel(None).await.unwrap());
    // Guessing: every wrong token is refused, until the address's budget is spent.
    let mut guesses = 0;
    let limited = loop {
        assert!(guesses < 100, "never rate limited");
        let (_, csr) = csr_for(&id).unwrap();
        let guess = format!("{guesses:064x}");
        let status = timed(
            "guess",
            client.certify(request("shop", "search", csr, &guess)),
        )
        .await
        .unwrap_err();
        guesses += 1;
        if status.code() == Code::ResourceExhausted {
            break status;
        }
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    };
    assert_eq!(guesses, 11, "the burst is 10 failures");
    assert!(
        limited
            .message()
            .contains("too many failed bootstrap attempts from 127.0.0.1"),
        "{limited:?}"
    );
    // Even the right token is refused from there now, without being checked.
    let (_, csr) = csr_for(&id).unwrap();
    let token = cp.token("shop", "search").unwrap().to_owned();
    let status = timed(
        "right token",
        client.certify(request("shop", "search", csr, &token)),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Renewal over mTLS is not a bootstrap and is not limited.
    drop(client);
    cp.stop().await.unwrap();
}
