//! Palisade's control plane: reads the mesh from a directory of YAML, signs workload
//! certificates, and pushes configuration to every proxy over a discovery stream.
//!
//! Layering, from pure to wired (each layer only uses those above it):
//! - **model** ([`model`], [`policy`], [`config`], [`tokens`]): plain values. The loader turns
//!   YAML into a validated [`MeshSnapshot`] with named errors, compiling AuthorizationPolicy
//!   (Istio's model) and EgressPolicy documents; no I/O beyond reading the files, no proto.
//! - **index** ([`index`]): model → per-type proto snapshots with stable versions, built once
//!   per change and shared through a `watch` channel; per-workload types (the workload,
//!   the policies selecting it) are built at most once per change, by the first stream
//!   that needs them.
//! - **API** (`identity`, `discovery`): the gRPC services; handlers read the caller's verified
//!   identity from [`PeerInfo`] and the current snapshot from the channel.
//! - **runtime** ([`start`], [`ControlPlane`]): TLS listener, admin HTTP, serving-certificate
//!   renewal, directory watching, shutdown.
//!
//! [`authorization_for`], [`egress_for`] and [`network_policy_for`] give the exact snapshots a workload's proxy
//! receives, for tools that decide offline as a sidecar would (`palisade authz check`).

mod admin;
pub mod admin_client;
pub mod ca_source;
pub mod ca_status;
pub mod check;
pub mod config;
mod discovery;
mod expiry;
mod identity;
pub mod index;
pub mod k8s;
mod logsafe;
mod metrics;
pub mod model;
pub mod netpol;
pub mod observed;
pub mod policy;
pub mod rotate;
mod runtime;
pub mod telemetry;
pub mod tokens;
mod transport;
mod watcher;

#[cfg(feature = "test-util")]
pub mod test_util;

use palisade_certs::{SpiffeId, TrustDomain};

pub use ca_source::CaSource;
pub use config::{
    AddressAssignments, ConfigError, ConfigErrors, DocumentRef, load_dir, load_dir_assigned,
    load_json_documents,
};
pub use discovery::{Nack, ProxyStatus, TypeStatus};
pub use index::{
    ResourceType, UnknownWorkload, authorization_for, egress_for, network_policy_for, snapshots_for,
};
pub use model::MeshSnapshot;
pub use runtime::{
    ControlPlane, ControlPlaneConfig, DEFAULT_ADMIN_ADDR, DEFAULT_GRPC_ADDR, GrpcLimits,
    OBSERVED_SAVE_EVERY, Observe, StartError, start,
};
pub use tokens::{TokenError, TokenStore};
pub use transport::PeerInfo;

/// Namespace of the control plane (CONTRACT: Kubernetes names).
pub const CONTROL_PLANE_NAMESPACE: &str = "palisade-system";
/// Service account of the control plane.
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "palisade-control-plane";

/// The identity the control plane's gRPC server presents, which proxies must expect:
/// `spiffe://<td>/ns/palisade-system/sa/palisade-control-plane`.
pub fn control_plane_identity(trust_domain: &TrustDomain) -> SpiffeId {
    match SpiffeId::for_service_account(
        trust_domain,
        CONTROL_PLANE_NAMESPACE,
        CONTROL_PLANE_SERVICE_ACCOUNT,
    ) {
        Ok(id) => id,
        // A valid trust domain plus these constant segments is always a valid ID.
        Err(e) => unreachable!("control plane identity is valid: {e}"),
    }
}
