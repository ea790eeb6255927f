//! `frontend`: the page through a stand-in sidecar, upstream failures and mesh denials.

use std::net::SocketAddr;

use http::{StatusCode, Version};
use palisade_example_shop::{FrontendApp, FrontendConfig, ShopError, serve_app};
use tokio_util::sync::CancellationToken;

use super::support::{Proxy, Route, Running, bind, dead_port, get, start};

const SEARCH: &str = "search.shop:8080";
const PAYMENTS: &str = "payments.shop:9090";

/// Starts the frontend with its outbound proxy set to `proxy`.
async fn frontend(proxy: SocketAddr) -> Running {
    start("frontend", FrontendConfig::new(proxy)).await
}

#[tokio::test]
async fn page_shows_search_results_and_payment_through_the_sidecar() {
    let search = start("search", FrontendConfig::default()).await;
    let payments = start("payments", FrontendConfig::default()).await;
    let proxy = Proxy::start(&[
        (SEARCH, Route::Forward(search.addr)),
        (PAYMENTS, Route::Forward(payments.addr)),
    ])
    .await;
    let frontend = frontend(proxy.addr).await;

    let page = get(frontend.addr, Version::HTTP_11, "/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert!(
        page.body.contains("<h1>Palisade Shop</h1>"),
        "{}",
        page.body
    );
    assert!(page.body.contains("Brass desk lamp"), "{}", page.body);
    assert!(
        page.body.contains("payment: charged order-123"),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains("answered by search via search.shop:8080")
    );
    assert!(
        page.body
            .contains("answered by payments via payments.shop:9090")
    );

    // The sidecar saw an absolute-form HTTP/1.1 request for search and an h2c call
    // whose `:authority` names payments, never the sidecar's own address.
    let seen = proxy.seen();
    let search_request = seen
        .iter()
        .find(|s| s.uri.starts_with("http://search.shop:8080/"))
        .expect("the proxy saw the search request");
    assert_eq!(search_request.version, Version::HTTP_11);
    assert_eq!(search_request.uri, "http://search.shop:8080/search?q=lamp");
    assert_eq!(search_request.host.as_deref(), Some(SEARCH));
    let charge = seen
        .iter()
        .find(|s| s.uri.starts_with("http://payments.shop:9090/"))
        .expect("the proxy saw the payments call");
    assert_eq!(charge.version, Version::HTTP_2);
    assert_eq!(
        charge.uri,
        "http://payments.shop:9090/payments.Payments/Charge"
    );
}

#[tokio::test]
async fn page_takes_the_query_and_escapes_it() {
    let search = start("search", FrontendConfig::default()).await;
    let payments = start("payments", FrontendConfig::default()).await;
    let proxy = Proxy::start(&[
        (SEARCH, Route::Forward(search.addr)),
        (PAYMENTS, Route::Forward(payments.addr)),
    ])
    .await;
    let frontend = frontend(proxy.addr).await;

    let page = get(frontend.addr, Version::HTTP_2, "/?q=kettle").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Stovetop kettle"));
    assert!(!page.body.contains("Brass desk lamp"));

    let page = get(frontend.addr, Version::HTTP_11, "/?q=%3Cscript%3E").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("&lt;script&gt;"));
    assert!(!page.body.contains("<script>"));
    assert!(page.body.contains("no products match"));
    assert!(
        proxy
            .seen()
            .iter()
            .any(|s| s.uri == "http://search.shop:8080/search?q=%3Cscript%3E"),
        "the query is re-encoded for the upstream"
    );
}

#[tokio::test]
async fn payments_down_gives_502_naming_the_failed_call() {
    let search = start("search", FrontendConfig::default()).await;
    let payments_down = dead_port();
    let proxy = Proxy::start(&[
        (SEARCH, Route::Forward(search.addr)),
        (PAYMENTS, Route::Forward(payments_down.addr)),
    ])
    .await;
    let frontend = frontend(proxy.addr).await;

    let page = get(frontend.addr, Version::HTTP_11, "/").await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY, "{}", page.body);
    assert!(
        page.body
            .contains("payments call to payments.shop:9090 failed"),
        "{}",
        page.body
    );
    // The sidecar's HTTP 502 reaches the page through tonic's status mapping.
    assert!(
        page.body.contains(
            "grpc-status 14 (Unavailable): grpc-status header missing, \
             mapped from HTTP status code 502"
        ),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("Brass desk lamp"),
        "search still renders"
    );
    assert!(!page.body.contains("search call"), "{}", page.body);
}

#[tokio::test]
async fn mesh_denials_are_shown_with_status_and_policy() {
    let proxy = Proxy::start(&[
        (SEARCH, Route::DenyHttp("shop/search-allowlist")),
        (PAYMENTS, Route::DenyGrpc("default-deny")),
    ])
    .await;
    let frontend = frontend(proxy.addr).await;

    let page = get(frontend.addr, Version::HTTP_11, "/").await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY, "{}", page.body);
    assert!(
        page.body.contains(
            "search call to search.shop:8080 failed: upstream answered HTTP 403 Forbidden \
             (x-palisade-denied-by: shop/search-allowlist): RBAC: access denied"
        ),
        "{}",
        page.body
    );
    assert!(
        page.body.contains(
            "payments call to payments.shop:9090 failed: grpc-status 7 (PermissionDenied): \
             denied by policy (x-palisade-denied-by: default-deny)"
        ),
        "{}",
        page.body
    );
}

#[tokio::test]
async fn unreachable_sidecar_fails_both_calls() {
    let sidecar_down = dead_port();
    let frontend = frontend(sidecar_down.addr).await;
    let page = get(frontend.addr, Version::HTTP_11, "/").await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY, "{}", page.body);
    assert!(
        page.body.contains("search call to search.shop:8080 failed"),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains("payments call to payments.shop:9090 failed"),
        "{}",
        page.body
    );
    assert!(page.body.contains("Connection refused"), "{}", page.body);
}

#[tokio::test]
async fn health_and_unknown_routes() {
    let sidecar_down = dead_port();
    let frontend = frontend(sidecar_down.addr).await;
    let health = get(frontend.addr, Version::HTTP_2, "/healthz").await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (StatusCode::OK, "ok\n")
    );
    let missing = get(frontend.addr, Version::HTTP_11, "/cart").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn serve_app_rejects_an_unknown_name() {
    let error = serve_app(
        "checkout",
        bind().await,
        FrontendConfig::default(),
        CancellationToken::new(),
    )
    .await
    .expect_err("unknown app");
    assert!(matches!(&error, ShopError::UnknownApp(name) if name == "checkout"));
    assert!(error.to_string().contains("`checkout`"), "{error}");
}

#[tokio::test]
async fn frontend_rejects_an_invalid_authority() {
    let config = FrontendConfig {
        search_authority: "search.shop/oops".to_owned(),
        ..FrontendConfig::default()
    };
    let error = FrontendApp::new(config).expect_err("invalid authority");
    assert!(
        matches!(
            &error,
            ShopError::InvalidAuthority {
                field: "search_authority",
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn transparent_mode_dials_the_resolved_addresses_with_origin_form_requests() {
    use palisade_example_shop::ResolvedUpstreams;
    let search = start("search", FrontendConfig::default()).await;
    let payments = start("payments", FrontendConfig::default()).await;
    // A stand-in for "the address the name resolves to, captured by the sidecar".
    let captured = Proxy::start(&[
        (SEARCH, Route::Forward(search.addr)),
        (PAYMENTS, Route::Forward(payments.addr)),
    ])
    .await;
    let frontend = start(
        "frontend",
        FrontendConfig::transparent(ResolvedUpstreams {
            search: captured.addr,
            payments: captured.addr,
        }),
    )
    .await;
    let page = get(frontend.addr, Version::HTTP_11, "/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Brass desk lamp"), "{}", page.body);
    assert!(
        page.body.contains("payment: charged order-123"),
        "{}",
        page.body
    );
    let seen = captured.seen();
    // An app that knows nothing of proxies: origin-form target, the name in Host.
    let search_request = seen
        .iter()
        .find(|s| s.host.as_deref() == Some(SEARCH))
        .expect("the search request arrived");
    assert_eq!(search_request.uri, "/search?q=lamp");
    assert!(
        seen.iter()
            .any(|s| s.uri == "http://payments.shop:9090/payments.Payments/Charge"),
        "{seen:?}"
    );
}
