//! Clients the tests talk through: HTTP/1.1 (explicit-proxy absolute form or Host routing),
//! h2c with prior knowledge, a plain GET for admin endpoints, and the shop's gRPC client
//! pointed at a sidecar's outbound port. Every call is bounded by [`super::TIMEOUT`].

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_example_shop::payments_proto::payments_client::PaymentsClient;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use super::TIMEOUT;

/// A complete HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Version the answer came with.
    pub version: Version,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub type Error = Box<dyn std::error::Error + Send + Sync>;

async fn collect(resp: http::Response<hyper::body::Incoming>) -> Result<Reply, Error> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

fn request(uri: &str, headers: &[(&str, &str)]) -> Request<Empty<Bytes>> {
    let mut builder = Request::get(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Empty::new()).expect("a valid request")
}

/// One HTTP/1.1 connection to `addr`, kept alive across requests and reopened when closed.
#[derive(Debug)]
pub struct H1Client {
    addr: SocketAddr,
    send: Option<http1::SendRequest<Empty<Bytes>>>,
}

impl H1Client {
    /// A client for `addr` (connects on first use).
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, send: None }
    }

    /// Sends GET `target` (absolute form `http://host:port/path` as to an explicit proxy, or
    /// origin form `/path`) with `headers`; a `Host` header is added from an absolute target.
    pub async fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> Result<Reply, Error> {
        self.send_method(http::Method::GET, target, headers).await
    }

    /// [`Self::get`] with another method (and no body).
    pub async fn send_method(
        &mut self,
        method: http::Method,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, Error> {
        let mut req = request(target, headers);
        *req.method_mut() = method;
        if let Some(authority) = req.uri().authority().cloned()
            && !req.headers().contains_key(header::HOST)
        {
            req.headers_mut()
                .insert(header::HOST, authority.as_str().parse()?);
        }
        tokio::time::timeout(TIMEOUT, self.send(req))
            .await
            .map_err(|_| format!("HTTP/1.1 request to {} timed out", self.addr))?
    }

    async fn send(&mut self, req: Request<Empty<Bytes>>) -> Result<Reply, Error> {
        if self.send.as_ref().is_none_or(|s| s.is_closed()) {
            let tcp = TcpStream::connect(self.addr).await?;
            let (send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            self.send = Some(send);
        }
        let send = self.send.as_mut().expect("connected above");
        send.ready().await?;
        let resp = send.send_request(req).await;
        match resp {
            Ok(resp) => collect(resp).await,
            Err(e) => {
                self.send = None;
                Err(e.into())
            }
        }
    }
}

/// One GET over a new HTTP/1.1 connection.
pub async fn get_h1(
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, Error> {
    H1Client::new(addr).get(target, headers).await
}

/// GET `http://<addr><path>` (admin endpoints); panics on a transport error.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Reply {
    get_h1(addr, &format!("http://{addr}{path}"), &[])
        .await
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// Like [`admin_get`], but `None` on any transport error (the endpoint may not be up yet).
pub async fn try_admin_get(addr: SocketAddr, path: &str) -> Option<Reply> {
    get_h1(addr, &format!("http://{addr}{path}"), &[])
        .await
        .ok()
}

/// One HTTP/2 cleartext (prior knowledge) connection to `addr`.
#[derive(Debug, Clone)]
pub struct H2Client {
    send: http2::SendRequest<Empty<Bytes>>,
}

impl H2Client {
    /// Connects and performs the HTTP/2 handshake.
    pub async fn connect(addr: SocketAddr) -> Result<Self, Error> {
        let handshake = async {
            let tcp = TcpStream::connect(addr).await?;
            let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            Ok::<_, Error>(Self { send })
        };
        tokio::time::timeout(TIMEOUT, handshake)
            .await
            .map_err(|_| format!("h2c handshake with {addr} timed out"))?
    }

    /// GET `http://<authority><path>`: `:authority` names the destination.
    pub async fn get(
        &mut self,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, Error> {
        let uri: Uri = format!("http://{authority}{path}").parse()?;
        let req = request(&uri.to_string(), headers);
        let call = async {
            self.send.ready().await?;
            let resp = self.send.send_request(req).await?;
            collect(resp).await
        };
        tokio::time::timeout(TIMEOUT, call)
            .await
            .map_err(|_| "h2c request timed out")?
    }
}

/// The shop's gRPC client sending through the sidecar outbound at `outbound`, with
/// `:authority` = `origin` (e.g. `payments.shop:9090`), exactly as the frontend does.
pub async fn payments_client(outbound: SocketAddr, origin: &str) -> PaymentsClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{outbound}"))
        .expect("endpoint")
        .origin(format!("http://{origin}").parse().expect("origin"))
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .connect_lazy();
    PaymentsClient::new(channel)
}
