//! Per-request bookkeeping of the data path, each against the way it was done before, so the
//! figures in the performance issue's notes have a bench behind them:
//!
//! - hop-by-hop stripping of a typical message: one pass over the names present, against a
//!   hash lookup per hop-by-hop name (run four times per proxied request);
//! - counting a request: the `peer` label shared (`PeerLabel`, an `Arc<str>`) against a
//!   `String` copied for every lookup;
//! - a connection task's wake-up: the connection polled with what ends it kept aside
//!   (`Beside`, polled only when one of its timers or signals fires) against a `select!`
//!   that polls all five (two timers, a watch, a cancellation, the idle timer) every time.
//!
//! Run: `cargo bench -p palisade-proxy --bench hot_path`. Prints the median ns per call.

#[path = "support/mod.rs"]
mod support;

use std::task::Poll;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, header};
use palisade_proxy::http::{HOP_BY_HOP, strip_hop_by_hop};
use palisade_proxy::limits::Beside;
use palisade_proxy::metrics::{Direction, Metrics, PeerLabel};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use support::{SAMPLE_TIME, SAMPLES, measure};
use tokio_util::sync::CancellationToken;

/// The headers of a typical request from an app (curl or a browser-less client).
fn typical_request() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("search.shop:8080"));
    h.insert(header::USER_AGENT, HeaderValue::from_static("curl/8.5.0"));
    h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    h.insert(
        HeaderName::from_static("x-request-id"),
        HeaderValue::from_static("4f1c2a"),
    );
    h
}

/// How stripping was done before: a lookup and removal per hop-by-hop name, always.
fn strip_per_name(headers: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    let te = headers.get(header::TE).is_some();
    headers.remove(header::TE);
    std::hint::black_box(te);
}

/// The request counter's labels as they were: the peer as an owned `String`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StringPeerLabels {
    direction: &'static str,
    status: u16,
    peer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

const PEER: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

/// Wake-ups per measured call of the wake-up benches.
const WAKES: u32 = 1000;

/// A future that wakes its own task `WAKES` times, then finishes: a busy connection.
fn busy_connection() -> impl Future<Output = ()> {
    let mut left = WAKES;
    std::future::poll_fn(move |cx| {
        if left == 0 {
            return Poll::Ready(());
        }
        left -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
}

fn main() {
    println!("hot_path: median ns per call ({SAMPLES} samples of {SAMPLE_TIME:?})");
    let template = typical_request();
    let base = measure(|| {
        std::hint::black_box(template.clone());
    });
    let one_pass = measure(|| {
        let mut h = template.clone();
        strip_hop_by_hop(&mut h);
        std::hint::black_box(h);
    }) - base;
    let per_name = measure(|| {
        let mut h = template.clone();
        strip_per_name(&mut h);
        std::hint::black_box(h);
    }) - base;
    println!(
        "strip hop-by-hop, typical request: one pass {one_pass:.0} ns, per name (before) {per_name:.0} ns"
    );

    let metrics = Metrics::new();
    let label = PeerLabel::new(PEER);
    let shared = measure(|| metrics.request(Direction::Inbound, 200, &label, 0.001));
    // Before: the peer copied into a `String` for the counter's lookup, and the latency
    // series looked up by its labels on every request.
    let by_string = Family::<StringPeerLabels, Counter>::default();
    let latency = Family::<DirectionLabel, Histogram>::new_with_constructor(|| {
        Histogram::new(exponential_buckets(0.0001, 2.0, 16))
    });
    let peer = PEER.to_owned();
    let copied = measure(|| {
        by_string
            .get_or_create(&StringPeerLabels {
                direction: "inbound",
                status: 200,
                peer: peer.clone(),
            })
            .inc();
        latency
            .get_or_create(&DirectionLabel {
                direction: "inbound",
            })
            .observe(0.001);
    });
    println!(
        "count a request (counter and latency): shared label, series resolved once {shared:.0} ns; String label copied, both looked up (before) {copied:.0} ns"
    );

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hot_path: cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    let (_tx, rx) = tokio::sync::watch::channel(0u8);
    let shutdown = CancellationToken::new();
    let far = Duration::from_secs(3600);
    let select_all = measure(|| {
        runtime.block_on(async {
            let mut rx = rx.clone();
            tokio::select! {
                biased;
                () = busy_connection() => {}
                () = tokio::time::sleep(far) => {}
                _ = rx.changed() => {}
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(far) => {}
                () = tokio::time::sleep(far) => {}
            }
        })
    }) / f64::from(WAKES);
    let beside = measure(|| {
        runtime.block_on(async {
            let mut rx = rx.clone();
            let ends = async {
                tokio::select! {
                    biased;
                    () = tokio::time::sleep(far) => {}
                    _ = rx.changed() => {}
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(far) => {}
                    () = tokio::time::sleep(far) => {}
                }
            };
            let _ = Beside::new(busy_connection(), ends).await;
        })
    }) / f64::from(WAKES);
    println!(
        "connection wake-up: Beside {beside:.1} ns, select! over all five (before) {select_all:.1} ns"
    );
}
