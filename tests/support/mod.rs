//! The end-to-end harness: loopback blocks, an in-process mesh ([`TestMesh`]), apps, HTTP and
//! gRPC clients, a recording TCP relay, child processes of the real binary, external tools
//! with visible skips, and hand-crafted certificates.
//!
//! Rules every test follows through these helpers: each test owns a loopback block
//! `127.X.Y.0/24` (so the fixed sidecar ports never collide between parallel tests); every
//! network await is bounded ([`timed`]); readiness is awaited, never slept for; everything
//! started is stopped by a cancellation token or a kill-on-drop guard.

#![allow(dead_code)]

pub mod apps;
pub mod bed;
pub mod clients;
pub mod craft;
pub mod load;
pub mod mesh;
pub mod net;
pub mod netns;
pub mod procs;
pub mod tls;
pub mod tools;

use std::future::Future;
use std::time::Duration;

pub use apps::App;
pub use clients::Reply;
pub use mesh::TestMesh;
pub use net::Block;

/// Bound on every single network await (a connect, a request, a handshake).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How long a whole mesh may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Awaits `f`, failing the test if it takes longer than [`TIMEOUT`].
pub async fn timed<F: Future>(what: &str, f: F) -> F::Output {
    within(TIMEOUT, what, f).await
}

/// Awaits `f`, failing the test if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Polls `check` every `every` until it returns `Some`, for at most `limit`; for state that
/// has no notification (another process's admin endpoint). Panics with `what` on timeout.
pub async fn poll<T, F, Fut>(limit: Duration, every: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("not reached within {limit:?}: {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Prints `SKIPPED: <why> (<test>)` straight to the process's stderr. libtest captures
/// `println!`/`eprintln!` of passing tests, so a skip written that way would be a silent pass.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why} ({test})");
}

/// Logs of the components under test, when `RUST_LOG` is set (captured per test by libtest).
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// The value of a Prometheus sample `name{labels}` (labels as written in the exposition,
/// e.g. `direction="inbound"`; empty for none), summed over series whose labels contain
/// every `label` given.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric == name && labels.iter().all(|want| label_text.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}
