//! A workload's own key pair: generated where it is used, never sent anywhere; only CSRs leave.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

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
            key_pair: KeyPair::from_pem(pem)?,
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
