//! `palisade authz suggest`: least-privilege policies from what was observed. For each
//! destination workload, one AuthorizationPolicy (ALLOW) naming each caller's principal and,
//! per port and method, the path templates it was seen using; and one NetworkPolicy
//! admitting exactly the calling workloads on exactly those ports. Only allowed traffic is
//! suggested; each rule carries its observed counts as comments. The documents load with
//! `palisade check` unchanged.
//!
//! What a policy cannot express exactly is left out and said in a comment: callers without
//! a verified identity (AuthorizationPolicy names principals), callers that are not
//! workloads of the mesh (NetworkPolicy selects pods), destinations without labels (a
//! selector without labels would select every workload of the namespace).

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{Observations, ObservedRow};
use crate::MeshSnapshot;
use crate::model::{Protocol, Workload};
use crate::netpol::NAMESPACE_NAME_LABEL;

/// The suggested documents, and what could not be suggested.
#[derive(Debug, Clone, Default)]
pub struct Suggestion {
    /// YAML documents (AuthorizationPolicy and NetworkPolicy), `---` separated, with comments.
    pub yaml: String,
    /// Destination workloads a policy was suggested for.
    pub workloads: usize,
    /// What was left out, one line each (also in the YAML as comments).
    pub left_out: Vec<String>,
}

/// A YAML scalar that reads back as exactly `s` (a JSON string is a YAML double-quoted one).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn labels(map: &std::collections::BTreeMap<String, String>) -> String {
    let inner: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{}: {}", q(k), q(v)))
        .collect();
    format!("{{{}}}", inner.join(", "))
}

/// Requests allowed in `rows`, and the first and last time one was seen.
fn totals<'a>(rows: impl IntoIterator<Item = &'a ObservedRow>) -> (u64, i64, i64) {
    rows.into_iter()
        .fold((0, i64::MAX, i64::MIN), |(n, first, last), r| {
            (
                n + r.leaf.allowed,
                first.min(r.leaf.first_seen),
                last.max(r.leaf.last_seen),
            )
        })
}

fn requests(n: u64) -> String {
    if n == 1 {
        "1 request".to_owned()
    } else {
        format!("{n} requests")
    }
}

fn when(unix: i64) -> String {
    palisade_certs::ca::fmt_unix(unix)
}

/// The suggestion for the allowed rows of `observed`, on the workloads of `snapshot`.
pub fn suggest(snapshot: &MeshSnapshot, observed: &Observations) -> Suggestion {
    let mut out = Suggestion::default();
    let mut by_destination: BTreeMap<&str, Vec<&ObservedRow>> = BTreeMap::new();
    for row in observed.rows.iter().filter(|r| r.leaf.allowed > 0) {
        // A path the loader would refuse (a query or fragment sign, a character a template
        // cannot hold) is left out: the suggestion must load as written.
        if !row.key.method.is_empty()
            && let Some(why) = crate::config::policy_path_error(&row.path)
        {
            out.left_out.push(format!(
                "{}: {} {} from {}: no policy can name this path: {why}",
                row.key.destination, row.key.method, row.path, row.key.source
            ));
            continue;
        }
        by_destination
            .entry(&row.key.destination)
            .or_default()
            .push(row);
    }
    let mut yaml = String::new();
    for line in &out.left_out {
        let _ = writeln!(yaml, "# Left out: {}.", line.replace(['\n', '\r'], " "));
    }
    let _ = writeln!(
        yaml,
        "# Suggested by `palisade authz suggest` from {} of allowed traffic.",
        match by_destination.values().map(Vec::len).sum::<usize>() {
            1 => "1 observed row".to_owned(),
            n => format!("{n} observed rows"),
        }
    );
    if observed.folded > 0 {
        let line = format!(
            "{} requests were not kept in the observation table (it was full): traffic they \
             stand for may be missing here",
            observed.folded
        );
        let _ = writeln!(yaml, "# WARNING: {line}.");
        out.left_out.push(line);
    }
    for (destination, rows) in by_destination {
        let (ns, name) = destination.split_once('/').unwrap_or(("", destination));
        let Some(workload) = snapshot.workload(ns, name) else {
            let line = format!("{destination}: not a workload of the configuration now");
            let _ = writeln!(yaml, "# Left out: {line}.");
            out.left_out.push(line);
            continue;
        };
        if workload.labels.is_empty() {
            let line = format!("{destination}: has no labels, so no selector can name it alone");
            let _ = writeln!(yaml, "# Left out: {line}.");
            out.left_out.push(line);
            continue;
        }
        out.workloads += 1;
        authorization_policy(&mut yaml, &mut out.left_out, workload, &rows);
        network_policy(snapshot, &mut yaml, &mut out.left_out, workload, &rows);
    }
    out.yaml = yaml;
    out
}

/// A suggested document's start: its kind, `suggested-<workload>` in the workload's
/// namespace, and `spec.<selector>` naming the workload by all its labels.
fn head(yaml: &mut String, api_version: &str, kind: &str, selector: &str, workload: &Workload) {
    let _ = writeln!(yaml, "apiVersion: {api_version}");
    let _ = writeln!(yaml, "kind: {kind}");
    let _ = writeln!(
        yaml,
        "metadata: {{name: {}, namespace: {}}}",
        q(&format!("suggested-{}", workload.name)),
        q(&workload.namespace)
    );
    let _ = writeln!(yaml, "spec:");
    let _ = writeln!(yaml, "  {selector}:");
    let _ = writeln!(yaml, "    matchLabels: {}", labels(&workload.labels));
}

fn authorization_policy(
    yaml: &mut String,
    left_out: &mut Vec<String>,
    workload: &Workload,
    rows: &[&ObservedRow],
) {
    let destination = format!("{}/{}", workload.namespace, workload.name);
    let already_said = left_out.len();
    // Rules by principal, then operations by (port, method), then path templates.
    let mut by_source: BTreeMap<&str, BTreeMap<(u16, &str), Vec<&ObservedRow>>> = BTreeMap::new();
    for row in rows {
        if row.key.source.is_empty() {
            let line = format!(
                "{destination}: {} requests from callers without a verified identity (plaintext) \
                 on port {}; AuthorizationPolicy names principals, so they stay denied",
                row.leaf.allowed, row.key.port
            );
            left_out.push(line);
            continue;
        }
        by_source
            .entry(&row.key.source)
            .or_default()
            .entry((row.key.port, &row.key.method))
            .or_default()
            .push(row);
    }
    let (total, first, last) = totals(rows.iter().copied());
    let _ = writeln!(yaml, "---");
    let _ = writeln!(
        yaml,
        "# {destination}: {} allowed, observed {} to {}.",
        requests(total),
        when(first),
        when(last)
    );
    for line in &left_out[already_said..] {
        let _ = writeln!(yaml, "# Left out: {line}.");
    }
    head(
        yaml,
        "security.istio.io/v1",
        "AuthorizationPolicy",
        "selector",
        workload,
    );
    let _ = writeln!(yaml, "  action: ALLOW");
    if by_source.is_empty() {
        // An ALLOW policy without rules allows nothing: exactly what was observed.
        let _ = writeln!(yaml, "  rules: []");
        return;
    }
    let _ = writeln!(yaml, "  rules:");
    for (source, operations) in by_source {
        let principal = source.strip_prefix("spiffe://").unwrap_or(source);
        let (n, first, last) = totals(operations.values().flatten().copied());
        let caller = operations
            .values()
            .flatten()
            .map(|r| r.key.source_workload.as_str())
            .find(|w| !w.is_empty())
            .unwrap_or("(not a workload of the mesh)");
        let _ = writeln!(
            yaml,
            "  # {caller}: {}, {} to {}",
            requests(n),
            when(first),
            when(last)
        );
        let _ = writeln!(yaml, "  - from:");
        let _ = writeln!(yaml, "    - source:");
        let _ = writeln!(yaml, "        principals: [{}]", q(principal));
        let _ = writeln!(yaml, "    to:");
        for ((port, method), rows) in operations {
            let opaque =
                method.is_empty() || workload.port(port).map(|p| p.protocol) == Some(Protocol::Tcp);
            let (n, _, _) = totals(rows.iter().copied());
            if opaque {
                let _ = writeln!(yaml, "    # connections to port {port}: {n}");
                let _ = writeln!(yaml, "    - operation:");
                let _ = writeln!(yaml, "        ports: [{}]", q(&port.to_string()));
                continue;
            }
            let _ = writeln!(yaml, "    # {method} on port {port}: {n}");
            let _ = writeln!(yaml, "    - operation:");
            let _ = writeln!(yaml, "        ports: [{}]", q(&port.to_string()));
            let _ = writeln!(yaml, "        methods: [{}]", q(method));
            let _ = writeln!(yaml, "        paths:");
            let mut paths: Vec<&&ObservedRow> = rows.iter().collect();
            paths.sort_by(|a, b| a.path.cmp(&b.path));
            for row in paths {
                let _ = writeln!(
                    yaml,
                    "        - {}  # {}, e.g. {}",
                    q(&row.path),
                    requests(row.leaf.allowed),
                    // A comment ends at the line's end: an example cannot break out of it.
                    row.leaf.example.replace(['\n', '\r'], " ")
                );
            }
        }
    }
}

fn network_policy(
    snapshot: &MeshSnapshot,
    yaml: &mut String,
    left_out: &mut Vec<String>,
    workload: &Workload,
    rows: &[&ObservedRow],
) {
    let destination = format!("{}/{}", workload.namespace, workload.name);
    // Peers by calling workload, each with the ports it used.
    let mut by_caller: BTreeMap<&str, (Option<&Workload>, BTreeMap<u16, u64>)> = BTreeMap::new();
    for row in rows {
        if row.key.source_workload.is_empty() {
            left_out.push(format!(
                "{destination}: {} requests on port {} from a caller that is not a workload of \
                 the mesh; NetworkPolicy selects workloads, so it stays denied",
                row.leaf.allowed, row.key.port
            ));
            continue;
        }
        let (ns, name) = row
            .key
            .source_workload
            .split_once('/')
            .unwrap_or(("", &row.key.source_workload));
        let entry = by_caller
            .entry(&row.key.source_workload)
            .or_insert_with(|| (snapshot.workload(ns, name), BTreeMap::new()));
        *entry.1.entry(row.key.port).or_default() += row.leaf.allowed;
    }
    let _ = writeln!(yaml, "---");
    let _ = writeln!(
        yaml,
        "# {destination}: the callers and ports observed, at layer 4."
    );
    head(
        yaml,
        "networking.k8s.io/v1",
        "NetworkPolicy",
        "podSelector",
        workload,
    );
    let _ = writeln!(yaml, "  policyTypes: [Ingress]");
    let callers: Vec<_> = by_caller
        .into_iter()
        .filter_map(|(name, (w, ports))| match w {
            Some(w) if !w.labels.is_empty() => Some((w, ports)),
            _ => {
                left_out.push(format!(
                    "{destination}: caller {name} is not a workload with labels now"
                ));
                None
            }
        })
        .collect();
    if callers.is_empty() {
        let _ = writeln!(yaml, "  ingress: []");
        return;
    }
    let _ = writeln!(yaml, "  ingress:");
    for (caller, ports) in callers {
        let n: u64 = ports.values().sum();
        let _ = writeln!(
            yaml,
            "  # from {}/{}: {}",
            caller.namespace,
            caller.name,
            requests(n)
        );
        let _ = writeln!(yaml, "  - from:");
        if caller.namespace == workload.namespace {
            let _ = writeln!(yaml, "    - podSelector:");
            let _ = writeln!(yaml, "        matchLabels: {}", labels(&caller.labels));
        } else {
            let _ = writeln!(yaml, "    - namespaceSelector:");
            let _ = writeln!(
                yaml,
                "        matchLabels: {{{}: {}}}",
                q(NAMESPACE_NAME_LABEL),
                q(&caller.namespace)
            );
            let _ = writeln!(yaml, "      podSelector:");
            let _ = writeln!(yaml, "        matchLabels: {}", labels(&caller.labels));
        }
        let _ = writeln!(yaml, "    ports:");
        for port in ports.keys() {
            let _ = writeln!(yaml, "    - {{protocol: TCP, port: {port}}}");
        }
    }
}
