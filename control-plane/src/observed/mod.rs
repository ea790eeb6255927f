//! What the sidecars observed: every inbound request and connection, counted by caller
//! (identity and workload), destination workload and port, method, and a path template
//! learned from the paths seen ([`paths`]). `palisade authz suggest` turns the allowed part
//! into least-privilege policies, and `authz diff` replays it against a candidate
//! configuration.
//!
//! Bounded whatever the traffic: at most [`MAX_GROUPS`] (caller, destination, port, method)
//! groups and [`MAX_NODES`] path nodes in all, fields cut to [`MAX_FIELD`] bytes; what does
//! not fit is counted as folded, never silently lost. Rows not seen for [`RETENTION`] are
//! forgotten. The table can be saved to a file and loaded again (directory mode keeps it
//! across a restart).

pub mod client;
pub mod diff;
pub mod paths;
pub mod query;
pub mod suggest;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_proto::v1::ObservedRequest;
use serde::{Deserialize, Serialize};

use paths::{Leaf, Node, NotLearned};

/// (caller, destination, port, method) groups kept.
pub const MAX_GROUPS: usize = 4096;
/// Path nodes kept across all groups.
pub const MAX_NODES: usize = 32_768;
/// Longest identity, workload, method or path kept (bytes).
pub const MAX_FIELD: usize = 512;
/// Longest example path kept (a proxy sends at most 256 bytes of a path).
pub const MAX_EXAMPLE: usize = 256;
/// Longest policy name kept (`namespace/name` is at most 63 + 1 + 253).
pub const MAX_POLICY: usize = 320;
/// Rows not seen for this long are forgotten.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The heap the table stays under whatever it is sent: the groups and nodes at their caps,
/// each field at its longest. Stated for operators; `tests/observed_memory.rs` counts the
/// real heap (dhat) under a flood and under that worst case.
pub const MEMORY_BOUND_BYTES: usize = 64 * 1024 * 1024;

/// What a group of rows shares.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupKey {
    /// The caller's SPIFFE ID, "" for plaintext callers.
    pub source: String,
    /// The caller's workload (`namespace/name`) when its identity names one, else "".
    pub source_workload: String,
    /// The destination workload (`namespace/name`): the reporting sidecar's.
    pub destination: String,
    /// The destination app port.
    pub port: u16,
    /// HTTP method, "" for a connection (opaque TCP, or refused before any request).
    pub method: String,
}

/// One row: a group and a path template, with counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedRow {
    /// What the row's requests share but the path.
    #[serde(flatten)]
    pub key: GroupKey,
    /// Path template (`/orders/{*}`), "" for a connection.
    pub path: String,
    /// What the destination port speaks (`http`, `http2`, `grpc`, `tcp`), from the
    /// configuration when the rows are served; "" when the port is not declared now.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Counts, times, last decision and an example path.
    #[serde(flatten)]
    pub leaf: Leaf,
}

/// A snapshot of the table for tools.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observations {
    /// Rows, ordered by group then template.
    pub rows: Vec<ObservedRow>,
    /// Requests in no row: the table or a proxy's table was full.
    pub folded: u64,
    /// Requests to paths a policy cannot name exactly (`*`, `{`, `}` in a segment).
    pub unnameable: u64,
    /// Unix seconds since which the table has been observing (the oldest first sighting).
    pub since: i64,
}

#[derive(Debug, Default)]
struct Group {
    /// Connections (method "") land at the root's end.
    paths: Node,
}

#[derive(Debug, Default)]
struct Table {
    groups: BTreeMap<GroupKey, Group>,
    nodes: usize,
    folded: u64,
    unnameable: u64,
}

/// The observation table of one control plane.
#[derive(Debug, Default)]
pub struct ObservedTable {
    table: Mutex<Table>,
}

impl Observations {
    /// Fills each row's `protocol` from the destination port as `snapshot` declares it.
    pub fn label_protocols(&mut self, snapshot: &crate::MeshSnapshot) {
        for row in &mut self.rows {
            let (ns, name) = row
                .key
                .destination
                .split_once('/')
                .unwrap_or(("", &row.key.destination));
            row.protocol = snapshot
                .workload(ns, name)
                .and_then(|w| w.port(row.key.port))
                .map_or_else(String::new, |p| p.protocol.as_str().to_owned());
        }
    }
}

/// Why a saved table could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a saved table.
    #[error("{path}: not a saved observation table: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// Now, in Unix seconds.
pub fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn cut(s: String) -> String {
    cut_to(s, MAX_FIELD)
}

fn cut_to(mut s: String, max: usize) -> String {
    s.truncate(s.floor_char_boundary(max));
    s
}

impl Table {
    fn rows(&self, since: i64) -> Observations {
        let mut rows = Vec::new();
        let mut oldest = i64::MAX;
        for (key, group) in &self.groups {
            for (template, leaf) in group.paths.templates() {
                oldest = oldest.min(leaf.first_seen);
                if leaf.last_seen < since {
                    continue;
                }
                rows.push(ObservedRow {
                    protocol: String::new(),
                    key: key.clone(),
                    path: if key.method.is_empty() {
                        String::new()
                    } else {
                        template
                    },
                    leaf: leaf.clone(),
                });
            }
        }
        Observations {
            rows,
            folded: self.folded,
            unnameable: self.unnameable,
            since: if oldest == i64::MAX { 0 } else { oldest },
        }
    }

    fn add(&mut self, key: GroupKey, path: &str, leaf: Leaf, relearn: bool) {
        let requests = leaf.allowed + leaf.denied;
        if !self.groups.contains_key(&key) && self.groups.len() >= MAX_GROUPS {
            self.folded += requests;
            return;
        }
        let mut budget = isize::try_from(MAX_NODES.saturating_sub(self.nodes)).unwrap_or(0);
        let start = budget;
        let is_new = !self.groups.contains_key(&key);
        if is_new {
            if budget <= 0 {
                self.folded += requests;
                return;
            }
            budget -= 1;
        }
        let group = self.groups.entry(key.clone()).or_default();
        let result = if key.method.is_empty() {
            group.paths.learn("/", leaf, &mut budget)
        } else if relearn {
            group.paths.relearn(path, leaf, &mut budget)
        } else {
            group.paths.learn(path, leaf, &mut budget)
        };
        match result {
            Ok(()) => {}
            Err(NotLearned::Unnameable) => self.unnameable += requests,
            Err(NotLearned::Full) => self.folded += requests,
        }
        let used = start - budget;
        self.nodes = self.nodes.saturating_add_signed(used);
        if is_new
            && result.is_err()
            && group.paths.nodes() == 1
            && group.paths.templates().is_empty()
        {
            self.groups.remove(&key);
            self.nodes = self.nodes.saturating_sub(1);
        }
    }
}

impl ObservedTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a proxy's report: `destination` is the reporting workload, `resolve` names the
    /// workload of a caller's identity.
    pub fn ingest(
        &self,
        destination: &str,
        rows: Vec<ObservedRequest>,
        folded: u64,
        resolve: &dyn Fn(&str) -> Option<String>,
    ) {
        let now = now_seconds();
        let mut table = self.lock();
        table.folded += folded;
        for r in rows {
            let Ok(port) = u16::try_from(r.port) else {
                continue;
            };
            let source = cut(r.source);
            let source_workload = if source.is_empty() {
                String::new()
            } else {
                cut(resolve(&source).unwrap_or_default())
            };
            let key = GroupKey {
                source,
                source_workload,
                destination: cut(destination.to_owned()),
                port,
                method: cut(r.method),
            };
            let path = cut(r.path);
            let leaf = Leaf {
                allowed: r.allowed,
                denied: r.denied,
                first_seen: now,
                last_seen: now,
                policy: cut_to(r.policy, MAX_POLICY),
                rule: r.rule,
                last_allowed: r.last_allowed,
                example: cut_to(path.clone(), MAX_EXAMPLE),
            };
            table.add(key, &path, leaf, false);
        }
    }

    /// Rows last seen at or after `since` (Unix seconds), and the counters.
    pub fn snapshot(&self, since: i64) -> Observations {
        self.lock().rows(since)
    }

    /// Path nodes and groups held now.
    pub fn size(&self) -> (usize, usize) {
        let table = self.lock();
        (table.groups.len(), table.nodes)
    }

    /// Forgets rows not seen since `now - RETENTION` (rebuilding the table, under its lock,
    /// only when some are that old).
    pub fn prune(&self) {
        self.prune_before(now_seconds() - i64::try_from(RETENTION.as_secs()).unwrap_or(i64::MAX));
    }

    fn prune_before(&self, cutoff: i64) {
        let mut table = self.lock();
        let all = table.rows(i64::MIN);
        if all.rows.iter().all(|r| r.leaf.last_seen >= cutoff) {
            return;
        }
        let mut fresh = Table {
            folded: all.folded,
            unnameable: all.unnameable,
            ..Table::default()
        };
        for row in all.rows.into_iter().filter(|r| r.leaf.last_seen >= cutoff) {
            let path = row.path.clone();
            fresh.add(row.key, &path, row.leaf, true);
        }
        *table = fresh;
    }

    /// Writes the table to `path` (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let snapshot = self.snapshot(i64::MIN);
        let json = serde_json::to_vec(&snapshot).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }

    /// Reads a table saved by [`Self::save`]; a missing file is an empty table.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(LoadError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        let saved: Observations =
            serde_json::from_slice(&text).map_err(|source| LoadError::Parse {
                path: path.display().to_string(),
                source,
            })?;
        let mut table = Table {
            folded: saved.folded,
            unnameable: saved.unnameable,
            ..Table::default()
        };
        for row in saved.rows {
            let key = GroupKey {
                source: cut(row.key.source),
                source_workload: cut(row.key.source_workload),
                destination: cut(row.key.destination),
                port: row.key.port,
                method: cut(row.key.method),
            };
            let path = cut(row.path);
            let mut leaf = row.leaf;
            leaf.policy = cut_to(leaf.policy, MAX_POLICY);
            leaf.example = cut_to(leaf.example, MAX_EXAMPLE);
            table.add(key, &path, leaf, true);
        }
        Ok(Self {
            table: Mutex::new(table),
        })
    }
}

#[cfg(test)]
mod tests;
