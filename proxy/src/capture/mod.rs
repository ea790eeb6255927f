//! Traffic capture: the iptables rules `palisade init` installs in a pod's network namespace.
//!
//! The core is pure: [`CaptureConfig`] (parsed from flag strings by
//! [`CaptureConfig::from_flags`]) → [`rules`] for one address family → a `*-restore --noflush`
//! batch ([`RuleSet::batch`]). Nothing runs until the whole batch exists, so `--dry-run` prints
//! exactly what would be applied. The thin [`apply`] layer runs the iptables binaries: snapshot,
//! one batch per family, check with `*-save`, and roll back to the snapshot on any failure.
//! [`save`] reads `*-save -c` output (for detection, removal, verification and `--status`).
//!
//! The rule set, per family:
//! - nat: TCP arriving at the pod goes to the inbound port, TCP the pod opens goes to the
//!   outbound port; the proxy's own traffic, loopback and the configured exclusions return
//!   first (most specific exemptions before the REDIRECT).
//! - filter: non-TCP default deny in both directions, with one DROP rule per direction and
//!   protocol so each has its own packet counter; DNS to the resolvers, replies, loopback, the
//!   ICMP errors TCP needs (and IPv6 neighbour discovery) and allowed UDP ports pass.
//!
//! Every chain is named `PALISADE_*` and every rule carries a `palisade: <what>` comment, so
//! status and removal find exactly what was added and nothing else.

pub mod apply;
pub mod save;

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

pub use apply::Backend;

/// Prefix of every chain Palisade adds.
pub const CHAIN_PREFIX: &str = "PALISADE_";
/// Prefix of the comment on every rule Palisade adds.
pub const COMMENT_PREFIX: &str = "palisade: ";

/// nat chain for TCP arriving at the pod (jumped to from PREROUTING).
pub const NAT_INBOUND: &str = "PALISADE_INBOUND";
/// nat chain for TCP the pod opens (jumped to from OUTPUT).
pub const NAT_OUTBOUND: &str = "PALISADE_OUTBOUND";
/// filter chain of the inbound non-TCP default deny (jumped to from INPUT).
pub const FILTER_INBOUND: &str = "PALISADE_INPUT";
/// filter chain of the outbound non-TCP default deny (jumped to from OUTPUT).
pub const FILTER_OUTBOUND: &str = "PALISADE_OUTPUT";

/// The default UID of the proxy (CONTRACT: its own traffic is never captured).
pub const DEFAULT_PROXY_UID: u32 = 1337;
/// Where the pod's resolvers are read from when `--dns-servers` is not given.
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";

// === IpFamily, Table ===

/// An address family: IPv4 rules go through `iptables`, IPv6 rules through `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    /// IPv4 (`iptables`).
    V4,
    /// IPv6 (`ip6tables`).
    V6,
}

impl IpFamily {
    /// `ipv4` or `ipv6`, as printed and as given to `--family`.
    pub fn name(self) -> &'static str {
        match self {
            IpFamily::V4 => "ipv4",
            IpFamily::V6 => "ipv6",
        }
    }

    /// `iptables` or `ip6tables`: the prefix of this family's binaries.
    pub fn tool(self) -> &'static str {
        match self {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        }
    }

    fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    /// The loopback block: traffic to it is the pod talking to itself.
    fn loopback(self) -> &'static str {
        match self {
            IpFamily::V4 => "127.0.0.0/8",
            IpFamily::V6 => "::1/128",
        }
    }

    /// The ICMP protocol name as `*-save` prints it.
    fn icmp(self) -> &'static str {
        match self {
            IpFamily::V4 => "icmp",
            IpFamily::V6 => "ipv6-icmp",
        }
    }

    /// The ICMP protocol as named in drop comments and in the status summary.
    fn icmp_label(self) -> &'static str {
        match self {
            IpFamily::V4 => "icmp",
            IpFamily::V6 => "icmpv6",
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The iptables tables Palisade writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Capture (REDIRECT).
    Nat,
    /// Non-TCP default deny.
    Filter,
}

impl Table {
    /// Every table Palisade touches, in batch order.
    pub const ALL: [Table; 2] = [Table::Nat, Table::Filter];

    /// The table's name as iptables spells it.
    pub fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }
}

// === CaptureConfig ===

/// Whether IPv6 rules are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Mode {
    /// When the namespace has IPv6 (`/proc/net/if_inet6` exists).
    Auto,
    /// Always; an error if the namespace has no IPv6.
    On,
    /// Never.
    Off,
}

/// Everything the capture rules depend on, as plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Where inbound TCP is redirected (the proxy's inbound listener).
    pub inbound_port: u16,
    /// Where outbound TCP is redirected (the proxy's outbound listener).
    pub outbound_port: u16,
    /// The proxy's admin port: never captured inbound, so kubelet probes reach it.
    pub admin_port: u16,
    /// The proxy's UID: its own traffic is never captured.
    pub proxy_uid: u32,
    /// The proxy's GID, also exempt when given.
    pub proxy_gid: Option<u32>,
    /// Inbound destination ports left alone.
    pub exclude_inbound_ports: Vec<u16>,
    /// Inbound sources left alone.
    pub exclude_inbound_cidrs: Vec<IpNet>,
    /// Outbound destination ports left alone.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations left alone.
    pub exclude_outbound_cidrs: Vec<IpNet>,
    /// The pod's resolvers: DNS to them passes the default deny and is not captured.
    pub dns_servers: Vec<IpAddr>,
    /// UDP ports let through the default deny (destination port, both directions).
    pub allow_udp_ports: Vec<u16>,
    /// Whether IPv6 rules are installed.
    pub ipv6: Ipv6Mode,
    /// Which iptables back end; `None` detects it.
    pub backend: Option<Backend>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            inbound_port: crate::INBOUND_PORT,
            outbound_port: crate::OUTBOUND_PORT,
            admin_port: crate::ADMIN_PORT,
            proxy_uid: DEFAULT_PROXY_UID,
            proxy_gid: None,
            exclude_inbound_ports: Vec::new(),
            exclude_inbound_cidrs: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            dns_servers: Vec::new(),
            allow_udp_ports: Vec::new(),
            ipv6: Ipv6Mode::Auto,
            backend: None,
        }
    }
}

/// The flag values of `palisade init` as the user wrote them; [`CaptureConfig::from_flags`]
/// parses them. Lists are comma-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureFlags {
    /// `--inbound-port`.
    pub inbound_port: String,
    /// `--outbound-port`.
    pub outbound_port: String,
    /// `--admin-port`.
    pub admin_port: String,
    /// `--proxy-uid`.
    pub proxy_uid: String,
    /// `--proxy-gid`.
    pub proxy_gid: Option<String>,
    /// `--exclude-inbound-ports`.
    pub exclude_inbound_ports: String,
    /// `--exclude-inbound-cidrs`.
    pub exclude_inbound_cidrs: String,
    /// `--exclude-outbound-ports`.
    pub exclude_outbound_ports: String,
    /// `--exclude-outbound-cidrs`.
    pub exclude_outbound_cidrs: String,
    /// `--dns-servers`; `None` reads the resolvers from [`CaptureFlags::resolv_conf`].
    pub dns_servers: Option<String>,
    /// `--resolv-conf`; `None` is /etc/resolv.conf, where a missing file means no resolvers
    /// (the C library then uses a resolver on loopback, which passes anyway).
    pub resolv_conf: Option<PathBuf>,
    /// `--allow-udp-ports`.
    pub allow_udp_ports: String,
    /// `--ipv6`: `auto`, `on` or `off`.
    pub ipv6: String,
    /// `--backend`: `auto`, `nft` or `legacy`.
    pub backend: String,
}

impl Default for CaptureFlags {
    fn default() -> Self {
        Self {
            inbound_port: crate::INBOUND_PORT.to_string(),
            outbound_port: crate::OUTBOUND_PORT.to_string(),
            admin_port: crate::ADMIN_PORT.to_string(),
            proxy_uid: DEFAULT_PROXY_UID.to_string(),
            proxy_gid: None,
            exclude_inbound_ports: String::new(),
            exclude_inbound_cidrs: String::new(),
            exclude_outbound_ports: String::new(),
            exclude_outbound_cidrs: String::new(),
            dns_servers: None,
            resolv_conf: None,
            allow_udp_ports: String::new(),
            ipv6: "auto".to_owned(),
            backend: "auto".to_owned(),
        }
    }
}

/// A flag value that cannot be used; the message names the flag and the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {value:?} {problem}")]
pub struct FlagError {
    /// The flag, e.g. `--exclude-outbound-cidrs`.
    pub flag: &'static str,
    /// The offending value (one item of a list).
    pub value: String,
    /// What is wrong with it, e.g. `is not a CIDR`.
    pub problem: String,
}

impl FlagError {
    fn new(flag: &'static str, value: &str, problem: impl Into<String>) -> Self {
        Self {
            flag,
            value: value.to_owned(),
            problem: problem.into(),
        }
    }
}

impl CaptureConfig {
    /// Parses every flag; the first bad value is the error. Reads the resolv.conf file only
    /// when `--dns-servers` is not given.
    pub fn from_flags(flags: &CaptureFlags) -> Result<Self, FlagError> {
        let dns_servers = match &flags.dns_servers {
            Some(list) => parse_ips("--dns-servers", list)?,
            None => resolvers_from_file(flags.resolv_conf.as_deref())?,
        };
        Ok(Self {
            inbound_port: parse_port("--inbound-port", &flags.inbound_port)?,
            outbound_port: parse_port("--outbound-port", &flags.outbound_port)?,
            admin_port: parse_port("--admin-port", &flags.admin_port)?,
            proxy_uid: parse_id("--proxy-uid", &flags.proxy_uid)?,
            proxy_gid: flags
                .proxy_gid
                .as_deref()
                .map(|g| parse_id("--proxy-gid", g))
                .transpose()?,
            exclude_inbound_ports: parse_ports(
                "--exclude-inbound-ports",
                &flags.exclude_inbound_ports,
            )?,
            exclude_inbound_cidrs: parse_cidrs(
                "--exclude-inbound-cidrs",
                &flags.exclude_inbound_cidrs,
            )?,
            exclude_outbound_ports: parse_ports(
                "--exclude-outbound-ports",
                &flags.exclude_outbound_ports,
            )?,
            exclude_outbound_cidrs: parse_cidrs(
                "--exclude-outbound-cidrs",
                &flags.exclude_outbound_cidrs,
            )?,
            dns_servers,
            allow_udp_ports: parse_ports("--allow-udp-ports", &flags.allow_udp_ports)?,
            ipv6: parse_ipv6_mode(&flags.ipv6)?,
            backend: parse_backend(&flags.backend)?,
        })
    }
}

/// Which families `--dry-run` prints (`--family`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilySelection {
    /// Only IPv4.
    Ipv4,
    /// Only IPv6.
    Ipv6,
    /// Every family that would be applied.
    Both,
}

impl FamilySelection {
    /// Parses `--family` (`ipv4`, `ipv6` or `both`).
    pub fn parse(value: &str) -> Result<Self, FlagError> {
        match value.trim() {
            "ipv4" => Ok(Self::Ipv4),
            "ipv6" => Ok(Self::Ipv6),
            "both" => Ok(Self::Both),
            _ => Err(FlagError::new(
                "--family",
                value,
                "is not a family (ipv4, ipv6 or both)",
            )),
        }
    }

    /// Whether `family` is selected.
    pub fn includes(self, family: IpFamily) -> bool {
        match self {
            Self::Both => true,
            Self::Ipv4 => family == IpFamily::V4,
            Self::Ipv6 => family == IpFamily::V6,
        }
    }
}

fn items(list: &str) -> impl Iterator<Item = &str> {
    // Empty items (a trailing comma, an empty flag) carry nothing; every other item is parsed.
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_port(flag: &'static str, value: &str) -> Result<u16, FlagError> {
    match value.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(FlagError::new(flag, value, "is not a port (1-65535)")),
    }
}

fn parse_ports(flag: &'static str, list: &str) -> Result<Vec<u16>, FlagError> {
    let mut ports = Vec::new();
    for item in items(list) {
        let port = parse_port(flag, item)?;
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

fn parse_id(flag: &'static str, value: &str) -> Result<u32, FlagError> {
    // (uid_t)-1 means "no change" to the kernel: never a real owner.
    match value.trim().parse::<u32>() {
        Ok(id) if id != u32::MAX => Ok(id),
        _ => Err(FlagError::new(flag, value, "is not a numeric id")),
    }
}

fn parse_cidrs(flag: &'static str, list: &str) -> Result<Vec<IpNet>, FlagError> {
    let mut nets = Vec::new();
    for item in items(list) {
        let net = if item.contains('/') {
            item.parse::<IpNet>()
                .map_err(|_| FlagError::new(flag, item, "is not a CIDR"))?
        } else {
            // A bare address is the block of that one address.
            IpNet::from(
                item.parse::<IpAddr>()
                    .map_err(|_| FlagError::new(flag, item, "is not a CIDR"))?,
            )
        };
        // iptables masks host bits itself; mask here so rules and `*-save` agree.
        let net = net.trunc();
        if !nets.contains(&net) {
            nets.push(net);
        }
    }
    Ok(nets)
}

fn parse_ips(flag: &'static str, list: &str) -> Result<Vec<IpAddr>, FlagError> {
    let mut ips = Vec::new();
    for item in items(list) {
        let ip = item
            .parse::<IpAddr>()
            .map_err(|_| FlagError::new(flag, item, "is not an IP address"))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

fn parse_ipv6_mode(value: &str) -> Result<Ipv6Mode, FlagError> {
    match value.trim() {
        "auto" => Ok(Ipv6Mode::Auto),
        "on" => Ok(Ipv6Mode::On),
        "off" => Ok(Ipv6Mode::Off),
        _ => Err(FlagError::new("--ipv6", value, "is not auto, on or off")),
    }
}

fn parse_backend(value: &str) -> Result<Option<Backend>, FlagError> {
    match value.trim() {
        "auto" => Ok(None),
        "nft" => Ok(Some(Backend::Nft)),
        "legacy" => Ok(Some(Backend::Legacy)),
        _ => Err(FlagError::new(
            "--backend",
            value,
            "is not a backend (auto, nft or legacy)",
        )),
    }
}

fn resolvers_from_file(path: Option<&std::path::Path>) -> Result<Vec<IpAddr>, FlagError> {
    let explicit = path.is_some();
    let path = path.unwrap_or(std::path::Path::new(DEFAULT_RESOLV_CONF));
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse_resolv_conf(&text)),
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(FlagError::new(
            "--resolv-conf",
            &path.display().to_string(),
            format!("cannot be read ({e})"),
        )),
    }
}

/// The resolvers of a resolv.conf text: the address of every `nameserver` line, in order,
/// once each. A zone (`fe80::1%eth0`) is dropped, as iptables matches addresses only; a line
/// that is not an address is skipped, as the C library's resolver skips it.
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    let mut servers = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(value) = words.next() else { continue };
        let address = value.split('%').next().unwrap_or(value);
        if let Ok(ip) = address.parse::<IpAddr>()
            && !servers.contains(&ip)
        {
            servers.push(ip);
        }
    }
    servers
}

/// The families to install: IPv4 always, IPv6 as `mode` says given whether the namespace
/// has it.
pub fn families(mode: Ipv6Mode, ipv6_available: bool) -> Result<Vec<IpFamily>, Ipv6Unavailable> {
    match (mode, ipv6_available) {
        (Ipv6Mode::Off, _) | (Ipv6Mode::Auto, false) => Ok(vec![IpFamily::V4]),
        (Ipv6Mode::Auto | Ipv6Mode::On, true) => Ok(vec![IpFamily::V4, IpFamily::V6]),
        (Ipv6Mode::On, false) => Err(Ipv6Unavailable),
    }
}

/// `--ipv6 on` in a namespace without IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("--ipv6 on: this network namespace has no IPv6 (/proc/net/if_inet6 does not exist)")]
pub struct Ipv6Unavailable;

// === Rules ===

/// Where a matched packet goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Leave this chain: not captured / not dropped here.
    Return,
    /// Drop it.
    Drop,
    /// Send it to a local port (the proxy).
    Redirect(u16),
    /// Continue in one of Palisade's chains.
    Jump(&'static str),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Return => f.write_str("-j RETURN"),
            Target::Drop => f.write_str("-j DROP"),
            Target::Redirect(port) => write!(f, "-j REDIRECT --to-ports {port}"),
            Target::Jump(chain) => write!(f, "-j {chain}"),
        }
    }
}

/// One rule: its chain, its matches (in the canonical order `*-save` prints them, so the
/// batch reads like the saved rule set), its comment and its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The chain it is appended (or, for a jump, inserted) to.
    pub chain: &'static str,
    /// Match text, e.g. `-d 10.96.0.10/32 -p udp -m udp --dport 53`; may be empty.
    pub matches: String,
    /// The full comment, `palisade: <what>`.
    pub comment: String,
    /// The target.
    pub target: Target,
}

impl Rule {
    fn on(chain: &'static str, what: impl fmt::Display) -> RuleBuilder {
        RuleBuilder {
            chain,
            comment: format!("{COMMENT_PREFIX}{what}"),
            parts: Vec::new(),
        }
    }

    /// Everything after `-A CHAIN ` (or `-I CHAIN 1 `).
    pub fn spec(&self) -> String {
        let mut spec = String::new();
        if !self.matches.is_empty() {
            spec.push_str(&self.matches);
            spec.push(' ');
        }
        spec.push_str(&format!(
            "-m comment --comment \"{}\" {}",
            self.comment, self.target
        ));
        spec
    }
}

/// Builds a rule's match text; callers add parts in `*-save` order (addresses, interfaces,
/// protocol and its match, other matches).
struct RuleBuilder {
    chain: &'static str,
    comment: String,
    parts: Vec<String>,
}

impl RuleBuilder {
    fn src(mut self, net: impl fmt::Display) -> Self {
        self.parts.push(format!("-s {net}"));
        self
    }
    fn dst(mut self, net: impl fmt::Display) -> Self {
        self.parts.push(format!("-d {net}"));
        self
    }
    fn iface_in(mut self, name: &str) -> Self {
        self.parts.push(format!("-i {name}"));
        self
    }
    fn iface_out(mut self, name: &str) -> Self {
        self.parts.push(format!("-o {name}"));
        self
    }
    fn proto(mut self, proto: &str) -> Self {
        self.parts.push(format!("-p {proto}"));
        self
    }
    /// `-p tcp -m tcp --dport N` (or udp).
    fn dport(mut self, proto: &str, port: u16) -> Self {
        self.parts
            .push(format!("-p {proto} -m {proto} --dport {port}"));
        self
    }
    /// `-p udp -m udp --sport N`.
    fn sport(mut self, proto: &str, port: u16) -> Self {
        self.parts
            .push(format!("-p {proto} -m {proto} --sport {port}"));
        self
    }
    fn icmp_type(mut self, family: IpFamily, kind: &str) -> Self {
        self.parts.push(match family {
            IpFamily::V4 => format!("-p icmp -m icmp --icmp-type {kind}"),
            IpFamily::V6 => format!("-p ipv6-icmp -m icmp6 --icmpv6-type {kind}"),
        });
        self
    }
    fn matching(mut self, text: String) -> Self {
        self.parts.push(text);
        self
    }
    fn to(self, target: Target) -> Rule {
        Rule {
            chain: self.chain,
            matches: self.parts.join(" "),
            comment: self.comment,
            target,
        }
    }
}

/// A direction of the default deny, as named in drop comments and the status summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Packets arriving at the pod (filter INPUT).
    Inbound,
    /// Packets the pod sends (filter OUTPUT).
    Outbound,
}

impl Direction {
    /// `inbound` or `outbound`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// The comment of the DROP rule for one direction and protocol (`udp`, `icmp`, `icmpv6`,
/// `other`); `--status` sums the drops by these.
pub fn drop_comment(direction: Direction, protocol: &str) -> String {
    format!("{COMMENT_PREFIX}drop {} {protocol}", direction.name())
}

/// The rules of one table: Palisade's chains, their rules, and the jumps into them from the
/// built-in chains (one each, inserted first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRules {
    /// The table.
    pub table: Table,
    /// Palisade's chains in this table.
    pub chains: Vec<&'static str>,
    /// Rules appended to those chains, in order.
    pub rules: Vec<Rule>,
    /// Jumps from built-in chains into Palisade's chains.
    pub jumps: Vec<Rule>,
}

/// The whole rule set of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// The family.
    pub family: IpFamily,
    /// nat, then filter.
    pub tables: Vec<TableRules>,
}

/// ICMP errors TCP needs: path MTU discovery breaks without them.
const ICMPV4_ALLOWED: &[(&str, &str)] = &[("3/4", "icmp fragmentation needed")];

/// IPv6 cannot work without neighbour discovery (133-137), and TCP needs packet-too-big.
const ICMPV6_ALLOWED: &[(&str, &str)] = &[
    ("2", "icmpv6 packet too big"),
    ("133", "icmpv6 router solicitation"),
    ("134", "icmpv6 router advertisement"),
    ("135", "icmpv6 neighbour solicitation"),
    ("136", "icmpv6 neighbour advertisement"),
    ("137", "icmpv6 redirect"),
];

/// The rule set of one family for `config`. Pure: the same config always gives the same
/// rules; addresses of the other family are left out.
pub fn rules(config: &CaptureConfig, family: IpFamily) -> RuleSet {
    RuleSet {
        family,
        tables: vec![nat_rules(config, family), filter_rules(config, family)],
    }
}

fn dedup(ports: &[u16]) -> Vec<u16> {
    let mut seen = BTreeSet::new();
    ports.iter().copied().filter(|p| seen.insert(*p)).collect()
}

fn in_family<'a, T: Copy>(
    items: &'a [T],
    family: IpFamily,
    addr: impl Fn(T) -> IpAddr + 'a,
) -> impl Iterator<Item = T> + 'a {
    items
        .iter()
        .copied()
        .filter(move |i| IpFamily::of(addr(*i)) == family)
}

fn nat_rules(config: &CaptureConfig, family: IpFamily) -> TableRules {
    let mut rules = Vec::new();

    // Inbound: the proxy's own ports first (the admin port must stay reachable for probes),
    // then the user's exclusions, then the capture.
    let proxy_ports = [
        (config.inbound_port, "proxy inbound port"),
        (config.outbound_port, "proxy outbound port"),
        (config.admin_port, "proxy admin port"),
    ];
    let mut seen = BTreeSet::new();
    for (port, what) in proxy_ports {
        if seen.insert(port) {
            rules.push(
                Rule::on(NAT_INBOUND, what)
                    .dport("tcp", port)
                    .to(Target::Return),
            );
        }
    }
    for port in dedup(&config.exclude_inbound_ports) {
        if seen.insert(port) {
            rules.push(
                Rule::on(NAT_INBOUND, "excluded inbound port")
                    .dport("tcp", port)
                    .to(Target::Return),
            );
        }
    }
    for net in in_family(&config.exclude_inbound_cidrs, family, |n: IpNet| n.addr()) {
        rules.push(
            Rule::on(NAT_INBOUND, "excluded inbound source")
                .src(net)
                .to(Target::Return),
        );
    }
    rules.push(
        Rule::on(NAT_INBOUND, "capture inbound tcp")
            .proto("tcp")
            .to(Target::Redirect(config.inbound_port)),
    );

    // Outbound: the proxy's own traffic and loopback first, then DNS to the resolvers and
    // the user's exclusions, then the capture.
    rules.push(
        Rule::on(NAT_OUTBOUND, "proxy uid")
            .matching(format!("-m owner --uid-owner {}", config.proxy_uid))
            .to(Target::Return),
    );
    if let Some(gid) = config.proxy_gid {
        rules.push(
            Rule::on(NAT_OUTBOUND, "proxy gid")
                .matching(format!("-m owner --gid-owner {gid}"))
                .to(Target::Return),
        );
    }
    rules.push(
        Rule::on(NAT_OUTBOUND, "loopback interface")
            .iface_out("lo")
            .to(Target::Return),
    );
    rules.push(
        Rule::on(NAT_OUTBOUND, "loopback address")
            .dst(family.loopback())
            .to(Target::Return),
    );
    for ip in in_family(&config.dns_servers, family, |i| i) {
        rules.push(
            Rule::on(NAT_OUTBOUND, "dns over tcp to a resolver")
                .dst(IpNet::from(ip))
                .dport("tcp", 53)
                .to(Target::Return),
        );
    }
    for port in dedup(&config.exclude_outbound_ports) {
        rules.push(
            Rule::on(NAT_OUTBOUND, "excluded outbound port")
                .dport("tcp", port)
                .to(Target::Return),
        );
    }
    for net in in_family(&config.exclude_outbound_cidrs, family, |n: IpNet| n.addr()) {
        rules.push(
            Rule::on(NAT_OUTBOUND, "excluded outbound destination")
                .dst(net)
                .to(Target::Return),
        );
    }
    rules.push(
        Rule::on(NAT_OUTBOUND, "capture outbound tcp")
            .proto("tcp")
            .to(Target::Redirect(config.outbound_port)),
    );

    TableRules {
        table: Table::Nat,
        chains: vec![NAT_INBOUND, NAT_OUTBOUND],
        rules,
        jumps: vec![
            Rule::on("PREROUTING", "inbound tcp capture")
                .proto("tcp")
                .to(Target::Jump(NAT_INBOUND)),
            Rule::on("OUTPUT", "outbound tcp capture")
                .proto("tcp")
                .to(Target::Jump(NAT_OUTBOUND)),
        ],
    }
}

fn filter_rules(config: &CaptureConfig, family: IpFamily) -> TableRules {
    let mut rules = Vec::new();
    let icmp_allowed = match family {
        IpFamily::V4 => ICMPV4_ALLOWED,
        IpFamily::V6 => ICMPV6_ALLOWED,
    };
    let resolvers: Vec<IpAddr> = in_family(&config.dns_servers, family, |i| i).collect();
    let udp_ports = dedup(&config.allow_udp_ports);

    for direction in [Direction::Inbound, Direction::Outbound] {
        let (chain, word) = match direction {
            Direction::Inbound => (FILTER_INBOUND, "inbound"),
            Direction::Outbound => (FILTER_OUTBOUND, "outbound"),
        };
        rules.push(
            Rule::on(chain, "tcp passes (captured in nat)")
                .proto("tcp")
                .to(Target::Return),
        );
        let lo = Rule::on(chain, "loopback");
        rules.push(
            match direction {
                Direction::Inbound => lo.iface_in("lo"),
                Direction::Outbound => lo.iface_out("lo"),
            }
            .to(Target::Return),
        );
        rules.push(
            Rule::on(chain, "replies and related errors")
                .matching("-m conntrack --ctstate RELATED,ESTABLISHED".to_owned())
                .to(Target::Return),
        );
        for ip in &resolvers {
            let net = IpNet::from(*ip);
            rules.push(match direction {
                Direction::Inbound => Rule::on(chain, "dns reply from a resolver")
                    .src(net)
                    .sport("udp", 53)
                    .to(Target::Return),
                Direction::Outbound => Rule::on(chain, "dns to a resolver")
                    .dst(net)
                    .dport("udp", 53)
                    .to(Target::Return),
            });
        }
        for (kind, what) in icmp_allowed {
            rules.push(
                Rule::on(chain, what)
                    .icmp_type(family, kind)
                    .to(Target::Return),
            );
        }
        for port in &udp_ports {
            rules.push(
                Rule::on(chain, format!("allowed {word} udp port"))
                    .dport("udp", *port)
                    .to(Target::Return),
            );
        }
        // One DROP per protocol so `--status` can tell what was refused.
        for (proto, label) in [("udp", "udp"), (family.icmp(), family.icmp_label())] {
            rules.push(Rule {
                chain,
                matches: format!("-p {proto}"),
                comment: drop_comment(direction, label),
                target: Target::Drop,
            });
        }
        rules.push(Rule {
            chain,
            matches: String::new(),
            comment: drop_comment(direction, "other"),
            target: Target::Drop,
        });
    }

    TableRules {
        table: Table::Filter,
        chains: vec![FILTER_INBOUND, FILTER_OUTBOUND],
        rules,
        jumps: vec![
            Rule::on("INPUT", "inbound default deny").to(Target::Jump(FILTER_INBOUND)),
            Rule::on("OUTPUT", "outbound default deny").to(Target::Jump(FILTER_OUTBOUND)),
        ],
    }
}

// === Batches ===

/// The text fed to one `*-restore --noflush` run, kept as lines so that an error at
/// `line N` can be traced back to the rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    lines: Vec<String>,
}

impl Batch {
    fn push(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    /// The batch as `*-restore` reads it.
    pub fn text(&self) -> String {
        let mut text = self.lines.join("\n");
        text.push('\n');
        text
    }

    /// Line `n`, counted from 1 as `*-restore` counts.
    pub fn line(&self, n: usize) -> Option<&str> {
        n.checked_sub(1)
            .and_then(|i| self.lines.get(i))
            .map(String::as_str)
    }

    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The number of lines.
    pub fn len(&self) -> usize {
        self.lines.len()
    }
}

impl RuleSet {
    /// The batch that installs this rule set over the current state `current` (the parsed
    /// `*-save` output of this family). Declaring Palisade's chains (`:CHAIN - [0:0]`)
    /// creates or flushes them; jumps already present are deleted and inserted again at the
    /// top, so a second run leaves exactly the same rules and order.
    pub fn batch(&self, current: &save::Dump) -> Batch {
        let mut batch = Batch::default();
        for table in &self.tables {
            batch.push(format!("*{}", table.table.name()));
            for chain in &table.chains {
                batch.push(format!(":{chain} - [0:0]"));
            }
            if let Some(saved) = current.table(table.table.name()) {
                for rule in saved.jumps_into_palisade() {
                    batch.push(format!("-D {} {}", rule.chain, rule.spec));
                }
            }
            for rule in &table.rules {
                batch.push(format!("-A {} {}", rule.chain, rule.spec()));
            }
            for jump in &table.jumps {
                batch.push(format!("-I {} 1 {}", jump.chain, jump.spec()));
            }
            batch.push("COMMIT");
        }
        batch
    }

    /// The batch for a namespace without Palisade's rules (what `--dry-run` prints).
    pub fn fresh_batch(&self) -> Batch {
        self.batch(&save::Dump::default())
    }

    /// Number of rules, jumps included.
    pub fn rule_count(&self) -> usize {
        self.tables
            .iter()
            .map(|t| t.rules.len() + t.jumps.len())
            .sum()
    }
}

/// The batch that takes out every Palisade jump and chain found in `current`, and nothing
/// else: jumps first, then flush, then delete the chains. `None` if nothing is installed.
pub fn removal_batch(current: &save::Dump) -> Option<Batch> {
    removal_batch_for(current, &Table::ALL)
}

/// [`removal_batch`] limited to `tables`.
pub fn removal_batch_for(current: &save::Dump, tables: &[Table]) -> Option<Batch> {
    let mut batch = Batch::default();
    for table in tables {
        let Some(saved) = current.table(table.name()) else {
            continue;
        };
        let jumps = saved.jumps_into_palisade();
        let chains = saved.palisade_chains();
        if jumps.is_empty() && chains.is_empty() {
            continue;
        }
        batch.push(format!("*{}", table.name()));
        for rule in jumps {
            batch.push(format!("-D {} {}", rule.chain, rule.spec));
        }
        for chain in &chains {
            batch.push(format!("-F {chain}"));
        }
        for chain in &chains {
            batch.push(format!("-X {chain}"));
        }
        batch.push("COMMIT");
    }
    (!batch.is_empty()).then_some(batch)
}

/// `--dry-run` output: for each family, a `#` header line and the exact batch the apply layer
/// would feed to `*-restore --noflush` in a namespace without Palisade's rules.
pub fn dry_run(config: &CaptureConfig, families: &[IpFamily]) -> String {
    let mut out = String::new();
    for family in families {
        let rules = rules(config, *family);
        out.push_str(&format!(
            "# palisade init: {} batch for {}-restore --noflush ({} rules)\n",
            family.name(),
            family.tool(),
            rules.rule_count()
        ));
        out.push_str(&rules.fresh_batch().text());
    }
    out
}

#[cfg(test)]
mod tests;
