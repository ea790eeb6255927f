//! `palisade top`: per-edge request rate, denial rate and p99 latency of a running mesh,
//! refreshed in place in a terminal.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use palisade_control_plane::telemetry::{EdgeStats, WINDOW, watch};

/// Flags of `top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// The control plane's admin address (the live view answers loopback callers unless it
    /// runs with --live-view-remote).
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub control_plane: SocketAddr,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval_seconds: u64,
    /// Print the table once and exit.
    #[arg(long)]
    pub once: bool,
    /// Print JSON instead of a table (with --once: one document; else one per refresh).
    #[arg(long)]
    pub json: bool,
}

fn table(edges: &[EdgeStats]) -> String {
    let mut out = format!(
        "{:<32} {:<32} {:>9} {:>9} {:>9}\n",
        "SOURCE", "DESTINATION", "REQ/S", "DENIED/S", "P99 MS"
    );
    for e in edges {
        let p99 = e.p99_ms.map_or_else(|| "-".to_owned(), |p| format!("{p}"));
        out.push_str(&format!(
            "{:<32} {:<32} {:>9.1} {:>9.1} {:>9}\n",
            e.source, e.destination, e.requests_per_second, e.denied_per_second, p99
        ));
    }
    if edges.is_empty() {
        out.push_str("(no traffic in the last window)\n");
    }
    out
}

/// Runs `top`.
pub fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let terminal = std::io::stdout().is_terminal() && !args.json;
    runtime.block_on(async {
        loop {
            let edges = watch::top(args.control_plane).await?;
            let mut stdout = std::io::stdout().lock();
            if args.json {
                writeln!(stdout, "{}", serde_json::to_string(&edges)?)?;
            } else {
                if terminal && !args.once {
                    // Clear the screen and go home, then redraw.
                    write!(stdout, "\x1b[2J\x1b[H")?;
                }
                writeln!(
                    stdout,
                    "palisade top - {} - last {} s",
                    args.control_plane,
                    WINDOW.as_secs()
                )?;
                write!(stdout, "{}", table(&edges))?;
            }
            stdout.flush()?;
            drop(stdout);
            if args.once {
                return anyhow::Ok(ExitCode::SUCCESS);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(args.interval_seconds)) => {}
                _ = crate::cmd::shutdown_signal() => return Ok(ExitCode::SUCCESS),
            }
        }
    })
}
