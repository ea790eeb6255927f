//! The live view: decisions and traffic that proxies report while someone watches
//! (`palisade tap`, `palisade top`, the `/ui` page), gathered in a [`Hub`].
//!
//! Proxies report only while a watcher is connected (or `/top` was asked within the last
//! [`TOP_LEASE`]); the hub keeps a bounded table of recent violations and a bounded,
//! windowed table of edges, and fans decisions out to watchers through a bounded broadcast
//! channel (a watcher that falls behind skips, and is told how many it missed).

pub mod http;
pub(crate) mod service;

pub use service::MAX_STREAMS_PER_IDENTITY;
pub(crate) mod ui;
pub mod watch;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use palisade_proto::v1::{LATENCY_BUCKETS_MS, TelemetryReport};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch as channel};
use tokio::time::Instant;

/// Violations kept for a page that opens.
pub const RECENT_VIOLATIONS: usize = 200;
/// Edges tracked; the least recently seen is dropped for a new one.
pub const MAX_EDGES: usize = 4096;
/// How far back `/top` rates and latencies look.
pub const WINDOW: Duration = Duration::from_secs(10);
/// How long proxies keep reporting after the last `/top` request.
pub const TOP_LEASE: Duration = Duration::from_secs(15);
/// Decisions queued per watcher before it skips.
const BROADCAST: usize = 1024;
/// Longest text kept from a report's field: whatever a proxy sends, the tables the hub keeps
/// stay bounded in bytes as well as in entries.
const MAX_FIELD: usize = 512;

/// `s` cut to [`MAX_FIELD`] bytes (on a character boundary).
fn field(s: String) -> String {
    if s.len() <= MAX_FIELD {
        s
    } else {
        crate::logsafe::truncated(&s, MAX_FIELD).to_owned()
    }
}

/// One decision, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// RFC 3339 with milliseconds.
    pub time: String,
    /// Milliseconds since the Unix epoch.
    pub time_unix_ms: i64,
    /// The workload whose proxy decided (`namespace/name`).
    pub reporter: String,
    /// `inbound` (the reporter is the destination) or `outbound`.
    pub direction: String,
    /// The caller's SPIFFE ID ("" for a plaintext caller).
    pub source: String,
    /// The caller's workload when the identity names one (`namespace/name`), else "".
    pub source_workload: String,
    /// Inbound `<ns>/<workload>:<port>`; outbound `host:port`.
    pub destination: String,
    /// HTTP method ("" for a connection).
    pub method: String,
    /// Normalised path without the query ("" for a connection).
    pub path: String,
    /// `allow`, `deny` or `audit`.
    pub decision: String,
    /// The deciding policy.
    pub policy: String,
    /// The deciding rule, -1 if none.
    pub rule: i32,
    /// Why, in words.
    pub explain: String,
}

impl Event {
    /// Whether it is a denial.
    pub fn denied(&self) -> bool {
        self.decision == "deny"
    }

    /// Whether it concerns workload `name` (or `namespace/name`) as caller or destination.
    pub fn involves(&self, workload: &str) -> bool {
        let matches =
            |w: &str| !w.is_empty() && (w == workload || w.rsplit('/').next() == Some(workload));
        matches(&self.reporter) || matches(&self.source_workload)
    }

    /// Whether it concerns namespace `ns`.
    pub fn in_namespace(&self, ns: &str) -> bool {
        let of = |w: &str| w.split('/').next() == Some(ns);
        of(&self.reporter) || of(&self.source_workload)
    }
}

/// Traffic on one edge over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeStats {
    /// The caller's workload, or its SPIFFE ID when it names none.
    pub source: String,
    /// The destination workload (`namespace/name`).
    pub destination: String,
    /// Requests and connections per second.
    pub requests_per_second: f64,
    /// Of which denied, per second.
    pub denied_per_second: f64,
    /// 99th percentile response latency (bucket upper bound), milliseconds; `None` without
    /// completed requests.
    pub p99_ms: Option<f64>,
    /// Decisions seen in the window.
    pub requests: u64,
    /// Denials seen in the window.
    pub denied: u64,
}

#[derive(Debug, Default)]
struct EdgeWindow {
    samples: VecDeque<(Instant, u64, u64, Vec<u64>)>,
    last_seen: Option<Instant>,
}

impl EdgeWindow {
    fn trim(&mut self, now: Instant) {
        while self
            .samples
            .front()
            .is_some_and(|(at, ..)| now.duration_since(*at) > WINDOW)
        {
            self.samples.pop_front();
        }
    }
}

/// Resolves a caller's SPIFFE ID to its workload.
pub(crate) type Resolver = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where proxies' reports meet the watchers.
pub struct Hub {
    events: broadcast::Sender<Arc<Event>>,
    recent: Mutex<VecDeque<Arc<Event>>>,
    /// The last decision recorded per edge (caller workload, reporter), allowed or not, for
    /// the page's explanation of a chosen edge; at most [`MAX_EDGES`].
    last: Mutex<HashMap<(String, String), Arc<Event>>>,
    edges: Mutex<HashMap<(String, String), EdgeWindow>>,
    watchers: Mutex<(usize, Option<Instant>)>,
    active: channel::Sender<bool>,
    /// Where proxies' observations go; `None` when observation is off.
    observed: Option<Arc<crate::observed::ObservedTable>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            events: broadcast::channel(BROADCAST).0,
            recent: Mutex::new(VecDeque::new()),
            last: Mutex::new(HashMap::new()),
            edges: Mutex::new(HashMap::new()),
            watchers: Mutex::new((0, None)),
            active: channel::channel(false).0,
            observed: None,
        }
    }
}

impl Hub {
    /// A hub that also gathers proxies' observations into `observed` (none: proxies are not
    /// asked to observe).
    pub fn observing(observed: Option<Arc<crate::observed::ObservedTable>>) -> Self {
        Self {
            observed,
            ..Self::default()
        }
    }

    /// The observation table, when observation is on.
    pub fn observed(&self) -> Option<&Arc<crate::observed::ObservedTable>> {
        self.observed.as_ref()
    }
}

/// Keeps the hub watched while held.
#[derive(Debug)]
pub struct Watching {
    hub: Arc<Hub>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut w = self.hub.lock_watchers();
        w.0 = w.0.saturating_sub(1);
        drop(w);
        self.hub.update_active();
    }
}

fn fmt_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let base = palisade_certs::ca::fmt_unix(secs);
    // `2026-12-03T12:00:00Z` -> `2026-12-03T12:00:00.123Z`
    match base.strip_suffix('Z') {
        Some(b) => format!("{b}.{:03}Z", ms.rem_euclid(1000)),
        None => base,
    }
}

impl Hub {
    fn lock_watchers(&self) -> std::sync::MutexGuard<'_, (usize, Option<Instant>)> {
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update_active(&self) {
        let w = self.lock_watchers();
        let leased = w.1.is_some_and(|until| Instant::now() < until);
        let active = w.0 > 0 || leased;
        drop(w);
        self.active
            .send_if_modified(|a| std::mem::replace(a, active) != active);
    }

    /// Whether proxies should report; changes as watchers come and go.
    pub fn active(&self) -> channel::Receiver<bool> {
        self.active.subscribe()
    }

    /// A watcher: decisions from now on, and proxies reporting while it is held.
    pub fn watch(self: &Arc<Self>) -> (Watching, broadcast::Receiver<Arc<Event>>) {
        let rx = self.events.subscribe();
        self.lock_watchers().0 += 1;
        self.update_active();
        (
            Watching {
                hub: Arc::clone(self),
            },
            rx,
        )
    }

    /// Keeps proxies reporting for [`TOP_LEASE`] (`/top` is polled, not held open).
    pub fn lease(self: &Arc<Self>) {
        self.lock_watchers().1 = Some(Instant::now() + TOP_LEASE);
        self.update_active();
        let hub = Arc::clone(self);
        // Re-evaluated once the lease runs out.
        tokio::spawn(async move {
            tokio::time::sleep(TOP_LEASE + Duration::from_millis(10)).await;
            hub.update_active();
        });
    }

    /// The violations kept, oldest first.
    pub fn recent_violations(&self) -> Vec<Arc<Event>> {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// The last decision recorded on the edge from workload `source` to `destination`.
    pub fn last_decision(&self, source: &str, destination: &str) -> Option<Arc<Event>> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(source.to_owned(), destination.to_owned()))
            .cloned()
    }

    /// Takes a report from `reporter` (`namespace/name`).
    pub(crate) fn ingest(&self, reporter: &str, mut report: TelemetryReport, resolve: &Resolver) {
        let observed = std::mem::take(&mut report.observed);
        // Only a workload's sidecar observes (it is the destination of what it counts).
        if let Some(table) = &self.observed
            && !reporter.starts_with("spiffe://")
            && (!observed.is_empty() || report.observed_folded > 0)
        {
            table.ingest(reporter, observed, report.observed_folded, &|id| {
                resolve(id)
            });
        }
        let now = Instant::now();
        for d in report.decisions {
            let source = field(d.source);
            let source_workload = if source.is_empty() {
                String::new()
            } else {
                resolve(&source).unwrap_or_default()
            };
            let event = Arc::new(Event {
                time: fmt_ms(d.time_unix_ms),
                time_unix_ms: d.time_unix_ms,
                reporter: reporter.to_owned(),
                direction: field(d.direction),
                source,
                source_workload,
                destination: field(d.destination),
                method: field(d.method),
                path: field(d.path),
                decision: field(d.decision),
                policy: field(d.policy),
                rule: d.rule,
                explain: field(d.explain),
            });
            if event.direction == "inbound" && !event.source_workload.is_empty() {
                let key = (event.source_workload.clone(), event.reporter.clone());
                let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
                if last.contains_key(&key) || last.len() < MAX_EDGES {
                    last.insert(key, Arc::clone(&event));
                }
            }
            if event.decision != "allow" {
                let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
                if recent.len() == RECENT_VIOLATIONS {
                    recent.pop_front();
                }
                recent.push_back(Arc::clone(&event));
            }
            // The recent past a proxy sends on activation is for the table, not the live
            // stream: a watcher sees decisions made after it started.
            if !report.backlog {
                let _ = self.events.send(event);
            }
        }
        let mut edges = self.edges.lock().unwrap_or_else(PoisonError::into_inner);
        for e in report.edges {
            let reported = field(e.source);
            let source = resolve(&reported).unwrap_or(reported);
            let key = (source, reporter.to_owned());
            if !edges.contains_key(&key) && edges.len() >= MAX_EDGES {
                let stalest = edges
                    .iter()
                    .min_by_key(|(_, w)| w.last_seen)
                    .map(|(k, _)| k.clone());
                if let Some(k) = stalest {
                    edges.remove(&k);
                }
            }
            let window = edges.entry(key).or_default();
            window
                .samples
                .push_back((now, e.requests, e.denied, e.latency_buckets));
            window.last_seen = Some(now);
            window.trim(now);
        }
    }

    /// Edges with traffic in the last [`WINDOW`], busiest first.
    pub fn top(&self) -> Vec<EdgeStats> {
        let now = Instant::now();
        let mut edges = self.edges.lock().unwrap_or_else(PoisonError::into_inner);
        let window = WINDOW.as_secs_f64();
        let mut out = Vec::new();
        edges.retain(|(source, destination), w| {
            w.trim(now);
            if w.samples.is_empty() {
                return false;
            }
            let requests: u64 = w.samples.iter().map(|s| s.1).sum();
            let denied: u64 = w.samples.iter().map(|s| s.2).sum();
            let mut hist = vec![0u64; LATENCY_BUCKETS_MS.len()];
            for (.., buckets) in &w.samples {
                for (h, b) in hist.iter_mut().zip(buckets) {
                    *h += b;
                }
            }
            out.push(EdgeStats {
                source: source.clone(),
                destination: destination.clone(),
                requests_per_second: requests as f64 / window,
                denied_per_second: denied as f64 / window,
                p99_ms: percentile(&hist, 0.99),
                requests,
                denied,
            });
            true
        });
        out.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| a.source.cmp(&b.source))
                .then_with(|| a.destination.cmp(&b.destination))
        });
        out
    }
}

/// The upper bound of the bucket holding quantile `q` of `hist`.
fn percentile(hist: &[u64], q: f64) -> Option<f64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (count, bound) in hist.iter().zip(LATENCY_BUCKETS_MS) {
        seen += count;
        if seen >= rank {
            return Some(if bound.is_finite() {
                *bound
            } else {
                LATENCY_BUCKETS_MS[LATENCY_BUCKETS_MS.len() - 2]
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_proto::v1::{DecisionRecord, EdgeDelta};

    fn resolver() -> Resolver {
        Arc::new(|id: &str| id.rsplit('/').next().map(|sa| format!("shop/{sa}")))
    }

    fn deny(path: &str) -> DecisionRecord {
        DecisionRecord {
            time_unix_ms: 1_700_000_000_123,
            direction: "inbound".into(),
            source: "spiffe://cluster.local/ns/shop/sa/client".into(),
            destination: "shop/search:8080".into(),
            method: "GET".into(),
            path: path.into(),
            decision: "deny".into(),
            policy: "shop/no-admin".into(),
            rule: 0,
            explain: "denied".into(),
        }
    }

    #[tokio::test]
    async fn watchers_see_live_decisions_and_the_table_keeps_violations() {
        let hub = Arc::new(Hub::default());
        let active = hub.active();
        assert!(!*active.borrow());
        let (guard, mut rx) = hub.watch();
        assert!(*active.borrow());
        let backlog = TelemetryReport {
            decisions: vec![deny("/old")],
            backlog: true,
            ..Default::default()
        };
        hub.ingest("shop/search", backlog, &resolver());
        let live = TelemetryReport {
            decisions: vec![deny("/admin")],
            ..Default::default()
        };
        hub.ingest("shop/search", live, &resolver());
        let event = rx.recv().await.unwrap();
        assert_eq!(event.path, "/admin", "the backlog is not streamed");
        assert_eq!(event.source_workload, "shop/client");
        assert_eq!(event.time, "2023-11-14T22:13:20.123Z");
        assert!(event.involves("search") && event.involves("shop/client"));
        assert_eq!(hub.recent_violations().len(), 2);
        assert_eq!(
            hub.last_decision("shop/client", "shop/search")
                .unwrap()
                .path,
            "/admin",
            "the page explains an edge by its last decision"
        );
        drop(guard);
        assert!(!*active.borrow());
    }

    #[tokio::test]
    async fn top_rates_and_p99_over_the_window_and_tables_are_bounded() {
        let hub = Hub::default();
        let mut buckets = vec![0; LATENCY_BUCKETS_MS.len()];
        buckets[2] = 98; // <= 1 ms
        buckets[6] = 2; // <= 25 ms
        let report = TelemetryReport {
            edges: vec![EdgeDelta {
                source: "spiffe://cluster.local/ns/shop/sa/client".into(),
                requests: 100,
                denied: 10,
                latency_buckets: buckets,
            }],
            ..Default::default()
        };
        hub.ingest("shop/search", report, &resolver());
        let top = hub.top();
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].source, "shop/client");
        assert_eq!(top[0].destination, "shop/search");
        assert!((top[0].requests_per_second - 10.0).abs() < 1e-9);
        assert!((top[0].denied_per_second - 1.0).abs() < 1e-9);
        assert_eq!(top[0].p99_ms, Some(25.0));
        for i in 0..(RECENT_VIOLATIONS + 5) {
            let r = TelemetryReport {
                decisions: vec![deny(&format!("/{i}"))],
                ..Default::default()
            };
            hub.ingest("shop/search", r, &resolver());
        }
        assert_eq!(hub.recent_violations().len(), RECENT_VIOLATIONS);
        for i in 0..(MAX_EDGES + 3) {
            let r = TelemetryReport {
                edges: vec![EdgeDelta {
                    source: format!("spiffe://x/ns/a/sa/{i}"),
                    requests: 1,
                    ..Default::default()
                }],
                ..Default::default()
            };
            hub.ingest("shop/search", r, &resolver());
        }
        assert_eq!(hub.top().len(), MAX_EDGES);
    }

    #[test]
    fn what_a_proxy_sends_is_kept_to_bounded_sizes() {
        let hub = Hub::default();
        let mut huge = deny(&"/x".repeat(100_000));
        huge.explain = "e".repeat(100_000);
        huge.source = format!("spiffe://cluster.local/ns/shop/sa/{}", "a".repeat(100_000));
        let report = TelemetryReport {
            decisions: vec![huge],
            edges: vec![EdgeDelta {
                source: "s".repeat(100_000),
                requests: 1,
                ..Default::default()
            }],
            ..Default::default()
        };
        let nobody: Resolver = Arc::new(|_: &str| None);
        hub.ingest("shop/search", report, &nobody);
        let kept = &hub.recent_violations()[0];
        assert!(kept.path.len() <= MAX_FIELD && kept.explain.len() <= MAX_FIELD);
        assert!(kept.source.len() <= MAX_FIELD);
        assert!(hub.top()[0].source.len() <= MAX_FIELD);
    }

    #[test]
    fn percentiles_take_the_bucket_bound() {
        let mut h = vec![0; LATENCY_BUCKETS_MS.len()];
        assert_eq!(percentile(&h, 0.99), None);
        h[0] = 1;
        assert_eq!(percentile(&h, 0.99), Some(0.25));
        *h.last_mut().unwrap() = 1000;
        assert_eq!(percentile(&h, 0.99), Some(5000.0));
    }
}
