//! Policy compilation: Istio documents load unchanged and compile field for field into the
//! wire model; selection by namespace, root namespace and labels; EgressPolicy rules.

use palisade_control_plane::config::load_files;
use palisade_control_plane::model::MeshSnapshot;
use palisade_control_plane::{UnknownWorkload, authorization_for, egress_for, snapshots_for};
use palisade_proto::v1 as pb;
use pb::string_match::Kind;

use super::support::{SERVICES, WORKLOADS};

fn exact(v: &str) -> pb::StringMatch {
    pb::StringMatch {
        kind: Some(Kind::Exact(v.to_owned())),
    }
}

fn prefix(v: &str) -> pb::StringMatch {
    pb::StringMatch {
        kind: Some(Kind::Prefix(v.to_owned())),
    }
}

fn suffix(v: &str) -> pb::StringMatch {
    pb::StringMatch {
        kind: Some(Kind::Suffix(v.to_owned())),
    }
}

fn presence() -> pb::StringMatch {
    pb::StringMatch {
        kind: Some(Kind::Presence(true)),
    }
}

fn load(extra: &[(&str, &str)]) -> MeshSnapshot {
    let mut files = vec![("w.yaml", WORKLOADS), ("s.yaml", SERVICES)];
    files.extend_from_slice(extra);
    match load_files(&files) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// The `namespace/name` of every policy the proxy of `shop/<workload>` receives.
fn policy_names(snapshot: &MeshSnapshot, namespace: &str, workload: &str) -> Vec<String> {
    authorization_for(snapshot, namespace, workload)
        .unwrap()
        .policies
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect()
}

/// A policy as an Istio user writes it (block style, strings for ports, `spiffe://` or not),
/// using every supported field.
const ISTIO_POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: search-readers
  namespace: shop
  labels: {team: search}
  annotations: {owner: search-team}
spec:
  selector:
    matchLabels:
      app: search
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/ops/*"]
        notPrincipals: ["*/sa/banned"]
        namespaces: ["shop", "team-*"]
        notNamespaces: ["*-sandbox"]
        ipBlocks: ["10.1.2.3/8", "127.0.1.1"]
        notIpBlocks: ["10.9.0.0/16"]
        serviceAccounts: ["shop/frontend"]
        notServiceAccounts: ["ops/banned"]
    - source:
        principals: ["*"]
    to:
    - operation:
        hosts: ["Search.Shop.svc.cluster.local", "*.Example.COM"]
        notHosts: ["admin.*"]
        ports: ["8080", 9090]
        notPorts: ["9999"]
        methods: ["GET", "post", "HEAD*"]
        notMethods: ["DELETE"]
        paths: ["/api/*", "*.json", "/healthz"]
        notPaths: ["/api/admin*"]
    when:
    - key: request.headers[X-Tenant]
      values: ["acme", "beta-*"]
      notValues: ["*-test"]
    - key: source.ip
      values: ["192.168.7.9/16"]
    - key: source.namespace
      notValues: ["kube-*"]
    - key: source.principal
      values: ["spiffe://cluster.local/ns/shop/sa/frontend"]
    - key: destination.ip
      values: ["fd00::1"]
    - key: destination.port
      values: ["8080"]
    - key: connection.sni
      values: ["*.Shop.svc"]
  - {}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: deny-delete
  namespace: shop
spec:
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["DELETE"]
"#;

#[test]
fn istio_documents_load_unchanged_and_compile_field_for_field() {
    let snapshot = load(&[("istio.yaml", ISTIO_POLICY)]);
    let got = authorization_for(&snapshot, "shop", "search").unwrap();
    let readers = pb::AuthorizationPolicy {
        namespace: "shop".into(),
        name: "search-readers".into(),
        action: pb::Action::Allow as i32,
        dry_run: false,
        rules: vec![
            pb::Rule {
                from: vec![
                    pb::Source {
                        principals: vec![
                            exact("cluster.local/ns/shop/sa/frontend"),
                            prefix("cluster.local/ns/ops/"),
                        ],
                        not_principals: vec![suffix("/sa/banned")],
                        namespaces: vec![exact("shop"), prefix("team-")],
                        not_namespaces: vec![suffix("-sandbox")],
                        ip_blocks: vec!["10.0.0.0/8".into(), "127.0.1.1".into()],
                        not_ip_blocks: vec!["10.9.0.0/16".into()],
                        service_accounts: vec!["cluster.local/ns/shop/sa/frontend".into()],
                        not_service_accounts: vec!["cluster.local/ns/ops/sa/banned".into()],
                    },
                    pb::Source {
                        principals: vec![presence()],
                        ..Default::default()
                    },
                ],
                to: vec![pb::Operation {
                    hosts: vec![
                        exact("search.shop.svc.cluster.local"),
                        suffix(".example.com"),
                    ],
                    not_hosts: vec![prefix("admin.")],
                    ports: vec![8080, 9090],
                    not_ports: vec![9999],
                    methods: vec![exact("GET"), exact("post"), prefix("HEAD")],
                    not_methods: vec![exact("DELETE")],
                    paths: vec![prefix("/api/"), suffix(".json"), exact("/healthz")],
                    not_paths: vec![prefix("/api/admin")],
                }],
                when: vec![
                    pb::Condition {
                        key: "request.headers[x-tenant]".into(),
                        values: vec![exact("acme"), prefix("beta-")],
                        not_values: vec![suffix("-test")],
                    },
                    pb::Condition {
                        key: "source.ip".into(),
                        values: vec![exact("192.168.0.0/16")],
                        not_values: vec![],
                    },
                    pb::Condition {
                        key: "source.namespace".into(),
                        values: vec![],
                        not_values: vec![prefix("kube-")],
                    },
                    pb::Condition {
                        key: "source.principal".into(),
                        values: vec![exact("cluster.local/ns/shop/sa/frontend")],
                        not_values: vec![],
                    },
                    pb::Condition {
                        key: "destination.ip".into(),
                        values: vec![exact("fd00::1")],
                        not_values: vec![],
                    },
                    pb::Condition {
                        key: "destination.port".into(),
                        values: vec![exact("8080")],
                        not_values: vec![],
                    },
                    pb::Condition {
                        key: "connection.sni".into(),
                        values: vec![suffix(".shop.svc")],
                        not_values: vec![],
                    },
                ],
            },
            // `- {}` is kept: a rule that matches every request.
            pb::Rule::default(),
        ],
    };
    let deny = pb::AuthorizationPolicy {
        namespace: "shop".into(),
        name: "deny-delete".into(),
        action: pb::Action::Deny as i32,
        dry_run: false,
        rules: vec![pb::Rule {
            to: vec![pb::Operation {
                methods: vec![exact("DELETE")],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    // Ordered by (namespace, name).
    assert_eq!(got.policies, [deny.clone(), readers]);
    // The namespace-wide DENY applies to every workload of shop; the selector keeps the
    // ALLOW policy to search.
    assert_eq!(
        authorization_for(&snapshot, "shop", "frontend")
            .unwrap()
            .policies,
        [deny]
    );
}

#[test]
fn empty_spec_rules_and_audit_keep_their_structure() {
    let snapshot = load(&[(
        "p.yaml",
        "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a-allow-nothing, namespace: shop}
spec: {}
---
apiVersion: palisade.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: b-no-spec, namespace: shop}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: c-allow-all, namespace: shop}
spec:
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: d-audit, namespace: shop}
spec:
  action: AUDIT
  rules: []
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: e-empty-lists, namespace: shop}
spec:
  rules:
  - from:
    - source: {principals: [\"*\"], requestPrincipals: [], remoteIpBlocks: null}
",
    )]);
    let got = authorization_for(&snapshot, "shop", "payments").unwrap();
    let summary: Vec<(String, i32, usize)> = got
        .policies
        .iter()
        .map(|p| (p.name.clone(), p.action, p.rules.len()))
        .collect();
    let allow = pb::Action::Allow as i32;
    assert_eq!(
        summary,
        [
            ("a-allow-nothing".to_owned(), allow, 0),
            ("b-no-spec".to_owned(), allow, 0),
            ("c-allow-all".to_owned(), allow, 1),
            ("d-audit".to_owned(), pb::Action::Audit as i32, 0),
            ("e-empty-lists".to_owned(), allow, 1),
        ]
    );
    assert_eq!(got.policies[2].rules[0], pb::Rule::default());
}

#[test]
fn selection_by_namespace_root_namespace_and_labels() {
    let mesh = "\
apiVersion: palisade.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh, namespace: istio-system}
spec: {rootNamespace: istio-system}
";
    let other = "\
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: search, namespace: other, labels: {app: search}}
spec: {address: 127.0.2.1}
";
    let policies = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: z-shop-wide, namespace: shop}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a-search-only, namespace: shop}
spec: {selector: {matchLabels: {app: search}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: every-search, namespace: istio-system}
spec: {selector: {matchLabels: {app: search}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-wide, namespace: other}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: old-root, namespace: palisade-system}
spec: {}
";
    let snapshot = load(&[("m.yaml", mesh), ("o.yaml", other), ("p.yaml", policies)]);
    assert_eq!(
        policy_names(&snapshot, "shop", "search"),
        [
            "istio-system/every-search",
            "istio-system/mesh-wide",
            "shop/a-search-only",
            "shop/z-shop-wide"
        ]
    );
    assert_eq!(
        policy_names(&snapshot, "shop", "payments"),
        ["istio-system/mesh-wide", "shop/z-shop-wide"]
    );
    // Root-namespace selectors match workloads of every namespace; palisade-system is an
    // ordinary namespace once rootNamespace is istio-system.
    assert_eq!(
        policy_names(&snapshot, "other", "search"),
        [
            "istio-system/every-search",
            "istio-system/mesh-wide",
            "other/other-wide"
        ]
    );
}

#[test]
fn egress_policies_compile_to_rules_per_workload() {
    let egress = "\
apiVersion: palisade.dev/v1alpha1
kind: EgressPolicy
metadata: {name: payments-psp, namespace: shop}
spec:
  selector: {matchLabels: {app: payments}}
  hosts: [API.Stripe.com, \"*.PayPal.com\", 192.0.2.10, \"2001:DB8::1\"]
  ports: [443, 8443]
---
apiVersion: palisade.dev/v1alpha1
kind: EgressPolicy
metadata: {name: telemetry, namespace: palisade-system}
spec:
  hosts: [collector.example.org]
---
apiVersion: palisade.dev/v1alpha1
kind: EgressPolicy
metadata: {name: ledger-db, namespace: shop}
spec:
  selector: {matchLabels: {app: payments}}
  ipBlocks: [192.0.2.0/24, 198.51.100.7, \"2001:DB8::/32\"]
  ports: [5432]
";
    let snapshot = load(&[("e.yaml", egress)]);
    let telemetry = pb::EgressRule {
        policy: "palisade-system/telemetry".into(),
        hosts: vec![exact("collector.example.org")],
        ports: vec![],
        ip_blocks: vec![],
    };
    assert_eq!(
        egress_for(&snapshot, "shop", "payments").unwrap().rules,
        [
            telemetry.clone(),
            pb::EgressRule {
                policy: "shop/ledger-db".into(),
                hosts: vec![],
                ports: vec![5432],
                ip_blocks: vec![
                    "192.0.2.0/24".into(),
                    "198.51.100.7".into(),
                    "2001:db8::/32".into()
                ],
            },
            pb::EgressRule {
                policy: "shop/payments-psp".into(),
                hosts: vec![
                    exact("api.stripe.com"),
                    suffix(".paypal.com"),
                    exact("192.0.2.10"),
                    exact("2001:db8::1"),
                ],
                ports: vec![443, 8443],
                ip_blocks: vec![],
            }
        ]
    );
    assert_eq!(
        egress_for(&snapshot, "shop", "search").unwrap().rules,
        [telemetry]
    );
}

#[test]
fn unknown_workloads_are_errors_and_static_snapshots_carry_policies() {
    let snapshot = load(&[("istio.yaml", ISTIO_POLICY)]);
    assert_eq!(
        authorization_for(&snapshot, "shop", "nope"),
        Err(UnknownWorkload {
            namespace: "shop".into(),
            name: "nope".into()
        })
    );
    assert!(egress_for(&snapshot, "nope", "search").is_err());

    let want = authorization_for(&snapshot, "shop", "search").unwrap();
    let (ca, _) = palisade_control_plane::test_util::generate_ca("cluster.local").unwrap();
    let all = snapshots_for(
        std::sync::Arc::new(snapshot),
        ca.bundle().clone(),
        "shop",
        "search",
    )
    .unwrap();
    // One snapshot per type the control plane serves to proxies.
    assert_eq!(all.len(), palisade_control_plane::ResourceType::ALL.len());
    let authz = all
        .iter()
        .find(|r| r.type_url == pb::AUTHORIZATION_TYPE_URL)
        .unwrap();
    assert_eq!(
        authz.resources,
        Some(pb::discovery_response::Resources::Authorization(want))
    );
}

#[test]
fn every_error_of_a_policy_is_reported() {
    let bad = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  action: CUSTOM
  provider: {name: ext}
  rules:
  - from:
    - source: {requestPrincipals: [\"*\"], principals: [nope]}
    when:
    - {key: \"request.auth.claims[iss]\", values: [x]}
";
    let err = load_files(&[("w.yaml", WORKLOADS), ("p.yaml", bad)]).unwrap_err();
    let fields: Vec<String> = err
        .iter()
        .map(|e| e.field.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.provider",
            "spec.action",
            "spec.rules[0].from[0].source.requestPrincipals",
            "spec.rules[0].from[0].source.principals[0]",
            "spec.rules[0].when[0].key",
        ],
        "{err:?}"
    );
    assert!(err.to_string().ends_with(" (and 4 more)"), "{err}");
}
