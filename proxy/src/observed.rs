//! Every inbound request and connection, counted by caller, port, method and path: what the
//! control plane learns least-privilege policies from (`palisade authz suggest`) and replays
//! candidate configurations against (`authz diff`). Unlike the live view's ring nothing is
//! sampled, so a request made once is seen; the table is bounded per report interval, and
//! requests that find it full are counted as folded.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use palisade_proto::v1::ObservedRequest;

/// Distinct (caller, port, method, path) rows kept between two reports.
pub const MAX_ROWS: usize = 2048;
/// Longest path kept; longer ones are cut (at a character boundary).
pub const MAX_PATH: usize = 256;
/// Longest method kept (a method is a token; longer ones are cut).
const MAX_METHOD: usize = 32;

/// A row: what it is keyed by, and its counts.
#[derive(Debug, Default)]
struct Row {
    source: Box<str>,
    port: u16,
    method: Box<str>,
    path: Box<str>,
    allowed: u64,
    denied: u64,
    policy: Box<str>,
    rule: i32,
    last_allowed: bool,
}

/// Rows by the hash of their key, so a request finds its row without allocating.
#[derive(Debug, Default)]
struct Table {
    rows: HashMap<u64, Vec<Row>>,
    len: usize,
    folded: u64,
    hasher: RandomState,
}

/// One inbound decision, borrowed from where it was made.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The caller's verified SPIFFE ID, "" for plaintext.
    pub source: &'a str,
    /// The app port.
    pub port: u16,
    /// HTTP method, "" for a connection.
    pub method: &'a str,
    /// Normalised path without the query, "" for a connection.
    pub path: &'a str,
    /// Whether it was allowed.
    pub allowed: bool,
    /// The deciding policy.
    pub policy: &'a str,
    /// The deciding rule.
    pub rule: Option<usize>,
}

/// The table of one proxy; off until the control plane asks for observations.
#[derive(Debug, Default)]
pub struct ObservedTable {
    on: AtomicBool,
    table: Mutex<Table>,
}

fn cut(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

impl ObservedTable {
    /// Whether requests are being counted.
    pub fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Starts or stops counting; stopping forgets what was not reported.
    pub fn set_on(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
        if !on {
            *self.lock() = Table::default();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one decision (when on).
    pub fn record(&self, r: &Request<'_>) {
        if !self.on() {
            return;
        }
        let (method, path) = (cut(r.method, MAX_METHOD), cut(r.path, MAX_PATH));
        let mut guard = self.lock();
        let table = &mut *guard;
        let hash = table.hasher.hash_one((r.source, r.port, method, path));
        let bucket = table.rows.entry(hash).or_default();
        let found = bucket.iter().position(|row| {
            row.port == r.port
                && *row.path == *path
                && *row.method == *method
                && *row.source == *r.source
        });
        let i = match found {
            Some(i) => i,
            None if table.len < MAX_ROWS => {
                bucket.push(Row {
                    source: r.source.into(),
                    port: r.port,
                    method: method.into(),
                    path: path.into(),
                    ..Row::default()
                });
                table.len += 1;
                bucket.len() - 1
            }
            None => {
                if bucket.is_empty() {
                    table.rows.remove(&hash);
                }
                table.folded += 1;
                return;
            }
        };
        let row = &mut bucket[i];
        if r.allowed {
            row.allowed += 1;
        } else {
            row.denied += 1;
        }
        if *row.policy != *r.policy {
            row.policy = r.policy.into();
        }
        row.rule = r.rule.and_then(|x| i32::try_from(x).ok()).unwrap_or(-1);
        row.last_allowed = r.allowed;
    }

    /// The rows counted since the last call, and how many requests were folded.
    pub fn drain(&self) -> (Vec<ObservedRequest>, u64) {
        let table = {
            let mut table = self.lock();
            let fresh = Table {
                hasher: table.hasher.clone(),
                ..Table::default()
            };
            std::mem::replace(&mut *table, fresh)
        };
        let rows = table
            .rows
            .into_values()
            .flatten()
            .map(|v| ObservedRequest {
                source: v.source.into(),
                port: u32::from(v.port),
                method: v.method.into(),
                path: v.path.into(),
                allowed: v.allowed,
                denied: v.denied,
                policy: v.policy.into(),
                rule: v.rule,
                last_allowed: v.last_allowed,
            })
            .collect();
        (rows, table.folded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, allowed: bool) -> Request<'_> {
        Request {
            source: "spiffe://cluster.local/ns/shop/sa/client",
            port: 8080,
            method: "GET",
            path,
            allowed,
            policy: if allowed {
                "allow-by-default"
            } else {
                "shop/deny"
            },
            rule: (!allowed).then_some(2),
        }
    }

    #[test]
    fn nothing_is_counted_until_asked_and_then_every_request_is() {
        let t = ObservedTable::default();
        t.record(&request("/a", true));
        assert!(t.drain().0.is_empty());
        t.set_on(true);
        for _ in 0..3 {
            t.record(&request("/a", true));
        }
        t.record(&request("/a", false));
        t.record(&request("/b", true));
        let (mut rows, folded) = t.drain();
        rows.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(folded, 0);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].allowed, rows[0].denied), (3, 1));
        assert_eq!((&*rows[0].policy, rows[0].rule), ("shop/deny", 2));
        assert_eq!((rows[1].path.as_str(), rows[1].allowed), ("/b", 1));
        assert!(t.drain().0.is_empty(), "drained once");
    }

    #[test]
    fn the_table_is_bounded_and_what_does_not_fit_is_counted() {
        let t = ObservedTable::default();
        t.set_on(true);
        for i in 0..(MAX_ROWS + 500) {
            t.record(&request(&format!("/{i}"), true));
        }
        // A row already there still counts when the table is full.
        t.record(&request("/0", true));
        let long = "/é".repeat(500);
        t.record(&request(&long, true));
        let (rows, folded) = t.drain();
        assert_eq!(rows.len(), MAX_ROWS);
        assert_eq!(folded, 501);
        assert_eq!(rows.iter().find(|r| r.path == "/0").unwrap().allowed, 2);
        t.record(&request(&long, true));
        let (rows, _) = t.drain();
        assert!(rows[0].path.len() <= MAX_PATH && long.starts_with(&rows[0].path));
        t.set_on(false);
        t.record(&request("/a", true));
        assert!(t.drain().0.is_empty());
    }
}
