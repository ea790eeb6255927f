//! Per-request cost of authorization: `Authorizer::decide` (the data path) and `evaluate`
//! (owned decision) with 10, 100 and 1,000 realistic rules selecting one workload, for an
//! early match and for the no-match (default-deny) worst case, plus `normalize_path`.
//!
//! Run: `cargo bench -p palisade-proxy --bench authz`. Prints the median ns per call of 7
//! samples of at least 100 ms each. Figures only: nothing here asserts a time.

use std::hint::black_box;

use http::{HeaderMap, HeaderValue};
use palisade_certs::SpiffeId;
use palisade_proto::v1::{self, string_match::Kind};
use palisade_proxy::authz::{Authorizer, HttpAttrs, RequestAttrs, normalize_path, normalized};

mod support;
use support::{SAMPLE_TIME, SAMPLES, measure};

fn m(kind: Kind) -> v1::StringMatch {
    v1::StringMatch { kind: Some(kind) }
}

/// `rules` ALLOW rules in policies of 10, like a namespace's worth of service-to-service
/// policies: a namespace-wide principal prefix plus one exact caller, two methods, a path
/// prefix per API and a tenant header condition; one DENY policy in front of them.
fn snapshot(rules: usize) -> v1::AuthorizationSnapshot {
    let mut policies = vec![v1::AuthorizationPolicy {
        namespace: "shop".into(),
        name: "deny-admin".into(),
        action: v1::Action::Deny as i32,
        dry_run: false,
        rules: vec![v1::Rule {
            to: vec![v1::Operation {
                paths: vec![m(Kind::Prefix("/admin".into()))],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }];
    for p in 0..rules.div_ceil(10) {
        let rules = (0..10.min(rules - p * 10))
            .map(|r| {
                let i = p * 10 + r;
                v1::Rule {
                    from: vec![v1::Source {
                        principals: vec![
                            m(Kind::Exact(format!("cluster.local/ns/other/sa/client-{i}"))),
                            m(Kind::Prefix("cluster.local/ns/shop/sa/".into())),
                        ],
                        ..Default::default()
                    }],
                    to: vec![v1::Operation {
                        methods: vec![m(Kind::Exact("GET".into())), m(Kind::Exact("POST".into()))],
                        paths: vec![m(Kind::Prefix(format!("/api/v1/svc{i}/")))],
                        ..Default::default()
                    }],
                    when: vec![v1::Condition {
                        key: "request.headers[x-tenant]".into(),
                        values: vec![m(Kind::Exact(format!("tenant-{}", i % 7)))],
                        not_values: vec![],
                    }],
                }
            })
            .collect();
        policies.push(v1::AuthorizationPolicy {
            namespace: "shop".into(),
            name: format!("api-{p:03}"),
            action: v1::Action::Allow as i32,
            dry_run: false,
            rules,
        });
    }
    v1::AuthorizationSnapshot { policies }
}

fn main() {
    let caller = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend").expect("id");
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("tenant-0"));
    headers.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    let request = |path: &'static str| RequestAttrs {
        source: Some(&caller),
        source_ip: Some("10.0.0.1".parse().expect("ip")),
        destination_ip: Some("10.0.0.2".parse().expect("ip")),
        destination_port: 8080,
        sni: Some("port-8080.palisade.mesh"),
        http: Some(HttpAttrs {
            method: "GET",
            host: "search.shop:8080",
            path,
            headers: &headers,
        }),
    };
    let early = request("/api/v1/svc0/items?page=2");
    let early_dirty = request("/api/v1/svc0/./items/%7Eall?page=2");
    let none = request("/api/v2/unknown/items?page=2");

    println!("authz evaluation, median ns per request ({SAMPLES} samples x {SAMPLE_TIME:?})");
    println!(
        "{:>6}  {:>12}  {:>14}  {:>16}  {:>18}",
        "rules", "early match", "early (owned)", "early, dirty path", "no match (deny)"
    );
    for rules in [10, 100, 1000] {
        let authorizer = Authorizer::try_from(&snapshot(rules)).expect("valid snapshot");
        let d = authorizer.decide(&early, false);
        assert!(d.allowed && d.rule() == Some(0), "{}", d.explain());
        assert!(!authorizer.decide(&none, false).allowed);
        assert!(authorizer.decide(&early_dirty, false).allowed);
        let t_early = measure(|| {
            black_box(authorizer.decide(black_box(&early), false));
        });
        let t_owned = measure(|| {
            black_box(authorizer.evaluate(black_box(&early), false));
        });
        let t_dirty = measure(|| {
            black_box(authorizer.decide(black_box(&early_dirty), false));
        });
        let t_none = measure(|| {
            black_box(authorizer.decide(black_box(&none), false));
        });
        println!("{rules:>6}  {t_early:>12.0}  {t_owned:>14.0}  {t_dirty:>16.0}  {t_none:>18.0}");
    }

    println!();
    println!("path normalisation, median ns per call");
    for path in [
        "/api/v1/svc0/items?page=2",
        "/api/v1/svc0/./items/%7Eall/../x?page=2",
        "/payments.Payments/Charge",
        "/a/very/long/path/with/many/segments/to/walk/through/before/the/end/of/it/index.html",
    ] {
        let borrowed = measure(|| {
            let _ = black_box(normalized(black_box(path)));
        });
        let owned = measure(|| {
            let _ = black_box(normalize_path(black_box(path)));
        });
        println!("  {borrowed:>6.0} (normalized)  {owned:>6.0} (normalize_path)  {path}");
    }
}
