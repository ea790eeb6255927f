//! `palisade authz check`: would this request be allowed? Composes the control plane's policy
//! compiler, the proto snapshot a sidecar would receive, and the sidecar's own evaluator, so
//! the answer is exactly what a running sidecar would decide.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue};
use palisade_certs::SpiffeId;
use palisade_control_plane::model::{PathNormalization as CpPathNormalization, Protocol};
use palisade_proxy::authz::{
    Authorizer, DecidedBy, DryRun, HttpAttrs, PathNormalization, PathOptions, RequestAttrs,
    normalize_request,
};

/// Exit status of a denied request.
const EXIT_DENY: u8 = 3;

/// The `policy` of a request the sidecar refuses (400) before authorization because its
/// path cannot be normalised or holds an encoded slash the mesh refuses.
const PATH_REFUSED: &str = "path-refused";

/// Authorization tools.
#[derive(Debug, Subcommand)]
pub enum AuthzCommand {
    /// Decide one request as the destination's sidecar would, and say which policy and rule decided.
    Check(CheckArgs),
}

/// Flags of `authz check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Directory of mesh YAML.
    #[arg(long)]
    pub config: PathBuf,
    /// The destination workload: NAME or NAMESPACE/NAME.
    #[arg(long)]
    pub to: String,
    /// The caller's SPIFFE ID; leave out for a caller without a verified identity (plaintext).
    #[arg(long)]
    pub from: Option<String>,
    /// HTTP method (default GET; POST for a gRPC port).
    #[arg(long)]
    pub method: Option<String>,
    /// Request path, may carry a query.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Destination port (default: the workload's first port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Request header `name=value` (repeatable); `host=...` sets the authority.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// The caller's IP address (for `ipBlocks` and `source.ip`).
    #[arg(long)]
    pub source_ip: Option<std::net::IpAddr>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// How the decision is printed.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Output {
    /// Two lines for people.
    Text,
    /// One JSON object for scripts.
    Json,
}

/// What dry-run policies would have decided, shown like the decision itself.
fn dry_run_json(d: &DryRun) -> serde_json::Value {
    let rule = match &d.decided_by {
        DecidedBy::Deny(m) | DecidedBy::Allow(m) => Some(m.rule),
        _ => None,
    };
    serde_json::json!({
        "decision": if d.allowed { "ALLOW" } else { "DENY" },
        "policy": d.policy_label(),
        "rule": rule,
        "explanation": d.explain(),
        "matched": d.matched.iter().map(|(action, m)| serde_json::json!({
            "policy": m.policy,
            "rule": m.rule,
            "action": action,
        })).collect::<Vec<_>>(),
    })
}

/// Runs an `authz` subcommand.
pub fn run(command: AuthzCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuthzCommand::Check(args) => check(args),
    }
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let snapshot = palisade_control_plane::load_dir(&args.config)?;
    let (namespace, name) = match args.to.split_once('/') {
        Some((ns, n)) => (ns.to_owned(), n.to_owned()),
        None => {
            let matches: Vec<_> = snapshot.workloads().filter(|w| w.name == args.to).collect();
            match matches.as_slice() {
                [one] => (one.namespace.clone(), one.name.clone()),
                [] => anyhow::bail!(
                    "--to {}: no such Workload in {}",
                    args.to,
                    args.config.display()
                ),
                _ => anyhow::bail!(
                    "--to {}: several namespaces have this Workload; write NAMESPACE/NAME",
                    args.to
                ),
            }
        }
    };
    let workload = snapshot.workload(&namespace, &name).with_context(|| {
        format!(
            "--to {}: no such Workload in {}",
            args.to,
            args.config.display()
        )
    })?;
    let port = match args.port {
        Some(p) => p,
        None => workload.ports.first().map(|p| p.port).with_context(|| {
            format!("--port is needed: Workload {namespace}/{name} declares no ports")
        })?,
    };
    let grpc = workload
        .port(port)
        .is_some_and(|p| p.protocol == Protocol::Grpc);
    let method = args
        .method
        .clone()
        .unwrap_or_else(|| if grpc { "POST" } else { "GET" }.to_owned());
    let source = args
        .from
        .as_deref()
        .map(|s| SpiffeId::parse(s).with_context(|| format!("--from {s:?}")))
        .transpose()?;

    let mut headers = HeaderMap::new();
    let mut host = None;
    for h in &args.headers {
        let (k, v) = h
            .split_once('=')
            .with_context(|| format!("--header {h:?}: expected NAME=VALUE"))?;
        let key = HeaderName::try_from(k.trim().to_ascii_lowercase())
            .with_context(|| format!("--header {h:?}: invalid header name"))?;
        let value =
            HeaderValue::try_from(v).with_context(|| format!("--header {h:?}: invalid value"))?;
        if key == http::header::HOST {
            host = Some(v.to_owned());
        }
        headers.append(key, value);
    }
    // The authority a client in the mesh would use: a Service in front of this port.
    let host = host.unwrap_or_else(|| {
        snapshot
            .services()
            .find(|s| {
                s.namespace == namespace
                    && s.endpoints.iter().any(|e| e.workload == name)
                    && s.ports.iter().any(|p| p.target_port == port)
            })
            .and_then(|s| {
                s.ports
                    .iter()
                    .find(|p| p.target_port == port)
                    .map(|p| format!("{}.{}:{}", s.name, s.namespace, p.port))
            })
            .unwrap_or_else(|| format!("{name}.{namespace}:{port}"))
    });

    // The sidecar normalises the path (MeshConfig pathNormalization) before authorization,
    // and refuses with 400 what it cannot or may not normalise.
    let settings = snapshot.settings();
    let path_options = PathOptions {
        normalization: match settings.path_normalization {
            CpPathNormalization::Base => PathNormalization::Base,
            CpPathNormalization::MergeSlashes => PathNormalization::MergeSlashes,
            CpPathNormalization::DecodeAndMergeSlashes => PathNormalization::DecodeAndMergeSlashes,
        },
        reject_escaped_slashes: settings.reject_escaped_slashes,
    };
    let path = match normalize_request(&args.path, &path_options) {
        Ok(path) => path.into_owned(),
        Err(e) => {
            let explanation = format!("refused with 400 before authorization: {e}");
            if let Output::Json = args.output {
                let value = serde_json::json!({
                    "decision": "DENY",
                    "policy": PATH_REFUSED,
                    "rule": null,
                    "explanation": explanation,
                    "audits": [],
                    "request": {
                        "to": format!("{namespace}/{name}"),
                        "port": port,
                        "method": method,
                        "path": args.path,
                    },
                });
                println!("{value}");
            } else {
                println!(
                    "DENY   {method} {} to {namespace}/{name}:{port}\n  {explanation}",
                    args.path
                );
            }
            return Ok(ExitCode::from(EXIT_DENY));
        }
    };

    let compiled = palisade_control_plane::authorization_for(&snapshot, &namespace, &name)?;
    let authorizer = Authorizer::try_from(&compiled)
        .with_context(|| format!("policies selecting {namespace}/{name}"))?;
    let attrs = RequestAttrs {
        source: source.as_ref(),
        source_ip: args.source_ip,
        destination_ip: Some(workload.address),
        destination_port: port,
        sni: None,
        http: Some(HttpAttrs {
            method: &method,
            host: &host,
            path: &path,
            headers: &headers,
        }),
    };
    let default_allow = snapshot.settings().default_authorization
        == palisade_control_plane::model::DefaultAuthorization::Allow;
    let decision = authorizer.evaluate(&attrs, default_allow);
    if let Output::Json = args.output {
        let (policy, rule) = match &decision.decided_by {
            DecidedBy::Deny(m) | DecidedBy::Allow(m) => (m.policy.clone(), Some(m.rule)),
            _ => (decision.policy_label(), None),
        };
        let value = serde_json::json!({
            "decision": if decision.allowed { "ALLOW" } else { "DENY" },
            "policy": policy,
            "rule": rule,
            "explanation": decision.explain(),
            "audits": decision.audits.matched.iter().map(|a| serde_json::json!({"policy": a.policy, "rule": a.rule})).collect::<Vec<_>>(),
            "dry_run": decision.audits.dry_run.as_ref().map(dry_run_json),
            "request": {
                "from": source.as_ref().map(|s| s.to_string()),
                "to": format!("{namespace}/{name}"),
                "port": port,
                "method": method,
                "path": args.path,
                "host": host,
            },
        });
        println!("{value}");
        return Ok(if decision.allowed {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_DENY)
        });
    }
    let caller = source
        .as_ref()
        .map_or("a caller without a verified identity".to_owned(), |s| {
            s.to_string()
        });
    println!(
        "{}  {} {}{} from {caller} to {namespace}/{name}:{port} (host {host})",
        if decision.allowed { "ALLOW" } else { "DENY " },
        method,
        args.path,
        if grpc { " [gRPC]" } else { "" },
    );
    // The explanation lists AUDIT matches and, on a line of its own, the dry-run outcome.
    let mut shown = decision.clone();
    let dry_run = shown.audits.dry_run.take();
    println!("  {}", shown.explain());
    if let Some(d) = dry_run {
        println!("  {}", d.explain());
    }
    Ok(if decision.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DENY)
    })
}
