//! The authority a request names, read once per request for both directions, and the one
//! place a request's URI is rebuilt around it for the next hop.
//!
//! The authority comes from the URI (absolute form, or HTTP/2 `:authority`, which hyper
//! puts in the URI), else from the `Host` header. It is taken as sent: no lower-casing, no
//! trailing-dot or default-port handling; whoever matches on it (authorization, Service
//! lookup) keeps its own rules for that.

use http::uri::{self, Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Uri, header};

use crate::http::Failure;

/// Why a request has no usable authority.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// Neither the URI nor a `Host` header names one.
    #[error("request names no authority")]
    Missing,
    /// The `Host` header holds bytes that are not visible ASCII; the value is its escaped
    /// (`Debug`) rendering, since it cannot be shown as sent.
    #[error("Host header {0} is not text")]
    NotText(String),
    /// The value, as sent, does not parse as `host[:port]`.
    #[error("invalid authority {0:?}")]
    Malformed(String),
}

impl From<AuthorityError> for Failure {
    fn from(e: AuthorityError) -> Self {
        match e {
            AuthorityError::Missing => Failure::NoDestination,
            AuthorityError::NotText(raw) | AuthorityError::Malformed(raw) => {
                Failure::BadAuthority(raw)
            }
        }
    }
}

/// The authority of a request: the URI's, else the `Host` header's.
pub fn of(uri: &Uri, headers: &HeaderMap) -> Result<Authority, AuthorityError> {
    if let Some(authority) = uri.authority() {
        // Already parsed by hyper; cloning shares its bytes.
        return Ok(authority.clone());
    }
    let host = headers.get(header::HOST).ok_or(AuthorityError::Missing)?;
    let text = host
        .to_str()
        .map_err(|_| AuthorityError::NotText(format!("{host:?}")))?;
    text.parse::<Authority>()
        .map_err(|_| AuthorityError::Malformed(text.to_owned()))
}

/// The URI a request is sent on with: `http://<authority>` and its path and query (`/` if
/// it had none). Both directions rebuild a request's URI here, once.
pub fn absolute_uri(
    uri: impl Into<uri::Parts>,
    authority: &Authority,
) -> Result<Uri, AuthorityError> {
    let mut parts = uri.into();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).map_err(|_| AuthorityError::Malformed(authority.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn of_request(uri: &str, host: Option<&[u8]>) -> Result<Authority, AuthorityError> {
        let uri: Uri = uri.parse().unwrap();
        let mut headers = HeaderMap::new();
        if let Some(h) = host {
            headers.insert(header::HOST, HeaderValue::from_bytes(h).unwrap());
        }
        of(&uri, &headers)
    }

    fn host_port(r: Result<Authority, AuthorityError>) -> (String, Option<u16>) {
        let a = r.unwrap();
        (a.host().to_owned(), a.port_u16())
    }

    #[test]
    fn the_uri_authority_wins_over_the_host_header() {
        let a = of_request("http://search.shop:7000/x", Some(b"search.shop:8080"));
        assert_eq!(host_port(a), ("search.shop".into(), Some(7000)));
        // Absolute form without a Host header (HTTP/2 `:authority` arrives the same way).
        let a = of_request("http://payments.shop/", None);
        assert_eq!(host_port(a), ("payments.shop".into(), None));
    }

    #[test]
    fn origin_form_takes_the_host_header_with_or_without_a_port() {
        let a = of_request("/", Some(b"search.shop:8080"));
        assert_eq!(host_port(a), ("search.shop".into(), Some(8080)));
        let a = of_request("/", Some(b"10.0.0.1:9090"));
        assert_eq!(host_port(a), ("10.0.0.1".into(), Some(9090)));
        let a = of_request("/", Some(b"search.shop"));
        assert_eq!(host_port(a), ("search.shop".into(), None));
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets() {
        let a = of_request("/", Some(b"[::1]:81"));
        assert_eq!(host_port(a), ("[::1]".into(), Some(81)));
        let a = of_request("/", Some(b"[fd00::1]"));
        assert_eq!(host_port(a), ("[fd00::1]".into(), None));
    }

    #[test]
    fn the_value_is_kept_as_sent() {
        // Case and a trailing dot are left to whoever matches on the authority.
        let a = of_request("/", Some(b"Search.Shop.:8080")).unwrap();
        assert_eq!(a.as_str(), "Search.Shop.:8080");
        assert_eq!(a.host(), "Search.Shop.");
    }

    #[test]
    fn bad_values_are_malformed_and_carry_the_text() {
        for bad in ["bad host:1", "", "[::1", "a/b", "a:1:2"] {
            assert_eq!(
                of_request("/", Some(bad.as_bytes())),
                Err(AuthorityError::Malformed(bad.to_owned())),
                "{bad:?}"
            );
        }
        // The http crate checks a port's digits only when asked for it: such a value is
        // accepted, with no port (as before this parser; hardening is a later change).
        let lax = of_request("/", Some(b"search.shop:port")).unwrap();
        assert_eq!((lax.host(), lax.port_u16()), ("search.shop", None));
        let not_text = of_request("/", Some(b"caf\xe9.shop"));
        assert_eq!(
            not_text,
            Err(AuthorityError::NotText(r#""caf\xe9.shop""#.to_owned()))
        );
    }

    #[test]
    fn a_request_without_uri_authority_or_host_names_none() {
        assert_eq!(of_request("/", None), Err(AuthorityError::Missing));
    }

    #[test]
    fn errors_map_to_the_existing_failures() {
        assert!(matches!(
            Failure::from(AuthorityError::Missing),
            Failure::NoDestination
        ));
        assert!(matches!(
            Failure::from(AuthorityError::Malformed("bad host".into())),
            Failure::BadAuthority(s) if s == "bad host"
        ));
        assert!(matches!(
            Failure::from(AuthorityError::NotText("\"\\xe9\"".into())),
            Failure::BadAuthority(s) if s == "\"\\xe9\""
        ));
    }

    #[test]
    fn the_rebuilt_uri_is_absolute_with_a_path() {
        let authority: Authority = "search.shop:8080".parse().unwrap();
        let origin: Uri = "/a?b=1".parse().unwrap();
        assert_eq!(
            absolute_uri(origin, &authority).unwrap(),
            "http://search.shop:8080/a?b=1"
        );
        // An absolute URI's own authority is replaced by the one chosen.
        let absolute: Uri = "http://other:1/x".parse().unwrap();
        assert_eq!(
            absolute_uri(absolute, &authority).unwrap(),
            "http://search.shop:8080/x"
        );
        // Authority form (no path) gets `/`.
        let bare = uri::Parts::default();
        assert_eq!(
            absolute_uri(bare, &authority).unwrap(),
            "http://search.shop:8080/"
        );
    }
}
