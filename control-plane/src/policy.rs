//! Compiled authorization and egress policies: Istio's `security.istio.io/v1`
//! AuthorizationPolicy and Palisade's EgressPolicy after validation.
//!
//! Pure values, built only by the loader ([`crate::config`]): every matcher here has been
//! checked (match forms, principals, CIDRs, ports, condition keys), so the index converts
//! them to proto without re-checking, and a field the mesh cannot enforce never gets this
//! far. The structure is kept as written (rules, sources, operations, conditions); the
//! proxy's evaluator gives it meaning.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use palisade_certs::TrustDomain;

use crate::model::{NamespacedName, Source, Workload};

/// One of Istio's string match forms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StringMatch {
    /// `value`: the whole value.
    Exact(String),
    /// `value*`: starts with it.
    Prefix(String),
    /// `*value`: ends with it.
    Suffix(String),
    /// `*`: any value, when the attribute is present.
    Presence,
    /// A path template holding `{*}` or `{**}` (`paths`/`notPaths` only), validated as
    /// Istio does.
    Template(String),
}

impl fmt::Display for StringMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StringMatch::Exact(v) => f.write_str(v),
            StringMatch::Prefix(v) => write!(f, "{v}*"),
            StringMatch::Suffix(v) => write!(f, "*{v}"),
            StringMatch::Presence => f.write_str("*"),
            StringMatch::Template(t) => f.write_str(t),
        }
    }
}

/// An address block: a CIDR, or a single address (a full-length prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpBlock {
    /// The network address (host bits cleared).
    pub network: IpAddr,
    /// Prefix length: up to 32 for IPv4, 128 for IPv6.
    pub prefix_len: u8,
}

impl IpBlock {
    /// Whether the block is one address.
    pub fn is_single(&self) -> bool {
        self.prefix_len == max_prefix(self.network)
    }
}

pub(crate) fn max_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl fmt::Display for IpBlock {
    /// A single address is written bare, a wider block as `network/len`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() {
            write!(f, "{}", self.network)
        } else {
            write!(f, "{}/{}", self.network, self.prefix_len)
        }
    }
}

/// What a matching AuthorizationPolicy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// The request must match some ALLOW policy selecting the workload.
    Allow,
    /// A match denies.
    Deny,
    /// A match is recorded and does not change the decision.
    Audit,
}

impl Action {
    /// The name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
        }
    }
}

/// `rules[].from[].source`: within one, every non-empty field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceMatch {
    /// Peer identities, Istio style (`cluster.local/ns/shop/sa/frontend`, no scheme).
    pub principals: Vec<StringMatch>,
    /// Negated `principals`.
    pub not_principals: Vec<StringMatch>,
    /// Peer namespaces (from the peer identity).
    pub namespaces: Vec<StringMatch>,
    /// Negated `namespaces`.
    pub not_namespaces: Vec<StringMatch>,
    /// Peer service accounts (`serviceAccounts`), meaning the principals
    /// `<trust-domain>/ns/<namespace>/sa/<name>` of the mesh's trust domain.
    pub service_accounts: Vec<ServiceAccount>,
    /// Negated `service_accounts`.
    pub not_service_accounts: Vec<ServiceAccount>,
    /// Peer addresses.
    pub ip_blocks: Vec<IpBlock>,
    /// Negated `ip_blocks`.
    pub not_ip_blocks: Vec<IpBlock>,
}

/// A `serviceAccounts` entry, written `<namespace>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccount {
    /// Namespace.
    pub namespace: String,
    /// Service account name.
    pub name: String,
}

impl ServiceAccount {
    /// The principal it stands for in `trust_domain` (Istio's form, no `spiffe://`).
    pub fn principal(&self, trust_domain: &TrustDomain) -> String {
        format!("{trust_domain}/ns/{}/sa/{}", self.namespace, self.name)
    }
}

impl fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `rules[].to[].operation`: within one, every non-empty field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperationMatch {
    /// Host (authority), lower case.
    pub hosts: Vec<StringMatch>,
    /// Negated `hosts`.
    pub not_hosts: Vec<StringMatch>,
    /// Destination ports.
    pub ports: Vec<u16>,
    /// Negated `ports`.
    pub not_ports: Vec<u16>,
    /// HTTP methods, case as written.
    pub methods: Vec<StringMatch>,
    /// Negated `methods`.
    pub not_methods: Vec<StringMatch>,
    /// Paths (normalised, without query string, at evaluation).
    pub paths: Vec<StringMatch>,
    /// Negated `paths`.
    pub not_paths: Vec<StringMatch>,
}

/// The attribute a `when` condition tests.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConditionKey {
    /// `request.headers[<name>]`, the name in lower case.
    RequestHeader(String),
    /// `source.ip`: the connection's peer address.
    SourceIp,
    /// `source.namespace`: from the peer identity.
    SourceNamespace,
    /// `source.principal`: the peer identity, Istio style.
    SourcePrincipal,
    /// `source.serviceAccount`: `<namespace>/<name>` of the peer identity, in the mesh's
    /// trust domain (sent to proxies as `source.principal` with full principals).
    SourceServiceAccount,
    /// `destination.ip`: the address the connection was sent to.
    DestinationIp,
    /// `destination.port`: the app port.
    DestinationPort,
    /// `connection.sni`: the TLS server name.
    ConnectionSni,
}

impl fmt::Display for ConditionKey {
    /// The key as written in YAML and on the wire.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConditionKey::RequestHeader(name) => write!(f, "request.headers[{name}]"),
            ConditionKey::SourceIp => f.write_str("source.ip"),
            ConditionKey::SourceNamespace => f.write_str("source.namespace"),
            ConditionKey::SourcePrincipal => f.write_str("source.principal"),
            ConditionKey::SourceServiceAccount => f.write_str("source.serviceAccount"),
            ConditionKey::DestinationIp => f.write_str("destination.ip"),
            ConditionKey::DestinationPort => f.write_str("destination.port"),
            ConditionKey::ConnectionSni => f.write_str("connection.sni"),
        }
    }
}

/// `rules[].when[]`: the attribute must match one of `values` (if any) and none of
/// `not_values`. Values of `source.ip`/`destination.ip` are canonical CIDRs or addresses
/// and those of `destination.port` port numbers, all as [`StringMatch::Exact`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// The attribute.
    pub key: ConditionKey,
    /// Positive matches.
    pub values: Vec<StringMatch>,
    /// Negative matches.
    pub not_values: Vec<StringMatch>,
}

/// One rule: every present part must match (from AND to AND when).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// Any one source matches; empty: any caller.
    pub from: Vec<SourceMatch>,
    /// Any one operation matches; empty: any operation.
    pub to: Vec<OperationMatch>,
    /// Every condition matches.
    pub when: Vec<Condition>,
}

/// Which workloads a policy applies to: those of its namespace (every namespace, for the
/// mesh's root namespace) whose labels include `match_labels`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Labels a workload must carry; empty: every workload in scope.
    pub match_labels: BTreeMap<String, String>,
}

impl Selector {
    /// Whether a policy of `namespace` with this selector applies to `workload`.
    pub fn selects(&self, namespace: &str, root_namespace: &str, workload: &Workload) -> bool {
        (namespace == root_namespace || namespace == workload.namespace)
            && workload.matches(&self.match_labels)
    }
}

/// A validated AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Which workloads it applies to.
    pub selector: Selector,
    /// What a match does.
    pub action: Action,
    /// A request matches the policy if it matches any rule; none: it matches nothing.
    pub rules: Vec<Rule>,
    /// `istio.io/dry-run` (or `palisade.dev/dry-run`) is `"true"`: evaluated, counted and
    /// logged as a would-be decision, never enforced.
    pub dry_run: bool,
    /// Where it was defined.
    pub source: Source,
}

impl AuthorizationPolicy {
    /// The `namespace/name` key.
    pub fn key(&self) -> NamespacedName {
        NamespacedName::new(&self.namespace, &self.name)
    }
}

/// A destination host an EgressPolicy allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EgressHost {
    /// A DNS name, lower case.
    Name(String),
    /// `*.suffix`: any name ending with `.suffix` (the suffix is kept with its leading dot).
    Wildcard(String),
    /// An IP literal.
    Ip(IpAddr),
}

impl fmt::Display for EgressHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressHost::Name(n) => f.write_str(n),
            EgressHost::Wildcard(s) => write!(f, "*{s}"),
            EgressHost::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A validated EgressPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Which workloads it applies to.
    pub selector: Selector,
    /// Hosts the selected workloads may reach, by the name the traffic carries (the Host of
    /// plain HTTP, the SNI of TLS from the app).
    pub hosts: Vec<EgressHost>,
    /// Address blocks the selected workloads may reach with any TCP, matched on the
    /// destination address (for traffic that carries no name). `hosts` and `ip_blocks` are
    /// never both empty.
    pub ip_blocks: Vec<IpBlock>,
    /// Ports; empty means any.
    pub ports: Vec<u16>,
    /// Where it was defined.
    pub source: Source,
}

impl EgressPolicy {
    /// The `namespace/name` key.
    pub fn key(&self) -> NamespacedName {
        NamespacedName::new(&self.namespace, &self.name)
    }
}
