//! Outbound (15001): plaintext HTTP/1.1 or h2c from the app, as an explicit proxy
//! (absolute-form URI) or naming a mesh Service in Host / :authority. Each request is routed
//! to an endpoint of that Service and sent over mTLS to its sidecar, which must present the
//! endpoint's SPIFFE ID.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::Watcher;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::http::{Failure, ProxyBody, is_grpc, streamed, strip_hop_by_hop};
use crate::metrics::{Direction, Metrics};
use crate::model::{MeshView, OutboundPolicy};
use crate::pool::{PeerError, PeerKey, PeerPool};

/// Shared state of the outbound listener.
#[derive(Debug)]
pub struct Outbound {
    /// Current mesh view.
    pub view: watch::Receiver<Option<Arc<MeshView>>>,
    /// Connections to peer sidecars.
    pub pool: PeerPool,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Client for destinations outside the mesh when the outbound policy is ALLOW_ANY.
    pub passthrough: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        ProxyBody,
    >,
}

impl Outbound {
    /// Serves one accepted app connection.
    pub async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        _peer: SocketAddr,
        watcher: Watcher,
    ) {
        self.metrics.connection(Direction::Outbound);
        let service = hyper::service::service_fn(move |req| {
            let this = self.clone();
            async move { Ok::<_, Infallible>(this.handle(req).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http2()
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_concurrent_streams(1024);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        if let Err(e) = watcher.watch(conn.into_owned()).await {
            tracing::debug!(error = %e, "outbound connection ended with an error");
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let start = Instant::now();
        let grpc = is_grpc(req.headers());
        let (response, peer) = match self.forward(req).await {
            Ok(ok) => ok,
            Err(failure) => {
                tracing::info!(direction = "outbound", error = %failure, "request failed");
                (failure.into_response(grpc), None)
            }
        };
        self.metrics.request(
            Direction::Outbound,
            response.status().as_u16(),
            peer.as_deref().unwrap_or("none"),
            start.elapsed().as_secs_f64(),
        );
        response
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
    ) -> Result<(Response<ProxyBody>, Option<String>), Failure> {
        let view = self.view.borrow().clone().ok_or(Failure::NotReady(
            "no configuration from the control plane yet",
        ))?;
        let authority = destination(&req)?;
        let port = authority.port_u16().unwrap_or(80);
        let Some(route) = view.services.resolve(authority.host(), port) else {
            return match view.settings.outbound_policy {
                OutboundPolicy::RegistryOnly => Err(Failure::UnknownDestination {
                    authority: authority.to_string(),
                }),
                OutboundPolicy::AllowAny => self.passthrough(req, authority).await,
            };
        };
        let endpoint = route.pick();
        let key = PeerKey {
            addr: endpoint.proxy_addr,
            identity: endpoint.identity.clone(),
            target_port: route.target_port,
        };
        let request = to_mesh_request(req, &authority);
        let response = self.pool.send(&key, request).await.map_err(|e| {
            if matches!(e, PeerError::Handshake(_)) {
                // A peer with a bad or wrong certificate: counted like inbound refusals.
                self.metrics.handshake_failure(Direction::Outbound);
            }
            Failure::PeerUnavailable {
                peer: format!("{} ({})", endpoint.proxy_addr, endpoint.identity),
                reason: e.to_string(),
            }
        })?;
        Ok((from_upstream(response), Some(endpoint.identity.to_string())))
    }

    async fn passthrough(
        &self,
        req: Request<Incoming>,
        authority: Authority,
    ) -> Result<(Response<ProxyBody>, Option<String>), Failure> {
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.uri = absolute_uri(&parts.uri, &authority)?;
        parts.version = Version::HTTP_11;
        let response = self
            .passthrough
            .request(Request::from_parts(parts, streamed(body)))
            .await
            .map_err(|e| Failure::PeerUnavailable {
                peer: authority.to_string(),
                reason: e.to_string(),
            })?;
        Ok((from_upstream(response), None))
    }
}

/// Where the app wants to go: the absolute URI's authority, else `:authority`/`Host`.
fn destination(req: &Request<Incoming>) -> Result<Authority, Failure> {
    if let Some(authority) = req.uri().authority() {
        return Ok(authority.clone());
    }
    let host = req
        .headers()
        .get(header::HOST)
        .ok_or(Failure::NoDestination)?;
    let text = host
        .to_str()
        .map_err(|_| Failure::BadAuthority(format!("{host:?}")))?;
    text.parse::<Authority>()
        .map_err(|_| Failure::BadAuthority(text.to_owned()))
}

fn absolute_uri(uri: &Uri, authority: &Authority) -> Result<Uri, Failure> {
    let mut parts = uri.clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).map_err(|_| Failure::BadAuthority(authority.to_string()))
}

/// Rewrites an app request for the HTTP/2 hop between sidecars.
fn to_mesh_request(req: Request<Incoming>, authority: &Authority) -> Request<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // HTTP/2 carries the authority as :authority; a Host header would duplicate it.
    parts.headers.remove(header::HOST);
    let mut uri = parts.uri.clone().into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority.clone());
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(u) = Uri::from_parts(uri) {
        parts.uri = u;
    }
    parts.version = Version::HTTP_2;
    Request::from_parts(parts, streamed(body))
}

/// Cleans a response from upstream for the app.
fn from_upstream(response: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The app's connection decides the version it is written with.
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, streamed(body))
}
