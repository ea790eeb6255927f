//! The live view: `palisade tap` (the real binary) against a running shop shows exactly the
//! denied requests, with the policy and rule that denied each, and nothing else.

use std::process::Stdio;
use std::time::Duration;

use palisade_control_plane::telemetry::Event;
use palisade_example_shop::payments_proto::ChargeRequest;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::clients::{H1Client, payments_client};
use crate::support::mesh::{self, SEARCH_NO_ADMIN};
use crate::support::procs::palisade_bin;
use crate::support::{poll, within};

/// Denials to see (with [`SEARCH_NO_ADMIN`]): the client charging payments.
const PAYMENTS_NOT_FROM_CLIENT: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: payments-not-from-client, namespace: shop}
spec:
  selector: {matchLabels: {app: payments}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]
    to: [{operation: {methods: [POST]}}]
";

/// The page's denied edge (with [`SEARCH_NO_ADMIN`]): search may not call payments.
const PAYMENTS_NOT_FROM_SEARCH: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: payments-not-from-search, namespace: shop}
spec:
  selector: {matchLabels: {app: payments}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/search]}}]
";

/// Waits until the control plane has told `workloads`' sidecars that someone watches.
async fn await_watched(mesh: &crate::support::TestMesh, workloads: &[&str]) {
    poll(
        Duration::from_secs(20),
        Duration::from_millis(50),
        "the sidecars are told someone watches",
        || async {
            workloads
                .iter()
                .all(|w| mesh.sidecar(w).proxy.metrics().observer().watched())
                .then_some(())
        },
    )
    .await;
}

/// The shop with search's admin paths and `payments` (a policy document) denied.
fn shop_denying(test: &'static str, payments: &str) -> crate::support::mesh::MeshBuilder {
    mesh::shop(test).file(
        "policies.yaml",
        &format!("{SEARCH_NO_ADMIN}---\n{payments}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_shows_exactly_the_denied_requests_with_their_policies() {
    const TEST: &str = "tap_shows_exactly_the_denied_requests_with_their_policies";
    let mesh = shop_denying(TEST, PAYMENTS_NOT_FROM_CLIENT).start().await;
    let outbound = mesh.sidecar("client").outbound();

    // Decisions made before the tap starts are not part of its stream.
    let mut client = H1Client::new(outbound);
    let before = client
        .get("http://search.shop:8080/admin/before-tap", &[])
        .await
        .unwrap();
    assert_eq!(before.status, 403);

    let mut tap = tokio::process::Command::new(palisade_bin())
        .args(["tap", "--denied", "--output", "json", "--count", "6"])
        .args(["--duration-seconds", "60"])
        .args(["--control-plane", &mesh.cp_admin().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The sidecars learn that someone watches.
    await_watched(&mesh, &["search", "payments"]).await;

    // Allowed traffic (HTTP/1.1 and gRPC), then denied traffic, then a last denial that marks
    // the end.
    for i in 0..5 {
        let r = client
            .get(&format!("http://search.shop:8080/search?q=lamp&i={i}"), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let mut payments =
        payments_client(mesh.sidecar("search").outbound(), "payments.shop:9090").await;
    payments
        .charge(ChargeRequest {
            order_id: "allowed".into(),
            cents: 1,
        })
        .await
        .expect("search may charge");
    for path in ["/admin/users", "/admin/keys?token=secret", "/admin/users"] {
        let r = client
            .get(&format!("http://search.shop:8080{path}"), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 403, "{path}");
    }
    let mut denied_payments = payments_client(outbound, "payments.shop:9090").await;
    for i in 0..2 {
        let status = denied_payments
            .charge(ChargeRequest {
                order_id: format!("denied-{i}"),
                cents: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }
    let r = client
        .get("http://search.shop:8080/admin/last", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 403);

    let out = within(
        Duration::from_secs(30),
        "tap prints six denials and exits",
        async {
            let stdout = tap.stdout.take().unwrap();
            let mut lines = BufReader::new(stdout).lines();
            let mut got = Vec::new();
            while let Some(line) = lines.next_line().await.unwrap() {
                got.push(line);
            }
            let status = tap.wait().await.unwrap();
            (got, status)
        },
    )
    .await;
    assert!(out.1.success(), "tap exited with {:?}", out.1);
    let mut events: Vec<Event> = out
        .0
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // Each sidecar reports on its own schedule: the stream interleaves them in arrival
    // order, so compare in the order the decisions were made.
    events.sort_by_key(|e| e.time_unix_ms);
    let summary: Vec<(String, String, String, i32)> = events
        .iter()
        .map(|e| (e.reporter.clone(), e.path.clone(), e.policy.clone(), e.rule))
        .collect();
    let expected: Vec<(String, String, String, i32)> = [
        ("shop/search", "/admin/users", "shop/search-no-admin"),
        ("shop/search", "/admin/keys", "shop/search-no-admin"),
        ("shop/search", "/admin/users", "shop/search-no-admin"),
        (
            "shop/payments",
            "/payments.Payments/Charge",
            "shop/payments-not-from-client",
        ),
        (
            "shop/payments",
            "/payments.Payments/Charge",
            "shop/payments-not-from-client",
        ),
        ("shop/search", "/admin/last", "shop/search-no-admin"),
    ]
    .iter()
    .map(|(w, p, pol)| (w.to_string(), p.to_string(), pol.to_string(), 0))
    .collect();
    assert_eq!(summary, expected, "{events:#?}");
    for e in &events {
        assert_eq!(e.decision, "deny");
        assert_eq!(e.direction, "inbound");
        assert_eq!(e.source, "spiffe://cluster.local/ns/shop/sa/client");
        assert_eq!(e.source_workload, "shop/client");
        assert!(
            !e.path.contains("secret"),
            "the query never leaves the sidecar"
        );
        assert!(!e.explain.is_empty());
    }
    assert_eq!(events[3].method, "POST");
    mesh.stop().await;
}

/// `palisade top --once --json`: the first call starts the sidecars counting; after traffic,
/// the client -> search edge shows its requests, its denials and a p99.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_rates_denials_and_latency_per_edge() {
    use palisade_control_plane::telemetry::EdgeStats;
    const TEST: &str = "top_shows_rates_denials_and_latency_per_edge";
    let mesh = shop_denying(TEST, PAYMENTS_NOT_FROM_CLIENT).start().await;
    let admin = mesh.cp_admin().to_string();
    let top = || {
        let admin = admin.clone();
        async move {
            let out = crate::support::procs::run_palisade(&[
                "top",
                "--once",
                "--json",
                "--control-plane",
                &admin,
            ])
            .await;
            assert!(out.status.success(), "{out:?}");
            serde_json::from_slice::<Vec<EdgeStats>>(&out.stdout).unwrap()
        }
    };
    assert!(top().await.is_empty(), "no traffic yet");
    await_watched(&mesh, &["search"]).await;
    let mut client = H1Client::new(mesh.sidecar("client").outbound());
    for i in 0..20 {
        let path = if i % 4 == 0 {
            "/admin/x"
        } else {
            "/search?q=lamp"
        };
        client
            .get(&format!("http://search.shop:8080{path}"), &[])
            .await
            .unwrap();
    }
    let edge = poll(
        Duration::from_secs(10),
        Duration::from_millis(200),
        "the client -> search edge in top",
        || async {
            top().await.into_iter().find(|e| {
                e.source == "shop/client" && e.destination == "shop/search" && e.requests >= 20
            })
        },
    )
    .await;
    assert_eq!(edge.requests, 20, "{edge:?}");
    assert_eq!(edge.denied, 5, "{edge:?}");
    assert!(edge.requests_per_second > 0.0 && edge.denied_per_second > 0.0);
    assert!(edge.p99_ms.is_some_and(|p| p > 0.0), "{edge:?}");
    mesh.stop().await;
}

/// Where the page's screenshots go: `<target dir>/e2e-artifacts/`.
fn artifacts_dir() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::support::procs::workspace_root().join("target"));
    target.join("e2e-artifacts")
}

/// The `/ui` page in headless Chromium (selenium driving Debian's chromium): the graph shows
/// the workloads and the observed edges with search -> payments marked denied; a new
/// violation appears in the table within 2 s without a reload; the edge's policies open from
/// the keyboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_page_shows_the_graph_and_violations_live_in_a_browser() {
    use tokio::io::AsyncWriteExt;
    const TEST: &str = "the_ui_page_shows_the_graph_and_violations_live_in_a_browser";
    let python = "/opt/meshtools/bin/python";
    let have_selenium = std::process::Command::new(python)
        .args(["-c", "import selenium"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_selenium
        || !std::path::Path::new("/usr/bin/chromium").exists()
        || !std::path::Path::new("/usr/bin/chromedriver").exists()
    {
        crate::support::skip(
            TEST,
            "needs Debian's chromium and chromium-driver and selenium in /opt/meshtools (tests/run.sh installs them as root)",
        );
        return;
    }
    let mesh = shop_denying(TEST, PAYMENTS_NOT_FROM_SEARCH).start().await;
    let admin = mesh.cp_admin();

    // The page keeps the sidecars reporting; traffic starts once it is watched. Opening
    // /ui/graph starts the lease the page then keeps alive.
    let graph = || async move {
        crate::support::clients::admin_get(admin, "/ui/graph")
            .await
            .json()
    };
    graph().await;
    await_watched(&mesh, &["search", "payments"]).await;
    let mut client = H1Client::new(mesh.sidecar("client").outbound());
    for i in 0..10 {
        let r = client
            .get(&format!("http://search.shop:8080/search?q=lamp&i={i}"), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let mut from_search =
        payments_client(mesh.sidecar("search").outbound(), "payments.shop:9090").await;
    for i in 0..3 {
        let status = from_search
            .charge(ChargeRequest {
                order_id: format!("ui-{i}"),
                cents: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }
    poll(
        Duration::from_secs(10),
        Duration::from_millis(200),
        "the graph has both edges",
        || async {
            let g = graph().await;
            let edges = g["edges"].as_array().cloned().unwrap_or_default();
            let has = |s: &str, d: &str, denied: bool| {
                edges
                    .iter()
                    .any(|e| e["source"] == s && e["destination"] == d && e["denied"] == denied)
            };
            (has("shop/client", "shop/search", false) && has("shop/search", "shop/payments", true))
                .then_some(())
        },
    )
    .await;

    let artifacts = artifacts_dir();
    let script = crate::support::procs::workspace_root().join("tests/e2e/ui_check.py");
    let mut browser = tokio::process::Command::new(python)
        .arg(&script)
        .arg(format!("http://{admin}/ui"))
        .arg(&artifacts)
        .arg("shop/search->shop/payments")
        .arg("shop/payments-not-from-search")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = browser.stdin.take().unwrap();
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    let ready = within(
        Duration::from_secs(60),
        "the page shows the graph",
        lines.next_line(),
    )
    .await
    .unwrap();
    assert_eq!(ready.as_deref(), Some("READY"), "browser: {ready:?}");

    // A new violation while the page is open.
    let probe = "/admin/from-the-ui-test";
    stdin
        .write_all(format!("GO {probe}\n").as_bytes())
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    let r = client
        .get(&format!("http://search.shop:8080{probe}"), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 403);

    let report = within(
        Duration::from_secs(60),
        "the browser checks finish",
        lines.next_line(),
    )
    .await
    .unwrap()
    .expect("a result line");
    let status = within(Duration::from_secs(20), "the browser exits", browser.wait())
        .await
        .unwrap();
    assert!(status.success(), "browser checks failed: {report}");
    let result: serde_json::Value = serde_json::from_str(&report).unwrap();
    println!("ui_check: {result}");
    assert!(
        result["violation_seconds"].as_f64().unwrap() <= 2.0,
        "{result}"
    );
    let row = result["violation_row"].to_string();
    assert!(
        row.contains("shop/search-no-admin") && row.contains("shop/client"),
        "{row}"
    );
    assert!(
        result["explain"]
            .as_str()
            .unwrap()
            .contains("payments-not-from-search"),
        "{result}"
    );
    // The server's `authz check` of the edge's last request, and of the request typed in.
    let server_check = result["server_check"].as_str().unwrap();
    assert!(
        server_check.starts_with("DENY POST /payments.Payments/Charge")
            && server_check.contains("shop/payments-not-from-search rule 0")
            && server_check.contains("NetworkPolicy, ingress"),
        "{result}"
    );
    let typed = result["typed_check"].as_str().unwrap();
    assert!(
        typed.starts_with("DENY POST /typed-in-the-ui")
            && typed.contains("shop/payments-not-from-search"),
        "{result}"
    );
    // The suggestion view: search's callers as observed (client, allowed), and no observed
    // request the served configuration decides differently.
    let suggestion = result["suggestion"].as_str().unwrap();
    assert!(
        suggestion.contains("name: \"suggested-search\"")
            && suggestion.contains("principals: [\"cluster.local/ns/shop/sa/client\"]")
            && suggestion.contains("\"/search\""),
        "{result}"
    );
    assert!(
        result["diff_summary"]
            .as_str()
            .unwrap()
            .ends_with(" 0 decided differently"),
        "{result}"
    );
    assert_eq!(result["console_errors"], serde_json::json!([]), "{result}");
    for shot in [
        "ui-graph.png",
        "ui-violation.png",
        "ui-edge.png",
        "ui-suggest.png",
    ] {
        let path = artifacts.join(shot);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(
            size > 1000,
            "screenshot {} missing or empty",
            path.display()
        );
        println!("screenshot: {}", path.display());
    }
    mesh.stop().await;
}

/// The edge panel's check (`/ui/check`) is `palisade authz check` run on the configuration the
/// control plane serves: for the same requests its lines are the CLI's, word for word. Query
/// strings an attacker might send (a repeated, unknown or oversized parameter, a method that
/// is not a token, a path not starting with `/`) are refused with 400 and say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_check_answers_exactly_as_authz_check() {
    const TEST: &str = "the_edge_check_answers_exactly_as_authz_check";
    let mesh = shop_denying(TEST, PAYMENTS_NOT_FROM_SEARCH).start().await;
    let admin = mesh.cp_admin();
    let cases: [(&str, &str, &str, &str, &str); 4] = [
        (
            "shop/client",
            "shop/search",
            "GET",
            "/search?q=lamp",
            "ALLOW",
        ),
        (
            "shop/client",
            "shop/search",
            "GET",
            "/admin/./users",
            "DENY",
        ),
        ("shop/client", "shop/search", "DELETE", "/ADMIN%2fx", "DENY"),
        (
            "shop/search",
            "shop/payments",
            "POST",
            "/payments.Payments/Charge",
            "DENY",
        ),
    ];
    for (source, destination, method, path, decision) in cases {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("source", source)
            .append_pair("destination", destination)
            .append_pair("method", method)
            .append_pair("path", path)
            .finish();
        let reply = crate::support::clients::admin_get(admin, &format!("/ui/check?{query}")).await;
        assert_eq!(reply.status, 200, "{query}: {}", reply.text());
        let answer = reply.json();
        assert_eq!(answer["decision"], decision, "{query}: {answer}");
        let cli = std::process::Command::new(crate::support::procs::palisade_bin())
            .args(["authz", "check", "--config"])
            .arg(mesh.dir.path())
            .args(["--from-workload", source, "--to", destination])
            .args(["--method", method, "--path", path])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&cli.stdout);
        let expected: Vec<&str> = stdout.lines().collect();
        let served: Vec<&str> = answer["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert_eq!(served, expected, "{query}");
        assert_eq!(cli.status.success(), decision == "ALLOW", "{query}");
    }

    let refused = [
        (
            "source=shop/client&destination=shop/search&path=/a&path=/b",
            "given twice",
        ),
        (
            "source=shop/client&destination=shop/search&token=x",
            "unknown parameter",
        ),
        (
            "source=shop/client&destination=shop/search&method=G%20ET",
            "not an HTTP method",
        ),
        (
            "source=shop/client&destination=shop/search&path=admin",
            "must start with /",
        ),
        (
            "source=shop/client&destination=shop/search&port=99999",
            "not a port",
        ),
        (
            "source=shop/client&destination=shop/search%3Cscript%3E",
            "not a workload name",
        ),
        ("source=shop/client", "source and destination are required"),
    ];
    for (query, why) in refused {
        let reply = crate::support::clients::admin_get(admin, &format!("/ui/check?{query}")).await;
        assert_eq!(reply.status, 400, "{query}");
        assert!(reply.text().contains(why), "{query}: {}", reply.text());
    }
    let long = format!(
        "source=shop/client&destination=shop/search&path=/{}",
        "a".repeat(5000)
    );
    let reply = crate::support::clients::admin_get(admin, &format!("/ui/check?{long}")).await;
    assert_eq!(reply.status, 400);
    // A name that is not a workload of the mesh: an answer that says so, not an error page.
    let reply = crate::support::clients::admin_get(
        admin,
        "/ui/check?source=shop/nobody&destination=shop/search",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json()["error"],
        "source shop/nobody: no such Workload"
    );
    mesh.stop().await;
}
