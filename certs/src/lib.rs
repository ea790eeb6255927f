//! Workload identity for Palisade: SPIFFE IDs, the mesh CA and its trust bundle, X.509-SVID
//! issuance from CSRs, and rustls configurations that authenticate peers by SPIFFE ID.
//!
//! Every type here is valid by construction: a [`SpiffeId`] has been parsed, a
//! [`TrustBundle`] holds only CA roots, a [`CertificateAuthority`] has proven that what it
//! issues verifies against its roots. This crate does no I/O except reading and writing CA
//! files on request, and has no async runtime.

pub mod bundle;
pub mod ca;
pub mod pem;
pub mod rotation;
pub mod spiffe;
pub mod svid;
pub mod tls;
pub mod workload;

pub use bundle::{BundleError, TrustBundle};
pub use ca::{
    CaError, CaFiles, CaMaterial, CaOptions, CaRole, CertificateAuthority, IssuedLeaf, UnfitReason,
};
pub use rotation::{ActiveCa, CaState, RotationRecord, Stage};
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
pub use svid::{CertInfo, SvidError};
pub use tls::{ClientAuth, Credentials, TlsError};
pub use workload::WorkloadKey;

/// ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
