//! Compiled matchers: string matches, hosts, IP blocks. Each is parsed once when a snapshot
//! is converted, so matching a request compares bytes and never allocates.

use std::borrow::Cow;
use std::net::IpAddr;

use palisade_proto::v1::{self, string_match::Kind};

/// Why a single match value is unusable; becomes the message of a NACK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMatch {
    /// The `StringMatch` has no kind set.
    #[error("string match has no kind (exact, prefix, suffix or presence)")]
    NoKind,
    /// `presence: false` has no meaning in Istio's match forms.
    #[error("presence: false is not a match (leave the field out instead)")]
    PresenceFalse,
    /// Not an IP address or CIDR.
    #[error("{0:?} is not an IP address or CIDR")]
    BadCidr(String),
    /// Not a port number.
    #[error("{0} is not a port (1-65535)")]
    BadPort(String),
    /// A path template outside `paths`/`not_paths`.
    #[error("a path template is only allowed in paths and not_paths")]
    TemplateOutsidePaths,
    /// A malformed path template.
    #[error("path template {template:?}: {reason}")]
    PathTemplate {
        /// The template as written.
        template: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The attribute takes exact values (or presence) only.
    #[error("{attribute} takes exact values (or \"*\") only, not a prefix or suffix match")]
    ExactOnly {
        /// The attribute, e.g. `source.ip`.
        attribute: &'static str,
    },
}

/// Istio's string match forms, on bytes (header values need not be UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StringMatcher {
    /// The whole value.
    Exact(Box<[u8]>),
    /// Starts with.
    Prefix(Box<[u8]>),
    /// Ends with.
    Suffix(Box<[u8]>),
    /// Any value, when the attribute is present.
    Presence,
    /// A path template (`paths`/`not_paths` only).
    Template(PathTemplate),
}

impl StringMatcher {
    /// Compiles a proto match; with `lowercase` the pattern is lower-cased for
    /// case-insensitive use ([`StringMatcher::matches_ignore_case`]).
    pub(crate) fn compile(m: &v1::StringMatch, lowercase: bool) -> Result<Self, InvalidMatch> {
        let bytes = |s: &str| -> Box<[u8]> {
            if lowercase {
                s.to_ascii_lowercase().into_bytes().into()
            } else {
                s.as_bytes().into()
            }
        };
        match &m.kind {
            Some(Kind::Exact(s)) => Ok(Self::Exact(bytes(s))),
            Some(Kind::Prefix(s)) => Ok(Self::Prefix(bytes(s))),
            Some(Kind::Suffix(s)) => Ok(Self::Suffix(bytes(s))),
            Some(Kind::Presence(true)) => Ok(Self::Presence),
            Some(Kind::Presence(false)) => Err(InvalidMatch::PresenceFalse),
            Some(Kind::PathTemplate(_)) => Err(InvalidMatch::TemplateOutsidePaths),
            None => Err(InvalidMatch::NoKind),
        }
    }

    /// Compiles a `paths`/`not_paths` entry, where path templates are allowed.
    pub(crate) fn compile_path(m: &v1::StringMatch) -> Result<Self, InvalidMatch> {
        match &m.kind {
            Some(Kind::PathTemplate(t)) => PathTemplate::parse(t).map(Self::Template),
            _ => Self::compile(m, false),
        }
    }

    /// Case-sensitive match.
    pub(crate) fn matches(&self, value: &[u8]) -> bool {
        match self {
            Self::Exact(p) => value == &**p,
            Self::Prefix(p) => value.starts_with(p),
            Self::Suffix(p) => value.ends_with(p),
            Self::Presence => true,
            Self::Template(t) => t.matches(value),
        }
    }

    /// ASCII case-insensitive match; the pattern was lower-cased at compile time.
    pub(crate) fn matches_ignore_case(&self, value: &[u8]) -> bool {
        match self {
            Self::Exact(p) => value.eq_ignore_ascii_case(p),
            Self::Prefix(p) => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            Self::Suffix(p) => value
                .len()
                .checked_sub(p.len())
                .is_some_and(|start| value[start..].eq_ignore_ascii_case(p)),
            Self::Presence => true,
            // Never compiled for a case-insensitive attribute (`compile` refuses templates).
            Self::Template(t) => t.matches(value),
        }
    }
}

/// One piece of a [`PathTemplate`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Bytes that must be there as written (segments and their `/`).
    Literal(Box<[u8]>),
    /// `{*}`: one or more pchar characters, never `/`.
    One,
    /// `{**}`: any run of pchar characters and `/` (the last operator).
    Any,
}

/// A path template as Envoy's URI template matcher (which Istio uses) reads it: `{*}`
/// matches one non-empty segment, `{**}` any run of characters including `/`, and only
/// literals may follow `{**}`. The whole normalised path must match. Parsed with Istio's
/// validation: operators are whole segments, `{**}` is the last operator, every other
/// segment is a non-empty literal of RFC 3986 pchar characters (no `*`, `{`, `}`, `?`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathTemplate(Box<[Piece]>);

/// RFC 3986 pchar, as Envoy's URI templates define a literal (`%` stands for its escapes).
fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b)
}

impl PathTemplate {
    /// Parses and validates a template such as `/users/{*}/orders/{**}`.
    pub(crate) fn parse(text: &str) -> Result<Self, InvalidMatch> {
        let bad = |reason| InvalidMatch::PathTemplate {
            template: text.to_owned(),
            reason,
        };
        if !text.contains("{*}") && !text.contains("{**}") {
            return Err(bad("holds neither {*} nor {**}"));
        }
        let Some(body) = text.strip_prefix('/') else {
            return Err(bad("must start with '/'"));
        };
        // A trailing '/' is a literal of its own; the segments lie between.
        let (body, trailing_slash) = match body.strip_suffix('/') {
            Some(b) => (b, true),
            None => (body, false),
        };
        let mut pieces = Vec::new();
        let mut literal: Vec<u8> = Vec::new();
        let mut seen_any = false;
        for segment in body.split('/') {
            literal.push(b'/');
            match segment {
                "{*}" | "{**}" if seen_any => return Err(bad("{**} must be the last operator")),
                "{*}" | "{**}" => {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal).into()));
                    if segment == "{**}" {
                        seen_any = true;
                        pieces.push(Piece::Any);
                    } else {
                        pieces.push(Piece::One);
                    }
                }
                s if s.contains(['{', '}']) => {
                    return Err(bad(
                        "'{' and '}' are only allowed in whole {*} or {**} segments",
                    ));
                }
                s if s.is_empty() || !s.bytes().all(is_pchar) => {
                    return Err(bad(
                        "every other segment must be a non-empty literal of letters, digits and                          -._~%!$&'()+,;:@= (no '*')",
                    ));
                }
                s => literal.extend_from_slice(s.as_bytes()),
            }
        }
        if trailing_slash {
            literal.push(b'/');
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal.into()));
        }
        Ok(Self(pieces.into()))
    }

    /// Whether the whole (normalised, query-less) path matches.
    pub(crate) fn matches(&self, path: &[u8]) -> bool {
        let mut rest = path;
        for (i, piece) in self.0.iter().enumerate() {
            match piece {
                Piece::Literal(l) => match rest.strip_prefix(&**l) {
                    Some(r) => rest = r,
                    None => return false,
                },
                // Greedy is exact: pchar has no '/', and what follows `{*}` starts with one.
                Piece::One => {
                    let n = rest.iter().take_while(|b| is_pchar(**b)).count();
                    if n == 0 {
                        return false;
                    }
                    rest = &rest[n..];
                }
                Piece::Any => {
                    let tail: &[u8] = match self.0.get(i + 1..) {
                        Some([]) | None => b"",
                        Some([Piece::Literal(l)]) => l,
                        // `parse` never puts an operator after `{**}`.
                        Some(_) => return false,
                    };
                    return rest.len() >= tail.len()
                        && rest.ends_with(tail)
                        && rest[..rest.len() - tail.len()]
                            .iter()
                            .all(|b| is_pchar(*b) || *b == b'/');
                }
            }
        }
        rest.is_empty()
    }
}

/// Splits `host:port` into (`host`, `port`); `None` if there is no port.
pub(crate) fn split_port(authority: &str) -> Option<(&str, &str)> {
    let (host, port) = authority.rsplit_once(':')?;
    let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    // "::1" is not "host ':' port": outside brackets a host never contains ':'.
    let host_ok = !host.contains(':') || (host.starts_with('[') && host.ends_with(']'));
    (digits && host_ok).then_some((host, port))
}

/// A `hosts` entry, as Istio reads it: Istio's string match forms against the whole
/// authority, case-insensitively. An exact host does not match its `host:port` form
/// (`example.com` does not match `example.com:8080`); `example.com:*` (a prefix) matches
/// it on any port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostMatcher(StringMatcher);

impl HostMatcher {
    pub(crate) fn compile(m: &v1::StringMatch) -> Result<Self, InvalidMatch> {
        StringMatcher::compile(m, true).map(Self)
    }

    /// `authority` is the canonical authority ([`canonical_authority`]).
    pub(crate) fn matches(&self, authority: &str) -> bool {
        self.0.matches_ignore_case(authority.as_bytes())
    }
}

/// The authority the app receives, as `hosts` rules see it: the host's trailing dot is
/// dropped (`example.com.:80` is `example.com:80`), the port is kept; letter case does not
/// matter to the matchers. Borrows unless there is a dot to drop.
pub(crate) fn canonical_authority(authority: &str) -> Cow<'_, str> {
    let (host, port) = match split_port(authority) {
        Some((host, _)) => (host, &authority[host.len()..]),
        None => (authority, ""),
    };
    match host.strip_suffix('.') {
        Some(stripped) if !stripped.is_empty() => Cow::Owned(format!("{stripped}{port}")),
        _ => Cow::Borrowed(authority),
    }
}

/// An IP block: a CIDR or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpNet {
    network: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `10.0.0.0/8`, `fd00::/8` or a single address; host bits are masked off.
    pub(crate) fn parse(text: &str) -> Result<Self, InvalidMatch> {
        let bad = || InvalidMatch::BadCidr(text.to_owned());
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (
                a.parse::<IpAddr>().map_err(|_| bad())?,
                Some(p.parse::<u8>().map_err(|_| bad())?),
            ),
            None => (text.parse::<IpAddr>().map_err(|_| bad())?, None),
        };
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Self {
            network: mask(addr, prefix),
            prefix,
        })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix) == self.network
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

/// A port value of a condition: a number or presence.
pub(crate) fn parse_port(text: &str) -> Result<u16, InvalidMatch> {
    text.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| InvalidMatch::BadPort(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm(kind: Kind) -> v1::StringMatch {
        v1::StringMatch { kind: Some(kind) }
    }

    #[test]
    fn string_forms() {
        let exact = StringMatcher::compile(&sm(Kind::Exact("GET".into())), false).unwrap();
        assert!(exact.matches(b"GET"));
        assert!(!exact.matches(b"get"));
        assert!(!exact.matches(b"GETX"));
        let prefix = StringMatcher::compile(&sm(Kind::Prefix("/api/".into())), false).unwrap();
        assert!(prefix.matches(b"/api/x"));
        assert!(!prefix.matches(b"/ap"));
        let suffix = StringMatcher::compile(&sm(Kind::Suffix(".png".into())), false).unwrap();
        assert!(suffix.matches(b"/a.png"));
        assert!(!suffix.matches(b"/a.jpg"));
        let any = StringMatcher::compile(&sm(Kind::Presence(true)), false).unwrap();
        assert!(any.matches(b""));
        assert_eq!(
            StringMatcher::compile(&sm(Kind::Presence(false)), false),
            Err(InvalidMatch::PresenceFalse)
        );
        assert_eq!(
            StringMatcher::compile(&v1::StringMatch { kind: None }, false),
            Err(InvalidMatch::NoKind)
        );
    }

    #[test]
    fn hosts_are_case_insensitive_and_exact_about_ports() {
        let h = |k| HostMatcher::compile(&sm(k)).unwrap();
        let exact = h(Kind::Exact("Search.Shop".into()));
        assert!(exact.matches("search.shop"));
        assert!(exact.matches("SEARCH.SHOP"));
        // Istio: an exact host does not match its host:port form.
        assert!(!exact.matches("search.shop:8080"));
        assert!(!exact.matches("search.shop.evil"));
        let any_port = h(Kind::Prefix("search.shop:".into()));
        assert!(any_port.matches("Search.Shop:8080"));
        assert!(!any_port.matches("search.shop"));
        let with_port = h(Kind::Exact("search.shop:8080".into()));
        assert!(with_port.matches("search.shop:8080"));
        assert!(!with_port.matches("search.shop:9090"));
        assert!(!with_port.matches("search.shop"));
        let suffix = h(Kind::Suffix(".shop".into()));
        assert!(suffix.matches("a.SHOP"));
        assert!(!suffix.matches("a.shop:80"));
    }

    #[test]
    fn canonical_authority_drops_the_trailing_dot_only() {
        assert_eq!(canonical_authority("a.shop"), "a.shop");
        assert_eq!(canonical_authority("a.shop."), "a.shop");
        assert_eq!(canonical_authority("A.Shop.:8080"), "A.Shop:8080");
        assert_eq!(canonical_authority("[::1]:80"), "[::1]:80");
        assert_eq!(canonical_authority("."), ".");
        assert!(matches!(canonical_authority("a:1"), Cow::Borrowed(_)));
    }

    #[test]
    fn path_templates_match_as_envoy_reads_them() {
        let t = |s: &str| PathTemplate::parse(s).unwrap();
        // The examples of Istio's documentation.
        let one = t("/foo/{*}");
        assert!(one.matches(b"/foo/bar"));
        assert!(!one.matches(b"/foo/bar/baz"));
        assert!(!one.matches(b"/foo/"));
        assert!(!one.matches(b"/foo"));
        let any_slash = t("/foo/{**}/");
        assert!(any_slash.matches(b"/foo/bar/"));
        assert!(any_slash.matches(b"/foo//"));
        assert!(any_slash.matches(b"/foo/bar/baz/"));
        assert!(!any_slash.matches(b"/foo/bar"));
        let both = t("/foo/{*}/bar/{**}");
        assert!(both.matches(b"/foo/buzz/bar/"));
        assert!(both.matches(b"/foo/buzz/bar/baz"));
        assert!(both.matches(b"/foo/buzz/bar/baz/qux"));
        assert!(!both.matches(b"/foo/buzz/bar"));
        assert!(!both.matches(b"/foo/a/b/bar/baz"));
        let middle = t("/api/{**}/admin");
        assert!(middle.matches(b"/api/v1/x/admin"));
        assert!(middle.matches(b"/api//admin"));
        assert!(!middle.matches(b"/api/v1/admin/x"));
        let first = t("/{*}/admin");
        assert!(first.matches(b"/tenant-1/admin"));
        assert!(!first.matches(b"//admin"));
        // Characters outside pchar never match an operator (as Envoy's regex).
        assert!(!one.matches(b"/foo/a*b"));
        assert!(t("/{**}").matches(b"/"));
        assert!(t("/{**}").matches(b"/any/thing"));
    }

    #[test]
    fn malformed_path_templates_are_rejected_as_istio_does() {
        for bad in [
            "/foo/{**}buzz/bar",
            "/{*}/foo/{}/bar",
            "/foo/{*}/bar/*",
            "/foo/{*}/bar/**/buzz",
            "/foo/{buzz}/bar/{**}",
            "/foo/{buzz=*}/bar/{**}",
            "/{*}/foo/{**}bar",
            "/{*}/foo/{*}.txt",
            "/{*}/foo/{temp",
            "/{*}/foo/temp}/bar",
            "/{**}/foo/temp/{*}/bar",
            "/{**}/{**}",
            "/{*}/foo/?abc",
            "/{*}//foo",
            "{*}/foo",
            "/foo/bar",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad:?}");
        }
        for good in [
            "/{*}/foo",
            "/{*}/foo/",
            "/foo/{**}/bar",
            "/foo/bar/{**}",
            "/a=b/{*}",
        ] {
            assert!(PathTemplate::parse(good).is_ok(), "{good:?}");
        }
        let template = v1::StringMatch {
            kind: Some(Kind::PathTemplate("/{*}".into())),
        };
        assert_eq!(
            StringMatcher::compile(&template, false),
            Err(InvalidMatch::TemplateOutsidePaths)
        );
        assert!(StringMatcher::compile_path(&template).is_ok());
    }

    #[test]
    fn split_port_handles_ipv6() {
        assert_eq!(split_port("a:80"), Some(("a", "80")));
        assert_eq!(split_port("[::1]:80"), Some(("[::1]", "80")));
        assert_eq!(split_port("[::1]"), None);
        assert_eq!(split_port("::1"), None);
        assert_eq!(split_port("a:"), None);
        assert_eq!(split_port("a"), None);
    }

    #[test]
    fn ip_blocks() {
        let net = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = IpNet::parse("192.168.0.7").unwrap();
        assert!(one.contains("192.168.0.7".parse().unwrap()));
        assert!(!one.contains("192.168.0.8".parse().unwrap()));
        let host_bits = IpNet::parse("10.1.2.3/8").unwrap();
        assert!(host_bits.contains("10.200.0.1".parse().unwrap()));
        let all = IpNet::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(!all.contains("::1".parse().unwrap()));
        let v6 = IpNet::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "x",
            "",
            "10.0.0.0/-1",
        ] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
    }
}
