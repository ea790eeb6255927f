//! `palisade tap`: the live stream of decisions from a running mesh, one line each.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use palisade_control_plane::telemetry::Event;
use palisade_control_plane::telemetry::http::TapFilter;
use palisade_control_plane::telemetry::watch;

/// How each decision is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One aligned line per decision.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `tap`.
#[derive(Debug, Args)]
pub struct TapArgs {
    /// The control plane's admin address (the live view answers loopback callers unless it
    /// runs with --live-view-remote).
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub control_plane: SocketAddr,
    /// Only decisions involving this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only decisions involving this workload (`name` or `namespace/name`), as caller or
    /// destination.
    #[arg(long)]
    pub workload: Option<String>,
    /// Only denials.
    #[arg(long)]
    pub denied: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Stop after this many decisions.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration_seconds: Option<u64>,
}

/// One decision as a line of text.
fn line(e: &Event) -> String {
    let who = if e.source_workload.is_empty() {
        if e.source.is_empty() {
            "(plaintext)"
        } else {
            &e.source
        }
    } else {
        &e.source_workload
    };
    let what = if e.method.is_empty() {
        format!("connection {}", e.destination)
    } else {
        format!("{} {} {}", e.method, e.destination, e.path)
    };
    let rule = if e.rule < 0 {
        String::new()
    } else {
        format!(" rule {}", e.rule)
    };
    format!(
        "{} {:<5} {who} -> {what}  [{}{rule}] ({} at {})",
        e.time,
        e.decision.to_uppercase(),
        e.policy,
        e.direction,
        e.reporter
    )
}

/// Runs `tap`.
pub fn run(args: TapArgs) -> anyhow::Result<ExitCode> {
    let filter = TapFilter {
        namespace: args.namespace.clone(),
        workload: args.workload.clone(),
        denied: args.denied,
    };
    // Checked here, so a bad name is a usage error before anything connects.
    TapFilter::parse(&filter.query()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let mut seen = 0u64;
    let output = args.output;
    let limit = args.count;
    let watching = watch::tap(
        args.control_plane,
        &filter,
        |event| {
            match output {
                Output::Json => println!("{}", serde_json::to_string(&event).unwrap_or_default()),
                Output::Text => println!("{}", line(&event)),
            }
            seen += 1;
            limit.is_none_or(|n| seen < n)
        },
        |missed| eprintln!("tap: fell behind; {missed} decisions skipped"),
    );
    eprintln!("tap: watching {}", args.control_plane);
    runtime.block_on(async {
        let stop = async {
            match args.duration_seconds {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = watching => r.map_err(anyhow::Error::from),
            _ = stop => Ok(()),
            _ = crate::cmd::shutdown_signal() => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
