//! The mesh CA: creates or loads a root and an issuing (intermediate) CA, and signs workload
//! CSRs into X.509-SVID leaves that chain to the trust bundle.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::bundle::{BundleError, TrustBundle};
use crate::pem::{PemError, decode_certs, encode, encode_cert};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::svid::{SvidError, inspect};
use crate::workload::WorkloadKey;

/// Backdating of issued certificates, to tolerate small clock differences between hosts.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Errors of CA creation, loading and signing. Variants about files name the file.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A CA file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A CA file to be created already exists (a symbolic link counts): never overwritten.
    #[error("{path} already exists; refusing to overwrite it (remove it first)")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A CA file could not be written.
    #[error("{path}: cannot write: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file's PEM is unreadable.
    #[error("{path}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: PemError,
    },
    /// A certificate in a file is not usable.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// The root file does not form a trust bundle.
    #[error("{path}: {source}")]
    Bundle {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: BundleError,
    },
    /// The CSR is not a well-formed, self-signed PKCS#10 request.
    #[error("certificate request is invalid: {0}")]
    BadCsr(String),
    /// The CSR names an identity other than the one the caller proved.
    #[error("certificate request asks for {requested}, but the caller may only obtain {allowed}")]
    IdentityMismatch {
        /// What the CSR asked for.
        requested: String,
        /// What the credential proved.
        allowed: SpiffeId,
    },
    /// The identity belongs to another trust domain.
    #[error("identity {id} is not in trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The identity.
        id: SpiffeId,
        /// This CA's trust domain.
        trust_domain: TrustDomain,
    },
    /// rcgen or ring failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// The CA expired, or will before any useful leaf could be issued.
    #[error("issuing CA has expired (not after {not_after})")]
    Expired {
        /// Unix seconds.
        not_after: i64,
    },
    /// A CA certificate in a file may not sign certificates now: the issuing CA, an
    /// intermediate sent with every leaf, or a root peers would anchor leaves to.
    #[error("{path}: {role} ({subject}) {reason}")]
    UnfitCa {
        /// The file.
        path: PathBuf,
        /// Which certificate of the CA it is.
        role: CaRole,
        /// Its subject, to find it.
        subject: String,
        /// What is wrong with it.
        reason: UnfitReason,
    },
}

/// Which certificate of a CA an [`CaError::UnfitCa`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaRole {
    /// The certificate that signs leaves (`ca-cert.pem`).
    Issuing,
    /// An intermediate between the issuing CA and a root, sent with every leaf.
    Intermediate,
    /// A root of `root-cert.pem`, by position among its distinct certificates.
    Root(usize),
}

impl std::fmt::Display for CaRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaRole::Issuing => f.write_str("issuing CA"),
            CaRole::Intermediate => f.write_str("intermediate"),
            CaRole::Root(index) => write!(f, "root {index}"),
        }
    }
}

/// Why a CA certificate may not sign certificates now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnfitReason {
    /// basicConstraints says cA=false.
    #[error("is not a CA certificate (basicConstraints cA=false)")]
    NotCa,
    /// No basicConstraints extension: RFC 5280 forbids using its key to verify certificates.
    #[error("is not a CA certificate (no basicConstraints extension)")]
    NoBasicConstraints,
    /// Past its notAfter.
    #[error("expired at {}", fmt_unix(*not_after))]
    Expired {
        /// Unix seconds.
        not_after: i64,
    },
    /// Before its notBefore, beyond the tolerated clock skew.
    #[error("is not valid before {}", fmt_unix(*not_before))]
    NotYetValid {
        /// Unix seconds.
        not_before: i64,
    },
    /// keyUsage is present without keyCertSign.
    #[error("may not sign certificates (key usage does not include keyCertSign)")]
    NoKeyCertSign,
    /// An extension that decides the above cannot be parsed.
    #[error("has an unreadable extension: {0}")]
    Unreadable(String),
}

/// Paths of a CA on disk, with the file names Istio's plug-in CA uses so that existing
/// material (openssl, cert-manager) can be dropped in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    /// The issuing CA certificate (`ca-cert.pem`).
    pub ca_cert: PathBuf,
    /// Its private key (`ca-key.pem`).
    pub ca_key: PathBuf,
    /// Intermediates from the issuing CA up to the root, excluding the root (`cert-chain.pem`);
    /// optional, and may hold the issuing CA itself first.
    pub cert_chain: Option<PathBuf>,
    /// The trusted roots (`root-cert.pem`), one or several.
    pub root_cert: PathBuf,
}

impl CaFiles {
    /// The conventional file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        let chain = dir.join("cert-chain.pem");
        Self {
            ca_cert: dir.join("ca-cert.pem"),
            ca_key: dir.join("ca-key.pem"),
            cert_chain: chain.exists().then_some(chain),
            root_cert: dir.join("root-cert.pem"),
        }
    }
}

/// Lifetimes and names for a newly created CA.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// Root validity.
    pub root_lifetime: Duration,
    /// Intermediate validity.
    pub intermediate_lifetime: Duration,
    /// Organization written in subjects.
    pub organization: String,
}

impl Default for CaOptions {
    fn default() -> Self {
        Self {
            root_lifetime: Duration::from_secs(10 * 365 * 24 * 3600),
            intermediate_lifetime: Duration::from_secs(5 * 365 * 24 * 3600),
            organization: "Palisade".into(),
        }
    }
}

/// PEM files of a newly created CA, ready to write.
#[derive(Debug, Clone)]
pub struct CaMaterial {
    /// `root-cert.pem`.
    pub root_cert_pem: String,
    /// `root-key.pem`: kept by the operator offline; not needed to issue.
    pub root_key_pem: String,
    /// `ca-cert.pem`.
    pub ca_cert_pem: String,
    /// `ca-key.pem`.
    pub ca_key_pem: String,
    /// `cert-chain.pem`.
    pub cert_chain_pem: String,
}

impl CaMaterial {
    /// The files, with whether each is a private key.
    fn files(&self) -> [(&'static str, &str, bool); 5] {
        [
            ("root-key.pem", &self.root_key_pem, true),
            ("ca-key.pem", &self.ca_key_pem, true),
            ("root-cert.pem", &self.root_cert_pem, false),
            ("ca-cert.pem", &self.ca_cert_pem, false),
            ("cert-chain.pem", &self.cert_chain_pem, false),
        ]
    }

    /// Writes the files into `dir` (created if needed). Every file is created new: if any of
    /// them already exists, or a symbolic link stands at its path, nothing is written and the
    /// error names that path. Keys are created with mode 0600, never widened afterwards.
    pub fn write_to(&self, dir: &Path) -> Result<CaFiles, CaError> {
        std::fs::create_dir_all(dir).map_err(|source| CaError::Write {
            path: dir.to_owned(),
            source,
        })?;
        // Check them all first, so that a clash leaves no half-written CA behind. The check is
        // only for that; `create_new` below is what refuses, race or not.
        for (name, _, _) in self.files() {
            let path = dir.join(name);
            match std::fs::symlink_metadata(&path) {
                Ok(_) => return Err(CaError::Exists { path }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(CaError::Write { path, source }),
            }
        }
        for (name, contents, secret) in self.files() {
            let path = dir.join(name);
            create_new(&path, contents, secret).map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    CaError::Exists { path: path.clone() }
                } else {
                    CaError::Write {
                        path: path.clone(),
                        source,
                    }
                }
            })?;
        }
        Ok(CaFiles::in_dir(dir))
    }

    /// Replaces a CA in `dir`: removes the five files (a symbolic link is removed, never
    /// followed), then writes as [`CaMaterial::write_to`] does. Whatever appears at a path
    /// between the two steps makes the write fail rather than be overwritten.
    pub fn replace_in(&self, dir: &Path) -> Result<CaFiles, CaError> {
        for (name, _, _) in self.files() {
            let path = dir.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(CaError::Write { path, source }),
            }
        }
        self.write_to(dir)
    }
}

/// Creates `path`, which must not exist: `O_CREAT | O_EXCL` refuses any existing entry,
/// a symbolic link included (dangling or not), and `O_NOFOLLOW` says so once more. A secret
/// file gets mode 0600 at creation, so it is never readable by others, not even briefly.
pub(crate) fn create_new(path: &Path, contents: &str, secret: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits());
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// A signed workload certificate and what goes with it.
#[derive(Debug, Clone)]
pub struct IssuedLeaf {
    /// The leaf.
    pub leaf: CertificateDer<'static>,
    /// Intermediates from the leaf's issuer upwards, excluding the root.
    pub chain: Vec<CertificateDer<'static>>,
    /// The identity written into the leaf.
    pub spiffe_id: SpiffeId,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds (never after the issuer's).
    pub not_after: i64,
}

impl IssuedLeaf {
    /// The leaf as PEM.
    pub fn leaf_pem(&self) -> String {
        encode_cert(&self.leaf)
    }

    /// The chain as one PEM string per certificate.
    pub fn chain_pem(&self) -> Vec<String> {
        self.chain.iter().map(encode_cert).collect()
    }
}

/// An issuing CA with its trust bundle.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    /// Issuing cert first, then intermediates up to (excluding) the root; empty when the
    /// issuing cert is itself a root.
    chain: Vec<CertificateDer<'static>>,
    bundle: TrustBundle,
    issuer_not_after: i64,
    /// SHA-256 of the issuing certificate: names the issuer a leaf came from.
    issuer_fingerprint: String,
}

/// SHA-256 of a DER certificate, lower-case hex: how issuers and roots are named on the
/// wire and in status output (as `openssl x509 -fingerprint -sha256` prints it, without colons).
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("chain_len", &self.chain.len())
            .field("roots", &self.bundle.roots().len())
            .field("issuer_not_after", &self.issuer_not_after)
            .finish_non_exhaustive()
    }
}

fn gen_err(e: impl std::fmt::Display) -> CaError {
    CaError::Generate(e.to_string())
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A random positive 128-bit serial number, as RFC 5280 and CA practice expect.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Generate("system random number generator failed".into()))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // keep the full length so every serial has 16 bytes
    Ok(SerialNumber::from_slice(&bytes))
}

fn ca_params(
    organization: &str,
    common_name: &str,
    lifetime: Duration,
    path_len: Option<u8>,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let start = now();
    params.not_before = start - CLOCK_SKEW;
    params.not_after = time::Duration::try_from(lifetime)
        .ok()
        .and_then(|d| start.checked_add(d))
        .ok_or_else(|| CaError::Generate(format!("CA lifetime {lifetime:?} is too long")))?;
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

impl CertificateAuthority {
    /// Creates a new root and an intermediate that issues leaves (ECDSA P-256 throughout).
    pub fn generate(
        trust_domain: TrustDomain,
        options: &CaOptions,
    ) -> Result<(Self, CaMaterial), CaError> {
        let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
        let root_key = KeyPair::generate_for(alg).map_err(gen_err)?;
        let root_params = ca_params(
            &options.organization,
            &format!("Palisade root CA {trust_domain}"),
            options.root_lifetime,
            Some(1),
        )?;
        let root_cert = root_params.self_signed(&root_key).map_err(gen_err)?;
        let root_not_after = root_params.not_after;
        let root_issuer = Issuer::new(root_params, &root_key);

        let ca_key = KeyPair::generate_for(alg).map_err(gen_err)?;
        let lifetime = options.intermediate_lifetime.min(options.root_lifetime);
        let mut ca_params = ca_params(
            &options.organization,
            &format!("Palisade intermediate CA {trust_domain}"),
            lifetime,
            Some(0),
        )?;
        // Computed a moment after the root's: never let the intermediate outlive the root.
        ca_params.not_after = ca_params.not_after.min(root_not_after);
        let ca_cert = ca_params
            .signed_by(&ca_key, &root_issuer)
            .map_err(gen_err)?;
        let material = CaMaterial {
            root_cert_pem: root_cert.pem(),
            root_key_pem: root_key.serialize_pem(),
            ca_cert_pem: ca_cert.pem(),
            ca_key_pem: ca_key.serialize_pem(),
            cert_chain_pem: ca_cert.pem(),
        };
        let ca = Self::from_pem(
            trust_domain,
            &material.ca_cert_pem,
            &material.ca_key_pem,
            Some(&material.cert_chain_pem),
            &material.root_cert_pem,
        )?;
        Ok((ca, material))
    }

    /// Loads a CA from files, checking that the issuing certificate, every intermediate and
    /// every root is a CA that may sign now (valid dates, keyCertSign), that the key belongs
    /// to the issuing certificate, and that it chains to one of the roots.
    pub fn load(trust_domain: TrustDomain, files: &CaFiles) -> Result<Self, CaError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| CaError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let ca_cert = read(&files.ca_cert)?;
        let ca_key = read(&files.ca_key)?;
        let root = read(&files.root_cert)?;
        let chain = match &files.cert_chain {
            Some(p) => Some(read(p)?),
            None => None,
        };
        Self::build(
            trust_domain,
            (&files.ca_cert, &ca_cert),
            (&files.ca_key, &ca_key),
            files.cert_chain.as_deref().zip(chain.as_deref()),
            (&files.root_cert, &root),
        )
    }

    /// Like [`CertificateAuthority::load`], from PEM strings (errors name the conventional file names).
    pub fn from_pem(
        trust_domain: TrustDomain,
        ca_cert_pem: &str,
        ca_key_pem: &str,
        cert_chain_pem: Option<&str>,
        root_cert_pem: &str,
    ) -> Result<Self, CaError> {
        Self::build(
            trust_domain,
            (Path::new("ca-cert.pem"), ca_cert_pem),
            (Path::new("ca-key.pem"), ca_key_pem),
            cert_chain_pem.map(|c| (Path::new("cert-chain.pem"), c)),
            (Path::new("root-cert.pem"), root_cert_pem),
        )
    }

    pub(crate) fn build(
        trust_domain: TrustDomain,
        (ca_path, ca_pem): (&Path, &str),
        (key_path, key_pem): (&Path, &str),
        chain_source: Option<(&Path, &str)>,
        (root_path, root_pem): (&Path, &str),
    ) -> Result<Self, CaError> {
        let invalid = |path: &Path, reason: String| CaError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let bundle = TrustBundle::from_pem(trust_domain.clone(), root_pem).map_err(|source| {
            CaError::Bundle {
                path: root_path.to_owned(),
                source,
            }
        })?;
        let unix_now = now().unix_timestamp();
        // webpki looks neither at a trust anchor's dates nor at its key usage, so sidecars
        // would accept leaves under such a root that other verifiers (openssl, Go) refuse.
        for (index, root) in bundle.roots().iter().enumerate() {
            check_ca_cert(root_path, CaRole::Root(index), root, unix_now)?;
        }
        let ca_certs = decode_certs(ca_pem).map_err(|source| CaError::Pem {
            path: ca_path.to_owned(),
            source,
        })?;
        let issuing = ca_certs[0].clone();
        let info = inspect(issuing.as_ref()).map_err(|e| invalid(ca_path, e.to_string()))?;
        check_ca_cert(ca_path, CaRole::Issuing, &issuing, unix_now)?;

        let key = crate::workload::key_pair_from_pem(key_pem).map_err(|e| CaError::Invalid {
            path: key_path.to_owned(),
            reason: format!("not a usable private key: {e}"),
        })?;
        if spki_key_bytes(issuing.as_ref()).as_deref() != Some(key.public_key_raw()) {
            return Err(invalid(
                key_path,
                format!(
                    "private key does not match the certificate in {}",
                    ca_path.display()
                ),
            ));
        }

        // The chain to send with leaves: the issuing cert, then intermediates up to the root.
        // A root in the chain is redundant: receivers already hold it in the bundle. Every
        // other certificate is checked as the issuing one was, naming the file it came from:
        // webpki would refuse an expired one only as "does not chain", and would not notice
        // one without keyCertSign at all.
        let mut chain: Vec<CertificateDer<'static>> = vec![issuing.clone()];
        let mut extend = |path: &Path, certs: Vec<CertificateDer<'static>>| {
            for cert in certs {
                if cert == issuing || bundle.roots().contains(&cert) {
                    continue;
                }
                check_ca_cert(path, CaRole::Intermediate, &cert, unix_now)?;
                chain.push(cert);
            }
            Ok::<_, CaError>(())
        };
        if let Some((chain_path, chain_pem)) = chain_source {
            let extra = decode_certs(chain_pem).map_err(|source| CaError::Pem {
                path: chain_path.to_owned(),
                source,
            })?;
            extend(chain_path, extra)?;
        }
        extend(ca_path, ca_certs.into_iter().skip(1).collect())?;
        // The issuing certificate may itself be a root (a root acting as issuer).
        chain.retain(|c| !bundle.roots().contains(c));

        let issuer = Issuer::from_ca_cert_der(&issuing, key)
            .map_err(|e| invalid(ca_path, format!("cannot issue with this certificate: {e}")))?;
        let ca = Self {
            trust_domain,
            issuer,
            chain,
            bundle,
            issuer_not_after: info.not_after,
            issuer_fingerprint: fingerprint(issuing.as_ref()),
        };
        // Prove the whole path works before anyone relies on it: issue a throwaway leaf
        // and verify it against the roots exactly as a peer would.
        let probe_id =
            SpiffeId::for_service_account(&ca.trust_domain, "palisade-system", "ca-self-test")
                .map_err(|e| CaError::Generate(e.to_string()))?;
        let (probe, _) = ca.issue(&probe_id, Duration::from_secs(300))?;
        crate::tls::verify_chain(
            &probe.leaf,
            &probe.chain,
            &ca.bundle,
            crate::tls::Usage::Server,
        )
        .map_err(|e| {
            invalid(
                ca_path,
                format!("does not chain to any root in {}: {e}", root_path.display()),
            )
        })?;
        Ok(ca)
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The roots leaves chain to.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// Certificates sent with each leaf: the issuing CA and intermediates, excluding roots.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// When the issuing CA expires, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.issuer_not_after
    }

    /// [`fingerprint`] of the certificate that signs leaves.
    pub fn issuer_fingerprint(&self) -> &str {
        &self.issuer_fingerprint
    }

    /// The same issuer, trusting `extra` roots besides its own: during a rotation, the
    /// bundle holds the roots of both generations.
    pub fn trusting_also(mut self, extra: &TrustBundle) -> Result<Self, CaError> {
        self.bundle = self
            .bundle
            .merged_with(extra)
            .map_err(|source| CaError::Bundle {
                path: PathBuf::from("root-cert.pem"),
                source,
            })?;
        Ok(self)
    }

    /// Signs a PEM CSR for `identity`. The CSR's signature must verify, its key must be
    /// ECDSA P-256, and its only URI SAN must equal `identity`; every other requested field
    /// is ignored and the leaf gets exactly the X.509-SVID profile. Expiry is clamped to
    /// the issuer's.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        lifetime: Duration,
    ) -> Result<IssuedLeaf, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        // rcgen derives `csr.public_key`'s algorithm from the CSR's *signature* algorithm, so a
        // P-384 key signed with ecdsa-with-SHA256 would pass as P-256 and be written into the
        // leaf under the wrong curve. Take the key type from the SubjectPublicKeyInfo instead.
        let public_key = csr_public_key(csr_pem)?;
        if public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(CaError::BadCsr("key must be ECDSA P-256".into()));
        }
        let uris: Vec<&str> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(uri) => Some(uri.as_str()),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [one] if *one == identity.as_str() => {}
            [one] => {
                return Err(CaError::IdentityMismatch {
                    requested: (*one).to_owned(),
                    allowed: identity.clone(),
                });
            }
            [] => return Err(CaError::BadCsr("request has no URI SAN".into())),
            _ => return Err(CaError::BadCsr("request has more than one URI SAN".into())),
        }
        if csr.params.subject_alt_names.len() != 1 {
            return Err(CaError::BadCsr(
                "request may only carry its SPIFFE ID as SAN".into(),
            ));
        }
        self.sign(&public_key, identity, lifetime)
    }

    /// Issues a leaf and a fresh key for `identity`: for the control plane's own serving
    /// certificate and for tests.
    pub fn issue(
        &self,
        identity: &SpiffeId,
        lifetime: Duration,
    ) -> Result<(IssuedLeaf, WorkloadKey), CaError> {
        let key = WorkloadKey::generate().map_err(gen_err)?;
        let leaf = self.sign(key.key_pair(), identity, lifetime)?;
        Ok((leaf, key))
    }

    fn sign(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        identity: &SpiffeId,
        lifetime: Duration,
    ) -> Result<IssuedLeaf, CaError> {
        if identity.trust_domain() != self.trust_domain.as_str() {
            return Err(CaError::ForeignTrustDomain {
                id: identity.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let start = now();
        if self.issuer_not_after <= start.unix_timestamp() {
            return Err(CaError::Expired {
                not_after: self.issuer_not_after,
            });
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Palisade");
        params.distinguished_name = dn;
        let uri = identity
            .as_str()
            .try_into()
            .map_err(|e: rcgen::Error| CaError::Generate(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = start - CLOCK_SKEW;
        let issuer_end =
            OffsetDateTime::from_unix_timestamp(self.issuer_not_after).map_err(gen_err)?;
        // A lifetime past what a date can hold is "as long as the issuer allows".
        params.not_after = time::Duration::try_from(lifetime)
            .ok()
            .and_then(|d| start.checked_add(d))
            .map_or(issuer_end, |end| end.min(issuer_end));
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(gen_err)?;
        Ok(IssuedLeaf {
            leaf: cert.der().clone(),
            chain: self.chain.clone(),
            spiffe_id: identity.clone(),
            not_before: params.not_before.unix_timestamp(),
            not_after: params.not_after.unix_timestamp(),
        })
    }
}

/// Formats Unix seconds as RFC 3339 for messages.
pub fn fmt_unix(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// The CSR's public key with its algorithm read from the SubjectPublicKeyInfo itself.
fn csr_public_key(csr_pem: &str) -> Result<rcgen::SubjectPublicKeyInfo, CaError> {
    let bad = |e: &dyn std::fmt::Display| CaError::BadCsr(e.to_string());
    let block = ::pem::parse(csr_pem).map_err(|e| bad(&e))?;
    let (_, csr) = X509CertificationRequest::from_der(block.contents()).map_err(|e| bad(&e))?;
    rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|e| bad(&e))
}

fn spki_key_bytes(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.public_key().subject_public_key.data.to_vec())
}

/// Checks that the CA certificate `der`, found in `path` in the role `role`, may sign
/// certificates at `now` (Unix seconds).
fn check_ca_cert(
    path: &Path,
    role: CaRole,
    der: &CertificateDer<'_>,
    now: i64,
) -> Result<(), CaError> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| CaError::Invalid {
        path: path.to_owned(),
        reason: format!("{role}: not a valid X.509 certificate: {e}"),
    })?;
    match unfit_reason(&cert, now) {
        None => Ok(()),
        Some(reason) => Err(CaError::UnfitCa {
            path: path.to_owned(),
            role,
            subject: cert.subject().to_string(),
            reason,
        }),
    }
}

/// What keeps `cert` from signing certificates at `now`, if anything: RFC 5280 wants
/// basicConstraints cA=true, a validity period covering `now` (a little early is tolerated,
/// as for clock skew between hosts) and, when keyUsage is present, keyCertSign.
fn unfit_reason(cert: &X509Certificate<'_>, now: i64) -> Option<UnfitReason> {
    match cert.basic_constraints() {
        Err(e) => return Some(UnfitReason::Unreadable(e.to_string())),
        Ok(None) => return Some(UnfitReason::NoBasicConstraints),
        Ok(Some(bc)) if !bc.value.ca => return Some(UnfitReason::NotCa),
        Ok(Some(_)) => {}
    }
    let not_after = cert.validity().not_after.timestamp();
    if not_after <= now {
        return Some(UnfitReason::Expired { not_after });
    }
    let not_before = cert.validity().not_before.timestamp();
    if not_before > now + CLOCK_SKEW.as_secs() as i64 {
        return Some(UnfitReason::NotYetValid { not_before });
    }
    match cert.key_usage() {
        Err(e) => Some(UnfitReason::Unreadable(e.to_string())),
        Ok(Some(ku)) if !ku.value.key_cert_sign() => Some(UnfitReason::NoKeyCertSign),
        Ok(_) => None,
    }
}

/// Encodes a leaf and chain into one PEM (leaf first), as files and `/certs` show them.
pub fn chain_to_pem(leaf: &CertificateDer<'_>, chain: &[CertificateDer<'_>]) -> String {
    std::iter::once(leaf)
        .chain(chain.iter())
        .map(|c| encode("CERTIFICATE", c.as_ref()))
        .collect()
}

impl From<SvidError> for CaError {
    fn from(e: SvidError) -> Self {
        CaError::Generate(e.to_string())
    }
}
