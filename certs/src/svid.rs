//! Reading X.509 certificates: their SPIFFE identity and the X.509-SVID rules.

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::spiffe::{SpiffeId, SpiffeIdError};

/// Why a certificate is not a usable X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// The bytes are not a DER X.509 certificate.
    #[error("not a valid X.509 certificate: {0}")]
    Malformed(String),
    /// The certificate has no URI SAN.
    #[error("certificate has no URI SAN (an X.509-SVID carries its SPIFFE ID there)")]
    NoUriSan,
    /// More than one URI SAN.
    #[error("certificate has {0} URI SANs; an X.509-SVID has exactly one")]
    SeveralUriSans(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN is not a valid SPIFFE ID: {0}")]
    BadSpiffeId(#[from] SpiffeIdError),
    /// A leaf marked as a CA.
    #[error("leaf certificate is a CA (basicConstraints cA=true)")]
    LeafIsCa,
    /// No basicConstraints extension.
    #[error("leaf certificate lacks the basicConstraints extension")]
    NoBasicConstraints,
    /// Key usage missing or wrong.
    #[error("leaf key usage: {0}")]
    KeyUsage(&'static str),
    /// An extended key usage other than serverAuth/clientAuth.
    #[error("leaf extended key usage allows more than serverAuth and clientAuth")]
    ExtendedKeyUsage,
}

/// What operators and tests want to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial number, lower-case hex with colons.
    pub serial: String,
    /// Subject distinguished name, RFC 4514 style.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before: i64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
    /// Whether basicConstraints says cA=true.
    pub is_ca: bool,
    /// All URI SANs, in order.
    pub uri_sans: Vec<String>,
    /// All DNS SANs, in order.
    pub dns_sans: Vec<String>,
}

impl CertInfo {
    /// The single URI SAN as a SPIFFE ID (no other leaf rules are checked).
    pub fn spiffe_id(&self) -> Result<SpiffeId, SvidError> {
        match self.uri_sans.as_slice() {
            [] => Err(SvidError::NoUriSan),
            [one] => Ok(SpiffeId::parse(one)?),
            many => Err(SvidError::SeveralUriSans(many.len())),
        }
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, SvidError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(SvidError::Malformed(
            "trailing bytes after certificate".into(),
        ));
    }
    Ok(cert)
}

/// Reads the fields of a DER certificate.
pub fn inspect(der: &[u8]) -> Result<CertInfo, SvidError> {
    let cert = parse(der)?;
    let mut uri_sans = Vec::new();
    let mut dns_sans = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => uri_sans.push((*uri).to_owned()),
                GeneralName::DNSName(dns) => dns_sans.push((*dns).to_owned()),
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        serial: cert.raw_serial_as_string(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        is_ca: cert.is_ca(),
        uri_sans,
        dns_sans,
    })
}

/// Checks the X.509-SVID leaf rules and returns the certificate's SPIFFE ID: exactly one
/// URI SAN holding a SPIFFE ID with a path, basicConstraints present with cA=false, key
/// usage present with digitalSignature and without keyCertSign/cRLSign, and extended key
/// usage (if present) limited to serverAuth and clientAuth.
pub fn validate_leaf(der: &[u8]) -> Result<SpiffeId, SvidError> {
    let info = inspect(der)?;
    let id = info.spiffe_id()?;
    let cert = parse(der)?;
    match cert
        .basic_constraints()
        .map_err(|e| SvidError::Malformed(e.to_string()))?
    {
        None => return Err(SvidError::NoBasicConstraints),
        Some(bc) if bc.value.ca => return Err(SvidError::LeafIsCa),
        Some(_) => {}
    }
    let ku = cert
        .key_usage()
        .map_err(|e| SvidError::Malformed(e.to_string()))?
        .ok_or(SvidError::KeyUsage("keyUsage extension is missing"))?;
    if !ku.value.digital_signature() {
        return Err(SvidError::KeyUsage("digitalSignature is not set"));
    }
    if ku.value.key_cert_sign() || ku.value.crl_sign() {
        return Err(SvidError::KeyUsage(
            "keyCertSign or cRLSign is set on a leaf",
        ));
    }
    if let Some(eku) = cert
        .extended_key_usage()
        .map_err(|e| SvidError::Malformed(e.to_string()))?
    {
        let e = eku.value;
        if e.any
            || e.code_signing
            || e.email_protection
            || e.time_stamping
            || e.ocsp_signing
            || !e.other.is_empty()
        {
            return Err(SvidError::ExtendedKeyUsage);
        }
    }
    Ok(id)
}
