//! Checks of single documents, then of resources against each other, producing the model.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use palisade_certs::{SpiffeId, TrustDomain};
use serde_yaml_ng::Value;

use super::resources::{
    AuthorizationPolicyDoc, EgressPolicyDoc, MeshConfigDoc, Metadata, NamespaceDoc,
    NetworkPolicyDoc, PortSpec, ServiceDoc, ServicePortSpec, WorkloadDoc,
};
use super::{ConfigError, DocCtx, netpol, policy, typed};
use crate::model::{
    DefaultAuthorization, Endpoint, INBOUND_PORT_ANNOTATION, L4Protocol, MeshSettings,
    MeshSnapshot, MtlsMode, NamespacedName, NonTcpPort, OutboundTrafficPolicy, PROXY_INBOUND_PORT,
    PathNormalization, Protocol, Service, ServicePort, Source, Warning, Workload, WorkloadPort,
};
use crate::netpol::{NAMESPACE_NAME_LABEL, Namespace, NetworkPolicy};
use crate::policy::{AuthorizationPolicy, EgressPolicy};

/// Shortest certificate lifetime accepted: below it, renewal traffic dominates.
const MIN_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(5);
/// Longest certificate lifetime accepted: short-lived certificates are the revocation story.
const MAX_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// Where a port's protocol came from: an explicit one must agree with the workload's, a
/// default one is inherited from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProtocolFrom {
    AppProtocol,
    PortName,
    Default,
}

#[derive(Debug, Clone)]
struct WorkloadDraft {
    ctx: DocCtx,
    name: String,
    namespace: String,
    service_account: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    address: IpAddr,
    proxy_port: u16,
    ports: Vec<WorkloadPort>,
    non_tcp_ports: Vec<NonTcpPort>,
}

#[derive(Debug, Clone)]
struct ServicePortDraft {
    name: String,
    port: u16,
    target_port: Option<u16>,
    protocol: Protocol,
    protocol_from: ProtocolFrom,
}

#[derive(Debug, Clone)]
struct ServiceDraft {
    ctx: DocCtx,
    name: String,
    namespace: String,
    selector: BTreeMap<String, String>,
    cluster_ip: Option<IpAddr>,
    ports: Vec<ServicePortDraft>,
    /// In cluster mode: addresses Kubernetes reports not ready, left out of the endpoints.
    not_ready: std::collections::BTreeSet<IpAddr>,
}

/// Documents that passed their own checks, waiting for the cross-resource phase.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    seen: HashMap<(&'static str, NamespacedName), Source>,
    mesh_config: Option<(DocCtx, MeshSettings)>,
    workloads: Vec<WorkloadDraft>,
    services: Vec<ServiceDraft>,
    authorization_policies: BTreeMap<NamespacedName, AuthorizationPolicy>,
    egress_policies: BTreeMap<NamespacedName, EgressPolicy>,
    network_policies: BTreeMap<NamespacedName, NetworkPolicy>,
    namespaces: BTreeMap<String, Namespace>,
    /// Read from a cluster, where a Service may select no Pod (scaled to zero, mid-rollout)
    /// and Pods need not declare the ports they serve: both are normal there, not typos.
    pub cluster: bool,
}

impl Parsed {
    /// Records a (kind, namespace, name); a second definition is an error naming both.
    fn register(&mut self, ctx: &DocCtx, kind: &'static str, errors: &mut Vec<ConfigError>) {
        let key = (kind, ctx.key());
        if let Some(first) = self.seen.get(&key) {
            errors.push(ctx.error(
                Some("metadata.name"),
                format!("{kind} {} is already defined in {first}", ctx.key()),
            ));
        } else {
            self.seen.insert(key, ctx.source());
        }
    }

    pub fn workload(&mut self, ctx: &DocCtx, value: Value, errors: &mut Vec<ConfigError>) {
        let Some(doc) = typed::<WorkloadDoc>(ctx, value, errors) else {
            return;
        };
        let before = errors.len();
        let Some((namespace, name)) = check_metadata(ctx, &doc.metadata, errors) else {
            return;
        };
        self.register(ctx, "Workload", errors);
        let service_account = doc
            .spec
            .service_account
            .unwrap_or_else(|| "default".to_owned());
        if let Err(why) = dns1123_subdomain(&service_account) {
            errors.push(ctx.error(
                Some("spec.serviceAccount"),
                format!("{service_account:?} {why}"),
            ));
        }
        let address = match check_address(&doc.spec.address) {
            Ok(a) => Some(a),
            Err(why) => {
                errors.push(ctx.error(Some("spec.address"), why));
                None
            }
        };
        let (ports, non_tcp_ports) = check_workload_ports(ctx, &doc.spec.ports, errors);
        let proxy_port = match doc.metadata.annotations.get(INBOUND_PORT_ANNOTATION) {
            None => PROXY_INBOUND_PORT,
            Some(text) => match text.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => {
                    errors.push(ctx.error(
                        Some(&format!("metadata.annotations[{INBOUND_PORT_ANNOTATION}]")),
                        format!("{text:?} is not a port (1-65535)"),
                    ));
                    PROXY_INBOUND_PORT
                }
            },
        };
        if let (Some(address), true) = (address, errors.len() == before) {
            self.workloads.push(WorkloadDraft {
                ctx: ctx.clone(),
                name,
                namespace,
                service_account,
                labels: doc.metadata.labels,
                annotations: doc.metadata.annotations,
                address,
                proxy_port,
                ports,
                non_tcp_ports,
            });
        }
    }

    pub fn service(&mut self, ctx: &DocCtx, value: Value, errors: &mut Vec<ConfigError>) {
        let Some(doc) = typed::<ServiceDoc>(ctx, value, errors) else {
            return;
        };
        let before = errors.len();
        let Some((namespace, name)) = check_metadata(ctx, &doc.metadata, errors) else {
            return;
        };
        self.register(ctx, "Service", errors);
        let selector = doc.spec.selector.unwrap_or_default();
        if selector.is_empty() {
            errors.push(ctx.error(
                Some("spec.selector"),
                "is required and must not be empty (it chooses the Workloads behind the Service)",
            ));
        }
        if doc.spec.ports.is_empty() {
            errors.push(ctx.error(Some("spec.ports"), "a Service needs at least one port"));
        }
        let ports = check_service_ports(ctx, &doc.spec.ports, errors);
        let cluster_ip = match doc.spec.cluster_ip.as_deref() {
            None | Some("None") => None,
            Some(text) => match check_address(text) {
                Ok(ip) => Some(ip),
                Err(why) => {
                    errors.push(ctx.error(Some("spec.clusterIP"), why));
                    None
                }
            },
        };
        // Set by the Kubernetes source from EndpointSlices; a directory has no such view.
        let not_ready = if self.cluster {
            doc.metadata
                .annotations
                .get(super::NOT_READY_ANNOTATION)
                .map(|list| {
                    list.split(',')
                        .filter_map(|a| a.trim().parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Default::default()
        };
        if errors.len() == before {
            self.services.push(ServiceDraft {
                ctx: ctx.clone(),
                name,
                namespace,
                selector,
                cluster_ip,
                ports,
                not_ready,
            });
        }
    }

    pub fn mesh_config(&mut self, ctx: &DocCtx, value: Value, errors: &mut Vec<ConfigError>) {
        let Some(doc) = typed::<MeshConfigDoc>(ctx, value, errors) else {
            return;
        };
        if let Some((first, _)) = &self.mesh_config {
            errors.push(ctx.error(
                None,
                format!(
                    "a mesh has one MeshConfig, and one is already defined in {}",
                    first.source()
                ),
            ));
            return;
        }
        let before = errors.len();
        if check_metadata(ctx, &doc.metadata, errors).is_none() {
            return;
        }
        let spec = doc.spec;
        let mut settings = MeshSettings::default();
        if let Some(td) = &spec.trust_domain {
            match TrustDomain::new(td) {
                Ok(td) => settings.trust_domain = td,
                Err(e) => errors.push(ctx.error(Some("spec.trustDomain"), e.to_string())),
            }
        }
        if let Some(ns) = spec.root_namespace {
            match dns1123_label(&ns) {
                Ok(()) => settings.root_namespace = ns,
                Err(why) => {
                    errors.push(ctx.error(Some("spec.rootNamespace"), format!("{ns:?} {why}")))
                }
            }
        }
        if let Some(v) = spec.default_authorization.as_deref() {
            match v {
                "deny" => settings.default_authorization = DefaultAuthorization::Deny,
                "allow" => settings.default_authorization = DefaultAuthorization::Allow,
                other => errors.push(ctx.error(
                    Some("spec.defaultAuthorization"),
                    format!("{other:?} is not valid (expected deny or allow)"),
                )),
            }
        }
        if let Some(mode) = spec.mtls.and_then(|m| m.mode) {
            match mode.as_str() {
                "STRICT" => settings.mtls_mode = MtlsMode::Strict,
                "PERMISSIVE" => settings.mtls_mode = MtlsMode::Permissive,
                other => errors.push(ctx.error(
                    Some("spec.mtls.mode"),
                    format!("{other:?} is not valid (expected STRICT or PERMISSIVE)"),
                )),
            }
        }
        if let Some(mode) = spec.outbound_traffic_policy.and_then(|m| m.mode) {
            match mode.as_str() {
                "REGISTRY_ONLY" => {
                    settings.outbound_traffic_policy = OutboundTrafficPolicy::RegistryOnly
                }
                "ALLOW_ANY" => settings.outbound_traffic_policy = OutboundTrafficPolicy::AllowAny,
                other => errors.push(ctx.error(
                    Some("spec.outboundTrafficPolicy.mode"),
                    format!("{other:?} is not valid (expected REGISTRY_ONLY or ALLOW_ANY)"),
                )),
            }
        }
        if let Some(lifetime) = &spec.certificate_lifetime {
            match parse_duration(lifetime).and_then(check_lifetime) {
                Ok(d) => settings.certificate_lifetime = d,
                Err(why) => errors.push(ctx.error(Some("spec.certificateLifetime"), why)),
            }
        }
        if let Some(hide) = spec.hide_denial_reasons {
            settings.hide_denial_reasons = hide;
        }
        if let Some(paths) = spec.path_normalization {
            match paths.normalization.as_deref() {
                None | Some("DEFAULT" | "BASE") => {
                    settings.path_normalization = PathNormalization::Base
                }
                Some("MERGE_SLASHES") => {
                    settings.path_normalization = PathNormalization::MergeSlashes
                }
                Some("DECODE_AND_MERGE_SLASHES") => {
                    settings.path_normalization = PathNormalization::DecodeAndMergeSlashes
                }
                Some("NONE") => errors.push(
                    ctx.error(
                        Some("spec.pathNormalization.normalization"),
                        "NONE is not supported: authorization would match paths the app reads \
                     differently (CVE-2021-31920); use BASE, MERGE_SLASHES or \
                     DECODE_AND_MERGE_SLASHES"
                            .to_owned(),
                    ),
                ),
                Some(other) => errors.push(ctx.error(
                    Some("spec.pathNormalization.normalization"),
                    format!(
                        "{other:?} is not valid (expected DEFAULT, BASE, MERGE_SLASHES or \
                         DECODE_AND_MERGE_SLASHES)"
                    ),
                )),
            }
            if let Some(reject) = paths.reject_escaped_slashes {
                settings.reject_escaped_slashes = reject;
            }
        }
        if errors.len() == before {
            self.mesh_config = Some((ctx.clone(), settings));
        } else {
            // Keeps a second MeshConfig reported even when the first one is invalid.
            self.mesh_config = Some((ctx.clone(), MeshSettings::default()));
        }
    }

    pub fn authorization_policy(
        &mut self,
        ctx: &DocCtx,
        value: Value,
        errors: &mut Vec<ConfigError>,
    ) {
        let Some(doc) = typed::<AuthorizationPolicyDoc>(ctx, value, errors) else {
            return;
        };
        if let Some(p) = policy::authorization_policy(ctx, doc, errors) {
            self.register(ctx, "AuthorizationPolicy", errors);
            self.authorization_policies.insert(p.key(), p);
        }
    }

    pub fn egress_policy(&mut self, ctx: &DocCtx, value: Value, errors: &mut Vec<ConfigError>) {
        let Some(doc) = typed::<EgressPolicyDoc>(ctx, value, errors) else {
            return;
        };
        if let Some(p) = policy::egress_policy(ctx, doc, errors) {
            self.register(ctx, "EgressPolicy", errors);
            self.egress_policies.insert(p.key(), p);
        }
    }

    pub fn network_policy(&mut self, ctx: &DocCtx, value: Value, errors: &mut Vec<ConfigError>) {
        let Some(doc) = typed::<NetworkPolicyDoc>(ctx, value, errors) else {
            return;
        };
        if let Some(p) = netpol::network_policy(ctx, doc, errors) {
            self.register(ctx, "NetworkPolicy", errors);
            self.network_policies.insert(p.key(), p);
        }
    }

    pub fn namespace(&mut self, ctx: &DocCtx, value: Value, errors: &mut Vec<ConfigError>) {
        let Some(doc) = typed::<NamespaceDoc>(ctx, value, errors) else {
            return;
        };
        if let Some(ns) = netpol::namespace(ctx, doc, errors) {
            self.register(ctx, "Namespace", errors);
            self.namespaces.insert(ns.name.clone(), ns);
        }
    }

    /// The cross-resource phase: identities, unique addresses, selectors, target ports and
    /// protocols; returns the resolved snapshot or every error found.
    /// Moves the named Workloads to their assigned addresses (before the cross-resource
    /// checks, which then see the addresses in force).
    pub fn assign_addresses(&mut self, assigned: &super::AddressAssignments) {
        if assigned.is_empty() {
            return;
        }
        for w in &mut self.workloads {
            if let Some(ip) = assigned.get(&NamespacedName::new(&w.namespace, &w.name)) {
                w.address = *ip;
            }
        }
    }

    pub fn build(self) -> Result<MeshSnapshot, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let (settings, settings_source) = match self.mesh_config {
            Some((ctx, settings)) => (settings, Some(ctx.source())),
            None => (MeshSettings::default(), None),
        };
        let td = &settings.trust_domain;

        let mut workloads: BTreeMap<NamespacedName, Workload> = BTreeMap::new();
        let mut addresses: HashMap<IpAddr, (NamespacedName, Source)> = HashMap::new();
        for w in self.workloads {
            let identity = match SpiffeId::for_service_account(td, &w.namespace, &w.service_account)
            {
                Ok(id) => id,
                Err(e) => {
                    errors.push(w.ctx.error(
                        Some("spec.serviceAccount"),
                        format!("does not form a valid SPIFFE ID: {e}"),
                    ));
                    continue;
                }
            };
            let key = w.ctx.key();
            if let Some((other, source)) = addresses.get(&w.address) {
                errors.push(w.ctx.error(
                    Some("spec.address"),
                    format!(
                        "address {} is already used by Workload {other} ({source})",
                        w.address
                    ),
                ));
                continue;
            }
            addresses.insert(w.address, (key.clone(), w.ctx.source()));
            workloads.insert(
                key,
                Workload {
                    source: w.ctx.source(),
                    name: w.name,
                    namespace: w.namespace,
                    service_account: w.service_account,
                    labels: w.labels,
                    annotations: w.annotations,
                    address: w.address,
                    proxy_port: w.proxy_port,
                    ports: w.ports,
                    non_tcp_ports: w.non_tcp_ports,
                    identity,
                },
            );
        }

        let mut services = BTreeMap::new();
        for s in self.services {
            if let Some(service) = resolve_service(&s, &workloads, td, self.cluster, &mut errors) {
                services.insert(s.ctx.key(), service);
            }
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        // Every namespace of a workload exists, as a Pod's namespace does in a cluster.
        let mut namespaces = self.namespaces;
        for w in workloads.values() {
            namespaces
                .entry(w.namespace.clone())
                .or_insert_with(|| Namespace {
                    name: w.namespace.clone(),
                    labels: BTreeMap::from([(
                        NAMESPACE_NAME_LABEL.to_owned(),
                        w.namespace.clone(),
                    )]),
                    source: None,
                });
        }
        let warnings = self
            .network_policies
            .values()
            .filter(|p| p.has_non_tcp_ports())
            .map(non_tcp_warning)
            .collect();
        Ok(MeshSnapshot {
            settings,
            settings_source,
            workloads,
            services,
            authorization_policies: self.authorization_policies,
            egress_policies: self.egress_policies,
            network_policies: self.network_policies,
            namespaces,
            warnings,
        })
    }
}

/// The sidecars carry TCP only: a NetworkPolicy port of another protocol is compiled and
/// sent, and never enforced by them.
fn non_tcp_warning(p: &NetworkPolicy) -> Warning {
    let (field, protocol) = p
        .ingress
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("spec.ingress[{i}]"), r))
        .chain(
            p.egress
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.egress[{i}]"), r)),
        )
        .find_map(|(at, r)| {
            r.ports
                .iter()
                .position(|port| port.protocol != L4Protocol::Tcp)
                .map(|j| (format!("{at}.ports[{j}].protocol"), r.ports[j].protocol))
        })
        .unwrap_or_else(|| ("spec".to_owned(), L4Protocol::Udp));
    Warning {
        source: p.source.clone(),
        resource: format!("NetworkPolicy {}", p.key()),
        field,
        message: format!(
            "{protocol} (and any other non-TCP) ports are not enforced by the sidecar: non-TCP \
             traffic stays denied by the capture rules (palisade init) except what they let \
             through (DNS, allowed UDP ports)"
        ),
    }
}

fn selector_text(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn resolve_service(
    s: &ServiceDraft,
    workloads: &BTreeMap<NamespacedName, Workload>,
    td: &TrustDomain,
    cluster: bool,
    errors: &mut Vec<ConfigError>,
) -> Option<Service> {
    let selected: Vec<&Workload> = workloads
        .values()
        .filter(|w| w.namespace == s.namespace && w.matches(&s.selector))
        .filter(|w| !s.not_ready.contains(&w.address))
        .collect();
    if selected.is_empty() && !cluster {
        errors.push(s.ctx.error(
            Some("spec.selector"),
            format!(
                "selects no Workload in namespace {} (selector {})",
                s.namespace,
                selector_text(&s.selector)
            ),
        ));
        return None;
    }
    let before = errors.len();
    let mut ports = Vec::with_capacity(s.ports.len());
    for (i, p) in s.ports.iter().enumerate() {
        let target = p.target_port.unwrap_or(p.port);
        let mut inherited: Option<(Protocol, &Workload)> = None;
        for w in &selected {
            let Some(wp) = w.port(target) else {
                if cluster && !w.non_tcp_ports.iter().any(|p| p.port == target) {
                    // An undeclared port: the Service's own protocol applies.
                    continue;
                }
                if let Some(other) = w.non_tcp_ports.iter().find(|p| p.port == target) {
                    errors.push(s.ctx.error(
                        Some(&format!("spec.ports[{i}].targetPort")),
                        format!(
                            "port {target} of Workload {} is {}; a Service carries TCP only",
                            w.key(),
                            other.protocol
                        ),
                    ));
                    continue;
                }
                let exposes = if w.ports.is_empty() {
                    "it exposes no ports".to_owned()
                } else {
                    let list: Vec<String> = w.ports.iter().map(|p| p.port.to_string()).collect();
                    format!("it exposes {}", list.join(", "))
                };
                let defaulted = if p.target_port.is_none() {
                    "; targetPort defaults to port"
                } else {
                    ""
                };
                errors.push(s.ctx.error(
                    Some(&format!("spec.ports[{i}].targetPort")),
                    format!(
                        "port {target} is not exposed by Workload {} ({exposes}{defaulted})",
                        w.key()
                    ),
                ));
                continue;
            };
            match p.protocol_from {
                ProtocolFrom::Default => match inherited {
                    None => inherited = Some((wp.protocol, w)),
                    Some((protocol, other)) if protocol != wp.protocol => {
                        errors.push(s.ctx.error(
                            Some(&format!("spec.ports[{i}]")),
                            format!(
                                "the selected Workloads disagree on port {target}: {} speaks \
                                 {protocol}, {} speaks {}; set appProtocol",
                                other.key(),
                                w.key(),
                                wp.protocol
                            ),
                        ));
                    }
                    Some(_) => {}
                },
                from if wp.protocol != p.protocol => {
                    let field = match from {
                        ProtocolFrom::AppProtocol => format!("spec.ports[{i}].appProtocol"),
                        _ => format!("spec.ports[{i}].name"),
                    };
                    errors.push(s.ctx.error(
                        Some(&field),
                        format!(
                            "protocol {} conflicts with port {target} of Workload {}, which \
                             speaks {}",
                            p.protocol,
                            w.key(),
                            wp.protocol
                        ),
                    ));
                }
                _ => {}
            }
        }
        let protocol = match (p.protocol_from, inherited) {
            (ProtocolFrom::Default, Some((protocol, _))) => protocol,
            _ => p.protocol,
        };
        ports.push(ServicePort {
            name: p.name.clone(),
            port: p.port,
            target_port: target,
            protocol,
        });
    }
    if errors.len() != before {
        return None;
    }
    let endpoints = selected
        .iter()
        .map(|w| Endpoint {
            workload: w.name.clone(),
            namespace: w.namespace.clone(),
            address: w.address,
            proxy_port: w.proxy_port,
            identity: w.identity.clone(),
        })
        .collect();
    let (name, ns) = (&s.name, &s.namespace);
    Some(Service {
        name: name.clone(),
        namespace: ns.clone(),
        selector: s.selector.clone(),
        ports,
        endpoints,
        hostnames: [
            name.clone(),
            format!("{name}.{ns}"),
            format!("{name}.{ns}.svc"),
            format!("{name}.{ns}.svc.{td}"),
        ]
        .into_iter()
        // A cluster IP routes like a name: clients may address the Service by it.
        .chain(s.cluster_ip.map(|ip| ip.to_string()))
        .collect(),
        cluster_ip: s.cluster_ip,
        source: s.ctx.source(),
    })
}

/// Checks `metadata` and returns (namespace, name).
pub(crate) fn check_metadata(
    ctx: &DocCtx,
    meta: &Metadata,
    errors: &mut Vec<ConfigError>,
) -> Option<(String, String)> {
    check_metadata_named(ctx, meta, dns1123_label, errors)
}

/// [`check_metadata`], with the rule names must follow (Kubernetes lets some kinds, such
/// as NetworkPolicy, use DNS-1123 subdomains).
pub(crate) fn check_metadata_named(
    ctx: &DocCtx,
    meta: &Metadata,
    name_rule: fn(&str) -> Result<(), &'static str>,
    errors: &mut Vec<ConfigError>,
) -> Option<(String, String)> {
    let before = errors.len();
    let name = match meta.name.as_deref() {
        None | Some("") => {
            errors.push(ctx.error(Some("metadata.name"), "is required"));
            String::new()
        }
        Some(name) => {
            if let Err(why) = name_rule(name) {
                errors.push(ctx.error(Some("metadata.name"), format!("{name:?} {why}")));
            }
            name.to_owned()
        }
    };
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    if let Err(why) = dns1123_label(&namespace) {
        errors.push(ctx.error(Some("metadata.namespace"), format!("{namespace:?} {why}")));
    }
    for key in meta.labels.keys() {
        if key.is_empty() {
            errors.push(ctx.error(Some("metadata.labels"), "a label key is empty"));
        }
    }
    (errors.len() == before).then_some((namespace, name))
}

pub(crate) fn dns1123_label(s: &str) -> Result<(), &'static str> {
    const WHY: &str = "is not a DNS-1123 label (lower-case letters, digits and '-', starting \
                       and ending with a letter or digit, at most 63 characters)";
    let bytes = s.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if ok { Ok(()) } else { Err(WHY) }
}

pub(crate) fn dns1123_subdomain(s: &str) -> Result<(), &'static str> {
    const WHY: &str = "is not a DNS-1123 subdomain (dot-separated lower-case labels, at most \
                       253 characters)";
    if s.is_empty() || s.len() > 253 || s.split('.').any(|l| dns1123_label(l).is_err()) {
        Err(WHY)
    } else {
        Ok(())
    }
}

fn check_address(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address (IPv4 or IPv6 literal)"))?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!("{ip} cannot be a workload address"));
    }
    Ok(ip)
}

fn check_port_number(
    ctx: &DocCtx,
    field: &str,
    port: i64,
    errors: &mut Vec<ConfigError>,
) -> Option<u16> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            errors.push(ctx.error(
                Some(field),
                format!("port {port} is out of range (1 to 65535)"),
            ));
            None
        }
    }
}

/// The protocol named by an `appProtocol` value (case-insensitive).
fn parse_app_protocol(value: &str) -> Option<Protocol> {
    match value.to_ascii_lowercase().as_str() {
        "http" => Some(Protocol::Http),
        "http2" | "h2c" | "kubernetes.io/h2c" => Some(Protocol::Http2),
        "grpc" => Some(Protocol::Grpc),
        "tcp" => Some(Protocol::Tcp),
        _ => None,
    }
}

/// The protocol a port name implies, Istio style: `<protocol>` or `<protocol>-<suffix>`.
fn protocol_from_name(name: &str) -> Option<Protocol> {
    let prefix = name.split('-').next().unwrap_or(name).to_ascii_lowercase();
    match prefix.as_str() {
        "http" => Some(Protocol::Http),
        "http2" => Some(Protocol::Http2),
        "grpc" => Some(Protocol::Grpc),
        "tcp" => Some(Protocol::Tcp),
        _ => None,
    }
}

/// Checks the name, L4 protocol and appProtocol shared by Workload and Service ports.
fn check_port_common(
    ctx: &DocCtx,
    i: usize,
    name: Option<&str>,
    app_protocol: Option<&str>,
    l4: Option<&str>,
    allow_non_tcp: bool,
    errors: &mut Vec<ConfigError>,
) -> (String, L4Protocol, Protocol, ProtocolFrom) {
    let name = name.unwrap_or_default().to_owned();
    if !name.is_empty()
        && let Err(why) = dns1123_label(&name)
    {
        errors.push(ctx.error(
            Some(&format!("spec.ports[{i}].name")),
            format!("{name:?} {why}"),
        ));
    }
    let transport = match l4.map(|text| (text, L4Protocol::parse(text))) {
        None => L4Protocol::Tcp,
        Some((_, Some(L4Protocol::Tcp))) => L4Protocol::Tcp,
        // A workload may declare UDP/SCTP ports so NetworkPolicy can name them; they are
        // never proxied. A Service port is where the mesh routes, so TCP only.
        Some((_, Some(other))) if allow_non_tcp => {
            if app_protocol.is_some() {
                errors.push(ctx.error(
                    Some(&format!("spec.ports[{i}].appProtocol")),
                    format!("is for TCP ports; this port is {other}"),
                ));
            }
            other
        }
        Some((text, Some(_))) => {
            errors.push(ctx.error(
                Some(&format!("spec.ports[{i}].protocol")),
                format!("{text:?} is not supported (the mesh carries TCP only)"),
            ));
            L4Protocol::Tcp
        }
        Some((text, None)) => {
            let expected = if allow_non_tcp {
                "TCP, UDP or SCTP"
            } else {
                "TCP; the mesh carries TCP only"
            };
            errors.push(ctx.error(
                Some(&format!("spec.ports[{i}].protocol")),
                format!("unknown protocol {text:?} (expected {expected})"),
            ));
            L4Protocol::Tcp
        }
    };
    let (protocol, from) = match app_protocol {
        Some(value) => match parse_app_protocol(value) {
            Some(p) => (p, ProtocolFrom::AppProtocol),
            None => {
                errors.push(ctx.error(
                    Some(&format!("spec.ports[{i}].appProtocol")),
                    format!(
                        "unknown appProtocol {value:?} (expected http, http2, h2c, \
                         kubernetes.io/h2c, grpc or tcp)"
                    ),
                ));
                (Protocol::Http, ProtocolFrom::AppProtocol)
            }
        },
        None => match protocol_from_name(&name) {
            Some(p) => (p, ProtocolFrom::PortName),
            None => (Protocol::Http, ProtocolFrom::Default),
        },
    };
    (name, transport, protocol, from)
}

/// Reports the second use of a port number or name within one resource.
fn check_unique(
    ctx: &DocCtx,
    i: usize,
    name: &str,
    port: (u16, L4Protocol),
    seen_ports: &mut HashMap<(u16, L4Protocol), usize>,
    seen_names: &mut HashMap<String, usize>,
    errors: &mut Vec<ConfigError>,
) {
    // The same number may be open for TCP and for UDP (DNS is), not twice for one.
    if let Some(first) = seen_ports.insert(port, i) {
        errors.push(ctx.error(
            Some(&format!("spec.ports[{i}].port")),
            match port.1 {
                L4Protocol::Tcp => {
                    format!("port {} is listed twice (also spec.ports[{first}])", port.0)
                }
                other => format!(
                    "port {}/{other} is listed twice (also spec.ports[{first}])",
                    port.0
                ),
            },
        ));
    }
    if !name.is_empty()
        && let Some(first) = seen_names.insert(name.to_owned(), i)
    {
        errors.push(ctx.error(
            Some(&format!("spec.ports[{i}].name")),
            format!("port name {name:?} is used twice (also spec.ports[{first}])"),
        ));
    }
}

fn check_workload_ports(
    ctx: &DocCtx,
    ports: &[PortSpec],
    errors: &mut Vec<ConfigError>,
) -> (Vec<WorkloadPort>, Vec<NonTcpPort>) {
    let mut out = Vec::with_capacity(ports.len());
    let mut non_tcp = Vec::new();
    let (mut seen_ports, mut seen_names) = (HashMap::new(), HashMap::new());
    for (i, p) in ports.iter().enumerate() {
        let number = check_port_number(ctx, &format!("spec.ports[{i}].port"), p.port.0, errors);
        let (name, transport, protocol, _) = check_port_common(
            ctx,
            i,
            p.name.as_deref(),
            p.app_protocol.as_deref(),
            p.protocol.as_deref(),
            true,
            errors,
        );
        if let Some(port) = number {
            check_unique(
                ctx,
                i,
                &name,
                (port, transport),
                &mut seen_ports,
                &mut seen_names,
                errors,
            );
            if transport == L4Protocol::Tcp {
                out.push(WorkloadPort {
                    name,
                    port,
                    protocol,
                });
            } else {
                non_tcp.push(NonTcpPort {
                    name,
                    port,
                    protocol: transport,
                });
            }
        }
    }
    (out, non_tcp)
}

fn check_service_ports(
    ctx: &DocCtx,
    ports: &[ServicePortSpec],
    errors: &mut Vec<ConfigError>,
) -> Vec<ServicePortDraft> {
    let mut out = Vec::with_capacity(ports.len());
    let (mut seen_ports, mut seen_names) = (HashMap::new(), HashMap::new());
    for (i, p) in ports.iter().enumerate() {
        let number = check_port_number(ctx, &format!("spec.ports[{i}].port"), p.port.0, errors);
        let target = p
            .target_port
            .map(|t| check_port_number(ctx, &format!("spec.ports[{i}].targetPort"), t.0, errors));
        let (name, _, protocol, protocol_from) = check_port_common(
            ctx,
            i,
            p.name.as_deref(),
            p.app_protocol.as_deref(),
            p.protocol.as_deref(),
            false,
            errors,
        );
        if let Some(port) = number {
            check_unique(
                ctx,
                i,
                &name,
                (port, L4Protocol::Tcp),
                &mut seen_ports,
                &mut seen_names,
                errors,
            );
            out.push(ServicePortDraft {
                name,
                port,
                target_port: target.flatten(),
                protocol,
                protocol_from,
            });
        }
    }
    out
}

/// Parses a duration such as `24h`, `90m`, `30s` or `1h30m` (Go style, units h, m, s).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {text:?}: expected numbers with units h, m or s, e.g. 24h, 90m, \
             30s or 1h30m"
        )
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "h" => 3600,
            "m" => 60,
            "s" => 1,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = value
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    Ok(Duration::from_secs(total))
}

fn check_lifetime(d: Duration) -> Result<Duration, String> {
    if d < MIN_CERTIFICATE_LIFETIME {
        Err(format!(
            "{}s is shorter than the minimum of 5s",
            d.as_secs()
        ))
    } else if d > MAX_CERTIFICATE_LIFETIME {
        Err(format!(
            "{}s is longer than the maximum of 90 days",
            d.as_secs()
        ))
    } else {
        Ok(d)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m5s"), Ok(Duration::from_secs(5405)));
        for bad in [
            "",
            "h",
            "10",
            "10d",
            "1.5h",
            "-1h",
            "10 s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(check_lifetime(Duration::from_secs(4)).is_err());
        assert!(check_lifetime(Duration::from_secs(91 * 86400)).is_err());
        assert!(check_lifetime(Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn protocols() {
        assert_eq!(parse_app_protocol("HTTP"), Some(Protocol::Http));
        assert_eq!(
            parse_app_protocol("kubernetes.io/h2c"),
            Some(Protocol::Http2)
        );
        assert_eq!(parse_app_protocol("h2c"), Some(Protocol::Http2));
        assert_eq!(parse_app_protocol("gRPC"), Some(Protocol::Grpc));
        assert_eq!(parse_app_protocol("udp"), None);
        assert_eq!(protocol_from_name("http"), Some(Protocol::Http));
        assert_eq!(protocol_from_name("http-web"), Some(Protocol::Http));
        assert_eq!(protocol_from_name("http2-api"), Some(Protocol::Http2));
        assert_eq!(protocol_from_name("grpc"), Some(Protocol::Grpc));
        assert_eq!(protocol_from_name("tcp-db"), Some(Protocol::Tcp));
        assert_eq!(protocol_from_name("httpx"), None);
        assert_eq!(protocol_from_name("web"), None);
    }

    #[test]
    fn names() {
        assert!(dns1123_label("shop").is_ok());
        assert!(dns1123_label("a-1").is_ok());
        for bad in ["", "Shop", "-a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(dns1123_label(bad).is_err(), "{bad:?}");
        }
        assert!(dns1123_subdomain("a.b-c").is_ok());
        assert!(dns1123_subdomain("a..b").is_err());
    }

    #[test]
    fn addresses() {
        assert!(check_address("127.0.1.2").is_ok());
        assert!(check_address("fd00::2").is_ok());
        assert!(check_address("0.0.0.0").is_err());
        assert!(check_address("search").is_err());
    }
}
