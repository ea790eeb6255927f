//! Kubernetes NetworkPolicy (`networking.k8s.io/v1`): the validated model, and its
//! compilation for one workload into the `NetworkPolicySnapshot` its proxy receives.
//!
//! The model keeps the API's distinctions that change meaning (an absent or empty `from`
//! is every source, an absent or empty `ports` every port); the loader has already
//! applied the API server's defaults (policyTypes, TCP). Compilation resolves selectors
//! against the mesh's workloads and namespaces, so the proxy compares only addresses,
//! identities and ports.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnet::IpNet;
use palisade_proto::v1 as pb;

use crate::model::{L4Protocol, MeshSnapshot, NamespacedName, Source, Workload};

/// The label Kubernetes sets on every Namespace to its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn l4_proto(p: L4Protocol) -> pb::L4Protocol {
    match p {
        L4Protocol::Tcp => pb::L4Protocol::Tcp,
        L4Protocol::Udp => pb::L4Protocol::Udp,
        L4Protocol::Sctp => pb::L4Protocol::Sctp,
    }
}

/// One `matchExpressions` requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRequirement {
    /// The label is set to one of the values.
    In(String, BTreeSet<String>),
    /// The label is unset, or set to none of the values.
    NotIn(String, BTreeSet<String>),
    /// The label is set, to any value.
    Exists(String),
    /// The label is unset.
    DoesNotExist(String),
}

impl LabelRequirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            LabelRequirement::In(key, values) => {
                labels.get(key).is_some_and(|v| values.contains(v))
            }
            LabelRequirement::NotIn(key, values) => {
                labels.get(key).is_none_or(|v| !values.contains(v))
            }
            LabelRequirement::Exists(key) => labels.contains_key(key),
            LabelRequirement::DoesNotExist(key) => !labels.contains_key(key),
        }
    }
}

/// A Kubernetes label selector: every `matchLabels` entry and every requirement must hold;
/// an empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// Labels that must be set to these values.
    pub match_labels: BTreeMap<String, String>,
    /// `matchExpressions`, in order.
    pub match_expressions: Vec<LabelRequirement>,
}

impl LabelSelector {
    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

/// A `from`/`to` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkPeer {
    /// `podSelector` and/or `namespaceSelector` (at least one is set): the pods matching
    /// `pods` in the namespaces matching `namespaces`; no namespace selector means the
    /// policy's own namespace, no pod selector every pod.
    Selector {
        /// `podSelector`.
        pods: Option<LabelSelector>,
        /// `namespaceSelector`.
        namespaces: Option<LabelSelector>,
    },
    /// `ipBlock`.
    IpBlock {
        /// Canonical (host bits cleared).
        cidr: IpNet,
        /// Canonical blocks strictly inside `cidr`.
        except: Vec<IpNet>,
    },
}

/// The `port` of a `ports[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyPort {
    /// `port` to `endPort` inclusive (`first == last` without `endPort`).
    Range {
        /// `port`.
        first: u16,
        /// `endPort`, or `port`.
        last: u16,
    },
    /// A named port of the pod (the destination's for ingress and egress alike).
    Named(String),
}

/// A `ports[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicyPort {
    /// `protocol` (TCP when not written).
    pub protocol: L4Protocol,
    /// `port`; `None` is every port of the protocol.
    pub port: Option<PolicyPort>,
}

/// An `ingress[]` or `egress[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPolicyRule {
    /// `from`/`to`; empty (absent or `[]`) is every peer.
    pub peers: Vec<NetworkPeer>,
    /// `ports`; empty (absent or `[]`) is every port.
    pub ports: Vec<NetworkPolicyPort>,
}

/// A validated NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Namespace; the policy selects pods of this namespace only.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `podSelector` (empty: every pod of the namespace).
    pub pod_selector: LabelSelector,
    /// `policyTypes` includes Ingress (after the API server's defaulting).
    pub ingress_type: bool,
    /// `policyTypes` includes Egress (after the API server's defaulting).
    pub egress_type: bool,
    /// `ingress` rules (empty: none allowed).
    pub ingress: Vec<NetworkPolicyRule>,
    /// `egress` rules (empty: none allowed).
    pub egress: Vec<NetworkPolicyRule>,
    /// Where it was defined.
    pub source: Source,
}

impl NetworkPolicy {
    /// The `namespace/name` key.
    pub fn key(&self) -> NamespacedName {
        NamespacedName::new(&self.namespace, &self.name)
    }

    /// Whether the policy selects `workload` (same namespace, podSelector matches).
    pub fn selects(&self, workload: &Workload) -> bool {
        workload.namespace == self.namespace && self.pod_selector.matches(&workload.labels)
    }

    /// Whether any rule names a UDP or SCTP port, which no sidecar enforces.
    pub fn has_non_tcp_ports(&self) -> bool {
        self.ingress
            .iter()
            .chain(&self.egress)
            .flat_map(|r| &r.ports)
            .any(|p| p.protocol != L4Protocol::Tcp)
    }
}

/// A Namespace as NetworkPolicy sees it: its labels, `kubernetes.io/metadata.name`
/// included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Where it was defined (`None`: implied by a workload).
    pub source: Option<Source>,
}

// === Compilation ===

/// One direction of one policy, each rule with the workloads its selector peers select.
type Resolved<'a> = (
    &'a NetworkPolicy,
    Vec<(&'a NetworkPolicyRule, Vec<&'a Workload>)>,
);

/// Which workloads each NetworkPolicy rule's selector peers select, and which workloads
/// have each named egress port. Neither depends on the workload a snapshot is for, so it is
/// resolved once per configuration and shared by every workload's snapshot: resolving it
/// per snapshot scanned every workload for every workload, quadratic in the mesh's size.
#[derive(Debug, Default)]
pub(crate) struct ResolvedPeers {
    /// By (policy, ingress rather than egress, rule index), in (namespace, name) order.
    rules: HashMap<(NamespacedName, bool, usize), Vec<NamespacedName>>,
    /// By (port name, protocol): the workloads with such a port, in (namespace, name) order.
    named_ports: HashMap<(String, L4Protocol), Vec<NamespacedName>>,
}

impl ResolvedPeers {
    /// Resolves every rule of every NetworkPolicy of `snapshot` against its workloads.
    pub(crate) fn new(snapshot: &MeshSnapshot) -> Self {
        let mut resolved = Self::default();
        for policy in snapshot.network_policies() {
            for ingress in [true, false] {
                for (index, rule) in rules_of(policy, ingress).iter().enumerate() {
                    let selected = selected_workloads(snapshot, policy, rule)
                        .map(Workload::key)
                        .collect();
                    resolved
                        .rules
                        .insert((policy.key(), ingress, index), selected);
                    if ingress {
                        continue;
                    }
                    for port in &rule.ports {
                        if let Some(PolicyPort::Named(name)) = &port.port {
                            resolved
                                .named_ports
                                .entry((name.clone(), port.protocol))
                                .or_insert_with(|| {
                                    workloads_with_port(snapshot, name, port.protocol)
                                        .into_iter()
                                        .map(Workload::key)
                                        .collect()
                                });
                        }
                    }
                }
            }
        }
        resolved
    }

    /// The workloads rule `index` of `policy`'s ingress or egress rules selects; resolved
    /// on the spot if `self` was not built from `snapshot`'s policies.
    fn rule<'a>(
        &self,
        snapshot: &'a MeshSnapshot,
        policy: &'a NetworkPolicy,
        ingress: bool,
        index: usize,
        rule: &'a NetworkPolicyRule,
    ) -> Vec<&'a Workload> {
        match self.rules.get(&(policy.key(), ingress, index)) {
            Some(keys) => lookup(snapshot, keys),
            None => selected_workloads(snapshot, policy, rule).collect(),
        }
    }

    /// The workloads with a port named `name` of `protocol`.
    fn named_port<'a>(
        &self,
        snapshot: &'a MeshSnapshot,
        name: &str,
        protocol: L4Protocol,
    ) -> Vec<&'a Workload> {
        match self.named_ports.get(&(name.to_owned(), protocol)) {
            Some(keys) => lookup(snapshot, keys),
            None => workloads_with_port(snapshot, name, protocol),
        }
    }
}

fn lookup<'a>(snapshot: &'a MeshSnapshot, keys: &[NamespacedName]) -> Vec<&'a Workload> {
    keys.iter()
        .filter_map(|k| snapshot.workload(&k.namespace, &k.name))
        .collect()
}

fn rules_of(policy: &NetworkPolicy, ingress: bool) -> &[NetworkPolicyRule] {
    match (ingress, policy.ingress_type, policy.egress_type) {
        (true, true, _) => &policy.ingress,
        (false, _, true) => &policy.egress,
        _ => &[],
    }
}

fn workloads_with_port<'a>(
    snapshot: &'a MeshSnapshot,
    name: &str,
    protocol: L4Protocol,
) -> Vec<&'a Workload> {
    snapshot
        .workloads()
        .filter(|w| {
            w.named_ports()
                .any(|(n, _, l4)| n == name && l4 == protocol)
        })
        .collect()
}

/// The NetworkPolicySnapshot for `workload`, a workload of `snapshot`, with the selectors
/// resolved in `peers` (built from `snapshot`).
pub(crate) fn network_policy_snapshot(
    snapshot: &MeshSnapshot,
    workload: &Workload,
    peers_of: &ResolvedPeers,
) -> pb::NetworkPolicySnapshot {
    let selecting: Vec<&NetworkPolicy> = snapshot.network_policies_for(workload).collect();
    let resolve = |ingress: bool| -> Vec<Resolved<'_>> {
        selecting
            .iter()
            .filter(|p| {
                if ingress {
                    p.ingress_type
                } else {
                    p.egress_type
                }
            })
            .map(|p| {
                let rules = rules_of(p, ingress)
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (r, peers_of.rule(snapshot, p, ingress, i, r)))
                    .collect();
                (*p, rules)
            })
            .collect()
    };
    let (ingress, egress) = (resolve(true), resolve(false));

    // Every workload a rule refers to, indexed in (namespace, name) order whatever the
    // rules' order, so equal configurations give equal bytes.
    let mut peers: BTreeMap<NamespacedName, &Workload> = BTreeMap::new();
    for (_, rules) in ingress.iter().chain(&egress) {
        for w in rules.iter().flat_map(|(_, selected)| selected) {
            peers.insert(w.key(), w);
        }
    }
    // A named egress port is resolved by the proxy against the destination, which may be
    // any workload with a port of that name and protocol.
    for (rule, _) in egress.iter().flat_map(|(_, rules)| rules) {
        for port in &rule.ports {
            if let Some(PolicyPort::Named(name)) = &port.port {
                for w in peers_of.named_port(snapshot, name, port.protocol) {
                    peers.insert(w.key(), w);
                }
            }
        }
    }
    let positions: BTreeMap<&NamespacedName, u32> = peers.keys().zip(0u32..).collect();
    let indices = |selected: &[&Workload]| -> Vec<u32> {
        let set: BTreeSet<u32> = selected
            .iter()
            .filter_map(|w| positions.get(&w.key()).copied())
            .collect();
        set.into_iter().collect()
    };
    let direction = |resolved: &[Resolved<'_>], receiver: Option<&Workload>| {
        resolved
            .iter()
            .map(|(p, rules)| pb::NetworkPolicyRules {
                policy: p.key().to_string(),
                rules: rules
                    .iter()
                    .map(|(r, selected)| rule_proto(r, indices(selected), receiver))
                    .collect(),
            })
            .collect()
    };
    pb::NetworkPolicySnapshot {
        ingress_isolated: !ingress.is_empty(),
        egress_isolated: !egress.is_empty(),
        ingress: direction(&ingress, Some(workload)),
        egress: direction(&egress, None),
        peers: peers.values().map(|w| peer_proto(w)).collect(),
    }
}

/// The workloads the selector peers of `rule` (of `policy`) select.
fn selected_workloads<'a>(
    snapshot: &'a MeshSnapshot,
    policy: &'a NetworkPolicy,
    rule: &'a NetworkPolicyRule,
) -> impl Iterator<Item = &'a Workload> + 'a {
    snapshot.workloads().filter(move |w| {
        rule.peers.iter().any(|peer| match peer {
            NetworkPeer::IpBlock { .. } => false,
            NetworkPeer::Selector { pods, namespaces } => {
                let in_namespace = match namespaces {
                    None => w.namespace == policy.namespace,
                    Some(selector) => snapshot
                        .namespace(&w.namespace)
                        .is_some_and(|ns| selector.matches(&ns.labels)),
                };
                in_namespace && pods.as_ref().is_none_or(|s| s.matches(&w.labels))
            }
        })
    })
}

/// One rule on the wire; `receiver` is the workload itself for ingress rules, whose named
/// ports are resolved here.
fn rule_proto(
    rule: &NetworkPolicyRule,
    workloads: Vec<u32>,
    receiver: Option<&Workload>,
) -> pb::NetworkPolicyRule {
    let ip_blocks = rule
        .peers
        .iter()
        .filter_map(|peer| match peer {
            NetworkPeer::IpBlock { cidr, except } => Some(pb::NetworkIpBlock {
                cidr: cidr.to_string(),
                except: except.iter().map(ToString::to_string).collect(),
            }),
            NetworkPeer::Selector { .. } => None,
        })
        .collect();
    let ports = rule
        .ports
        .iter()
        .filter_map(|p| port_proto(p, receiver))
        .collect();
    pb::NetworkPolicyRule {
        any_peer: rule.peers.is_empty(),
        workloads,
        ip_blocks,
        // A rule whose ports were all named and unresolvable matches nothing: it keeps
        // `any_port` false with no ports rather than widening to every port.
        any_port: rule.ports.is_empty(),
        ports,
    }
}

fn port_proto(p: &NetworkPolicyPort, receiver: Option<&Workload>) -> Option<pb::NetworkPort> {
    use pb::network_port::Port;
    let range = |first: u16, last: u16| {
        Port::Range(pb::NetworkPortRange {
            first: u32::from(first),
            last: u32::from(last),
        })
    };
    let port = match (&p.port, receiver) {
        (None, _) => None,
        (Some(PolicyPort::Range { first, last }), _) => Some(range(*first, *last)),
        (Some(PolicyPort::Named(name)), Some(w)) => {
            // Kubernetes drops a named port the pod does not have.
            let (_, number, _) = w
                .named_ports()
                .find(|(n, _, l4)| *n == name && *l4 == p.protocol)?;
            Some(range(number, number))
        }
        (Some(PolicyPort::Named(name)), None) => Some(Port::Name(name.clone())),
    };
    Some(pb::NetworkPort {
        protocol: l4_proto(p.protocol) as i32,
        port,
    })
}

fn peer_proto(w: &Workload) -> pb::NetworkPeerWorkload {
    pb::NetworkPeerWorkload {
        namespace: w.namespace.clone(),
        name: w.name.clone(),
        address: w.address.to_string(),
        spiffe_id: w.identity.to_string(),
        ports: w
            .named_ports()
            .map(|(name, port, l4)| pb::NetworkNamedPort {
                name: name.to_owned(),
                port: u32::from(port),
                protocol: l4_proto(l4) as i32,
            })
            .collect(),
    }
}
