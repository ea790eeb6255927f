//! Memory of the observation table (issue 17): the heap it really holds, counted by dhat's
//! allocator, after a bounded load of 100,000 distinct paths from one caller and
//! 10,000 distinct callers with long identities and paths; and the cost of ingesting.
//!
//! Run: `cargo bench -p palisade-control-plane --bench observed`. Figures only.

use tokio::time::Instant;

use palisade_control_plane::observed::{MAX_GROUPS, MAX_NODES, MEMORY_BOUND_BYTES, ObservedTable};
use palisade_proto::v1::ObservedRequest;

// dhat's allocator counts every live byte of the heap.
#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

fn request(source: String, path: String) -> ObservedRequest {
    ObservedRequest {
        source,
        port: 8080,
        method: "GET".into(),
        path,
        allowed: 1,
        denied: 0,
        policy: "default-allow".into(),
        rule: -1,
        last_allowed: true,
    }
}

fn main() {
    let resolve = |id: &str| id.rsplit_once("/sa/").map(|(_, sa)| format!("shop/{sa}"));
    let _profiler = dhat::Profiler::builder().testing().build();
    let before = dhat::HeapStats::get().curr_bytes;
    let table = ObservedTable::default();
    let started = Instant::now();
    for batch in 0..100 {
        let rows = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                request(
                    "spiffe://cluster.local/ns/shop/sa/client".into(),
                    format!("/p{}/q{}/r{n}", n % 97, n % 89),
                )
            })
            .collect();
        table.ingest("shop/search", rows, 0, &resolve);
    }
    for batch in 0..10 {
        let rows = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                request(
                    format!(
                        "spiffe://cluster.local/ns/shop/sa/caller-{n}-{}",
                        "x".repeat(200)
                    ),
                    format!("/c/{}/{n}", "y".repeat(200)),
                )
            })
            .collect();
        table.ingest("shop/search", rows, 0, &resolve);
    }
    let elapsed = started.elapsed();
    let held = dhat::HeapStats::get().curr_bytes.saturating_sub(before);
    let (groups, nodes) = table.size();
    let o = table.snapshot(0);
    println!("observation table after 100,000 distinct paths and 10,000 distinct callers:");
    println!(
        "  groups {groups} (cap {MAX_GROUPS}), path nodes {nodes} (cap {MAX_NODES}), rows {}",
        o.rows.len()
    );
    println!("  requests folded away {}", o.folded);
    println!(
        "  heap held {:.2} MiB (counted by dhat); stated bound {} MiB",
        held as f64 / 1048576.0,
        MEMORY_BOUND_BYTES / 1048576
    );
    println!(
        "  ingest: {:.0} rows/s ({:.2} s for 110,000 rows)",
        110_000.0 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}
