//! Outbound (15001): plaintext HTTP/1.1 or h2c from the app, as an explicit proxy
//! (absolute-form URI) or naming a mesh Service in Host / :authority. Each request is routed
//! to an endpoint of that Service and sent over mTLS to its sidecar, which must present the
//! endpoint's SPIFFE ID.
//!
//! `CONNECT host:port` opens an opaque TCP tunnel: to a mesh Service port declared TCP over
//! a new mTLS connection with ALPN `palisade-tcp` (the peer authorizes it at connection
//! level), or directly to a destination outside the mesh. A Service port declared HTTP,
//! HTTP/2 or gRPC is refused (403, `x-palisade-denied-by: tunnel-to-http-port`, counted as a
//! denial): its requests must be authorized one by one, and the peer refuses such a tunnel
//! too.
//!
//! Destinations outside the mesh, tunnelled or plain HTTP, pass only with the outbound
//! policy ALLOW_ANY or an EgressPolicy allowing their host and port; otherwise they are
//! refused (403, `outbound-registry-only`), counted and logged like an inbound denial.
//!
//! Connections the capture rules redirected here (`palisade init`) are served by
//! [`captured`]: their original destination, not what the app wrote, decides where they go.

mod captured;
mod netpol;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::authority::{self, AuthorityError};
use crate::detect::Prefixed;
use crate::enforce::{self, Subject};
use crate::h2;
use crate::http::{
    Failure, OUTBOUND_REGISTRY_ONLY, ProxyBody, TUNNEL_TO_HTTP_PORT, full, is_grpc, streamed,
    strip_hop_by_hop,
};
use crate::limits::{self, Activity, ConnCounter, Lifetime, Limits};
use crate::metrics::{Direction, Metrics, PeerLabel};
use crate::model::{Endpoint, MeshView, OutboundPolicy, Protocol, Route};
use crate::orig_dst::{self, Arrival};
use crate::pool::{Hop, PeerError, PeerPool};
use futures_util::future::Either;

/// How long connecting to a destination outside the mesh may take.
const EXTERNAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared state of the outbound listener.
#[derive(Debug)]
pub struct Outbound {
    /// Current mesh view.
    pub view: watch::Receiver<Option<Arc<MeshView>>>,
    /// Connections to peer sidecars.
    pub pool: PeerPool,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Client for destinations outside the mesh (ALLOW_ANY, or allowed by an EgressPolicy).
    pub passthrough: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        ProxyBody,
    >,
    /// Whether every ALLOW decision (egress allowances) is logged too.
    pub log_decisions: bool,
    /// How long a captured connection may take to show its protocol before it is treated
    /// as opaque TCP.
    pub detect_timeout: Duration,
    /// Open app connections on the listener.
    pub(crate) conns: Arc<ConnCounter<()>>,
    /// Connection, stream and timeout bounds.
    pub limits: Limits,
    /// How long a connection the proxy closes gracefully may take to finish.
    pub grace: Duration,
    /// Cancelled at shutdown: every connection closes gracefully.
    pub shutdown: CancellationToken,
    /// The `peer` label of a request that reached no mesh peer (`none`).
    pub no_peer: PeerLabel,
}

/// Where a request on a captured connection goes: decided by the connection's original
/// destination, never by what the request names.
#[derive(Debug, Clone)]
enum CapturedTarget {
    /// A mesh Service port (cluster IP) or one endpoint's port (workload address).
    Mesh(Arc<Route>),
    /// Outside the mesh, on this port: allowed by the name the request carries.
    External(SocketAddr),
}

impl Outbound {
    /// Serves one accepted app connection.
    pub async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        watcher: Watcher,
    ) {
        self.metrics.connection(Direction::Outbound);
        let Ok(_slot) = self.conns.admit() else {
            self.metrics
                .connection_refused(Direction::Outbound, "listener-limit");
            tracing::info!(%peer, limit = self.limits.max_connections, "outbound connection refused: listener limit");
            return;
        };
        if let Ok(local) = stream.local_addr()
            && let Arrival::Captured { original } = orig_dst::arrival(&stream, local)
        {
            self.serve_captured(stream, original, watcher).await;
            return;
        }
        // An empty prefix: the explicit path then runs the same instance of `serve_http` as the
        // captured one, so the release layout (recorded without capture) covers both.
        let stream = Prefixed::new(BytesMut::new(), stream);
        self.serve_http(stream, None, watcher).await;
    }

    /// Serves HTTP/1.1 or h2c from the app on one connection: explicit-proxy requests, or
    /// (with `captured`) requests whose destination the capture decided. One concrete stream
    /// type, so both paths share one compiled instance.
    async fn serve_http(
        self: Arc<Self>,
        stream: Prefixed<TcpStream>,
        captured: Option<CapturedTarget>,
        watcher: Watcher,
    ) {
        let captured = captured.map(Arc::new);
        let this = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let this = this.clone();
            let captured = captured.clone();
            async move { Ok::<_, Infallible>(this.handle(req, captured.as_deref()).await) }
        });
        // Held for the connection's life; `life` closes it gracefully at shutdown, at its
        // maximum age or when idle.
        let _drain = watcher;
        let life = Lifetime::new(&self.limits, None, self.grace, self.shutdown.clone());
        let activity = Activity::default();
        let service = limits::track(service, activity.clone());
        let builder = h2::auto_server(&self.limits);
        // With upgrades: CONNECT hands the connection over to a tunnel.
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        // Each request is decided on its own (NetworkPolicy egress included), so a policy
        // change applies from the next request on; nothing to revoke at connection level.
        let (ended, result) = limits::supervise(conn, life, activity, std::future::pending()).await;
        if let Some(reason) = ended.label() {
            self.metrics.connection_closed(Direction::Outbound, reason);
        }
        if let Err(e) = result {
            tracing::debug!(error = %e, "outbound connection ended with an error");
        }
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        captured: Option<&CapturedTarget>,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let grpc = is_grpc(req.headers());
        let result = if req.method() == Method::CONNECT {
            self.tunnel(req).await
        } else {
            self.forward(req, captured).await
        };
        let (response, peer) = match result {
            Ok(ok) => ok,
            Err(failure) => {
                // Egress and tunnel refusals were logged with their policy where they were
                // decided.
                if !matches!(
                    failure,
                    Failure::UnknownDestination { .. }
                        | Failure::TunnelRefused { .. }
                        | Failure::NetworkPolicy { .. }
                ) {
                    tracing::info!(direction = "outbound", error = %failure, "request failed");
                }
                (failure.into_response(grpc), None)
            }
        };
        self.metrics.request(
            Direction::Outbound,
            response.status().as_u16(),
            peer.as_ref().unwrap_or(&self.no_peer),
            start.elapsed().as_secs_f64(),
        );
        response
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        captured: Option<&CapturedTarget>,
    ) -> Result<(Response<ProxyBody>, Option<PeerLabel>), Failure> {
        let view = self.view.borrow().clone().ok_or(Failure::NotReady(
            "no configuration from the control plane yet",
        ))?;
        match captured {
            None => {}
            Some(CapturedTarget::Mesh(route)) => {
                // The peer addresses the request by what the app wrote; a request without
                // an authority (HTTP/1.0) by the address the app dialled.
                let authority = match authority::of(req.uri(), req.headers()) {
                    Ok(a) => a,
                    Err(AuthorityError::Missing) => authority_of_address(route_address(route))?,
                    Err(e) => return Err(e.into()),
                };
                return self.send_to_route(&view, req, &authority, route).await;
            }
            Some(CapturedTarget::External(original)) => {
                // The name comes from the request, the port from the connection: an
                // allowance for `api.example.com:443` says nothing about another port.
                let host = match authority::of(req.uri(), req.headers()) {
                    Ok(a) => a.host().to_owned(),
                    Err(AuthorityError::Missing) => original.ip().to_string(),
                    Err(e) => return Err(e.into()),
                };
                let authority = authority_of_host(&host, original.port())?;
                let path = req.uri().path_and_query().map(|pq| pq.as_str());
                let allowed_by = egress_by_name(&view, authority.host(), original.port());
                let destination = format!("{}:{}", authority.host(), original.port());
                self.egress(
                    &view,
                    allowed_by,
                    &destination,
                    Some(req.method().as_str()),
                    path,
                )?;
                self.netpol_external(
                    &view,
                    authority.host(),
                    original.port(),
                    Some(original.ip()),
                )
                .await?;
                return self.passthrough(req, authority).await;
            }
        }
        // Read once: it picks the route, is what egress rules match, and is what the next
        // hop is addressed with.
        let authority = authority::of(req.uri(), req.headers())?;
        let port = authority.port_u16().unwrap_or(80);
        let Some(route) = view.services.resolve(authority.host(), port) else {
            let path = req.uri().path_and_query().map(|pq| pq.as_str());
            let allowed_by = egress_by_name(&view, authority.host(), port);
            let destination = format!("{}:{port}", authority.host());
            self.egress(
                &view,
                allowed_by,
                &destination,
                Some(req.method().as_str()),
                path,
            )?;
            self.netpol_external(&view, authority.host(), port, None)
                .await?;
            return self.passthrough(req, authority).await;
        };
        let route = route.clone();
        self.send_to_route(&view, req, &authority, &route).await
    }

    /// Sends one request to an endpoint of `route` over the pooled mTLS connection to its
    /// sidecar.
    async fn send_to_route(
        &self,
        view: &MeshView,
        req: Request<Incoming>,
        authority: &Authority,
        route: &Route,
    ) -> Result<(Response<ProxyBody>, Option<PeerLabel>), Failure> {
        let (key, endpoint) = self.pick_peer(view, route)?;
        // An app connection speaking HTTP/1.1 sends one request at a time, and an app port
        // speaking HTTP/1.1 cannot use streams or trailers: one exchange per connection is
        // all such a request needs, and the cheapest hop. Requests multiplexed by the app
        // (HTTP/2) stay multiplexed: one connection's writes then carry many of them.
        let hop = match route.protocol {
            Protocol::Http1 if req.version() < Version::HTTP_2 => Hop::Http1,
            Protocol::Http1 | Protocol::Http2 | Protocol::Grpc | Protocol::Tcp => Hop::Http2,
        };
        let request = to_mesh_request(req, authority)?;
        let response = self
            .pool
            .send(&key, request, hop)
            .await
            .map_err(|e| self.peer_failure(endpoint, e))?;
        Ok((from_upstream(response), Some(endpoint.label.clone())))
    }

    /// A failure to reach a peer sidecar; a peer with a bad or wrong certificate is counted
    /// like inbound handshake refusals.
    fn peer_failure(&self, endpoint: &Endpoint, e: PeerError) -> Failure {
        if matches!(e, PeerError::Handshake(_)) {
            self.metrics.handshake_failure(Direction::Outbound);
        }
        Failure::PeerUnavailable {
            peer: format!("{} ({})", endpoint.proxy_addr, endpoint.identity),
            reason: e.to_string(),
        }
    }

    /// `CONNECT host:port`: answers 200 once the upstream connection is up (a mesh peer's
    /// mTLS, or the external host's TCP), then copies bytes both ways.
    async fn tunnel(
        &self,
        mut req: Request<Incoming>,
    ) -> Result<(Response<ProxyBody>, Option<PeerLabel>), Failure> {
        let view = self.view.borrow().clone().ok_or(Failure::NotReady(
            "no configuration from the control plane yet",
        ))?;
        let authority = authority::canonical(req.uri().authority().ok_or(Failure::NoDestination)?)?;
        // CONNECT names host and port (RFC 9110 section 9.3.6); there is no default.
        let port = authority
            .port_u16()
            .ok_or_else(|| Failure::BadAuthority(authority.to_string()))?;
        let upgrade = hyper::upgrade::on(&mut req);
        if let Some(route) = view.services.resolve(authority.host(), port) {
            if route.protocol != Protocol::Tcp {
                let destination = format!("{}:{port}", route.service);
                let subject = Subject {
                    direction: Direction::Outbound,
                    source: Some(&view.workload.identity),
                    destination: &destination,
                    method: Some(Method::CONNECT.as_str()),
                    path: None,
                };
                enforce::denial(
                    &self.metrics,
                    &subject,
                    TUNNEL_TO_HTTP_PORT,
                    None,
                    "DENY: CONNECT to a Service port declared HTTP or gRPC",
                );
                return Err(Failure::TunnelRefused { destination });
            }
            let (key, endpoint) = self.pick_peer(&view, route)?;
            let upstream = self
                .pool
                .connect_tcp(&key)
                .await
                .map_err(|e| self.peer_failure(endpoint, e))?;
            let revoked = self.netpol_revoked(endpoint.proxy_addr.ip(), route.target_port);
            splice(upgrade, upstream, authority.to_string(), revoked);
            return Ok((tunnel_established(), Some(endpoint.label.clone())));
        }
        let allowed_by = egress_by_name(&view, authority.host(), port);
        let destination = format!("{}:{port}", authority.host());
        self.egress(
            &view,
            allowed_by,
            &destination,
            Some(Method::CONNECT.as_str()),
            None,
        )?;
        let host = bare_host(authority.host());
        // With egress isolated, the tunnel goes to an address NetworkPolicy allows, chosen
        // here, so the name cannot resolve differently at connect time.
        let chosen = self.netpol_external_address(&view, host, port).await?;
        let connect = async {
            match chosen {
                Some(addr) => TcpStream::connect(addr).await,
                None => TcpStream::connect((host, port)).await,
            }
        };
        let upstream = tokio::time::timeout(EXTERNAL_CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))
            .and_then(|r| r)
            .map_err(|e| Failure::PeerUnavailable {
                peer: authority.to_string(),
                reason: e.to_string(),
            })?;
        let _ = upstream.set_nodelay(true);
        let revoked = match upstream.peer_addr() {
            Ok(addr) => Either::Left(self.netpol_revoked(addr.ip(), port)),
            Err(_) => Either::Right(std::future::pending()),
        };
        splice(upgrade, upstream, authority.to_string(), revoked);
        Ok((tunnel_established(), None))
    }

    /// Records an egress decision (`allowed_by`: the allowing EgressPolicy, or
    /// `outbound-allow-any`; `None` refuses): a refusal is counted and logged, an allowance
    /// logged when every decision is.
    fn egress(
        &self,
        view: &MeshView,
        allowed_by: Option<&str>,
        destination: &str,
        method: Option<&str>,
        path: Option<&str>,
    ) -> Result<(), Failure> {
        if allowed_by.is_some() && !self.log_decisions {
            return Ok(());
        }
        let subject = Subject {
            direction: Direction::Outbound,
            source: Some(&view.workload.identity),
            destination,
            method,
            path,
        };
        match allowed_by {
            Some(policy) => {
                let explain = match view.settings.outbound_policy {
                    OutboundPolicy::AllowAny => {
                        "ALLOW: not a mesh service, outbound policy ALLOW_ANY".to_owned()
                    }
                    OutboundPolicy::RegistryOnly => format!("ALLOW by EgressPolicy {policy}"),
                };
                enforce::allowed(self.log_decisions, &subject, policy, &explain);
                Ok(())
            }
            None => {
                // Counted as `external`: the host is the app's to choose, so it goes to the
                // log line only.
                enforce::denial_counted_as(
                    &self.metrics,
                    &subject,
                    EXTERNAL,
                    OUTBOUND_REGISTRY_ONLY,
                    None,
                    "DENY: not a mesh service and no EgressPolicy allows it \
                     (outbound policy REGISTRY_ONLY)",
                );
                Err(Failure::UnknownDestination {
                    authority: destination.to_owned(),
                })
            }
        }
    }

    async fn passthrough(
        &self,
        req: Request<Incoming>,
        authority: Authority,
    ) -> Result<(Response<ProxyBody>, Option<PeerLabel>), Failure> {
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.uri = authority::absolute_uri(std::mem::take(&mut parts.uri), &authority)?;
        parts.version = Version::HTTP_11;
        // The destination gets the authority the egress decision was made on.
        let host = http::HeaderValue::from_str(authority.as_str())
            .map_err(|_| Failure::BadAuthority(authority.to_string()))?;
        parts.headers.insert(header::HOST, host);
        let response = self
            .passthrough
            .request(Request::from_parts(parts, streamed(body)))
            .await
            .map_err(|e| Failure::PeerUnavailable {
                peer: authority.to_string(),
                reason: e.to_string(),
            })?;
        Ok((from_upstream(response.map(streamed)), None))
    }
}

/// What allows reaching `host:port` outside the mesh by name (or, for an IP literal, by
/// address): ALLOW_ANY, or an EgressPolicy of this workload.
fn egress_by_name<'v>(view: &'v MeshView, host: &str, port: u16) -> Option<&'v str> {
    match view.settings.outbound_policy {
        OutboundPolicy::AllowAny => Some(ALLOW_ANY),
        OutboundPolicy::RegistryOnly => view.egress.allows(host, port),
    }
}

/// The metric `destination` of every destination outside the mesh.
const EXTERNAL: &str = "external";

/// The label of an allowance by the outbound policy ALLOW_ANY.
const ALLOW_ANY: &str = "outbound-allow-any";

/// The address a captured connection to `route` was for, as the peer will see it named.
fn route_address(route: &Route) -> SocketAddr {
    let ip = route
        .endpoints
        .first()
        .map_or(IpAddr::from([127, 0, 0, 1]), |e| e.proxy_addr.ip());
    SocketAddr::new(ip, route.target_port)
}

fn authority_of_address(addr: SocketAddr) -> Result<Authority, Failure> {
    addr.to_string()
        .parse()
        .map_err(|_| Failure::BadAuthority(addr.to_string()))
}

/// `host:port`, with IPv6 literals bracketed.
fn authority_of_host(host: &str, port: u16) -> Result<Authority, Failure> {
    let host = bare_host(host);
    let text = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    text.parse().map_err(|_| Failure::BadAuthority(text))
}

/// The 200 that tells the app its tunnel is up.
fn tunnel_established() -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::OK;
    response
}

/// Copies bytes between the app's upgraded connection and `upstream` until either closes,
/// or `revoked` resolves (NetworkPolicy no longer allows it): then both are dropped.
fn splice<S, R>(upgrade: OnUpgrade, mut upstream: S, target: String, revoked: R)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(
        async move {
            match upgrade.await {
                Ok(upgraded) => {
                    let mut app = TokioIo::new(upgraded);
                    tokio::select! {
                        r = tokio::io::copy_bidirectional(&mut app, &mut upstream) => match r {
                            Ok((sent, received)) => {
                                tracing::debug!(%target, sent, received, "tunnel closed")
                            }
                            Err(e) => {
                                tracing::debug!(%target, error = %e, "tunnel ended with an error")
                            }
                        },
                        () = revoked => {
                            tracing::debug!(%target, "tunnel closed: NetworkPolicy no longer allows it")
                        }
                    }
                }
                Err(e) => tracing::debug!(%target, error = %e, "CONNECT was not upgraded"),
            }
        }
        .in_current_span(),
    );
}

/// A host as sockets take it: without IPv6 brackets.
fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Rewrites an app request for the hop between sidecars: the authority it was routed by in
/// an absolute URI, and no `Host` (the pool writes the authority as its hop's version says).
fn to_mesh_request(
    req: Request<Incoming>,
    authority: &Authority,
) -> Result<Request<ProxyBody>, Failure> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    parts.uri = authority::absolute_uri(std::mem::take(&mut parts.uri), authority)?;
    Ok(Request::from_parts(parts, streamed(body)))
}

/// Cleans a response from upstream for the app.
fn from_upstream(response: Response<ProxyBody>) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The app's connection decides the version it is written with.
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, body)
}
