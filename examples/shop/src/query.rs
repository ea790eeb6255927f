//! Just enough `application/x-www-form-urlencoded` handling for `?q=`: the shop needs
//! one parameter, which does not justify a URL crate.

/// The decoded value of the first `name` parameter in `query`, if present.
pub(crate) fn param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key) == name).then(|| decode(value))
    })
}

/// Percent-decodes `raw`, reading `+` as a space; malformed escapes are kept verbatim
/// and invalid UTF-8 is replaced, because a search box should never reject input.
pub(crate) fn decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let escaped = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                if let Some(byte) = escaped {
                    out.push(byte);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes `value` for a query component, leaving only RFC 3986 unreserved
/// characters bare so the result is always a valid URI.
pub(crate) fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_decodes_the_parameter() {
        assert_eq!(
            param(Some("a=1&q=desk+lamp"), "q").as_deref(),
            Some("desk lamp")
        );
        assert_eq!(param(Some("q=%C3%A9t%C3%A9"), "q").as_deref(), Some("été"));
        assert_eq!(param(Some("q"), "q").as_deref(), Some(""));
        assert_eq!(param(Some("x=1"), "q"), None);
        assert_eq!(param(None, "q"), None);
    }

    #[test]
    fn keeps_malformed_escapes() {
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn encoding_round_trips() {
        for value in ["desk lamp", "a&b=c", "été", "100%", ""] {
            assert_eq!(decode(&encode(value)), value);
        }
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
