//! The validated mesh model: what the configuration describes, with every cross-reference
//! resolved (identities derived, selectors turned into endpoints).
//!
//! Pure values: no I/O and no proto. A [`MeshSnapshot`] can only be obtained from the
//! loader (or empty, with default settings), so everything in it has passed validation.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use palisade_certs::{SpiffeId, TrustDomain};

use crate::netpol::{Namespace, NetworkPolicy};
use crate::policy::{AuthorizationPolicy, EgressPolicy};

/// The port where every sidecar accepts mTLS from its peers (CONTRACT: inbound capture).
pub const PROXY_INBOUND_PORT: u16 = 15006;

/// Workload annotation moving its sidecar's inbound listener off 15006 (several sidecars
/// sharing one address, e.g. benchmarks on 127.0.0.1).
pub const INBOUND_PORT_ANNOTATION: &str = "palisade.dev/inbound-port";

/// A namespaced resource name, displayed as `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespacedName {
    /// The namespace.
    pub namespace: String,
    /// The name within the namespace.
    pub name: String,
}

impl NamespacedName {
    /// Builds a key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a resource was read from, so later errors (policy compilation, NACKs) can point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The file.
    pub file: PathBuf,
    /// The YAML document within the file, from 1.
    pub document: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} document {}", self.file.display(), self.document)
    }
}

/// Application protocol spoken on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// HTTP/1.1.
    Http,
    /// HTTP/2 cleartext (h2c).
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// Opaque TCP.
    Tcp,
}

impl Protocol {
    /// The lower-case name used in configuration and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether sidecars accept plaintext inbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MtlsMode {
    /// mTLS only.
    #[default]
    Strict,
    /// mTLS and plaintext.
    Permissive,
}

/// What happens to outbound traffic for destinations outside the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutboundTrafficPolicy {
    /// Only Services of the mesh (and what egress policies allow) are reachable.
    #[default]
    RegistryOnly,
    /// Anything is reachable.
    AllowAny,
}

/// MeshConfig `pathNormalization.normalization`: Istio's `ProxyPathNormalization` types
/// that Palisade offers (`DEFAULT` reads as `BASE`; `NONE` is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathNormalization {
    /// RFC 3986 normalisation, `\` read as `/`.
    #[default]
    Base,
    /// `BASE`, then runs of `/` merged.
    MergeSlashes,
    /// `%2F`/`%5C` decoded, then `MERGE_SLASHES`.
    DecodeAndMergeSlashes,
}

/// What happens to a request no ALLOW policy covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultAuthorization {
    /// Deny it.
    #[default]
    Deny,
    /// Allow it.
    Allow,
}

/// Mesh-wide settings from the `MeshConfig` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshSettings {
    /// Trust domain of every workload identity.
    pub trust_domain: TrustDomain,
    /// Namespace whose policies apply to the whole mesh.
    pub root_namespace: String,
    /// Decision when no ALLOW policy selects a workload.
    pub default_authorization: DefaultAuthorization,
    /// Inbound mTLS mode.
    pub mtls_mode: MtlsMode,
    /// Outbound policy for destinations outside the registry.
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Lifetime of issued leaf certificates.
    pub certificate_lifetime: Duration,
    /// Whether denials omit the deciding policy's name.
    pub hide_denial_reasons: bool,
    /// How request paths are normalised before authorization.
    pub path_normalization: PathNormalization,
    /// Whether paths with `%2F`/`%5C` are refused (400) under `BASE` and `MERGE_SLASHES`.
    pub reject_escaped_slashes: bool,
}

/// Default trust domain (CONTRACT: Identity).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Default root namespace.
pub const DEFAULT_ROOT_NAMESPACE: &str = "palisade-system";
/// Default leaf lifetime.
pub const DEFAULT_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(24 * 3600);

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            trust_domain: default_trust_domain(),
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
            default_authorization: DefaultAuthorization::default(),
            mtls_mode: MtlsMode::default(),
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            certificate_lifetime: DEFAULT_CERTIFICATE_LIFETIME,
            hide_denial_reasons: false,
            path_normalization: PathNormalization::default(),
            reject_escaped_slashes: true,
        }
    }
}

pub(crate) fn default_trust_domain() -> TrustDomain {
    match TrustDomain::new(DEFAULT_TRUST_DOMAIN) {
        Ok(td) => td,
        // The constant is a valid trust domain; this arm only satisfies the type checker.
        Err(_) => unreachable!("DEFAULT_TRUST_DOMAIN is valid"),
    }
}

/// A port a workload's app listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadPort {
    /// Port name ("" when not named).
    pub name: String,
    /// Port number.
    pub port: u16,
    /// What the app speaks there.
    pub protocol: Protocol,
}

/// A layer-4 protocol (Kubernetes `Protocol`; TCP when not written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum L4Protocol {
    /// TCP, the only one the sidecars carry.
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl L4Protocol {
    /// The name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            L4Protocol::Tcp => "TCP",
            L4Protocol::Udp => "UDP",
            L4Protocol::Sctp => "SCTP",
        }
    }

    /// Parses `TCP`, `UDP` or `SCTP` (case-sensitive, as the API server does).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "TCP" => Some(L4Protocol::Tcp),
            "UDP" => Some(L4Protocol::Udp),
            "SCTP" => Some(L4Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for L4Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A UDP or SCTP port of a workload: never proxied (the sidecars carry TCP only), kept so
/// that NetworkPolicy named ports can name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonTcpPort {
    /// Port name ("" when not named).
    pub name: String,
    /// Port number.
    pub port: u16,
    /// UDP or SCTP.
    pub protocol: L4Protocol,
}

/// A workload (directory mode's stand-in for a Pod) with its derived identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account; the identity is derived from it.
    pub service_account: String,
    /// Labels, matched by Service selectors and policies.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// The workload's IP address.
    pub address: IpAddr,
    /// Where its sidecar accepts mTLS (15006 unless annotated).
    pub proxy_port: u16,
    /// App ports the sidecar carries (TCP).
    pub ports: Vec<WorkloadPort>,
    /// UDP and SCTP ports: never proxied, only named by NetworkPolicy.
    pub non_tcp_ports: Vec<NonTcpPort>,
    /// `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`.
    pub identity: SpiffeId,
    /// Where it was defined.
    pub source: Source,
}

impl Workload {
    /// The `namespace/name` key.
    pub fn key(&self) -> NamespacedName {
        NamespacedName::new(&self.namespace, &self.name)
    }

    /// The port with this number, if the workload exposes it.
    pub fn port(&self, port: u16) -> Option<&WorkloadPort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// Every named port, TCP or not, as (name, number, protocol), in declaration order:
    /// what NetworkPolicy named ports resolve against.
    pub fn named_ports(&self) -> impl Iterator<Item = (&str, u16, L4Protocol)> + '_ {
        let tcp = self
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port, L4Protocol::Tcp));
        let other = self
            .non_tcp_ports
            .iter()
            .map(|p| (p.name.as_str(), p.port, p.protocol));
        tcp.chain(other).filter(|(name, _, _)| !name.is_empty())
    }

    /// Whether every label of `selector` is set to the same value on this workload.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(k, v)| self.labels.get(k).is_some_and(|have| have == v))
    }
}

/// A port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name ("" when not named).
    pub name: String,
    /// The port clients address.
    pub port: u16,
    /// The port of the selected workloads that receives the traffic.
    pub target_port: u16,
    /// Protocol spoken.
    pub protocol: Protocol,
}

/// One workload behind a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Workload name.
    pub workload: String,
    /// Workload namespace (the Service's).
    pub namespace: String,
    /// Workload address.
    pub address: IpAddr,
    /// Where the workload's sidecar accepts mTLS.
    pub proxy_port: u16,
    /// The identity the workload's sidecar must present.
    pub identity: SpiffeId,
}

/// A Service with its resolved endpoints and hostnames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Label selector (never empty).
    pub selector: BTreeMap<String, String>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Selected workloads, ordered by name.
    pub endpoints: Vec<Endpoint>,
    /// `name`, `name.ns`, `name.ns.svc`, `name.ns.svc.<trustDomain>`.
    pub hostnames: Vec<String>,
    /// Virtual IP clients may use instead of a name (Kubernetes `spec.clusterIP`).
    pub cluster_ip: Option<IpAddr>,
    /// Where it was defined.
    pub source: Source,
}

impl Service {
    /// The `namespace/name` key.
    pub fn key(&self) -> NamespacedName {
        NamespacedName::new(&self.namespace, &self.name)
    }
}

/// The validated mesh: settings, workloads, services and policies.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MeshSnapshot {
    pub(crate) settings: MeshSettings,
    pub(crate) settings_source: Option<Source>,
    pub(crate) workloads: BTreeMap<NamespacedName, Workload>,
    pub(crate) services: BTreeMap<NamespacedName, Service>,
    pub(crate) authorization_policies: BTreeMap<NamespacedName, AuthorizationPolicy>,
    pub(crate) egress_policies: BTreeMap<NamespacedName, EgressPolicy>,
    pub(crate) network_policies: BTreeMap<NamespacedName, NetworkPolicy>,
    pub(crate) namespaces: BTreeMap<String, Namespace>,
    pub(crate) warnings: Vec<Warning>,
}

/// Something the configuration does that loads but may not do what its author expects,
/// displayed on one line as `file: document N (Kind ns/name): field: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Where the resource was defined.
    pub source: Source,
    /// `Kind namespace/name` of the resource.
    pub resource: String,
    /// Path of the field concerned.
    pub field: String,
    /// What to know, on one line.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: document {} ({}): {}: {}",
            self.source.file.display(),
            self.source.document,
            self.resource,
            self.field,
            self.message
        )
    }
}

impl MeshSnapshot {
    /// Mesh-wide settings (defaults when there is no `MeshConfig`).
    pub fn settings(&self) -> &MeshSettings {
        &self.settings
    }

    /// Where the `MeshConfig` came from, if there was one.
    pub fn settings_source(&self) -> Option<&Source> {
        self.settings_source.as_ref()
    }

    /// Every workload, ordered by namespace and name.
    pub fn workloads(&self) -> impl ExactSizeIterator<Item = &Workload> + '_ {
        self.workloads.values()
    }

    /// One workload.
    pub fn workload(&self, namespace: &str, name: &str) -> Option<&Workload> {
        self.workloads.get(&NamespacedName::new(namespace, name))
    }

    /// Every Service, ordered by namespace and name.
    pub fn services(&self) -> impl ExactSizeIterator<Item = &Service> + '_ {
        self.services.values()
    }

    /// One Service.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services.get(&NamespacedName::new(namespace, name))
    }

    /// Every AuthorizationPolicy, ordered by namespace and name.
    pub fn authorization_policies(
        &self,
    ) -> impl ExactSizeIterator<Item = &AuthorizationPolicy> + '_ {
        self.authorization_policies.values()
    }

    /// One AuthorizationPolicy.
    pub fn authorization_policy(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<&AuthorizationPolicy> {
        self.authorization_policies
            .get(&NamespacedName::new(namespace, name))
    }

    /// Every EgressPolicy, ordered by namespace and name.
    pub fn egress_policies(&self) -> impl ExactSizeIterator<Item = &EgressPolicy> + '_ {
        self.egress_policies.values()
    }

    /// Every NetworkPolicy, ordered by namespace and name.
    pub fn network_policies(&self) -> impl ExactSizeIterator<Item = &NetworkPolicy> + '_ {
        self.network_policies.values()
    }

    /// The NetworkPolicies selecting `workload` (its namespace's, whose podSelector matches
    /// it), ordered by name.
    pub fn network_policies_for<'a>(
        &'a self,
        workload: &'a Workload,
    ) -> impl Iterator<Item = &'a NetworkPolicy> + 'a {
        let ns = workload.namespace.as_str();
        in_scope(&self.network_policies, ns, ns).filter(move |p| p.selects(workload))
    }

    /// Every Namespace, declared or implied by a workload, ordered by name.
    pub fn namespaces(&self) -> impl ExactSizeIterator<Item = &Namespace> + '_ {
        self.namespaces.values()
    }

    /// One Namespace, declared or implied by a workload.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    /// What loaded but deserves the operator's attention (`palisade check` prints these).
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// The AuthorizationPolicies that apply to `workload`, ordered by namespace and name:
    /// those of its namespace and of the root namespace whose selector matches it.
    pub fn authorization_policies_for<'a>(
        &'a self,
        workload: &'a Workload,
    ) -> impl Iterator<Item = &'a AuthorizationPolicy> + 'a {
        let root = self.settings.root_namespace.as_str();
        in_scope(&self.authorization_policies, root, &workload.namespace)
            .filter(move |p| p.selector.selects(&p.namespace, root, workload))
    }

    /// The EgressPolicies that apply to `workload`, ordered by namespace and name.
    pub fn egress_policies_for<'a>(
        &'a self,
        workload: &'a Workload,
    ) -> impl Iterator<Item = &'a EgressPolicy> + 'a {
        let root = self.settings.root_namespace.as_str();
        in_scope(&self.egress_policies, root, &workload.namespace)
            .filter(move |p| p.selector.selects(&p.namespace, root, workload))
    }
}

/// The values of `map` in namespaces `a` and `b` (once if equal), ordered by key: only
/// those two ranges are visited, so selection stays cheap with many namespaces.
fn in_scope<'a, T>(
    map: &'a BTreeMap<NamespacedName, T>,
    a: &'a str,
    b: &'a str,
) -> impl Iterator<Item = &'a T> + 'a {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    let range = move |ns: &'a str| {
        map.range(NamespacedName::new(ns, "")..)
            .take_while(move |(k, _)| k.namespace == ns)
            .map(|(_, v)| v)
    };
    // Keys sort by namespace first, so the first range's entries all precede the second's.
    range(first).chain(
        (first != second)
            .then(|| range(second))
            .into_iter()
            .flatten(),
    )
}
