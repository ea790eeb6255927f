//! The trust bundle: the roots a trust domain's certificates chain to. It may hold several
//! roots at once, which is what makes a staged CA rotation possible.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, TrustAnchor};

use crate::pem::{PemError, decode_certs, encode_cert};
use crate::spiffe::TrustDomain;
use crate::svid::{SvidError, inspect};

/// Why a set of roots cannot form a trust bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// PEM could not be read.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// A root is not a parseable certificate.
    #[error("root {index}: {source}")]
    Certificate {
        /// Position in the input, from 0.
        index: usize,
        /// What is wrong with it.
        source: SvidError,
    },
    /// A root is not a CA certificate.
    #[error("root {index} ({subject}) is not a CA certificate (basicConstraints cA=false)")]
    NotCa {
        /// Position in the input, from 0.
        index: usize,
        /// Its subject, to find it.
        subject: String,
    },
    /// webpki cannot use the root as a trust anchor.
    #[error("root {index} cannot be a trust anchor: {reason}")]
    Anchor {
        /// Position in the input, from 0.
        index: usize,
        /// webpki's reason.
        reason: String,
    },
    /// No roots at all.
    #[error("trust bundle has no roots")]
    Empty,
}

/// A non-empty set of CA roots for one trust domain, with webpki anchors precomputed.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Arc<[CertificateDer<'static>]>,
    anchors: Arc<[TrustAnchor<'static>]>,
}

impl PartialEq for TrustBundle {
    fn eq(&self, other: &Self) -> bool {
        self.trust_domain == other.trust_domain && self.roots == other.roots
    }
}

impl Eq for TrustBundle {}

impl TrustBundle {
    /// Builds a bundle from DER roots; each must be a CA certificate.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty);
        }
        let mut unique: Vec<CertificateDer<'static>> = Vec::with_capacity(roots.len());
        let mut anchors = Vec::with_capacity(roots.len());
        for (index, root) in roots.into_iter().enumerate() {
            if unique.contains(&root) {
                continue;
            }
            let info = inspect(root.as_ref())
                .map_err(|source| BundleError::Certificate { index, source })?;
            if !info.is_ca {
                return Err(BundleError::NotCa {
                    index,
                    subject: info.subject,
                });
            }
            let anchor = webpki::anchor_from_trusted_cert(&root)
                .map_err(|e| BundleError::Anchor {
                    index,
                    reason: e.to_string(),
                })?
                .to_owned();
            anchors.push(anchor);
            unique.push(root);
        }
        Ok(Self {
            trust_domain,
            roots: unique.into(),
            anchors: anchors.into(),
        })
    }

    /// Builds a bundle from PEM text holding one or more root certificates.
    pub fn from_pem(trust_domain: TrustDomain, pem: &str) -> Result<Self, BundleError> {
        Self::new(trust_domain, decode_certs(pem)?)
    }

    /// Builds a bundle from several PEM texts (as carried on the discovery stream).
    pub fn from_pem_list<S: AsRef<str>>(
        trust_domain: TrustDomain,
        pems: &[S],
    ) -> Result<Self, BundleError> {
        let mut roots = Vec::new();
        for pem in pems {
            roots.extend(decode_certs(pem.as_ref())?);
        }
        Self::new(trust_domain, roots)
    }

    /// The trust domain these roots vouch for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The roots, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as webpki trust anchors.
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// One PEM string per root.
    pub fn to_pem_list(&self) -> Vec<String> {
        self.roots.iter().map(encode_cert).collect()
    }

    /// All roots as one PEM text.
    pub fn to_pem(&self) -> String {
        self.to_pem_list().concat()
    }

    /// A new bundle that also trusts `other`'s roots (both must share a trust domain).
    pub fn merged_with(&self, other: &TrustBundle) -> Result<Self, BundleError> {
        let mut roots = self.roots.to_vec();
        roots.extend(other.roots.iter().cloned());
        Self::new(self.trust_domain.clone(), roots)
    }
}
