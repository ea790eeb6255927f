//! Table-driven tests of the evaluator: every field and its negation, order, AUDIT,
//! fail-closed identity handling, connection-level (TCP) handling and path normalisation.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use palisade_certs::SpiffeId;
use palisade_proto::v1::{self, string_match::Kind};

use super::*;

// === builders ===

fn exact(s: &str) -> v1::StringMatch {
    v1::StringMatch {
        kind: Some(Kind::Exact(s.into())),
    }
}
fn prefix(s: &str) -> v1::StringMatch {
    v1::StringMatch {
        kind: Some(Kind::Prefix(s.into())),
    }
}
fn suffix(s: &str) -> v1::StringMatch {
    v1::StringMatch {
        kind: Some(Kind::Suffix(s.into())),
    }
}
fn template(s: &str) -> v1::StringMatch {
    v1::StringMatch {
        kind: Some(Kind::PathTemplate(s.into())),
    }
}
fn any() -> v1::StringMatch {
    v1::StringMatch {
        kind: Some(Kind::Presence(true)),
    }
}

fn policy(name: &str, action: v1::Action, rules: Vec<v1::Rule>) -> v1::AuthorizationPolicy {
    v1::AuthorizationPolicy {
        namespace: "shop".into(),
        name: name.into(),
        action: action as i32,
        dry_run: false,
        rules,
    }
}
fn allow(name: &str, rules: Vec<v1::Rule>) -> v1::AuthorizationPolicy {
    policy(name, v1::Action::Allow, rules)
}
fn deny(name: &str, rules: Vec<v1::Rule>) -> v1::AuthorizationPolicy {
    policy(name, v1::Action::Deny, rules)
}
fn audit(name: &str, rules: Vec<v1::Rule>) -> v1::AuthorizationPolicy {
    policy(name, v1::Action::Audit, rules)
}

fn from(s: v1::Source) -> v1::Rule {
    v1::Rule {
        from: vec![s],
        ..Default::default()
    }
}
fn from_all(sources: Vec<v1::Source>) -> v1::Rule {
    v1::Rule {
        from: sources,
        ..Default::default()
    }
}
fn to(o: v1::Operation) -> v1::Rule {
    v1::Rule {
        to: vec![o],
        ..Default::default()
    }
}
fn when(key: &str, values: Vec<v1::StringMatch>, not_values: Vec<v1::StringMatch>) -> v1::Rule {
    v1::Rule {
        when: vec![v1::Condition {
            key: key.into(),
            values,
            not_values,
        }],
        ..Default::default()
    }
}

fn authorizer(policies: Vec<v1::AuthorizationPolicy>) -> Authorizer {
    Authorizer::try_from(&v1::AuthorizationSnapshot { policies }).expect("valid snapshot")
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("spiffe id")
}

/// A request, owned, so tables can hold them.
#[derive(Clone)]
struct Req {
    source: Option<SpiffeId>,
    source_ip: Option<IpAddr>,
    destination_ip: Option<IpAddr>,
    port: u16,
    sni: Option<String>,
    http: Option<(String, String, String, HeaderMap)>,
}

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

fn get(path: &str) -> Req {
    Req {
        source: Some(id(FRONTEND)),
        source_ip: Some("10.0.0.1".parse().unwrap()),
        destination_ip: Some("10.0.0.2".parse().unwrap()),
        port: 8080,
        sni: Some("port-8080.palisade.mesh".into()),
        http: Some((
            "GET".into(),
            "search.shop:8080".into(),
            path.into(),
            HeaderMap::new(),
        )),
    }
}
fn tcp() -> Req {
    Req {
        http: None,
        ..get("/")
    }
}

impl Req {
    fn caller(mut self, s: &str) -> Self {
        self.source = Some(id(s));
        self
    }
    fn plaintext(mut self) -> Self {
        self.source = None;
        self
    }
    fn ip(mut self, ip: &str) -> Self {
        self.source_ip = Some(ip.parse().unwrap());
        self
    }
    fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    fn method(mut self, m: &str) -> Self {
        if let Some(h) = &mut self.http {
            h.0 = m.into();
        }
        self
    }
    fn host(mut self, host: &str) -> Self {
        if let Some(h) = &mut self.http {
            h.1 = host.into();
        }
        self
    }
    fn header(mut self, name: &'static str, value: &str) -> Self {
        if let Some(h) = &mut self.http {
            h.3.append(name, HeaderValue::from_str(value).unwrap());
        }
        self
    }
    fn attrs(&self) -> RequestAttrs<'_> {
        RequestAttrs {
            source: self.source.as_ref(),
            source_ip: self.source_ip,
            destination_ip: self.destination_ip,
            destination_port: self.port,
            sni: self.sni.as_deref(),
            http: self
                .http
                .as_ref()
                .map(|(method, host, path, headers)| HttpAttrs {
                    method,
                    host,
                    path,
                    headers,
                }),
        }
    }
}

/// Runs a table of (case, rule, request, expected match) through one ALLOW policy (so the
/// result says whether the rule matched under ALLOW semantics) and one DENY policy.
fn check_allow(cases: &[(&str, v1::Rule, Req, bool)]) {
    for (name, rule, req, expected) in cases {
        let a = authorizer(vec![allow("p", vec![rule.clone()])]);
        let d = a.evaluate(&req.attrs(), false);
        assert_eq!(d.allowed, *expected, "ALLOW case {name:?}: {}", d.explain());
    }
}

fn check_deny(cases: &[(&str, v1::Rule, Req, bool)]) {
    for (name, rule, req, expected_denied) in cases {
        let a = authorizer(vec![deny("p", vec![rule.clone()])]);
        let d = a.evaluate(&req.attrs(), true);
        assert_eq!(
            !d.allowed,
            *expected_denied,
            "DENY case {name:?}: {}",
            d.explain()
        );
    }
}

// === order, defaults, AUDIT ===

#[test]
fn deny_wins_and_first_deny_in_policy_order_names_the_decision() {
    let a = authorizer(vec![
        allow("a-allow-all", vec![v1::Rule::default()]),
        deny(
            "b-deny-admin",
            vec![to(v1::Operation {
                paths: vec![prefix("/admin")],
                ..Default::default()
            })],
        ),
        deny(
            "c-deny-all",
            vec![
                from(v1::Source {
                    not_principals: vec![exact("nobody")],
                    ..Default::default()
                }),
                v1::Rule::default(),
            ],
        ),
    ]);
    let d = a.evaluate(&get("/admin/x").attrs(), true);
    assert!(!d.allowed);
    assert_eq!(
        d.decided_by,
        DecidedBy::Deny(Matched {
            policy: "shop/b-deny-admin".into(),
            rule: 0
        })
    );
    assert_eq!(d.policy_label(), "shop/b-deny-admin");
    assert_eq!(d.explain(), "DENY by shop/b-deny-admin rule 0");
    let d = a.evaluate(&get("/x").attrs(), true);
    assert_eq!(d.explain(), "DENY by shop/c-deny-all rule 0");
    assert_eq!(d.rule(), Some(0));
}

#[test]
fn allow_policies_require_a_match_and_name_default_deny() {
    let a = authorizer(vec![
        allow(
            "a",
            vec![to(v1::Operation {
                methods: vec![exact("POST")],
                ..Default::default()
            })],
        ),
        allow(
            "b",
            vec![to(v1::Operation {
                paths: vec![exact("/ok")],
                ..Default::default()
            })],
        ),
    ]);
    let ok = a.evaluate(&get("/ok").attrs(), false);
    assert!(ok.allowed);
    assert_eq!(ok.explain(), "ALLOW by shop/b rule 0");
    assert_eq!(ok.policy_label(), "shop/b");
    // With ALLOW policies present, the mesh default does not apply, even if it is allow.
    let no = a.evaluate(&get("/no").attrs(), true);
    assert!(!no.allowed);
    assert_eq!(no.decided_by, DecidedBy::NoAllowMatched);
    assert_eq!(no.policy_label(), "default-deny");
    assert_eq!(
        no.explain(),
        "DENY: no ALLOW policy matched (ALLOW policies: shop/a, shop/b)"
    );
    assert_eq!(no.rule(), None);
}

#[test]
fn mesh_default_applies_without_allow_policies() {
    for policies in [
        vec![],
        vec![deny(
            "d",
            vec![to(v1::Operation {
                paths: vec![exact("/never")],
                ..Default::default()
            })],
        )],
        vec![audit("au", vec![v1::Rule::default()])],
    ] {
        let a = authorizer(policies);
        let d = a.evaluate(&get("/").attrs(), true);
        assert!(d.allowed);
        assert_eq!(d.decided_by, DecidedBy::DefaultAllow);
        assert_eq!(d.policy_label(), "default-allow");
        assert!(d.explain().starts_with(
            "ALLOW by default (no ALLOW policy selects this workload, MeshConfig defaultAuthorization: allow)"
        ));
        let d = a.evaluate(&get("/").attrs(), false);
        assert!(!d.allowed);
        assert_eq!(d.decided_by, DecidedBy::DefaultDeny);
        assert_eq!(d.policy_label(), "default-deny");
        assert!(d.explain().starts_with("DENY by default ("));
    }
    assert!(authorizer(vec![]).is_empty());
}

#[test]
fn audit_never_changes_the_decision_and_lists_every_match() {
    let a = authorizer(vec![
        audit(
            "a1",
            vec![
                to(v1::Operation {
                    paths: vec![exact("/nope")],
                    ..Default::default()
                }),
                v1::Rule::default(),
            ],
        ),
        audit(
            "a2",
            vec![to(v1::Operation {
                methods: vec![exact("GET")],
                ..Default::default()
            })],
        ),
        audit(
            "a3",
            vec![to(v1::Operation {
                methods: vec![exact("PUT")],
                ..Default::default()
            })],
        ),
    ]);
    for default_allow in [true, false] {
        let d = a.evaluate(&get("/").attrs(), default_allow);
        assert_eq!(d.allowed, default_allow);
        assert_eq!(
            d.audits.matched,
            vec![
                Matched {
                    policy: "shop/a1".into(),
                    rule: 1
                },
                Matched {
                    policy: "shop/a2".into(),
                    rule: 0
                },
            ]
        );
    }
    let d = a.evaluate(&get("/").attrs(), true);
    assert!(
        d.explain()
            .ends_with("; AUDIT by shop/a1 rule 1, shop/a2 rule 0"),
        "{}",
        d.explain()
    );
    // Audits are recorded even when a DENY decides.
    let mut with_deny = vec![deny("d", vec![v1::Rule::default()])];
    with_deny.push(audit("a", vec![v1::Rule::default()]));
    let d = authorizer(with_deny).evaluate(&get("/").attrs(), true);
    assert!(!d.allowed);
    assert_eq!(d.audits.matched.len(), 1);
    assert_eq!(authorizer(vec![audit("a", vec![])]).len(), 1);
}

#[test]
fn no_rules_match_nothing_and_an_empty_rule_matches_everything() {
    let a = authorizer(vec![allow("none", vec![])]);
    assert!(!a.evaluate(&get("/").attrs(), true).allowed);
    let a = authorizer(vec![deny("none", vec![])]);
    assert!(a.evaluate(&get("/").attrs(), true).allowed);
    let a = authorizer(vec![allow("all", vec![v1::Rule::default()])]);
    assert!(a.evaluate(&get("/").attrs(), false).allowed);
    assert!(a.evaluate(&tcp().attrs(), false).allowed);
    let a = authorizer(vec![deny("all", vec![v1::Rule::default()])]);
    assert!(!a.evaluate(&get("/").attrs(), true).allowed);
    assert!(!a.evaluate(&get("/").plaintext().attrs(), true).allowed);
}

#[test]
fn rule_parts_are_anded_and_lists_ored() {
    let rule = v1::Rule {
        from: vec![
            v1::Source {
                principals: vec![exact("cluster.local/ns/shop/sa/nobody")],
                ..Default::default()
            },
            v1::Source {
                namespaces: vec![exact("shop")],
                ..Default::default()
            },
        ],
        to: vec![
            v1::Operation {
                methods: vec![exact("POST")],
                ..Default::default()
            },
            v1::Operation {
                paths: vec![prefix("/api/")],
                ..Default::default()
            },
        ],
        when: vec![
            v1::Condition {
                key: "destination.port".into(),
                values: vec![exact("8080")],
                not_values: vec![],
            },
            v1::Condition {
                key: "source.ip".into(),
                values: vec![exact("10.0.0.0/8")],
                not_values: vec![],
            },
        ],
    };
    check_allow(&[
        ("all parts match", rule.clone(), get("/api/x"), true),
        (
            "second source",
            rule.clone(),
            get("/api/x").caller("spiffe://cluster.local/ns/other/sa/x"),
            false,
        ),
        ("no operation", rule.clone(), get("/web"), false),
        (
            "first operation",
            rule.clone(),
            get("/web").method("POST"),
            true,
        ),
        (
            "one condition fails",
            rule.clone(),
            get("/api/x").ip("192.168.0.1"),
            false,
        ),
        (
            "other condition fails",
            rule,
            get("/api/x").port(9090),
            false,
        ),
    ]);
}

// === source fields ===

#[test]
fn source_fields() {
    let src = |f: fn(&mut v1::Source)| {
        let mut s = v1::Source::default();
        f(&mut s);
        from(s)
    };
    let other = "spiffe://cluster.local/ns/other/sa/x";
    let odd = "spiffe://cluster.local/workload/x"; // verified, but no /ns/<ns>/sa/<sa> path
    let cases = vec![
        (
            "principal exact",
            src(|s| s.principals = vec![exact("cluster.local/ns/shop/sa/frontend")]),
            get("/"),
            true,
        ),
        (
            "principal exact with scheme never matches",
            src(|s| s.principals = vec![exact(FRONTEND)]),
            get("/"),
            false,
        ),
        (
            "principal exact other",
            src(|s| s.principals = vec![exact("cluster.local/ns/shop/sa/frontend")]),
            get("/").caller(other),
            false,
        ),
        (
            "principal prefix",
            src(|s| s.principals = vec![prefix("cluster.local/ns/shop/")]),
            get("/"),
            true,
        ),
        (
            "principal suffix",
            src(|s| s.principals = vec![suffix("/sa/frontend")]),
            get("/"),
            true,
        ),
        (
            "principal suffix miss",
            src(|s| s.principals = vec![suffix("/sa/search")]),
            get("/"),
            false,
        ),
        (
            "principal any",
            src(|s| s.principals = vec![any()]),
            get("/"),
            true,
        ),
        (
            "principal list any entry",
            src(|s| s.principals = vec![exact("x"), suffix("frontend")]),
            get("/"),
            true,
        ),
        (
            "not_principals excludes",
            src(|s| s.not_principals = vec![suffix("/sa/frontend")]),
            get("/"),
            false,
        ),
        (
            "not_principals other",
            src(|s| s.not_principals = vec![suffix("/sa/frontend")]),
            get("/").caller(other),
            true,
        ),
        (
            "not_principals any excludes all",
            src(|s| s.not_principals = vec![any()]),
            get("/"),
            false,
        ),
        (
            "namespace",
            src(|s| s.namespaces = vec![exact("shop")]),
            get("/"),
            true,
        ),
        (
            "namespace other",
            src(|s| s.namespaces = vec![exact("shop")]),
            get("/").caller(other),
            false,
        ),
        (
            "namespace prefix",
            src(|s| s.namespaces = vec![prefix("sh")]),
            get("/"),
            true,
        ),
        (
            "namespace of odd id",
            src(|s| s.namespaces = vec![any()]),
            get("/").caller(odd),
            false,
        ),
        (
            "not_namespaces",
            src(|s| s.not_namespaces = vec![exact("shop")]),
            get("/"),
            false,
        ),
        (
            "not_namespaces other",
            src(|s| s.not_namespaces = vec![exact("shop")]),
            get("/").caller(other),
            true,
        ),
        (
            "ip block",
            src(|s| s.ip_blocks = vec!["10.0.0.0/24".into()]),
            get("/"),
            true,
        ),
        (
            "ip block miss",
            src(|s| s.ip_blocks = vec!["10.0.1.0/24".into()]),
            get("/"),
            false,
        ),
        (
            "ip single",
            src(|s| s.ip_blocks = vec!["10.0.0.1".into()]),
            get("/"),
            true,
        ),
        (
            "not ip block",
            src(|s| s.not_ip_blocks = vec!["10.0.0.0/8".into()]),
            get("/"),
            false,
        ),
        (
            "not ip block other",
            src(|s| s.not_ip_blocks = vec!["10.0.0.0/8".into()]),
            get("/").ip("192.168.1.1"),
            true,
        ),
        (
            "all fields must match",
            src(|s| {
                s.principals = vec![any()];
                s.namespaces = vec![exact("other")];
            }),
            get("/"),
            false,
        ),
    ];
    check_allow(&cases);
}

// === fail closed for callers without identity ===

#[test]
fn plaintext_never_matches_an_allow_identity_field_but_matches_address_fields() {
    let src = |f: fn(&mut v1::Source)| {
        let mut s = v1::Source::default();
        f(&mut s);
        from(s)
    };
    let plain = get("/").plaintext();
    check_allow(&[
        (
            "principals any",
            src(|s| s.principals = vec![any()]),
            plain.clone(),
            false,
        ),
        (
            "not_principals",
            src(|s| s.not_principals = vec![exact("x")]),
            plain.clone(),
            false,
        ),
        (
            "namespaces any",
            src(|s| s.namespaces = vec![any()]),
            plain.clone(),
            false,
        ),
        (
            "not_namespaces",
            src(|s| s.not_namespaces = vec![exact("evil")]),
            plain.clone(),
            false,
        ),
        (
            "principals any with ip_blocks",
            src(|s| {
                s.principals = vec![any()];
                s.ip_blocks = vec!["10.0.0.0/8".into()];
            }),
            plain.clone(),
            false,
        ),
        (
            "source.principal notValues",
            when("source.principal", vec![], vec![exact("x")]),
            plain.clone(),
            false,
        ),
        (
            "source.namespace notValues",
            when("source.namespace", vec![], vec![exact("evil")]),
            plain.clone(),
            false,
        ),
        (
            "source.principal any",
            when("source.principal", vec![any()], vec![]),
            plain.clone(),
            false,
        ),
        // What a plaintext caller can be allowed by: rules that do not ask who it is. Its
        // address is known, so address fields match it as they match anyone (CONTRACT).
        (
            "ip_blocks containing it",
            src(|s| s.ip_blocks = vec!["10.0.0.0/8".into()]),
            plain.clone(),
            true,
        ),
        (
            "ip_blocks not containing it",
            src(|s| s.ip_blocks = vec!["192.168.0.0/16".into()]),
            plain.clone(),
            false,
        ),
        (
            "not_ip_blocks not containing it",
            src(|s| s.not_ip_blocks = vec!["192.168.0.0/16".into()]),
            plain.clone(),
            true,
        ),
        (
            "not_ip_blocks containing it",
            src(|s| s.not_ip_blocks = vec!["10.0.0.0/8".into()]),
            plain.clone(),
            false,
        ),
        (
            "one source asks identity, another only the address",
            from_all(vec![
                v1::Source {
                    principals: vec![any()],
                    ..Default::default()
                },
                v1::Source {
                    ip_blocks: vec!["10.0.0.1".into()],
                    ..Default::default()
                },
            ]),
            plain.clone(),
            true,
        ),
        (
            "empty source",
            from(v1::Source::default()),
            plain.clone(),
            true,
        ),
        (
            "source.ip condition",
            when("source.ip", vec![exact("10.0.0.0/8")], vec![]),
            plain.clone(),
            true,
        ),
        (
            "operation only",
            to(v1::Operation {
                paths: vec![exact("/")],
                ..Default::default()
            }),
            plain.clone(),
            true,
        ),
        ("empty rule", v1::Rule::default(), plain, true),
    ]);
}

#[test]
fn plaintext_in_deny_rules_is_an_absent_identity_as_in_istio() {
    let src = |f: fn(&mut v1::Source)| {
        let mut s = v1::Source::default();
        f(&mut s);
        from(s)
    };
    let plain = get("/").plaintext();
    check_deny(&[
        (
            "not_principals any denies plaintext",
            src(|s| s.not_principals = vec![any()]),
            plain.clone(),
            true,
        ),
        (
            "not_principals any spares mTLS",
            src(|s| s.not_principals = vec![any()]),
            get("/"),
            false,
        ),
        (
            "principals any spares plaintext",
            src(|s| s.principals = vec![any()]),
            plain.clone(),
            false,
        ),
        (
            "not_namespaces denies plaintext",
            src(|s| s.not_namespaces = vec![exact("shop")]),
            plain.clone(),
            true,
        ),
        (
            "namespaces spares plaintext",
            src(|s| s.namespaces = vec![any()]),
            plain.clone(),
            false,
        ),
        (
            "source.principal notValues",
            when("source.principal", vec![], vec![any()]),
            plain.clone(),
            true,
        ),
        (
            "source.principal values",
            when("source.principal", vec![any()], vec![]),
            plain,
            false,
        ),
    ]);
    // AUDIT like DENY.
    let a = authorizer(vec![audit(
        "a",
        vec![src(|s| s.not_principals = vec![any()])],
    )]);
    assert_eq!(
        a.evaluate(&get("/").plaintext().attrs(), true)
            .audits
            .matched
            .len(),
        1
    );
    assert!(
        a.evaluate(&get("/").attrs(), true)
            .audits
            .matched
            .is_empty()
    );
}

// === operation fields ===

#[test]
fn operation_fields() {
    let op = |f: fn(&mut v1::Operation)| {
        let mut o = v1::Operation::default();
        f(&mut o);
        to(o)
    };
    check_allow(&[
        (
            "host exact does not match its host:port form (Istio)",
            op(|o| o.hosts = vec![exact("search.shop")]),
            get("/"),
            false,
        ),
        (
            "host:* matches any port",
            op(|o| o.hosts = vec![prefix("search.shop:")]),
            get("/").host("Search.Shop:9999"),
            true,
        ),
        (
            "host:* does not match the bare host",
            op(|o| o.hosts = vec![prefix("search.shop:")]),
            get("/").host("search.shop"),
            false,
        ),
        (
            "host trailing dot is dropped",
            op(|o| o.hosts = vec![exact("search.shop:8080")]),
            get("/").host("SEARCH.shop.:8080"),
            true,
        ),
        (
            "host case-insensitive",
            op(|o| o.hosts = vec![exact("SEARCH.Shop:8080")]),
            get("/"),
            true,
        ),
        (
            "host with port",
            op(|o| o.hosts = vec![exact("search.shop:8080")]),
            get("/"),
            true,
        ),
        (
            "host with other port",
            op(|o| o.hosts = vec![exact("search.shop:9090")]),
            get("/"),
            false,
        ),
        (
            "host without port, request without",
            op(|o| o.hosts = vec![exact("search.shop")]),
            get("/").host("search.shop"),
            true,
        ),
        (
            "host suffix",
            op(|o| o.hosts = vec![suffix(".shop")]),
            get("/").host("Search.SHOP"),
            true,
        ),
        (
            "host suffix does not match host:port",
            op(|o| o.hosts = vec![suffix(".shop")]),
            get("/").host("Search.SHOP:8080"),
            false,
        ),
        (
            "host prefix",
            op(|o| o.hosts = vec![prefix("search.")]),
            get("/"),
            true,
        ),
        (
            "host other",
            op(|o| o.hosts = vec![exact("payments.shop")]),
            get("/"),
            false,
        ),
        (
            "not_hosts",
            op(|o| o.not_hosts = vec![exact("search.shop:8080")]),
            get("/"),
            false,
        ),
        (
            "not_hosts exact host leaves its host:port form alone (Istio)",
            op(|o| o.not_hosts = vec![exact("search.shop")]),
            get("/"),
            true,
        ),
        (
            "not_hosts other",
            op(|o| o.not_hosts = vec![exact("payments.shop")]),
            get("/"),
            true,
        ),
        ("port", op(|o| o.ports = vec![8080]), get("/"), true),
        ("port other", op(|o| o.ports = vec![9090]), get("/"), false),
        (
            "port list",
            op(|o| o.ports = vec![9090, 8080]),
            get("/"),
            true,
        ),
        (
            "not_ports",
            op(|o| o.not_ports = vec![8080]),
            get("/"),
            false,
        ),
        (
            "not_ports other",
            op(|o| o.not_ports = vec![9090]),
            get("/"),
            true,
        ),
        (
            "method",
            op(|o| o.methods = vec![exact("GET")]),
            get("/"),
            true,
        ),
        (
            "method is case-sensitive",
            op(|o| o.methods = vec![exact("get")]),
            get("/"),
            false,
        ),
        (
            "method other",
            op(|o| o.methods = vec![exact("GET")]),
            get("/").method("POST"),
            false,
        ),
        (
            "not_methods",
            op(|o| o.not_methods = vec![exact("GET")]),
            get("/"),
            false,
        ),
        (
            "not_methods other",
            op(|o| o.not_methods = vec![exact("DELETE")]),
            get("/"),
            true,
        ),
        (
            "path exact",
            op(|o| o.paths = vec![exact("/items")]),
            get("/items"),
            true,
        ),
        (
            "path ignores query",
            op(|o| o.paths = vec![exact("/items")]),
            get("/items?id=7"),
            true,
        ),
        (
            "path exact miss",
            op(|o| o.paths = vec![exact("/items")]),
            get("/items/7"),
            false,
        ),
        (
            "path prefix",
            op(|o| o.paths = vec![prefix("/items/")]),
            get("/items/7"),
            true,
        ),
        (
            "path suffix",
            op(|o| o.paths = vec![suffix(".png")]),
            get("/img/a.png?x"),
            true,
        ),
        (
            "path any",
            op(|o| o.paths = vec![any()]),
            get("/whatever"),
            true,
        ),
        (
            "path normalised",
            op(|o| o.paths = vec![exact("/admin")]),
            get("/x/../%61dmin"),
            true,
        ),
        (
            "path with %2F not decoded",
            op(|o| o.paths = vec![exact("/a/b")]),
            get("/a%2Fb"),
            false,
        ),
        (
            "not_paths",
            op(|o| o.not_paths = vec![prefix("/admin")]),
            get("/admin/x"),
            false,
        ),
        (
            "not_paths other",
            op(|o| o.not_paths = vec![prefix("/admin")]),
            get("/public"),
            true,
        ),
        (
            "not_paths normalised",
            op(|o| o.not_paths = vec![prefix("/admin")]),
            get("/public/../admin"),
            false,
        ),
        (
            "grpc path",
            op(|o| o.paths = vec![exact("/payments.Payments/Charge")]),
            get("/payments.Payments/Charge").method("POST"),
            true,
        ),
        (
            "grpc service prefix",
            op(|o| o.paths = vec![prefix("/payments.Payments/")]),
            get("/payments.Payments/Refund"),
            true,
        ),
        (
            "all fields must match",
            op(|o| {
                o.methods = vec![exact("GET")];
                o.paths = vec![exact("/other")];
            }),
            get("/"),
            false,
        ),
    ]);
}

#[test]
fn deny_paths_see_through_encodings() {
    let a = authorizer(vec![deny(
        "deny-admin",
        vec![to(v1::Operation {
            paths: vec![prefix("/admin")],
            ..Default::default()
        })],
    )]);
    for (path, denied) in [
        ("/admin", true),
        ("/admin?x=1", true),
        ("/%61dmin", true),
        ("/%41dmin", false), // case is significant in paths: "/Admin"
        ("/x/../admin", true),
        ("/./admin", true),
        ("/../admin", true),
        ("/x/%2e%2e/admin", true),
        ("\\admin", true),
        ("/x\\..\\admin", true),
        // Not rewritten (CONTRACT): a rule meant to cover these must say so.
        ("//admin", false),
        ("/x%2F..%2Fadmin", false),
        // Cannot be normalised: DENY path fields match (fail closed).
        ("/%zzadmin", true),
        ("/public/%", true),
    ] {
        let d = a.evaluate(&get(path).attrs(), true);
        assert_eq!(!d.allowed, denied, "{path}: {}", d.explain());
    }
}

#[test]
fn unnormalisable_paths_are_never_allowed_by_a_path_rule() {
    for rule in [
        to(v1::Operation {
            paths: vec![any()],
            ..Default::default()
        }),
        to(v1::Operation {
            paths: vec![prefix("/")],
            ..Default::default()
        }),
        to(v1::Operation {
            not_paths: vec![exact("/admin")],
            ..Default::default()
        }),
    ] {
        let a = authorizer(vec![allow("p", vec![rule])]);
        for path in ["/a%zz", "/a%2", "*"] {
            assert!(!a.evaluate(&get(path).attrs(), true).allowed, "{path}");
        }
        assert!(a.evaluate(&get("/ok").attrs(), true).allowed);
    }
    // A rule that does not look at paths is unaffected.
    let a = authorizer(vec![allow(
        "p",
        vec![to(v1::Operation {
            methods: vec![exact("GET")],
            ..Default::default()
        })],
    )]);
    assert!(a.evaluate(&get("/a%zz").attrs(), true).allowed);
}

/// Issue 11 item 17: `{*}` and `{**}` in paths and not_paths, on normalised paths.
#[test]
fn path_templates_in_paths_and_not_paths() {
    let paths = |t: &str| {
        to(v1::Operation {
            paths: vec![template(t)],
            ..Default::default()
        })
    };
    let not_paths = |t: &str| {
        to(v1::Operation {
            not_paths: vec![template(t)],
            ..Default::default()
        })
    };
    check_allow(&[
        (
            "one segment",
            paths("/users/{*}/orders"),
            get("/users/7/orders"),
            true,
        ),
        (
            "one segment only",
            paths("/users/{*}/orders"),
            get("/users/7/x/orders"),
            false,
        ),
        (
            "empty segment",
            paths("/users/{*}/orders"),
            get("/users//orders"),
            false,
        ),
        (
            "query ignored",
            paths("/users/{*}"),
            get("/users/7?a=/b"),
            true,
        ),
        (
            "any tail",
            paths("/files/{**}"),
            get("/files/a/b/c.txt"),
            true,
        ),
        ("any tail, none", paths("/files/{**}"), get("/files/"), true),
        (
            "any tail, no slash",
            paths("/files/{**}"),
            get("/files"),
            false,
        ),
        (
            "not_paths",
            not_paths("/admin/{**}"),
            get("/admin/users"),
            false,
        ),
        (
            "not_paths other",
            not_paths("/admin/{**}"),
            get("/public/users"),
            true,
        ),
    ]);
    check_deny(&[
        (
            "dot segments resolved first",
            paths("/admin/{*}/delete"),
            get("/public/../admin/7/delete"),
            true,
        ),
        (
            "encoded unreserved decoded first",
            paths("/admin/{**}"),
            get("/%61dmin/x"),
            true,
        ),
        ("other path", paths("/admin/{**}"), get("/public/x"), false),
    ]);
    // A template anywhere else is refused by name.
    let bad = v1::AuthorizationSnapshot {
        policies: vec![allow(
            "p",
            vec![to(v1::Operation {
                hosts: vec![template("/{*}")],
                ..Default::default()
            })],
        )],
    };
    let e = Authorizer::try_from(&bad).unwrap_err();
    assert_eq!(e.field, "rules[0].to[0].hosts[0]", "{e}");
    let malformed = v1::AuthorizationSnapshot {
        policies: vec![deny("p", vec![paths("/{**}/x/{*}")])],
    };
    let e = Authorizer::try_from(&malformed).unwrap_err();
    assert_eq!(e.field, "rules[0].to[0].paths[0]", "{e}");
    assert!(e.message.contains("last operator"), "{e}");
}

/// Issue 11 items 18 and 19: `serviceAccounts` are principals of the trust domain, and like
/// every identity field they fail closed for a caller without one; address fields do not.
#[test]
fn service_accounts_and_plaintext_callers() {
    let sa = |list: &[&str], not: &[&str]| {
        from(v1::Source {
            service_accounts: list.iter().map(|s| s.to_string()).collect(),
            not_service_accounts: not.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    };
    let frontend = "cluster.local/ns/shop/sa/frontend";
    let search = "spiffe://cluster.local/ns/shop/sa/search";
    check_allow(&[
        ("service account", sa(&[frontend], &[]), get("/"), true),
        (
            "other service account",
            sa(&[frontend], &[]),
            get("/").caller(search),
            false,
        ),
        (
            "other trust domain",
            sa(&[frontend], &[]),
            get("/").caller("spiffe://other.td/ns/shop/sa/frontend"),
            false,
        ),
        ("not service account", sa(&[], &[frontend]), get("/"), false),
        (
            "not service account, other",
            sa(&[], &[frontend]),
            get("/").caller(search),
            true,
        ),
        (
            "plaintext, serviceAccounts",
            sa(&[frontend], &[]),
            get("/").plaintext(),
            false,
        ),
        (
            "plaintext, notServiceAccounts",
            sa(&[], &[frontend]),
            get("/").plaintext(),
            false,
        ),
        (
            "plaintext, ipBlocks",
            from(v1::Source {
                ip_blocks: vec!["10.0.0.0/8".into()],
                ..Default::default()
            }),
            get("/").plaintext(),
            true,
        ),
        (
            "plaintext, notIpBlocks",
            from(v1::Source {
                not_ip_blocks: vec!["192.168.0.0/16".into()],
                ..Default::default()
            }),
            get("/").plaintext(),
            true,
        ),
    ]);
    check_deny(&[
        ("service account", sa(&[frontend], &[]), get("/"), true),
        (
            "plaintext, serviceAccounts",
            sa(&[frontend], &[]),
            get("/").plaintext(),
            false,
        ),
        // As notPrincipals: an absent identity is not the named one.
        (
            "plaintext, notServiceAccounts",
            sa(&[], &[frontend]),
            get("/").plaintext(),
            true,
        ),
    ]);
}

/// Issue 11 item 14: dry-run policies are evaluated and reported, never enforced.
#[test]
fn dry_run_policies_are_evaluated_and_never_enforced() {
    let dry = |mut p: v1::AuthorizationPolicy| {
        p.dry_run = true;
        p
    };
    let admin = || {
        to(v1::Operation {
            paths: vec![prefix("/admin")],
            ..Default::default()
        })
    };
    // A dry-run DENY on /admin: the request still passes, the would-be denial is reported.
    let a = authorizer(vec![
        allow("all", vec![v1::Rule::default()]),
        dry(deny("no-admin", vec![admin()])),
    ]);
    assert_eq!(a.len(), 1);
    assert_eq!(a.dry_run_policies().count(), 1);
    let d = a.evaluate(&get("/admin/x").attrs(), false);
    assert!(d.allowed, "{}", d.explain());
    assert_eq!(
        d.decided_by,
        DecidedBy::Allow(Matched {
            policy: "shop/all".into(),
            rule: 0
        })
    );
    let dry_run = d.audits.dry_run.clone().expect("a dry-run outcome");
    assert!(!dry_run.allowed);
    assert_eq!(dry_run.policy_label(), "shop/no-admin");
    assert_eq!(
        dry_run.matched,
        vec![(
            Action::Deny,
            Matched {
                policy: "shop/no-admin".into(),
                rule: 0
            }
        )]
    );
    assert!(
        d.explain().ends_with(
            "; DRY-RUN would DENY by shop/no-admin rule 0 (dry-run matches: DENY shop/no-admin rule 0)"
        ),
        "{}",
        d.explain()
    );
    // Elsewhere the dry run agrees with the real decision, and says so.
    let d = a.evaluate(&get("/public").attrs(), false);
    let dry_run = d.audits.dry_run.expect("a dry-run outcome");
    assert!(dry_run.allowed && dry_run.matched.is_empty());
    assert_eq!(dry_run.policy_label(), "shop/all");

    // A dry-run ALLOW where none exists: the default still decides; everything it does not
    // match would be denied.
    let a = authorizer(vec![dry(allow(
        "frontend-only",
        vec![from(v1::Source {
            principals: vec![exact("cluster.local/ns/shop/sa/frontend")],
            ..Default::default()
        })],
    ))]);
    let d = a.evaluate(
        &get("/")
            .caller("spiffe://cluster.local/ns/shop/sa/search")
            .attrs(),
        true,
    );
    assert!(d.allowed);
    assert_eq!(d.decided_by, DecidedBy::DefaultAllow);
    let dry_run = d.audits.dry_run.expect("a dry-run outcome");
    assert_eq!(dry_run.decided_by, DecidedBy::NoAllowMatched);
    assert!(!dry_run.allowed);
    let d = a.evaluate(&get("/").attrs(), false);
    assert!(!d.allowed, "a dry-run ALLOW never allows");
    assert_eq!(d.decided_by, DecidedBy::DefaultDeny);
    assert!(d.audits.dry_run.expect("outcome").allowed);

    // A real DENY stays the answer of the dry run too; a dry-run AUDIT is listed.
    let a = authorizer(vec![
        deny("real", vec![v1::Rule::default()]),
        dry(audit("watch", vec![v1::Rule::default()])),
    ]);
    let d = a.evaluate(&get("/").attrs(), true);
    assert!(!d.allowed && d.audits.matched.is_empty());
    let dry_run = d.audits.dry_run.expect("outcome");
    assert_eq!(dry_run.policy_label(), "shop/real");
    assert_eq!(dry_run.matched[0].0, Action::Audit);

    // Without dry-run policies nothing extra is computed.
    let a = authorizer(vec![allow("all", vec![v1::Rule::default()])]);
    assert!(a.evaluate(&get("/").attrs(), false).audits.is_empty());
}

// === conditions ===

/// Issue 11 item 16: a header sent several times, as an attacker would split it.
#[test]
fn duplicate_headers_are_joined_and_never_walk_around_a_deny() {
    let hdr = "request.headers[x-env]";
    let twice = || get("/").header("x-env", "prod").header("x-env", "dev");
    check_deny(&[
        // "DENY unless x-env is prod": `prod` plus `dev` is "prod,dev", not "prod".
        (
            "not_values, split value",
            when(hdr, vec![], vec![exact("prod")]),
            twice(),
            true,
        ),
        (
            "not_values prefix, one line outside it",
            when(hdr, vec![], vec![prefix("prod")]),
            get("/").header("x-env", "prod-a").header("x-env", "x"),
            true,
        ),
        (
            "not_values, every line inside it",
            when(hdr, vec![], vec![prefix("prod")]),
            get("/").header("x-env", "prod-a").header("x-env", "prod-b"),
            false,
        ),
        // "DENY x-env: dev": one line of several is enough.
        (
            "values, one single value",
            when(hdr, vec![exact("dev")], vec![]),
            twice(),
            true,
        ),
        (
            "values, the joined value",
            when(hdr, vec![exact("prod,dev")], vec![]),
            twice(),
            true,
        ),
        (
            "values, neither",
            when(hdr, vec![exact("test")], vec![]),
            twice(),
            false,
        ),
        (
            "values, absent",
            when(hdr, vec![exact("dev")], vec![]),
            get("/"),
            false,
        ),
    ]);
    check_allow(&[
        (
            "values, joined only",
            when(hdr, vec![exact("prod")], vec![]),
            twice(),
            false,
        ),
        (
            "values, the joined value",
            when(hdr, vec![exact("prod,dev")], vec![]),
            twice(),
            true,
        ),
        (
            "not_values exclude any single value",
            when(hdr, vec![], vec![exact("dev")]),
            twice(),
            false,
        ),
        (
            "not_values exclude the joined value",
            when(hdr, vec![], vec![exact("prod,dev")]),
            twice(),
            false,
        ),
        (
            "not_values, neither",
            when(hdr, vec![], vec![exact("test")]),
            twice(),
            true,
        ),
    ]);
}

#[test]
fn conditions() {
    let hdr = |k: &str| format!("request.headers[{k}]");
    check_allow(&[
        (
            "header value",
            when(&hdr("x-team"), vec![exact("blue")], vec![]),
            get("/").header("x-team", "blue"),
            true,
        ),
        (
            "header other value",
            when(&hdr("x-team"), vec![exact("blue")], vec![]),
            get("/").header("x-team", "red"),
            false,
        ),
        (
            "header sent twice is seen joined with ',' (Istio)",
            when(&hdr("x-team"), vec![exact("blue")], vec![]),
            get("/").header("x-team", "red").header("x-team", "blue"),
            false,
        ),
        (
            "header sent twice matches its joined value",
            when(&hdr("x-team"), vec![exact("red,blue")], vec![]),
            get("/").header("x-team", "red").header("x-team", "blue"),
            true,
        ),
        (
            "header absent, values",
            when(&hdr("x-team"), vec![exact("blue")], vec![]),
            get("/"),
            false,
        ),
        (
            "header absent, presence",
            when(&hdr("x-team"), vec![any()], vec![]),
            get("/"),
            false,
        ),
        (
            "header empty value, presence",
            when(&hdr("x-team"), vec![any()], vec![]),
            get("/").header("x-team", ""),
            true,
        ),
        (
            "header absent, not_values",
            when(&hdr("x-team"), vec![], vec![exact("red")]),
            get("/"),
            true,
        ),
        (
            "header not_values",
            when(&hdr("x-team"), vec![], vec![exact("red")]),
            get("/").header("x-team", "red"),
            false,
        ),
        (
            "header not_values, one of several",
            when(&hdr("x-team"), vec![], vec![exact("red")]),
            get("/").header("x-team", "blue").header("x-team", "red"),
            false,
        ),
        (
            "header prefix",
            when(&hdr("authorization"), vec![prefix("Bearer ")], vec![]),
            get("/").header("authorization", "Bearer x"),
            true,
        ),
        (
            "header key case",
            when("request.headers[X-Team]", vec![exact("blue")], vec![]),
            get("/").header("x-team", "blue"),
            true,
        ),
        (
            "source.ip",
            when("source.ip", vec![exact("10.0.0.0/16")], vec![]),
            get("/"),
            true,
        ),
        (
            "source.ip miss",
            when("source.ip", vec![exact("10.1.0.0/16")], vec![]),
            get("/"),
            false,
        ),
        (
            "source.ip not_values",
            when("source.ip", vec![], vec![exact("10.0.0.1")]),
            get("/"),
            false,
        ),
        (
            "source.namespace",
            when("source.namespace", vec![exact("shop")], vec![]),
            get("/"),
            true,
        ),
        (
            "source.namespace not",
            when("source.namespace", vec![], vec![exact("shop")]),
            get("/"),
            false,
        ),
        (
            "source.principal",
            when(
                "source.principal",
                vec![exact("cluster.local/ns/shop/sa/frontend")],
                vec![],
            ),
            get("/"),
            true,
        ),
        (
            "source.principal not",
            when("source.principal", vec![], vec![suffix("/sa/frontend")]),
            get("/"),
            false,
        ),
        (
            "destination.ip",
            when("destination.ip", vec![exact("10.0.0.2")], vec![]),
            get("/"),
            true,
        ),
        (
            "destination.ip not",
            when("destination.ip", vec![], vec![exact("10.0.0.0/8")]),
            get("/"),
            false,
        ),
        (
            "destination.port",
            when("destination.port", vec![exact("8080")], vec![]),
            get("/"),
            true,
        ),
        (
            "destination.port any",
            when("destination.port", vec![any()], vec![]),
            get("/"),
            true,
        ),
        (
            "destination.port not",
            when("destination.port", vec![], vec![exact("8080")]),
            get("/"),
            false,
        ),
        (
            "connection.sni",
            when("connection.sni", vec![suffix(".palisade.mesh")], vec![]),
            get("/"),
            true,
        ),
        (
            "connection.sni not",
            when(
                "connection.sni",
                vec![],
                vec![exact("port-8080.palisade.mesh")],
            ),
            get("/"),
            false,
        ),
        (
            "values and not_values",
            when(
                "source.ip",
                vec![exact("10.0.0.0/8")],
                vec![exact("10.0.0.1")],
            ),
            get("/"),
            false,
        ),
    ]);
    // All conditions must hold.
    let rule = v1::Rule {
        when: vec![
            v1::Condition {
                key: "source.namespace".into(),
                values: vec![exact("shop")],
                not_values: vec![],
            },
            v1::Condition {
                key: "destination.port".into(),
                values: vec![exact("9090")],
                not_values: vec![],
            },
        ],
        ..Default::default()
    };
    check_allow(&[("all conditions", rule, get("/"), false)]);
    // An absent SNI matches no values and every not_values.
    let mut no_sni = get("/");
    no_sni.sni = None;
    check_allow(&[
        (
            "sni absent",
            when("connection.sni", vec![any()], vec![]),
            no_sni.clone(),
            false,
        ),
        (
            "sni absent not",
            when("connection.sni", vec![], vec![any()]),
            no_sni,
            true,
        ),
    ]);
}

// === connection level (opaque TCP) ===

#[test]
fn tcp_allow_rules_with_http_fields_do_not_match() {
    let op = |f: fn(&mut v1::Operation)| {
        let mut o = v1::Operation::default();
        f(&mut o);
        to(o)
    };
    check_allow(&[
        ("ports only", op(|o| o.ports = vec![8080]), tcp(), true),
        (
            "ports + methods",
            op(|o| {
                o.ports = vec![8080];
                o.methods = vec![exact("GET")];
            }),
            tcp(),
            false,
        ),
        ("hosts", op(|o| o.hosts = vec![any()]), tcp(), false),
        (
            "not_hosts",
            op(|o| o.not_hosts = vec![exact("x")]),
            tcp(),
            false,
        ),
        ("paths", op(|o| o.paths = vec![any()]), tcp(), false),
        (
            "not_paths",
            op(|o| o.not_paths = vec![exact("/admin")]),
            tcp(),
            false,
        ),
        (
            "not_methods",
            op(|o| o.not_methods = vec![exact("DELETE")]),
            tcp(),
            false,
        ),
        (
            "header condition",
            when("request.headers[x]", vec![any()], vec![]),
            tcp(),
            false,
        ),
        (
            "principal",
            from(v1::Source {
                principals: vec![any()],
                ..Default::default()
            }),
            tcp(),
            true,
        ),
        (
            "sni condition",
            when("connection.sni", vec![any()], vec![]),
            tcp(),
            true,
        ),
    ]);
    // Per rule: an HTTP-only operation anywhere in the rule makes the whole rule not match;
    // another rule of the same policy still can.
    let mixed = v1::Rule {
        to: vec![
            v1::Operation {
                ports: vec![8080],
                ..Default::default()
            },
            v1::Operation {
                methods: vec![exact("GET")],
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    check_allow(&[("mixed operations", mixed.clone(), tcp(), false)]);
    let a = authorizer(vec![allow(
        "p",
        vec![
            mixed,
            to(v1::Operation {
                ports: vec![8080],
                ..Default::default()
            }),
        ],
    )]);
    let d = a.evaluate(&tcp().attrs(), false);
    assert_eq!(d.explain(), "ALLOW by shop/p rule 1");
}

#[test]
fn tcp_deny_rules_ignore_http_fields() {
    let op = |f: fn(&mut v1::Operation)| {
        let mut o = v1::Operation::default();
        f(&mut o);
        to(o)
    };
    check_deny(&[
        (
            "methods ignored",
            op(|o| o.methods = vec![exact("DELETE")]),
            tcp(),
            true,
        ),
        (
            "paths ignored",
            op(|o| o.paths = vec![exact("/admin")]),
            tcp(),
            true,
        ),
        (
            "not_paths ignored",
            op(|o| o.not_paths = vec![exact("/")]),
            tcp(),
            true,
        ),
        (
            "hosts ignored, port kept",
            op(|o| {
                o.hosts = vec![exact("x")];
                o.ports = vec![9090];
            }),
            tcp(),
            false,
        ),
        (
            "hosts ignored, port matches",
            op(|o| {
                o.hosts = vec![exact("x")];
                o.ports = vec![8080];
            }),
            tcp(),
            true,
        ),
        (
            "header condition ignored",
            when("request.headers[x]", vec![exact("y")], vec![]),
            tcp(),
            true,
        ),
        (
            "source still checked",
            v1::Rule {
                from: vec![v1::Source {
                    principals: vec![exact("nobody")],
                    ..Default::default()
                }],
                to: vec![v1::Operation {
                    methods: vec![exact("GET")],
                    ..Default::default()
                }],
                when: vec![],
            },
            tcp(),
            false,
        ),
        // The same rules on HTTP do look at the fields.
        (
            "methods on http",
            op(|o| o.methods = vec![exact("DELETE")]),
            get("/"),
            false,
        ),
    ]);
    // AUDIT like DENY.
    let a = authorizer(vec![audit(
        "a",
        vec![to(v1::Operation {
            methods: vec![exact("DELETE")],
            ..Default::default()
        })],
    )]);
    assert_eq!(a.evaluate(&tcp().attrs(), true).audits.matched.len(), 1);
    assert!(
        a.evaluate(&get("/").attrs(), true)
            .audits
            .matched
            .is_empty()
    );
}

// === conversion errors ===

#[test]
fn invalid_policies_are_rejected_with_policy_rule_and_field() {
    let bad = |p: v1::AuthorizationPolicy| {
        Authorizer::try_from(&v1::AuthorizationSnapshot {
            policies: vec![allow("fine", vec![v1::Rule::default()]), p],
        })
        .expect_err("must be rejected")
    };
    let cases: Vec<(v1::AuthorizationPolicy, &str, &str)> = vec![
        (
            policy("p", v1::Action::Unspecified, vec![]),
            "action",
            "is not ALLOW, DENY or AUDIT",
        ),
        (
            v1::AuthorizationPolicy {
                action: 9,
                ..allow("p", vec![])
            },
            "action",
            "action 9",
        ),
        (
            v1::AuthorizationPolicy {
                name: String::new(),
                ..allow("p", vec![])
            },
            "name",
            "is empty",
        ),
        (
            allow(
                "p",
                vec![
                    v1::Rule::default(),
                    from(v1::Source {
                        principals: vec![exact("a"), v1::StringMatch { kind: None }],
                        ..Default::default()
                    }),
                ],
            ),
            "rules[1].from[0].principals[1]",
            "no kind",
        ),
        (
            deny(
                "p",
                vec![from(v1::Source {
                    not_namespaces: vec![v1::StringMatch {
                        kind: Some(Kind::Presence(false)),
                    }],
                    ..Default::default()
                })],
            ),
            "rules[0].from[0].not_namespaces[0]",
            "presence: false",
        ),
        (
            deny(
                "p",
                vec![from(v1::Source {
                    not_ip_blocks: vec!["10.0.0.0/40".into()],
                    ..Default::default()
                })],
            ),
            "rules[0].from[0].not_ip_blocks[0]",
            "\"10.0.0.0/40\" is not an IP address or CIDR",
        ),
        (
            allow(
                "p",
                vec![to(v1::Operation {
                    ports: vec![70000],
                    ..Default::default()
                })],
            ),
            "rules[0].to[0].ports[0]",
            "70000 is not a port",
        ),
        (
            allow(
                "p",
                vec![to(v1::Operation {
                    not_ports: vec![0],
                    ..Default::default()
                })],
            ),
            "rules[0].to[0].not_ports[0]",
            "0 is not a port",
        ),
        (
            allow(
                "p",
                vec![to(v1::Operation {
                    not_hosts: vec![v1::StringMatch { kind: None }],
                    ..Default::default()
                })],
            ),
            "rules[0].to[0].not_hosts[0]",
            "no kind",
        ),
        (
            allow(
                "p",
                vec![when("request.auth.claims[iss]", vec![any()], vec![])],
            ),
            "rules[0].when[0].key",
            "unknown key \"request.auth.claims[iss]\"",
        ),
        (
            allow(
                "p",
                vec![when("request.headers[bad header]", vec![any()], vec![])],
            ),
            "rules[0].when[0].key",
            "not a valid header name",
        ),
        (
            allow("p", vec![when("request.headers[]", vec![any()], vec![])]),
            "rules[0].when[0].key",
            "not a valid header name",
        ),
        (
            allow("p", vec![when("source.ip", vec![], vec![])]),
            "rules[0].when[0].values",
            "needs values or not_values",
        ),
        (
            allow("p", vec![when("source.ip", vec![exact("nope")], vec![])]),
            "rules[0].when[0].values[0]",
            "not an IP address",
        ),
        (
            allow(
                "p",
                vec![when("destination.ip", vec![], vec![prefix("10.")])],
            ),
            "rules[0].when[0].not_values[0]",
            "destination.ip takes exact values",
        ),
        (
            allow(
                "p",
                vec![when("destination.port", vec![exact("http")], vec![])],
            ),
            "rules[0].when[0].values[0]",
            "http is not a port",
        ),
    ];
    for (p, field, message) in cases {
        let e = bad(p);
        assert!(
            e.resource.starts_with("AuthorizationPolicy shop/")
                && e.resource.ends_with(" (policies[1])"),
            "{e}"
        );
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(message), "{e}");
    }
}

#[test]
fn policies_report_their_names() {
    let a = authorizer(vec![
        allow("a", vec![v1::Rule::default()]),
        deny("d", vec![]),
        audit("au", vec![v1::Rule::default(), v1::Rule::default()]),
    ]);
    assert_eq!(a.len(), 3);
    let listed: Vec<_> = a.policies().collect();
    assert_eq!(
        listed,
        vec![
            ("shop/d", Action::Deny, 0),
            ("shop/a", Action::Allow, 1),
            ("shop/au", Action::Audit, 2)
        ]
    );
}
