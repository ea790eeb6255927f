//! `palisade check`: validates a configuration directory and explains each problem.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// Flags of `palisade check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Directory of mesh YAML to validate.
    #[arg(long, default_value = "examples/ecommerce")]
    pub config: PathBuf,
}

/// Prints every problem, one per line on stderr (warnings too, which keep exit 0); exit 1
/// if there is any error.
pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    match palisade_control_plane::load_dir(&args.config) {
        Ok(snapshot) => {
            for w in snapshot.warnings() {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: valid ({} workloads, {} services, trust domain {})",
                args.config.display(),
                snapshot.workloads().len(),
                snapshot.services().len(),
                snapshot.settings().trust_domain
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in errors.iter() {
                eprintln!("error: {e}");
            }
            // The count goes to stdout: stderr holds exactly one line per problem (CONTRACT:
            // a user error is a one-line cause on stderr).
            println!("{}: {} problem(s)", args.config.display(), errors.len());
            Ok(ExitCode::from(1))
        }
    }
}
