//! A workload's own key pair: generated where it is used, never sent anywhere; only CSRs leave.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::pem::decode_key;
use crate::spiffe::SpiffeId;

/// An ECDSA P-256 key pair owned by one workload.
pub struct WorkloadKey {
    key_pair: KeyPair,
}

impl std::fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkloadKey(ECDSA P-256, private)")
    }
}

impl WorkloadKey {
    /// Generates a new ECDSA P-256 key pair.
    pub fn generate() -> Result<Self, rcgen::Error> {
        Ok(Self {
            key_pair: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        })
    }

    /// Loads a PEM private key (for operator-supplied static credentials).
    pub fn from_pem(pem: &str) -> Result<Self, rcgen::Error> {
        Ok(Self {
            key_pair: key_pair_from_pem(pem)?,
        })
    }

    /// A PKCS#10 request (PEM) whose only SAN is `identity`, signed with this key.
    pub fn csr_pem(&self, identity: &SpiffeId) -> Result<String, rcgen::Error> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Palisade");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(identity.as_str().try_into()?)];
        params.serialize_request(&self.key_pair)?.pem()
    }

    /// The private key in PKCS#8 DER, for rustls.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pair.serialize_der()))
    }

    /// The private key as PEM (tests and static mode only).
    pub fn private_key_pem(&self) -> String {
        self.key_pair.serialize_pem()
    }

    /// The underlying rcgen key pair.
    pub fn key_pair(&self) -> &KeyPair {
        &self.key_pair
    }
}

/// DER of the AlgorithmIdentifier contents `id-ecPublicKey, prime256v1`.
const EC_P256_ALG_ID: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
    0x03, 0x01, 0x07,
];
/// DER of the AlgorithmIdentifier contents `id-ecPublicKey, secp384r1`.
const EC_P384_ALG_ID: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22,
];

/// Loads a PEM private key into rcgen. Unlike `KeyPair::from_pem` (first PEM block only,
/// PKCS#8 only with ring) this skips non-key blocks such as the `EC PARAMETERS` that
/// `openssl ecparam -genkey` writes first, and accepts SEC1 `EC PRIVATE KEY` (openssl,
/// cert-manager) by wrapping it into PKCS#8.
pub(crate) fn key_pair_from_pem(pem: &str) -> Result<KeyPair, rcgen::Error> {
    let der = decode_key(pem).map_err(|e| rcgen::Error::PemError(e.to_string()))?;
    match &der {
        PrivateKeyDer::Sec1(sec1) => [EC_P256_ALG_ID, EC_P384_ALG_ID]
            .iter()
            .find_map(|alg_id| {
                let pkcs8 = PrivatePkcs8KeyDer::from(sec1_to_pkcs8(alg_id, sec1.secret_sec1_der()));
                KeyPair::try_from(&PrivateKeyDer::Pkcs8(pkcs8)).ok()
            })
            .ok_or(rcgen::Error::CouldNotParseKeyPair),
        other => KeyPair::try_from(other),
    }
}

/// `PrivateKeyInfo { version 0, AlgorithmIdentifier { alg_id }, OCTET STRING { sec1 } }`.
fn sec1_to_pkcs8(alg_id: &[u8], sec1: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend(der_tlv(0x30, alg_id));
    body.extend(der_tlv(0x04, sec1));
    der_tlv(0x30, &body)
}

fn der_tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend(&bytes[skip..]);
    }
    out.extend(value);
    out
}
