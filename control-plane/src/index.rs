//! From the model to what the discovery stream sends: one proto snapshot per resource type,
//! each with a stable version.
//!
//! A `Published` value is built once per configuration change and shared by every stream
//! through a `watch` channel. Types that are the same for every proxy (services, trust
//! bundle, mesh settings) are encoded and versioned here, once. Types that depend on the
//! proxy's workload (the workload itself, the authorization policies and egress rules
//! selecting it) are built at most once per workload per change, by the first stream that
//! asks, and shared by every other stream of that workload; and the policy snapshots are
//! built once per distinct set of selecting policies, shared by every workload with that
//! set. NetworkPolicy selectors are resolved once per change for all workloads.
//!
//! Versions are FNV-1a hashes of the encoding, so a change to one policy changes the
//! version (and causes a push) only for the workloads whose selected policies changed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use palisade_certs::{TrustBundle, TrustDomain};
use palisade_proto::v1 as pb;
use pb::discovery_response::Resources;
use prost::Message;

use crate::model::{
    DefaultAuthorization, L4Protocol, MeshSettings, MeshSnapshot, MtlsMode, NamespacedName,
    OutboundTrafficPolicy, PathNormalization, Protocol, Service, Workload,
};
use crate::netpol::{NetworkPolicy, ResolvedPeers, network_policy_snapshot};
use crate::policy::{
    Action, AuthorizationPolicy, Condition, ConditionKey, EgressHost, EgressPolicy, OperationMatch,
    Rule, SourceMatch, StringMatch,
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
    /// The NetworkPolicies concerning the proxy's workload (`NetworkPolicySnapshot`).
    NetworkPolicy,
}

impl ResourceType {
    /// Every type this control plane serves, in the order proxies subscribe.
    pub const ALL: [ResourceType; 7] = [
        ResourceType::Workload,
        ResourceType::Mesh,
        ResourceType::TrustBundle,
        ResourceType::Services,
        ResourceType::Authorization,
        ResourceType::Egress,
        ResourceType::NetworkPolicy,
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
            ResourceType::NetworkPolicy => pb::NETWORK_POLICY_TYPE_URL,
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
            ResourceType::NetworkPolicy => "network_policy",
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
            Resources::NetworkPolicy(m) => m.encode_to_vec(),
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

/// The snapshots that depend on the proxy's workload, built together.
#[derive(Debug)]
struct PerWorkload {
    workload: Arc<Versioned>,
    authorization: Arc<Versioned>,
    egress: Arc<Versioned>,
    network_policy: Arc<Versioned>,
}

impl PerWorkload {
    fn build(snapshot: &MeshSnapshot, workload: &Workload, shared: &SharedBuilds) -> Self {
        Self {
            workload: Arc::new(Versioned::new(Resources::Workload(workload_proto(
                workload,
            )))),
            authorization: shared.authorization(snapshot, workload),
            egress: shared.egress(snapshot, workload),
            network_policy: shared.network_policy(snapshot, workload),
        }
    }

    fn get(&self, ty: ResourceType) -> Option<&Arc<Versioned>> {
        match ty {
            ResourceType::Workload => Some(&self.workload),
            ResourceType::Authorization => Some(&self.authorization),
            ResourceType::Egress => Some(&self.egress),
            ResourceType::NetworkPolicy => Some(&self.network_policy),
            ResourceType::Services | ResourceType::TrustBundle | ResourceType::Mesh => None,
        }
    }
}

/// A snapshot built at most once per distinct input, for the streams that wait on it.
type BuildCell = Arc<OnceLock<Arc<Versioned>>>;

/// What a NetworkPolicySnapshot depends on besides the configuration: the policies
/// selecting the workload, and the workload's named ports (which its ingress rules'
/// named ports resolve to).
type NetworkPolicyInputs = (Vec<NamespacedName>, Vec<(String, u16, L4Protocol)>);

/// The Authorization, Egress and NetworkPolicy snapshots of one configuration, keyed by
/// what they depend on rather than by workload: workloads selected by the same policies
/// (every workload under a mesh-wide policy, say) share one build, one encoding and one
/// allocation, instead of each workload of a large mesh building and holding its own copy
/// on every change.
#[derive(Debug, Default)]
struct SharedBuilds {
    authorization: Mutex<HashMap<Vec<NamespacedName>, BuildCell>>,
    egress: Mutex<HashMap<Vec<NamespacedName>, BuildCell>>,
    network_policy: Mutex<HashMap<NetworkPolicyInputs, BuildCell>>,
    /// NetworkPolicy selectors resolved once for every workload's snapshot.
    peers: ResolvedPeers,
}

impl SharedBuilds {
    fn new(snapshot: &MeshSnapshot) -> Self {
        Self {
            peers: ResolvedPeers::new(snapshot),
            ..Self::default()
        }
    }

    fn authorization(&self, snapshot: &MeshSnapshot, workload: &Workload) -> Arc<Versioned> {
        let key = snapshot
            .authorization_policies_for(workload)
            .map(AuthorizationPolicy::key)
            .collect();
        built_once(&self.authorization, key, || {
            Resources::Authorization(authorization_snapshot(snapshot, workload))
        })
    }

    fn egress(&self, snapshot: &MeshSnapshot, workload: &Workload) -> Arc<Versioned> {
        let key = snapshot
            .egress_policies_for(workload)
            .map(EgressPolicy::key)
            .collect();
        built_once(&self.egress, key, || {
            Resources::Egress(egress_snapshot(snapshot, workload))
        })
    }

    fn network_policy(&self, snapshot: &MeshSnapshot, workload: &Workload) -> Arc<Versioned> {
        let policies = snapshot
            .network_policies_for(workload)
            .map(NetworkPolicy::key)
            .collect();
        let ports = workload
            .named_ports()
            .map(|(name, port, l4)| (name.to_owned(), port, l4))
            .collect();
        built_once(&self.network_policy, (policies, ports), || {
            Resources::NetworkPolicy(network_policy_snapshot(snapshot, workload, &self.peers))
        })
    }
}

/// The snapshot for `key`, built by `build` if no stream has built it yet. The map's lock
/// is held only to find the cell, so builds for different keys run in parallel.
fn built_once<K: Eq + std::hash::Hash>(
    cells: &Mutex<HashMap<K, BuildCell>>,
    key: K,
    build: impl FnOnce() -> Resources,
) -> Arc<Versioned> {
    let cell = {
        let mut cells = cells.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(cells.entry(key).or_default())
    };
    Arc::clone(cell.get_or_init(|| Arc::new(Versioned::new(build()))))
}

/// The configuration every stream serves from, replaced as a whole on each change.
#[derive(Debug)]
pub(crate) struct Published {
    pub snapshot: Arc<MeshSnapshot>,
    pub bundle: TrustBundle,
    /// Fingerprint of the CA certificate leaves are issued from now.
    pub issuer_fingerprint: String,
    /// Encoded once per change, identical for every proxy.
    shared: BTreeMap<ResourceType, Arc<Versioned>>,
    /// Filled lazily, one cell per workload: a change costs one build per workload that has
    /// a proxy connected (not one per stream, nor any for workloads without a proxy), and
    /// streams waking together on multi-threaded runtimes wait for that one build.
    per_workload: HashMap<NamespacedName, OnceLock<PerWorkload>>,
    /// Snapshots shared by workloads whose inputs are equal.
    builds: SharedBuilds,
}

impl Published {
    /// The version of the trust bundle streamed now.
    pub fn trust_bundle_version(&self) -> String {
        self.shared
            .get(&ResourceType::TrustBundle)
            .map(|v| v.version.clone())
            .unwrap_or_default()
    }

    pub fn new(snapshot: Arc<MeshSnapshot>, bundle: TrustBundle, issuer_fingerprint: &str) -> Self {
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
                issuer_fingerprint,
            )))),
        );
        shared.insert(
            ResourceType::Mesh,
            Arc::new(Versioned::new(Resources::Mesh(mesh_proto(
                snapshot.settings(),
            )))),
        );
        let per_workload = snapshot
            .workloads()
            .map(|w| (w.key(), OnceLock::new()))
            .collect();
        let builds = SharedBuilds::new(&snapshot);
        Self {
            snapshot,
            bundle,
            issuer_fingerprint: issuer_fingerprint.to_owned(),
            shared,
            per_workload,
            builds,
        }
    }

    /// The snapshot of `ty` for the proxy of `workload` (a workload of `self.snapshot`).
    pub fn resource(&self, ty: ResourceType, workload: &Workload) -> Arc<Versioned> {
        if let Some(v) = self.shared.get(&ty) {
            return Arc::clone(v);
        }
        let key = workload.key();
        let cached = self.per_workload.get(&key).and_then(|cell| {
            cell.get_or_init(|| {
                // Built from this snapshot's own copy of the workload, so the cached value
                // is the same whichever stream fills it. Looked up only here: with
                // thousands of workloads, a lookup per call showed in profiles.
                let own = self.snapshot.workloads.get(&key).unwrap_or(workload);
                PerWorkload::build(&self.snapshot, own, &self.builds)
            })
            .get(ty)
            .cloned()
        });
        match cached {
            Some(v) => v,
            // Not a workload of this snapshot (or a shared type missing from `shared`, which
            // `new` rules out): build it uncached rather than fail.
            None => Arc::new(self.build_uncached(ty, workload)),
        }
    }

    fn build_uncached(&self, ty: ResourceType, workload: &Workload) -> Versioned {
        Versioned::new(match ty {
            ResourceType::Workload => Resources::Workload(workload_proto(workload)),
            ResourceType::Authorization => {
                Resources::Authorization(authorization_snapshot(&self.snapshot, workload))
            }
            ResourceType::Egress => Resources::Egress(egress_snapshot(&self.snapshot, workload)),
            ResourceType::NetworkPolicy => Resources::NetworkPolicy(network_policy_snapshot(
                &self.snapshot,
                workload,
                &self.builds.peers,
            )),
            ResourceType::Services => Resources::Services(services_proto(&self.snapshot)),
            ResourceType::TrustBundle => {
                Resources::TrustBundle(bundle_proto(&self.bundle, &self.issuer_fingerprint))
            }
            ResourceType::Mesh => Resources::Mesh(mesh_proto(self.snapshot.settings())),
        })
    }
}

/// Why [`snapshots_for`], [`authorization_for`], [`egress_for`] or [`network_policy_for`]
/// could not build snapshots.
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
/// (`palisade proxy --static-config`), so they run the very same configuration. Only the
/// types proxies subscribe to (`ALL_TYPE_URLS`) are included: a static proxy refuses a
/// type it does not know rather than ignore it.
pub fn snapshots_for(
    snapshot: Arc<MeshSnapshot>,
    bundle: TrustBundle,
    namespace: &str,
    name: &str,
) -> Result<Vec<pb::DiscoveryResponse>, UnknownWorkload> {
    let workload = snapshot
        .workload(namespace, name)
        .cloned()
        .ok_or_else(|| unknown(namespace, name))?;
    // Static proxies never renew: no issuer to compare with.
    let published = Published::new(snapshot, bundle, "");
    Ok(ResourceType::ALL
        .iter()
        .filter(|ty| pb::ALL_TYPE_URLS.contains(&ty.type_url()))
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

fn unknown(namespace: &str, name: &str) -> UnknownWorkload {
    UnknownWorkload {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

/// The AuthorizationSnapshot the proxy of `namespace/workload` receives: every policy
/// selecting it, ordered by namespace and name.
pub fn authorization_for(
    snapshot: &MeshSnapshot,
    namespace: &str,
    workload: &str,
) -> Result<pb::AuthorizationSnapshot, UnknownWorkload> {
    let w = snapshot
        .workload(namespace, workload)
        .ok_or_else(|| unknown(namespace, workload))?;
    Ok(authorization_snapshot(snapshot, w))
}

/// The EgressSnapshot the proxy of `namespace/workload` receives: one rule per
/// EgressPolicy selecting it, ordered by namespace and name.
pub fn egress_for(
    snapshot: &MeshSnapshot,
    namespace: &str,
    workload: &str,
) -> Result<pb::EgressSnapshot, UnknownWorkload> {
    let w = snapshot
        .workload(namespace, workload)
        .ok_or_else(|| unknown(namespace, workload))?;
    Ok(egress_snapshot(snapshot, w))
}

/// The NetworkPolicySnapshot the proxy of `namespace/workload` receives: the
/// NetworkPolicies selecting it, their selectors resolved against the mesh.
pub fn network_policy_for(
    snapshot: &MeshSnapshot,
    namespace: &str,
    workload: &str,
) -> Result<pb::NetworkPolicySnapshot, UnknownWorkload> {
    let w = snapshot
        .workload(namespace, workload)
        .ok_or_else(|| unknown(namespace, workload))?;
    Ok(network_policy_snapshot(
        snapshot,
        w,
        &ResolvedPeers::new(snapshot),
    ))
}

pub(crate) fn authorization_snapshot(
    snapshot: &MeshSnapshot,
    workload: &Workload,
) -> pb::AuthorizationSnapshot {
    pb::AuthorizationSnapshot {
        policies: snapshot
            .authorization_policies_for(workload)
            .map(|p| authorization_policy_proto(p, &snapshot.settings().trust_domain))
            .collect(),
    }
}

pub(crate) fn egress_snapshot(snapshot: &MeshSnapshot, workload: &Workload) -> pb::EgressSnapshot {
    pb::EgressSnapshot {
        rules: snapshot
            .egress_policies_for(workload)
            .map(egress_rule_proto)
            .collect(),
    }
}

fn string_match_proto(m: &StringMatch) -> pb::StringMatch {
    use pb::string_match::Kind;
    pb::StringMatch {
        kind: Some(match m {
            StringMatch::Exact(v) => Kind::Exact(v.clone()),
            StringMatch::Prefix(v) => Kind::Prefix(v.clone()),
            StringMatch::Suffix(v) => Kind::Suffix(v.clone()),
            StringMatch::Presence => Kind::Presence(true),
            StringMatch::Template(t) => Kind::PathTemplate(t.clone()),
        }),
    }
}

fn matches_proto(ms: &[StringMatch]) -> Vec<pb::StringMatch> {
    ms.iter().map(string_match_proto).collect()
}

fn ports_proto(ports: &[u16]) -> Vec<u32> {
    ports.iter().map(|p| u32::from(*p)).collect()
}

fn source_proto(s: &SourceMatch, td: &TrustDomain) -> pb::Source {
    let blocks = |b: &[crate::policy::IpBlock]| b.iter().map(ToString::to_string).collect();
    let accounts =
        |a: &[crate::policy::ServiceAccount]| a.iter().map(|a| a.principal(td)).collect();
    pb::Source {
        service_accounts: accounts(&s.service_accounts),
        not_service_accounts: accounts(&s.not_service_accounts),
        principals: matches_proto(&s.principals),
        not_principals: matches_proto(&s.not_principals),
        namespaces: matches_proto(&s.namespaces),
        not_namespaces: matches_proto(&s.not_namespaces),
        ip_blocks: blocks(&s.ip_blocks),
        not_ip_blocks: blocks(&s.not_ip_blocks),
    }
}

fn operation_proto(o: &OperationMatch) -> pb::Operation {
    pb::Operation {
        hosts: matches_proto(&o.hosts),
        not_hosts: matches_proto(&o.not_hosts),
        ports: ports_proto(&o.ports),
        not_ports: ports_proto(&o.not_ports),
        methods: matches_proto(&o.methods),
        not_methods: matches_proto(&o.not_methods),
        paths: matches_proto(&o.paths),
        not_paths: matches_proto(&o.not_paths),
    }
}

fn condition_proto(c: &Condition, td: &TrustDomain) -> pb::Condition {
    if c.key == ConditionKey::SourceServiceAccount {
        // `ns/sa` values (exact, checked by the loader) become the principals they name.
        let principals = |ms: &[StringMatch]| {
            ms.iter()
                .map(|m| match m {
                    StringMatch::Exact(v) => {
                        let (ns, sa) = v.split_once('/').unwrap_or(("", v));
                        StringMatch::Exact(format!("{td}/ns/{ns}/sa/{sa}"))
                    }
                    other => other.clone(),
                })
                .collect::<Vec<_>>()
        };
        return pb::Condition {
            key: ConditionKey::SourcePrincipal.to_string(),
            values: matches_proto(&principals(&c.values)),
            not_values: matches_proto(&principals(&c.not_values)),
        };
    }
    pb::Condition {
        key: c.key.to_string(),
        values: matches_proto(&c.values),
        not_values: matches_proto(&c.not_values),
    }
}

fn rule_proto(r: &Rule, td: &TrustDomain) -> pb::Rule {
    pb::Rule {
        from: r.from.iter().map(|s| source_proto(s, td)).collect(),
        to: r.to.iter().map(operation_proto).collect(),
        when: r.when.iter().map(|c| condition_proto(c, td)).collect(),
    }
}

/// One policy on the wire.
pub(crate) fn authorization_policy_proto(
    p: &AuthorizationPolicy,
    td: &TrustDomain,
) -> pb::AuthorizationPolicy {
    pb::AuthorizationPolicy {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        action: match p.action {
            Action::Allow => pb::Action::Allow,
            Action::Deny => pb::Action::Deny,
            Action::Audit => pb::Action::Audit,
        } as i32,
        rules: p.rules.iter().map(|r| rule_proto(r, td)).collect(),
        dry_run: p.dry_run,
    }
}

fn egress_rule_proto(p: &EgressPolicy) -> pb::EgressRule {
    pb::EgressRule {
        policy: p.key().to_string(),
        hosts: p
            .hosts
            .iter()
            .map(|h| {
                string_match_proto(&match h {
                    EgressHost::Name(n) => StringMatch::Exact(n.clone()),
                    EgressHost::Wildcard(suffix) => StringMatch::Suffix(suffix.clone()),
                    EgressHost::Ip(ip) => StringMatch::Exact(ip.to_string()),
                })
            })
            .collect(),
        ports: ports_proto(&p.ports),
        ip_blocks: p.ip_blocks.iter().map(ToString::to_string).collect(),
    }
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

pub(crate) fn bundle_proto(bundle: &TrustBundle, issuer_fingerprint: &str) -> pb::TrustBundle {
    pb::TrustBundle {
        trust_domain: bundle.trust_domain().to_string(),
        roots_pem: bundle.to_pem_list(),
        issuer_fingerprint: issuer_fingerprint.to_owned(),
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
        path_normalization: match s.path_normalization {
            PathNormalization::Base => pb::PathNormalization::Base,
            PathNormalization::MergeSlashes => pb::PathNormalization::MergeSlashes,
            PathNormalization::DecodeAndMergeSlashes => {
                pb::PathNormalization::DecodeAndMergeSlashes
            }
        } as i32,
        allow_escaped_slashes: !s.reject_escaped_slashes,
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

    const WORKLOADS: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: a, namespace: shop, labels: {app: a}}
spec: {address: 127.0.1.1}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: b, namespace: shop, labels: {app: b}}
spec: {address: 127.0.1.2}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: c, namespace: other, labels: {app: a}}
spec: {address: 127.0.1.3}
";

    fn published(policies: &str) -> Published {
        let snapshot =
            crate::config::load_files(&[("w.yaml", WORKLOADS), ("p.yaml", policies)]).unwrap();
        let td = palisade_certs::TrustDomain::new("cluster.local").unwrap();
        let (ca, _) =
            palisade_certs::CertificateAuthority::generate(td, &Default::default()).unwrap();
        Published::new(
            Arc::new(snapshot),
            ca.bundle().clone(),
            ca.issuer_fingerprint(),
        )
    }

    fn version(p: &Published, ns: &str, name: &str, ty: ResourceType) -> String {
        let w = p.snapshot.workload(ns, name).unwrap();
        p.resource(ty, w).version.clone()
    }

    #[test]
    fn equal_inputs_share_one_snapshot_and_named_ports_keep_them_apart() {
        // a and b: same policies, port "http" on different numbers; c: same as a.
        let workload = |name: &str, address: &str, port: u16| {
            format!(
                "apiVersion: palisade.dev/v1alpha1\nkind: Workload\n\
                 metadata: {{name: {name}, namespace: shop, labels: {{tier: web}}}}\n\
                 spec: {{address: {address}, ports: [{{name: http, port: {port}}}]}}\n---\n"
            )
        };
        let workloads = workload("a", "127.0.1.1", 8080)
            + &workload("b", "127.0.1.2", 9090)
            + &workload("c", "127.0.1.3", 8080);
        let policies = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: all, namespace: shop}
spec: {rules: [{to: [{operation: {methods: [GET]}}]}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec: {podSelector: {matchLabels: {tier: web}}, ingress: [{ports: [{port: http}]}]}
";
        let snapshot =
            crate::config::load_files(&[("w.yaml", workloads.as_str()), ("p.yaml", policies)])
                .unwrap();
        let td = palisade_certs::TrustDomain::new("cluster.local").unwrap();
        let (ca, _) =
            palisade_certs::CertificateAuthority::generate(td, &Default::default()).unwrap();
        let published = Published::new(
            Arc::new(snapshot),
            ca.bundle().clone(),
            ca.issuer_fingerprint(),
        );
        let get = |name: &str, ty: ResourceType| {
            let w = published.snapshot.workload("shop", name).unwrap();
            published.resource(ty, w)
        };
        let (authz, netpol) = (ResourceType::Authorization, ResourceType::NetworkPolicy);
        assert!(Arc::ptr_eq(&get("a", authz), &get("b", authz)));
        assert!(Arc::ptr_eq(&get("a", netpol), &get("c", netpol)));
        // The named ingress port resolves to each receiver's own number.
        assert_ne!(get("a", netpol).version, get("b", netpol).version);
        for name in ["a", "b", "c"] {
            let expected = network_policy_for(&published.snapshot, "shop", name).unwrap();
            assert_eq!(
                get(name, netpol).resources,
                Resources::NetworkPolicy(expected),
                "{name}"
            );
        }
    }

    #[test]
    fn a_policy_change_changes_versions_only_where_it_selects() {
        let policy = |principal: &str| {
            format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata: {{name: p, namespace: shop}}\n\
                 spec: {{selector: {{matchLabels: {{app: a}}}}, rules: [{{from: [{{source: \
                 {{principals: [{principal}]}}}}]}}]}}\n"
            )
        };
        let before = published(&policy("cluster.local/ns/shop/sa/x"));
        let after = published(&policy("cluster.local/ns/shop/sa/y"));
        let authz = ResourceType::Authorization;
        assert_ne!(
            version(&before, "shop", "a", authz),
            version(&after, "shop", "a", authz),
            "shop/a is selected"
        );
        // Not selected: b by its labels, c (same labels) by its namespace.
        for (ns, name) in [("shop", "b"), ("other", "c")] {
            assert_eq!(
                version(&before, ns, name, authz),
                version(&after, ns, name, authz),
                "{ns}/{name}"
            );
        }
        for ty in [ResourceType::Workload, ResourceType::Egress] {
            assert_eq!(
                version(&before, "shop", "a", ty),
                version(&after, "shop", "a", ty)
            );
        }
        // Built once per workload and change: every stream shares the same value.
        let w = after.snapshot.workload("shop", "a").unwrap();
        assert!(Arc::ptr_eq(
            &after.resource(authz, w),
            &after.resource(authz, w)
        ));
    }

    #[test]
    fn a_network_policy_change_changes_only_that_type_where_it_selects() {
        let policy = |port: u16| {
            format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                 metadata: {{name: np, namespace: shop}}\n\
                 spec: {{podSelector: {{matchLabels: {{app: a}}}}, ingress: [{{from: \
                 [{{namespaceSelector: {{}}}}], ports: [{{port: {port}}}]}}]}}\n"
            )
        };
        let before = published(&policy(80));
        let after = published(&policy(81));
        let np = ResourceType::NetworkPolicy;
        assert_ne!(
            version(&before, "shop", "a", np),
            version(&after, "shop", "a", np)
        );
        // c is a peer of the rule, in another namespace: the policy does not select it.
        for (ns, name) in [("shop", "b"), ("other", "c")] {
            assert_eq!(
                version(&before, ns, name, np),
                version(&after, ns, name, np),
                "{ns}/{name}"
            );
        }
        for ty in [ResourceType::Authorization, ResourceType::Egress] {
            assert_eq!(
                version(&before, "shop", "a", ty),
                version(&after, "shop", "a", ty)
            );
        }
        let a = before.snapshot.workload("shop", "a").unwrap();
        match &before.resource(np, a).resources {
            Resources::NetworkPolicy(s) => {
                assert!(s.ingress_isolated);
                assert_eq!(s.peers.len(), 3);
            }
            other => panic!("network policy expected, got {other:?}"),
        }
    }

    #[test]
    fn type_urls_round_trip() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
        }
        assert_eq!(ResourceType::from_type_url("type.example/Other"), None);
        // Every served type is one proxies subscribe to, in their order.
        let urls: Vec<_> = ResourceType::ALL.iter().map(|t| t.type_url()).collect();
        assert_eq!(urls, pb::ALL_TYPE_URLS);
    }
}
