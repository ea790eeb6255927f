//! SPIFFE IDs (`spiffe://<trust-domain>/<path>`), parsed once and valid by construction.
//!
//! Rules follow the SPIFFE ID specification: lower-case scheme `spiffe`, a trust domain of
//! `[a-z0-9._-]` (no port, no user info), a path of non-empty segments of
//! `[A-Za-z0-9._-]` that are neither `.` nor `..`, no query, no fragment, no
//! percent-encoding, at most 2048 bytes. Anything else is rejected, never normalised.

use std::fmt;
use std::str::FromStr;

/// Longest SPIFFE ID accepted, in bytes (SPIFFE ID spec, section 2.3).
const MAX_ID_LEN: usize = 2048;
/// Longest trust domain name accepted, in bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a valid SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The string is empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The scheme is not exactly `spiffe://`.
    #[error("{0:?}: scheme must be \"spiffe://\" (lower case)")]
    WrongScheme(String),
    /// No trust domain after the scheme.
    #[error("{0:?}: trust domain is missing")]
    MissingTrustDomain(String),
    /// The trust domain has a character outside `[a-z0-9._-]` (this includes ports and user info).
    #[error(
        "{id:?}: trust domain has a character that is not allowed: {ch:?} (allowed: a-z 0-9 . - _)"
    )]
    BadTrustDomainChar {
        /// The whole input.
        id: String,
        /// The offending character.
        ch: char,
    },
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is longer than 255 bytes")]
    TrustDomainTooLong,
    /// A path segment is empty (`//` or a trailing `/`).
    #[error("{0:?}: path has an empty segment")]
    EmptySegment(String),
    /// A path segment is `.` or `..`.
    #[error("{0:?}: path has a relative segment (\".\" or \"..\")")]
    DotSegment(String),
    /// A path character outside `[A-Za-z0-9._-]` (this includes `%`, `?`, `#`).
    #[error(
        "{id:?}: path has a character that is not allowed: {ch:?} (allowed: A-Z a-z 0-9 . - _)"
    )]
    BadPathChar {
        /// The whole input.
        id: String,
        /// The offending character.
        ch: char,
    },
    /// Longer than 2048 bytes.
    #[error("SPIFFE ID is longer than 2048 bytes")]
    TooLong,
    /// A workload identity needs a path (`spiffe://td` alone names the trust domain).
    #[error("{0:?}: a workload identity needs a path")]
    MissingPath(String),
}

/// A SPIFFE trust domain name, e.g. `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (no scheme).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        check_trust_domain(name, name)?;
        Ok(Self(name.to_owned()))
    }

    /// The name, e.g. `cluster.local`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A valid SPIFFE ID with a non-empty path: the identity of a workload.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    id: String,
    /// Byte offset where the path (leading `/`) starts.
    path_start: usize,
}

const SCHEME: &str = "spiffe://";

impl SpiffeId {
    /// Parses and validates a SPIFFE ID; the path must not be empty.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if input.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeIdError::WrongScheme(input.to_owned()))?;
        let (domain, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        check_trust_domain(domain, input)?;
        if path.is_empty() {
            return Err(SpiffeIdError::MissingPath(input.to_owned()));
        }
        check_path(path, input)?;
        Ok(Self {
            id: input.to_owned(),
            path_start: SCHEME.len() + domain.len(),
        })
    }

    /// The identity of a Kubernetes-style workload: `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn for_service_account(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        let id = format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}");
        // A `/` inside a name would add path segments and yield an identity of another shape.
        if namespace.contains('/') || service_account.contains('/') {
            return Err(SpiffeIdError::BadPathChar { id, ch: '/' });
        }
        Self::parse(&id)
    }

    /// The trust domain part, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..self.path_start]
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// The namespace of an `/ns/<ns>/sa/<sa>` identity.
    pub fn namespace(&self) -> Option<&str> {
        self.ns_sa().map(|(ns, _)| ns)
    }

    /// The service account of an `/ns/<ns>/sa/<sa>` identity.
    pub fn service_account(&self) -> Option<&str> {
        self.ns_sa().map(|(_, sa)| sa)
    }

    fn ns_sa(&self) -> Option<(&str, &str)> {
        let mut parts = self.path().strip_prefix('/')?.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn check_trust_domain(domain: &str, whole: &str) -> Result<(), SpiffeIdError> {
    if domain.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain(whole.to_owned()));
    }
    if domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    if let Some(ch) = domain
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(SpiffeIdError::BadTrustDomainChar {
            id: whole.to_owned(),
            ch,
        });
    }
    Ok(())
}

fn check_path(path: &str, whole: &str) -> Result<(), SpiffeIdError> {
    // `path` starts with '/', so the first split element is the empty prefix.
    for segment in path.split('/').skip(1) {
        if segment.is_empty() {
            return Err(SpiffeIdError::EmptySegment(whole.to_owned()));
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment(whole.to_owned()));
        }
        if let Some(ch) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(SpiffeIdError::BadPathChar {
                id: whole.to_owned(),
                ch,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/search").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/shop/sa/search");
        assert_eq!(id.namespace(), Some("shop"));
        assert_eq!(id.service_account(), Some("search"));
        let other = SpiffeId::parse("spiffe://example.org/a/B_c/d-e.f").unwrap();
        assert_eq!(other.namespace(), None);
    }

    #[test]
    fn rejects_invalid_ids() {
        use SpiffeIdError::*;
        type Case = (&'static str, fn(&SpiffeIdError) -> bool);
        let cases: &[Case] = &[
            ("", |e| matches!(e, Empty)),
            ("SPIFFE://cluster.local/a", |e| matches!(e, WrongScheme(_))),
            ("https://cluster.local/a", |e| matches!(e, WrongScheme(_))),
            ("spiffe:///a", |e| matches!(e, MissingTrustDomain(_))),
            ("spiffe://Cluster.local/a", |e| {
                matches!(e, BadTrustDomainChar { ch: 'C', .. })
            }),
            ("spiffe://cluster.local:8080/a", |e| {
                matches!(e, BadTrustDomainChar { ch: ':', .. })
            }),
            ("spiffe://user@cluster.local/a", |e| {
                matches!(e, BadTrustDomainChar { ch: '@', .. })
            }),
            ("spiffe://cluster.local", |e| matches!(e, MissingPath(_))),
            ("spiffe://cluster.local/", |e| matches!(e, EmptySegment(_))),
            ("spiffe://cluster.local/ns//sa", |e| {
                matches!(e, EmptySegment(_))
            }),
            ("spiffe://cluster.local/ns/a/", |e| {
                matches!(e, EmptySegment(_))
            }),
            ("spiffe://cluster.local/ns/./a", |e| {
                matches!(e, DotSegment(_))
            }),
            ("spiffe://cluster.local/ns/../a", |e| {
                matches!(e, DotSegment(_))
            }),
            ("spiffe://cluster.local/ns/a%20b", |e| {
                matches!(e, BadPathChar { ch: '%', .. })
            }),
            ("spiffe://cluster.local/ns/a?x=1", |e| {
                matches!(e, BadPathChar { ch: '?', .. })
            }),
            ("spiffe://cluster.local/ns/a#frag", |e| {
                matches!(e, BadPathChar { ch: '#', .. })
            }),
            ("spiffe://cluster.local/ns/*", |e| {
                matches!(e, BadPathChar { ch: '*', .. })
            }),
        ];
        for (input, expected) in cases {
            let err = SpiffeId::parse(input).expect_err(input);
            assert!(expected(&err), "{input}: unexpected error {err:?}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(2040));
        assert_eq!(SpiffeId::parse(&long), Err(TooLong));
    }

    #[test]
    fn builds_service_account_ids() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let id = SpiffeId::for_service_account(&td, "shop", "payments").unwrap();
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/shop/sa/payments");
        assert!(SpiffeId::for_service_account(&td, "shop", "a/b/../c").is_err());
        assert!(TrustDomain::new("Bad").is_err());
    }
}
