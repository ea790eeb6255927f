//! Per-request cost of the live view in a sidecar (`observe::Observer`): what an allowed
//! request costs while nobody watches (one atomic load) and while a tap is open (counting the
//! caller, sampling 1 in 16 into the ring), a denial (always kept), a finished request's
//! latency, and draining a report; and what counting a request for `authz suggest` costs
//! (`observed::ObservedTable`, on by default): a row already there, and a table of 2,048
//! rows drained every 5 s. `bench/tap.sh` measures the same end to end through a
//! sidecar pair, where machine noise hides costs this small.
//!
//! Run: `cargo bench -p palisade-proxy --bench observe`. Prints the median ns per call of 7
//! samples of at least 100 ms each. Figures only: nothing here asserts a time.

use std::hint::black_box;

use palisade_proxy::observe::{Observer, Seen, Verdict};
use palisade_proxy::observed::{self, ObservedTable};

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

    let off = ObservedTable::default();
    let request = |path: &'static str| observed::Request {
        source: "spiffe://cluster.local/ns/shop/sa/frontend",
        port: 8080,
        method: "GET",
        path,
        allowed: true,
        policy: "shop/search-callers",
        rule: Some(0),
    };
    let ns = measure(|| off.record(black_box(&request("/search"))));
    println!("  observation off, per request            {ns:8.1} ns");
    let on = ObservedTable::default();
    on.set_on(true);
    let ns = measure(|| on.record(black_box(&request("/search"))));
    println!("  observation on, a row already there     {ns:8.1} ns");
    let paths: Vec<String> = (0..observed::MAX_ROWS)
        .map(|i| format!("/items/{i}"))
        .collect();
    let mut i = 0usize;
    let ns = measure(|| {
        let path = &paths[i % paths.len()];
        on.record(black_box(&observed::Request {
            path,
            ..request("")
        }));
        i += 1;
        if i.is_multiple_of(paths.len() * 4) {
            black_box(on.drain());
        }
    });
    println!("  observation on, 2,048 distinct rows     {ns:8.1} ns");
}
