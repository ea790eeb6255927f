//! `normalize_path` on arbitrary strings: never panics; what it returns is absolute, has no
//! dot segment, no query, and is a fixed point (normalising it again changes nothing).

#![cfg_attr(not(test), no_main)]

use libfuzzer_sys::fuzz_target;
use palisade_proxy::authz::normalize_path;

fuzz_target!(|data: &[u8]| check(data));

fn check(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(path) = normalize_path(input) {
        assert!(path.starts_with('/'), "{input:?} -> {path:?}");
        assert!(!path.contains(['?', '#', '\\']), "{input:?} -> {path:?}");
        assert!(
            !path.split('/').any(|s| s == "." || s == ".."),
            "{input:?} -> {path:?}"
        );
        assert_eq!(
            normalize_path(&path).as_deref(),
            Ok(path.as_str()),
            "{input:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_on_sample_inputs() {
        for input in [
            &b""[..],
            b"/",
            b"/a/../b%41?x",
            b"/a/./b//c#f",
            b"a\\b",
            b"/%2e%2E/x",
            b"\xff",
        ] {
            super::check(input);
        }
    }
}
