//! Per-connection cost of NetworkPolicy: `NetworkPolicies::ingress` and `egress` with 10,
//! 100 and 1,000 policies selecting one workload, against a table of 1,000 peer workloads:
//! a connection the first policy allows, one the last allows, and one nothing allows (the
//! default-deny worst case, every rule examined).
//!
//! Each policy looks like one a team writes per client: pods of a namespace (resolved to 5
//! workloads) on a port, plus an ipBlock rule on another port. Run: `cargo bench -p
//! palisade-proxy --bench netpol`. Prints the median ns per decision; nothing is asserted
//! about time.

use std::hint::black_box;
use std::net::IpAddr;

use palisade_certs::SpiffeId;
use palisade_proto::v1;
use palisade_proxy::netpol::NetworkPolicies;

mod support;
use support::{SAMPLE_TIME, SAMPLES, measure};

/// Workloads in the peer table.
const PEERS: usize = 1000;

fn address(i: usize) -> String {
    format!("10.1.{}.{}", i / 250, i % 250 + 1)
}

fn identity(i: usize) -> String {
    format!("spiffe://cluster.local/ns/team-{}/sa/client", i / 5)
}

fn tcp(first: u32, last: u32) -> v1::NetworkPort {
    v1::NetworkPort {
        protocol: v1::L4Protocol::Tcp as i32,
        port: Some(v1::network_port::Port::Range(v1::NetworkPortRange {
            first,
            last,
        })),
    }
}

/// `policies` policies, each allowing 5 peer workloads on 8080 and a /24 on 9090, both
/// directions.
fn snapshot(policies: usize) -> v1::NetworkPolicySnapshot {
    let peers = (0..PEERS)
        .map(|i| v1::NetworkPeerWorkload {
            namespace: format!("team-{}", i / 5),
            name: format!("client-{i}"),
            address: address(i),
            spiffe_id: identity(i),
            ports: vec![v1::NetworkNamedPort {
                name: "http".into(),
                port: 8080,
                protocol: v1::L4Protocol::Tcp as i32,
            }],
        })
        .collect();
    let rules: Vec<v1::NetworkPolicyRules> = (0..policies)
        .map(|p| v1::NetworkPolicyRules {
            policy: format!("shop/allow-{p:04}"),
            rules: vec![
                v1::NetworkPolicyRule {
                    workloads: (0..5).map(|k| ((p * 5 + k) % PEERS) as u32).collect(),
                    ports: vec![tcp(8080, 8080)],
                    ..Default::default()
                },
                v1::NetworkPolicyRule {
                    ip_blocks: vec![v1::NetworkIpBlock {
                        cidr: format!("172.{}.{}.0/24", 16 + p / 250, p % 250),
                        except: vec![format!("172.{}.{}.128/25", 16 + p / 250, p % 250)],
                    }],
                    ports: vec![tcp(9090, 9099)],
                    ..Default::default()
                },
            ],
        })
        .collect();
    v1::NetworkPolicySnapshot {
        ingress_isolated: true,
        egress_isolated: true,
        ingress: rules.clone(),
        egress: rules,
        peers,
    }
}

fn main() {
    println!(
        "NetworkPolicy decisions, median ns per connection ({SAMPLES} samples x {SAMPLE_TIME:?}), {PEERS} peer workloads"
    );
    println!(
        "{:>8}  {:>14}  {:>14}  {:>14}  {:>14}  {:>14}",
        "policies", "in: first", "in: last", "in: denied", "out: last", "out: denied"
    );
    for policies in [10, 100, 1000] {
        let compiled = NetworkPolicies::try_from(&snapshot(policies)).expect("valid snapshot");
        let first_ip: IpAddr = address(0).parse().expect("ip");
        let first_id = SpiffeId::parse(&identity(0)).expect("id");
        let last = (policies - 1) * 5 % PEERS;
        let last_ip: IpAddr = address(last).parse().expect("ip");
        let last_id = SpiffeId::parse(&identity(last)).expect("id");
        // A caller the table knows, on a port no rule opens.
        let denied_ip = first_ip;
        assert!(compiled.ingress(first_ip, Some(&first_id), 8080).allowed);
        assert!(compiled.ingress(last_ip, Some(&last_id), 8080).allowed);
        assert!(!compiled.ingress(denied_ip, Some(&first_id), 7070).allowed);
        assert!(compiled.egress(last_ip, 8080).allowed);
        assert!(!compiled.egress(denied_ip, 7070).allowed);
        let t_first = measure(|| {
            black_box(compiled.ingress(black_box(first_ip), Some(&first_id), 8080));
        });
        let t_last = measure(|| {
            black_box(compiled.ingress(black_box(last_ip), Some(&last_id), 8080));
        });
        let t_denied = measure(|| {
            black_box(compiled.ingress(black_box(denied_ip), Some(&first_id), 7070));
        });
        let t_out_last = measure(|| {
            black_box(compiled.egress(black_box(last_ip), 8080));
        });
        let t_out_denied = measure(|| {
            black_box(compiled.egress(black_box(denied_ip), 7070));
        });
        println!(
            "{policies:>8}  {t_first:>14.0}  {t_last:>14.0}  {t_denied:>14.0}  {t_out_last:>14.0}  {t_out_denied:>14.0}"
        );
    }
}
