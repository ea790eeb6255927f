//! The `frontend` app: renders the shop page from search (HTTP/1.1) and payments (gRPC),
//! both reached through the local sidecar's outbound port used as an explicit proxy.

use std::error::Error as StdError;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::http_server::{self, Body};
use crate::payments_proto::ChargeRequest;
use crate::payments_proto::payments_client::PaymentsClient;
use crate::search::SearchResponse;
use crate::{APP_HEADER, ShopError, query};

/// The sidecar's outbound port on the same host (CONTRACT: 15001).
pub const DEFAULT_OUTBOUND_PROXY: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15001));
/// Where the frontend asks the mesh to send search requests.
pub const DEFAULT_SEARCH_AUTHORITY: &str = "search.shop:8080";
/// Where the frontend asks the mesh to send payment calls.
pub const DEFAULT_PAYMENTS_AUTHORITY: &str = "payments.shop:9090";

/// The query the page shows when the URL has no `q`.
const DEFAULT_QUERY: &str = "lamp";
/// The demo order every page view charges.
const ORDER_ID: &str = "order-123";
/// The demo order's amount.
const ORDER_CENTS: i64 = 4_200;
/// Upper bound on each upstream call, so a stuck upstream yields an error page rather
/// than a hung browser.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest search answer the frontend reads; the catalogue's full answer is ~1 KiB.
const SEARCH_BODY_LIMIT: usize = 256 * 1024;
/// How much of an upstream error body the page quotes.
const ERROR_BODY_SNIPPET: usize = 200;
/// Header the mesh adds to a denied HTTP request (and may add to a gRPC denial).
const DENIED_BY_HEADER: &str = "x-palisade-denied-by";

/// Where the frontend finds its sidecar and which services it calls through it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendConfig {
    /// The local sidecar's outbound listener (plaintext HTTP/1.1 and h2c).
    pub outbound_proxy: SocketAddr,
    /// `host:port` of search, sent as the absolute-form target and `Host`.
    pub search_authority: String,
    /// `host:port` of payments, sent as the gRPC `:authority`.
    pub payments_authority: String,
    /// With transparent capture: where the two names resolve to (as a cluster's DNS would
    /// answer). The frontend then dials these addresses as any app would, knowing nothing
    /// of the mesh, and the capture rules hand the connections to the sidecar;
    /// `outbound_proxy` is not used.
    pub transparent: Option<ResolvedUpstreams>,
}

/// The addresses the frontend's upstream names resolve to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedUpstreams {
    /// The address of `search_authority`.
    pub search: SocketAddr,
    /// The address of `payments_authority`.
    pub payments: SocketAddr,
}

// === impl FrontendConfig ===

impl FrontendConfig {
    /// The default authorities with the given outbound proxy.
    pub fn new(outbound_proxy: SocketAddr) -> Self {
        Self {
            outbound_proxy,
            search_authority: DEFAULT_SEARCH_AUTHORITY.to_owned(),
            payments_authority: DEFAULT_PAYMENTS_AUTHORITY.to_owned(),
            transparent: None,
        }
    }

    /// The default authorities, dialled at their resolved addresses (transparent capture).
    pub fn transparent(upstreams: ResolvedUpstreams) -> Self {
        Self {
            transparent: Some(upstreams),
            ..Self::default()
        }
    }

    /// Where the search client connects, and whether that is a proxy.
    fn search_dial(&self) -> OutboundConnector {
        match self.transparent {
            Some(t) => OutboundConnector {
                addr: t.search,
                is_proxy: false,
            },
            None => OutboundConnector {
                addr: self.outbound_proxy,
                is_proxy: true,
            },
        }
    }

    /// Where the payments channel connects.
    fn payments_dial(&self) -> SocketAddr {
        self.transparent.map_or(self.outbound_proxy, |t| t.payments)
    }
}

impl Default for FrontendConfig {
    fn default() -> Self {
        Self::new(DEFAULT_OUTBOUND_PROXY)
    }
}

/// The `frontend` app with its (lazily connecting) upstream clients; cheap to clone.
#[derive(Clone)]
pub struct FrontendApp {
    inner: Arc<Inner>,
}

struct Inner {
    config: FrontendConfig,
    search_authority: Authority,
    search: Client<OutboundConnector, Empty<Bytes>>,
    payments: PaymentsClient<Channel>,
}

// === impl FrontendApp ===

impl FrontendApp {
    /// Validates `config` and prepares the clients; connects on first use, so the
    /// sidecar need not be up yet. Must be called inside a Tokio runtime.
    pub fn new(config: FrontendConfig) -> Result<Self, ShopError> {
        let search_authority = parse_authority("search_authority", &config.search_authority)?;
        let payments_authority = parse_authority("payments_authority", &config.payments_authority)?;

        let search = Client::builder(TokioExecutor::new()).build(config.search_dial());

        let endpoint = format!("http://{}", config.payments_dial());
        let origin = format!("http://{payments_authority}")
            .parse::<Uri>()
            .map_err(|source| ShopError::InvalidAuthority {
                field: "payments_authority",
                value: config.payments_authority.clone(),
                source,
            })?;
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|source| ShopError::PaymentsEndpoint { endpoint, source })?
            // The sidecar routes on `:authority`, so it must name payments, not the proxy.
            .origin(origin)
            .connect_timeout(UPSTREAM_TIMEOUT)
            .timeout(UPSTREAM_TIMEOUT)
            .connect_lazy();

        Ok(Self {
            inner: Arc::new(Inner {
                config,
                search_authority,
                search,
                payments: PaymentsClient::new(channel),
            }),
        })
    }

    /// The configuration the app was built from.
    pub fn config(&self) -> &FrontendConfig {
        &self.inner.config
    }

    /// Answers one request.
    pub async fn handle(self, request: Request<Incoming>) -> Response<Body> {
        let is_get = request.method() == Method::GET;
        match request.uri().path() {
            "/" if is_get => {
                let query = query::param(request.uri().query(), "q")
                    .unwrap_or_else(|| DEFAULT_QUERY.to_owned());
                self.page(&query).await
            }
            "/healthz" if is_get => http_server::text(StatusCode::OK, "ok\n"),
            "/" | "/healthz" => http_server::method_not_allowed("GET"),
            path => http_server::not_found(path),
        }
    }

    /// Calls both upstreams concurrently and renders the page; `502` if either failed.
    async fn page(&self, query: &str) -> Response<Body> {
        let (search, payment) = tokio::join!(self.call_search(query), self.call_payments());
        if let Err(error) = &search {
            tracing::warn!(%error, "search call failed");
        }
        if let Err(error) = &payment {
            tracing::warn!(%error, "payments call failed");
        }
        let status = if search.is_ok() && payment.is_ok() {
            StatusCode::OK
        } else {
            StatusCode::BAD_GATEWAY
        };
        let html = render_page(&self.inner.config, query, &search, &payment);
        http_server::respond(status, "text/html; charset=utf-8", html)
    }

    async fn call_search(&self, query: &str) -> Result<SearchAnswer, SearchError> {
        let authority = &self.inner.search_authority;
        // Absolute-form target plus Host: exactly what `curl -x <proxy> <url>` sends.
        let request = Request::get(format!(
            "http://{authority}/search?q={}",
            query::encode(query)
        ))
        .header(header::HOST, authority.as_str())
        .header(header::ACCEPT, "application/json")
        .body(Empty::new())?;

        let call =
            async {
                let response = self.inner.search.request(request).await.map_err(|cause| {
                    SearchError::Send {
                        via: self.inner.config.search_dial().addr,
                        cause,
                    }
                })?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, SEARCH_BODY_LIMIT)
                    .collect()
                    .await
                    .map_err(SearchError::Body)?
                    .to_bytes();
                Ok::<_, SearchError>((parts, body))
            };
        let (parts, body) = tokio::time::timeout(UPSTREAM_TIMEOUT, call)
            .await
            .map_err(|_| SearchError::Timeout)??;

        if !parts.status.is_success() {
            return Err(SearchError::Status {
                status: parts.status,
                denied_by: header_str(&parts.headers, DENIED_BY_HEADER),
                body: snippet(&body),
            });
        }
        let response: SearchResponse = serde_json::from_slice(&body)?;
        Ok(SearchAnswer {
            response,
            app: header_str(&parts.headers, APP_HEADER),
        })
    }

    async fn call_payments(&self) -> Result<PaymentAnswer, PaymentsError> {
        let mut client = self.inner.payments.clone();
        let reply = client
            .charge(ChargeRequest {
                order_id: ORDER_ID.to_owned(),
                cents: ORDER_CENTS,
            })
            .await
            .map_err(PaymentsError)?;
        let app = reply
            .metadata()
            .get(APP_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        Ok(PaymentAnswer {
            status: reply.into_inner().status,
            app,
        })
    }
}

impl fmt::Debug for FrontendApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontendApp")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Serves the `frontend` app on `listener` until `shutdown` is cancelled.
pub async fn serve_frontend(
    listener: TcpListener,
    config: FrontendConfig,
    shutdown: CancellationToken,
) -> Result<(), ShopError> {
    tracing::info!(
        outbound_proxy = %config.outbound_proxy,
        search = %config.search_authority,
        payments = %config.payments_authority,
        "frontend configuration"
    );
    let app = FrontendApp::new(config)?;
    http_server::serve(
        "frontend",
        listener,
        move |request| app.clone().handle(request),
        shutdown,
    )
    .await;
    Ok(())
}

/// What search answered, and which app the answer names as its origin.
struct SearchAnswer {
    response: SearchResponse,
    app: Option<String>,
}

/// What payments answered, and which app the answer names as its origin.
struct PaymentAnswer {
    status: String,
    app: Option<String>,
}

/// Why the search call failed, worded for the page.
#[derive(Debug, thiserror::Error)]
enum SearchError {
    #[error("cannot build the request: {0}")]
    Build(#[from] http::Error),
    #[error("no answer within {}s", UPSTREAM_TIMEOUT.as_secs())]
    Timeout,
    #[error("request via {via} failed: {}", chain(cause))]
    Send {
        via: SocketAddr,
        cause: hyper_util::client::legacy::Error,
    },
    #[error("upstream answered HTTP {status}{}: {body}", denied_suffix(denied_by.as_deref()))]
    Status {
        status: StatusCode,
        denied_by: Option<String>,
        body: String,
    },
    #[error("reading the response body failed: {0}")]
    Body(Box<dyn StdError + Send + Sync>),
    #[error("the response is not search JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Why the payments call failed: the gRPC status, worded for the page.
#[derive(Debug)]
struct PaymentsError(tonic::Status);

impl fmt::Display for PaymentsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = &self.0;
        write!(
            f,
            "grpc-status {} ({:?}): {}",
            status.code() as i32,
            status.code(),
            status.message()
        )?;
        let denied_by = header_str(status.metadata().as_ref(), DENIED_BY_HEADER);
        f.write_str(&denied_suffix(denied_by.as_deref()))?;
        // Transport failures carry the real cause (e.g. connection refused) as a source.
        if let Some(source) = StdError::source(status) {
            write!(f, " ({})", chain(source))?;
        }
        Ok(())
    }
}

fn render_page(
    config: &FrontendConfig,
    query: &str,
    search: &Result<SearchAnswer, SearchError>,
    payment: &Result<PaymentAnswer, PaymentsError>,
) -> String {
    let mut html = String::new();
    let q = escape(query);
    // `write!` into a String cannot fail; the results are ignored for that reason.
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
         <title>Palisade Shop</title></head>\n<body>\n<h1>Palisade Shop</h1>\n\
         <form action=\"/\" method=\"get\"><input name=\"q\" value=\"{q}\">\
         <button>Search</button></form>\n"
    );

    let _ = writeln!(html, "<section id=\"search\">\n<h2>Search: {q}</h2>");
    match search {
        Ok(answer) => {
            let _ = writeln!(
                html,
                "<p class=\"upstream\">answered by {} via {}</p>",
                escape(answer.app.as_deref().unwrap_or(&answer.response.service)),
                escape(&config.search_authority)
            );
            if answer.response.results.is_empty() {
                html.push_str("<p>no products match</p>\n");
            } else {
                html.push_str("<ul>\n");
                for product in &answer.response.results {
                    let _ = writeln!(
                        html,
                        "<li>{} &mdash; ${}.{:02} <small>{}</small></li>",
                        escape(&product.name),
                        product.price_cents / 100,
                        product.price_cents % 100,
                        escape(&product.sku)
                    );
                }
                html.push_str("</ul>\n");
            }
        }
        Err(error) => {
            let _ = writeln!(
                html,
                "<p class=\"error\">search call to {} failed: {}</p>",
                escape(&config.search_authority),
                escape(&error.to_string())
            );
        }
    }
    html.push_str("</section>\n");

    html.push_str("<section id=\"payments\">\n<h2>Payment</h2>\n");
    match payment {
        Ok(answer) => {
            let _ = writeln!(
                html,
                "<p>payment: {}</p>\n<p class=\"upstream\">answered by {} via {}</p>",
                escape(&answer.status),
                escape(answer.app.as_deref().unwrap_or("an unnamed app")),
                escape(&config.payments_authority)
            );
        }
        Err(error) => {
            let _ = writeln!(
                html,
                "<p class=\"error\">payments call to {} failed: {}</p>",
                escape(&config.payments_authority),
                escape(&error.to_string())
            );
        }
    }
    html.push_str("</section>\n</body>\n</html>\n");
    html
}

/// Escapes text for HTML element content and quoted attributes; the query and upstream
/// answers are untrusted.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn parse_authority(field: &'static str, value: &str) -> Result<Authority, ShopError> {
    value
        .parse::<Authority>()
        .map_err(|source| ShopError::InvalidAuthority {
            field,
            value: value.to_owned(),
            source,
        })
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

fn denied_suffix(denied_by: Option<&str>) -> String {
    denied_by.map_or_else(String::new, |policy| {
        format!(" ({DENIED_BY_HEADER}: {policy})")
    })
}

/// The error and its sources joined by `: `; hyper's top-level messages alone
/// ("client error (Connect)") do not say what went wrong. Some layers repeat their
/// inner error's text, so a cause equal to the previous one is skipped.
fn chain(error: &dyn StdError) -> String {
    let mut out = error.to_string();
    let mut last = out.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if text != last {
            let _ = write!(out, ": {text}");
            last = text;
        }
        source = cause.source();
    }
    out
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(ERROR_BODY_SNIPPET) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Dials one address for every search request: the sidecar's outbound port used as a
/// proxy (the sidecar, not the frontend, decides where a request goes), or, with transparent
/// capture, search's resolved address like any app.
#[derive(Clone, Copy, Debug)]
struct OutboundConnector {
    addr: SocketAddr,
    /// Whether `addr` is a proxy (requests then carry absolute-form targets).
    is_proxy: bool,
}

type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<ProxiedConn>> + Send>>;

impl tower::Service<Uri> for OutboundConnector {
    type Response = ProxiedConn;
    type Error = io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _upstream: Uri) -> Self::Future {
        let OutboundConnector { addr, is_proxy } = *self;
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(ProxiedConn(TokioIo::new(stream), is_proxy))
        })
    }
}

/// A connection that tells hyper-util whether it leads to a proxy, which makes the client
/// send absolute-form request targets instead of origin-form.
struct ProxiedConn(TokioIo<TcpStream>, bool);

impl Connection for ProxiedConn {
    fn connected(&self) -> Connected {
        self.0.connected().proxy(self.1)
    }
}

impl Read for ProxiedConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl Write for ProxiedConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
}
