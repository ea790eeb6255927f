//! palisade-injector's integration tests, one binary: golden AdmissionReviews and manifests,
//! the HTTPS webhook on loopback, and random inputs to every untrusted parser.
//!
//! Golden files live in `tests/golden/`; `PALISADE_BLESS=1 cargo test -p palisade-injector`
//! rewrites them, and a plain run fails on any difference.

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Golden reviews and manifests (with the bless switch).
#[path = "injector/golden.rs"]
mod golden;
/// Random and mutated inputs: no panic, bounded answers.
#[path = "injector/random.rs"]
mod random;
/// The HTTPS webhook on 127.0.0.1:0.
#[path = "injector/server.rs"]
mod server;
