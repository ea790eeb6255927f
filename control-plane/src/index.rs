//! From the model to what the discovery stream sends: one proto snapshot per resource type,
//! each with a stable version.
//!
//! A `Published` value is built once per configuration change and shared by every stream
//! through a `watch` channel. Types that are the same for every proxy (services, trust
//! bundle, mesh settings) are encoded and versioned here, once; types that depend on the
//! proxy's workload are built by each stream from the snapshot. The authorization issue
//! adds a per-workload `Authorization` type the same way as [`ResourceType::Workload`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use palisade_certs::TrustBundle;
use palisade_proto::v1 as pb;
use pb::discovery_response::Resources;
use prost::Message;

use crate::model::{
    DefaultAuthorization, MeshSettings, MeshSnapshot, MtlsMode, OutboundTrafficPolicy, Protocol,
    Service, Workload,
};

/// A resource type of the discovery stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    /// The proxy's own workload (`WorkloadSnapshot`).
    Workload,
    /// Every Service of the mesh (`ServiceSnapshot`).
    Services,
    /// The roots workload certificates chain to (`TrustBundle`).
    TrustBundle,
    /// Mesh-wide settings (`MeshSettings`).
    Mesh,
    /// The authorization policies selecting the proxy's workload (`AuthorizationSnapshot`).
    Authorization,
    /// The egress allowances of the proxy's workload (`EgressSnapshot`).
    Egress,
}

impl ResourceType {
    /// Every type, in the order proxies subscribe.
    pub const ALL: [ResourceType; 6] = [
        ResourceType::Workload,
        ResourceType::Mesh,
        ResourceType::TrustBundle,
        ResourceType::Services,
        ResourceType::Authorization,
        ResourceType::Egress,
    ];

    /// The type URL on the wire.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Workload => pb::WORKLOAD_TYPE_URL,
            ResourceType::Services => pb::SERVICES_TYPE_URL,
            ResourceType::TrustBundle => pb::TRUST_BUNDLE_TYPE_URL,
            ResourceType::Mesh => pb::MESH_TYPE_URL,
            ResourceType::Authorization => pb::AUTHORIZATION_TYPE_URL,
            ResourceType::Egress => pb::EGRESS_TYPE_URL,
        }
    }

    /// The type with this URL, if it is one this control plane serves.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Short name for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Workload => "workload",
            ResourceType::Services => "services",
            ResourceType::TrustBundle => "trust_bundle",
            ResourceType::Mesh => "mesh",
            ResourceType::Authorization => "authorization",
            ResourceType::Egress => "egress",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of one type with its version.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Versioned {
    pub version: String,
    pub resources: Resources,
}

impl Versioned {
    fn new(resources: Resources) -> Self {
        let bytes = match &resources {
            Resources::Workload(m) => m.encode_to_vec(),
            Resources::Services(m) => m.encode_to_vec(),
            Resources::TrustBundle(m) => m.encode_to_vec(),
            Resources::Mesh(m) => m.encode_to_vec(),
            Resources::Authorization(m) => m.encode_to_vec(),
            Resources::Egress(m) => m.encode_to_vec(),
        };
        Self {
            version: version_of(&bytes),
            resources,
        }
    }
}

/// FNV-1a 64 of the encoding, as 16 hex digits: stable across processes and restarts, so a
/// reconnecting proxy that reports the version it holds can be recognised as up to date.
pub(crate) fn version_of(bytes: &[u8]) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME));
    format!("{hash:016x}")
}

/// The configuration every stream serves from, replaced as a whole on each change.
#[derive(Debug)]
pub(crate) struct Published {
    pub snapshot: Arc<MeshSnapshot>,
    pub bundle: TrustBundle,
    /// Encoded once per change, identical for every proxy.
    shared: BTreeMap<ResourceType, Arc<Versioned>>,
}

impl Published {
    pub fn new(snapshot: Arc<MeshSnapshot>, bundle: TrustBundle) -> Self {
        let mut shared = BTreeMap::new();
        shared.insert(
            ResourceType::Services,
            Arc::new(Versioned::new(Resources::Services(services_proto(
                &snapshot,
            )))),
        );
        shared.insert(
            ResourceType::TrustBundle,
            Arc::new(Versioned::new(Resources::TrustBundle(bundle_proto(
                &bundle,
            )))),
        );
        shared.insert(
            ResourceType::Mesh,
            Arc::new(Versioned::new(Resources::Mesh(mesh_proto(
                snapshot.settings(),
            )))),
        );
        Self {
            snapshot,
            bundle,
            shared,
        }
    }

    /// The snapshot of `ty` for the proxy of `workload`.
    pub fn resource(&self, ty: ResourceType, workload: &Workload) -> Arc<Versioned> {
        match ty {
            ResourceType::Workload => Arc::new(Versioned::new(Resources::Workload(
                workload_proto(workload),
            ))),
            // Policies are compiled per workload in the next slice; until then none select it.
            ResourceType::Authorization => Arc::new(Versioned::new(Resources::Authorization(
                pb::AuthorizationSnapshot::default(),
            ))),
            ResourceType::Egress => Arc::new(Versioned::new(Resources::Egress(
                pb::EgressSnapshot::default(),
            ))),
            ResourceType::Services | ResourceType::TrustBundle | ResourceType::Mesh => {
                match self.shared.get(&ty) {
                    Some(v) => Arc::clone(v),
                    // `new` fills every shared type; rebuilding keeps this total anyway.
                    None => Arc::new(self.build_shared(ty)),
                }
            }
        }
    }

    fn build_shared(&self, ty: ResourceType) -> Versioned {
        Versioned::new(match ty {
            ResourceType::Services => Resources::Services(services_proto(&self.snapshot)),
            ResourceType::TrustBundle => Resources::TrustBundle(bundle_proto(&self.bundle)),
            _ => Resources::Mesh(mesh_proto(self.snapshot.settings())),
        })
    }
}

/// Why [`snapshots_for`] could not build snapshots.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workload {namespace}/{name} is not in the configuration")]
pub struct UnknownWorkload {
    /// Namespace asked for.
    pub namespace: String,
    /// Name asked for.
    pub name: String,
}

/// Every discovery snapshot the control plane would push to the proxy of one workload,
/// versioned exactly as on the stream: for proxies configured without a control plane
/// (`palisade proxy --static-config`), so they run the very same configuration.
pub fn snapshots_for(
    snapshot: Arc<MeshSnapshot>,
    bundle: TrustBundle,
    namespace: &str,
    name: &str,
) -> Result<Vec<pb::DiscoveryResponse>, UnknownWorkload> {
    let workload = snapshot
        .workload(namespace, name)
        .cloned()
        .ok_or_else(|| UnknownWorkload {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })?;
    let published = Published::new(snapshot, bundle);
    Ok(ResourceType::ALL
        .iter()
        .enumerate()
        .map(|(i, ty)| {
            let versioned = published.resource(*ty, &workload);
            pb::DiscoveryResponse {
                type_url: ty.type_url().to_owned(),
                version_info: versioned.version.clone(),
                nonce: format!("static-{i}"),
                resources: Some(versioned.resources.clone()),
            }
        })
        .collect())
}

fn protocol_proto(p: Protocol) -> pb::Protocol {
    match p {
        Protocol::Http => pb::Protocol::Http,
        Protocol::Http2 => pb::Protocol::Http2,
        Protocol::Grpc => pb::Protocol::Grpc,
        Protocol::Tcp => pb::Protocol::Tcp,
    }
}

/// The proxy's own workload.
pub(crate) fn workload_proto(w: &Workload) -> pb::WorkloadSnapshot {
    pb::WorkloadSnapshot {
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        spiffe_id: w.identity.to_string(),
        labels: w.labels.clone(),
        ports: w
            .ports
            .iter()
            .map(|p| pb::WorkloadPort {
                name: p.name.clone(),
                port: u32::from(p.port),
                protocol: protocol_proto(p.protocol) as i32,
            })
            .collect(),
    }
}

fn service_proto(s: &Service) -> pb::Service {
    pb::Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostnames: s.hostnames.clone(),
        ports: s
            .ports
            .iter()
            .map(|p| pb::ServicePort {
                name: p.name.clone(),
                port: u32::from(p.port),
                target_port: u32::from(p.target_port),
                protocol: protocol_proto(p.protocol) as i32,
            })
            .collect(),
        endpoints: s
            .endpoints
            .iter()
            .map(|e| pb::Endpoint {
                address: e.address.to_string(),
                proxy_port: u32::from(e.proxy_port),
                spiffe_id: e.identity.to_string(),
                workload: e.workload.clone(),
            })
            .collect(),
    }
}

/// Every Service of the mesh, ordered by namespace and name.
pub(crate) fn services_proto(snapshot: &MeshSnapshot) -> pb::ServiceSnapshot {
    pb::ServiceSnapshot {
        services: snapshot.services().map(service_proto).collect(),
    }
}

pub(crate) fn bundle_proto(bundle: &TrustBundle) -> pb::TrustBundle {
    pb::TrustBundle {
        trust_domain: bundle.trust_domain().to_string(),
        roots_pem: bundle.to_pem_list(),
    }
}

pub(crate) fn mesh_proto(s: &MeshSettings) -> pb::MeshSettings {
    pb::MeshSettings {
        trust_domain: s.trust_domain.to_string(),
        root_namespace: s.root_namespace.clone(),
        mtls_mode: match s.mtls_mode {
            MtlsMode::Strict => pb::MtlsMode::Strict,
            MtlsMode::Permissive => pb::MtlsMode::Permissive,
        } as i32,
        outbound_policy: match s.outbound_traffic_policy {
            OutboundTrafficPolicy::RegistryOnly => pb::OutboundPolicy::RegistryOnly,
            OutboundTrafficPolicy::AllowAny => pb::OutboundPolicy::AllowAny,
        } as i32,
        default_authorization: match s.default_authorization {
            DefaultAuthorization::Deny => pb::DefaultAuthorization::Deny,
            DefaultAuthorization::Allow => pb::DefaultAuthorization::Allow,
        } as i32,
        hide_denial_reasons: s.hide_denial_reasons,
        certificate_lifetime_seconds: s.certificate_lifetime.as_secs(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_values() {
        // Reference vectors of FNV-1a 64.
        assert_eq!(version_of(b""), "cbf29ce484222325");
        assert_eq!(version_of(b"a"), "af63dc4c8601ec8c");
    }

    #[test]
    fn type_urls_round_trip() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
        }
        assert_eq!(ResourceType::from_type_url("type.example/Other"), None);
        let urls: Vec<_> = ResourceType::ALL.iter().map(|t| t.type_url()).collect();
        assert_eq!(urls, pb::ALL_TYPE_URLS);
    }
}
