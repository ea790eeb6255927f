//! Kubernetes NetworkPolicy for one workload: which TCP connections it may receive
//! (ingress, decided by its own sidecar as the receiver) and open (egress, decided before
//! any byte leaves). Pure; compiled once per `NetworkPolicySnapshot`, then every decision
//! is a walk over precompiled rules with one address lookup and no allocation.
//!
//! A source "is" a workload of the mesh only when both its address and its verified SPIFFE
//! ID are that workload's: a plaintext caller, or a certificate presented from another
//! address, matches only `ipBlock` and any-peer rules.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use palisade_certs::SpiffeId;
use palisade_proto::v1::{self, network_port};

#[cfg(test)]
mod tests;

/// Why a `NetworkPolicySnapshot` was rejected (the NACK's message). `field` is the path
/// inside the snapshot, e.g. `ingress[0].rules[2].ip_blocks[1].except[0]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// An address that is not an IP literal.
    #[error("NetworkPolicySnapshot: {field}: {value:?} is not an IP address")]
    BadAddress {
        /// Where.
        field: String,
        /// The text received.
        value: String,
    },
    /// A CIDR that does not parse or has host bits set.
    #[error("NetworkPolicySnapshot: {field}: {value:?} is not a canonical CIDR ({reason})")]
    BadCidr {
        /// Where.
        field: String,
        /// The text received.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An `except` block that is not inside its `cidr`.
    #[error("NetworkPolicySnapshot: {field}: except {except} is outside cidr {cidr}")]
    ExceptOutsideCidr {
        /// Where.
        field: String,
        /// The block's cidr.
        cidr: String,
        /// The except entry.
        except: String,
    },
    /// A rule naming a workload index past the end of `peers`.
    #[error(
        "NetworkPolicySnapshot: {field}: workload index {index} is out of range ({peers} peers)"
    )]
    PeerIndexOutOfRange {
        /// Where.
        field: String,
        /// The index received.
        index: u32,
        /// How many peers the snapshot carries.
        peers: usize,
    },
    /// A peer's SPIFFE ID that does not parse.
    #[error("NetworkPolicySnapshot: {field}: {value:?} is not a SPIFFE ID: {reason}")]
    BadSpiffeId {
        /// Where.
        field: String,
        /// The text received.
        value: String,
        /// The parser's reason.
        reason: String,
    },
    /// A port number that is 0 or above 65535.
    #[error("NetworkPolicySnapshot: {field}: {value} is not a port (1-65535)")]
    BadPort {
        /// Where.
        field: String,
        /// The number received.
        value: u32,
    },
    /// A port range whose first port is after its last.
    #[error("NetworkPolicySnapshot: {field}: port range {first}-{last} is empty (first > last)")]
    BadPortRange {
        /// Where.
        field: String,
        /// First port.
        first: u32,
        /// Last port.
        last: u32,
    },
    /// A named port that is empty, or a name on an ingress rule (the control plane resolves
    /// those to numbers).
    #[error("NetworkPolicySnapshot: {field}: {reason}")]
    BadPortName {
        /// Where.
        field: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A protocol value this proxy does not know.
    #[error("NetworkPolicySnapshot: {field}: unknown protocol {value}")]
    UnknownProtocol {
        /// Where.
        field: String,
        /// The enum value received.
        value: i32,
    },
    /// A policy without its `namespace/name`.
    #[error("NetworkPolicySnapshot: {field}: policy name is empty")]
    EmptyPolicyName {
        /// Where.
        field: String,
    },
    /// `*_isolated` disagrees with the policy list of that direction.
    #[error(
        "NetworkPolicySnapshot: {direction}_isolated is {isolated} but {policies} policies select the workload for {direction}"
    )]
    IsolationMismatch {
        /// Which direction.
        direction: NetDirection,
        /// The flag received.
        isolated: bool,
        /// How many policies the direction lists.
        policies: usize,
    },
}

impl SnapshotError {
    /// The path of the offending field inside the snapshot.
    pub fn field(&self) -> &str {
        match self {
            Self::BadAddress { field, .. }
            | Self::BadCidr { field, .. }
            | Self::ExceptOutsideCidr { field, .. }
            | Self::PeerIndexOutOfRange { field, .. }
            | Self::BadSpiffeId { field, .. }
            | Self::BadPort { field, .. }
            | Self::BadPortRange { field, .. }
            | Self::BadPortName { field, .. }
            | Self::UnknownProtocol { field, .. }
            | Self::EmptyPolicyName { field } => field,
            Self::IsolationMismatch { direction, .. } => match direction {
                NetDirection::Ingress => "ingress_isolated",
                NetDirection::Egress => "egress_isolated",
            },
        }
    }
}

impl From<SnapshotError> for crate::model::SnapshotError {
    fn from(e: SnapshotError) -> Self {
        let text = e.to_string();
        let prefix = format!("NetworkPolicySnapshot: {}: ", e.field());
        let message = text.strip_prefix(&prefix).unwrap_or(&text).to_owned();
        Self {
            resource: "NetworkPolicySnapshot".into(),
            field: e.field().to_owned(),
            message,
        }
    }
}

/// The direction of a connection relative to this workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetDirection {
    /// A connection this workload receives.
    Ingress,
    /// A connection this workload opens.
    Egress,
}

impl NetDirection {
    /// `ingress` or `egress` (metric label, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

impl fmt::Display for NetDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one NetworkPolicy decision, with what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDecision {
    /// Whether the connection may proceed.
    pub allowed: bool,
    /// What decided.
    pub decided_by: NetDecidedBy,
    /// Which direction was asked about (for explanations).
    pub direction: NetDirection,
}

/// What decided a `NetDecision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetDecidedBy {
    /// No NetworkPolicy selects the workload for this direction.
    NotIsolated,
    /// The first rule (0-based index within its policy's ingress[]/egress[]) that allows it.
    Rule {
        /// `namespace/name` of the policy.
        policy: Arc<str>,
        /// Index of the rule in that policy's list for this direction.
        rule: usize,
    },
    /// Isolated and no rule allows: every policy that selects the workload for this
    /// direction (non-empty).
    NoRuleAllows {
        /// `namespace/name` of each isolating policy, in snapshot order.
        isolating: Arc<[Arc<str>]>,
    },
}

impl NetDecision {
    /// One sentence for people, e.g. "allowed by NetworkPolicy x/allow-a, ingress rule 0".
    pub fn explain(&self) -> String {
        match &self.decided_by {
            NetDecidedBy::NotIsolated => {
                format!(
                    "no NetworkPolicy selects the workload for {}",
                    self.direction
                )
            }
            NetDecidedBy::Rule { policy, rule } => {
                format!(
                    "allowed by NetworkPolicy {policy}, {} rule {rule}",
                    self.direction
                )
            }
            NetDecidedBy::NoRuleAllows { isolating } => {
                let names: Vec<&str> = isolating.iter().map(|p| &**p).collect();
                format!(
                    "denied: selected by NetworkPolicy {} and no {} rule allows it",
                    names.join(", "),
                    self.direction
                )
            }
        }
    }

    /// The `policy` label for metrics: the allowing policy, the first isolating policy, or
    /// "none".
    pub fn policy_label(&self) -> &str {
        match &self.decided_by {
            NetDecidedBy::NotIsolated => "none",
            NetDecidedBy::Rule { policy, .. } => policy,
            NetDecidedBy::NoRuleAllows { isolating } => isolating.first().map_or("none", |p| p),
        }
    }
}

/// A workload that rules refer to.
#[derive(Debug, Clone)]
struct Peer {
    /// `namespace/name`, for the `/config` summary.
    name: Box<str>,
    /// None: the workload presents no mesh identity, so it never matches as an ingress peer.
    spiffe_id: Option<SpiffeId>,
    /// Its TCP named ports (name, number), for egress named ports.
    tcp_ports: Box<[(Box<str>, u16)]>,
}

/// An `ipBlock`.
#[derive(Debug, Clone)]
struct IpBlock {
    cidr: IpNet,
    except: Box<[IpNet]>,
}

impl IpBlock {
    fn contains(&self, ip: &IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// One compiled `ports[]` entry that can match TCP (UDP and SCTP entries are dropped at
/// compile time: they never match a TCP connection).
#[derive(Debug, Clone)]
enum PortMatch {
    /// Every TCP port.
    AnyTcp,
    /// Inclusive range.
    Range(u16, u16),
    /// Egress: the destination workload's TCP port of this name.
    Name(Box<str>),
}

/// One `ingress[]` / `egress[]` entry.
#[derive(Debug, Clone)]
struct Rule {
    any_peer: bool,
    /// Sorted peer indices.
    workloads: Box<[u32]>,
    ip_blocks: Box<[IpBlock]>,
    any_port: bool,
    /// Only consulted when `any_port` is false; empty then means no TCP port matches.
    ports: Box<[PortMatch]>,
}

/// One policy's rules for one direction.
#[derive(Debug, Clone)]
struct Policy {
    name: Arc<str>,
    rules: Box<[Rule]>,
}

/// Every policy selecting the workload for one direction.
#[derive(Debug, Clone)]
struct Direction {
    policies: Box<[Policy]>,
    /// The policies' names, shared by every denial.
    isolating: Arc<[Arc<str>]>,
}

impl Direction {
    fn unrestricted() -> Self {
        Self {
            policies: Box::default(),
            isolating: Arc::from(Vec::new()),
        }
    }

    fn isolated(&self) -> bool {
        !self.policies.is_empty()
    }

    fn rule_count(&self) -> usize {
        self.policies.iter().map(|p| p.rules.len()).sum()
    }
}

/// The NetworkPolicies of one workload, compiled for per-connection decisions.
#[derive(Debug, Clone)]
pub struct NetworkPolicies {
    ingress: Direction,
    egress: Direction,
    peers: Box<[Peer]>,
    /// Address → indices of the peers at that address (usually one).
    by_address: HashMap<IpAddr, Box<[u32]>>,
}

/// An IPv4-mapped IPv6 address is the IPv4 address (a dual-stack socket reports it so).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl NetworkPolicies {
    /// Neither direction isolated (what a workload with no selecting policy gets).
    pub fn unrestricted() -> Self {
        Self {
            ingress: Direction::unrestricted(),
            egress: Direction::unrestricted(),
            peers: Box::default(),
            by_address: HashMap::new(),
        }
    }

    /// Both directions isolated and nothing allowed, decided by the synthetic policy
    /// `label`: what a workload runs with when its first snapshot was rejected (never run
    /// without the policies the control plane meant).
    pub fn deny_all(label: &str) -> Self {
        let name: Arc<str> = label.into();
        let direction = || Direction {
            policies: vec![Policy {
                name: name.clone(),
                rules: Box::default(),
            }]
            .into(),
            isolating: vec![name.clone()].into(),
        };
        Self {
            ingress: direction(),
            egress: direction(),
            peers: Box::default(),
            by_address: HashMap::new(),
        }
    }

    /// Whether ingress is isolated.
    pub fn ingress_isolated(&self) -> bool {
        self.ingress.isolated()
    }

    /// Whether egress is isolated.
    pub fn egress_isolated(&self) -> bool {
        self.egress.isolated()
    }

    fn at(&self, ip: IpAddr) -> &[u32] {
        self.by_address.get(&ip).map_or(&[], |v| v)
    }

    /// May a TCP connection from `source` (address; verified identity if the caller
    /// presented a mesh certificate) reach this workload's app `port`?
    pub fn ingress(&self, source: IpAddr, identity: Option<&SpiffeId>, port: u16) -> NetDecision {
        let dir = NetDirection::Ingress;
        if !self.ingress.isolated() {
            return not_isolated(dir);
        }
        let source = canonical(source);
        // The workloads the caller is: at its address and holding its identity.
        let at = self.at(source);
        let is_peer = |i: u32| {
            identity.is_some()
                && self
                    .peers
                    .get(i as usize)
                    .is_some_and(|p| p.spiffe_id.as_ref() == identity)
        };
        for policy in &self.ingress.policies {
            for (index, rule) in policy.rules.iter().enumerate() {
                let port_ok = rule.any_port
                    || rule.ports.iter().any(|p| match p {
                        PortMatch::AnyTcp => true,
                        PortMatch::Range(first, last) => (*first..=*last).contains(&port),
                        // Rejected at compile time for ingress.
                        PortMatch::Name(_) => false,
                    });
                if port_ok && peer_matches(rule, source, at, &is_peer) {
                    return allowed_by(dir, &policy.name, index);
                }
            }
        }
        denied(dir, &self.ingress)
    }

    /// May this workload open a TCP connection to `destination` (pod address of the chosen
    /// endpoint, or an outside address) on `port` (the destination workload's port, after
    /// Service targetPort translation)?
    pub fn egress(&self, destination: IpAddr, port: u16) -> NetDecision {
        let dir = NetDirection::Egress;
        if !self.egress.isolated() {
            return not_isolated(dir);
        }
        let destination = canonical(destination);
        let at = self.at(destination);
        let is_peer = |_: u32| true;
        let named = |name: &str| {
            at.iter().any(|i| {
                self.peers.get(*i as usize).is_some_and(|p| {
                    p.tcp_ports
                        .iter()
                        .any(|(n, number)| *number == port && **n == *name)
                })
            })
        };
        for policy in &self.egress.policies {
            for (index, rule) in policy.rules.iter().enumerate() {
                let port_ok = rule.any_port
                    || rule.ports.iter().any(|p| match p {
                        PortMatch::AnyTcp => true,
                        PortMatch::Range(first, last) => (*first..=*last).contains(&port),
                        PortMatch::Name(name) => named(name),
                    });
                if port_ok && peer_matches(rule, destination, at, &is_peer) {
                    return allowed_by(dir, &policy.name, index);
                }
            }
        }
        denied(dir, &self.egress)
    }

    /// A short account for the admin `/config` page.
    pub fn summary(&self) -> NetworkPolicySummary {
        let names = |d: &Direction| d.policies.iter().map(|p| p.name.to_string()).collect();
        NetworkPolicySummary {
            ingress_isolated: self.ingress_isolated(),
            egress_isolated: self.egress_isolated(),
            ingress_policies: names(&self.ingress),
            egress_policies: names(&self.egress),
            ingress_rules: self.ingress.rule_count(),
            egress_rules: self.egress.rule_count(),
            peers: self.peers.iter().map(|p| p.name.to_string()).collect(),
        }
    }
}

/// What the admin `/config` page shows of the NetworkPolicies.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NetworkPolicySummary {
    /// Whether some policy isolates ingress.
    pub ingress_isolated: bool,
    /// Whether some policy isolates egress.
    pub egress_isolated: bool,
    /// `namespace/name` of the policies selecting the workload for ingress.
    pub ingress_policies: Vec<String>,
    /// `namespace/name` of the policies selecting the workload for egress.
    pub egress_policies: Vec<String>,
    /// Number of ingress rules over all policies.
    pub ingress_rules: usize,
    /// Number of egress rules over all policies.
    pub egress_rules: usize,
    /// `namespace/name` of the workloads the rules refer to.
    pub peers: Vec<String>,
}

fn peer_matches(rule: &Rule, ip: IpAddr, at: &[u32], is_peer: &impl Fn(u32) -> bool) -> bool {
    rule.any_peer
        || (!at.is_empty()
            && at
                .iter()
                .any(|i| rule.workloads.binary_search(i).is_ok() && is_peer(*i)))
        || rule.ip_blocks.iter().any(|b| b.contains(&ip))
}

fn not_isolated(direction: NetDirection) -> NetDecision {
    NetDecision {
        allowed: true,
        decided_by: NetDecidedBy::NotIsolated,
        direction,
    }
}

fn allowed_by(direction: NetDirection, policy: &Arc<str>, rule: usize) -> NetDecision {
    NetDecision {
        allowed: true,
        decided_by: NetDecidedBy::Rule {
            policy: policy.clone(),
            rule,
        },
        direction,
    }
}

fn denied(direction: NetDirection, d: &Direction) -> NetDecision {
    NetDecision {
        allowed: false,
        decided_by: NetDecidedBy::NoRuleAllows {
            isolating: d.isolating.clone(),
        },
        direction,
    }
}

// === impl TryFrom ===

impl TryFrom<&v1::NetworkPolicySnapshot> for NetworkPolicies {
    type Error = SnapshotError;

    fn try_from(s: &v1::NetworkPolicySnapshot) -> Result<Self, SnapshotError> {
        let mut peers = Vec::with_capacity(s.peers.len());
        let mut by_address: HashMap<IpAddr, Vec<u32>> = HashMap::new();
        for (i, p) in s.peers.iter().enumerate() {
            let field = |f: &str| format!("peers[{i}].{f}");
            let address = p.address.parse::<IpAddr>().map(canonical).map_err(|_| {
                SnapshotError::BadAddress {
                    field: field("address"),
                    value: p.address.clone(),
                }
            })?;
            let spiffe_id = if p.spiffe_id.is_empty() {
                None
            } else {
                Some(
                    SpiffeId::parse(&p.spiffe_id).map_err(|e| SnapshotError::BadSpiffeId {
                        field: field("spiffe_id"),
                        value: p.spiffe_id.clone(),
                        reason: e.to_string(),
                    })?,
                )
            };
            let mut tcp_ports = Vec::new();
            for (j, np) in p.ports.iter().enumerate() {
                let number = port(np.port, format!("peers[{i}].ports[{j}].port"))?;
                let tcp = is_tcp(np.protocol, format!("peers[{i}].ports[{j}].protocol"))?;
                if tcp && !np.name.is_empty() {
                    tcp_ports.push((np.name.as_str().into(), number));
                }
            }
            let index = u32::try_from(i).map_err(|_| SnapshotError::PeerIndexOutOfRange {
                field: "peers".into(),
                index: u32::MAX,
                peers: s.peers.len(),
            })?;
            by_address.entry(address).or_default().push(index);
            peers.push(Peer {
                name: format!("{}/{}", p.namespace, p.name).into(),
                spiffe_id,
                tcp_ports: tcp_ports.into(),
            });
        }
        let ingress = direction(
            NetDirection::Ingress,
            s.ingress_isolated,
            &s.ingress,
            peers.len(),
        )?;
        let egress = direction(
            NetDirection::Egress,
            s.egress_isolated,
            &s.egress,
            peers.len(),
        )?;
        Ok(Self {
            ingress,
            egress,
            peers: peers.into(),
            by_address: by_address
                .into_iter()
                .map(|(k, v)| (k, v.into_boxed_slice()))
                .collect(),
        })
    }
}

fn port(value: u32, field: String) -> Result<u16, SnapshotError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(SnapshotError::BadPort { field, value })
}

/// Whether a protocol value is TCP (UNSPECIFIED reads as TCP, Kubernetes' default).
fn is_tcp(value: i32, field: String) -> Result<bool, SnapshotError> {
    match v1::L4Protocol::try_from(value) {
        Ok(v1::L4Protocol::Unspecified | v1::L4Protocol::Tcp) => Ok(true),
        Ok(v1::L4Protocol::Udp | v1::L4Protocol::Sctp) => Ok(false),
        Err(_) => Err(SnapshotError::UnknownProtocol { field, value }),
    }
}

fn direction(
    dir: NetDirection,
    isolated: bool,
    policies: &[v1::NetworkPolicyRules],
    peers: usize,
) -> Result<Direction, SnapshotError> {
    if isolated == policies.is_empty() {
        return Err(SnapshotError::IsolationMismatch {
            direction: dir,
            isolated,
            policies: policies.len(),
        });
    }
    let mut compiled = Vec::with_capacity(policies.len());
    for (i, p) in policies.iter().enumerate() {
        let at = format!("{dir}[{i}]");
        if p.policy.is_empty() {
            return Err(SnapshotError::EmptyPolicyName {
                field: format!("{at}.policy"),
            });
        }
        let mut rules = Vec::with_capacity(p.rules.len());
        for (j, r) in p.rules.iter().enumerate() {
            rules.push(rule(dir, r, &format!("{at}.rules[{j}]"), peers)?);
        }
        compiled.push(Policy {
            name: p.policy.as_str().into(),
            rules: rules.into(),
        });
    }
    let isolating: Vec<Arc<str>> = compiled.iter().map(|p| p.name.clone()).collect();
    Ok(Direction {
        policies: compiled.into(),
        isolating: isolating.into(),
    })
}

fn rule(
    dir: NetDirection,
    r: &v1::NetworkPolicyRule,
    at: &str,
    peers: usize,
) -> Result<Rule, SnapshotError> {
    let mut workloads = Vec::with_capacity(r.workloads.len());
    for (k, index) in r.workloads.iter().enumerate() {
        if *index as usize >= peers {
            return Err(SnapshotError::PeerIndexOutOfRange {
                field: format!("{at}.workloads[{k}]"),
                index: *index,
                peers,
            });
        }
        workloads.push(*index);
    }
    workloads.sort_unstable();
    workloads.dedup();
    let mut ip_blocks = Vec::with_capacity(r.ip_blocks.len());
    for (k, b) in r.ip_blocks.iter().enumerate() {
        let field = format!("{at}.ip_blocks[{k}]");
        let cidr = cidr(&b.cidr, format!("{field}.cidr"))?;
        let mut except = Vec::with_capacity(b.except.len());
        for (e, text) in b.except.iter().enumerate() {
            let field = format!("{field}.except[{e}]");
            let net = crate::netpol::cidr(text, field.clone())?;
            if !cidr.contains(&net) {
                return Err(SnapshotError::ExceptOutsideCidr {
                    field,
                    cidr: b.cidr.clone(),
                    except: text.clone(),
                });
            }
            except.push(net);
        }
        ip_blocks.push(IpBlock {
            cidr,
            except: except.into(),
        });
    }
    let mut ports = Vec::with_capacity(r.ports.len());
    for (k, p) in r.ports.iter().enumerate() {
        let field = format!("{at}.ports[{k}]");
        if !is_tcp(p.protocol, format!("{field}.protocol"))? {
            // UDP and SCTP are carried for completeness; they never match TCP.
            continue;
        }
        let compiled = match &p.port {
            None => PortMatch::AnyTcp,
            Some(network_port::Port::Range(range)) => {
                let first = port(range.first, format!("{field}.range.first"))?;
                let last = port(range.last, format!("{field}.range.last"))?;
                if first > last {
                    return Err(SnapshotError::BadPortRange {
                        field: format!("{field}.range"),
                        first: range.first,
                        last: range.last,
                    });
                }
                PortMatch::Range(first, last)
            }
            Some(network_port::Port::Name(name)) => {
                if name.is_empty() {
                    return Err(SnapshotError::BadPortName {
                        field: format!("{field}.name"),
                        reason: "named port is empty",
                    });
                }
                if dir == NetDirection::Ingress {
                    return Err(SnapshotError::BadPortName {
                        field: format!("{field}.name"),
                        reason: "an ingress named port must arrive resolved to a number",
                    });
                }
                PortMatch::Name(name.as_str().into())
            }
        };
        ports.push(compiled);
    }
    Ok(Rule {
        any_peer: r.any_peer,
        workloads: workloads.into(),
        ip_blocks: ip_blocks.into(),
        any_port: r.any_port,
        ports: ports.into(),
    })
}

/// A CIDR as the control plane sends it: `network/len` with host bits cleared (a bare
/// address reads as a single host).
fn cidr(text: &str, field: String) -> Result<IpNet, SnapshotError> {
    let bad = |reason| SnapshotError::BadCidr {
        field: field.clone(),
        value: text.to_owned(),
        reason,
    };
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => text
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| bad("not network/length"))?,
    };
    if net.trunc() != net {
        return Err(bad("host bits set"));
    }
    // Rules compare canonical (v4-mapped → v4) addresses; a mapped block is its v4 block.
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && v6.prefix_len() >= 96
    {
        return ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
            .map(IpNet::V4)
            .map_err(|_| bad("bad prefix length"));
    }
    Ok(net)
}
