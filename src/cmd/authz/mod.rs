//! `palisade authz check`: would this connection or request be allowed? Composes the control
//! plane's compilers, the proto snapshots a sidecar would receive, and the sidecar's own
//! evaluators, so the answer is exactly what the running sidecars would decide: NetworkPolicy
//! at the caller's sidecar (egress) and the destination's (ingress) for the connection, then
//! AuthorizationPolicy for each request on it (or for the connection, on an opaque TCP port).

mod connection;
mod request;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use palisade_certs::SpiffeId;
use palisade_control_plane::MeshSnapshot;
use palisade_control_plane::model::{Protocol, Workload};

use connection::ConnectionVerdict;
use request::{Request, RequestVerdict};

/// Exit status of a denied request.
const EXIT_DENY: u8 = 3;

/// Authorization tools.
#[derive(Debug, Subcommand)]
pub enum AuthzCommand {
    /// Decide one connection or request as the sidecars would, and say which policies and
    /// rules decided.
    Check(CheckArgs),
}

/// Flags of `authz check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Directory of mesh YAML.
    #[arg(long)]
    pub config: PathBuf,
    /// The destination workload: NAME (in the caller's namespace with --from-workload) or
    /// NAMESPACE/NAME.
    #[arg(long)]
    pub to: String,
    /// The caller's SPIFFE ID; leave out for a caller without a verified identity (plaintext).
    #[arg(long, conflicts_with = "from_workload")]
    pub from: Option<String>,
    /// The calling workload, NAMESPACE/NAME: its identity and address, and its own
    /// NetworkPolicy egress rules.
    #[arg(long, value_name = "NS/NAME")]
    pub from_workload: Option<String>,
    /// HTTP method (default GET; POST for a gRPC port). With neither --method, --path nor
    /// --header, only the connection is decided.
    #[arg(long)]
    pub method: Option<String>,
    /// Request path, may carry a query (default `/` when --method or --header is given).
    #[arg(long)]
    pub path: Option<String>,
    /// Destination port (default: the workload's first port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Request header `name=value` (repeatable); `host=...` sets the authority.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// The caller's IP address (for NetworkPolicy `ipBlock`, `ipBlocks` and `source.ip`).
    #[arg(long, conflicts_with = "from_workload")]
    pub source_ip: Option<IpAddr>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// How the decision is printed.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Output {
    /// A few lines for people.
    Text,
    /// One JSON object for scripts.
    Json,
}

/// Runs an `authz` subcommand.
pub fn run(command: AuthzCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuthzCommand::Check(args) => check(args),
    }
}

/// `NAMESPACE/NAME`, or `NAME` looked up in `namespace` when given, else across the mesh.
fn find_workload<'a>(
    snapshot: &'a MeshSnapshot,
    flag: &str,
    value: &str,
    namespace: Option<&str>,
    config: &std::path::Path,
) -> anyhow::Result<&'a Workload> {
    let missing = || format!("{flag} {value}: no such Workload in {}", config.display());
    if let Some((ns, name)) = value.split_once('/') {
        return snapshot.workload(ns, name).with_context(missing);
    }
    if let Some(ns) = namespace {
        return snapshot.workload(ns, value).with_context(missing);
    }
    let matches: Vec<_> = snapshot.workloads().filter(|w| w.name == value).collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => anyhow::bail!(missing()),
        _ => anyhow::bail!(
            "{flag} {value}: several namespaces have this Workload; write NAMESPACE/NAME"
        ),
    }
}

/// The overall answer: the first layer that refuses, else the last one consulted.
struct Verdict {
    allowed: bool,
    policy: String,
    rule: Option<usize>,
    explanation: String,
}

fn verdict(connection: &ConnectionVerdict, request: Option<&RequestVerdict>) -> Verdict {
    if let Some((side, d)) = connection.refusal() {
        let rule = None;
        return Verdict {
            allowed: false,
            policy: d.policy_label().to_owned(),
            rule,
            explanation: format!("NetworkPolicy, {side}: {}", d.explain()),
        };
    }
    match request {
        Some(RequestVerdict::Refused(label, why)) => Verdict {
            allowed: false,
            policy: (*label).to_owned(),
            rule: None,
            explanation: why.clone(),
        },
        Some(RequestVerdict::Decided(decision)) => {
            let (policy, rule) = request::policy_and_rule(decision);
            Verdict {
                allowed: decision.allowed,
                policy,
                rule,
                explanation: decision.explain(),
            }
        }
        None => {
            let d = &connection.ingress;
            let rule = match &d.decided_by {
                palisade_proxy::netpol::NetDecidedBy::Rule { rule, .. } => Some(*rule),
                _ => None,
            };
            Verdict {
                allowed: true,
                policy: d.policy_label().to_owned(),
                rule,
                explanation: format!("NetworkPolicy, ingress: {}", d.explain()),
            }
        }
    }
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let snapshot = palisade_control_plane::load_dir(&args.config)?;
    let from_workload = args
        .from_workload
        .as_deref()
        .map(|w| find_workload(&snapshot, "--from-workload", w, None, &args.config))
        .transpose()?;
    let destination = find_workload(
        &snapshot,
        "--to",
        &args.to,
        from_workload.map(|w| w.namespace.as_str()),
        &args.config,
    )?;
    let (namespace, name) = (&destination.namespace, &destination.name);
    let port = match args.port {
        Some(p) => p,
        None => destination.ports.first().map(|p| p.port).with_context(|| {
            format!("--port is needed: Workload {namespace}/{name} declares no ports")
        })?,
    };
    let protocol = destination.port(port).map(|p| p.protocol);
    let tcp = protocol == Some(Protocol::Tcp);
    let grpc = protocol == Some(Protocol::Grpc);
    let parsed_from = args
        .from
        .as_deref()
        .map(|s| SpiffeId::parse(s).with_context(|| format!("--from {s:?}")))
        .transpose()?;
    let source = parsed_from.as_ref().or(from_workload.map(|w| &w.identity));
    let source_ip = args.source_ip.or(from_workload.map(|w| w.address));

    let connection = connection::decide(
        &snapshot,
        from_workload,
        source_ip,
        source,
        destination,
        port,
    )?;

    // A request is decided when one is described; on an opaque TCP port authorization is
    // per connection, so it is always decided there.
    let described = args.method.is_some() || args.path.is_some() || !args.headers.is_empty();
    let method = args
        .method
        .clone()
        .unwrap_or_else(|| if grpc { "POST" } else { "GET" }.to_owned());
    let path = args.path.clone().unwrap_or_else(|| "/".to_owned());
    let http = (!tcp).then_some((method.as_str(), path.as_str(), args.headers.as_slice()));
    let request = if tcp || described {
        Some(request::decide(
            &snapshot,
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
    let verdict = verdict(&connection, request.as_ref());
    let exit = if verdict.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DENY)
    };

    let caller = match (from_workload, source) {
        (Some(w), _) => format!("{}/{} ({})", w.namespace, w.name, w.identity),
        (None, Some(id)) => id.to_string(),
        (None, None) => "a caller without a verified identity".to_owned(),
    };
    let decision = if verdict.allowed { "ALLOW" } else { "DENY" };
    if let Output::Json = args.output {
        let decided = match &request {
            Some(RequestVerdict::Decided(d)) => Some(d),
            _ => None,
        };
        let mut request_json = serde_json::json!({
            "from": source.map(|s| s.to_string()),
            "from_workload": from_workload.map(|w| format!("{}/{}", w.namespace, w.name)),
            "source_ip": source_ip.map(|ip| ip.to_string()),
            "to": format!("{namespace}/{name}"),
            "port": port,
        });
        if http.is_some() && request.is_some() {
            request_json["method"] = method.clone().into();
            request_json["path"] = path.clone().into();
        }
        let value = serde_json::json!({
            "decision": decision,
            "policy": verdict.policy,
            "rule": verdict.rule,
            "explanation": verdict.explanation,
            "audits": decided.map(|d| d.audits.matched.iter().map(|a| serde_json::json!({"policy": a.policy, "rule": a.rule})).collect::<Vec<_>>()).unwrap_or_default(),
            "dry_run": decided.and_then(|d| d.audits.dry_run.as_ref().map(request::dry_run_json)),
            "network_policy": {
                "egress": connection.egress.as_ref().map(connection::decision_json),
                "ingress": connection::decision_json(&connection.ingress),
            },
            "request": request_json,
        });
        println!("{value}");
        return Ok(exit);
    }

    let what = match (&request, http) {
        (Some(_), Some((method, path, _))) => {
            format!("{method} {path}{}", if grpc { " [gRPC]" } else { "" })
        }
        _ => "connection".to_owned(),
    };
    println!(
        "{}  {what} from {caller}{} to {namespace}/{name}:{port}",
        if verdict.allowed { "ALLOW" } else { "DENY " },
        source_ip.map(|ip| format!(" at {ip}")).unwrap_or_default(),
    );
    if let Some(egress) = &connection.egress {
        println!("  NetworkPolicy, egress: {}", egress.explain());
    }
    println!("  NetworkPolicy, ingress: {}", connection.ingress.explain());
    match &request {
        Some(RequestVerdict::Refused(_, why)) => println!("  {why}"),
        Some(RequestVerdict::Decided(decision)) => {
            // The explanation lists AUDIT matches and, on a line of its own, the dry-run outcome.
            let mut shown = (**decision).clone();
            let dry_run = shown.audits.dry_run.take();
            println!("  AuthorizationPolicy: {}", shown.explain());
            if let Some(d) = dry_run {
                println!("  {}", d.explain());
            }
        }
        None if !tcp && verdict.allowed => {
            println!("  requests on it are decided by AuthorizationPolicy: add --method or --path")
        }
        None => {}
    }
    Ok(exit)
}
