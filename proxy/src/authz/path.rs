//! Request path normalisation for policy matching, as Istio's sidecar does it (CONTRACT):
//! the query string and fragment are dropped, then RFC 3986 section 6.2.2 normalisation —
//! percent-encoded *unreserved* characters are decoded (`%61` → `a`, `%7E` → `~`), the hex
//! digits of every other escape are upper-cased (`%2f` → `%2F`), `\` is read as `/`, and
//! dot segments are resolved (section 5.2.4). `//` is kept and `%2F` stays encoded, because
//! merging or decoding them changes which resource many servers address.
//!
//! The data path goes further, by MeshConfig `pathNormalization` ([`PathOptions`], applied
//! by [`normalize_request`] before authorization, and the result is what the app receives):
//! - `BASE` (the default, Istio's default): the normalisation above.
//! - `MERGE_SLASHES`: then runs of `/` are merged (`//admin` → `/admin`).
//! - `DECODE_AND_MERGE_SLASHES`: `%2F` and `%5C` (any case) are first decoded to `/` and
//!   `\`, then `BASE`, then slashes are merged.
//!
//! With `BASE` and `MERGE_SLASHES`, a path holding an encoded `/` or `\` is refused by
//! default (as Envoy's `REJECT_REQUEST` escaped-slash action): servers disagree on whether
//! `/a%2Fb` is one segment or two, so no policy can be written that covers both readings.
//! MeshConfig `pathNormalization.rejectEscapedSlashes: false` keeps them (still encoded).
//! `NONE` is not offered: the proxy always normalises (Istio's `NONE` is the setting its
//! own documentation lists as vulnerable to CVE-2021-31920).
//!
//! Decisions where the RFC leaves room:
//! - `..` above the root is clamped (`/../a` → `/a`), as RFC 3986 section 5.2.4 and Envoy
//!   do; the request still addresses something under the root, so nothing escapes.
//! - Escapes are decoded before dot segments are resolved, so `/%2e%2e/admin` → `/admin`.
//! - A `%` not followed by two hex digits, or a path that does not start with `/` (or `\`)
//!   — e.g. `*` of `OPTIONS *` — cannot be normalised: [`PathError`]. Policy evaluation then
//!   treats the path as unknown, which no ALLOW path rule matches (fail closed).

use std::borrow::Cow;

/// Why a path cannot be normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (or `\`), e.g. `*` or an authority.
    #[error("path is not absolute (does not start with '/')")]
    NotAbsolute,
    /// A `%` at this byte offset is not followed by two hex digits.
    #[error("invalid percent-encoding at byte {0}")]
    BadPercentEncoding(usize),
    /// An encoded `/` or `\` (`%2F`, `%5C`, any case) at this byte offset, refused by the
    /// mesh's path options.
    #[error("encoded '/' or '\\' at byte {0} is refused")]
    EscapedSlash(usize),
}

/// MeshConfig `pathNormalization.normalization`: how far request paths are normalised
/// before authorization (Istio's `ProxyPathNormalization` names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    /// RFC 3986 normalisation, `\` read as `/` (Istio's default).
    #[default]
    Base,
    /// `BASE`, then runs of `/` merged into one.
    MergeSlashes,
    /// `%2F`/`%5C` decoded, then `MERGE_SLASHES`.
    DecodeAndMergeSlashes,
}

/// How the data path normalises request paths (MeshConfig `pathNormalization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PathOptions {
    /// The normalisation applied.
    pub normalization: PathNormalization,
    /// Whether a path with `%2F` or `%5C` is refused (ignored by `DECODE_AND_MERGE_SLASHES`,
    /// which decodes them).
    pub reject_escaped_slashes: bool,
}

impl Default for PathOptions {
    fn default() -> Self {
        Self {
            normalization: PathNormalization::Base,
            reject_escaped_slashes: true,
        }
    }
}

/// Normalises a request path (without its query) as the mesh's path options say: the path
/// both authorization and the app see. `Cow::Borrowed` when nothing changes.
pub fn normalize_request<'a>(
    raw_path: &'a str,
    options: &PathOptions,
) -> Result<Cow<'a, str>, PathError> {
    let end = raw_path.find(['?', '#']).unwrap_or(raw_path.len());
    let path = &raw_path[..end];
    let decode_slashes = options.normalization == PathNormalization::DecodeAndMergeSlashes;
    let escaped = escaped_slash(path);
    let decoded: Cow<'a, str> = match escaped {
        Some(at) if !decode_slashes && options.reject_escaped_slashes => {
            return Err(PathError::EscapedSlash(at));
        }
        Some(_) if decode_slashes => Cow::Owned(decode_slashes_in(path)),
        _ => Cow::Borrowed(path),
    };
    let base = match decoded {
        Cow::Borrowed(p) => normalized(p)?,
        Cow::Owned(p) => Cow::Owned(normalized(&p)?.into_owned()),
    };
    if options.normalization == PathNormalization::Base || !base.contains("//") {
        return Ok(base);
    }
    let mut merged = String::with_capacity(base.len());
    for c in base.chars() {
        if c == '/' && merged.ends_with('/') {
            continue;
        }
        merged.push(c);
    }
    Ok(Cow::Owned(merged))
}

/// The byte offset of the first `%2F` or `%5C` (any case), if any.
fn escaped_slash(path: &str) -> Option<usize> {
    let bytes = path.as_bytes();
    bytes.windows(3).position(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_uppercase()),
                (b'2', b'F') | (b'5', b'C')
            )
    })
}

/// `%2F` → `/` and `%5C` → `\` (any case); nothing else is decoded here.
fn decode_slashes_in(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = escaped_slash(rest) {
        out.push_str(&rest[..at]);
        out.push(if rest.as_bytes()[at + 1] == b'2' {
            '/'
        } else {
            '\\'
        });
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    out
}

/// Normalises a raw request path (which may carry a query) for policy matching.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    normalized(raw).map(Cow::into_owned)
}

/// Like [`normalize_path`], borrowing from `raw` when nothing changes but the query: the
/// common case costs a scan and no allocation.
pub fn normalized(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let path = &raw[..end];
    if path.is_empty() {
        // Origin-form never has an empty path; an empty one addresses the root.
        return Ok(Cow::Borrowed("/"));
    }
    let bytes = path.as_bytes();
    if bytes[0] != b'/' && bytes[0] != b'\\' {
        return Err(PathError::NotAbsolute);
    }
    // "/." catches every dot segment (and some harmless names such as "/.well-known").
    let needs_work = bytes.iter().any(|b| *b == b'%' || *b == b'\\') || path.contains("/.");
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(bytes)?;
    let out = remove_dot_segments(&decoded);
    // Only ASCII bytes were inserted or replaced, so the UTF-8 of `raw` is intact.
    Ok(Cow::Owned(String::from_utf8_lossy(&out).into_owned()))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 section 2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Percent-decoding of unreserved characters, upper-case hex elsewhere, `\` → `/`.
fn decode(bytes: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::BadPercentEncoding(i));
                };
                let value = hi * 16 + lo;
                if is_unreserved(value) {
                    out.push(value);
                } else {
                    out.push(b'%');
                    out.push(bytes[i + 1].to_ascii_uppercase());
                    out.push(bytes[i + 2].to_ascii_uppercase());
                }
                i += 3;
            }
            b'\\' => {
                out.push(b'/');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// RFC 3986 section 5.2.4 on an absolute path (starts with `/`); empty segments are kept.
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    let rest = path.strip_prefix(b"/").unwrap_or(path);
    let mut segments = rest.split(|b| *b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            b"." => {}
            b".." => {
                // Drop the last output segment; at the root there is none (clamped).
                let cut = out.iter().rposition(|b| *b == b'/').unwrap_or(0);
                out.truncate(cut);
            }
            other => {
                out.push(b'/');
                out.extend_from_slice(other);
                continue;
            }
        }
        if last {
            // A trailing "." or ".." leaves a directory: "/a/b/.." → "/a/".
            out.push(b'/');
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_vectors() {
        let cases: &[(&str, Result<&str, PathError>)] = &[
            // The CONTRACT's vectors.
            ("/a/./b", Ok("/a/b")),
            ("/a/../b", Ok("/b")),
            ("/%61dmin", Ok("/admin")),
            ("/a%2Fb", Ok("/a%2Fb")),
            ("/a//b", Ok("/a//b")),
            ("\\admin", Ok("/admin")),
            ("/admin?x=1", Ok("/admin")),
            // Query and fragment.
            ("/a/b?c=/../d#e", Ok("/a/b")),
            ("/a#frag", Ok("/a")),
            ("?only=query", Ok("/")),
            ("", Ok("/")),
            // Unreserved decoded, reserved kept (hex upper-cased), mixed case hex.
            ("/%7Euser", Ok("/~user")),
            ("/%41%2d%5F%2E", Ok("/A-_.")),
            ("/a%2fb", Ok("/a%2Fb")),
            ("/a%5Cb", Ok("/a%5Cb")),
            ("/a%20b", Ok("/a%20b")),
            ("/a%3f", Ok("/a%3F")),
            // Dot segments, including encoded dots and backslashes.
            ("/a/b/.", Ok("/a/b/")),
            ("/a/b/..", Ok("/a/")),
            ("/a/b/../../..", Ok("/")),
            ("/../admin", Ok("/admin")),
            ("/./admin", Ok("/admin")),
            ("/a/%2e%2e/admin", Ok("/admin")),
            ("/a/%2E/b", Ok("/a/b")),
            ("\\..\\admin", Ok("/admin")),
            ("/a\\..\\b", Ok("/b")),
            ("/a//../b", Ok("/a/b")),
            ("/a/...", Ok("/a/...")),
            ("/a/.b/c", Ok("/a/.b/c")),
            ("/.well-known/x", Ok("/.well-known/x")),
            // gRPC paths are ordinary paths.
            ("/payments.Payments/Charge", Ok("/payments.Payments/Charge")),
            // Non-ASCII passes through untouched.
            ("/caf\u{e9}/./x", Ok("/caf\u{e9}/x")),
            // Cannot be normalised.
            ("/a%zz", Err(PathError::BadPercentEncoding(2))),
            ("/a%4", Err(PathError::BadPercentEncoding(2))),
            ("/a%", Err(PathError::BadPercentEncoding(2))),
            ("*", Err(PathError::NotAbsolute)),
            ("admin", Err(PathError::NotAbsolute)),
        ];
        for (raw, expected) in cases {
            let got = normalize_path(raw);
            assert_eq!(
                got.as_deref(),
                expected.as_ref().map(|s| *s),
                "normalize_path({raw:?})"
            );
        }
    }

    /// Every path of up to four pieces from an alphabet of the tricky parts: whatever is
    /// accepted comes out absolute, without dot segments or query, and is a fixed point.
    #[test]
    fn normalisation_is_idempotent_and_leaves_no_dot_segments() {
        const PIECES: &[&str] = &[
            "/", "a", ".", "..", "%2e", "%2E%2e", "%2F", "%5c", "\\", "%41", "%zz", "?q=/..", "//",
        ];
        let mut checked = 0;
        // (input, pieces used); at most four pieces: 13^4 = 28,561 inputs.
        let mut stack = vec![(String::new(), 0)];
        while let Some((prefix, used)) = stack.pop() {
            for piece in PIECES {
                let input = format!("{prefix}{piece}");
                if used + 1 < 4 {
                    stack.push((input.clone(), used + 1));
                }
                let Ok(once) = normalize_path(&input) else {
                    continue;
                };
                checked += 1;
                assert!(once.starts_with('/'), "{input:?} -> {once:?}");
                assert!(!once.contains(['?', '#', '\\']), "{input:?} -> {once:?}");
                assert!(
                    !once.split('/').any(|s| s == "." || s == ".."),
                    "{input:?} -> {once:?}"
                );
                assert_eq!(
                    normalize_path(&once).as_deref(),
                    Ok(once.as_str()),
                    "{input:?}"
                );
            }
        }
        assert!(checked > 5_000, "only {checked} paths checked");
    }

    #[test]
    fn request_paths_follow_the_mesh_options() {
        use PathNormalization::*;
        let opts = |normalization, reject_escaped_slashes| PathOptions {
            normalization,
            reject_escaped_slashes,
        };
        let cases: &[(PathOptions, &str, Result<&str, PathError>)] = &[
            // BASE (default): `//` and case kept; encoded slashes refused, any case.
            (PathOptions::default(), "//admin", Ok("//admin")),
            (PathOptions::default(), "/ADMIN", Ok("/ADMIN")),
            (PathOptions::default(), "/a/../admin?x=/..", Ok("/admin")),
            (
                PathOptions::default(),
                "/a%2Fb",
                Err(PathError::EscapedSlash(2)),
            ),
            (
                PathOptions::default(),
                "/a%2fb",
                Err(PathError::EscapedSlash(2)),
            ),
            (
                PathOptions::default(),
                "/x%5Cadmin",
                Err(PathError::EscapedSlash(2)),
            ),
            (
                PathOptions::default(),
                "/x%5cadmin",
                Err(PathError::EscapedSlash(2)),
            ),
            // Only the path counts, not the query.
            (PathOptions::default(), "/a?b=%2F", Ok("/a")),
            (
                PathOptions::default(),
                "/a%zz",
                Err(PathError::BadPercentEncoding(2)),
            ),
            // Opted out: kept encoded (hex upper-cased).
            (opts(Base, false), "/a%2fb", Ok("/a%2Fb")),
            // MERGE_SLASHES.
            (opts(MergeSlashes, true), "//admin", Ok("/admin")),
            (opts(MergeSlashes, true), "/a///b//", Ok("/a/b/")),
            (opts(MergeSlashes, true), "/a/.//./b", Ok("/a/b")),
            (
                opts(MergeSlashes, true),
                "/a%2F/b",
                Err(PathError::EscapedSlash(2)),
            ),
            (opts(MergeSlashes, false), "/a%2F%2Fb", Ok("/a%2F%2Fb")),
            // DECODE_AND_MERGE_SLASHES decodes whatever rejectEscapedSlashes says.
            (opts(DecodeAndMergeSlashes, true), "/a%2Fb", Ok("/a/b")),
            (
                opts(DecodeAndMergeSlashes, true),
                "/%2F%2fadmin",
                Ok("/admin"),
            ),
            (
                opts(DecodeAndMergeSlashes, false),
                "/x%5c..%5Cadmin",
                Ok("/admin"),
            ),
            (
                opts(DecodeAndMergeSlashes, true),
                "/a/%2e%2e%2Fadmin",
                Ok("/admin"),
            ),
            // Decoded once: `%252F` is `%25` then `2F`.
            (
                opts(DecodeAndMergeSlashes, true),
                "/a%252Fb",
                Ok("/a%252Fb"),
            ),
        ];
        for (options, raw, expected) in cases {
            assert_eq!(
                normalize_request(raw, options).as_deref(),
                expected.as_ref().map(|s| *s),
                "{options:?} {raw:?}"
            );
        }
    }

    /// Whatever the data path forwards is a fixed point of the evaluator's own (BASE)
    /// normalisation, so authorization matches exactly the path the app receives.
    #[test]
    fn forwarded_paths_are_fixed_points_of_base() {
        for normalization in [
            PathNormalization::Base,
            PathNormalization::MergeSlashes,
            PathNormalization::DecodeAndMergeSlashes,
        ] {
            let options = PathOptions {
                normalization,
                reject_escaped_slashes: false,
            };
            for raw in ["/a//b/../c", "/%2F%2e%2E/x", "\\a%5c%41", "/a/%2f/./b//"] {
                let once = normalize_request(raw, &options).unwrap();
                assert_eq!(normalize_path(&once).as_deref(), Ok(&*once), "{raw:?}");
                assert_eq!(normalize_request(&once, &options).as_deref(), Ok(&*once));
            }
        }
    }

    #[test]
    fn clean_paths_borrow() {
        assert!(matches!(
            normalized("/api/v1/items?x=1"),
            Ok(Cow::Borrowed("/api/v1/items"))
        ));
        assert!(matches!(normalized("/a/./b"), Ok(Cow::Owned(_))));
    }
}
