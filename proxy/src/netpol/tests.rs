use super::*;
use v1::{
    L4Protocol, NetworkIpBlock, NetworkNamedPort, NetworkPeerWorkload, NetworkPolicyRule,
    NetworkPolicyRules, NetworkPolicySnapshot, NetworkPort, NetworkPortRange,
};

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const SEARCH: &str = "spiffe://cluster.local/ns/shop/sa/search";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn peer(
    name: &str,
    address: &str,
    spiffe: &str,
    ports: Vec<NetworkNamedPort>,
) -> NetworkPeerWorkload {
    NetworkPeerWorkload {
        namespace: "shop".into(),
        name: name.into(),
        address: address.into(),
        spiffe_id: spiffe.into(),
        ports,
    }
}

fn named(name: &str, port: u32, protocol: L4Protocol) -> NetworkNamedPort {
    NetworkNamedPort {
        name: name.into(),
        port,
        protocol: protocol as i32,
    }
}

/// frontend at 10.0.0.1 (port "http" 8080), search at 10.0.0.2 (port "http" 9090, UDP "dns" 53).
fn peers() -> Vec<NetworkPeerWorkload> {
    vec![
        peer(
            "frontend",
            "10.0.0.1",
            FRONTEND,
            vec![named("http", 8080, L4Protocol::Tcp)],
        ),
        peer(
            "search",
            "10.0.0.2",
            SEARCH,
            vec![
                named("http", 9090, L4Protocol::Unspecified),
                named("dns", 53, L4Protocol::Udp),
            ],
        ),
    ]
}

fn tcp(first: u32, last: u32) -> NetworkPort {
    NetworkPort {
        protocol: L4Protocol::Tcp as i32,
        port: Some(network_port::Port::Range(NetworkPortRange { first, last })),
    }
}

fn port_name(name: &str) -> NetworkPort {
    NetworkPort {
        protocol: L4Protocol::Unspecified as i32,
        port: Some(network_port::Port::Name(name.into())),
    }
}

fn block(cidr: &str, except: &[&str]) -> NetworkIpBlock {
    NetworkIpBlock {
        cidr: cidr.into(),
        except: except.iter().map(|s| s.to_string()).collect(),
    }
}

fn any() -> NetworkPolicyRule {
    NetworkPolicyRule {
        any_peer: true,
        any_port: true,
        ..Default::default()
    }
}

fn from_workloads(workloads: Vec<u32>, ports: Vec<NetworkPort>) -> NetworkPolicyRule {
    NetworkPolicyRule {
        workloads,
        any_port: ports.is_empty(),
        ports,
        ..Default::default()
    }
}

fn from_blocks(ip_blocks: Vec<NetworkIpBlock>) -> NetworkPolicyRule {
    NetworkPolicyRule {
        ip_blocks,
        any_port: true,
        ..Default::default()
    }
}

fn policy(name: &str, rules: Vec<NetworkPolicyRule>) -> NetworkPolicyRules {
    NetworkPolicyRules {
        policy: name.into(),
        rules,
    }
}

fn ingress(policies: Vec<NetworkPolicyRules>) -> NetworkPolicies {
    NetworkPolicies::try_from(&NetworkPolicySnapshot {
        ingress_isolated: !policies.is_empty(),
        ingress: policies,
        peers: peers(),
        ..Default::default()
    })
    .unwrap()
}

fn egress(policies: Vec<NetworkPolicyRules>) -> NetworkPolicies {
    NetworkPolicies::try_from(&NetworkPolicySnapshot {
        egress_isolated: !policies.is_empty(),
        egress: policies,
        peers: peers(),
        ..Default::default()
    })
    .unwrap()
}

fn rule_of(d: &NetDecision) -> Option<(&str, usize)> {
    match &d.decided_by {
        NetDecidedBy::Rule { policy, rule } => Some((policy, *rule)),
        _ => None,
    }
}

#[test]
fn unrestricted_allows_everything() {
    let n = NetworkPolicies::unrestricted();
    assert!(!n.ingress_isolated() && !n.egress_isolated());
    let d = n.ingress(ip("192.0.2.1"), None, 80);
    assert!(d.allowed);
    assert_eq!(d.decided_by, NetDecidedBy::NotIsolated);
    assert_eq!(d.policy_label(), "none");
    assert_eq!(
        d.explain(),
        "no NetworkPolicy selects the workload for ingress"
    );
    let d = n.egress(ip("192.0.2.1"), 443);
    assert!(d.allowed);
    assert_eq!(
        d.explain(),
        "no NetworkPolicy selects the workload for egress"
    );
}

#[test]
fn empty_snapshot_is_unrestricted() {
    let n = NetworkPolicies::try_from(&NetworkPolicySnapshot::default()).unwrap();
    assert!(!n.ingress_isolated() && !n.egress_isolated());
    assert!(n.ingress(ip("10.0.0.9"), None, 1).allowed);
}

#[test]
fn deny_all_isolates_and_names_the_policy() {
    let n = ingress(vec![policy("shop/deny-all", vec![])]);
    assert!(n.ingress_isolated() && !n.egress_isolated());
    let d = n.ingress(ip("10.0.0.1"), Some(&id(FRONTEND)), 8080);
    assert!(!d.allowed);
    assert_eq!(d.policy_label(), "shop/deny-all");
    assert_eq!(
        d.explain(),
        "denied: selected by NetworkPolicy shop/deny-all and no ingress rule allows it"
    );
    // Egress is not isolated by an ingress-only policy.
    assert!(n.egress(ip("10.0.0.2"), 9090).allowed);
}

#[test]
fn any_peer_any_port() {
    let n = ingress(vec![policy("shop/open", vec![any()])]);
    let d = n.ingress(ip("203.0.113.5"), None, 5);
    assert!(d.allowed);
    assert_eq!(rule_of(&d), Some(("shop/open", 0)));
    assert_eq!(
        d.explain(),
        "allowed by NetworkPolicy shop/open, ingress rule 0"
    );
    assert_eq!(d.policy_label(), "shop/open");
}

#[test]
fn ingress_workload_needs_address_and_identity() {
    let n = ingress(vec![policy(
        "shop/from-frontend",
        vec![from_workloads(vec![0], vec![])],
    )]);
    // The frontend, from its address, with its certificate.
    assert!(n.ingress(ip("10.0.0.1"), Some(&id(FRONTEND)), 8080).allowed);
    // v4-mapped v6 is the same address.
    assert!(
        n.ingress(ip("::ffff:10.0.0.1"), Some(&id(FRONTEND)), 8080)
            .allowed
    );
    // Frontend's certificate from another address: impersonation refused.
    assert!(!n.ingress(ip("10.0.0.2"), Some(&id(FRONTEND)), 8080).allowed);
    assert!(
        !n.ingress(ip("10.0.0.99"), Some(&id(FRONTEND)), 8080)
            .allowed
    );
    // Another identity from frontend's address.
    assert!(!n.ingress(ip("10.0.0.1"), Some(&id(SEARCH)), 8080).allowed);
    // Plaintext caller from frontend's address.
    assert!(!n.ingress(ip("10.0.0.1"), None, 8080).allowed);
    // Search, genuinely, is not selected.
    assert!(!n.ingress(ip("10.0.0.2"), Some(&id(SEARCH)), 8080).allowed);
}

#[test]
fn plaintext_caller_matches_ip_blocks_and_any_peer_only() {
    let n = ingress(vec![
        policy("shop/a-frontend", vec![from_workloads(vec![0], vec![])]),
        policy(
            "shop/b-block",
            vec![from_blocks(vec![block("10.0.0.0/24", &[])])],
        ),
    ]);
    let d = n.ingress(ip("10.0.0.1"), None, 8080);
    assert!(d.allowed);
    assert_eq!(rule_of(&d), Some(("shop/b-block", 0)));
    assert!(!n.ingress(ip("10.0.1.1"), None, 8080).allowed);
}

#[test]
fn workload_peer_without_identity_never_matches_ingress() {
    let snap = NetworkPolicySnapshot {
        ingress_isolated: true,
        ingress: vec![policy("shop/p", vec![from_workloads(vec![0], vec![])])],
        peers: vec![peer("legacy", "10.0.0.7", "", vec![])],
        ..Default::default()
    };
    let n = NetworkPolicies::try_from(&snap).unwrap();
    assert!(!n.ingress(ip("10.0.0.7"), None, 80).allowed);
    assert!(!n.ingress(ip("10.0.0.7"), Some(&id(FRONTEND)), 80).allowed);
}

#[test]
fn ip_block_with_except() {
    let n = ingress(vec![policy(
        "shop/blocks",
        vec![from_blocks(vec![
            block("10.0.0.0/8", &["10.1.0.0/16", "10.2.3.4/32"]),
            block("2001:db8::/32", &["2001:db8:1::/48"]),
        ])],
    )]);
    assert!(n.ingress(ip("10.9.9.9"), None, 1).allowed);
    assert!(!n.ingress(ip("10.1.2.3"), None, 1).allowed);
    assert!(!n.ingress(ip("10.2.3.4"), None, 1).allowed);
    assert!(n.ingress(ip("10.2.3.5"), None, 1).allowed);
    assert!(n.ingress(ip("::ffff:10.9.9.9"), None, 1).allowed);
    assert!(!n.ingress(ip("::ffff:10.1.0.1"), None, 1).allowed);
    assert!(!n.ingress(ip("11.0.0.1"), None, 1).allowed);
    assert!(n.ingress(ip("2001:db8:2::1"), None, 1).allowed);
    assert!(!n.ingress(ip("2001:db8:1::1"), None, 1).allowed);
    // Identity does not matter for ip blocks.
    assert!(n.ingress(ip("10.9.9.9"), Some(&id(SEARCH)), 1).allowed);
}

#[test]
fn ports_ranges_and_udp() {
    let n = ingress(vec![policy(
        "shop/ports",
        vec![NetworkPolicyRule {
            any_peer: true,
            ports: vec![
                tcp(80, 80),
                tcp(8000, 8010),
                NetworkPort {
                    protocol: L4Protocol::Udp as i32,
                    port: Some(network_port::Port::Range(NetworkPortRange {
                        first: 53,
                        last: 53,
                    })),
                },
                NetworkPort {
                    protocol: L4Protocol::Sctp as i32,
                    port: None,
                },
            ],
            ..Default::default()
        }],
    )]);
    assert!(n.ingress(ip("1.2.3.4"), None, 80).allowed);
    assert!(!n.ingress(ip("1.2.3.4"), None, 81).allowed);
    assert!(n.ingress(ip("1.2.3.4"), None, 8000).allowed);
    assert!(n.ingress(ip("1.2.3.4"), None, 8010).allowed);
    assert!(!n.ingress(ip("1.2.3.4"), None, 8011).allowed);
    // UDP 53 and every SCTP port never match TCP.
    assert!(!n.ingress(ip("1.2.3.4"), None, 53).allowed);
    assert!(!n.ingress(ip("1.2.3.4"), None, 9999).allowed);
}

#[test]
fn udp_only_rule_matches_no_tcp_port() {
    let n = egress(vec![policy(
        "shop/dns",
        vec![NetworkPolicyRule {
            any_peer: true,
            ports: vec![NetworkPort {
                protocol: L4Protocol::Udp as i32,
                port: None,
            }],
            ..Default::default()
        }],
    )]);
    assert!(!n.egress(ip("10.96.0.10"), 53).allowed);
}

#[test]
fn protocol_without_port_is_every_tcp_port() {
    let n = ingress(vec![policy(
        "shop/tcp",
        vec![NetworkPolicyRule {
            any_peer: true,
            ports: vec![NetworkPort {
                protocol: L4Protocol::Unspecified as i32,
                port: None,
            }],
            ..Default::default()
        }],
    )]);
    assert!(n.ingress(ip("1.2.3.4"), None, 1).allowed);
    assert!(n.ingress(ip("1.2.3.4"), None, 65535).allowed);
}

#[test]
fn peer_and_port_must_both_match() {
    let n = ingress(vec![policy(
        "shop/p",
        vec![from_workloads(vec![0], vec![tcp(8080, 8080)])],
    )]);
    assert!(n.ingress(ip("10.0.0.1"), Some(&id(FRONTEND)), 8080).allowed);
    assert!(!n.ingress(ip("10.0.0.1"), Some(&id(FRONTEND)), 8081).allowed);
}

#[test]
fn egress_workload_by_address() {
    let n = egress(vec![policy(
        "shop/to-search",
        vec![from_workloads(vec![1], vec![tcp(9090, 9090)])],
    )]);
    let d = n.egress(ip("10.0.0.2"), 9090);
    assert!(d.allowed);
    assert_eq!(
        d.explain(),
        "allowed by NetworkPolicy shop/to-search, egress rule 0"
    );
    assert!(n.egress(ip("::ffff:10.0.0.2"), 9090).allowed);
    assert!(!n.egress(ip("10.0.0.1"), 9090).allowed);
    assert!(!n.egress(ip("10.0.0.2"), 9091).allowed);
    let d = n.egress(ip("8.8.8.8"), 9090);
    assert_eq!(
        d.explain(),
        "denied: selected by NetworkPolicy shop/to-search and no egress rule allows it"
    );
    // Ingress is not isolated by an egress-only policy.
    assert!(!n.ingress_isolated());
}

#[test]
fn egress_named_ports() {
    let n = egress(vec![policy(
        "shop/named",
        vec![NetworkPolicyRule {
            any_peer: true,
            ports: vec![port_name("http")],
            ..Default::default()
        }],
    )]);
    // frontend's "http" is 8080, search's is 9090.
    assert!(n.egress(ip("10.0.0.1"), 8080).allowed);
    assert!(!n.egress(ip("10.0.0.1"), 9090).allowed);
    assert!(n.egress(ip("10.0.0.2"), 9090).allowed);
    assert!(!n.egress(ip("10.0.0.2"), 8080).allowed);
    // Outside the mesh a name never matches.
    assert!(!n.egress(ip("8.8.8.8"), 8080).allowed);
    // A UDP named port is not a TCP port of that name.
    let n = egress(vec![policy(
        "shop/named",
        vec![NetworkPolicyRule {
            any_peer: true,
            ports: vec![port_name("dns")],
            ..Default::default()
        }],
    )]);
    assert!(!n.egress(ip("10.0.0.2"), 53).allowed);
}

#[test]
fn egress_ip_block_and_empty_identity_irrelevant() {
    let n = egress(vec![policy(
        "shop/out",
        vec![from_blocks(vec![block("0.0.0.0/0", &["10.0.0.0/8"])])],
    )]);
    assert!(n.egress(ip("93.184.216.34"), 443).allowed);
    assert!(!n.egress(ip("10.0.0.2"), 9090).allowed);
}

#[test]
fn policies_add_up_and_first_rule_decides() {
    let n = ingress(vec![
        policy("shop/a", vec![from_workloads(vec![1], vec![])]),
        policy(
            "shop/b",
            vec![
                from_workloads(vec![1], vec![tcp(1, 1)]),
                from_workloads(vec![0, 1], vec![]),
            ],
        ),
    ]);
    let d = n.ingress(ip("10.0.0.1"), Some(&id(FRONTEND)), 8080);
    assert_eq!(rule_of(&d), Some(("shop/b", 1)));
    let d = n.ingress(ip("10.0.0.2"), Some(&id(SEARCH)), 8080);
    assert_eq!(rule_of(&d), Some(("shop/a", 0)));
    let d = n.ingress(ip("10.0.0.3"), None, 8080);
    assert!(!d.allowed);
    assert_eq!(
        d.decided_by,
        NetDecidedBy::NoRuleAllows {
            isolating: vec![Arc::<str>::from("shop/a"), Arc::from("shop/b")].into()
        }
    );
    assert_eq!(d.policy_label(), "shop/a");
    assert_eq!(
        d.explain(),
        "denied: selected by NetworkPolicy shop/a, shop/b and no ingress rule allows it"
    );
}

#[test]
fn shared_address_peers() {
    // Two workloads behind one address (host network): identity tells them apart.
    let snap = NetworkPolicySnapshot {
        ingress_isolated: true,
        ingress: vec![policy("shop/p", vec![from_workloads(vec![1], vec![])])],
        peers: vec![
            peer("a", "10.0.0.5", FRONTEND, vec![]),
            peer("b", "10.0.0.5", SEARCH, vec![]),
        ],
        ..Default::default()
    };
    let n = NetworkPolicies::try_from(&snap).unwrap();
    assert!(n.ingress(ip("10.0.0.5"), Some(&id(SEARCH)), 1).allowed);
    assert!(!n.ingress(ip("10.0.0.5"), Some(&id(FRONTEND)), 1).allowed);
}

#[test]
fn many_policies() {
    let policies: Vec<_> = (0..1000)
        .map(|i| {
            policy(
                &format!("shop/p{i:04}"),
                vec![from_workloads(vec![0], vec![tcp(i + 1, i + 1)])],
            )
        })
        .collect();
    let n = ingress(policies);
    let d = n.ingress(ip("10.0.0.1"), Some(&id(FRONTEND)), 1000);
    assert_eq!(rule_of(&d), Some(("shop/p0999", 0)));
    assert!(!n.ingress(ip("10.0.0.1"), Some(&id(FRONTEND)), 1001).allowed);
}

#[test]
fn summary_lists_policies_and_peers() {
    let n = ingress(vec![policy("shop/a", vec![any(), any()])]);
    let s = n.summary();
    assert!(s.ingress_isolated && !s.egress_isolated);
    assert_eq!(s.ingress_policies, vec!["shop/a".to_string()]);
    assert_eq!(s.ingress_rules, 2);
    assert_eq!(
        s.peers,
        vec!["shop/frontend".to_string(), "shop/search".to_string()]
    );
}

// === TryFrom errors ===

fn reject(snap: NetworkPolicySnapshot) -> SnapshotError {
    NetworkPolicies::try_from(&snap).unwrap_err()
}

fn with_rule(rule: NetworkPolicyRule) -> NetworkPolicySnapshot {
    NetworkPolicySnapshot {
        egress_isolated: true,
        egress: vec![policy("shop/p", vec![rule])],
        peers: peers(),
        ..Default::default()
    }
}

#[test]
fn rejects_bad_address() {
    let mut snap = with_rule(any());
    snap.peers[1].address = "10.0.0.300".into();
    let e = reject(snap);
    assert!(
        matches!(&e, SnapshotError::BadAddress { field, .. } if field == "peers[1].address"),
        "{e}"
    );
}

#[test]
fn rejects_bad_cidr() {
    for bad in ["10.0.0.1/8", "10.0.0.0/33", "nonsense", ""] {
        let e = reject(with_rule(from_blocks(vec![block(bad, &[])])));
        assert!(
            matches!(&e, SnapshotError::BadCidr { field, .. } if field == "egress[0].rules[0].ip_blocks[0].cidr"),
            "{bad}: {e}"
        );
    }
    let e = reject(with_rule(from_blocks(vec![block(
        "10.0.0.0/8",
        &["10.1.0.1/16"],
    )])));
    assert!(matches!(e, SnapshotError::BadCidr { .. }), "{e}");
}

#[test]
fn rejects_except_outside_cidr() {
    let e = reject(with_rule(from_blocks(vec![block(
        "10.0.0.0/16",
        &["10.1.0.0/24"],
    )])));
    assert!(
        matches!(&e, SnapshotError::ExceptOutsideCidr { field, .. } if field == "egress[0].rules[0].ip_blocks[0].except[0]"),
        "{e}"
    );
    assert!(e.to_string().contains("10.1.0.0/24"), "{e}");
    // Another family is outside too.
    let e = reject(with_rule(from_blocks(vec![block(
        "10.0.0.0/16",
        &["fd00::/8"],
    )])));
    assert!(matches!(e, SnapshotError::ExceptOutsideCidr { .. }), "{e}");
}

#[test]
fn rejects_peer_index_out_of_range() {
    let e = reject(with_rule(from_workloads(vec![0, 2], vec![])));
    assert_eq!(
        e,
        SnapshotError::PeerIndexOutOfRange {
            field: "egress[0].rules[0].workloads[1]".into(),
            index: 2,
            peers: 2
        }
    );
}

#[test]
fn rejects_bad_spiffe_id() {
    let mut snap = with_rule(any());
    snap.peers[0].spiffe_id = "http://cluster.local/ns/shop/sa/frontend".into();
    let e = reject(snap);
    assert!(
        matches!(&e, SnapshotError::BadSpiffeId { field, .. } if field == "peers[0].spiffe_id"),
        "{e}"
    );
}

#[test]
fn rejects_bad_ports() {
    let e = reject(with_rule(from_workloads(vec![0], vec![tcp(0, 0)])));
    assert!(matches!(e, SnapshotError::BadPort { value: 0, .. }), "{e}");
    let e = reject(with_rule(from_workloads(vec![0], vec![tcp(80, 70_000)])));
    assert!(
        matches!(e, SnapshotError::BadPort { value: 70_000, .. }),
        "{e}"
    );
    let e = reject(with_rule(from_workloads(vec![0], vec![tcp(90, 80)])));
    assert_eq!(
        e,
        SnapshotError::BadPortRange {
            field: "egress[0].rules[0].ports[0].range".into(),
            first: 90,
            last: 80
        }
    );
    let mut snap = with_rule(any());
    snap.peers[0].ports[0].port = 0;
    let e = reject(snap);
    assert!(
        matches!(&e, SnapshotError::BadPort { field, .. } if field == "peers[0].ports[0].port"),
        "{e}"
    );
}

#[test]
fn rejects_bad_port_names() {
    let e = reject(with_rule(from_workloads(vec![0], vec![port_name("")])));
    assert!(matches!(e, SnapshotError::BadPortName { .. }), "{e}");
    let snap = NetworkPolicySnapshot {
        ingress_isolated: true,
        ingress: vec![policy(
            "shop/p",
            vec![from_workloads(vec![0], vec![port_name("http")])],
        )],
        peers: peers(),
        ..Default::default()
    };
    let e = reject(snap);
    assert!(
        matches!(&e, SnapshotError::BadPortName { field, .. } if field == "ingress[0].rules[0].ports[0].name"),
        "{e}"
    );
}

#[test]
fn rejects_unknown_protocol() {
    let e = reject(with_rule(from_workloads(
        vec![0],
        vec![NetworkPort {
            protocol: 9,
            port: None,
        }],
    )));
    assert_eq!(
        e,
        SnapshotError::UnknownProtocol {
            field: "egress[0].rules[0].ports[0].protocol".into(),
            value: 9
        }
    );
    let mut snap = with_rule(any());
    snap.peers[1].ports[0].protocol = 42;
    let e = reject(snap);
    assert!(
        matches!(e, SnapshotError::UnknownProtocol { value: 42, .. }),
        "{e}"
    );
}

#[test]
fn rejects_inconsistent_isolation_and_empty_names() {
    let e = reject(NetworkPolicySnapshot {
        ingress_isolated: true,
        ..Default::default()
    });
    assert!(
        matches!(
            e,
            SnapshotError::IsolationMismatch {
                direction: NetDirection::Ingress,
                ..
            }
        ),
        "{e}"
    );
    let e = reject(NetworkPolicySnapshot {
        egress: vec![policy("shop/p", vec![])],
        ..Default::default()
    });
    assert!(
        matches!(
            e,
            SnapshotError::IsolationMismatch {
                direction: NetDirection::Egress,
                ..
            }
        ),
        "{e}"
    );
    let e = reject(NetworkPolicySnapshot {
        egress_isolated: true,
        egress: vec![policy("", vec![])],
        ..Default::default()
    });
    assert!(matches!(e, SnapshotError::EmptyPolicyName { .. }), "{e}");
}

#[test]
fn mapped_v6_cidr_reads_as_v4() {
    let n = egress(vec![policy(
        "shop/mapped",
        vec![from_blocks(vec![block("::ffff:10.0.0.0/104", &[])])],
    )]);
    assert!(n.egress(ip("10.1.2.3"), 1).allowed);
    assert!(!n.egress(ip("11.1.2.3"), 1).allowed);
}
