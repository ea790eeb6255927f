//! Kubernetes NetworkPolicy and Namespace: loading and defaulting of every field, rejection
//! of malformed documents (file, document and field named), compilation into the
//! NetworkPolicySnapshot of each workload, and its delivery on the discovery stream.

use palisade_control_plane::config::load_files;
use palisade_control_plane::model::L4Protocol;
use palisade_control_plane::netpol::{NetworkPeer, PolicyPort};
use palisade_control_plane::test_util::{TestControlPlane, generate_ca};
use palisade_control_plane::{MeshSnapshot, ResourceType, network_policy_for, snapshots_for};
use palisade_proto::v1 as pb;
use palisade_proto::v1::discovery_client::DiscoveryClient;
use palisade_proto::v1::discovery_response::Resources;
use palisade_proto::v1::network_port::Port;
use prost::Message;

use super::support::{ProxyStream, ack, nack, subscribe, timed};

/// Namespaces (one declared with labels, one implied by its workload) and workloads with
/// TCP, UDP and named ports.
const MESH: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {team: shop, kubernetes.io/metadata.name: forged}
---
apiVersion: v1
kind: Namespace
metadata: {name: billing, labels: {team: money, env: prod}}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: frontend, namespace: shop, labels: {app: frontend, tier: web}}
spec:
  serviceAccount: frontend
  address: 127.0.2.1
  ports:
  - {name: http, port: 8080}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: search, namespace: shop, labels: {app: search, tier: backend}}
spec:
  serviceAccount: search
  address: 127.0.2.2
  ports:
  - {name: http, port: 8080}
  - {name: metrics, port: 9100}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: payments, namespace: shop, labels: {app: payments}}
spec:
  serviceAccount: payments
  address: 127.0.2.3
  ports:
  - {name: grpc, port: 9090}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: ledger, namespace: billing, labels: {app: ledger, tier: backend}}
spec:
  serviceAccount: ledger
  address: 127.0.2.4
  ports:
  - {name: grpc, port: 9090}
  - {name: sync, port: 7000, protocol: SCTP}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: probe, namespace: other, labels: {app: probe}}
spec:
  address: 127.0.2.5
";

/// A NetworkPolicy `shop/<name>` with `spec` in flow style.
fn np(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: {name}, namespace: shop}}\nspec: {spec}\n"
    )
}

fn load(policies: &str) -> MeshSnapshot {
    match load_files(&[("mesh.yaml", MESH), ("np.yaml", policies)]) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

fn compiled(snapshot: &MeshSnapshot, ns: &str, name: &str) -> pb::NetworkPolicySnapshot {
    network_policy_for(snapshot, ns, name).unwrap()
}

/// The peers a rule names, as `ns/name`.
fn peer_names(s: &pb::NetworkPolicySnapshot, rule: &pb::NetworkPolicyRule) -> Vec<String> {
    rule.workloads
        .iter()
        .map(|i| {
            let p = &s.peers[*i as usize];
            format!("{}/{}", p.namespace, p.name)
        })
        .collect()
}

fn range(first: u32, last: u32) -> Option<Port> {
    Some(Port::Range(pb::NetworkPortRange { first, last }))
}

fn tcp(port: Option<Port>) -> pb::NetworkPort {
    pb::NetworkPort {
        protocol: pb::L4Protocol::Tcp as i32,
        port,
    }
}

#[test]
fn policy_types_default_as_the_api_server_does() {
    let cases = [
        // (spec, ingress isolated, egress isolated)
        ("{podSelector: {matchLabels: {app: search}}}", true, false),
        (
            "{podSelector: {matchLabels: {app: search}}, egress: []}",
            true,
            false,
        ),
        (
            "{podSelector: {matchLabels: {app: search}}, egress: [{}]}",
            true,
            true,
        ),
        (
            "{podSelector: {matchLabels: {app: search}}, policyTypes: [], egress: [{}]}",
            true,
            true,
        ),
        (
            "{podSelector: {matchLabels: {app: search}}, policyTypes: [Egress], ingress: [{}]}",
            false,
            true,
        ),
        (
            "{podSelector: {matchLabels: {app: search}}, policyTypes: [Ingress, Egress]}",
            true,
            true,
        ),
    ];
    for (spec, ingress, egress) in cases {
        let snapshot = load(&np("p", spec));
        let s = compiled(&snapshot, "shop", "search");
        assert_eq!(
            (s.ingress_isolated, s.egress_isolated),
            (ingress, egress),
            "{spec}"
        );
        // A direction the policy does not isolate carries none of its rules.
        assert_eq!(s.ingress.len(), usize::from(ingress), "{spec}");
        assert_eq!(s.egress.len(), usize::from(egress), "{spec}");
        // Not selected: same namespace, other labels.
        let other = compiled(&snapshot, "shop", "frontend");
        assert_eq!(other, pb::NetworkPolicySnapshot::default(), "{spec}");
    }
    // No spec at all: every pod of the namespace, ingress isolated, nothing allowed. (The
    // name is a DNS subdomain, as Kubernetes allows for NetworkPolicy.)
    let snapshot = load(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: deny.all, namespace: shop}\n",
    );
    for name in ["frontend", "search", "payments"] {
        let s = compiled(&snapshot, "shop", name);
        assert!(s.ingress_isolated && !s.egress_isolated, "{name}");
        assert_eq!(s.ingress[0].policy, "shop/deny.all");
        assert!(s.ingress[0].rules.is_empty());
    }
    // Only its own namespace.
    assert!(!compiled(&snapshot, "billing", "ledger").ingress_isolated);
}

#[test]
fn empty_and_absent_lists_follow_the_api() {
    let snapshot = load(&np(
        "p",
        "{podSelector: {}, ingress: [{}, {from: [], ports: []}, \
         {from: [{podSelector: {matchLabels: {app: frontend}}}]}, {ports: [{port: 8080}]}]}",
    ));
    let s = compiled(&snapshot, "shop", "search");
    let rules = &s.ingress[0].rules;
    assert_eq!(rules.len(), 4);
    for r in &rules[..2] {
        assert!(r.any_peer && r.any_port, "{r:?}");
        assert!(r.workloads.is_empty() && r.ports.is_empty() && r.ip_blocks.is_empty());
    }
    assert!(!rules[2].any_peer && rules[2].any_port);
    assert_eq!(peer_names(&s, &rules[2]), ["shop/frontend"]);
    assert!(rules[3].any_peer && !rules[3].any_port);
    assert_eq!(rules[3].ports, [tcp(range(8080, 8080))]);
}

#[test]
fn match_expressions_each_operator() {
    let selects = |expression: &str| -> Vec<String> {
        let snapshot = load(&np(
            "p",
            &format!("{{podSelector: {{matchExpressions: [{expression}]}}}}"),
        ));
        snapshot
            .workloads()
            .filter(|w| compiled(&snapshot, &w.namespace, &w.name).ingress_isolated)
            .map(|w| w.name.clone())
            .collect()
    };
    assert_eq!(
        selects("{key: app, operator: In, values: [search, payments]}"),
        ["payments", "search"]
    );
    // NotIn matches a pod without the key (payments has no tier).
    assert_eq!(
        selects("{key: tier, operator: NotIn, values: [web]}"),
        ["payments", "search"]
    );
    assert_eq!(
        selects("{key: tier, operator: Exists}"),
        ["frontend", "search"]
    );
    assert_eq!(selects("{key: tier, operator: DoesNotExist}"), ["payments"]);
    assert_eq!(
        selects("{key: tier, operator: Exists, values: []}"),
        ["frontend", "search"]
    );
    // matchLabels and matchExpressions together: both hold.
    let snapshot = load(&np(
        "p",
        "{podSelector: {matchLabels: {tier: backend}, matchExpressions: \
         [{key: app, operator: NotIn, values: [search]}]}}",
    ));
    assert!(
        snapshot
            .workloads()
            .all(|w| !compiled(&snapshot, &w.namespace, &w.name).ingress_isolated)
    );
}

#[test]
fn namespace_selectors_see_namespace_labels_and_the_automatic_name() {
    let snapshot = load(&np(
        "p",
        "{podSelector: {matchLabels: {app: search}}, ingress: [\
         {from: [{namespaceSelector: {matchLabels: {team: money}}}]}, \
         {from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: other}}}]}, \
         {from: [{namespaceSelector: {}}]}, \
         {from: [{namespaceSelector: {}, podSelector: {matchLabels: {tier: backend}}}]}, \
         {from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: forged}}}]}, \
         {from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}, \
                  podSelector: {matchExpressions: [{key: app, operator: In, values: [payments]}]}}, \
                 {podSelector: {matchLabels: {app: frontend}}}]}]}",
    ));
    let s = compiled(&snapshot, "shop", "search");
    let rules = &s.ingress[0].rules;
    assert_eq!(peer_names(&s, &rules[0]), ["billing/ledger"]);
    // A namespace implied by its workload carries its name label.
    assert_eq!(peer_names(&s, &rules[1]), ["other/probe"]);
    assert_eq!(
        peer_names(&s, &rules[2]).len(),
        5,
        "{{}} is every namespace"
    );
    // Both selectors in one peer: matching pods in matching namespaces.
    assert_eq!(peer_names(&s, &rules[3]), ["billing/ledger", "shop/search"]);
    // The name label is the API server's: a written one is overridden.
    assert!(peer_names(&s, &rules[4]).is_empty());
    assert!(!rules[4].any_peer, "selecting nothing is not every peer");
    assert_eq!(
        peer_names(&s, &rules[5]),
        ["shop/frontend", "shop/payments"]
    );
    assert_eq!(
        snapshot.namespace("shop").unwrap().labels["kubernetes.io/metadata.name"],
        "shop"
    );
    assert_eq!(snapshot.namespace("billing").unwrap().labels["env"], "prod");
    assert_eq!(snapshot.namespaces().len(), 3);

    // The peer table: each workload once, sorted, with address, identity and named ports.
    let names: Vec<_> = s
        .peers
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    assert_eq!(
        names,
        [
            "billing/ledger",
            "other/probe",
            "shop/frontend",
            "shop/payments",
            "shop/search"
        ]
    );
    let ledger = &s.peers[0];
    assert_eq!(ledger.address, "127.0.2.4");
    assert_eq!(
        ledger.spiffe_id,
        "spiffe://cluster.local/ns/billing/sa/ledger"
    );
    assert_eq!(
        ledger.ports,
        [
            pb::NetworkNamedPort {
                name: "grpc".into(),
                port: 9090,
                protocol: pb::L4Protocol::Tcp as i32
            },
            pb::NetworkNamedPort {
                name: "sync".into(),
                port: 7000,
                protocol: pb::L4Protocol::Sctp as i32
            },
        ]
    );
}

#[test]
fn ip_blocks_are_canonical_with_their_exceptions() {
    let snapshot = load(&np(
        "p",
        "{podSelector: {matchLabels: {app: search}}, policyTypes: [Egress], egress: [\
         {to: [{ipBlock: {cidr: 10.1.2.3/8, except: [10.1.0.0/16, 10.2.3.4/24]}}, \
               {ipBlock: {cidr: 'fd00::1/64'}}]}]}",
    ));
    let policy = snapshot.network_policies().next().unwrap();
    match &policy.egress[0].peers[0] {
        NetworkPeer::IpBlock { cidr, except } => {
            assert_eq!(cidr.to_string(), "10.0.0.0/8");
            assert_eq!(except.len(), 2);
        }
        other => panic!("ipBlock expected, got {other:?}"),
    }
    let s = compiled(&snapshot, "shop", "search");
    let rule = &s.egress[0].rules[0];
    assert!(!rule.any_peer && rule.workloads.is_empty());
    assert_eq!(
        rule.ip_blocks,
        [
            pb::NetworkIpBlock {
                cidr: "10.0.0.0/8".into(),
                except: vec!["10.1.0.0/16".into(), "10.2.3.0/24".into()],
            },
            pb::NetworkIpBlock {
                cidr: "fd00::/64".into(),
                except: vec![],
            },
        ]
    );
}

#[test]
fn ports_numeric_ranges_named_and_protocols() {
    let snapshot = load(&np(
        "p",
        "{podSelector: {matchLabels: {app: search}}, policyTypes: [Ingress, Egress], \
         ingress: [\
           {ports: [{port: metrics}, {port: 8000, endPort: 8100}, {protocol: UDP, port: dns}, \
                    {protocol: UDP}, {port: dns}]}, \
           {ports: [{port: nope}, {protocol: SCTP, port: metrics}]}], \
         egress: [{to: [{namespaceSelector: {}}], ports: [{port: grpc}, {protocol: SCTP, port: sync}, \
                   {protocol: SCTP, port: 9000, endPort: 9001}]}]}",
    ));
    let policy = snapshot.network_policies().next().unwrap();
    assert_eq!(
        policy.ingress[0].ports[1].port,
        Some(PolicyPort::Range {
            first: 8000,
            last: 8100
        })
    );
    assert_eq!(policy.ingress[0].ports[3].protocol, L4Protocol::Udp);
    assert_eq!(policy.ingress[0].ports[3].port, None);

    let s = compiled(&snapshot, "shop", "search");
    let udp = |port| pb::NetworkPort {
        protocol: pb::L4Protocol::Udp as i32,
        port,
    };
    // Ingress named ports resolve against search's own ports, name and protocol both; a
    // name it lacks is dropped (`dns` is UDP, so `{port: dns}` over TCP names nothing).
    assert_eq!(
        s.ingress[0].rules[0].ports,
        [
            tcp(range(9100, 9100)),
            tcp(range(8000, 8100)),
            udp(range(53, 53)),
            udp(None),
        ]
    );
    let nothing = &s.ingress[0].rules[1];
    assert!(!nothing.any_port && nothing.ports.is_empty(), "{nothing:?}");

    // Egress named ports stay names; every workload with such a port joins the peers.
    let egress = &s.egress[0].rules[0];
    assert_eq!(
        egress.ports,
        [
            tcp(Some(Port::Name("grpc".into()))),
            pb::NetworkPort {
                protocol: pb::L4Protocol::Sctp as i32,
                port: Some(Port::Name("sync".into())),
            },
            pb::NetworkPort {
                protocol: pb::L4Protocol::Sctp as i32,
                port: range(9000, 9001),
            },
        ]
    );
    assert_eq!(peer_names(&s, egress).len(), 5);
    let with_grpc: Vec<_> = s
        .peers
        .iter()
        .filter(|p| p.ports.iter().any(|port| port.name == "grpc"))
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(with_grpc, ["ledger", "payments"]);
}

#[test]
fn egress_named_ports_add_their_workloads_to_the_peers() {
    // The rule's peers are ipBlocks only; the proxy still needs the workloads that have a
    // `grpc` port to resolve the name for a destination in the block.
    let snapshot = load(&np(
        "p",
        "{podSelector: {matchLabels: {app: frontend}}, policyTypes: [Egress], \
         egress: [{to: [{ipBlock: {cidr: 127.0.2.0/24}}], ports: [{port: grpc}]}]}",
    ));
    let s = compiled(&snapshot, "shop", "frontend");
    assert!(s.egress[0].rules[0].workloads.is_empty());
    let peers: Vec<_> = s.peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(peers, ["ledger", "payments"]);
}

#[test]
fn compiled_snapshots_are_deterministic() {
    let policies = [
        np(
            "b",
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}}, \
             {podSelector: {matchLabels: {app: frontend}}}]}]}",
        ),
        np(
            "a",
            "{podSelector: {matchLabels: {app: search}}, egress: [{to: [{podSelector: {}}], \
             ports: [{port: grpc}]}]}",
        ),
    ];
    let forward = policies.join("---\n");
    let backward = [policies[1].clone(), policies[0].clone()].join("---\n");
    let one = compiled(&load(&forward), "shop", "search");
    let two = compiled(&load(&backward), "shop", "search");
    assert_eq!(one.encode_to_vec(), two.encode_to_vec());
    // Ordered by (namespace, name) whatever the file order.
    let names: Vec<_> = one.ingress.iter().map(|p| p.policy.as_str()).collect();
    assert_eq!(names, ["shop/a", "shop/b"]);
    assert_eq!(one.egress[0].policy, "shop/a");
}

#[test]
fn udp_and_sctp_ports_load_and_are_never_proxied() {
    let snapshot = load("");
    let search = snapshot.workload("shop", "search").unwrap();
    assert_eq!(search.ports.len(), 2, "only TCP ports are carried");
    assert_eq!(search.non_tcp_ports[0].port, 53);
    assert_eq!(search.non_tcp_ports[0].protocol, L4Protocol::Udp);
    let named: Vec<_> = search.named_ports().map(|(n, p, _)| (n, p)).collect();
    assert_eq!(named, [("http", 8080), ("metrics", 9100), ("dns", 53)]);
    // The workload snapshot its proxy receives lists TCP ports only; static snapshots hold
    // the types proxies subscribe to.
    let (ca, _) = generate_ca("cluster.local").unwrap();
    let all = snapshots_for(
        std::sync::Arc::new(snapshot.clone()),
        ca.bundle().clone(),
        "shop",
        "search",
    )
    .unwrap();
    assert_eq!(all.len(), pb::ALL_TYPE_URLS.len());
    let ports: Vec<u32> = all
        .iter()
        .find_map(|r| match &r.resources {
            Some(Resources::Workload(w)) => Some(w.ports.iter().map(|p| p.port).collect()),
            _ => None,
        })
        .unwrap();
    assert_eq!(ports, [8080, 9100]);

    // A Service cannot route to a UDP port.
    let service = "apiVersion: palisade.dev/v1alpha1\nkind: Service\n\
                   metadata: {name: search, namespace: shop}\n\
                   spec: {selector: {app: search}, ports: [{port: 53}]}\n";
    let err = load_files(&[("mesh.yaml", MESH), ("s.yaml", service)]).unwrap_err();
    assert!(
        err.to_string().contains(
            "s.yaml: document 1 (Service shop/search): spec.ports[0].targetPort: port 53 of \
             Workload shop/search is UDP; a Service carries TCP only"
        ),
        "{err}"
    );
    // The same number for TCP and UDP is two ports; twice for one protocol is an error.
    let twice = MESH.replace(
        "  - {name: dns, port: 53, protocol: UDP}\n",
        "  - {name: dns, port: 53, protocol: UDP}\n  - {name: dns-tcp, port: 53}\n  \
         - {port: 53, protocol: UDP}\n",
    );
    let err = load_files(&[("mesh.yaml", twice.as_str())]).unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.ports[4].port: port 53/UDP is listed twice (also spec.ports[2])"),
        "{err}"
    );
}

#[test]
fn non_tcp_ports_are_warned_about_once_per_policy() {
    let snapshot = load(&[
        np("tcp-only", "{ingress: [{ports: [{port: 80}, {protocol: TCP}]}]}"),
        np(
            "with-udp",
            "{ingress: [{ports: [{port: 80}]}, {ports: [{protocol: UDP, port: 53}, {protocol: SCTP}]}]}",
        ),
        np("with-sctp", "{policyTypes: [Egress], egress: [{ports: [{protocol: SCTP}]}]}"),
    ]
    .join("---\n"));
    let warnings: Vec<String> = snapshot
        .warnings()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        warnings,
        [
            "np.yaml: document 3 (NetworkPolicy shop/with-sctp): spec.egress[0].ports[0].protocol: \
             SCTP (and any other non-TCP) ports are not enforced by the sidecar: non-TCP traffic \
             stays denied by the capture rules (palisade init) except what they let through \
             (DNS, allowed UDP ports)",
            "np.yaml: document 2 (NetworkPolicy shop/with-udp): spec.ingress[1].ports[0].protocol: \
             UDP (and any other non-TCP) ports are not enforced by the sidecar: non-TCP traffic \
             stays denied by the capture rules (palisade init) except what they let through \
             (DNS, allowed UDP ports)",
        ]
    );
    assert!(load("").warnings().is_empty());
}

#[test]
fn malformed_network_policies_name_file_document_and_field() {
    const AT: &str = "np.yaml: document 1 (NetworkPolicy shop/p): ";
    let ingress = |rule: &str| np("p", &format!("{{ingress: [{rule}]}}"));
    let cases: Vec<(&str, String, String)> = vec![
        (
            "unknown operator",
            np("p", "{podSelector: {matchExpressions: [{key: app, operator: Is, values: [a]}]}}"),
            format!("{AT}spec.podSelector.matchExpressions[0].operator: unknown operator \"Is\""),
        ),
        (
            "In without values",
            np("p", "{podSelector: {matchExpressions: [{key: app, operator: In}]}}"),
            format!("{AT}spec.podSelector.matchExpressions[0].values: operator In needs at least one value"),
        ),
        (
            "NotIn with empty values",
            np("p", "{podSelector: {matchExpressions: [{key: app, operator: NotIn, values: []}]}}"),
            format!("{AT}spec.podSelector.matchExpressions[0].values: operator NotIn needs at least one value"),
        ),
        (
            "Exists with values",
            np("p", "{podSelector: {matchExpressions: [{key: app, operator: Exists, values: [a]}]}}"),
            format!("{AT}spec.podSelector.matchExpressions[0].values: operator Exists takes no values"),
        ),
        (
            "endPort below port",
            ingress("{ports: [{port: 90, endPort: 80}]}"),
            format!("{AT}spec.ingress[0].ports[0].endPort: 80 is below port 90"),
        ),
        (
            "endPort with a named port",
            ingress("{ports: [{port: http, endPort: 90}]}"),
            format!("{AT}spec.ingress[0].ports[0].endPort: cannot be used with the named port \"http\""),
        ),
        (
            "endPort without port",
            ingress("{ports: [{endPort: 90}]}"),
            format!("{AT}spec.ingress[0].ports[0].endPort: needs a numeric port"),
        ),
        (
            "port out of range",
            ingress("{ports: [{port: 70000}]}"),
            format!("{AT}spec.ingress[0].ports[0].port: port 70000 is out of range"),
        ),
        (
            "quoted number",
            ingress("{ports: [{port: '80'}]}"),
            format!("{AT}spec.ingress[0].ports[0].port: \"80\" is not a port name"),
        ),
        (
            "bad CIDR",
            ingress("{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}"),
            format!("{AT}spec.ingress[0].from[0].ipBlock.cidr: \"10.0.0.0/33\" is not a CIDR"),
        ),
        (
            "bare address",
            ingress("{from: [{ipBlock: {cidr: 10.0.0.1}}]}"),
            format!("{AT}spec.ingress[0].from[0].ipBlock.cidr: \"10.0.0.1\" is not a CIDR"),
        ),
        (
            "except outside",
            ingress("{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}"),
            format!("{AT}spec.ingress[0].from[0].ipBlock.except[0]: 11.0.0.0/16 is not strictly inside cidr 10.0.0.0/8"),
        ),
        (
            "except equal",
            ingress("{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/8]}}]}"),
            format!("{AT}spec.ingress[0].from[0].ipBlock.except[0]: 10.0.0.0/8 is not strictly inside"),
        ),
        (
            "except of another family",
            ingress("{from: [{ipBlock: {cidr: 10.0.0.0/8, except: ['fd00::/8']}}]}"),
            format!("{AT}spec.ingress[0].from[0].ipBlock.except[0]: fd00::/8 is not strictly inside"),
        ),
        (
            "unknown field",
            np("p", "{podSelector: {}, ingres: []}"),
            format!("{AT}spec.ingres: unknown field `ingres`"),
        ),
        (
            "unknown field in a peer",
            ingress("{from: [{podSelector: {}, serviceAccount: x}]}"),
            format!("{AT}spec.ingress[0].from[0].serviceAccount: unknown field `serviceAccount`"),
        ),
        (
            "unknown policyType",
            np("p", "{policyTypes: [Ingress, ingress]}"),
            format!("{AT}spec.policyTypes[1]: unknown policy type \"ingress\""),
        ),
        (
            "bad protocol",
            ingress("{ports: [{protocol: tcp, port: 80}]}"),
            format!("{AT}spec.ingress[0].ports[0].protocol: unknown protocol \"tcp\""),
        ),
        (
            "bad label key",
            np("p", "{podSelector: {matchLabels: {'-app': a}}}"),
            format!("{AT}spec.podSelector.matchLabels: label key \"-app\" is not valid"),
        ),
        (
            "bad label value",
            np("p", "{podSelector: {matchLabels: {app: 'a b'}}}"),
            format!("{AT}spec.podSelector.matchLabels[app]: label value \"a b\" is not valid"),
        ),
        (
            "bad expression value",
            np("p", "{podSelector: {matchExpressions: [{key: app, operator: In, values: ['a/b']}]}}"),
            format!("{AT}spec.podSelector.matchExpressions[0].values[0]: label value \"a/b\" is not valid"),
        ),
        (
            "ipBlock with a selector",
            np("p", "{policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, namespaceSelector: {}}]}]}"),
            format!("{AT}spec.egress[0].to[0]: ipBlock cannot be combined with podSelector or namespaceSelector"),
        ),
        (
            "empty peer",
            ingress("{from: [{}]}"),
            format!("{AT}spec.ingress[0].from[0]: a peer needs podSelector, namespaceSelector or ipBlock"),
        ),
        (
            "wrong apiVersion",
            np("p", "{}").replace("networking.k8s.io/v1", "networking.k8s.io/v1beta1"),
            format!("{AT}apiVersion: unsupported apiVersion \"networking.k8s.io/v1beta1\" for kind NetworkPolicy (expected networking.k8s.io/v1)"),
        ),
        (
            "duplicate",
            [np("p", "{}"), np("p", "{}")].join("---\n"),
            "np.yaml: document 2 (NetworkPolicy shop/p): metadata.name: NetworkPolicy shop/p is already defined in np.yaml document 1".to_owned(),
        ),
    ];
    let mut failures = Vec::new();
    for (name, text, want) in &cases {
        match load_files(&[("mesh.yaml", MESH), ("np.yaml", text.as_str())]) {
            Ok(_) => failures.push(format!("{name}: loaded, expected an error")),
            Err(e) if !e.to_string().contains(want.as_str()) => {
                failures.push(format!("{name}: {e} lacks {want:?}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn malformed_namespaces_and_workload_ports_are_rejected() {
    let cases = [
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, namespace: x}\n",
            "ns.yaml: document 1 (Namespace x/shop): metadata.namespace: a Namespace is cluster-scoped",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {'a b': c}}\n",
            "ns.yaml: document 1 (Namespace default/shop): metadata.labels: label key \"a b\" is not valid",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: Shop}\n",
            "ns.yaml: document 1 (Namespace default/Shop): metadata.name: \"Shop\" is not a DNS-1123 label",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\nstatus: {}\n",
            "ns.yaml: document 1 (Namespace default/shop): status: unknown field `status`",
        ),
        (
            "apiVersion: palisade.dev/v1alpha1\nkind: Workload\nmetadata: {name: w, namespace: x}\n\
             spec: {address: 127.0.3.1, ports: [{port: 53, protocol: QUIC}]}\n",
            "ns.yaml: document 1 (Workload x/w): spec.ports[0].protocol: unknown protocol \"QUIC\" (expected TCP, UDP or SCTP)",
        ),
        (
            "apiVersion: palisade.dev/v1alpha1\nkind: Workload\nmetadata: {name: w, namespace: x}\n\
             spec: {address: 127.0.3.1, ports: [{port: 53, protocol: UDP, appProtocol: http}]}\n",
            "ns.yaml: document 1 (Workload x/w): spec.ports[0].appProtocol: is for TCP ports; this port is UDP",
        ),
    ];
    for (text, want) in cases {
        let err = load_files(&[("ns.yaml", text)]).unwrap_err().to_string();
        assert!(err.contains(want), "{err}\nlacks {want}");
    }
    // Kubernetes' exported form loads: spec.finalizers means nothing to the mesh.
    let ok = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\nspec: {finalizers: [kubernetes]}\n";
    let snapshot = load_files(&[("ns.yaml", ok)]).unwrap();
    assert_eq!(
        snapshot.namespace("shop").unwrap().labels["kubernetes.io/metadata.name"],
        "shop"
    );
}

/// The mesh and one policy file, as a control plane's directory.
fn files(policies: &str) -> Vec<(&'static str, &str)> {
    vec![("mesh.yaml", MESH), ("np.yaml", policies)]
}

fn network_policy(resp: &pb::DiscoveryResponse) -> &pb::NetworkPolicySnapshot {
    assert_eq!(resp.type_url, pb::NETWORK_POLICY_TYPE_URL);
    match &resp.resources {
        Some(Resources::NetworkPolicy(s)) => s,
        other => panic!("network policy snapshot expected, got {other:?}"),
    }
}

async fn open(
    cp: &TestControlPlane,
    ns: &str,
    name: &str,
) -> (DiscoveryClient<tonic::transport::Channel>, ProxyStream) {
    let (creds, _) = cp.certify(ns, name).await.unwrap();
    let mut client = DiscoveryClient::new(cp.channel(Some(&creds)).await.unwrap());
    let stream = ProxyStream::open(
        &mut client,
        subscribe(pb::NETWORK_POLICY_TYPE_URL, Some((ns, name))),
    )
    .await
    .unwrap();
    (client, stream)
}

#[tokio::test]
async fn discovery_pushes_network_policy_only_to_the_workloads_it_concerns() {
    let empty = "";
    let cp = timed("start", TestControlPlane::start(&files(empty)))
        .await
        .unwrap();
    let (search_client, mut search) = open(&cp, "shop", "search").await;
    let (frontend_client, mut frontend) = open(&cp, "shop", "frontend").await;
    let search_first = search.recv().await;
    let frontend_first = frontend.recv().await;
    assert_eq!(
        network_policy(&search_first),
        &pb::NetworkPolicySnapshot::default(),
        "not isolated"
    );
    search.send(ack(&search_first)).await;
    frontend.send(ack(&frontend_first)).await;
    timed(
        "both synced",
        cp.control_plane
            .wait_for_proxies(|p| p.len() == 2 && p.iter().all(|p| p.is_synced())),
    )
    .await;

    // A policy selecting search, naming frontend as its peer: pushed to search only.
    let to_search = np(
        "search-in",
        "{podSelector: {matchLabels: {app: search}}, ingress: [{from: [{podSelector: \
         {matchLabels: {app: frontend}}}], ports: [{port: http}]}]}",
    );
    cp.write_file("np.yaml", &to_search).unwrap();
    cp.control_plane.reload().unwrap();
    let pushed = search.recv().await;
    let s = network_policy(&pushed);
    assert!(s.ingress_isolated && !s.egress_isolated);
    assert_eq!(s.ingress[0].policy, "shop/search-in");
    assert_eq!(peer_names(s, &s.ingress[0].rules[0]), ["shop/frontend"]);
    assert_eq!(s.ingress[0].rules[0].ports, [tcp(range(8080, 8080))]);
    search.send(ack(&pushed)).await;

    // A NACK is recorded for the type.
    let rejected = np(
        "search-in",
        "{podSelector: {matchLabels: {app: search}}, ingress: [{from: [{podSelector: \
         {matchLabels: {app: payments}}}]}]}",
    );
    cp.write_file("np.yaml", &rejected).unwrap();
    cp.control_plane.reload().unwrap();
    let second = search.recv().await;
    search
        .send(nack(&second, &pushed.version_info, "not enforced yet"))
        .await;
    timed(
        "NACK recorded",
        cp.control_plane.wait_until_proxies(|ps| {
            ps.iter().any(|p| {
                p.types
                    .get(&ResourceType::NetworkPolicy)
                    .and_then(|t| t.last_nack.as_ref())
                    .is_some_and(|n| n.version == second.version_info)
            })
        }),
    )
    .await;

    // A policy selecting frontend too: frontend's next message is this change's snapshot,
    // so it was sent nothing for the two changes that did not concern it.
    let both = [
        rejected.clone(),
        np(
            "frontend-out",
            "{podSelector: {matchLabels: {app: frontend}}, policyTypes: [Egress], \
             egress: [{to: [{podSelector: {matchLabels: {app: search}}}]}]}",
        ),
    ]
    .join("---\n");
    cp.write_file("np.yaml", &both).unwrap();
    cp.control_plane.reload().unwrap();
    let next = frontend.recv().await;
    let f = network_policy(&next);
    assert!(!f.ingress_isolated && f.egress_isolated);
    assert_eq!(f.egress[0].policy, "shop/frontend-out");
    assert_eq!(peer_names(f, &f.egress[0].rules[0]), ["shop/search"]);
    let status = cp.control_plane.proxies();
    let sent = |name: &str| {
        status
            .iter()
            .find(|p| p.workload.name == name)
            .and_then(|p| p.types[&ResourceType::NetworkPolicy].sent_version.clone())
    };
    // search's snapshot did not change with frontend's policy: still the NACKed version.
    assert_eq!(sent("search"), Some(second.version_info.clone()));
    drop((search_client, search, frontend_client, frontend));
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn a_malformed_network_policy_keeps_the_last_good_configuration() {
    let good = np(
        "search-in",
        "{podSelector: {matchLabels: {app: search}}, ingress: [{from: [{podSelector: \
         {matchLabels: {app: frontend}}}]}]}",
    );
    let cp = timed("start", TestControlPlane::start(&files(&good)))
        .await
        .unwrap();
    let (client, mut stream) = open(&cp, "shop", "search").await;
    let first = stream.recv().await;
    stream.send(ack(&first)).await;
    let before = cp.control_plane.snapshot();

    let bad = good.replace(
        "ingress: [{from:",
        "ingress: [{ports: [{port: 90, endPort: 80}], from:",
    );
    assert_ne!(bad, good);
    cp.write_file("np.yaml", &bad).unwrap();
    let err = cp.control_plane.reload().unwrap_err();
    assert!(
        err.to_string().contains(
            "np.yaml: document 1 (NetworkPolicy shop/search-in): spec.ingress[0].ports[0].endPort: \
             80 is below port 90"
        ),
        "{err}"
    );
    assert_eq!(
        cp.control_plane.snapshot(),
        before,
        "last good configuration in force"
    );
    assert_eq!(
        network_policy_for(&cp.control_plane.snapshot(), "shop", "search").unwrap(),
        *network_policy(&first)
    );

    // The next snapshot the proxy sees is the next valid configuration's.
    cp.write_file("np.yaml", &good.replace("app: frontend", "app: payments"))
        .unwrap();
    cp.control_plane.reload().unwrap();
    let pushed = stream.recv().await;
    let s = network_policy(&pushed);
    assert_eq!(peer_names(s, &s.ingress[0].rules[0]), ["shop/payments"]);
    drop((client, stream));
    cp.stop().await.unwrap();
}
