use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use palisade_proto::v1;

use crate::support::*;

const HOST: &str = "search.shop:8080";

fn frontend_may_get(prefix_path: &str) -> v1::AuthorizationPolicy {
    policy(
        "frontend-reads",
        v1::Action::Allow,
        vec![v1::Rule {
            from: vec![v1::Source {
                principals: vec![exact("cluster.local/ns/shop/sa/frontend")],
                ..Default::default()
            }],
            to: vec![v1::Operation {
                methods: vec![exact("GET")],
                paths: vec![prefix(prefix_path)],
                ..Default::default()
            }],
            when: vec![],
        }],
    )
}

fn deny_paths(name: &str, path_prefix: &str) -> v1::AuthorizationPolicy {
    policy(
        name,
        v1::Action::Deny,
        vec![v1::Rule {
            to: vec![v1::Operation {
                paths: vec![prefix(path_prefix)],
                ..Default::default()
            }],
            ..Default::default()
        }],
    )
}

fn denied_by(r: &http::Response<Bytes>) -> &str {
    r.headers()
        .get("x-palisade-denied-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
}

#[tokio::test]
async fn requests_are_authorized_per_policy_and_denials_say_who_decided() {
    let mesh = Mesh::start(MeshOptions {
        default_allow: false,
        search_policies: vec![frontend_may_get("/ok")],
        ..Default::default()
    })
    .await;
    let ok = mesh.get(HOST, "/ok/1?x=2").await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.body(), "/ok/1?x=2");

    let no = mesh.get(HOST, "/secret").await;
    assert_eq!(no.status(), StatusCode::FORBIDDEN);
    assert_eq!(denied_by(&no), "default-deny");
    let body = String::from_utf8_lossy(no.body());
    assert!(body.contains("denied by default-deny"), "{body}");
    assert_eq!(
        mesh.app.requests.load(Ordering::SeqCst),
        1,
        "the denied request reached the app"
    );

    let destination = format!("shop/search:{}", mesh.app.addr.port());
    let labels = [
        ("direction", "inbound"),
        ("policy", "default-deny"),
        ("source", FRONTEND),
        ("destination", destination.as_str()),
    ];
    assert_eq!(
        metric(&mesh.search, "palisade_proxy_authz_denials_total", &labels),
        Some(1.0),
        "{}",
        mesh.search.metrics().encode()
    );
    mesh.stop().await;
}

#[tokio::test]
async fn deny_policies_are_named_and_see_through_path_encodings() {
    let mesh = Mesh::start(MeshOptions {
        search_policies: vec![deny_paths("no-admin", "/admin")],
        ..Default::default()
    })
    .await;
    for path in [
        "/admin",
        "/admin/x?y",
        "/%61dmin",
        "/x/../admin",
        "/x/%2e%2e/admin",
    ] {
        let r = mesh.get(HOST, path).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        assert_eq!(denied_by(&r), "shop/no-admin", "{path}");
    }
    // `//` is not merged (CONTRACT); the app gets exactly what was authorized.
    let r = mesh.get(HOST, "//admin").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.body(), "//admin");
    assert_eq!(mesh.app.requests.load(Ordering::SeqCst), 1);
    mesh.stop().await;
}

#[tokio::test]
async fn hidden_denial_reasons_drop_the_policy_name() {
    let mesh = Mesh::start(MeshOptions {
        hide_denial_reasons: true,
        search_policies: vec![deny_paths("no-admin", "/admin")],
        ..Default::default()
    })
    .await;
    let r = mesh.get(HOST, "/admin").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(denied_by(&r), "hidden");
    assert!(!String::from_utf8_lossy(r.body()).contains("no-admin"));
    // The metric still names it: operators may know what callers may not.
    assert_eq!(
        metric(
            &mesh.search,
            "palisade_proxy_authz_denials_total",
            &[("policy", "shop/no-admin")]
        ),
        Some(1.0)
    );
    mesh.stop().await;
}

#[tokio::test]
async fn grpc_denials_are_permission_denied_in_a_trailers_only_response() {
    let mesh = Mesh::start(MeshOptions {
        search_policies: vec![deny_paths("no-charge", "/payments.Payments/Charge")],
        ..Default::default()
    })
    .await;
    let req = Request::post("/payments.Payments/Charge")
        .header(http::header::HOST, HOST)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let r = send(mesh.frontend.outbound_addr(), req).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["grpc-status"], "7");
    assert_eq!(r.headers()["grpc-message"], "denied by shop/no-charge");
    assert_eq!(denied_by(&r), "shop/no-charge");
    assert_eq!(mesh.app.requests.load(Ordering::SeqCst), 0);
    mesh.stop().await;
}

#[tokio::test]
async fn a_policy_push_applies_to_open_connections_at_once() {
    let mesh = Mesh::start(MeshOptions::default()).await;
    let inbound_connections = || {
        metric(
            &mesh.search,
            "palisade_proxy_connections_total",
            &[("direction", "inbound")],
        )
    };
    assert_eq!(mesh.get(HOST, "/a").await.status(), StatusCode::OK);
    assert_eq!(inbound_connections(), Some(1.0));

    let freeze = policy("freeze", v1::Action::Deny, vec![v1::Rule::default()]);
    mesh.search.apply_static(&authz(vec![freeze])).unwrap();
    let r = mesh.get(HOST, "/a").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(denied_by(&r), "shop/freeze");

    // An invalid snapshot is refused and the last good one stays in force.
    let broken = policy("broken", v1::Action::Unspecified, vec![]);
    let e = mesh.search.apply_static(&authz(vec![broken])).unwrap_err();
    assert!(
        e.to_string().contains("AuthorizationPolicy shop/broken"),
        "{e}"
    );
    assert_eq!(mesh.get(HOST, "/a").await.status(), StatusCode::FORBIDDEN);

    mesh.search.apply_static(&authz(vec![])).unwrap();
    assert_eq!(mesh.get(HOST, "/a").await.status(), StatusCode::OK);
    // All of it over the one pooled mTLS connection the frontend opened first.
    assert_eq!(inbound_connections(), Some(1.0));
    mesh.stop().await;
}

#[tokio::test]
async fn the_app_receives_the_normalised_path_it_was_authorized_for() {
    let mesh = Mesh::start(MeshOptions::default()).await;
    let r = mesh.get(HOST, "/x/../%61dmin/./a%7eb?q=%2e").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.body(), "/admin/a~b?q=%2e");
    // An encoded slash is refused by default (MeshConfig pathNormalization).
    let r = mesh.get(HOST, "/x/a%2fb").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    mesh.stop().await;
}

#[tokio::test]
async fn denials_audits_and_allows_are_logged_with_policy_and_rule() {
    let logs = Logs::default();
    let _guard = logs.install();
    let audit = policy(
        "watch-ok",
        v1::Action::Audit,
        vec![v1::Rule {
            to: vec![v1::Operation {
                paths: vec![prefix("/ok")],
                ..Default::default()
            }],
            ..Default::default()
        }],
    );
    let mesh = Mesh::start(MeshOptions {
        default_allow: false,
        search_policies: vec![frontend_may_get("/ok"), audit],
        log_decisions: true,
        ..Default::default()
    })
    .await;
    assert_eq!(
        mesh.get(HOST, "/ok?token=secret").await.status(),
        StatusCode::OK
    );
    assert_eq!(mesh.get(HOST, "/no").await.status(), StatusCode::FORBIDDEN);
    let port = mesh.app.addr.port();
    let destination = format!("destination=shop/search:{port}");
    mesh.stop().await;

    let lines = logs.authz_lines();
    let find = |needles: &[&str]| {
        lines
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no authz line with {needles:?} in:\n{}", lines.join("\n")))
    };
    let source = format!("source={FRONTEND}");
    let denied = find(&["WARN", "request denied", "path=/no"]);
    for field in [
        source.as_str(),
        destination.as_str(),
        "method=GET",
        "decision=DENY: no ALLOW policy matched (ALLOW policies: shop/frontend-reads)",
        "policy=default-deny",
        "rule=-",
    ] {
        assert!(denied.contains(field), "{field} missing in {denied}");
    }
    let audited = find(&["INFO", "matched an AUDIT policy"]);
    for field in [
        "policy=shop/watch-ok",
        "rule=0",
        "path=/ok ",
        source.as_str(),
    ] {
        assert!(audited.contains(field), "{field} missing in {audited}");
    }
    let allowed = find(&["INFO", "request allowed"]);
    for field in [
        "policy=shop/frontend-reads",
        "rule=0",
        "decision=ALLOW by shop/frontend-reads rule 0",
    ] {
        assert!(allowed.contains(field), "{field} missing in {allowed}");
    }
    // The query (which may carry secrets) is never logged.
    assert!(!logs.text().contains("secret"), "{}", logs.text());
}

#[tokio::test]
async fn admin_config_lists_dry_run_policies_apart_from_enforced_ones() {
    let mut dry = deny_paths("would-deny", "/admin");
    dry.dry_run = true;
    let mesh = Mesh::start(MeshOptions {
        search_policies: vec![deny_paths("no-secrets", "/secrets"), dry],
        ..Default::default()
    })
    .await;
    let req = Request::get("/config")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(mesh.search.admin_addr(), req).await;
    assert_eq!(r.status(), StatusCode::OK);
    let config: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    let names = |key: &str| -> Vec<String> {
        config[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key}: {config}"))
            .iter()
            .map(|p| p["policy"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names("authorization"), ["shop/no-secrets"], "{config}");
    assert_eq!(
        names("authorization_dry_run"),
        ["shop/would-deny"],
        "{config}"
    );
    assert_eq!(
        config["authorization_dry_run"][0]["action"], "Deny",
        "{config}"
    );
    assert_eq!(config["authorization_dry_run"][0]["rules"], 1, "{config}");
    // Evaluated, not enforced: the path it would deny is served.
    assert_eq!(mesh.get(HOST, "/admin").await.status(), StatusCode::OK);
    mesh.stop().await;
}
