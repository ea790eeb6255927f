//! The walking skeleton: an app's request goes through its sidecar, over mTLS to the
//! server's sidecar, and to the server app, for HTTP/1.1, HTTP/2 and gRPC, with real
//! third-party clients (curl, nghttp, grpcurl) besides our own (hyper, tonic). The server
//! app sees the caller's SPIFFE ID in `x-forwarded-client-cert`.

use std::time::Duration;

use palisade_example_shop::payments_proto::ChargeRequest;
use tonic::Code;

use crate::support::clients::{H1Client, H2Client, admin_get, get_h1, payments_client};
use crate::support::mesh::{self, shop_id};
use crate::support::procs::workspace_root;
use crate::support::tools::{self, output_text};
use crate::support::{metric, skip};

/// The `x-forwarded-client-cert` values an `/echo` answer shows.
fn xfcc(echo: &serde_json::Value) -> Vec<String> {
    echo["headers"]["x-forwarded-client-cert"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts the app saw exactly one XFCC naming `caller` as the peer and `server` as itself.
fn assert_xfcc(echo: &serde_json::Value, caller: &str, server: &str) {
    let values = xfcc(echo);
    assert_eq!(
        values,
        vec![format!("By={};URI={}", shop_id(server), shop_id(caller))],
        "x-forwarded-client-cert as the app saw it: {echo}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_request_through_two_sidecars() {
    const TEST: &str = "http1_request_through_two_sidecars";
    let mesh = mesh::shop(TEST).start().await;
    let outbound = mesh.sidecar("client").outbound();

    // hyper, as an explicit proxy client (absolute-form target), keep-alive.
    let mut client = H1Client::new(outbound);
    let reply = client
        .get("http://search.shop:8080/search?q=lamp", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-shop-app"), Some("search"));
    let names: Vec<String> = reply.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"Brass desk lamp".to_owned()), "{names:?}");

    // Same connection, the app's view of the request: HTTP/1.1 (port declared http), the
    // caller's identity in XFCC, and a spoofed XFCC from the app replaced, not forwarded.
    let reply = client
        .get(
            "http://search.shop:8080/echo?via=absolute",
            &[
                ("x-e2e", "h1-absolute"),
                (
                    "x-forwarded-client-cert",
                    "URI=spiffe://cluster.local/ns/shop/sa/admin",
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echo = reply.json();
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["path"], "/echo?via=absolute");
    assert_eq!(echo["headers"]["x-e2e"][0], "h1-absolute");
    assert_xfcc(&echo, "client", "search");

    // A Host that differs from the absolute-form target is ambiguous: refused, not guessed.
    let reply = client
        .get(
            "http://search.shop:8080/echo?via=absolute-only",
            &[("host", "nowhere.shop:8080")],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 400, "{}", reply.text());

    // Routing by Host with an origin-form target (transparent style), on a new connection.
    let reply = get_h1(outbound, "/echo?via=host", &[("host", "search.shop:8080")])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["path"], "/echo?via=host");
    assert_xfcc(&reply.json(), "client", "search");

    // curl, a client nobody here wrote, with the sidecar as its HTTP proxy.
    if let Some(curl) = tools::require(TEST, "curl") {
        let proxy = format!("http://{outbound}");
        let out = tools::run_ok(
            &curl,
            [
                "-sS",
                "--max-time",
                "10",
                "-x",
                &proxy,
                "http://search.shop:8080/search?q=lamp",
            ],
            Duration::from_secs(20),
        )
        .await;
        assert!(out.status.success(), "{}", output_text(&out));
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(body["service"], "search");
        assert_eq!(body["query"], "lamp");
        assert_eq!(body["results"].as_array().unwrap().len(), 3, "{body}");

        let out = tools::run_ok(
            &curl,
            [
                "-sS",
                "--max-time",
                "10",
                "-x",
                &proxy,
                "-H",
                "x-e2e: curl",
                "http://search.shop:8080/echo",
            ],
            Duration::from_secs(20),
        )
        .await;
        assert!(out.status.success(), "{}", output_text(&out));
        let echo: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(echo["headers"]["x-e2e"][0], "curl");
        assert_xfcc(&echo, "client", "search");
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_request_through_two_sidecars() {
    const TEST: &str = "http2_request_through_two_sidecars";
    let mesh = mesh::shop(TEST).start().await;
    let outbound = mesh.sidecar("client").outbound();

    // hyper, h2c with prior knowledge to the sidecar; `:authority` names the Service. Port
    // 8081 is declared http2, so the server's sidecar speaks h2c to the app.
    let mut h2 = H2Client::connect(outbound).await.unwrap();
    let reply = h2
        .get("search-h2.shop:8081", "/echo?via=h2c", &[("x-e2e", "h2")])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.version, http::Version::HTTP_2);
    let echo = reply.json();
    assert_eq!(echo["version"], "HTTP/2.0", "{echo}");
    assert_eq!(echo["authority"], "search-h2.shop:8081", "{echo}");
    assert_eq!(echo["headers"]["x-e2e"][0], "h2");
    assert_xfcc(&echo, "client", "search");

    // Multiplexed on the same connection: to the HTTP/1.1 port the app sees HTTP/1.1.
    let (mut h2a, mut h2b) = (h2.clone(), h2.clone());
    let (a, b) = tokio::join!(
        h2a.get("search.shop:8080", "/echo", &[]),
        h2b.get("search.shop:8080", "/search?q=mug", &[]),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.json()["version"], "HTTP/1.1");
    assert_eq!(b.json()["results"][0]["name"], "Stoneware mug");

    // curl with prior knowledge; the Host header becomes `:authority`.
    if let Some(curl) = tools::require(TEST, "curl") {
        let url = format!("http://{outbound}/echo?via=curl");
        let out = tools::run_ok(
            &curl,
            [
                "-sS",
                "--max-time",
                "10",
                "--http2-prior-knowledge",
                "-H",
                "Host: search-h2.shop:8081",
                "-w",
                "\n%{http_version}",
                &url,
            ],
            Duration::from_secs(20),
        )
        .await;
        assert!(out.status.success(), "{}", output_text(&out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (json, version) = text.rsplit_once('\n').unwrap();
        assert_eq!(version, "2", "curl spoke HTTP/{version}");
        let echo: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(echo["version"], "HTTP/2.0");
        assert_xfcc(&echo, "client", "search");
    }

    // nghttp (nghttp2's client), h2c with prior knowledge for an http:// URI.
    if let Some(nghttp) = tools::require(TEST, "nghttp") {
        let url = format!("http://{outbound}/echo?via=nghttp");
        let out = tools::run_ok(
            &nghttp,
            [
                "-t",
                "10",
                "-H",
                ":authority: search-h2.shop:8081",
                "-H",
                "x-e2e: nghttp",
                &url,
            ],
            Duration::from_secs(20),
        )
        .await;
        assert!(out.status.success(), "{}", output_text(&out));
        let echo: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", output_text(&out)));
        assert_eq!(echo["version"], "HTTP/2.0");
        assert_eq!(echo["headers"]["x-e2e"][0], "nghttp");
        assert_xfcc(&echo, "client", "search");
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_call_through_two_sidecars() {
    const TEST: &str = "grpc_call_through_two_sidecars";
    let mesh = mesh::shop(TEST).start().await;
    let outbound = mesh.sidecar("client").outbound();

    // tonic's generated client, through the outbound port with :authority payments.shop:9090.
    let mut payments = payments_client(outbound, "payments.shop:9090").await;
    let reply = payments
        .charge(ChargeRequest {
            order_id: "o-1".into(),
            cents: 5,
        })
        .await
        .unwrap();
    assert_eq!(
        reply
            .metadata()
            .get("x-shop-app")
            .unwrap()
            .to_str()
            .unwrap(),
        "payments"
    );
    let reply = reply.into_inner();
    assert_eq!(reply.status, "charged o-1");
    assert_eq!(reply.cents, 5);

    // The app's own gRPC status comes back unchanged, code and message.
    let status = payments
        .charge(ChargeRequest {
            order_id: String::new(),
            cents: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "order_id must not be empty");
    let status = payments
        .charge(ChargeRequest {
            order_id: "o-2".into(),
            cents: -3,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "cents must be positive, got -3 for order o-2"
    );

    // grpcurl, a Go gRPC client, from the .proto (no reflection).
    if let Some(grpcurl) = tools::require(TEST, "grpcurl") {
        let import = workspace_root().join("examples/shop/proto");
        let import = import.to_str().unwrap();
        let target = outbound.to_string();
        let call = |body: &'static str| {
            [
                "-plaintext",
                "-max-time",
                "10",
                "-authority",
                "payments.shop:9090",
                "-import-path",
                import,
                "-proto",
                "payments.proto",
                "-d",
                body,
                target.as_str(),
                "payments.Payments/Charge",
            ]
            .map(str::to_owned)
        };
        let out = tools::run_ok(
            &grpcurl,
            call(r#"{"order_id":"o-1","cents":5}"#),
            Duration::from_secs(30),
        )
        .await;
        assert!(out.status.success(), "{}", output_text(&out));
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reply["status"], "charged o-1", "{reply}");
        assert_eq!(reply["orderId"], "o-1", "{reply}");

        // Exit status 64 + gRPC code: InvalidArgument (3) -> 67, message intact.
        let out = tools::run_ok(
            &grpcurl,
            call(r#"{"order_id":"","cents":5}"#),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(out.status.code(), Some(67), "{}", output_text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("InvalidArgument"), "{}", output_text(&out));
        assert!(
            stderr.contains("order_id must not be empty"),
            "{}",
            output_text(&out)
        );
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_traffic_are_valid_prometheus() {
    const TEST: &str = "metrics_after_traffic_are_valid_prometheus";
    let mesh = mesh::shop(TEST).start().await;
    let client = mesh.sidecar("client");
    let reply = get_h1(
        client.outbound(),
        "http://search.shop:8080/search?q=rug",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    let mut payments = payments_client(client.outbound(), "payments.shop:9090").await;
    payments
        .charge(ChargeRequest {
            order_id: "o-9".into(),
            cents: 9,
        })
        .await
        .unwrap();
    // A request for something that is not a mesh Service is counted too, with peer "none".
    let reply = get_h1(client.outbound(), "http://nowhere.shop:8080/", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 403, "{}", reply.text());

    let client_metrics = admin_get(client.admin(), "/metrics").await;
    assert_eq!(client_metrics.status, 200);
    assert!(
        client_metrics
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        client_metrics.headers
    );
    let client_text = client_metrics.text();
    let search_text = admin_get(mesh.sidecar("search").admin(), "/metrics")
        .await
        .text();
    let payments_text = admin_get(mesh.sidecar("payments").admin(), "/metrics")
        .await
        .text();
    let cp_metrics = admin_get(mesh.cp_admin(), "/metrics").await;
    assert_eq!(cp_metrics.status, 200);
    let cp_text = cp_metrics.text();

    let requests = "palisade_proxy_requests_total";
    let outbound_search = [
        "direction=\"outbound\"",
        "status=\"200\"",
        &format!("peer=\"{}\"", shop_id("search")),
    ];
    assert_eq!(
        metric(&client_text, requests, &outbound_search),
        1.0,
        "{client_text}"
    );
    let outbound_payments = [
        "direction=\"outbound\"",
        "status=\"200\"",
        &format!("peer=\"{}\"", shop_id("payments")),
    ];
    assert_eq!(metric(&client_text, requests, &outbound_payments), 1.0);
    let refused = ["direction=\"outbound\"", "status=\"403\"", "peer=\"none\""];
    assert_eq!(
        metric(&client_text, requests, &refused),
        1.0,
        "{client_text}"
    );
    let inbound_from_client = [
        "direction=\"inbound\"",
        "status=\"200\"",
        &format!("peer=\"{}\"", shop_id("client")),
    ];
    assert_eq!(
        metric(&search_text, requests, &inbound_from_client),
        1.0,
        "{search_text}"
    );
    assert_eq!(metric(&payments_text, requests, &inbound_from_client), 1.0);
    assert!(
        metric(&cp_text, "palisade_identity_certificates_issued_total", &[]) >= 3.0,
        "{cp_text}"
    );

    match tools::find("promtool") {
        Some(promtool) => {
            for (who, text) in [
                ("client sidecar", &client_text),
                ("search sidecar", &search_text),
                ("control plane", &cp_text),
            ] {
                let out = tools::run_with_stdin(
                    &promtool,
                    &["check", "metrics"],
                    text,
                    Duration::from_secs(30),
                )
                .await;
                assert!(
                    out.status.success(),
                    "promtool check metrics failed for the {who}: {}\n--- metrics\n{text}",
                    output_text(&out)
                );
            }
        }
        None => skip(TEST, "promtool not found: /metrics not linted"),
    }
    mesh.stop().await;
}
