//! The palisade-certs test suite: one binary, one module per topic (see `tests/certs/`).
//!
//! Every certificate and key is minted while the tests run (by the crate itself, by rcgen, or
//! by the `openssl` CLI); nothing secret is committed. Checks that need a third-party tool
//! print a visible `SKIPPED:` line when it is missing instead of passing silently.

#![allow(clippy::unwrap_used)]

mod certs {
    mod bundle;
    mod csr;
    mod issue;
    mod load;
    mod openssl;
    mod python;
    mod robustness;
    mod rotation;
    mod spiffe;
    mod support;
    mod tls;
}
