//! `palisade inject -f FILE|-`: the webhook's mutation applied to Kubernetes YAML, printed on
//! stdout. Wiring only: read, `palisade_injector::inject_stream`, print.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::injector::InjectionArgs;

/// Flags of `palisade inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// YAML file of Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs
    /// or Lists (several documents allowed); `-` reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub injection: InjectionArgs,
}

/// Prints the injected YAML; warnings (probes left unchanged) go to stderr.
pub fn run(args: InjectArgs) -> anyhow::Result<ExitCode> {
    let settings = args.injection.settings()?;
    let text = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
        text
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?
    };
    let injected = palisade_injector::inject_stream(&text, &settings)
        .with_context(|| format!("{}", args.file.display()))?;
    for w in &injected.warnings {
        eprintln!("warning: {w}");
    }
    std::io::stdout()
        .write_all(injected.yaml.as_bytes())
        .context("cannot write stdout")?;
    Ok(ExitCode::SUCCESS)
}
