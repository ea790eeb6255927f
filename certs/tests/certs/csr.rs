//! `CertificateAuthority::sign_csr`: what is signed, and every way a request is refused.

use palisade_certs::{CaError, SpiffeId, WorkloadKey, svid};
use rcgen::{CertificateParams, KeyPair, SanType};

use super::support::*;

/// A CSR (PEM) with exactly `sans`, signed by a fresh P-256 key.
fn csr_with_sans(sans: Vec<SanType>) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

fn is_bad_csr(r: Result<palisade_certs::IssuedLeaf, CaError>) -> String {
    match r {
        Err(CaError::BadCsr(msg)) => msg,
        other => panic!("expected BadCsr, got {other:?}"),
    }
}

#[test]
fn csr_for_the_same_identity_is_signed() {
    let (ca, _) = new_ca();
    let identity = id("shop", "search");
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_pem(&identity).unwrap();
    let issued = ca.sign_csr(&csr, &identity, HOUR).unwrap();
    assert_eq!(issued.spiffe_id, identity);
    assert_eq!(svid::validate_leaf(issued.leaf.as_ref()).unwrap(), identity);
    let cert = parse_x509(issued.leaf.as_ref());
    assert_eq!(
        &*cert.public_key().subject_public_key.data,
        key.key_pair().public_key_raw()
    );
    // The leaf works with the key that made the CSR.
    palisade_certs::Credentials::new(&issued, &key).unwrap();
    palisade_certs::tls::verify_chain(
        &issued.leaf,
        &issued.chain,
        ca.bundle(),
        palisade_certs::tls::Usage::Client,
    )
    .unwrap();
}

#[test]
fn csr_for_another_identity_is_an_identity_mismatch() {
    let (ca, _) = new_ca();
    let asked = id("shop", "payments");
    let proven = id("shop", "search");
    let csr = WorkloadKey::generate().unwrap().csr_pem(&asked).unwrap();
    match ca.sign_csr(&csr, &proven, HOUR) {
        Err(CaError::IdentityMismatch { requested, allowed }) => {
            assert_eq!(requested, asked.as_str());
            assert_eq!(allowed, proven);
        }
        other => panic!("expected IdentityMismatch, got {other:?}"),
    }
}

#[test]
fn csr_with_wrong_san_set_is_bad() {
    let (ca, _) = new_ca();
    let identity = id("a", "b");
    let other = "spiffe://cluster.local/ns/a/sa/c";

    let two_uris = csr_with_sans(vec![uri(identity.as_str()), uri(other)]);
    is_bad_csr(ca.sign_csr(&two_uris, &identity, HOUR));

    let with_dns = csr_with_sans(vec![
        uri(identity.as_str()),
        SanType::DnsName("b.a.svc".try_into().unwrap()),
    ]);
    is_bad_csr(ca.sign_csr(&with_dns, &identity, HOUR));

    let dns_only = csr_with_sans(vec![SanType::DnsName("b.a.svc".try_into().unwrap())]);
    is_bad_csr(ca.sign_csr(&dns_only, &identity, HOUR));

    let with_ip = csr_with_sans(vec![
        uri(identity.as_str()),
        SanType::IpAddress([10, 0, 0, 1].into()),
    ]);
    is_bad_csr(ca.sign_csr(&with_ip, &identity, HOUR));

    let none = csr_with_sans(vec![]);
    is_bad_csr(ca.sign_csr(&none, &identity, HOUR));
}

#[test]
fn garbage_is_a_bad_csr() {
    let (ca, material) = new_ca();
    let identity = id("a", "b");
    for input in [
        "",
        "hello",
        "-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        // A certificate is not a request.
        material.root_cert_pem.as_str(),
    ] {
        is_bad_csr(ca.sign_csr(input, &identity, HOUR));
    }
}

/// Decodes a PEM CSR, lets `f` edit the DER, re-encodes it.
fn mutate_csr(pem_text: &str, f: impl FnOnce(&mut Vec<u8>)) -> String {
    let block = pem::parse(pem_text).unwrap();
    let mut bytes = block.contents().to_vec();
    f(&mut bytes);
    palisade_certs::pem::encode("CERTIFICATE REQUEST", &bytes)
}

#[test]
fn tampered_csr_is_bad() {
    let (ca, _) = new_ca();
    let identity = id("a", "b");
    let csr = WorkloadKey::generate().unwrap().csr_pem(&identity).unwrap();
    assert!(ca.sign_csr(&csr, &identity, HOUR).is_ok());

    // The DER ends with the signature BIT STRING: its last byte is inside the ECDSA `s`.
    let bad_signature = mutate_csr(&csr, |der| *der.last_mut().unwrap() ^= 0x01);
    let msg = is_bad_csr(ca.sign_csr(&bad_signature, &identity, HOUR));
    assert!(msg.to_lowercase().contains("signature"), "{msg}");

    // Changing the signed content (one letter of the identity) breaks the signature too.
    let original = identity.as_str().as_bytes();
    let swapped_identity = id("a", "c");
    let bad_body = mutate_csr(&csr, |der| {
        let at = der
            .windows(original.len())
            .position(|w| w == original)
            .expect("identity in CSR");
        der[at + original.len() - 1] = b'c';
    });
    is_bad_csr(ca.sign_csr(&bad_body, &swapped_identity, HOUR));
}

#[test]
fn csr_in_a_foreign_trust_domain_is_refused() {
    let (ca, _) = new_ca();
    let foreign = SpiffeId::parse("spiffe://other.org/ns/a/sa/b").unwrap();
    let csr = WorkloadKey::generate().unwrap().csr_pem(&foreign).unwrap();
    match ca.sign_csr(&csr, &foreign, HOUR) {
        Err(CaError::ForeignTrustDomain { id, trust_domain }) => {
            assert_eq!(id, foreign);
            assert_eq!(trust_domain, td());
        }
        other => panic!("expected ForeignTrustDomain, got {other:?}"),
    }
}

#[test]
fn csr_with_a_key_other_than_p256_is_bad() {
    let (ca, _) = new_ca();
    let identity = id("a", "b");
    for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![uri(identity.as_str())];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let msg = is_bad_csr(ca.sign_csr(&csr, &identity, HOUR));
        assert!(msg.contains("P-256"), "{msg}");
    }
}

#[test]
fn requested_extensions_are_ignored() {
    use rcgen::{ExtendedKeyUsagePurpose as Eku, IsCa, KeyUsagePurpose as Ku};
    let (ca, _) = new_ca();
    let identity = id("a", "b");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri(identity.as_str())];
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![Ku::KeyCertSign, Ku::CrlSign];
    params.extended_key_usages = vec![Eku::CodeSigning, Eku::Any];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let issued = ca.sign_csr(&csr, &identity, HOUR).unwrap();
    assert_eq!(svid::validate_leaf(issued.leaf.as_ref()).unwrap(), identity);
    assert!(!parse_x509(issued.leaf.as_ref()).is_ca());
}

/// openssl lets a key of one curve sign with the hash of another; the key type must come
/// from the key, not from the signature algorithm (regression: a P-384 key signed with
/// ecdsa-with-SHA256 used to be issued as a "P-256" leaf holding a P-384 point).
#[test]
fn csr_key_type_is_read_from_the_key_not_the_signature_algorithm() {
    if !have_openssl("csr_key_type_is_read_from_the_key_not_the_signature_algorithm") {
        return;
    }
    let (ca, _) = new_ca();
    let identity = id("a", "b");
    let dir = TempDir::new("csr-curves");
    let san = format!("subjectAltName=URI:{identity}");
    for (curve, digest, accepted) in [
        ("secp384r1", "-sha256", false),
        ("prime256v1", "-sha384", true),
        ("prime256v1", "-sha256", true),
    ] {
        let key = format!("{curve}{digest}.key");
        let csr = format!("{curve}{digest}.csr");
        openssl(
            dir.path(),
            &format!("ecparam -name {curve} -genkey -noout -out {key}"),
        );
        openssl(
            dir.path(),
            &format!("req -new -key {key} {digest} -subj /O=Test -addext {san} -out {csr}"),
        );
        let pem_text = std::fs::read_to_string(dir.join(&csr)).unwrap();
        let result = ca.sign_csr(&pem_text, &identity, HOUR);
        if accepted {
            let issued = result.unwrap_or_else(|e| panic!("{curve} {digest}: {e}"));
            let cert = parse_x509(issued.leaf.as_ref());
            let spki = cert.public_key();
            assert_eq!(
                spki.algorithm
                    .parameters
                    .as_ref()
                    .unwrap()
                    .as_oid()
                    .unwrap(),
                x509_parser::oid_registry::OID_EC_P256
            );
            assert_eq!(spki.subject_public_key.data.len(), 65);
        } else {
            let msg = is_bad_csr(result);
            assert!(msg.contains("P-256"), "{curve} {digest}: {msg}");
        }
    }
}
