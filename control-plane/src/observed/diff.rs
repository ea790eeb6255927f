//! `palisade authz diff`: the observed traffic replayed against a candidate configuration.
//! Each row's decision before is the one the sidecars made last (with its policy); after is
//! [`crate::check`] on the candidate, for the row's caller and an example request of its
//! template. Rows whose decision changes are listed.

use serde::Serialize;

use super::{Observations, ObservedRow};
use crate::MeshSnapshot;
use crate::check::{self, Query};

/// One row of traffic whose decision would change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The caller's workload, or its identity, or `(plaintext)`.
    pub source: String,
    /// `namespace/name` of the destination.
    pub destination: String,
    /// The app port.
    pub port: u16,
    /// `METHOD /template`, or `connection`.
    pub request: String,
    /// Requests seen on the row.
    pub requests: u64,
    /// Whether the last one was allowed.
    pub allowed_before: bool,
    /// The policy that decided it.
    pub policy_before: String,
    /// Whether the candidate allows it.
    pub allowed_after: bool,
    /// The policy (and rule) that would decide it.
    pub policy_after: String,
    /// The candidate's explanation.
    pub explanation: String,
}

/// What the replay found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Replay {
    /// Rows whose decision would change.
    pub changes: Vec<Change>,
    /// Rows replayed.
    pub replayed: usize,
    /// Rows that could not be replayed on the candidate, with why.
    pub not_replayed: Vec<String>,
}

impl Replay {
    /// Whether anything allowed before would be denied.
    pub fn newly_denied(&self) -> bool {
        self.changes
            .iter()
            .any(|c| c.allowed_before && !c.allowed_after)
    }
}

fn source_label(row: &ObservedRow) -> String {
    if !row.key.source_workload.is_empty() {
        row.key.source_workload.clone()
    } else if !row.key.source.is_empty() {
        row.key.source.clone()
    } else {
        "(plaintext)".to_owned()
    }
}

/// Replays every row of `observed` on `candidate`.
pub fn replay(candidate: &MeshSnapshot, observed: &Observations) -> Replay {
    let mut out = Replay::default();
    for row in &observed.rows {
        let request = if row.key.method.is_empty() {
            "connection".to_owned()
        } else {
            format!("{} {}", row.key.method, row.path)
        };
        let what = format!(
            "{} -> {}:{} {request}",
            source_label(row),
            row.key.destination,
            row.key.port
        );
        let outcome = (|| -> Result<check::Outcome, check::CheckError> {
            let destination =
                check::find_workload(candidate, "destination", &row.key.destination, None)?;
            let (ns, name) = row.key.source_workload.split_once('/').unwrap_or(("", ""));
            let from_workload = candidate.workload(ns, name);
            let identity = match (&from_workload, row.key.source.is_empty()) {
                (None, false) => palisade_certs::SpiffeId::parse(&row.key.source).ok(),
                _ => None,
            };
            let query = Query {
                from_workload,
                from: identity.as_ref(),
                port: Some(row.key.port),
                method: (!row.key.method.is_empty()).then_some(row.key.method.as_str()),
                path: (!row.key.method.is_empty()).then_some(row.leaf.example.as_str()),
                ..Query::default()
            };
            check::decide(candidate, destination, &query)
        })();
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                out.not_replayed.push(format!("{what}: {e}"));
                continue;
            }
        };
        out.replayed += 1;
        if outcome.allowed == row.leaf.last_allowed {
            continue;
        }
        out.changes.push(Change {
            source: source_label(row),
            destination: row.key.destination.clone(),
            port: row.key.port,
            request,
            requests: row.leaf.allowed + row.leaf.denied,
            allowed_before: row.leaf.last_allowed,
            policy_before: match row.leaf.rule {
                r if r >= 0 => format!("{} rule {r}", row.leaf.policy),
                _ => row.leaf.policy.clone(),
            },
            allowed_after: outcome.allowed,
            policy_after: match outcome.rule {
                Some(r) => format!("{} rule {r}", outcome.policy),
                None => outcome.policy.clone(),
            },
            explanation: outcome.explanation,
        });
    }
    out
}
