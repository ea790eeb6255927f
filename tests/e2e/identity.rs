//! Identity: the control plane's identity service refuses to hand a workload someone else's
//! identity, and the leaf a running sidecar serves follows the X.509-SVID rules, checked
//! by x509-parser, `openssl verify` and Python `cryptography`'s strict RFC 5280 verifier.

use std::time::Duration;

use palisade_control_plane::test_util::{connect, csr_for};
use palisade_proto::v1::CertifyRequest;
use palisade_proto::v1::identity_client::IdentityClient;
use rustls_pki_types::CertificateDer;
use tonic::Code;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;

use crate::support::clients::admin_get;
use crate::support::mesh::{self, shop_id};
use crate::support::tls::attempt_inbound;
use crate::support::tools::{self, output_text};
use crate::support::{metric, skip, timed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_cannot_obtain_another_workloads_identity() {
    const TEST: &str = "a_workload_cannot_obtain_another_workloads_identity";
    // No sidecar for search: its bootstrap token stays unused for this test to present
    // (a used token is refused while its certificate lives).
    let mesh = mesh::shop(TEST).without_sidecar("search").start().await;
    // The real Identity service over TLS, verified as the control plane's SPIFFE ID, with
    // no client certificate: exactly how a proxy bootstraps.
    let channel = timed(
        "connect to the identity service",
        connect(
            mesh.cp_addr(),
            &mesh.bundle(),
            mesh.cp_identity().clone(),
            None,
        ),
    )
    .await
    .unwrap();
    let mut identity = IdentityClient::new(channel);
    let search_token = mesh.token("shop", "search");
    let payments_id = mesh.identity("shop", "payments");
    let search_id = mesh.identity("shop", "search");

    // search's own token, but a CSR for payments' SPIFFE ID.
    let (_, csr) = csr_for(&payments_id).unwrap();
    let status = timed(
        "certify",
        identity.certify(CertifyRequest {
            csr_pem: csr,
            workload: "search".into(),
            namespace: "shop".into(),
            token: search_token.clone(),
        }),
    )
    .await
    .expect_err("a certificate for another identity was issued");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains(payments_id.as_str()),
        "{status:?}"
    );

    // search's token presented as workload payments.
    let (_, csr) = csr_for(&payments_id).unwrap();
    let status = timed(
        "certify",
        identity.certify(CertifyRequest {
            csr_pem: csr,
            workload: "payments".into(),
            namespace: "shop".into(),
            token: search_token.clone(),
        }),
    )
    .await
    .expect_err("another workload's token was accepted");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Control: the same token for its own workload and identity works.
    let (_, csr) = csr_for(&search_id).unwrap();
    let issued = timed(
        "certify",
        identity.certify(CertifyRequest {
            csr_pem: csr,
            workload: "search".into(),
            namespace: "shop".into(),
            token: search_token.clone(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(issued.spiffe_id, search_id.as_str());

    // Once used, the token is refused while the certificate issued with it lives.
    let (_, csr) = csr_for(&search_id).unwrap();
    let status = timed(
        "certify",
        identity.certify(CertifyRequest {
            csr_pem: csr,
            workload: "search".into(),
            namespace: "shop".into(),
            token: search_token,
        }),
    )
    .await
    .expect_err("a used bootstrap token was accepted again");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let cp = admin_get(mesh.cp_admin(), "/metrics").await.text();
    let refusals = "palisade_identity_refusals_total";
    assert_eq!(
        metric(&cp, refusals, &["reason=\"permission_denied\""]),
        1.0,
        "{cp}"
    );
    assert_eq!(
        metric(&cp, refusals, &["reason=\"unauthenticated\""]),
        1.0,
        "{cp}"
    );
    mesh.stop().await;
}

/// Checks a leaf against the X.509-SVID profile; returns the failures.
fn svid_profile_violations(leaf: &X509Certificate<'_>, expected_id: &str) -> Vec<String> {
    let mut bad = Vec::new();
    match leaf.subject_alternative_name() {
        Ok(Some(san)) => {
            let names = &san.value.general_names;
            let uris: Vec<&str> = names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect();
            if uris != [expected_id] {
                bad.push(format!(
                    "URI SANs {uris:?}, expected exactly [{expected_id}]"
                ));
            }
            if names.iter().any(|n| matches!(n, GeneralName::DNSName(_))) {
                bad.push(format!("has a DNS SAN: {names:?}"));
            }
        }
        other => bad.push(format!("no subjectAltName: {other:?}")),
    }
    match leaf.basic_constraints() {
        Ok(Some(bc)) if !bc.value.ca => {}
        other => bad.push(format!("basicConstraints must say CA=false: {other:?}")),
    }
    match leaf.key_usage() {
        Ok(Some(ku)) => {
            if !ku.critical {
                bad.push("keyUsage is not critical".into());
            }
            if !ku.value.digital_signature() {
                bad.push("keyUsage lacks digitalSignature".into());
            }
            if ku.value.key_cert_sign() || ku.value.crl_sign() {
                bad.push(format!(
                    "keyUsage allows signing certificates/CRLs: {}",
                    ku.value
                ));
            }
        }
        other => bad.push(format!("no keyUsage: {other:?}")),
    }
    match leaf.extended_key_usage() {
        Ok(Some(eku)) => {
            let e = eku.value;
            if !(e.server_auth && e.client_auth)
                || e.any
                || e.code_signing
                || e.email_protection
                || e.time_stamping
                || e.ocsp_signing
                || !e.other.is_empty()
            {
                bad.push(format!(
                    "extendedKeyUsage must be serverAuth+clientAuth only: {e:?}"
                ));
            }
        }
        other => bad.push(format!("no extendedKeyUsage: {other:?}")),
    }
    let spki = leaf.public_key();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        bad.push(format!(
            "key is {} / {curve:?}, expected ECDSA P-256",
            spki.algorithm.algorithm
        ));
    }
    bad
}

/// argv: root, intermediate, leaf, expected SPIFFE ID. Prints `OK` or raises.
const VERIFY_PY: &str = r#"
import sys
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

def load(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())

root, intermediate, leaf = (load(p) for p in sys.argv[1:4])
expected = sys.argv[4]
chain = PolicyBuilder().store(Store([root])).build_client_verifier().verify(leaf, [intermediate])
assert chain.chain[0] == leaf and chain.chain[-1] == root, chain.chain
san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
assert san.get_values_for_type(x509.UniformResourceIdentifier) == [expected], san
assert san.get_values_for_type(x509.DNSName) == [], "DNS SAN present"
assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
assert ku.critical and ku.value.digital_signature, ku
assert not ku.value.key_cert_sign and not ku.value.crl_sign, ku
eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}, eku
key = leaf.public_key()
assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1", key
print("OK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_leaf_follows_the_x509_svid_rules() {
    const TEST: &str = "served_leaf_follows_the_x509_svid_rules";
    let mesh = mesh::shop(TEST).start().await;
    let search = mesh.sidecar("search");
    let expected = shop_id("search");

    // The chain the sidecar reports on /certs ...
    let certs = admin_get(search.admin(), "/certs").await.json();
    assert_eq!(certs["identity"], expected.as_str(), "{certs:#}");
    let chain_pem = certs["chain_pem"].as_str().expect("chain_pem").to_owned();
    let chain = palisade_certs::pem::decode_certs(&chain_pem).unwrap();
    assert_eq!(chain.len(), 2, "leaf + intermediate expected: {certs:#}");

    // ... is the one it really serves at 15006.
    let client = mesh.issue(&mesh.identity("shop", "client"));
    let attempt = attempt_inbound(
        search.inbound(),
        Some(&client),
        &mesh.bundle(),
        &search.identity,
        8080,
        "search.shop:8080",
        "/search",
    )
    .await;
    assert_eq!(attempt.handshake, Ok(()));
    let served: Vec<CertificateDer<'static>> = attempt.server_chain;
    assert_eq!(
        served, chain,
        "/certs differs from the certificate served on 15006"
    );

    // x509-parser: the profile, and the signatures up to the mesh root.
    let (_, leaf) = X509Certificate::from_der(chain[0].as_ref()).unwrap();
    let (_, intermediate) = X509Certificate::from_der(chain[1].as_ref()).unwrap();
    let root_der = palisade_certs::pem::decode_certs(&mesh.ca_material.root_cert_pem)
        .unwrap()
        .remove(0);
    let (_, root) = X509Certificate::from_der(root_der.as_ref()).unwrap();
    let violations = svid_profile_violations(&leaf, &expected);
    assert!(
        violations.is_empty(),
        "X.509-SVID violations: {violations:#?}"
    );
    assert!(leaf.validity().is_valid(), "{:?}", leaf.validity());
    assert_eq!(leaf.issuer(), intermediate.subject());
    assert_eq!(intermediate.issuer(), root.subject());
    leaf.verify_signature(Some(intermediate.public_key()))
        .expect("leaf signed by the intermediate");
    intermediate
        .verify_signature(Some(root.public_key()))
        .expect("intermediate signed by the root");
    root.verify_signature(None).expect("self-signed root");
    assert!(intermediate.basic_constraints().unwrap().unwrap().value.ca);

    let dir = mesh.dir.path();
    let write = |name: &str, der: &CertificateDer<'_>| {
        let path = dir.join(name);
        std::fs::write(&path, palisade_certs::pem::encode_cert(der)).unwrap();
        path.display().to_string()
    };
    let leaf_path = write("leaf.pem", &chain[0]);
    let intermediate_path = write("intermediate.pem", &chain[1]);
    let root_path = write("root.pem", &root_der);

    // openssl: strict X.509 path validation, for both TLS purposes the leaf serves.
    match tools::find("openssl") {
        Some(openssl) => {
            for purpose in ["sslserver", "sslclient"] {
                let out = tools::run_ok(
                    &openssl,
                    [
                        "verify",
                        "-x509_strict",
                        "-purpose",
                        purpose,
                        "-CAfile",
                        &root_path,
                        "-untrusted",
                        &intermediate_path,
                        &leaf_path,
                    ],
                    Duration::from_secs(30),
                )
                .await;
                assert!(
                    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(": OK"),
                    "openssl verify -purpose {purpose}: {}",
                    output_text(&out)
                );
            }
        }
        None => skip(TEST, "openssl not found: no openssl verify"),
    }

    // Python cryptography: the strict RFC 5280 client verifier plus the profile again.
    match tools::python_with("cryptography.x509.verification").await {
        Some(python) => {
            let script = dir.join("verify_svid.py");
            std::fs::write(&script, VERIFY_PY).unwrap();
            let out = tools::run_ok(
                &python,
                [
                    script.display().to_string(),
                    root_path,
                    intermediate_path,
                    leaf_path,
                    expected,
                ],
                Duration::from_secs(60),
            )
            .await;
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "OK",
                "python cryptography: {}",
                output_text(&out)
            );
        }
        None => skip(
            TEST,
            "python with cryptography not found: no RFC 5280 cross-check",
        ),
    }
    mesh.stop().await;
}
