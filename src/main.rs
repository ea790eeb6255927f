//! `palisade`: the multi-call binary of the Palisade service mesh. Wiring only: argument
//! parsing, logging, runtimes and signals; every component lives in its crate.

mod cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    cmd::init_logging(cli.log_format, cli.command.default_log_filter());
    // One crypto provider for the whole process (ring), installed before any TLS use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cmd::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", cmd::one_line(&e));
            ExitCode::from(1)
        }
    }
}
