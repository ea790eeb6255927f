//! HTTP on an inbound connection: each request is authorized, then rewritten for the app
//! and forwarded to it.
//!
//! Authorization is per request against the view current at that moment, so a policy push
//! applies to open connections at once (STYLE habit 6).
//!
//! A plaintext request (PERMISSIVE mode) has no verified identity: authorization sees
//! `source: None` (the evaluator's fail-closed rule), the app gets no
//! `x-forwarded-client-cert` (any the caller sent is removed), and metrics and logs name the
//! caller `unauthenticated`. Its target app port is chosen per request (see
//! `plaintext_target`).
//!
//! A plaintext connection opened while the mesh was PERMISSIVE is re-checked on every
//! request (one field read of the current view): once the mesh is STRICT, the request is
//! refused with 403 (`x-palisade-denied-by: mtls-strict`, gRPC: `grpc-status: 7`), never
//! forwarded, and counted with `stage="request"`; HTTP/1 responses carry `connection:
//! close`, so the caller reconnects and meets the connection-level refusal.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;

use http::request;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Method, Request, Response, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::{ConnContext, Inbound, Transport, attrs, target};
use crate::authority::{self, AuthorityError};
use crate::authz::{HttpAttrs, PathError, PathOptions, normalize_request};
use crate::h2;
use crate::http::{BoxError, Failure, ProxyBody, XFCC, is_grpc, streamed, strip_hop_by_hop};
use crate::limits::{self, Activity, Ended};
use crate::metrics::{Direction, PlaintextStage};
use crate::model::{LocalWorkload, MeshView, MtlsMode, Protocol};
use crate::netgate::{self, NetConn};

/// The `x-palisade-denied-by` value of a request whose caller's certificate has expired on
/// an open connection.
const PEER_CERTIFICATE_EXPIRED: &str = "peer-certificate-expired";

/// Response header describing the mTLS hop, when debug headers are on.
const MTLS_DEBUG: http::HeaderName = http::HeaderName::from_static("x-palisade-mtls");

/// How HTTP is spoken on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Codec {
    /// HTTP/1.1 (mTLS without ALPN `h2`).
    Http1,
    /// HTTP/2 (mTLS with ALPN `h2`).
    Http2,
    /// HTTP/1.1 or h2c with prior knowledge, by what the caller sends (plaintext).
    Auto,
}

// === impl Inbound: HTTP ===

impl Inbound {
    /// Serves HTTP on one connection until it closes or the drain ends it.
    pub(super) async fn serve_http<S>(
        self: Arc<Self>,
        stream: S,
        ctx: Arc<ConnContext>,
        codec: Codec,
        watcher: Watcher,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = ctx.peer_addr;
        let plaintext = matches!(ctx.transport, Transport::Plaintext { .. });
        let io = TokioIo::new(stream);
        // Held for the connection's life: a drain waits for it; `life` closes it gracefully
        // at shutdown, at its maximum age or when idle, and at once when the caller's
        // certificate expires.
        let _drain = watcher;
        let life = self.lifetime(ctx.not_after);
        let activity = Activity::default();
        let revoked = self.netpol_revoked(&ctx);
        let service = limits::track(self.clone().service(ctx.clone()), activity.clone());
        let (ended, result): (Ended, Result<(), BoxError>) = match codec {
            Codec::Http1 => {
                let conn = h2::http1_server(&self.limits).serve_connection(io, service);
                let (ended, r) = limits::supervise(conn, life, activity, revoked).await;
                (ended, r.map_err(Into::into))
            }
            Codec::Http2 => {
                let conn = h2::server(&self.limits).serve_connection(io, service);
                let (ended, r) = limits::supervise(conn, life, activity, revoked).await;
                (ended, r.map_err(Into::into))
            }
            Codec::Auto => {
                let builder = h2::auto_server(&self.limits);
                let conn = builder.serve_connection(io, service);
                limits::supervise(conn, life, activity, revoked).await
            }
        };
        self.ended(&ctx, ended);
        if let Err(e) = result {
            if plaintext {
                tracing::debug!(%peer, error = %e, "inbound plaintext connection ended with an error");
            } else {
                tracing::debug!(%peer, error = %e, "inbound connection ended with an error");
            }
        }
    }

    /// The per-request service of one connection.
    fn service(
        self: Arc<Self>,
        ctx: Arc<ConnContext>,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<ProxyBody>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
    > + Clone {
        hyper::service::service_fn(move |req| {
            let this = self.clone();
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(this.handle(req, &ctx).await) }
        })
    }

    async fn handle(&self, req: Request<Incoming>, conn: &ConnContext) -> Response<ProxyBody> {
        let start = Instant::now();
        let grpc = is_grpc(req.headers());
        let version = req.version();
        let response = match self.forward(req, conn).await {
            Ok(r) => r,
            Err(failure) => {
                // Denials were logged with their policy where they were decided, plaintext
                // refusals with the caller's address.
                if !matches!(
                    failure,
                    Failure::Denied { .. }
                        | Failure::PlaintextRefused
                        | Failure::NetworkPolicy { .. }
                ) {
                    tracing::info!(direction = "inbound", peer = %conn.peer_label, error = %failure, "request failed");
                }
                // NetworkPolicy decides connections: the caller reconnects and is decided
                // at connection level too.
                let close = matches!(
                    failure,
                    Failure::PlaintextRefused | Failure::NetworkPolicy { .. }
                ) && version < Version::HTTP_2;
                let mut response = failure.into_response(grpc);
                if close {
                    // The caller reconnects and is refused at connection level.
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                response
            }
        };
        self.metrics.request(
            Direction::Inbound,
            response.status().as_u16(),
            &conn.peer_label,
            start.elapsed().as_secs_f64(),
        );
        response
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        conn: &ConnContext,
    ) -> Result<Response<ProxyBody>, Failure> {
        if conn.not_after.is_some_and(limits::expired) {
            // The connection is about to be closed; nothing more passes on it.
            tracing::info!(peer = %conn.peer_addr, identity = %conn.peer_label, "inbound request refused: the caller's certificate has expired");
            return Err(Failure::Denied {
                by: PEER_CERTIFICATE_EXPIRED.to_owned(),
                hide: false,
            });
        }
        let view = self.view.borrow().clone().ok_or(Failure::NotReady(
            "no configuration from the control plane yet",
        ))?;
        // Read once, canonical: it picks a plaintext request's port, is what `hosts` rules
        // match, and is what the app is addressed with.
        let authority = authority::of(req.uri(), req.headers());
        let (port, protocol) = match conn.transport {
            Transport::Mtls { target_port } => target(&view.workload, Some(target_port))?,
            Transport::Plaintext { dialled_port } => {
                // A connection opened in PERMISSIVE mode gets nothing once the mesh is STRICT.
                if view.settings.mtls_mode != MtlsMode::Permissive {
                    self.metrics.plaintext_refused(PlaintextStage::Request);
                    tracing::info!(
                        peer = %conn.peer_addr,
                        reason = "the mesh mTLS mode is STRICT",
                        "inbound plaintext request refused"
                    );
                    return Err(Failure::PlaintextRefused);
                }
                match dialled_port {
                    // Captured: the port the caller dialled, whatever the request says.
                    Some(port) => target(&view.workload, Some(port))?,
                    None => {
                        let authority_port = authority.as_ref().ok().and_then(Authority::port_u16);
                        plaintext_target(&view.workload, authority_port)?
                    }
                }
            }
        };
        // NetworkPolicy is a connection decision, made at accept when the port is known;
        // decided here again so a change applies before the connection is closed, and so a
        // plaintext caller of 15006 (whose port shows per request) is decided at all.
        let ip = conn.peer_addr.ip();
        if !view
            .netpol
            .ingress(ip, conn.peer_identity.as_ref(), port)
            .allowed
        {
            let net = NetConn::ingress(ip, conn.peer_identity.clone(), port);
            let decision = net.decide(&view.netpol);
            netgate::record_denial(&self.metrics, &view, &net, &decision, false);
            return Err(netgate::failure(&view, &decision));
        }
        // A tunnel or a request for the server itself has no path a policy could match; an
        // app port is reached by ordinary requests only.
        if req.method() == Method::CONNECT || req.uri().path() == "*" {
            return Err(Failure::MethodNotAllowed(format!(
                "{} {}",
                req.method(),
                req.uri()
            )));
        }
        let authority = match authority {
            Ok(a) => Some(a),
            // HTTP/1.0 without Host (or h2 without :authority): nothing for `hosts` to match.
            Err(AuthorityError::Missing) => None,
            Err(e) => return Err(e.into()),
        };
        // The request is rewritten for the app first and authorized as rewritten, so the
        // policy decides on exactly what the app receives.
        let (mut parts, body) = req.into_parts();
        to_app_request(
            &mut parts,
            authority.as_ref(),
            protocol,
            conn.xfcc.as_ref(),
            &view.settings.path,
        )?;
        let host = authority.as_ref().map_or("", Authority::as_str);
        self.authorize(&view, &parts, host, port, conn)?;
        let response = self
            .apps
            .get(port, protocol)
            .request(Request::from_parts(parts, streamed(body)))
            .await
            .map_err(|e| Failure::AppUnavailable {
                port,
                reason: error_chain(&e),
            })?;
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(debug) = &conn.debug {
            parts.headers.insert(MTLS_DEBUG, debug.clone());
        }
        Ok(Response::from_parts(parts, body))
    }

    /// Decides one HTTP request (as rewritten for the app); counts and logs denials and
    /// audits.
    fn authorize(
        &self,
        view: &MeshView,
        req: &request::Parts,
        host: &str,
        port: u16,
        conn: &ConnContext,
    ) -> Result<(), Failure> {
        let path = req
            .uri
            .path_and_query()
            .map_or_else(|| req.uri.path(), PathAndQuery::as_str);
        let http = HttpAttrs {
            method: req.method.as_str(),
            host,
            path,
            headers: &req.headers,
        };
        let decision = view
            .authz
            .decide(&attrs(conn, port, Some(http)), view.settings.default_allow);
        self.observe(view, conn, port, Some((http.method, path)), &decision);
        if decision.allowed {
            Ok(())
        } else {
            Err(Failure::Denied {
                by: decision.policy_label(),
                hide: view.settings.hide_denial_reasons,
            })
        }
    }
}

/// The app port a plaintext request is for: a plaintext caller sends no SNI, so the
/// workload's only port if it has exactly one, else the port of the request's authority
/// (`:authority` or `Host`) if it is one of the workload's ports; anything else is
/// [`Failure::UnknownPort`] (404).
///
/// With transparent capture (`palisade init`'s iptables REDIRECT) the connection's original
/// destination (`SO_ORIGINAL_DST`) names the port the caller dialled; once the inbound
/// listener reads it, it should take precedence over the authority here.
fn plaintext_target(
    workload: &LocalWorkload,
    authority_port: Option<u16>,
) -> Result<(u16, Protocol), Failure> {
    if workload.ports.len() == 1 {
        return target(workload, None);
    }
    target(
        workload,
        Some(authority_port.ok_or(Failure::UnknownPort(0))?),
    )
}

/// Rewrites a request from a peer for the app: hop-by-hop headers removed (a `Connection`
/// option cannot remove `host` or the identity header), the caller's verified identity in
/// `x-forwarded-client-cert` (any value the caller sent is removed, and a plaintext caller
/// gets none), the path normalised as the mesh's path options say (or refused), the URI
/// rebuilt once around the canonical authority, `Host` overwritten with it (HTTP/1) or
/// removed (HTTP/2, where `:authority` carries it), and the version the app port speaks.
fn to_app_request(
    parts: &mut request::Parts,
    authority: Option<&Authority>,
    protocol: Protocol,
    xfcc: Option<&HeaderValue>,
    paths: &PathOptions,
) -> Result<(), Failure> {
    // With no authority at all the app is addressed as `localhost`.
    let authority = authority
        .cloned()
        .unwrap_or_else(|| Authority::from_static("localhost"));
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(XFCC);
    if let Some(xfcc) = xfcc {
        parts.headers.insert(XFCC, xfcc.clone());
    }
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    // The app gets the path that is authorized (as Istio's sidecar does), so it cannot
    // read `/a/../admin` or `/%61dmin` differently from the policy.
    if let Some(pq) = &uri.path_and_query
        && let Cow::Owned(path) = normalize_request(pq.path(), paths)?
    {
        let rebuilt = match pq.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let pq = PathAndQuery::try_from(rebuilt)
            .map_err(|_| Failure::BadPath(PathError::NotAbsolute))?;
        uri.path_and_query = Some(pq);
    }
    parts.uri = authority::absolute_uri(uri, &authority)?;
    if protocol.is_http2() {
        parts.version = Version::HTTP_2;
        parts.headers.remove(header::HOST);
    } else {
        parts.version = Version::HTTP_11;
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| Failure::BadAuthority(authority.to_string()))?;
        parts.headers.insert(header::HOST, host);
    }
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_certs::SpiffeId;

    fn workload(ports: &[(u16, Protocol)]) -> LocalWorkload {
        LocalWorkload {
            name: "search".into(),
            namespace: "shop".into(),
            identity: SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/search")
                .unwrap_or_else(|e| panic!("{e}")),
            labels: Default::default(),
            ports: ports.iter().copied().collect(),
        }
    }

    fn port_of(result: Result<(u16, Protocol), Failure>) -> Result<u16, u16> {
        match result {
            Ok((port, _)) => Ok(port),
            Err(Failure::UnknownPort(p)) => Err(p),
            Err(other) => panic!("unexpected failure {other}"),
        }
    }

    #[test]
    fn a_plaintext_request_goes_to_the_only_port_whatever_its_authority_says() {
        let one = workload(&[(8080, Protocol::Http1)]);
        assert_eq!(port_of(plaintext_target(&one, None)), Ok(8080));
        // A Service port in the Host header (80 → targetPort 8080) still reaches the app.
        assert_eq!(port_of(plaintext_target(&one, Some(80))), Ok(8080));
    }

    #[test]
    fn with_several_ports_the_authority_port_must_be_one_of_them() {
        let two = workload(&[(8080, Protocol::Http1), (9090, Protocol::Grpc)]);
        assert_eq!(port_of(plaintext_target(&two, Some(9090))), Ok(9090));
        assert_eq!(port_of(plaintext_target(&two, Some(8080))), Ok(8080));
        assert_eq!(port_of(plaintext_target(&two, Some(80))), Err(80));
        assert_eq!(port_of(plaintext_target(&two, None)), Err(0));
        assert_eq!(port_of(plaintext_target(&workload(&[]), Some(80))), Err(80));
    }

    fn parts(uri: &str, host: Option<&str>) -> request::Parts {
        let mut b = Request::get(uri);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        b.header(XFCC, "forged")
            .header(header::CONNECTION, "x-hop")
            .header("x-hop", "1")
            .body(())
            .unwrap_or_else(|e| panic!("{e}"))
            .into_parts()
            .0
    }

    fn app_request(
        mut p: request::Parts,
        protocol: Protocol,
        xfcc: Option<&HeaderValue>,
    ) -> Result<request::Parts, Failure> {
        let authority = match authority::of(&p.uri, &p.headers) {
            Ok(a) => Some(a),
            Err(AuthorityError::Missing) => None,
            Err(e) => return Err(e.into()),
        };
        to_app_request(
            &mut p,
            authority.as_ref(),
            protocol,
            xfcc,
            &PathOptions::default(),
        )
        .map(|()| p)
    }

    #[test]
    fn the_app_gets_an_absolute_uri_with_the_authorized_path_and_the_verified_identity() {
        let xfcc = HeaderValue::from_static("By=a;URI=b");
        let p = app_request(
            parts("/a/../admin?x=1", Some("search.shop:8080")),
            Protocol::Http1,
            Some(&xfcc),
        )
        .unwrap();
        assert_eq!(p.uri, "http://search.shop:8080/admin?x=1");
        assert_eq!(p.version, Version::HTTP_11);
        assert_eq!(p.headers[header::HOST], "search.shop:8080");
        assert_eq!(p.headers[XFCC], "By=a;URI=b");
        assert!(p.headers.get("x-hop").is_none());
    }

    #[test]
    fn an_http2_app_gets_the_authority_in_the_uri_only_and_no_caller_xfcc() {
        let p = app_request(parts("/", Some("search.shop")), Protocol::Grpc, None).unwrap();
        assert_eq!(p.uri, "http://search.shop/");
        assert_eq!(p.version, Version::HTTP_2);
        assert!(p.headers.get(header::HOST).is_none());
        assert!(p.headers.get(XFCC).is_none());
    }

    #[test]
    fn a_request_without_host_addresses_localhost_and_a_bad_host_fails() {
        let p = app_request(parts("/", None), Protocol::Http1, None).unwrap();
        assert_eq!(p.uri, "http://localhost/");
        assert_eq!(p.headers[header::HOST], "localhost");
        let bad = app_request(parts("/", Some("bad host")), Protocol::Http1, None);
        assert!(matches!(bad, Err(Failure::BadAuthority(s)) if s == "bad host"));
    }

    #[test]
    fn the_app_gets_the_canonical_host_whatever_connection_says() {
        let mut p = parts("/x", Some("Search.Shop.:8080"));
        p.headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("host, x-forwarded-client-cert"),
        );
        let xfcc = HeaderValue::from_static("By=a;URI=b");
        let p = app_request(p, Protocol::Http1, Some(&xfcc)).unwrap();
        assert_eq!(p.uri, "http://search.shop:8080/x");
        assert_eq!(p.headers[header::HOST], "search.shop:8080");
        assert_eq!(p.headers.get_all(header::HOST).iter().count(), 1);
        assert_eq!(p.headers[XFCC], "By=a;URI=b");
    }

    #[test]
    fn refused_paths_fail_the_request() {
        let bad = app_request(
            parts("/a%2Fadmin", Some("search.shop")),
            Protocol::Http1,
            None,
        );
        assert!(matches!(
            bad,
            Err(Failure::BadPath(PathError::EscapedSlash(2)))
        ));
        let bad = app_request(parts("/a%zz", Some("search.shop")), Protocol::Http1, None);
        assert!(matches!(bad, Err(Failure::BadPath(_))));
    }
}
