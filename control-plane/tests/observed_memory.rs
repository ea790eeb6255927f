//! The observation table's real heap (issue 17 item 3), counted by dhat's allocator in a test
//! binary of its own: under the load (100,000 distinct paths and 10,000 distinct
//! callers) and under the worst a sender can do (every field at its longest, every cap
//! reached), the table holds less than its stated bound `MEMORY_BOUND_BYTES`.

#![allow(clippy::unwrap_used)]

use palisade_control_plane::observed::{
    MAX_FIELD, MAX_GROUPS, MAX_NODES, MEMORY_BOUND_BYTES, ObservedTable,
};
use palisade_proto::v1::ObservedRequest;

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

fn request(source: String, path: String, policy: &str) -> ObservedRequest {
    ObservedRequest {
        source,
        port: 8080,
        method: "GET".into(),
        path,
        allowed: 1,
        denied: 0,
        policy: policy.into(),
        rule: -1,
        last_allowed: true,
    }
}

/// Heap bytes `fill` leaves allocated (what the table it returns holds), and the table.
fn held(fill: impl FnOnce() -> ObservedTable) -> (usize, ObservedTable) {
    let before = dhat::HeapStats::get().curr_bytes;
    let table = fill();
    let after = dhat::HeapStats::get().curr_bytes;
    (after.saturating_sub(before), table)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / 1048576.0
}

// One test: dhat counts one process-wide heap.
#[test]
fn the_table_stays_under_its_memory_bound() {
    let _profiler = dhat::Profiler::builder().testing().build();

    // The load.
    let resolve = |id: &str| id.rsplit_once("/sa/").map(|(_, sa)| format!("shop/{sa}"));
    let (flood, table) = held(|| {
        let table = ObservedTable::default();
        for batch in 0..100 {
            let rows = (0..1000)
                .map(|i| {
                    let n = batch * 1000 + i;
                    request(
                        "spiffe://cluster.local/ns/shop/sa/client".into(),
                        format!("/p{}/q{}/r{n}", n % 97, n % 89),
                        "default-allow",
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
                        "default-allow",
                    )
                })
                .collect();
            table.ingest("shop/search", rows, 0, &resolve);
        }
        table
    });
    let (groups, nodes) = table.size();
    let folded = table.snapshot(0).folded;
    println!(
        "flood (100,000 paths, 10,000 callers): {:.2} MiB held, {groups} groups, {nodes} nodes, {folded} requests folded",
        mib(flood)
    );
    drop(table);

    // The worst a sender can do: every text at its longest (identity, workload,
    // destination, policy, example path), groups and nodes at their caps.
    let long = |tag: &str, n: usize| {
        let mut s = format!("{tag}{n}-");
        s.push_str(&"w".repeat(MAX_FIELD * 2));
        s
    };
    let resolve_long = |id: &str| Some(long("workload", id.len()));
    let (worst, table) = held(|| {
        let table = ObservedTable::default();
        // Two chains of four 63-character segments per group, a leaf at every node (each
        // prefix is a path seen too): 8 nodes a group, the node cap reached with the group
        // cap; example paths of up to 256 bytes.
        for g in 0..(MAX_GROUPS + 10) {
            let mut rows = Vec::new();
            for chain in 0..2 {
                let segs: Vec<String> = (0..4)
                    .map(|k| format!("{:a>63}", format!("s{g}c{chain}k{k}")))
                    .collect();
                for depth in 1..=4 {
                    rows.push(request(
                        format!("spiffe://cluster.local/ns/shop/sa/{}", long("id", g)),
                        format!("/{}", segs[..depth].join("/")),
                        &long("policy", depth),
                    ));
                }
            }
            table.ingest(&long("destination", g), rows, 0, &resolve_long);
        }
        table
    });
    let (groups, nodes) = table.size();
    println!(
        "worst case (every field at its longest, every cap reached): {:.2} MiB held, {groups} groups, {nodes} nodes; bound {} MiB",
        mib(worst),
        MEMORY_BOUND_BYTES / 1048576
    );
    assert!(
        nodes + 8 >= MAX_NODES,
        "the node cap was reached: {groups} groups, {nodes} nodes"
    );
    assert!(flood < MEMORY_BOUND_BYTES, "{flood}");
    assert!(worst < MEMORY_BOUND_BYTES, "{worst}");
}
