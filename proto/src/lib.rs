//! Palisade's gRPC API between proxies and the control plane: the identity
//! (certificate) service and the xDS-like discovery stream.
//!
//! The Rust code under `src/gen` is generated from `palisade/v1/*.proto` and committed,
//! so building needs no `protoc`; `tests/bootstrap.rs` regenerates it and fails on any
//! difference.

/// Generated messages and services of package `palisade.v1`.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod v1 {
    include!("gen/palisade.v1.rs");

    /// Type URL of [`WorkloadSnapshot`] on the discovery stream.
    pub const WORKLOAD_TYPE_URL: &str = "type.palisade.dev/palisade.v1.WorkloadSnapshot";
    /// Type URL of [`ServiceSnapshot`] on the discovery stream.
    pub const SERVICES_TYPE_URL: &str = "type.palisade.dev/palisade.v1.ServiceSnapshot";
    /// Type URL of [`TrustBundle`] on the discovery stream.
    pub const TRUST_BUNDLE_TYPE_URL: &str = "type.palisade.dev/palisade.v1.TrustBundle";
    /// Type URL of [`MeshSettings`] on the discovery stream.
    pub const MESH_TYPE_URL: &str = "type.palisade.dev/palisade.v1.MeshSettings";

    /// Every type a proxy subscribes to, in the order it subscribes.
    pub const ALL_TYPE_URLS: &[&str] = &[
        WORKLOAD_TYPE_URL,
        MESH_TYPE_URL,
        TRUST_BUNDLE_TYPE_URL,
        SERVICES_TYPE_URL,
    ];
}
