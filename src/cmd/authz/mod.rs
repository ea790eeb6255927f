//! `palisade authz check`: flags to a [`check::Query`], and its outcome printed. The decision
//! itself is `palisade_control_plane::check`, the same one the live view's edge panel runs.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use palisade_certs::SpiffeId;
use palisade_control_plane::check;

mod observed;

/// Exit status of a denied request.
const EXIT_DENY: u8 = 3;

/// Authorization tools.
#[derive(Debug, Subcommand)]
pub enum AuthzCommand {
    /// Decide one connection or request as the sidecars would, and say which policies and
    /// rules decided.
    Check(CheckArgs),
    /// Print least-privilege AuthorizationPolicy and NetworkPolicy documents that allow
    /// exactly the traffic the sidecars observed being allowed.
    Suggest(observed::SuggestArgs),
    /// Replay the observed traffic against a candidate configuration and list every
    /// request whose decision would change (exit 3 when something would be newly denied,
    /// 4 when only newly allowed, 0 when nothing changes).
    Diff(observed::DiffArgs),
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
        AuthzCommand::Suggest(args) => observed::suggest(args),
        AuthzCommand::Diff(args) => observed::diff(args),
    }
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let snapshot = palisade_control_plane::load_dir(&args.config)?;
    let in_config = || format!("in {}", args.config.display());
    let from_workload = args
        .from_workload
        .as_deref()
        .map(|w| check::find_workload(&snapshot, "--from-workload", w, None))
        .transpose()
        .with_context(in_config)?;
    let destination = check::find_workload(
        &snapshot,
        "--to",
        &args.to,
        from_workload.map(|w| w.namespace.as_str()),
    )
    .with_context(in_config)?;
    let from = args
        .from
        .as_deref()
        .map(|s| SpiffeId::parse(s).with_context(|| format!("--from {s:?}")))
        .transpose()?;
    let query = check::Query {
        from_workload,
        from: from.as_ref(),
        source_ip: args.source_ip,
        port: args.port,
        method: args.method.as_deref(),
        path: args.path.as_deref(),
        headers: &args.headers,
    };
    let outcome = check::decide(&snapshot, destination, &query).with_context(in_config)?;
    match args.output {
        Output::Json => println!("{}", outcome.to_json()),
        Output::Text => {
            for line in outcome.to_text() {
                println!("{line}");
            }
        }
    }
    Ok(if outcome.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DENY)
    })
}
