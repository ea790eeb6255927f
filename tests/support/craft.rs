//! Certificates crafted by hand with rcgen, for showing that sidecars refuse what the mesh CA
//! would never issue: leaves outside their validity, and leaves or intermediates signed by a
//! key other than the one their issuer's name stands for. Every helper is meant to be called
//! twice in a test: once with valid parameters and the mesh's real keys (the control, which
//! must be admitted, so a refusal cannot come from broken crafting) and once forged.

use palisade_certs::tls::Credentials;
use palisade_certs::{CaMaterial, SpiffeId};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::prelude::X509Certificate;

/// A fresh ECDSA P-256 key, the kind the mesh CA uses throughout.
pub fn new_key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate a P-256 key")
}

/// Signs with `key` under the name of the CA certificate `ca_cert_pem`: its subject becomes
/// the issuer name and its subject key identifier the authority key identifier of what is
/// signed. With that certificate's own key this is the CA itself; with any other key, an
/// impostor that differs from it only in the signature.
pub fn issuer_as(ca_cert_pem: &str, key: KeyPair) -> Issuer<'static, KeyPair> {
    Issuer::from_ca_cert_pem(ca_cert_pem, key).expect("CA certificate for rcgen")
}

/// The mesh's real issuing CA: its certificate and its key.
pub fn mesh_issuer(material: &CaMaterial) -> Issuer<'static, KeyPair> {
    issuer_as(&material.ca_cert_pem, key_of(&material.ca_key_pem))
}

/// The mesh's real root: its certificate and its key.
pub fn mesh_root(material: &CaMaterial) -> Issuer<'static, KeyPair> {
    issuer_as(&material.root_cert_pem, key_of(&material.root_key_pem))
}

/// A PKCS#8 PEM key (as `CaMaterial` holds them).
pub fn key_of(pem: &str) -> KeyPair {
    KeyPair::from_pem(pem).expect("PKCS#8 key")
}

/// When a crafted certificate is valid, in seconds from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// notBefore.
    pub from: i64,
    /// notAfter.
    pub until: i64,
}

impl Validity {
    /// As the mesh CA issues: backdated a minute, for an hour.
    pub const CURRENT: Validity = Validity {
        from: -60,
        until: 3600,
    };
}

/// Credentials for an X.509-SVID leaf of `identity` with exactly the mesh CA's profile (one
/// URI SAN, cA=false, digitalSignature, serverAuth and clientAuth) valid over `validity`,
/// signed by `issuer`, followed in the presented chain by the PEM certificates `chain`.
pub fn leaf(
    identity: &SpiffeId,
    validity: Validity,
    issuer: &Issuer<'_, KeyPair>,
    chain: &[&str],
) -> Credentials {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Palisade");
    params.distinguished_name = dn;
    let uri = identity
        .as_str()
        .try_into()
        .expect("SPIFFE ID as a URI SAN");
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, validity);
    let key = new_key();
    let cert = params.signed_by(&key, issuer).expect("sign the leaf");
    let chain_pem: String = std::iter::once(cert.pem().as_str())
        .chain(chain.iter().copied())
        .collect();
    Credentials::from_pem(&chain_pem, &key.serialize_pem()).expect("credentials of a crafted leaf")
}

/// An intermediate CA certificate (PEM) with the subject of `like_pem`, holding `key` and
/// signed by `signer`, and the issuer it makes. With the real intermediate's key and the real
/// root this is a re-issue of the mesh's intermediate; with a fresh key and an impostor of the
/// root, a forgery that only a signature check can tell apart.
pub fn intermediate_as(
    like_pem: &str,
    key: KeyPair,
    signer: &Issuer<'_, KeyPair>,
) -> (String, Issuer<'static, KeyPair>) {
    let mut params = ca_params(subject_of(like_pem));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let pem = params
        .signed_by(&key, signer)
        .expect("sign the intermediate")
        .pem();
    let issuer = issuer_as(&pem, key);
    (pem, issuer)
}

/// A CA of nobody's: a self-signed certificate (PEM) named `name`, with a fresh key, and
/// the issuer it makes.
pub fn self_made_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Palisade");
    dn.push(DnType::CommonName, name);
    let params = ca_params(dn);
    let key = new_key();
    let pem = params.self_signed(&key).expect("self-sign the CA").pem();
    let issuer = issuer_as(&pem, key);
    (pem, issuer)
}

/// The DER subject name of a PEM certificate, as written: path building matches names byte
/// for byte, so this is what "the same subject" means.
pub fn raw_subject(pem: &str) -> Vec<u8> {
    parse(pem, |cert| cert.subject().as_raw().to_vec())
}

fn ca_params(dn: DistinguishedName) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, Validity::CURRENT);
    params
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now + Duration::seconds(validity.from);
    params.not_after = now + Duration::seconds(validity.until);
}

/// The subject of a PEM certificate rebuilt for rcgen, attribute by attribute with the same
/// string types, so that the encoding is identical (rcgen keeps the order of `push`).
fn subject_of(pem: &str) -> DistinguishedName {
    parse(pem, |cert| {
        let mut dn = DistinguishedName::new();
        for attr in cert.subject().iter_attributes() {
            let oid: Vec<u64> = attr
                .attr_type()
                .iter()
                .expect("attribute type fits u64 arcs")
                .collect();
            let text = attr.as_str().expect("string attribute").to_owned();
            let value = match attr.attr_value().header.tag() {
                Tag::Utf8String => DnValue::Utf8String(text),
                Tag::PrintableString => {
                    DnValue::PrintableString(text.try_into().expect("printable string"))
                }
                other => panic!("subject attribute of type {other:?} not supported here"),
            };
            dn.push(DnType::CustomDnType(oid), value);
        }
        dn
    })
}

fn parse<T>(pem: &str, read: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM certificate");
    let cert = pem.parse_x509().expect("X.509 certificate");
    read(&cert)
}
