//! `palisade authz suggest` and `authz diff`: the sidecars' observations, read from the
//! control plane's admin port, turned into policies or replayed against a candidate
//! configuration. The logic is `palisade_control_plane::observed`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use palisade_control_plane::observed::query::{ObservedQuery, parse_since};
use palisade_control_plane::observed::{client, diff};

/// Exit status of `authz diff` when something allowed would be denied.
const EXIT_NEWLY_DENIED: u8 = 3;
/// Exit status of `authz diff` when decisions change but nothing would be newly denied.
const EXIT_NEWLY_ALLOWED: u8 = 4;

/// Which observations to read.
#[derive(Debug, Args)]
pub struct ObservedArgs {
    /// Only destinations in this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only this destination workload (`name` or `namespace/name`).
    #[arg(long)]
    pub workload: Option<String>,
    /// Only traffic seen within this long, e.g. 30m, 1h, 2d.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<std::time::Duration>,
    /// The control plane's admin address (answers loopback callers unless it runs with
    /// --live-view-remote).
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub control_plane: SocketAddr,
}

impl ObservedArgs {
    fn query(&self) -> ObservedQuery {
        ObservedQuery {
            since_seconds: self.since.map(|d| d.as_secs()),
            namespace: self.namespace.clone(),
            workload: self.workload.clone(),
        }
    }
}

/// Flags of `authz suggest`.
#[derive(Debug, Args)]
pub struct SuggestArgs {
    /// Which observations.
    #[command(flatten)]
    pub observed: ObservedArgs,
}

/// Flags of `authz diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The candidate configuration: a directory of mesh YAML.
    #[arg(long)]
    pub config: PathBuf,
    /// Which observations.
    #[command(flatten)]
    pub observed: ObservedArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// `authz suggest`: prints the suggested policies.
pub fn suggest(args: SuggestArgs) -> anyhow::Result<ExitCode> {
    let query = args.observed.query();
    let yaml = runtime()?.block_on(client::suggestion(args.observed.control_plane, &query))?;
    print!("{yaml}");
    Ok(ExitCode::SUCCESS)
}

/// `authz diff`: lists the observed traffic whose decision the candidate would change.
pub fn diff(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let candidate = palisade_control_plane::load_dir(&args.config)
        .with_context(|| format!("candidate configuration {}", args.config.display()))?;
    let query = args.observed.query();
    let observed =
        runtime()?.block_on(client::observations(args.observed.control_plane, &query))?;
    let replay = diff::replay(&candidate, &observed);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&replay)?);
    } else {
        println!(
            "{} observed rows replayed on {}: {} would change",
            replay.replayed,
            args.config.display(),
            replay.changes.len()
        );
        for c in &replay.changes {
            let verdict = |allowed: bool| if allowed { "ALLOW" } else { "DENY" };
            println!(
                "{} -> {}  {} -> {}:{} {}  ({} requests)\n    before: {} by {}\n    after:  {} by {}",
                verdict(c.allowed_before),
                verdict(c.allowed_after),
                c.source,
                c.destination,
                c.port,
                c.request,
                c.requests,
                verdict(c.allowed_before),
                c.policy_before,
                verdict(c.allowed_after),
                c.policy_after,
            );
        }
        for line in &replay.not_replayed {
            println!("not replayed: {line}");
        }
    }
    Ok(if replay.newly_denied() {
        ExitCode::from(EXIT_NEWLY_DENIED)
    } else if replay.changes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NEWLY_ALLOWED)
    })
}
