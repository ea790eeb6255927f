//! The authority a request names, read once per request for both directions, and the one
//! place a request's URI is rebuilt around it for the next hop.
//!
//! The authority comes from the URI (absolute form, or HTTP/2 `:authority`, which hyper
//! puts in the URI) and from the `Host` header. It is canonical, so authorization, Service
//! lookup and the app all read the same value: host lower-cased, one trailing dot removed,
//! the port as a decimal number. Anything that leaves room for two readings is refused
//! ([`AuthorityError`], answered 400): a second `Host` line, a `Host` that differs from the
//! URI's authority (absolute form, or h2 `:authority`), and userinfo (`user@host`).

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
    /// More than one `Host` header.
    #[error("more than one Host header")]
    DuplicateHost,
    /// The URI's authority (absolute form or `:authority`) and the `Host` header differ.
    #[error("the request target names {uri:?} and the Host header {host:?}")]
    Conflict {
        /// The URI's authority, canonical.
        uri: String,
        /// The `Host` header's, canonical.
        host: String,
    },
    /// The authority carries userinfo (`user@host`), which HTTP forbids (RFC 9110 4.2.4).
    #[error("authority {0:?} carries userinfo")]
    Userinfo(String),
}

impl From<AuthorityError> for Failure {
    fn from(e: AuthorityError) -> Self {
        match e {
            AuthorityError::Missing => Failure::NoDestination,
            AuthorityError::NotText(raw) | AuthorityError::Malformed(raw) => {
                Failure::BadAuthority(raw)
            }
            e @ (AuthorityError::DuplicateHost
            | AuthorityError::Conflict { .. }
            | AuthorityError::Userinfo(_)) => Failure::AmbiguousAuthority(e.to_string()),
        }
    }
}

/// The canonical authority of a request: the URI's and the `Host` header's, which must
/// agree when both are present.
pub fn of(uri: &Uri, headers: &HeaderMap) -> Result<Authority, AuthorityError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(AuthorityError::DuplicateHost);
    }
    let from_host = match host {
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| AuthorityError::NotText(format!("{value:?}")))?;
            let parsed = text
                .parse::<Authority>()
                .map_err(|_| AuthorityError::Malformed(text.to_owned()))?;
            Some(canonical(&parsed)?)
        }
        None => None,
    };
    let from_uri = uri.authority().map(canonical).transpose()?;
    match (from_uri, from_host) {
        (Some(uri), Some(host)) if uri != host => Err(AuthorityError::Conflict {
            uri: uri.to_string(),
            host: host.to_string(),
        }),
        (Some(authority), _) | (None, Some(authority)) => Ok(authority),
        (None, None) => Err(AuthorityError::Missing),
    }
}

/// `host[:port]` with the host lower-cased and one trailing dot removed, the port as a
/// decimal number in 1..=65535; userinfo and empty hosts refused.
pub fn canonical(authority: &Authority) -> Result<Authority, AuthorityError> {
    let raw = authority.as_str();
    if raw.contains('@') {
        return Err(AuthorityError::Userinfo(raw.to_owned()));
    }
    let malformed = || AuthorityError::Malformed(raw.to_owned());
    let full_host = authority.host();
    // Without userinfo the text is `host` then nothing or `:port`; the http crate leaves a
    // port that is not a number unchecked, so it is read here.
    let port_text = raw.get(full_host.len()..).ok_or_else(malformed)?;
    let port = match port_text.strip_prefix(':') {
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => Some(
            digits
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(malformed)?,
        ),
        None if port_text.is_empty() => None,
        _ => return Err(malformed()),
    };
    let host = full_host.strip_suffix('.').unwrap_or(full_host);
    if host.is_empty() || host.ends_with('.') {
        return Err(malformed());
    }
    let mut text = host.to_ascii_lowercase();
    if let Some(port) = port {
        text.push(':');
        text.push_str(&port.to_string());
    }
    if text == raw {
        // Already canonical: cloning shares its bytes.
        return Ok(authority.clone());
    }
    text.parse().map_err(|_| malformed())
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
    fn the_uri_authority_and_the_host_header_must_agree() {
        let a = of_request("http://search.shop:7000/x", Some(b"search.shop:7000"));
        assert_eq!(host_port(a), ("search.shop".into(), Some(7000)));
        // Equal once canonical.
        let a = of_request("http://Search.Shop.:7000/x", Some(b"search.shop:07000"));
        assert_eq!(host_port(a), ("search.shop".into(), Some(7000)));
        // Absolute form without a Host header (HTTP/2 `:authority` arrives the same way).
        let a = of_request("http://payments.shop/", None);
        assert_eq!(host_port(a), ("payments.shop".into(), None));
        assert_eq!(
            of_request("http://search.shop:7000/x", Some(b"admin.shop:7000")),
            Err(AuthorityError::Conflict {
                uri: "search.shop:7000".into(),
                host: "admin.shop:7000".into()
            })
        );
        assert!(matches!(
            of_request("http://search.shop/", Some(b"search.shop:80")),
            Err(AuthorityError::Conflict { .. })
        ));
    }

    #[test]
    fn a_second_host_line_is_refused() {
        let mut headers = HeaderMap::new();
        headers.append(header::HOST, HeaderValue::from_static("search.shop"));
        headers.append(header::HOST, HeaderValue::from_static("search.shop"));
        assert_eq!(
            of(&"/".parse().unwrap(), &headers),
            Err(AuthorityError::DuplicateHost)
        );
    }

    #[test]
    fn userinfo_is_refused_in_the_uri_and_the_host_header() {
        assert_eq!(
            of_request("/", Some(b"admin@search.shop")),
            Err(AuthorityError::Userinfo("admin@search.shop".into()))
        );
        assert!(matches!(
            of_request("http://a:b@search.shop/", None),
            Err(AuthorityError::Userinfo(_))
        ));
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
    fn the_value_is_canonical() {
        let a = of_request("/", Some(b"Search.Shop.:8080")).unwrap();
        assert_eq!(a.as_str(), "search.shop:8080");
        let a = of_request("/", Some(b"[FD00::1]:081")).unwrap();
        assert_eq!(a.as_str(), "[fd00::1]:81");
        let a = of_request("/", Some(b"search.shop")).unwrap();
        assert_eq!(a.as_str(), "search.shop");
    }

    #[test]
    fn bad_values_are_malformed_and_carry_the_text() {
        for bad in [
            "bad host:1",
            "",
            "[::1",
            "a/b",
            "a:1:2",
            "search.shop:port",
            "search.shop:0",
            "search.shop:65536",
            "search.shop:",
            ".",
            "a..",
            ":80",
        ] {
            assert_eq!(
                of_request("/", Some(bad.as_bytes())),
                Err(AuthorityError::Malformed(bad.to_owned())),
                "{bad:?}"
            );
        }
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
            Failure::from(AuthorityError::DuplicateHost),
            Failure::AmbiguousAuthority(_)
        ));
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
