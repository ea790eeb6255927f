//! The `search` app: product search over a built-in catalogue, plus `/echo`, which shows
//! tests exactly what the sidecar forwarded.

use std::collections::BTreeMap;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ShopError;
use crate::http_server::{self, Body};
use crate::query;

/// `/echo` reads at most this much of a request body; it reports sizes, not content.
const ECHO_BODY_LIMIT: usize = 1024 * 1024;

/// The catalogue: (sku, name, price in cents).
const CATALOGUE: &[(&str, &str, i64)] = &[
    ("LMP-001", "Brass desk lamp", 4_900),
    ("LMP-002", "Paper floor lamp", 7_500),
    ("LMP-003", "Clip-on reading lamp", 1_900),
    ("CHR-001", "Oak dining chair", 12_900),
    ("CHR-002", "Folding camp chair", 3_400),
    ("TBL-001", "Walnut coffee table", 24_900),
    ("TBL-002", "Standing desk", 39_900),
    ("MUG-001", "Stoneware mug", 1_200),
    ("KTL-001", "Stovetop kettle", 3_900),
    ("RUG-001", "Wool area rug", 18_900),
    ("PLT-001", "Ceramic plant pot", 2_200),
    ("CLK-001", "Wall clock", 2_900),
];

/// One catalogue entry as search returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Stock-keeping unit, unique in the catalogue.
    pub sku: String,
    /// Display name; what the query matches against.
    pub name: String,
    /// Price in cents.
    pub price_cents: i64,
}

/// The JSON body of `GET /search`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchResponse {
    /// Always `search`: lets a caller see which app answered through the mesh.
    pub service: String,
    /// The decoded query the results match.
    pub query: String,
    /// Matching products in catalogue order.
    pub results: Vec<Product>,
}

/// The JSON body of `/echo`: the request as the app received it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoResponse {
    /// Always `search`.
    pub service: String,
    /// Request method.
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    /// Protocol version, e.g. `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// URI authority (HTTP/2 `:authority` or an absolute-form target), if any.
    pub authority: Option<String>,
    /// Every header, by lower-case name, values in received order.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Size of the request body in bytes.
    pub body_bytes: usize,
}

/// The `search` app. It holds no state: the catalogue is built in.
#[derive(Clone, Copy, Debug, Default)]
pub struct SearchApp;

// === impl SearchApp ===

impl SearchApp {
    /// Products whose name contains `query`, ignoring case; an empty query matches all.
    pub fn search(&self, query: &str) -> Vec<Product> {
        let needle = query.to_lowercase();
        CATALOGUE
            .iter()
            .filter(|(_, name, _)| name.to_lowercase().contains(&needle))
            .map(|&(sku, name, price_cents)| Product {
                sku: sku.to_owned(),
                name: name.to_owned(),
                price_cents,
            })
            .collect()
    }

    /// Answers one request.
    pub async fn handle(self, request: Request<Incoming>) -> Response<Body> {
        match request.uri().path() {
            "/echo" => echo(request).await,
            "/search" if request.method() == Method::GET => {
                let query = query::param(request.uri().query(), "q").unwrap_or_default();
                let results = self.search(&query);
                let body = SearchResponse {
                    service: "search".to_owned(),
                    query,
                    results,
                };
                http_server::json(StatusCode::OK, &body)
            }
            "/healthz" if request.method() == Method::GET => {
                http_server::text(StatusCode::OK, "ok\n")
            }
            "/search" | "/healthz" => http_server::method_not_allowed("GET"),
            path => http_server::not_found(path),
        }
    }
}

/// Serves the `search` app on `listener` until `shutdown` is cancelled.
pub async fn serve_search(
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ShopError> {
    http_server::serve(
        "search",
        listener,
        move |request| SearchApp.handle(request),
        shutdown,
    )
    .await;
    Ok(())
}

async fn echo(request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body_bytes = match Limited::new(body, ECHO_BODY_LIMIT).collect().await {
        Ok(collected) => collected.to_bytes().len(),
        Err(error) => {
            return http_server::text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the request body: {error}\n"),
            );
        }
    };
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let echo = EchoResponse {
        service: "search".to_owned(),
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), ToString::to_string),
        version: format!("{:?}", parts.version),
        authority: parts.uri.authority().map(ToString::to_string),
        headers,
        body_bytes,
    };
    http_server::json(StatusCode::OK, &echo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_matches_substrings_ignoring_case() {
        let names: Vec<String> = SearchApp
            .search("LAMP")
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(
            names,
            [
                "Brass desk lamp",
                "Paper floor lamp",
                "Clip-on reading lamp"
            ]
        );
        assert!(SearchApp.search("no such thing").is_empty());
    }

    #[test]
    fn empty_query_returns_the_whole_catalogue() {
        assert_eq!(SearchApp.search("").len(), CATALOGUE.len());
        assert_eq!(CATALOGUE.len(), 12);
    }
}
