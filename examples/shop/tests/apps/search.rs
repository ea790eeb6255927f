//! `search`: JSON search over HTTP/1.1 and h2c, health, errors, `/echo`, shutdown.

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::Empty;
use palisade_example_shop::{APP_HEADER, EchoResponse, FrontendConfig, SearchResponse};

use super::support::{get, send, start};

fn parse_search(body: &str) -> SearchResponse {
    serde_json::from_str(body).expect("search answers its JSON")
}

#[tokio::test]
async fn search_answers_json_over_http1() {
    let search = start("search", FrontendConfig::default()).await;
    let reply = get(search.addr, Version::HTTP_11, "/search?q=LAMP").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.headers[APP_HEADER], "search");
    let answer = parse_search(&reply.body);
    assert_eq!(answer.service, "search");
    assert_eq!(answer.query, "LAMP");
    let names: Vec<&str> = answer.results.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Brass desk lamp",
            "Paper floor lamp",
            "Clip-on reading lamp"
        ]
    );
    assert!(answer.results.iter().all(|p| p.price_cents > 0));
}

#[tokio::test]
async fn search_answers_json_over_h2c() {
    let search = start("search", FrontendConfig::default()).await;
    let reply = get(search.addr, Version::HTTP_2, "/search?q=oak%20dining").await;
    assert_eq!(reply.status, StatusCode::OK);
    let answer = parse_search(&reply.body);
    assert_eq!(answer.query, "oak dining");
    assert_eq!(answer.results.len(), 1);
    assert_eq!(answer.results[0].sku, "CHR-001");
}

#[tokio::test]
async fn empty_or_missing_query_returns_the_catalogue() {
    let search = start("search", FrontendConfig::default()).await;
    for path in ["/search", "/search?q=", "/search?q"] {
        let answer = parse_search(&get(search.addr, Version::HTTP_11, path).await.body);
        assert_eq!(answer.results.len(), 12, "{path}");
    }
    let none = parse_search(
        &get(search.addr, Version::HTTP_11, "/search?q=zebra")
            .await
            .body,
    );
    assert!(none.results.is_empty());
}

#[tokio::test]
async fn health_unknown_paths_and_methods() {
    let search = start("search", FrontendConfig::default()).await;
    let health = get(search.addr, Version::HTTP_11, "/healthz").await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (StatusCode::OK, "ok\n")
    );

    let missing = get(search.addr, Version::HTTP_2, "/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let post = Request::post("/search")
        .header("host", search.addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("request");
    let post = send(search.addr, Version::HTTP_11, post).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers["allow"], "GET");
}

#[tokio::test]
async fn echo_describes_the_request_as_received() {
    let search = start("search", FrontendConfig::default()).await;
    let request = Request::builder()
        .method(Method::DELETE)
        .uri("/echo?x=1")
        .header("host", "search.shop:8080")
        .header("x-forwarded-client-cert", "By=spiffe://a;URI=spiffe://b")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let reply = send(search.addr, Version::HTTP_11, request).await;
    assert_eq!(reply.status, StatusCode::OK);
    let echo: EchoResponse = serde_json::from_str(&reply.body).expect("echo JSON");
    assert_eq!(echo.method, "DELETE");
    assert_eq!(echo.path, "/echo?x=1");
    assert_eq!(echo.version, "HTTP/1.1");
    assert_eq!(
        echo.headers["x-forwarded-client-cert"],
        ["By=spiffe://a;URI=spiffe://b"]
    );
    assert_eq!(echo.headers["x-multi"], ["one", "two"]);
    assert_eq!(echo.headers["host"], ["search.shop:8080"]);

    let h2 = get(search.addr, Version::HTTP_2, "/echo").await;
    let echo: EchoResponse = serde_json::from_str(&h2.body).expect("echo JSON");
    assert_eq!(echo.version, "HTTP/2.0");
    assert_eq!(echo.authority, Some(search.addr.to_string()));
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_and_returns() {
    let search = start("search", FrontendConfig::default()).await;
    let addr = search.addr;
    // An idle HTTP/1.1 keep-alive connection must not hold shutdown open.
    let io =
        hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("handshake");
    let connection = tokio::spawn(connection);
    let request = Request::get("/healthz")
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);

    search.stop().await.expect("search stops cleanly");
    connection
        .await
        .expect("client connection task")
        .expect("server closed the idle connection gracefully");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}
