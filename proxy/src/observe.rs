//! What the live view (`palisade tap`, `top`, `/ui`) sees of this proxy: a bounded ring of
//! recent decisions (every denial and AUDIT match; allowed requests sampled while someone
//! watches) and per-caller traffic counts, drained into reports by the telemetry stream.
//!
//! Nothing here grows with traffic: the ring, the report size and the caller table are
//! bounded, and what does not fit is counted. While nobody watches, an allowed request costs
//! one atomic load.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use palisade_proto::v1::{DecisionRecord, EdgeDelta, LATENCY_BUCKETS_MS, TelemetryReport};

/// Decisions kept for the next watcher.
pub const RING: usize = 1024;
/// Decisions carried by one report; the rest of a burst is counted as dropped.
pub const MAX_PER_REPORT: usize = 512;
/// One allowed request in this many is recorded while someone watches.
pub const SAMPLE_ALLOWED: u64 = 16;
/// Allowed requests sampled per report interval at most: a person reads a tap, and at tens
/// of thousands of requests a second 1 in 16 would still be thousands of lines a second,
/// each carried to the control plane and the watcher. Denials are not limited by this.
pub const MAX_ALLOWED_PER_REPORT: i64 = 32;
/// Callers tracked per report interval; further ones are folded into one row.
pub const MAX_EDGES: usize = 512;
/// The caller row that absorbs callers past [`MAX_EDGES`].
pub const OTHER_CALLERS: &str = "(other callers)";
/// Longest path kept in a record.
const MAX_PATH: usize = 256;

/// The kind of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
    /// An AUDIT policy matched (the decision itself is recorded separately).
    Audit,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Audit => "audit",
        }
    }
}

/// The fields of a decision, borrowed from where it was made.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// "inbound" or "outbound".
    pub direction: &'a str,
    /// The caller's verified SPIFFE ID, "" for plaintext.
    pub source: &'a str,
    /// Inbound `<ns>/<workload>:<port>`; outbound `host:port`.
    pub destination: &'a str,
    /// HTTP method, "" for a connection.
    pub method: &'a str,
    /// Normalised path without query, "" for a connection.
    pub path: &'a str,
    /// The deciding policy.
    pub policy: &'a str,
    /// The deciding rule.
    pub rule: Option<usize>,
}

#[derive(Debug, Default)]
struct Counts {
    requests: u64,
    denied: u64,
    latency: Vec<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    ring: VecDeque<(u64, DecisionRecord)>,
    next_seq: u64,
    sent_seq: u64,
    dropped: u64,
    edges: HashMap<String, Counts>,
}

/// The decision ring and traffic counts of one proxy.
#[derive(Debug, Default)]
pub struct Observer {
    observed: crate::observed::ObservedTable,
    inner: Mutex<Inner>,
    watched: AtomicBool,
    allowed: AtomicU64,
    /// Allowed samples left until the next report.
    allowed_budget: AtomicI64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn bucket(seconds: f64) -> usize {
    let ms = seconds * 1000.0;
    LATENCY_BUCKETS_MS
        .iter()
        .position(|b| ms <= *b)
        .unwrap_or(LATENCY_BUCKETS_MS.len() - 1)
}

impl Observer {
    /// The unsampled per-request counts the control plane learns policies from.
    pub fn observed(&self) -> &crate::observed::ObservedTable {
        &self.observed
    }

    /// Whether a watcher asked for reports.
    pub fn watched(&self) -> bool {
        self.watched.load(Ordering::Relaxed)
    }

    /// Starts or stops the sampling of allowed requests and the traffic counts.
    pub fn set_watched(&self, watched: bool) {
        self.watched.store(watched, Ordering::Relaxed);
        if watched {
            self.allowed_budget
                .store(MAX_ALLOWED_PER_REPORT, Ordering::Relaxed);
        } else {
            self.lock().edges.clear();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a decision: always for a denial or AUDIT match, one in [`SAMPLE_ALLOWED`]
    /// allowed ones while watched. `explain` is only called for what is recorded.
    pub fn decision(&self, verdict: Verdict, seen: &Seen<'_>, explain: impl FnOnce() -> String) {
        let inbound = seen.direction == "inbound";
        if verdict == Verdict::Allow {
            if !self.watched() {
                return;
            }
            if inbound {
                self.count(seen.source, |c| c.requests += 1);
            }
            if !self
                .allowed
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(SAMPLE_ALLOWED)
                || self.allowed_budget.fetch_sub(1, Ordering::Relaxed) <= 0
            {
                return;
            }
        } else if verdict == Verdict::Deny && inbound && self.watched() {
            self.count(seen.source, |c| {
                c.requests += 1;
                c.denied += 1;
            });
        }
        let path = seen.path[..seen.path.floor_char_boundary(MAX_PATH)].to_owned();
        let record = DecisionRecord {
            time_unix_ms: now_ms(),
            direction: seen.direction.to_owned(),
            source: seen.source.to_owned(),
            destination: seen.destination.to_owned(),
            method: seen.method.to_owned(),
            path,
            decision: verdict.as_str().to_owned(),
            policy: seen.policy.to_owned(),
            rule: seen.rule.and_then(|r| i32::try_from(r).ok()).unwrap_or(-1),
            explain: explain(),
        };
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        if inner.ring.len() == RING {
            inner.ring.pop_front();
        }
        inner.ring.push_back((seq, record));
    }

    /// Records a finished inbound request's latency, while watched.
    pub fn latency(&self, source: &str, seconds: f64) {
        if !self.watched() {
            return;
        }
        let b = bucket(seconds);
        self.count(source, |c| {
            if c.latency.is_empty() {
                c.latency = vec![0; LATENCY_BUCKETS_MS.len()];
            }
            c.latency[b] += 1;
        });
    }

    fn count(&self, source: &str, f: impl FnOnce(&mut Counts)) {
        let mut inner = self.lock();
        let key = if inner.edges.contains_key(source) || inner.edges.len() < MAX_EDGES {
            source
        } else {
            OTHER_CALLERS
        };
        match inner.edges.get_mut(key) {
            Some(c) => f(c),
            None => {
                let mut c = Counts::default();
                f(&mut c);
                inner.edges.insert(key.to_owned(), c);
            }
        }
    }

    /// What happened since the last report (with `backlog`, the ring's recent past), at most
    /// [`MAX_PER_REPORT`] decisions, the newest kept.
    pub fn report(&self, backlog: bool) -> TelemetryReport {
        self.allowed_budget
            .store(MAX_ALLOWED_PER_REPORT, Ordering::Relaxed);
        let mut inner = self.lock();
        let from = if backlog { 0 } else { inner.sent_seq };
        let fresh: Vec<&(u64, DecisionRecord)> =
            inner.ring.iter().filter(|(seq, _)| *seq >= from).collect();
        let skip = fresh.len().saturating_sub(MAX_PER_REPORT);
        let decisions: Vec<DecisionRecord> =
            fresh.iter().skip(skip).map(|(_, r)| r.clone()).collect();
        let mut dropped = std::mem::take(&mut inner.dropped) + skip as u64;
        // Decisions that left the ring before they could be sent.
        let oldest = inner.ring.front().map_or(inner.next_seq, |(seq, _)| *seq);
        if !backlog && oldest > inner.sent_seq {
            dropped += oldest - inner.sent_seq;
        }
        inner.sent_seq = inner.next_seq;
        let edges = inner
            .edges
            .drain()
            .map(|(source, c)| EdgeDelta {
                source,
                requests: c.requests,
                denied: c.denied,
                latency_buckets: c.latency,
            })
            .collect();
        TelemetryReport {
            decisions,
            decisions_dropped: dropped,
            edges,
            backlog,
            ..TelemetryReport::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(direction: &'a str, path: &'a str) -> Seen<'a> {
        Seen {
            direction,
            source: "spiffe://cluster.local/ns/shop/sa/client",
            destination: "shop/search:8080",
            method: "GET",
            path,
            policy: "shop/p",
            rule: Some(0),
        }
    }

    #[test]
    fn denials_are_kept_while_nobody_watches_and_allows_are_not() {
        let o = Observer::default();
        o.decision(Verdict::Allow, &seen("inbound", "/a"), || "allowed".into());
        o.decision(Verdict::Deny, &seen("inbound", "/b"), || "denied".into());
        let r = o.report(true);
        assert_eq!(r.decisions.len(), 1);
        assert_eq!(r.decisions[0].path, "/b");
        assert_eq!(r.decisions[0].decision, "deny");
        assert!(r.edges.is_empty(), "no counting while unwatched");
        assert!(o.report(false).decisions.is_empty(), "sent once");
    }

    #[test]
    fn watched_allows_are_sampled_and_callers_counted() {
        let o = Observer::default();
        o.set_watched(true);
        for _ in 0..(SAMPLE_ALLOWED * 4) {
            o.decision(Verdict::Allow, &seen("inbound", "/a"), String::new);
        }
        o.decision(Verdict::Deny, &seen("inbound", "/b"), String::new);
        o.latency("spiffe://cluster.local/ns/shop/sa/client", 0.003);
        let r = o.report(false);
        assert_eq!(r.decisions.len(), 5, "4 sampled allows and the denial");
        assert_eq!(r.edges.len(), 1);
        assert_eq!(r.edges[0].requests, SAMPLE_ALLOWED * 4 + 1);
        assert_eq!(r.edges[0].denied, 1);
        assert_eq!(r.edges[0].latency_buckets.iter().sum::<u64>(), 1);
        assert_eq!(r.edges[0].latency_buckets[bucket(0.003)], 1);
    }

    #[test]
    fn allowed_samples_per_report_are_capped_and_denials_are_not() {
        let o = Observer::default();
        o.set_watched(true);
        let n = SAMPLE_ALLOWED * (MAX_ALLOWED_PER_REPORT as u64) * 3;
        for _ in 0..n {
            o.decision(Verdict::Allow, &seen("inbound", "/a"), String::new);
        }
        for _ in 0..100 {
            o.decision(Verdict::Deny, &seen("inbound", "/b"), String::new);
        }
        let r = o.report(false);
        let allowed = r.decisions.iter().filter(|d| d.decision == "allow").count();
        assert_eq!(allowed, MAX_ALLOWED_PER_REPORT as usize);
        assert_eq!(r.decisions.len() - allowed, 100);
        assert_eq!(r.edges[0].requests, n + 100, "every request still counted");
        // The next interval samples again.
        for _ in 0..SAMPLE_ALLOWED {
            o.decision(Verdict::Allow, &seen("inbound", "/a"), String::new);
        }
        assert_eq!(o.report(false).decisions.len(), 1);
    }

    #[test]
    fn everything_is_bounded_and_what_does_not_fit_is_counted() {
        let o = Observer::default();
        o.set_watched(true);
        for i in 0..(RING + 100) {
            let path = format!("/{i}");
            o.decision(Verdict::Deny, &seen("inbound", &path), String::new);
        }
        let r = o.report(false);
        assert_eq!(r.decisions.len(), MAX_PER_REPORT);
        assert_eq!(r.decisions_dropped, (RING + 100 - MAX_PER_REPORT) as u64);
        assert_eq!(r.decisions.last().unwrap().path, format!("/{}", RING + 99));
        for i in 0..(MAX_EDGES + 10) {
            o.latency(&format!("spiffe://x/ns/a/sa/{i}"), 0.001);
        }
        let r = o.report(false);
        assert_eq!(r.edges.len(), MAX_EDGES + 1);
        assert!(r.edges.iter().any(|e| e.source == OTHER_CALLERS));
        let long = "/x".repeat(1000);
        o.decision(Verdict::Deny, &seen("inbound", &long), String::new);
        assert_eq!(o.report(false).decisions[0].path.len(), MAX_PATH);
    }
}
