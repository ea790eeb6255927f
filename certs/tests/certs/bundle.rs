//! Trust bundles: several roots (CA rotation overlap), refusal of non-CA roots, dedup.

use palisade_certs::bundle::BundleError;
use palisade_certs::pem::PemError;
use palisade_certs::tls::{TlsError, Usage, verify_chain};
use palisade_certs::{TrustBundle, TrustDomain};

use super::support::*;

#[test]
fn pem_with_two_roots_gives_two_anchors() {
    let (_, m1) = new_ca();
    let (_, m2) = new_ca();
    let bundle =
        TrustBundle::from_pem(td(), &format!("{}{}", m1.root_cert_pem, m2.root_cert_pem)).unwrap();
    assert_eq!(bundle.roots().len(), 2);
    assert_eq!(bundle.anchors().len(), 2);
    assert_eq!(bundle.roots()[0], der(&m1.root_cert_pem));
    assert_eq!(bundle.roots()[1], der(&m2.root_cert_pem));
    assert_eq!(bundle.trust_domain(), &td());

    // Round trips through PEM, as one text or one string per root.
    assert_eq!(
        TrustBundle::from_pem(td(), &bundle.to_pem()).unwrap(),
        bundle
    );
    let list = bundle.to_pem_list();
    assert_eq!(list.len(), 2);
    assert_eq!(TrustBundle::from_pem_list(td(), &list).unwrap(), bundle);
}

#[test]
fn rotation_overlap_leaf_of_new_ca_verifies_against_both_roots_only() {
    let (ca1, m1) = new_ca();
    let (ca2, m2) = new_ca();
    let (leaf, _) = ca2.issue(&id("shop", "cart"), HOUR).unwrap();

    let both = TrustBundle::from_pem_list(
        td(),
        &[m1.root_cert_pem.as_str(), m2.root_cert_pem.as_str()],
    )
    .unwrap();
    assert_eq!(ca1.bundle().merged_with(ca2.bundle()).unwrap(), both);
    for usage in [Usage::Client, Usage::Server] {
        let got = verify_chain(&leaf.leaf, &leaf.chain, &both, usage).unwrap();
        assert_eq!(got, id("shop", "cart"));
    }

    let old_only = TrustBundle::from_pem(td(), &m1.root_cert_pem).unwrap();
    match verify_chain(&leaf.leaf, &leaf.chain, &old_only, Usage::Client) {
        // Both generated roots share a subject name, so webpki finds root 1 as a candidate
        // issuer and reports its signature failing rather than an unknown issuer.
        Err(TlsError::Chain(msg)) => assert!(
            msg.contains("InvalidSignatureForPublicKey") || msg.contains("UnknownIssuer"),
            "{msg}"
        ),
        other => panic!("expected a chain error, got {other:?}"),
    }

    // And a leaf of the old CA still verifies during the overlap.
    let (old_leaf, _) = ca1.issue(&id("shop", "cart"), HOUR).unwrap();
    verify_chain(&old_leaf.leaf, &old_leaf.chain, &both, Usage::Server).unwrap();
}

#[test]
fn leaf_without_its_intermediate_does_not_verify() {
    let (ca, _) = new_ca();
    let (leaf, _) = ca.issue(&id("a", "b"), HOUR).unwrap();
    assert!(matches!(
        verify_chain(&leaf.leaf, &[], ca.bundle(), Usage::Client),
        Err(TlsError::Chain(_))
    ));
}

#[test]
fn leaf_of_another_trust_domain_is_foreign_even_if_its_root_is_trusted() {
    let (other_ca, other) = new_ca_in("other.org");
    let (leaf, _) = other_ca
        .issue(
            &palisade_certs::SpiffeId::parse("spiffe://other.org/ns/a/sa/b").unwrap(),
            HOUR,
        )
        .unwrap();
    // A bundle labelled cluster.local that (mis)holds the other domain's root.
    let bundle = TrustBundle::from_pem(td(), &other.root_cert_pem).unwrap();
    match verify_chain(&leaf.leaf, &leaf.chain, &bundle, Usage::Client) {
        Err(TlsError::ForeignTrustDomain { got, expected }) => {
            assert_eq!(got.trust_domain(), "other.org");
            assert_eq!(expected, "cluster.local");
        }
        other => panic!("expected ForeignTrustDomain, got {other:?}"),
    }
}

#[test]
fn non_ca_root_is_refused() {
    let (ca, m) = new_ca();
    let (leaf, _) = ca.issue(&id("a", "b"), HOUR).unwrap();
    let pem_text = format!("{}{}", m.root_cert_pem, leaf.leaf_pem());
    match TrustBundle::from_pem(td(), &pem_text) {
        Err(BundleError::NotCa { index, subject }) => {
            assert_eq!(index, 1);
            assert!(subject.contains("Palisade"), "{subject}");
        }
        other => panic!("expected NotCa, got {other:?}"),
    }
}

#[test]
fn empty_or_unreadable_bundles_are_refused() {
    assert_eq!(TrustBundle::new(td(), vec![]), Err(BundleError::Empty));
    assert_eq!(
        TrustBundle::from_pem(td(), ""),
        Err(BundleError::Pem(PemError::NoCertificate))
    );
    assert_eq!(
        TrustBundle::from_pem_list::<&str>(td(), &[]),
        Err(BundleError::Empty)
    );
    assert!(matches!(
        TrustBundle::from_pem(
            td(),
            "-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n"
        ),
        Err(BundleError::Pem(PemError::Malformed(_)))
    ));
    let junk = rustls_pki_types::CertificateDer::from(b"not DER".to_vec());
    assert!(matches!(
        TrustBundle::new(td(), vec![junk]),
        Err(BundleError::Certificate { index: 0, .. })
    ));
}

#[test]
fn duplicate_roots_collapse() {
    let (_, m1) = new_ca();
    let (_, m2) = new_ca();
    let pem_text = format!(
        "{}{}{}{}",
        m1.root_cert_pem, m1.root_cert_pem, m2.root_cert_pem, m1.root_cert_pem
    );
    let bundle = TrustBundle::from_pem(td(), &pem_text).unwrap();
    assert_eq!(bundle.roots().len(), 2);
    assert_eq!(bundle.anchors().len(), 2);
    let b1 = TrustBundle::from_pem(td(), &m1.root_cert_pem).unwrap();
    assert_eq!(b1.merged_with(&b1).unwrap(), b1);
}

#[test]
fn bundles_compare_by_trust_domain_and_roots() {
    let (_, m) = new_ca();
    let a = TrustBundle::from_pem(td(), &m.root_cert_pem).unwrap();
    let b =
        TrustBundle::from_pem(TrustDomain::new("other.org").unwrap(), &m.root_cert_pem).unwrap();
    assert_ne!(a, b);
    assert_eq!(a, a.clone());
}
