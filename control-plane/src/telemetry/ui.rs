//! The `/ui` page on the admin port: the service graph (workloads as nodes, observed edges
//! coloured by allowed and denied, with rates), a live table of violations with the deciding
//! policy, and for a chosen edge the policies that apply to it, the sidecar's explanation of
//! its last decision, and `authz check`'s answer on the configuration served now (for that
//! request, or one the operator types). Read-only; everything it loads comes from this server (no CDN:
//! HTML, CSS and JavaScript are embedded), under a Content-Security-Policy of `'self'`.
//!
//! Routes: `/ui` (page), `/ui/app.js`, `/ui/app.css`, `/ui/graph` (JSON), `/ui/violations`
//! (JSON), `/ui/edge?source=NS/W&destination=NS/W` (JSON),
//! `/ui/check?source=NS/W&destination=NS/W[&port=P][&method=M][&path=P]` (JSON); the table's
//! live feed is `/tap`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use super::http::Body;
use super::{EdgeStats, Event, Hub};
use crate::MeshSnapshot;
use crate::check;
use crate::index::Published;

/// Longest path `/ui/check` takes (the sidecar's own limits are larger; this is a page).
const MAX_CHECK_PATH: usize = 2048;
/// Longest method `/ui/check` takes.
const MAX_CHECK_METHOD: usize = 32;

const PAGE: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");
const ICON: &str = include_str!("ui/favicon.svg");
/// Nothing but this server: no inline script, no other origin, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// A workload on the graph.
#[derive(Debug, Serialize)]
struct Node {
    id: String,
    namespace: String,
    name: String,
}

/// An observed edge on the graph.
#[derive(Debug, Serialize)]
struct GraphEdge {
    #[serde(flatten)]
    stats: EdgeStats,
    /// Denials seen on it, in the window or among the recent violations.
    denied: bool,
}

#[derive(Debug, Serialize)]
struct Graph {
    nodes: Vec<Node>,
    edges: Vec<GraphEdge>,
}

/// A policy that applies to an edge's destination.
#[derive(Debug, Serialize)]
struct AppliedPolicy {
    kind: &'static str,
    name: String,
    action: String,
    dry_run: bool,
}

#[derive(Debug, Serialize)]
struct EdgeDetail {
    source: String,
    destination: String,
    policies: Vec<AppliedPolicy>,
    last_decision: Option<Event>,
    /// `authz check` on the configuration served now, for the last decision's request (or
    /// the connection, when none was recorded).
    check: CheckAnswer,
    check_command: String,
}

/// `authz check`'s answer, or why it could not be given.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum CheckAnswer {
    Decided {
        /// `ALLOW` or `DENY`.
        decision: &'static str,
        policy: String,
        rule: Option<usize>,
        explanation: String,
        /// The request decided, e.g. `GET /items` or `connection`.
        request: String,
        /// Every layer, as `authz check` prints it.
        lines: Vec<String>,
    },
    Unavailable {
        error: String,
    },
}

/// A request to check on an edge, read from `/ui/check`'s query.
#[derive(Debug, Default)]
struct CheckRequest {
    source: String,
    destination: String,
    port: Option<u16>,
    method: Option<String>,
    path: Option<String>,
}

/// A whole answer with the live view's headers: the content type, a CSP of this server only,
/// no sniffing, no caching.
pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body).boxed());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

fn json(value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    respond(StatusCode::OK, "application/json", Bytes::from(body))
}

/// Answers a `/ui` path, or `None` if `path` is not one.
pub(crate) fn route(
    hub: &Arc<Hub>,
    published: &Published,
    path: &str,
    query: &str,
) -> Option<Response<Body>> {
    Some(match path {
        "/ui" | "/ui/" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(PAGE.as_bytes()),
        ),
        "/ui/app.js" => respond(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            Bytes::from_static(SCRIPT.as_bytes()),
        ),
        "/ui/app.css" => respond(
            StatusCode::OK,
            "text/css; charset=utf-8",
            Bytes::from_static(STYLE.as_bytes()),
        ),
        "/ui/favicon.svg" => respond(
            StatusCode::OK,
            "image/svg+xml",
            Bytes::from_static(ICON.as_bytes()),
        ),
        "/ui/graph" => {
            hub.lease();
            json(&graph(hub, published))
        }
        "/ui/violations" => json(&hub.recent_violations()),
        "/ui/edge" => match edge_query(query, false) {
            Ok(q) => json(&edge(hub, published, &q.source, &q.destination)),
            Err(e) => bad_request(path, &e),
        },
        "/ui/diff" => diff(hub, published, query),
        "/ui/check" => match edge_query(query, true) {
            Ok(q) => json(&check_edge(&published.snapshot, &q)),
            Err(e) => bad_request(path, &e),
        },
        _ => return None,
    })
}

fn graph(hub: &Hub, published: &Published) -> Graph {
    let nodes: Vec<Node> = published
        .snapshot
        .workloads()
        .map(|w| Node {
            id: format!("{}/{}", w.namespace, w.name),
            namespace: w.namespace.clone(),
            name: w.name.clone(),
        })
        .collect();
    let denied_recently: BTreeSet<(String, String)> = hub
        .recent_violations()
        .iter()
        .filter(|e| e.denied() && e.direction == "inbound" && !e.source_workload.is_empty())
        .map(|e| (e.source_workload.clone(), e.reporter.clone()))
        .collect();
    let mut edges: BTreeMap<(String, String), GraphEdge> = hub
        .top()
        .into_iter()
        .map(|stats| {
            let key = (stats.source.clone(), stats.destination.clone());
            let denied = stats.denied > 0 || denied_recently.contains(&key);
            (key, GraphEdge { stats, denied })
        })
        .collect();
    // A denial outside the window still marks its edge.
    for (source, destination) in denied_recently {
        edges
            .entry((source.clone(), destination.clone()))
            .or_insert_with(|| GraphEdge {
                stats: EdgeStats {
                    source,
                    destination,
                    requests_per_second: 0.0,
                    denied_per_second: 0.0,
                    p99_ms: None,
                    requests: 0,
                    denied: 0,
                },
                denied: true,
            });
    }
    Graph {
        nodes,
        edges: edges.into_values().collect(),
    }
}

/// The observed traffic of a workload replayed on the configuration served now: what it
/// decides differently from what the sidecars decided when the traffic was seen.
fn diff(hub: &Hub, published: &Published, query: &str) -> Response<Body> {
    let Some(table) = hub.observed() else {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"observation is off (the control plane runs with --no-observe)\n"),
        );
    };
    let q = match crate::observed::query::ObservedQuery::parse(query) {
        Ok(q) if q.workload.is_some() => q,
        Ok(_) => return bad_request("/ui/diff", "workload is required"),
        Err(e) => return bad_request("/ui/diff", &e),
    };
    let observed = q.select(table, crate::observed::now_seconds());
    json(&crate::observed::diff::replay(
        &published.snapshot,
        &observed,
    ))
}

fn bad_request(path: &str, error: &str) -> Response<Body> {
    respond(
        StatusCode::BAD_REQUEST,
        "text/plain; charset=utf-8",
        Bytes::from(format!("{path}: {error}\n")),
    )
}

/// `source` and `destination` (workload names), and with `request` also `port`, `method` and
/// `path`; anything else, a repeated parameter, or a value out of bounds is refused.
fn edge_query(query: &str, request: bool) -> Result<CheckRequest, String> {
    let mut q = CheckRequest::default();
    let mut seen = BTreeSet::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if !seen.insert(k.clone()) {
            return Err(format!("{k}: given twice"));
        }
        match (&*k, request) {
            ("source" | "destination", _) => {
                let ok = !v.is_empty()
                    && v.len() <= 253
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-./".contains(&b));
                if !ok {
                    return Err(format!("{k}: not a workload name: {v:?}"));
                }
                if k == "source" {
                    q.source = v.into_owned();
                } else {
                    q.destination = v.into_owned();
                }
            }
            ("port", true) if v.is_empty() => {}
            ("port", true) => {
                q.port = Some(v.parse().map_err(|_| format!("port: not a port: {v:?}"))?);
            }
            ("method", true) if v.is_empty() => {}
            ("method", true) => {
                let ok = v.len() <= MAX_CHECK_METHOD && v.bytes().all(|b| b.is_ascii_alphabetic());
                if !ok {
                    return Err(format!("method: not an HTTP method: {v:?}"));
                }
                q.method = Some(v.to_ascii_uppercase());
            }
            ("path", true) if v.is_empty() => {}
            ("path", true) => {
                if v.len() > MAX_CHECK_PATH || !v.starts_with('/') {
                    return Err(format!(
                        "path: must start with / and be at most {MAX_CHECK_PATH} bytes"
                    ));
                }
                q.path = Some(v.into_owned());
            }
            (other, _) => return Err(format!("unknown parameter {other:?}")),
        }
    }
    if q.source.is_empty() || q.destination.is_empty() {
        return Err("source and destination are required".to_owned());
    }
    Ok(q)
}

/// `authz check` for `q` on the configuration served now.
fn check_edge(snapshot: &MeshSnapshot, q: &CheckRequest) -> CheckAnswer {
    let answer = || -> Result<CheckAnswer, check::CheckError> {
        let from = check::find_workload(snapshot, "source", &q.source, None)?;
        let to = check::find_workload(snapshot, "destination", &q.destination, None)?;
        let query = check::Query {
            from_workload: Some(from),
            port: q.port,
            method: q.method.as_deref(),
            path: q.path.as_deref(),
            ..check::Query::default()
        };
        let outcome = check::decide(snapshot, to, &query)?;
        Ok(CheckAnswer::Decided {
            decision: outcome.decision(),
            request: match &outcome.http {
                Some((method, path)) => format!("{method} {path}"),
                None => format!("connection to port {}", outcome.port),
            },
            policy: outcome.policy.clone(),
            rule: outcome.rule,
            explanation: outcome.explanation.clone(),
            lines: outcome.to_text(),
        })
    };
    answer().unwrap_or_else(|e| CheckAnswer::Unavailable {
        error: e.to_string(),
    })
}

fn edge(hub: &Hub, published: &Published, source: &str, destination: &str) -> EdgeDetail {
    let snapshot = &published.snapshot;
    let mut policies = Vec::new();
    let (ns, name) = destination.split_once('/').unwrap_or(("", destination));
    if let Some(w) = snapshot.workload(ns, name) {
        for p in snapshot.authorization_policies_for(w) {
            policies.push(AppliedPolicy {
                kind: "AuthorizationPolicy",
                name: format!("{}/{}", p.namespace, p.name),
                action: p.action.as_str().to_owned(),
                dry_run: p.dry_run,
            });
        }
        for p in snapshot.network_policies_for(w) {
            policies.push(AppliedPolicy {
                kind: "NetworkPolicy",
                name: format!("{}/{}", p.namespace, p.name),
                action: "ISOLATE".to_owned(),
                dry_run: false,
            });
        }
    }
    let last_decision = hub.last_decision(source, destination).map(|e| (*e).clone());
    let check = check_edge(
        snapshot,
        &CheckRequest {
            source: source.to_owned(),
            destination: destination.to_owned(),
            port: last_decision.as_ref().and_then(|e| {
                let (_, port) = e.destination.rsplit_once(':')?;
                port.parse().ok()
            }),
            method: last_decision
                .as_ref()
                .filter(|e| !e.method.is_empty())
                .map(|e| e.method.clone()),
            path: last_decision
                .as_ref()
                .filter(|e| !e.method.is_empty())
                .map(|e| e.path.clone()),
        },
    );
    let check_command = match &last_decision {
        Some(e) if !e.method.is_empty() => format!(
            "palisade authz check --config DIR --from-workload {source} --to {destination} \
             --method {} --path {}",
            e.method, e.path
        ),
        _ => {
            format!("palisade authz check --config DIR --from-workload {source} --to {destination}")
        }
    };
    EdgeDetail {
        source: source.to_owned(),
        destination: destination.to_owned(),
        policies,
        last_decision,
        check,
        check_command,
    }
}
