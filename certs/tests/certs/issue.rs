//! X.509-SVID conformance of issued leaves, read back with x509-parser.

use std::time::Duration;

use palisade_certs::svid::{self, SvidError};
use palisade_certs::{CaOptions, CertificateAuthority};
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
};

use super::support::*;

#[test]
fn issued_leaf_follows_the_x509_svid_profile() {
    let (ca, material) = new_ca();
    let identity = id("shop", "payments");
    let lifetime = Duration::from_secs(24 * 3600);
    let (issued, key) = ca.issue(&identity, lifetime).unwrap();
    let cert = parse_x509(issued.leaf.as_ref());

    // Exactly one URI SAN, equal to the requested SPIFFE ID; no DNS SAN (nor any other name).
    let san = cert
        .subject_alternative_name()
        .unwrap()
        .expect("SAN extension");
    let names = &san.value.general_names;
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(matches!(names[0], GeneralName::URI(uri) if uri == identity.as_str()));
    assert!(!names.iter().any(|n| matches!(n, GeneralName::DNSName(_))));

    // basicConstraints present, cA=false.
    let bc = cert.basic_constraints().unwrap().expect("basicConstraints");
    assert!(!bc.value.ca);
    assert!(!cert.is_ca());

    // keyUsage critical, digitalSignature, never keyCertSign/cRLSign.
    let ku = cert.key_usage().unwrap().expect("keyUsage");
    assert!(ku.critical, "keyUsage must be critical");
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign());
    assert!(!ku.value.crl_sign());

    // EKU: serverAuth and clientAuth, nothing else.
    let eku = cert
        .extended_key_usage()
        .unwrap()
        .expect("extendedKeyUsage")
        .value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!eku.any && !eku.code_signing && !eku.email_protection);
    assert!(!eku.time_stamping && !eku.ocsp_signing && eku.other.is_empty());

    // Validity: the requested lifetime plus 60 s of backdating, as reported.
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    assert_eq!(not_after - not_before, lifetime.as_secs() as i64 + 60);
    assert_eq!(
        (issued.not_before, issued.not_after),
        (not_before, not_after)
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (not_before - (now - 60)).abs() <= 5,
        "not_before {not_before}, now {now}"
    );

    // Key: ECDSA P-256, the one returned with the leaf.
    let spki = cert.public_key();
    assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .unwrap()
        .as_oid()
        .unwrap();
    assert_eq!(curve, OID_EC_P256);
    assert_eq!(spki.subject_public_key.data.len(), 65);
    assert_eq!(
        &*spki.subject_public_key.data,
        key.key_pair().public_key_raw()
    );

    // Signed by the intermediate (which is what the chain carries), with ECDSA-SHA256.
    let intermediate_der = der(&material.ca_cert_pem);
    let intermediate = parse_x509(intermediate_der.as_ref());
    assert_eq!(issued.chain, vec![intermediate_der.clone()]);
    assert_eq!(
        cert.signature_algorithm.algorithm,
        OID_SIG_ECDSA_WITH_SHA256
    );
    assert_eq!(cert.issuer().as_raw(), intermediate.subject().as_raw());
    cert.verify_signature(Some(intermediate.public_key()))
        .unwrap();
    let root_der = der(&material.root_cert_pem);
    let root = parse_x509(root_der.as_ref());
    assert!(cert.verify_signature(Some(root.public_key())).is_err());

    // The crate's own reading agrees.
    assert_eq!(svid::validate_leaf(issued.leaf.as_ref()).unwrap(), identity);
    let info = svid::inspect(issued.leaf.as_ref()).unwrap();
    assert_eq!(info.uri_sans, vec![identity.to_string()]);
    assert!(info.dns_sans.is_empty());
    assert_eq!(
        info.serial.replace(':', "").len(),
        32,
        "128-bit serial: {}",
        info.serial
    );
}

#[test]
fn serials_are_unique() {
    let (ca, _) = new_ca();
    let serials: std::collections::BTreeSet<String> = (0..8)
        .map(|_| {
            let (leaf, _) = ca.issue(&id("a", "b"), HOUR).unwrap();
            svid::inspect(leaf.leaf.as_ref()).unwrap().serial
        })
        .collect();
    assert_eq!(serials.len(), 8);
}

#[test]
fn leaf_never_outlives_its_issuer() {
    let options = CaOptions {
        intermediate_lifetime: Duration::from_secs(2 * 3600),
        ..CaOptions::default()
    };
    let (ca, material) = CertificateAuthority::generate(td(), &options).unwrap();
    let issuer_end = parse_x509(der(&material.ca_cert_pem).as_ref())
        .validity()
        .not_after
        .timestamp();
    assert_eq!(ca.not_after(), issuer_end);

    let (leaf, _) = ca
        .issue(&id("a", "b"), Duration::from_secs(24 * 3600))
        .unwrap();
    let cert = parse_x509(leaf.leaf.as_ref());
    assert_eq!(cert.validity().not_after.timestamp(), issuer_end);
    assert_eq!(leaf.not_after, issuer_end);

    // Lifetimes too long to be a date at all are clamped too, not a panic.
    for lifetime in [Duration::from_secs(400 * 365 * 86_400), Duration::MAX] {
        let (leaf, _) = ca.issue(&id("a", "b"), lifetime).unwrap();
        assert_eq!(leaf.not_after, issuer_end);
    }
}

#[test]
fn generated_intermediate_never_outlives_the_root() {
    let options = CaOptions {
        root_lifetime: Duration::from_secs(3600),
        intermediate_lifetime: Duration::from_secs(3600),
        ..CaOptions::default()
    };
    for _ in 0..3 {
        let (_, material) = CertificateAuthority::generate(td(), &options).unwrap();
        let root = der(&material.root_cert_pem);
        let ca = der(&material.ca_cert_pem);
        let root_end = parse_x509(root.as_ref()).validity().not_after.timestamp();
        let ca_end = parse_x509(ca.as_ref()).validity().not_after.timestamp();
        assert!(
            ca_end <= root_end,
            "intermediate {ca_end} outlives root {root_end}"
        );
    }
}

#[test]
fn absurd_ca_lifetime_is_an_error_not_a_panic() {
    let options = CaOptions {
        root_lifetime: Duration::MAX,
        ..CaOptions::default()
    };
    let err = CertificateAuthority::generate(td(), &options).unwrap_err();
    assert!(err.to_string().contains("too long"), "{err}");
}

#[test]
fn foreign_trust_domain_is_refused_on_issue() {
    let (ca, _) = new_ca();
    let foreign = palisade_certs::SpiffeId::parse("spiffe://other.org/ns/a/sa/b").unwrap();
    let err = ca.issue(&foreign, HOUR).unwrap_err();
    assert!(
        matches!(err, palisade_certs::CaError::ForeignTrustDomain { ref id, .. } if *id == foreign),
        "{err:?}"
    );
}

#[test]
fn generated_ca_certificates_are_proper_cas() {
    let (ca, material) = new_ca();
    for (pem, path_len) in [(&material.root_cert_pem, 1), (&material.ca_cert_pem, 0)] {
        let d = der(pem);
        let cert = parse_x509(d.as_ref());
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(path_len));
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
        assert_eq!(svid::validate_leaf(d.as_ref()), Err(SvidError::NoUriSan));
    }
    assert_eq!(ca.bundle().roots(), &[der(&material.root_cert_pem)]);
    assert_eq!(ca.chain(), &[der(&material.ca_cert_pem)]);
    assert_eq!(ca.trust_domain(), &td());
}

// === svid::validate_leaf on hand-made certificates that break one rule each ===

fn self_signed(params: rcgen::CertificateParams) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    params.self_signed(&key).unwrap().der().to_vec()
}

#[test]
fn validate_leaf_rejects_each_broken_rule() {
    use rcgen::{ExtendedKeyUsagePurpose as Eku, IsCa, KeyUsagePurpose as Ku, SanType};
    let ok = "spiffe://cluster.local/ns/a/sa/b";
    let base = || svid_params(ok, -60, 3600);

    assert_eq!(
        svid::validate_leaf(&self_signed(base())).unwrap().as_str(),
        ok
    );

    let mut p = base();
    p.subject_alt_names.clear();
    assert_eq!(
        svid::validate_leaf(&self_signed(p)),
        Err(SvidError::NoUriSan)
    );

    let mut p = base();
    p.subject_alt_names.push(SanType::URI(
        "spiffe://cluster.local/ns/a/sa/c".try_into().unwrap(),
    ));
    assert_eq!(
        svid::validate_leaf(&self_signed(p)),
        Err(SvidError::SeveralUriSans(2))
    );

    let mut p = base();
    p.subject_alt_names = vec![SanType::URI("https://example.com/x".try_into().unwrap())];
    assert!(matches!(
        svid::validate_leaf(&self_signed(p)),
        Err(SvidError::BadSpiffeId(_))
    ));

    let mut p = base();
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    assert_eq!(
        svid::validate_leaf(&self_signed(p)),
        Err(SvidError::LeafIsCa)
    );

    let mut p = base();
    p.is_ca = IsCa::NoCa;
    assert_eq!(
        svid::validate_leaf(&self_signed(p)),
        Err(SvidError::NoBasicConstraints)
    );

    let mut p = base();
    p.key_usages.clear();
    assert!(matches!(
        svid::validate_leaf(&self_signed(p)),
        Err(SvidError::KeyUsage(_))
    ));

    let mut p = base();
    p.key_usages = vec![Ku::KeyEncipherment];
    assert!(matches!(
        svid::validate_leaf(&self_signed(p)),
        Err(SvidError::KeyUsage(_))
    ));

    let mut p = base();
    p.key_usages.push(Ku::KeyCertSign);
    assert!(matches!(
        svid::validate_leaf(&self_signed(p)),
        Err(SvidError::KeyUsage(_))
    ));

    let mut p = base();
    p.key_usages.push(Ku::CrlSign);
    assert!(matches!(
        svid::validate_leaf(&self_signed(p)),
        Err(SvidError::KeyUsage(_))
    ));

    let mut p = base();
    p.extended_key_usages.push(Eku::CodeSigning);
    assert_eq!(
        svid::validate_leaf(&self_signed(p)),
        Err(SvidError::ExtendedKeyUsage)
    );

    let mut p = base();
    p.extended_key_usages = vec![Eku::Any];
    assert_eq!(
        svid::validate_leaf(&self_signed(p)),
        Err(SvidError::ExtendedKeyUsage)
    );

    // No EKU at all is allowed by the SVID rules.
    let mut p = base();
    p.extended_key_usages.clear();
    assert!(svid::validate_leaf(&self_signed(p)).is_ok());

    // Garbage and trailing bytes.
    assert!(matches!(
        svid::validate_leaf(b"not a certificate"),
        Err(SvidError::Malformed(_))
    ));
    let mut trailing = self_signed(base());
    trailing.push(0);
    assert!(matches!(
        svid::inspect(&trailing),
        Err(SvidError::Malformed(_))
    ));
}

#[test]
fn ca_and_credentials_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<CertificateAuthority>();
    shareable::<palisade_certs::Credentials>();
    shareable::<palisade_certs::TrustBundle>();
    shareable::<palisade_certs::WorkloadKey>();
}
