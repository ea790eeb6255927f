//! Client-supplied strings on their way into log lines and status messages: names are
//! checked as DNS-1123 labels before use, and free text (NACK reasons, proxy versions, type
//! URLs) is shortened and escaped, so no client can write a newline or a fake field into
//! the control plane's log.

use std::fmt;

/// Longest client-supplied text written to a log line, in characters.
pub(crate) const MAX_LOGGED_CHARS: usize = 200;
/// Longest client-supplied text kept in memory (NACK reasons, proxy versions), in bytes.
pub(crate) const MAX_KEPT_BYTES: usize = 1024;

/// Whether `s` is a DNS-1123 label, the form of every namespace and workload name the
/// configuration accepts: so a name that is not one names no workload, and is refused
/// before it reaches a log line.
pub(crate) fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// `s` cut to at most `max` bytes on a character boundary.
pub(crate) fn truncated(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

/// Displays a client-supplied string quoted, with control and non-printable characters
/// escaped (`\n`, `\u{1b}`, ...) and at most [`MAX_LOGGED_CHARS`] characters.
#[derive(Clone, Copy)]
pub(crate) struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(MAX_LOGGED_CHARS) {
            write!(f, "{}", c.escape_debug())?;
        }
        let rest = chars.count();
        f.write_str("\"")?;
        if rest > 0 {
            write!(f, " (+{rest} chars)")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        assert!(is_dns_label("shop"));
        assert!(is_dns_label("a-1"));
        for bad in [
            "",
            "-a",
            "a-",
            "Shop",
            "a.b",
            "a\nb",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
    }

    #[test]
    fn untrusted_text_stays_on_one_line_and_short() {
        let forged =
            "x\n2026-12-03T00:00:00Z  INFO issued a workload certificate\r\u{1b}[2K\u{2028}";
        let shown = Untrusted(forged).to_string();
        assert!(
            !shown.contains(['\n', '\r', '\u{1b}', '\u{2028}']),
            "{shown}"
        );
        assert!(shown.starts_with("\"x\\n2026"), "{shown}");
        let long = "a".repeat(MAX_LOGGED_CHARS + 50);
        assert!(Untrusted(&long).to_string().ends_with("\" (+50 chars)"));
        assert_eq!(truncated("héllo", 2), "h");
        assert_eq!(truncated("hi", 10), "hi");
    }
}
