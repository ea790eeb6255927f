//! The proxy's validated view of the mesh, built from discovery snapshots.
//!
//! Each snapshot type converts from its proto form with `TryFrom`; a conversion error names
//! the resource and field and becomes the NACK message, and the previous view stays in force.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::authz::{PathNormalization, PathOptions};
use crate::metrics::PeerLabel;
use palisade_certs::{SpiffeId, TrustBundle, TrustDomain};
use palisade_proto::v1;

/// Why a snapshot was rejected (sent back as the NACK's message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {field}: {message}")]
pub struct SnapshotError {
    /// Which resource, e.g. `Service shop/search`.
    pub resource: String,
    /// Which field, e.g. `endpoints[0].spiffe_id`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(
    resource: impl Into<String>,
    field: impl Into<String>,
    message: impl ToString,
) -> SnapshotError {
    SnapshotError {
        resource: resource.into(),
        field: field.into(),
        message: message.to_string(),
    }
}

/// Application protocol on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Protocol {
    /// HTTP/1.1 to the app.
    Http1,
    /// HTTP/2 cleartext to the app.
    Http2,
    /// gRPC (HTTP/2), denials answered with grpc-status.
    Grpc,
    /// Opaque TCP.
    Tcp,
}

impl Protocol {
    fn from_proto(value: i32, resource: &str, field: &str) -> Result<Self, SnapshotError> {
        match v1::Protocol::try_from(value) {
            Ok(v1::Protocol::Http) => Ok(Self::Http1),
            Ok(v1::Protocol::Http2) => Ok(Self::Http2),
            Ok(v1::Protocol::Grpc) => Ok(Self::Grpc),
            Ok(v1::Protocol::Tcp) => Ok(Self::Tcp),
            _ => Err(err(resource, field, format!("unknown protocol {value}"))),
        }
    }

    /// Whether the app speaks HTTP/2 on this port.
    pub fn is_http2(self) -> bool {
        matches!(self, Self::Http2 | Self::Grpc)
    }
}

fn port(value: u32, resource: &str, field: &str) -> Result<u16, SnapshotError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| err(resource, field, format!("{value} is not a port (1-65535)")))
}

fn spiffe(value: &str, resource: &str, field: &str) -> Result<SpiffeId, SnapshotError> {
    SpiffeId::parse(value).map_err(|e| err(resource, field, e))
}

// === impl LocalWorkload ===

/// The workload this proxy runs beside.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LocalWorkload {
    /// Workload name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Its SPIFFE ID.
    #[serde(serialize_with = "ser_display")]
    pub identity: SpiffeId,
    /// Labels (policy selectors match on them).
    pub labels: std::collections::BTreeMap<String, String>,
    /// App ports and what they speak.
    pub ports: HashMap<u16, Protocol>,
}

impl TryFrom<&v1::WorkloadSnapshot> for LocalWorkload {
    type Error = SnapshotError;
    fn try_from(w: &v1::WorkloadSnapshot) -> Result<Self, SnapshotError> {
        let resource = format!("Workload {}/{}", w.namespace, w.name);
        if w.name.is_empty() {
            return Err(err(resource, "name", "is empty"));
        }
        let identity = spiffe(&w.spiffe_id, &resource, "spiffe_id")?;
        let mut ports = HashMap::new();
        for (i, p) in w.ports.iter().enumerate() {
            let number = port(p.port, &resource, &format!("ports[{i}].port"))?;
            let proto =
                Protocol::from_proto(p.protocol, &resource, &format!("ports[{i}].protocol"))?;
            if ports.insert(number, proto).is_some() {
                return Err(err(
                    resource,
                    format!("ports[{i}].port"),
                    format!("{number} is listed twice"),
                ));
            }
        }
        Ok(Self {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            identity,
            labels: w.labels.clone(),
            ports,
        })
    }
}

// === impl ServiceTable ===

/// One sidecar that serves a Service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Endpoint {
    /// Where its sidecar accepts mTLS.
    pub proxy_addr: SocketAddr,
    /// The SPIFFE ID it must present.
    #[serde(serialize_with = "ser_display")]
    pub identity: SpiffeId,
    /// Its workload name (for logs and metrics).
    pub workload: String,
    /// Its identity as the `peer` label of request metrics.
    #[serde(skip)]
    pub label: PeerLabel,
}

/// Where requests for one `host:port` of a Service go.
#[derive(Debug, serde::Serialize)]
pub struct Route {
    /// `namespace/name` of the Service.
    pub service: String,
    /// Port on the selected workloads.
    pub target_port: u16,
    /// What the port speaks.
    pub protocol: Protocol,
    /// The sidecars behind it; never empty.
    pub endpoints: Vec<Endpoint>,
    #[serde(skip)]
    next: AtomicUsize,
}

impl Route {
    /// Picks the next endpoint, round robin.
    pub fn pick(&self) -> &Endpoint {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        &self.endpoints[i]
    }

    /// Picks the next endpoint, round robin, among those `allowed` accepts (NetworkPolicy
    /// egress); `None` when it accepts none.
    pub fn pick_allowed(&self, allowed: impl Fn(&Endpoint) -> bool) -> Option<&Endpoint> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| &self.endpoints[start.wrapping_add(k) % n])
            .find(|e| allowed(e))
    }
}

/// Every mesh Service, indexed by the names and ports clients use, and by the addresses a
/// captured connection can be for (a Service's cluster IP and port, or one endpoint's
/// workload address and target port).
#[derive(Debug, Default, serde::Serialize)]
pub struct ServiceTable {
    routes: HashMap<String, HashMap<u16, Arc<Route>>>,
    #[serde(skip)]
    by_address: HashMap<SocketAddr, Arc<Route>>,
}

impl ServiceTable {
    /// The route for `host:port`; `host` is matched case-insensitively, without a trailing dot.
    pub fn resolve(&self, host: &str, port: u16) -> Option<&Arc<Route>> {
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.routes.get(&host.to_ascii_lowercase())?.get(&port);
        }
        self.routes.get(host)?.get(&port)
    }

    /// The route for a captured connection's original destination: a cluster IP and Service
    /// port (every endpoint of the Service), or a workload address and one of its Service
    /// target ports (that endpoint only).
    pub fn by_address(&self, addr: SocketAddr) -> Option<&Arc<Route>> {
        let canonical = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        self.by_address.get(&canonical)
    }

    /// Number of distinct hostnames.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether no Service is known.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl TryFrom<&v1::ServiceSnapshot> for ServiceTable {
    type Error = SnapshotError;
    fn try_from(snapshot: &v1::ServiceSnapshot) -> Result<Self, SnapshotError> {
        let mut routes: HashMap<String, HashMap<u16, Arc<Route>>> = HashMap::new();
        let mut by_address: HashMap<SocketAddr, Arc<Route>> = HashMap::new();
        for svc in &snapshot.services {
            let resource = format!("Service {}/{}", svc.namespace, svc.name);
            let mut endpoints = Vec::with_capacity(svc.endpoints.len());
            for (i, ep) in svc.endpoints.iter().enumerate() {
                let ip: IpAddr = ep.address.parse().map_err(|_| {
                    err(
                        &resource,
                        format!("endpoints[{i}].address"),
                        format!("{:?} is not an IP address", ep.address),
                    )
                })?;
                let proxy_port = port(
                    ep.proxy_port,
                    &resource,
                    &format!("endpoints[{i}].proxy_port"),
                )?;
                let identity = spiffe(
                    &ep.spiffe_id,
                    &resource,
                    &format!("endpoints[{i}].spiffe_id"),
                )?;
                endpoints.push(Endpoint {
                    proxy_addr: SocketAddr::new(ip, proxy_port),
                    label: PeerLabel::new(identity.as_str()),
                    identity,
                    workload: ep.workload.clone(),
                });
            }
            if endpoints.is_empty() {
                // A Service without endpoints stays unroutable; requests to it get 503.
                continue;
            }
            for (i, p) in svc.ports.iter().enumerate() {
                let number = port(p.port, &resource, &format!("ports[{i}].port"))?;
                let target = port(p.target_port, &resource, &format!("ports[{i}].target_port"))?;
                let route = Arc::new(Route {
                    service: format!("{}/{}", svc.namespace, svc.name),
                    target_port: target,
                    protocol: Protocol::from_proto(
                        p.protocol,
                        &resource,
                        &format!("ports[{i}].protocol"),
                    )?,
                    endpoints: endpoints.clone(),
                    next: AtomicUsize::new(fastrand::usize(..endpoints.len())),
                });
                for endpoint in &endpoints {
                    // A workload serving several Services' ports keeps the first route.
                    by_address
                        .entry(SocketAddr::new(
                            endpoint.proxy_addr.ip().to_canonical(),
                            target,
                        ))
                        .or_insert_with(|| {
                            Arc::new(Route {
                                service: route.service.clone(),
                                target_port: target,
                                protocol: route.protocol,
                                endpoints: vec![endpoint.clone()],
                                next: AtomicUsize::new(0),
                            })
                        });
                }
                for host in &svc.hostnames {
                    if let Ok(ip) = host.parse::<IpAddr>() {
                        by_address
                            .insert(SocketAddr::new(ip.to_canonical(), number), route.clone());
                    }
                    let previous = routes
                        .entry(host.to_ascii_lowercase())
                        .or_default()
                        .insert(number, route.clone());
                    if let Some(previous) = previous {
                        return Err(err(
                            &resource,
                            "hostnames",
                            format!(
                                "{host}:{number} is also claimed by Service {}",
                                previous.service
                            ),
                        ));
                    }
                }
            }
        }
        Ok(Self { routes, by_address })
    }
}

// === impl MeshSettings ===

/// Whether inbound accepts plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum MtlsMode {
    /// mTLS only.
    Strict,
    /// mTLS or plaintext.
    Permissive,
}

/// What happens to outbound traffic for destinations outside the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum OutboundPolicy {
    /// Refused unless an EgressPolicy allows it.
    RegistryOnly,
    /// Passed through.
    AllowAny,
}

/// Mesh-wide settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MeshSettings {
    /// Trust domain of the mesh.
    #[serde(serialize_with = "ser_display")]
    pub trust_domain: TrustDomain,
    /// Root namespace.
    pub root_namespace: String,
    /// mTLS mode.
    pub mtls_mode: MtlsMode,
    /// Outbound policy.
    pub outbound_policy: OutboundPolicy,
    /// Whether requests no ALLOW policy covers are allowed.
    pub default_allow: bool,
    /// Whether denial responses leave out the deciding policy's name.
    pub hide_denial_reasons: bool,
    /// Requested leaf lifetime, seconds.
    pub certificate_lifetime_seconds: u64,
    /// How request paths are normalised (and escaped slashes treated) before authorization.
    pub path: PathOptions,
}

impl TryFrom<&v1::MeshSettings> for MeshSettings {
    type Error = SnapshotError;
    fn try_from(m: &v1::MeshSettings) -> Result<Self, SnapshotError> {
        let resource = "MeshSettings";
        let trust_domain =
            TrustDomain::new(&m.trust_domain).map_err(|e| err(resource, "trust_domain", e))?;
        let mtls_mode = match v1::MtlsMode::try_from(m.mtls_mode) {
            Ok(v1::MtlsMode::Strict) => MtlsMode::Strict,
            Ok(v1::MtlsMode::Permissive) => MtlsMode::Permissive,
            _ => {
                return Err(err(
                    resource,
                    "mtls_mode",
                    format!("unknown value {}", m.mtls_mode),
                ));
            }
        };
        let outbound_policy = match v1::OutboundPolicy::try_from(m.outbound_policy) {
            Ok(v1::OutboundPolicy::RegistryOnly) => OutboundPolicy::RegistryOnly,
            Ok(v1::OutboundPolicy::AllowAny) => OutboundPolicy::AllowAny,
            _ => {
                return Err(err(
                    resource,
                    "outbound_policy",
                    format!("unknown value {}", m.outbound_policy),
                ));
            }
        };
        let default_allow = match v1::DefaultAuthorization::try_from(m.default_authorization) {
            Ok(v1::DefaultAuthorization::Deny) => false,
            Ok(v1::DefaultAuthorization::Allow) => true,
            _ => {
                return Err(err(
                    resource,
                    "default_authorization",
                    format!("unknown value {}", m.default_authorization),
                ));
            }
        };
        let normalization = match v1::PathNormalization::try_from(m.path_normalization) {
            // A control plane that predates the field: Istio's default.
            Ok(v1::PathNormalization::Unspecified | v1::PathNormalization::Base) => {
                PathNormalization::Base
            }
            Ok(v1::PathNormalization::MergeSlashes) => PathNormalization::MergeSlashes,
            Ok(v1::PathNormalization::DecodeAndMergeSlashes) => {
                PathNormalization::DecodeAndMergeSlashes
            }
            Err(_) => {
                return Err(err(
                    resource,
                    "path_normalization",
                    format!("unknown value {}", m.path_normalization),
                ));
            }
        };
        Ok(Self {
            path: PathOptions {
                normalization,
                reject_escaped_slashes: !m.allow_escaped_slashes,
            },
            trust_domain,
            root_namespace: m.root_namespace.clone(),
            mtls_mode,
            outbound_policy,
            default_allow,
            hide_denial_reasons: m.hide_denial_reasons,
            certificate_lifetime_seconds: m.certificate_lifetime_seconds,
        })
    }
}

/// Converts a trust bundle snapshot; the bundle's trust domain must be the mesh's.
pub fn trust_bundle(b: &v1::TrustBundle) -> Result<TrustBundle, SnapshotError> {
    let td =
        TrustDomain::new(&b.trust_domain).map_err(|e| err("TrustBundle", "trust_domain", e))?;
    TrustBundle::from_pem_list(td, &b.roots_pem).map_err(|e| err("TrustBundle", "roots_pem", e))
}

/// Serializes with `Display` (for identities in `/config`).
pub fn ser_display<T: std::fmt::Display, S: serde::Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Everything the proxy needs from discovery, complete and validated.
#[derive(Debug, Clone)]
pub struct MeshView {
    /// The local workload.
    pub workload: Arc<LocalWorkload>,
    /// Routing table.
    pub services: Arc<ServiceTable>,
    /// Roots peers must chain to.
    pub bundle: TrustBundle,
    /// The CA the control plane issues from now ("" for static configuration): a leaf
    /// from another one is renewed at once.
    pub issuer_fingerprint: Arc<str>,
    /// Mesh settings.
    pub settings: Arc<MeshSettings>,
    /// The compiled AuthorizationPolicies selecting this workload.
    pub authz: Arc<crate::authz::Authorizer>,
    /// Destinations outside the mesh this workload may reach (REGISTRY_ONLY).
    pub egress: Arc<crate::egress::EgressRules>,
    /// The NetworkPolicies of this workload (TCP connections in and out).
    pub netpol: Arc<crate::netpol::NetworkPolicies>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(address: &str, sa: &str) -> v1::Endpoint {
        v1::Endpoint {
            address: address.into(),
            proxy_port: 15006,
            spiffe_id: format!("spiffe://cluster.local/ns/shop/sa/{sa}"),
            workload: sa.into(),
        }
    }

    #[test]
    fn pick_allowed_chooses_only_among_allowed_endpoints() {
        let snapshot = v1::ServiceSnapshot {
            services: vec![v1::Service {
                name: "search".into(),
                namespace: "shop".into(),
                hostnames: vec!["search.shop".into()],
                ports: vec![v1::ServicePort {
                    name: "http".into(),
                    port: 80,
                    target_port: 8080,
                    protocol: v1::Protocol::Http as i32,
                }],
                endpoints: vec![
                    endpoint("10.77.1.2", "search"),
                    endpoint("10.77.1.3", "search"),
                    endpoint("10.77.1.4", "search"),
                ],
            }],
        };
        let table = ServiceTable::try_from(&snapshot).unwrap_or_else(|e| panic!("{e}"));
        let route = table
            .resolve("search.shop", 80)
            .unwrap_or_else(|| panic!("route"));
        let only: IpAddr = [10, 77, 1, 3].into();
        for _ in 0..6 {
            let picked = route.pick_allowed(|e| e.proxy_addr.ip() == only);
            assert_eq!(picked.map(|e| e.proxy_addr.ip()), Some(only));
        }
        assert!(route.pick_allowed(|_| false).is_none());
        // Every endpoint is reached when all are allowed.
        let mut seen: Vec<_> = (0..3)
            .filter_map(|_| route.pick_allowed(|_| true).map(|e| e.proxy_addr))
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn captured_destinations_resolve_by_cluster_ip_or_endpoint_address() {
        let snapshot = v1::ServiceSnapshot {
            services: vec![v1::Service {
                name: "search".into(),
                namespace: "shop".into(),
                hostnames: vec!["search.shop".into(), "10.96.0.11".into()],
                ports: vec![v1::ServicePort {
                    name: "http".into(),
                    port: 80,
                    target_port: 8080,
                    protocol: v1::Protocol::Http as i32,
                }],
                endpoints: vec![
                    endpoint("10.77.1.2", "search"),
                    endpoint("10.77.1.3", "search"),
                ],
            }],
        };
        let table = ServiceTable::try_from(&snapshot).unwrap_or_else(|e| panic!("{e}"));
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap_or_else(|e| panic!("{e}"));
        let vip = table
            .by_address(addr("10.96.0.11:80"))
            .map(|r| r.endpoints.len());
        assert_eq!(vip, Some(2));
        assert_eq!(
            table
                .by_address(addr("[::ffff:10.96.0.11]:80"))
                .map(|r| r.target_port),
            Some(8080)
        );
        let one = table
            .by_address(addr("10.77.1.3:8080"))
            .unwrap_or_else(|| panic!("endpoint"));
        assert_eq!(one.endpoints.len(), 1);
        assert_eq!(one.endpoints[0].proxy_addr, addr("10.77.1.3:15006"));
        assert_eq!(one.protocol, Protocol::Http1);
        // The Service port on a workload address, the target port on the cluster IP, and
        // anything else are not mesh destinations.
        assert!(table.by_address(addr("10.77.1.3:80")).is_none());
        assert!(table.by_address(addr("10.96.0.11:8080")).is_none());
        assert!(table.by_address(addr("10.77.1.4:8080")).is_none());
    }
}
