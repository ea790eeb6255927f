//! Per-request cost of the live view in a sidecar (`observe::Observer`): what an allowed
//! request costs while nobody watches (one atomic load) and while a tap is open (counting the
//! caller, sampling 1 in 16 into the ring), a denial (always kept), a finished request's
//! latency, and draining a report. `bench/tap.sh` measures the same end to end through a
//! sidecar pair, where machine noise hides costs this small.
//!
//! Run: `cargo bench -p palisade-proxy --bench observe`. Prints the median ns per call of 7
//! samples of at least 100 ms each. Figures only: nothing here asserts a time.

use std::hint::black_box;

use palisade_proxy::observe::{Observer, Seen, Verdict};

mod support;
use support::{SAMPLE_TIME, SAMPLES, measure};

fn seen(path: &str) -> Seen<'_> {
    Seen {
        direction: "inbound",
        source: "spiffe://cluster.local/ns/shop/sa/frontend",
        destination: "shop/search:8080",
        method: "GET",
        path,
        policy: "shop/search-callers",
        rule: Some(0),
    }
}

fn main() {
    println!(
        "live view cost per call (median of {SAMPLES} samples of >= {} ms):",
        SAMPLE_TIME.as_millis()
    );
    let idle = Observer::default();
    let ns = measure(|| {
        idle.decision(Verdict::Allow, black_box(&seen("/search")), || {
            "ALLOW by shop/search-callers rule 0".to_owned()
        })
    });
    println!("  allowed request, nobody watching        {ns:8.1} ns");

    let watched = Observer::default();
    watched.set_watched(true);
    let mut calls = 0u64;
    let ns = measure(|| {
        watched.decision(Verdict::Allow, black_box(&seen("/search")), || {
            "ALLOW by shop/search-callers rule 0".to_owned()
        });
        calls += 1;
        // A report drains the ring every 500 ms in a sidecar; keep it from filling here.
        if calls.is_multiple_of(4096) {
            black_box(watched.report(false));
        }
    });
    println!("  allowed request, tap open               {ns:8.1} ns");

    let ns = measure(|| {
        watched.latency(
            black_box("spiffe://cluster.local/ns/shop/sa/frontend"),
            black_box(0.0012),
        )
    });
    println!("  finished request's latency, tap open    {ns:8.1} ns");

    let denials = Observer::default();
    let ns = measure(|| {
        denials.decision(Verdict::Deny, black_box(&seen("/admin/users")), || {
            "DENY by shop/no-admin rule 0".to_owned()
        })
    });
    println!("  denial (always kept)                    {ns:8.1} ns");

    let full = Observer::default();
    full.set_watched(true);
    let ns = measure(|| {
        for _ in 0..512 {
            full.decision(Verdict::Deny, &seen("/admin/users"), String::new);
        }
        black_box(full.report(false));
    });
    println!(
        "  512 denials and their report            {ns:8.1} ns ({:.1} ns per decision)",
        ns / 512.0
    );
}
