//! Shared test plumbing: running apps, plain HTTP clients, and a stand-in sidecar.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use palisade_example_shop::{FrontendConfig, ShopError, serve_app};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// An app serving on loopback; cancelled when dropped.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ShopError>>,
    _guard: DropGuard,
}

impl Running {
    /// Signals shutdown and returns what the app's serve function returned.
    pub async fn stop(self) -> Result<(), ShopError> {
        self.shutdown.cancel();
        self.task.await.expect("the app task does not panic")
    }
}

pub async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port")
}

/// A loopback port that refuses connections: bound but never listening, and held so no
/// other test can take the port while it is in use.
pub struct DeadPort {
    pub addr: SocketAddr,
    _socket: TcpSocket,
}

pub fn dead_port() -> DeadPort {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind a loopback port");
    DeadPort {
        addr: socket.local_addr().expect("local addr"),
        _socket: socket,
    }
}

/// Starts the named app through `serve_app`, the same entry point `palisade up` uses.
pub async fn start(name: &'static str, frontend: FrontendConfig) -> Running {
    let listener = bind().await;
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve_app(name, listener, frontend, shutdown.clone()));
    Running {
        addr,
        _guard: shutdown.clone().drop_guard(),
        shutdown,
        task,
    }
}

/// A complete HTTP answer.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Sends one request on a fresh connection, HTTP/1.1 or h2c with prior knowledge.
pub async fn send(addr: SocketAddr, version: Version, request: Request<Empty<Bytes>>) -> Reply {
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let response = if version == Version::HTTP_2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2c handshake");
        tokio::spawn(connection);
        sender.send_request(request).await.expect("h2 response")
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("http1 handshake");
        tokio::spawn(connection);
        sender.send_request(request).await.expect("http1 response")
    };
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).expect("UTF-8 body"),
    }
}

/// `GET path` on `addr` with the given protocol version.
pub async fn get(addr: SocketAddr, version: Version, path: &str) -> Reply {
    let request = if version == Version::HTTP_2 {
        Request::get(format!("http://{addr}{path}")).version(Version::HTTP_2)
    } else {
        Request::get(path).header(http::header::HOST, addr.to_string())
    };
    send(addr, version, request.body(Empty::new()).expect("request")).await
}

/// What the stand-in sidecar does for one authority.
#[derive(Clone, Copy, Debug)]
pub enum Route {
    /// Forward to this address, keeping the request's protocol.
    Forward(SocketAddr),
    /// Answer like a mesh HTTP denial: 403 and `x-palisade-denied-by`.
    DenyHttp(&'static str),
    /// Answer like a mesh gRPC denial: `grpc-status: 7` in a trailers-only response.
    DenyGrpc(&'static str),
}

/// One request as the stand-in sidecar received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub version: Version,
    /// The request target, e.g. `http://search.shop:8080/search?q=lamp`.
    pub uri: String,
    pub host: Option<String>,
}

/// A stand-in for the sidecar's outbound listener: an explicit HTTP/1.1 and h2c proxy
/// that routes on the request's URI authority (absolute-form target or `:authority`).
pub struct Proxy {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    _guard: DropGuard,
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

struct Forwarder {
    routes: HashMap<String, Route>,
    seen: Arc<Mutex<Vec<Seen>>>,
    http1: Client<HttpConnector, Incoming>,
    http2: Client<HttpConnector, Incoming>,
}

impl Proxy {
    pub async fn start(routes: &[(&str, Route)]) -> Self {
        let listener = bind().await;
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let forwarder = Arc::new(Forwarder {
            routes: routes
                .iter()
                .map(|(authority, route)| ((*authority).to_owned(), *route))
                .collect(),
            seen: Arc::default(),
            http1: Client::builder(TokioExecutor::new()).build_http(),
            http2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        });
        let seen = forwarder.seen.clone();
        let token = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => return,
                    },
                };
                let forwarder = forwarder.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let forwarder = forwarder.clone();
                        async move { Ok::<_, Infallible>(forwarder.handle(request).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            _guard: shutdown.drop_guard(),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Forwarder {
    async fn handle(&self, mut request: Request<Incoming>) -> Response<ProxyBody> {
        // Absolute form (explicit proxy) names the upstream in the URI; origin form (an
        // app that dialled the upstream itself) in Host.
        let authority = request
            .uri()
            .authority()
            .map(ToString::to_string)
            .or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|host| host.to_str().ok())
                    .map(str::to_owned)
            });
        self.seen.lock().expect("lock").push(Seen {
            version: request.version(),
            uri: request.uri().to_string(),
            host: request
                .headers()
                .get(http::header::HOST)
                .and_then(|host| host.to_str().ok())
                .map(str::to_owned),
        });
        let Some(route) = authority.and_then(|authority| self.routes.get(&authority).copied())
        else {
            return plain(StatusCode::BAD_GATEWAY, "no route for this authority");
        };
        match route {
            Route::DenyHttp(policy) => {
                let mut response = plain(StatusCode::FORBIDDEN, "RBAC: access denied");
                response
                    .headers_mut()
                    .insert("x-palisade-denied-by", HeaderValue::from_static(policy));
                response
            }
            Route::DenyGrpc(policy) => {
                let mut response = plain(StatusCode::OK, "");
                let headers = response.headers_mut();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                headers.insert("grpc-status", HeaderValue::from_static("7"));
                headers.insert("grpc-message", HeaderValue::from_static("denied by policy"));
                headers.insert("x-palisade-denied-by", HeaderValue::from_static(policy));
                response
            }
            Route::Forward(upstream) => {
                let path = request
                    .uri()
                    .path_and_query()
                    .map_or("/", |path| path.as_str());
                let uri: Uri = format!("http://{upstream}{path}")
                    .parse()
                    .expect("forward URI");
                *request.uri_mut() = uri;
                // Like a real proxy, answer a failed gRPC call without a body that the
                // client would try to decode as gRPC frames.
                let is_grpc = request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
                let client = if request.version() == Version::HTTP_2 {
                    &self.http2
                } else {
                    &self.http1
                };
                match client.request(request).await {
                    Ok(response) => response.map(BodyExt::boxed),
                    Err(_) if is_grpc => plain(StatusCode::BAD_GATEWAY, ""),
                    Err(error) => plain(
                        StatusCode::BAD_GATEWAY,
                        &format!("upstream connect error: {error}"),
                    ),
                }
            }
        }
    }
}

fn plain(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_owned()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}
