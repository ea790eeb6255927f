//! Egress allowances: which destinations outside the mesh this workload may reach when the
//! mesh's outbound policy is REGISTRY_ONLY. Pure; compiled once per `EgressSnapshot`.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use palisade_proto::v1::{self, string_match::Kind};

use crate::model::SnapshotError;

/// A compiled host of an egress rule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
enum EgressHost {
    /// A host name (lower case) or an IP literal, without IPv6 brackets.
    Exact(Box<str>),
    /// `*.example.com`, kept as `.example.com`: any name below it, not the name itself.
    Suffix(Box<str>),
    /// `*`: any host.
    Any,
}

impl EgressHost {
    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => host.eq_ignore_ascii_case(h),
            Self::Suffix(s) => {
                host.len() > s.len()
                    && host
                        .get(host.len() - s.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(s))
            }
            Self::Any => true,
        }
    }
}

/// One EgressPolicy's allowance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
struct EgressRule {
    policy: Arc<str>,
    hosts: Box<[EgressHost]>,
    /// Destination address blocks, for traffic that carries no name.
    ip_blocks: Box<[IpNet]>,
    /// Empty: any port.
    ports: Box<[u16]>,
}

impl EgressRule {
    fn allows_port(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }
}

/// Every egress allowance of this workload.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EgressRules {
    rules: Box<[EgressRule]>,
}

/// The host part as rules compare it: no trailing dot, no IPv6 brackets.
fn bare_host(host: &str) -> &str {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

impl EgressRules {
    /// The policy (`namespace/name`) allowing `host:port` by name, if any. A host that is
    /// an IP literal also matches the rules' address blocks.
    pub fn allows(&self, host: &str, port: u16) -> Option<&str> {
        let host = bare_host(host);
        if let Ok(ip) = host.parse::<IpAddr>()
            && let Some(policy) = self.allows_address(ip, port)
        {
            return Some(policy);
        }
        self.rules
            .iter()
            .find(|r| r.allows_port(port) && r.hosts.iter().any(|h| h.matches(host)))
            .map(|r| &*r.policy)
    }

    /// The policy allowing TCP to `ip:port` by address (`ipBlocks`), if any: the only match
    /// for traffic that carries no name.
    pub fn allows_address(&self, ip: IpAddr, port: u16) -> Option<&str> {
        // An IPv4-mapped IPv6 address is the IPv4 address (a dual-stack socket reports it so).
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.rules
            .iter()
            .find(|r| r.allows_port(port) && r.ip_blocks.iter().any(|b| b.contains(&ip)))
            .map(|r| &*r.policy)
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there is no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl TryFrom<&v1::EgressSnapshot> for EgressRules {
    type Error = SnapshotError;
    fn try_from(snapshot: &v1::EgressSnapshot) -> Result<Self, SnapshotError> {
        let mut rules = Vec::with_capacity(snapshot.rules.len());
        for (i, r) in snapshot.rules.iter().enumerate() {
            let err = |field: String, message: String| SnapshotError {
                resource: format!("EgressRule {} (rules[{i}])", r.policy),
                field,
                message,
            };
            if r.policy.is_empty() {
                return Err(err("policy".into(), "is empty".into()));
            }
            let mut hosts = Vec::with_capacity(r.hosts.len());
            for (j, h) in r.hosts.iter().enumerate() {
                let field = format!("hosts[{j}]");
                let host = match &h.kind {
                    Some(Kind::Exact(s)) if !s.is_empty() => {
                        EgressHost::Exact(bare_host(&s.to_ascii_lowercase()).into())
                    }
                    Some(Kind::Exact(_)) => return Err(err(field, "is empty".into())),
                    Some(Kind::Suffix(s)) => {
                        // "*.example.com" arrives as ".example.com" (or with its "*"); a
                        // suffix without the dot would also match "badexample.com".
                        let s = s.strip_prefix('*').unwrap_or(s);
                        if !s.starts_with('.') || s.len() < 2 {
                            return Err(err(
                                field,
                                format!("suffix {s:?} must have the form \"*.example.com\""),
                            ));
                        }
                        EgressHost::Suffix(s.to_ascii_lowercase().into())
                    }
                    Some(Kind::Presence(true)) => EgressHost::Any,
                    Some(Kind::Prefix(p)) => {
                        return Err(err(
                            field,
                            format!("prefix {p:?}: hosts are exact names or \"*.suffix\""),
                        ));
                    }
                    Some(Kind::Presence(false)) => {
                        return Err(err(field, "presence: false is not a match".into()));
                    }
                    Some(Kind::PathTemplate(_)) => {
                        return Err(err(field, "a path template is not a host".into()));
                    }
                    None => return Err(err(field, "string match has no kind".into())),
                };
                hosts.push(host);
            }
            let mut ports = Vec::with_capacity(r.ports.len());
            for (j, p) in r.ports.iter().enumerate() {
                let port = u16::try_from(*p).ok().filter(|p| *p != 0).ok_or_else(|| {
                    err(
                        format!("ports[{j}]"),
                        format!("{p} is not a port (1-65535)"),
                    )
                })?;
                ports.push(port);
            }
            let mut ip_blocks = Vec::with_capacity(r.ip_blocks.len());
            for (j, b) in r.ip_blocks.iter().enumerate() {
                ip_blocks.push(ip_block(b).map_err(|m| err(format!("ip_blocks[{j}]"), m))?);
            }
            if hosts.is_empty() && ip_blocks.is_empty() {
                return Err(err(
                    "hosts".into(),
                    "a rule needs hosts or ip_blocks".into(),
                ));
            }
            rules.push(EgressRule {
                policy: r.policy.as_str().into(),
                hosts: hosts.into(),
                ip_blocks: ip_blocks.into(),
                ports: ports.into(),
            });
        }
        Ok(Self {
            rules: rules.into(),
        })
    }
}

/// An address block as the control plane sends it: `network/len` with host bits cleared, or
/// one bare address.
fn ip_block(text: &str) -> Result<IpNet, String> {
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => text
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("{text:?} is not a CIDR or an IP address"))?,
    };
    if net.trunc() != net {
        return Err(format!("{text:?} has host bits set"));
    }
    if net.prefix_len() == 0 {
        return Err(format!("{text:?} would match every address"));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: Kind) -> v1::StringMatch {
        v1::StringMatch { kind: Some(kind) }
    }

    fn rules(rules: Vec<v1::EgressRule>) -> Result<EgressRules, SnapshotError> {
        EgressRules::try_from(&v1::EgressSnapshot { rules })
    }

    #[test]
    fn hosts_and_ports() {
        let r = rules(vec![
            v1::EgressRule {
                policy: "shop/stripe".into(),
                hosts: vec![m(Kind::Exact("API.Stripe.com".into()))],
                ports: vec![443],
                ip_blocks: vec![],
            },
            v1::EgressRule {
                policy: "shop/cdn".into(),
                hosts: vec![
                    m(Kind::Suffix(".cdn.example".into())),
                    m(Kind::Exact("10.1.2.3".into())),
                ],
                ports: vec![],
                ip_blocks: vec![],
            },
            v1::EgressRule {
                policy: "shop/v6".into(),
                hosts: vec![m(Kind::Exact("::1".into()))],
                ports: vec![8080],
                ip_blocks: vec![],
            },
        ])
        .unwrap();
        assert_eq!(r.allows("api.stripe.com", 443), Some("shop/stripe"));
        assert_eq!(r.allows("api.stripe.com.", 443), Some("shop/stripe"));
        assert_eq!(r.allows("API.STRIPE.COM", 443), Some("shop/stripe"));
        assert_eq!(r.allows("api.stripe.com", 80), None);
        assert_eq!(r.allows("evil-api.stripe.com", 443), None);
        assert_eq!(r.allows("a.cdn.example", 1234), Some("shop/cdn"));
        assert_eq!(r.allows("a.b.cdn.example", 80), Some("shop/cdn"));
        assert_eq!(r.allows("cdn.example", 80), None);
        assert_eq!(r.allows("xcdn.example", 80), None);
        assert_eq!(r.allows("10.1.2.3", 5432), Some("shop/cdn"));
        assert_eq!(r.allows("10.1.2.4", 5432), None);
        assert_eq!(r.allows("[::1]", 8080), Some("shop/v6"));
        assert_eq!(rules(vec![]).unwrap().allows("a", 1), None);
        let any = rules(vec![v1::EgressRule {
            policy: "shop/any".into(),
            hosts: vec![m(Kind::Presence(true))],
            ports: vec![443],
            ip_blocks: vec![],
        }])
        .unwrap();
        assert_eq!(any.allows("whatever.example", 443), Some("shop/any"));
        assert_eq!(any.allows("whatever.example", 80), None);
        let star = rules(vec![v1::EgressRule {
            policy: "shop/star".into(),
            hosts: vec![m(Kind::Suffix("*.example.com".into()))],
            ports: vec![],
            ip_blocks: vec![],
        }])
        .unwrap();
        assert_eq!(star.allows("a.example.com", 80), Some("shop/star"));
    }

    #[test]
    fn address_blocks_match_addresses_and_ip_literal_hosts() {
        let r = rules(vec![
            v1::EgressRule {
                policy: "shop/db".into(),
                hosts: vec![],
                ip_blocks: vec!["192.0.2.0/24".into(), "2001:db8::7".into()],
                ports: vec![5432],
            },
            v1::EgressRule {
                policy: "shop/named".into(),
                hosts: vec![m(Kind::Exact("db.example".into()))],
                ip_blocks: vec![],
                ports: vec![],
            },
        ])
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(r.allows_address(ip("192.0.2.9"), 5432), Some("shop/db"));
        assert_eq!(r.allows_address(ip("192.0.2.9"), 5433), None);
        assert_eq!(r.allows_address(ip("192.0.3.9"), 5432), None);
        assert_eq!(
            r.allows_address(ip("::ffff:192.0.2.9"), 5432),
            Some("shop/db")
        );
        assert_eq!(r.allows_address(ip("2001:db8::7"), 5432), Some("shop/db"));
        assert_eq!(r.allows_address(ip("2001:db8::8"), 5432), None);
        // A name never matches by address, and an address never matches a named rule.
        assert_eq!(r.allows("192.0.2.9", 5432), Some("shop/db"));
        assert_eq!(r.allows("[2001:db8::7]", 5432), Some("shop/db"));
        assert_eq!(r.allows_address(ip("192.0.2.9"), 80), None);
        assert_eq!(r.allows("db.example", 80), Some("shop/named"));
        for bad in ["0.0.0.0/0", "::/0", "10.0.0.1/8", "10.0.0.0/33", "ten", ""] {
            let e = rules(vec![v1::EgressRule {
                policy: "shop/bad".into(),
                hosts: vec![],
                ip_blocks: vec![bad.into()],
                ports: vec![],
            }])
            .unwrap_err();
            assert_eq!(e.field, "ip_blocks[0]", "{bad}: {e}");
        }
        let empty = rules(vec![v1::EgressRule {
            policy: "shop/empty".into(),
            ..Default::default()
        }])
        .unwrap_err();
        assert_eq!(empty.field, "hosts");
    }

    #[test]
    fn invalid_rules_are_named() {
        let one = |hosts: Vec<v1::StringMatch>, ports: Vec<u32>| {
            rules(vec![v1::EgressRule {
                policy: "shop/e".into(),
                hosts,
                ports,
                ip_blocks: vec![],
            }])
            .unwrap_err()
        };
        let e = one(vec![m(Kind::Suffix("example.com".into()))], vec![]);
        assert_eq!(e.field, "hosts[0]");
        assert!(e.message.contains("*.example.com"), "{e}");
        assert_eq!(
            one(vec![m(Kind::Prefix("api.".into()))], vec![]).field,
            "hosts[0]"
        );
        assert_eq!(
            one(vec![m(Kind::Exact(String::new()))], vec![]).field,
            "hosts[0]"
        );
        assert_eq!(
            one(vec![v1::StringMatch { kind: None }], vec![]).field,
            "hosts[0]"
        );
        let e = one(vec![m(Kind::Exact("a".into()))], vec![443, 0]);
        assert_eq!(e.field, "ports[1]");
        assert_eq!(e.resource, "EgressRule shop/e (rules[0])");
        let e = rules(vec![v1::EgressRule::default()]).unwrap_err();
        assert_eq!(e.field, "policy");
    }
}
