//! rustls configurations for the mesh: TLS 1.3 only, certificates verified against the
//! trust bundle (which may hold several roots), and peers identified by SPIFFE ID instead
//! of DNS names.
//!
//! A client knows exactly which SPIFFE ID the server must present and refuses the handshake
//! otherwise; a server requires (or, for bootstrap endpoints, accepts) a client certificate
//! that chains to the bundle and carries a SPIFFE ID of the same trust domain.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::bundle::TrustBundle;
use crate::ca::IssuedLeaf;
use crate::pem::{PemError, decode_certs, decode_key};
use crate::spiffe::SpiffeId;
use crate::svid::{SvidError, inspect};
use crate::workload::WorkloadKey;

/// The crypto provider every Palisade TLS endpoint uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a TLS configuration or a peer certificate was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate does not chain to the trust bundle (expired, wrong CA, bad signature...).
    #[error("certificate does not verify against the trust bundle: {0}")]
    Chain(String),
    /// The certificate is not an X.509-SVID.
    #[error("peer certificate is not an X.509-SVID: {0}")]
    NotSvid(#[from] SvidError),
    /// The peer is in another trust domain.
    #[error("peer identity {got} is outside trust domain {expected}")]
    ForeignTrustDomain {
        /// What the peer presented.
        got: SpiffeId,
        /// The bundle's trust domain.
        expected: String,
    },
    /// The server presented a different identity than the one expected for it.
    #[error("server presented {got}, expected {expected}")]
    WrongIdentity {
        /// What the server presented.
        got: SpiffeId,
        /// What it had to present.
        expected: SpiffeId,
    },
    /// Credentials are unusable.
    #[error("credentials: {0}")]
    Credentials(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// PEM input could not be read.
    #[error(transparent)]
    Pem(#[from] PemError),
}

/// Which extended key usage a chain is verified for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// The certificate authenticates a TLS server.
    Server,
    /// The certificate authenticates a TLS client.
    Client,
}

/// Verifies `leaf` (with `intermediates`) against the bundle at the current time and
/// returns the SPIFFE ID it carries, which must be in the bundle's trust domain.
pub fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    usage: Usage,
) -> Result<SpiffeId, TlsError> {
    verify_chain_at(leaf, intermediates, bundle, usage, UnixTime::now())
}

fn verify_chain_at(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    usage: Usage,
    now: UnixTime,
) -> Result<SpiffeId, TlsError> {
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| TlsError::Chain(e.to_string()))?;
    let eku = match usage {
        Usage::Server => webpki::KeyUsage::server_auth(),
        Usage::Client => webpki::KeyUsage::client_auth(),
    };
    ee.verify_for_usage(
        algorithms().all,
        bundle.anchors(),
        intermediates,
        now,
        eku,
        None,
        None,
    )
    .map_err(|e| TlsError::Chain(e.to_string()))?;
    let info = inspect(leaf.as_ref())?;
    if info.is_ca {
        return Err(TlsError::NotSvid(SvidError::LeafIsCa));
    }
    let id = info.spiffe_id()?;
    if id.trust_domain() != bundle.trust_domain().as_str() {
        return Err(TlsError::ForeignTrustDomain {
            got: id,
            expected: bundle.trust_domain().to_string(),
        });
    }
    Ok(id)
}

fn algorithms() -> &'static WebPkiSupportedAlgorithms {
    static ALGORITHMS: std::sync::LazyLock<WebPkiSupportedAlgorithms> =
        std::sync::LazyLock::new(|| {
            rustls::crypto::ring::default_provider().signature_verification_algorithms
        });
    &ALGORITHMS
}

fn to_rustls(e: TlsError) -> rustls::Error {
    let cert_error = match &e {
        TlsError::Chain(msg) if msg.contains("Expired") => CertificateError::Expired,
        TlsError::Chain(msg) if msg.contains("NotValidYet") => CertificateError::NotValidYet,
        TlsError::Chain(msg) if msg.contains("UnknownIssuer") => CertificateError::UnknownIssuer,
        // webpki's variant is `InvalidSignatureForPublicKey` (it has no `BadSignature`).
        TlsError::Chain(msg) if msg.contains("InvalidSignatureForPublicKey") => {
            CertificateError::BadSignature
        }
        _ => CertificateError::Other(rustls::OtherError(Arc::new(e))),
    };
    rustls::Error::InvalidCertificate(cert_error)
}

/// A workload's certificate chain and private key, ready for rustls.
#[derive(Debug, Clone)]
pub struct Credentials {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    identity: SpiffeId,
    not_before: i64,
    not_after: i64,
    serial: String,
    issuer_fingerprint: String,
}

impl Credentials {
    /// From a freshly issued leaf and the key its CSR was made with.
    pub fn new(issued: &IssuedLeaf, key: &WorkloadKey) -> Result<Self, TlsError> {
        let mut chain = Vec::with_capacity(1 + issued.chain.len());
        chain.push(issued.leaf.clone());
        chain.extend(issued.chain.iter().cloned());
        Self::from_parts(chain, key.private_key_der())
    }

    /// From a PEM chain (leaf first) and a PEM key, as an operator may supply them.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        Self::from_parts(decode_certs(chain_pem)?, decode_key(key_pem)?)
    }

    fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let leaf = chain
            .first()
            .ok_or_else(|| TlsError::Credentials("empty certificate chain".into()))?;
        let info = inspect(leaf.as_ref())?;
        let identity = info.spiffe_id()?;
        // Fails early if the key type is unsupported or does not match the certificate.
        let signing = provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| TlsError::Credentials(format!("private key: {e}")))?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
        certified
            .keys_match()
            .map_err(|e| TlsError::Credentials(format!("key does not match certificate: {e}")))?;
        // The issuing CA is the second certificate, unless a root signs leaves directly
        // (then it is not sent, and the issuer says which it is: see `with_issuer`).
        let issuer_fingerprint = chain
            .get(1)
            .map(|c| crate::ca::fingerprint(c.as_ref()))
            .unwrap_or_default();
        Ok(Self {
            chain,
            key: Arc::new(key),
            identity,
            not_before: info.not_before,
            not_after: info.not_after,
            serial: info.serial,
            issuer_fingerprint,
        })
    }

    /// Names the issuing CA when the chain does not hold it (a root signs leaves directly).
    pub fn with_issuer(mut self, fingerprint: &str) -> Self {
        if self.issuer_fingerprint.is_empty() {
            self.issuer_fingerprint = fingerprint.to_owned();
        }
        self
    }

    /// SHA-256 of the CA certificate that signed the leaf ("" if unknown).
    pub fn issuer_fingerprint(&self) -> &str {
        &self.issuer_fingerprint
    }

    /// The SPIFFE ID of the leaf.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// Leaf first, then intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Validity start, Unix seconds.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// Validity end, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The leaf's serial number (hex).
    pub fn serial(&self) -> &str {
        &self.serial
    }
}

/// Whether a server asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a valid SVID (sidecar inbound, discovery).
    Required,
    /// Clients may connect without one (identity bootstrap); a certificate that is
    /// presented must still verify.
    Optional,
}

/// A server configuration presenting `creds` and verifying clients against `bundle`.
pub fn server_config(
    creds: &Credentials,
    bundle: &TrustBundle,
    client_auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let verifier = Arc::new(SpiffeClientVerifier {
        bundle: bundle.clone(),
        mandatory: client_auth == ClientAuth::Required,
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client configuration that presents `creds` (if any) and accepts only a server that
/// chains to `bundle` and presents exactly `expected`.
pub fn client_config(
    creds: Option<&Credentials>,
    bundle: &TrustBundle,
    expected: SpiffeId,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let verifier = Arc::new(SpiffeServerVerifier {
        bundle: bundle.clone(),
        expected,
    });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match creds {
        Some(c) => builder.with_client_auth_cert(c.chain.clone(), c.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The SPIFFE ID of a verified peer, from the certificates rustls recorded for a session.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    let leaf = certs?.first()?;
    inspect(leaf.as_ref()).ok()?.spiffe_id().ok()
}

/// A server name for connections where names play no part: identity is checked by SPIFFE
/// ID, and SNI may carry routing hints instead.
pub fn placeholder_server_name() -> ServerName<'static> {
    ServerName::DnsName(
        rustls_pki_types::DnsName::try_from("palisade.mesh")
            .expect("constant is a valid DNS name")
            .to_owned(),
    )
}

// === impl SpiffeServerVerifier ===

#[derive(Debug)]
struct SpiffeServerVerifier {
    bundle: TrustBundle,
    expected: SpiffeId,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = verify_chain_at(end_entity, intermediates, &self.bundle, Usage::Server, now)
            .map_err(to_rustls)?;
        if got != self.expected {
            return Err(to_rustls(TlsError::WrongIdentity {
                got,
                expected: self.expected.clone(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

// === impl SpiffeClientVerifier ===

#[derive(Debug)]
struct SpiffeClientVerifier {
    bundle: TrustBundle,
    mandatory: bool,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_chain_at(end_entity, intermediates, &self.bundle, Usage::Client, now)
            .map_err(to_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}
