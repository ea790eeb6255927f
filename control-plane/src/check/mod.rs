//! Would this connection or request be allowed? Composes the compilers of this crate, the
//! proto snapshots a sidecar would receive, and the sidecar's own evaluators, so the answer
//! is exactly what the running sidecars would decide: NetworkPolicy at the caller's sidecar
//! (egress) and the destination's (ingress) for the connection, then AuthorizationPolicy for
//! each request on it (or for the connection, on an opaque TCP port).
//!
//! Used by `palisade authz check` (offline, on a directory) and by the live view's edge
//! panel (on the snapshot the control plane serves).

pub mod connection;
pub mod request;

use std::net::IpAddr;

use palisade_certs::SpiffeId;

use crate::MeshSnapshot;
use crate::index::UnknownWorkload;
use crate::model::{Protocol, Workload};
use connection::ConnectionVerdict;
use request::{Request, RequestVerdict};

/// Why a check could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// A workload named by the query is not in the configuration.
    #[error("{flag} {value}: no such Workload")]
    NoSuchWorkload {
        /// Which part of the query named it (`--to`, `--from-workload`).
        flag: &'static str,
        /// The name given.
        value: String,
    },
    /// A bare name matches workloads in several namespaces.
    #[error("{flag} {value}: several namespaces have this Workload; write NAMESPACE/NAME")]
    AmbiguousWorkload {
        /// Which part of the query named it.
        flag: &'static str,
        /// The name given.
        value: String,
    },
    /// No port was given and the destination declares none.
    #[error("--port is needed: Workload {0} declares no ports")]
    NoPort(String),
    /// The destination isolates ingress by address and the caller has none.
    #[error(
        "NetworkPolicy selects {0} for ingress, which decides on the caller's address: \
         give --source-ip or --from-workload"
    )]
    NeedsSourceAddress(String),
    /// A request header that is not `NAME=VALUE` or not valid HTTP.
    #[error("header {0:?}: {1}")]
    Header(String, &'static str),
    /// The snapshot compiled for a workload was refused by the sidecar's evaluator.
    #[error("{what}: {message}")]
    Compiled {
        /// Which snapshot.
        what: String,
        /// The evaluator's reason.
        message: String,
    },
    /// The workload vanished between lookup and compilation.
    #[error(transparent)]
    Unknown(#[from] UnknownWorkload),
}

/// `NAMESPACE/NAME`, or `NAME` looked up in `namespace` when given, else across the mesh.
pub fn find_workload<'a>(
    snapshot: &'a MeshSnapshot,
    flag: &'static str,
    value: &str,
    namespace: Option<&str>,
) -> Result<&'a Workload, CheckError> {
    let missing = || CheckError::NoSuchWorkload {
        flag,
        value: value.to_owned(),
    };
    if let Some((ns, name)) = value.split_once('/') {
        return snapshot.workload(ns, name).ok_or_else(missing);
    }
    if let Some(ns) = namespace {
        return snapshot.workload(ns, value).ok_or_else(missing);
    }
    let matches: Vec<_> = snapshot.workloads().filter(|w| w.name == value).collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(missing()),
        _ => Err(CheckError::AmbiguousWorkload {
            flag,
            value: value.to_owned(),
        }),
    }
}

/// One connection or request to decide.
#[derive(Debug, Default)]
pub struct Query<'a> {
    /// The calling workload: its identity and address, and its own egress rules.
    pub from_workload: Option<&'a Workload>,
    /// The caller's identity when it is not a workload of the configuration.
    pub from: Option<&'a SpiffeId>,
    /// The caller's address when it is not a workload of the configuration.
    pub source_ip: Option<IpAddr>,
    /// Destination app port; the destination's first port when absent.
    pub port: Option<u16>,
    /// HTTP method; with neither method, path nor headers only the connection is decided
    /// (except on an opaque TCP port, where authorization is per connection).
    pub method: Option<&'a str>,
    /// Request path, may carry a query.
    pub path: Option<&'a str>,
    /// `NAME=VALUE` request headers; `host=...` sets the authority.
    pub headers: &'a [String],
}

/// The answer, with every layer's part.
#[derive(Debug)]
pub struct Outcome {
    /// Whether the sidecars let it through.
    pub allowed: bool,
    /// The deciding policy (or the default, or a refusal reason).
    pub policy: String,
    /// The deciding rule, when a rule decided.
    pub rule: Option<usize>,
    /// One line: why.
    pub explanation: String,
    /// NetworkPolicy at both ends.
    pub connection: ConnectionVerdict,
    /// AuthorizationPolicy's answer, when a request (or TCP connection) was decided.
    pub request: Option<RequestVerdict>,
    /// `NS/NAME (spiffe id)`, the identity, or a caller without one.
    pub caller: String,
    /// The caller's identity.
    pub source: Option<SpiffeId>,
    /// The caller's workload, `NS/NAME`.
    pub source_workload: Option<String>,
    /// The caller's address.
    pub source_ip: Option<IpAddr>,
    /// `NS/NAME` of the destination.
    pub destination: String,
    /// The destination port decided.
    pub port: u16,
    /// Method and path of the request decided, when one was (not on a TCP port).
    pub http: Option<(String, String)>,
    /// The port speaks gRPC.
    pub grpc: bool,
    /// The port is opaque TCP.
    pub tcp: bool,
}

/// Decides `query` to `destination` as the sidecars serving `snapshot` would.
pub fn decide(
    snapshot: &MeshSnapshot,
    destination: &Workload,
    query: &Query<'_>,
) -> Result<Outcome, CheckError> {
    let (namespace, name) = (&destination.namespace, &destination.name);
    let port = match query.port {
        Some(p) => p,
        None => destination
            .ports
            .first()
            .map(|p| p.port)
            .ok_or_else(|| CheckError::NoPort(format!("{namespace}/{name}")))?,
    };
    let protocol = destination.port(port).map(|p| p.protocol);
    let tcp = protocol == Some(Protocol::Tcp);
    let grpc = protocol == Some(Protocol::Grpc);
    let from_workload = query.from_workload;
    let source = query.from.or(from_workload.map(|w| &w.identity));
    let source_ip = query.source_ip.or(from_workload.map(|w| w.address));

    let connection = connection::decide(
        snapshot,
        from_workload,
        source_ip,
        source,
        destination,
        port,
    )?;

    let described = query.method.is_some() || query.path.is_some() || !query.headers.is_empty();
    let method = query
        .method
        .unwrap_or(if grpc { "POST" } else { "GET" })
        .to_owned();
    let path = query.path.unwrap_or("/").to_owned();
    let http = (!tcp).then_some((method.as_str(), path.as_str(), query.headers));
    let request = if tcp || described {
        Some(request::decide(
            snapshot,
            destination,
            &Request {
                source,
                source_ip,
                port,
                http,
            },
        )?)
    } else {
        None
    };
    let (allowed, policy, rule, explanation) = verdict(&connection, request.as_ref());
    let caller = match (from_workload, source) {
        (Some(w), _) => format!("{}/{} ({})", w.namespace, w.name, w.identity),
        (None, Some(id)) => id.to_string(),
        (None, None) => "a caller without a verified identity".to_owned(),
    };
    Ok(Outcome {
        allowed,
        policy,
        rule,
        explanation,
        http: (http.is_some() && request.is_some()).then(|| (method.clone(), path.clone())),
        connection,
        request,
        caller,
        source: source.cloned(),
        source_workload: from_workload.map(|w| format!("{}/{}", w.namespace, w.name)),
        source_ip,
        destination: format!("{namespace}/{name}"),
        port,
        grpc,
        tcp,
    })
}

/// The overall answer: the first layer that refuses, else the last one consulted.
fn verdict(
    connection: &ConnectionVerdict,
    request: Option<&RequestVerdict>,
) -> (bool, String, Option<usize>, String) {
    if let Some((side, d)) = connection.refusal() {
        return (
            false,
            d.policy_label().to_owned(),
            None,
            format!("NetworkPolicy, {side}: {}", d.explain()),
        );
    }
    match request {
        Some(RequestVerdict::Refused(label, why)) => {
            (false, (*label).to_owned(), None, why.clone())
        }
        Some(RequestVerdict::Decided(decision)) => {
            let (policy, rule) = request::policy_and_rule(decision);
            (decision.allowed, policy, rule, decision.explain())
        }
        None => {
            let d = &connection.ingress;
            let rule = match &d.decided_by {
                palisade_proxy::netpol::NetDecidedBy::Rule { rule, .. } => Some(*rule),
                _ => None,
            };
            (
                true,
                d.policy_label().to_owned(),
                rule,
                format!("NetworkPolicy, ingress: {}", d.explain()),
            )
        }
    }
}

impl Outcome {
    /// `ALLOW` or `DENY`.
    pub fn decision(&self) -> &'static str {
        if self.allowed { "ALLOW" } else { "DENY" }
    }

    /// The answer as one JSON object (`authz check --output json`).
    pub fn to_json(&self) -> serde_json::Value {
        let decided = match &self.request {
            Some(RequestVerdict::Decided(d)) => Some(d),
            _ => None,
        };
        let mut request_json = serde_json::json!({
            "from": self.source.as_ref().map(|s| s.to_string()),
            "from_workload": self.source_workload,
            "source_ip": self.source_ip.map(|ip| ip.to_string()),
            "to": self.destination,
            "port": self.port,
        });
        if let Some((method, path)) = &self.http {
            request_json["method"] = method.clone().into();
            request_json["path"] = path.clone().into();
        }
        serde_json::json!({
            "decision": self.decision(),
            "policy": self.policy,
            "rule": self.rule,
            "explanation": self.explanation,
            "audits": decided
                .map(|d| d.audits.matched.iter()
                    .map(|a| serde_json::json!({"policy": a.policy, "rule": a.rule}))
                    .collect::<Vec<_>>())
                .unwrap_or_default(),
            "dry_run": decided.and_then(|d| d.audits.dry_run.as_ref().map(request::dry_run_json)),
            "network_policy": {
                "egress": self.connection.egress.as_ref().map(connection::decision_json),
                "ingress": connection::decision_json(&self.connection.ingress),
            },
            "request": request_json,
        })
    }

    /// The answer as a few lines for people (`authz check`'s text output).
    pub fn to_text(&self) -> Vec<String> {
        let what = match &self.http {
            Some((method, path)) => {
                format!("{method} {path}{}", if self.grpc { " [gRPC]" } else { "" })
            }
            None => "connection".to_owned(),
        };
        let mut lines = vec![format!(
            "{}  {what} from {}{} to {}:{}",
            if self.allowed { "ALLOW" } else { "DENY " },
            self.caller,
            self.source_ip
                .map(|ip| format!(" at {ip}"))
                .unwrap_or_default(),
            self.destination,
            self.port,
        )];
        if let Some(egress) = &self.connection.egress {
            lines.push(format!("  NetworkPolicy, egress: {}", egress.explain()));
        }
        lines.push(format!(
            "  NetworkPolicy, ingress: {}",
            self.connection.ingress.explain()
        ));
        match &self.request {
            Some(RequestVerdict::Refused(_, why)) => lines.push(format!("  {why}")),
            Some(RequestVerdict::Decided(decision)) => {
                // The explanation lists AUDIT matches and, on a line of its own, the dry-run
                // outcome.
                let mut shown = (**decision).clone();
                let dry_run = shown.audits.dry_run.take();
                lines.push(format!("  AuthorizationPolicy: {}", shown.explain()));
                if let Some(d) = dry_run {
                    lines.push(format!("  {}", d.explain()));
                }
            }
            None if !self.tcp && self.allowed => lines.push(
                "  requests on it are decided by AuthorizationPolicy: add --method or --path"
                    .to_owned(),
            ),
            None => {}
        }
        lines
    }
}
