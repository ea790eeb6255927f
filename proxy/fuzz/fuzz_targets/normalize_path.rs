//! `normalize_path` on arbitrary strings: never panics; what it returns is absolute, has no
//! dot segment, no query, and is a fixed point (normalising it again changes nothing).
//! `normalize_request` under every MeshConfig path option: the same, plus no `//` once
//! slashes are merged, no encoded slash where they are decoded or refused, and a fixed point
//! of `normalize_path` (what the app receives is what authorization matched).

#![cfg_attr(not(test), no_main)]

use libfuzzer_sys::fuzz_target;
use palisade_proxy::authz::{PathNormalization, PathOptions, normalize_path, normalize_request};

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
    for normalization in [
        PathNormalization::Base,
        PathNormalization::MergeSlashes,
        PathNormalization::DecodeAndMergeSlashes,
    ] {
        for reject_escaped_slashes in [true, false] {
            let options = PathOptions {
                normalization,
                reject_escaped_slashes,
            };
            let Ok(path) = normalize_request(input, &options) else {
                continue;
            };
            let upper = path.to_ascii_uppercase();
            assert!(path.starts_with('/'), "{options:?} {input:?} -> {path:?}");
            assert!(
                !path.contains(['?', '#', '\\']),
                "{options:?} {input:?} -> {path:?}"
            );
            assert_eq!(
                normalize_path(&path).as_deref(),
                Ok(&*path),
                "{options:?} {input:?}"
            );
            if normalization != PathNormalization::Base {
                assert!(!path.contains("//"), "{options:?} {input:?} -> {path:?}");
            }
            if normalization == PathNormalization::DecodeAndMergeSlashes || reject_escaped_slashes {
                assert!(
                    !upper.contains("%2F") && !upper.contains("%5C"),
                    "{options:?} {input:?} -> {path:?}"
                );
            }
        }
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
            b"/a%2f..%5C/b//c",
            b"//%2F%2f",
            b"\xff",
        ] {
            super::check(input);
        }
    }
}
