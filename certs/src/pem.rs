//! PEM encoding and decoding of certificates and keys.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why PEM input could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// No `CERTIFICATE` block at all.
    #[error("no PEM CERTIFICATE block found")]
    NoCertificate,
    /// No private key block.
    #[error("no PEM private key block found")]
    NoKey,
    /// The PEM framing or base64 is broken.
    #[error("malformed PEM: {0}")]
    Malformed(String),
}

/// Encodes DER bytes as one PEM block with `\n` line endings.
pub fn encode(tag: &str, der: &[u8]) -> String {
    let block = ::pem::Pem::new(tag, der);
    ::pem::encode_config(
        &block,
        ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
    )
}

/// Encodes a certificate as PEM.
pub fn encode_cert(der: &CertificateDer<'_>) -> String {
    encode("CERTIFICATE", der.as_ref())
}

/// Reads every `CERTIFICATE` block; at least one is required.
pub fn decode_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Malformed(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(certs)
}

/// Reads the first private key block (PKCS#8, SEC1 or PKCS#1).
pub fn decode_key(pem: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PemError::NoKey,
        other => PemError::Malformed(other.to_string()),
    })
}
