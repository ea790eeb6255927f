//! HTTP plumbing shared by both directions: the body type, header hygiene, and the one place
//! where a typed failure becomes an HTTP or gRPC response.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// Body of every request and response the proxy handles: streamed through, or generated
/// here. A streamed body may carry a release: what gives the connection it arrived on back
/// to its pool once the body has ended (an HTTP/1.1 connection takes its next request only
/// then), so a pooled connection returns without a task per request.
pub struct ProxyBody {
    inner: Either<Incoming, Full<Bytes>>,
    release: Option<Release>,
}

/// Gives a pooled connection back, called once when the body it carried has ended.
pub type Release = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyBody")
            .field("inner", &self.inner)
            .field("release", &self.release.is_some())
            .finish()
    }
}

impl ProxyBody {
    /// Runs the release if the body has ended (the connection is free again).
    fn release_if_ended(&mut self) {
        if self.release.is_some()
            && self.inner.is_end_stream()
            && let Some(release) = self.release.take()
        {
            release();
        }
    }
}

impl http_body::Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Err(_))) => {
                // A connection that failed mid-body is never reused.
                self.release = None;
            }
            std::task::Poll::Ready(_) => self.release_if_ended(),
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // A reader that stops at the last frame (it saw `is_end_stream`) never polls the
        // end; a body dropped half-read leaves its connection mid-message, so it is closed.
        self.release_if_ended();
    }
}

/// Error type of [`ProxyBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Header naming the policy that denied a request (CONTRACT: behaviour users rely on).
pub const DENIED_BY: HeaderName = HeaderName::from_static("x-palisade-denied-by");
/// The `x-palisade-denied-by` value (and metric `policy` label) of an egress refusal.
pub const OUTBOUND_REGISTRY_ONLY: &str = "outbound-registry-only";
/// The `x-palisade-denied-by` value of a request on a plaintext connection (opened in
/// PERMISSIVE mode) after the mesh switched to STRICT.
pub const MTLS_STRICT: &str = "mtls-strict";
/// Envoy-style header telling the app who called it.
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// A body the proxy generated.
pub fn full(body: impl Into<Bytes>) -> ProxyBody {
    ProxyBody {
        inner: Either::Right(Full::new(body.into())),
        release: None,
    }
}

/// A streamed body.
pub fn streamed(body: Incoming) -> ProxyBody {
    ProxyBody {
        inner: Either::Left(body),
        release: None,
    }
}

/// A streamed body whose connection goes back to its pool through `release` once the body
/// has ended; if it is dropped before its end, the connection closes instead.
pub fn releasing(body: Incoming, release: Release) -> ProxyBody {
    let mut body = ProxyBody {
        inner: Either::Left(body),
        release: Some(release),
    };
    // A response without a body (204, HEAD, Content-Length: 0) has already ended.
    body.release_if_ended();
    body
}

/// The `x-palisade-denied-by` value (and metric `policy` label) of an opaque tunnel refused
/// because its port is declared HTTP or gRPC: such a port is reached only as HTTP, where each
/// request is authorized and rewritten.
pub const TUNNEL_TO_HTTP_PORT: &str = "tunnel-to-http-port";

/// Headers a `Connection` option can never remove: the proxy itself reads or sets them
/// (the authority, body framing, gRPC detection, the verified caller identity), so letting
/// a caller drop them would make the proxy and the app see different requests.
const NEVER_HOP_BY_HOP: [HeaderName; 4] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    XFCC,
];

/// Removes hop-by-hop headers (RFC 9110 section 7.6.1), including any named in `Connection`
/// except the end-to-end headers the proxy relies on (`NEVER_HOP_BY_HOP`).
/// `te: trailers` survives because gRPC over HTTP/2 requires it.
///
/// Inbound calls this before authorization, so policies match the headers the app receives.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them (and a name listed in `Connection` needs a
    // `Connection` header): one pass over the few names present instead of a hash lookup
    // per hop-by-hop name, four times per proxied request.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !NEVER_HOP_BY_HOP.contains(name))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Hop-by-hop headers that never pass (`te` is handled apart: `te: trailers` passes).
pub static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Whether `name` is one of the headers [`strip_hop_by_hop`] acts on: `te` or one of
/// [`HOP_BY_HOP`] (a string match, which costs nothing to build per call).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "te" | "connection"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "keep-alive"
            | "proxy-connection"
    )
}

/// `uri` as HTTP/1.1 writes it to an origin server: its path and query only (`/` if it has
/// none); the authority travels in `Host`.
pub fn origin_form(uri: &http::Uri) -> http::Uri {
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    http::Uri::from(path)
}

/// Whether a request is gRPC (by content type), so failures are answered in gRPC terms.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Every way the proxy itself can fail a request. Mapped to a response in exactly one place
/// ([`Failure::into_response`]) with an exhaustive match, so no new kind can fall through
/// to a generic 500.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Authorization said no. `by` is the deciding policy (`namespace/name`) or `default-deny`.
    #[error("denied by {by}")]
    Denied {
        /// The deciding policy; left out of the response when the mesh hides reasons.
        by: String,
        /// Whether to leave the policy name out of the response.
        hide: bool,
    },
    /// NetworkPolicy refuses the connection a request would need (egress from this
    /// workload, or ingress to it on a connection whose port is known only per request).
    /// `by` is the first policy isolating the workload for that direction.
    #[error("denied by NetworkPolicy {by}")]
    NetworkPolicy {
        /// The first isolating policy; left out of the response when the mesh hides reasons.
        by: String,
        /// Whether to leave the policy name out of the response.
        hide: bool,
    },
    /// The destination is not a mesh Service and the outbound policy refuses it.
    #[error("{authority} is not a mesh service, and the outbound policy is REGISTRY_ONLY")]
    UnknownDestination {
        /// What the app asked for.
        authority: String,
    },
    /// The request names no destination at all.
    #[error("request names no destination (no absolute URI, Host or :authority)")]
    NoDestination,
    /// The authority is malformed.
    #[error("invalid authority {0:?}")]
    BadAuthority(String),
    /// The request names its authority twice, differently, or with userinfo.
    #[error("ambiguous authority: {0}")]
    AmbiguousAuthority(String),
    /// The path cannot be normalised, or holds what the mesh's path options refuse.
    #[error("path refused: {0}")]
    BadPath(#[from] crate::authz::PathError),
    /// A method (or request form) an inbound HTTP port never forwards: `CONNECT`, and the
    /// asterisk form of `OPTIONS *`.
    #[error("{0} is not forwarded to the app")]
    MethodNotAllowed(String),
    /// An opaque tunnel (`CONNECT`) to a port declared HTTP or gRPC, whose requests must be
    /// authorized one by one.
    #[error("{destination} is an HTTP port: tunnels are refused, send HTTP requests")]
    TunnelRefused {
        /// The Service port asked for.
        destination: String,
    },
    /// The peer sidecar could not be reached or refused us (TLS, identity, connect).
    #[error("upstream sidecar {peer} unavailable: {reason}")]
    PeerUnavailable {
        /// Where we tried to connect.
        peer: String,
        /// Why it failed.
        reason: String,
    },
    /// The local app could not be reached.
    #[error("app on port {port} unavailable: {reason}")]
    AppUnavailable {
        /// The app port.
        port: u16,
        /// Why it failed.
        reason: String,
    },
    /// The request arrived for a port the workload does not expose.
    #[error("port {0} is not a port of this workload")]
    UnknownPort(u16),
    /// The proxy is not ready (no certificate or configuration yet).
    #[error("proxy is not ready: {0}")]
    NotReady(&'static str),
    /// A request on a plaintext connection opened in PERMISSIVE mode, after the mesh
    /// switched to STRICT: plaintext is no longer accepted.
    #[error("plaintext is refused: the mesh mTLS mode is STRICT")]
    PlaintextRefused,
}

impl Failure {
    /// HTTP status, gRPC status code and the short reason of each failure.
    fn parts(&self) -> (StatusCode, u8) {
        match self {
            Failure::Denied { .. } => (StatusCode::FORBIDDEN, 7),
            Failure::NetworkPolicy { .. } => (StatusCode::FORBIDDEN, 7),
            Failure::UnknownDestination { .. } => (StatusCode::FORBIDDEN, 7),
            Failure::PlaintextRefused => (StatusCode::FORBIDDEN, 7),
            Failure::TunnelRefused { .. } => (StatusCode::FORBIDDEN, 7),
            Failure::NoDestination
            | Failure::BadAuthority(_)
            | Failure::AmbiguousAuthority(_)
            | Failure::BadPath(_) => (StatusCode::BAD_REQUEST, 3),
            Failure::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, 12),
            Failure::PeerUnavailable { .. } | Failure::AppUnavailable { .. } => {
                (StatusCode::BAD_GATEWAY, 14)
            }
            Failure::UnknownPort(_) => (StatusCode::NOT_FOUND, 12),
            Failure::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, 14),
        }
    }

    /// The value of `x-palisade-denied-by`, for failures that are policy decisions.
    fn denied_by(&self) -> Option<&str> {
        match self {
            Failure::Denied { hide: true, .. } => Some("hidden"),
            Failure::Denied { by, .. } => Some(by),
            Failure::NetworkPolicy { hide: true, .. } => Some("hidden"),
            Failure::NetworkPolicy { by, .. } => Some(by),
            Failure::UnknownDestination { .. } => Some(OUTBOUND_REGISTRY_ONLY),
            Failure::PlaintextRefused => Some(MTLS_STRICT),
            Failure::TunnelRefused { .. } => Some(TUNNEL_TO_HTTP_PORT),
            // Listed, not `_`: a new policy-like failure must decide here whether it names
            // what denied it.
            Failure::NoDestination
            | Failure::BadAuthority(_)
            | Failure::AmbiguousAuthority(_)
            | Failure::BadPath(_)
            | Failure::MethodNotAllowed(_)
            | Failure::PeerUnavailable { .. }
            | Failure::AppUnavailable { .. }
            | Failure::UnknownPort(_)
            | Failure::NotReady(_) => None,
        }
    }

    /// The response the caller sees: for gRPC, HTTP 200 with `grpc-status` (trailers-only);
    /// otherwise the HTTP status with a one-line text body.
    ///
    /// Failures to reach something say only that: addresses, identities and error chains
    /// help an attacker map the mesh, so they go to the log (the `Display` of the failure),
    /// never into the response.
    pub fn into_response(self, grpc: bool) -> Response<ProxyBody> {
        let (status, grpc_code) = self.parts();
        let message = match &self {
            Failure::Denied { hide: true, .. } | Failure::NetworkPolicy { hide: true, .. } => {
                "denied by policy".to_owned()
            }
            Failure::PeerUnavailable { .. } | Failure::AppUnavailable { .. } => {
                "upstream unavailable".to_owned()
            }
            Failure::NotReady(_) => "proxy not ready".to_owned(),
            other => other.to_string(),
        };
        let mut builder = Response::builder();
        if matches!(self, Failure::MethodNotAllowed(_)) {
            // RFC 9110 section 15.5.6: a 405 lists what is allowed.
            builder = builder.header(header::ALLOW, ALLOWED_METHODS);
        }
        if let Some(by) = self.denied_by() {
            builder = builder.header(DENIED_BY, by);
        }
        let response = if grpc {
            builder
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/grpc")
                .header("grpc-status", grpc_code.to_string())
                .header("grpc-message", percent_encode_grpc(&message))
                .body(full(Bytes::new()))
        } else {
            builder
                .status(status)
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(full(format!("{status}: {message}\n")))
        };
        response.unwrap_or_else(|_| {
            let mut fallback = Response::new(full(Bytes::from_static(b"proxy error\n")));
            *fallback.status_mut() = status;
            fallback
        })
    }
}

/// The `Allow` header of a 405 from an inbound HTTP port: every method but `CONNECT`.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH";

/// Percent-encodes a grpc-message value as the gRPC HTTP/2 spec asks (outside 0x20..=0x7E, and `%`).
fn percent_encode_grpc(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_headers_but_keeps_te_trailers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-private").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get("x-app").unwrap(), "kept");
    }

    #[test]
    fn the_one_pass_check_sees_every_hop_by_hop_header_alone() {
        for name in HOP_BY_HOP.iter().chain([&header::TE]) {
            let mut h = HeaderMap::new();
            h.insert("x-app", HeaderValue::from_static("kept"));
            h.insert(name.clone(), HeaderValue::from_static("gzip"));
            strip_hop_by_hop(&mut h);
            assert!(h.get(name).is_none(), "{name} passed");
            assert_eq!(h.get("x-app").unwrap(), "kept");
        }
    }

    #[test]
    fn denial_maps_to_403_and_grpc_7() {
        let http = Failure::Denied {
            by: "shop/allow-frontend".into(),
            hide: false,
        }
        .into_response(false);
        assert_eq!(http.status(), StatusCode::FORBIDDEN);
        assert_eq!(http.headers()[DENIED_BY], "shop/allow-frontend");
        let grpc = Failure::Denied {
            by: "default-deny".into(),
            hide: false,
        }
        .into_response(true);
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "7");
        assert_eq!(grpc.headers()[DENIED_BY], "default-deny");
        let hidden = Failure::Denied {
            by: "shop/x".into(),
            hide: true,
        }
        .into_response(false);
        assert_eq!(hidden.headers()[DENIED_BY], "hidden");
        assert_eq!(hidden.status(), StatusCode::FORBIDDEN);
        let hidden_grpc = Failure::Denied {
            by: "shop/x".into(),
            hide: true,
        }
        .into_response(true);
        assert_eq!(hidden_grpc.headers()["grpc-message"], "denied by policy");
        let named_grpc = Failure::Denied {
            by: "shop/payments-deny-search".into(),
            hide: false,
        }
        .into_response(true);
        assert_eq!(
            named_grpc.headers()["grpc-message"],
            "denied by shop/payments-deny-search"
        );
    }

    #[test]
    fn egress_refusal_maps_to_403_naming_the_outbound_policy() {
        let r = Failure::UnknownDestination {
            authority: "example.com:443".into(),
        }
        .into_response(false);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()[DENIED_BY], "outbound-registry-only");
        let g = Failure::UnknownDestination {
            authority: "example.com:443".into(),
        }
        .into_response(true);
        assert_eq!(g.status(), StatusCode::OK);
        assert_eq!(g.headers()["grpc-status"], "7");
    }

    #[test]
    fn a_plaintext_refusal_maps_to_403_naming_the_mtls_mode() {
        let r = Failure::PlaintextRefused.into_response(false);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()[DENIED_BY], "mtls-strict");
        let g = Failure::PlaintextRefused.into_response(true);
        assert_eq!(g.status(), StatusCode::OK);
        assert_eq!(g.headers()["grpc-status"], "7");
        assert_eq!(g.headers()[DENIED_BY], "mtls-strict");
    }

    #[test]
    fn connection_never_removes_what_the_proxy_reads() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static(
                "host, content-length, Content-Type, x-forwarded-client-cert, x-drop",
            ),
        );
        h.insert(header::HOST, HeaderValue::from_static("search.shop"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(XFCC, HeaderValue::from_static("By=a;URI=b"));
        h.insert("x-drop", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h[header::HOST], "search.shop");
        assert_eq!(h[header::CONTENT_LENGTH], "0");
        assert_eq!(h[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(h[XFCC], "By=a;URI=b");
        assert!(h.get("x-drop").is_none());
    }

    #[tokio::test]
    async fn unavailability_bodies_name_no_address_identity_or_cause() {
        use http_body_util::BodyExt;
        let failures = [
            Failure::PeerUnavailable {
                peer: "127.0.0.9:15006 (spiffe://cluster.local/ns/shop/sa/search)".into(),
                reason: "connect: Connection refused (os error 111)".into(),
            },
            Failure::AppUnavailable {
                port: 8080,
                reason: "client error (Connect): tcp connect error: 10.0.0.1:8080".into(),
            },
        ];
        for failure in failures {
            let response = failure.into_response(false);
            assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"502 Bad Gateway: upstream unavailable\n");
        }
        let grpc = Failure::PeerUnavailable {
            peer: "127.0.0.9:15006".into(),
            reason: "refused".into(),
        }
        .into_response(true);
        assert_eq!(grpc.headers()["grpc-message"], "upstream unavailable");
        assert_eq!(grpc.headers()["grpc-status"], "14");
    }

    #[test]
    fn refused_methods_answer_405_with_allow() {
        let r = Failure::MethodNotAllowed("CONNECT".into()).into_response(false);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(
            !r.headers()[header::ALLOW]
                .to_str()
                .unwrap()
                .contains("CONNECT")
        );
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode_grpc("a b%c\n"), "a b%25c%0A");
    }
}
