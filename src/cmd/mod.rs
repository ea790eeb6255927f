//! Subcommands. Each module parses its flags and calls into the crates.

mod authz;
mod ca;
mod ca_rotate;
mod check;
mod control_plane;
mod init;
mod inject;
mod injector;
mod install;
mod proxy;
mod tap;
mod top;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Palisade: a sidecar service mesh with default-deny L7 policies and mTLS everywhere.
#[derive(Debug, Parser)]
#[command(name = "palisade", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PALISADE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every role of the binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole mesh on this machine from a directory of YAML (default: the e-commerce shop).
    Up(up::UpArgs),
    /// Run the control plane: CA, identity service and discovery.
    ControlPlane(control_plane::ControlPlaneArgs),
    /// Run the sidecar proxy (configured by PALISADE_* variables or flags).
    Proxy(Box<proxy::ProxyArgs>),
    /// Install the traffic-capture iptables rules in the pod's network namespace.
    Init(Box<init::InitArgs>),
    /// Validate a configuration directory and explain each problem.
    Check(check::CheckArgs),
    /// Run the Kubernetes sidecar injection webhook (HTTPS, POST /inject).
    Injector(Box<injector::InjectorArgs>),
    /// Inject sidecars into Kubernetes YAML (Pods, workloads, Lists) and print it.
    Inject(Box<inject::InjectArgs>),
    /// CA operations.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Authorization tools: `authz check` decides a request as the destination's sidecar would.
    #[command(subcommand)]
    Authz(authz::AuthzCommand),
    /// Print the Kubernetes manifests of the mesh: CRDs, control plane, injector, RBAC, webhook.
    Install(install::InstallArgs),
    /// Stream the decisions of a running mesh, one line each (who, what, allowed or denied,
    /// by which policy and rule).
    Tap(tap::TapArgs),
    /// Per-edge request rate, denial rate and p99 latency of a running mesh, refreshing.
    Top(top::TopArgs),
}

impl Command {
    /// The log filter when RUST_LOG is not set.
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Up(_) => "info,h2=warn,hyper=warn,tonic=warn",
            Command::ControlPlane(_) | Command::Proxy(_) | Command::Injector(_) => "info",
            Command::Ca(_)
            | Command::Check(_)
            | Command::Authz(_)
            | Command::Init(_)
            | Command::Inject(_)
            | Command::Install(_)
            | Command::Tap(_)
            | Command::Top(_) => "warn",
        }
    }
}

/// Runs a subcommand; `Err` is a user error reported on one line with exit status 1.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Up(args) => up::run(args),
        Command::ControlPlane(args) => control_plane::run(args),
        Command::Proxy(args) => proxy::run(*args),
        Command::Init(args) => init::run(*args),
        Command::Check(args) => check::run(args),
        Command::Injector(args) => injector::run(*args),
        Command::Inject(args) => inject::run(*args),
        Command::Ca(command) => ca::run(command),
        Command::Authz(command) => authz::run(command),
        Command::Install(args) => install::run(args),
        Command::Tap(args) => tap::run(args),
        Command::Top(args) => top::run(args),
    }
}

/// The discovery snapshots the control plane would send one workload's proxy, for
/// standalone proxies (`palisade proxy --static-config`).
pub fn static_snapshots(
    dir: &std::path::Path,
    trust_anchors: palisade_certs::TrustBundle,
    namespace: &str,
    workload: &str,
) -> anyhow::Result<Vec<palisade_proto::v1::DiscoveryResponse>> {
    let snapshot = palisade_control_plane::load_dir(dir)?;
    palisade_control_plane::snapshots_for(
        std::sync::Arc::new(snapshot),
        trust_anchors,
        namespace,
        workload,
    )
    .map_err(|e| anyhow::anyhow!("--static-config {}: {e}", dir.display()))
}

/// Sets up `tracing` on stderr; `RUST_LOG` overrides the default filter.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// An error and its causes on one line.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        // Context often repeats its source; keep each distinct message once.
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
