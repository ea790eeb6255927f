//! Request path normalisation for policy matching, as Istio's sidecar does it (CONTRACT):
//! the query string and fragment are dropped, then RFC 3986 section 6.2.2 normalisation —
//! percent-encoded *unreserved* characters are decoded (`%61` → `a`, `%7E` → `~`), the hex
//! digits of every other escape are upper-cased (`%2f` → `%2F`), `\` is read as `/`, and
//! dot segments are resolved (section 5.2.4). `//` is kept and `%2F` stays encoded, because
//! merging or decoding them changes which resource many servers address.
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
    fn clean_paths_borrow() {
        assert!(matches!(
            normalized("/api/v1/items?x=1"),
            Ok(Cow::Borrowed("/api/v1/items"))
        ));
        assert!(matches!(normalized("/a/./b"), Ok(Cow::Owned(_))));
    }
}
