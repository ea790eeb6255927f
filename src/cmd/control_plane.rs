//! `palisade control-plane`: CA + identity service + discovery, from a directory of YAML.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use palisade_control_plane::{ControlPlaneConfig, TokenStore};
use tokio_util::sync::CancellationToken;

/// Flags of `palisade control-plane`.
#[derive(Debug, Args)]
pub struct ControlPlaneArgs {
    /// Directory of mesh YAML (Workload, Service, MeshConfig, policies); watched for changes.
    #[arg(long, env = "PALISADE_CONFIG_DIR")]
    pub config: PathBuf,
    /// CA directory (ca-cert.pem, ca-key.pem, root-cert.pem, optional cert-chain.pem);
    /// create one with `palisade ca init --out DIR`.
    #[arg(long, env = "PALISADE_CA_DIR")]
    pub ca_dir: PathBuf,
    /// Bootstrap tokens, one `namespace/workload token` per line.
    #[arg(long, env = "PALISADE_TOKENS")]
    pub tokens: PathBuf,
    /// gRPC listener (identity and discovery, TLS).
    #[arg(long, env = "PALISADE_GRPC_ADDR", default_value = "0.0.0.0:15012")]
    pub grpc_addr: SocketAddr,
    /// Admin listener (/live, /ready, /metrics).
    #[arg(long, env = "PALISADE_CP_ADMIN_ADDR", default_value = "0.0.0.0:15014")]
    pub admin_addr: SocketAddr,
    /// Do not watch the config directory for changes.
    #[arg(long)]
    pub no_watch: bool,
}

/// Runs the control plane until SIGINT/SIGTERM.
pub fn run(args: ControlPlaneArgs) -> anyhow::Result<ExitCode> {
    let snapshot = palisade_control_plane::load_dir(&args.config)?;
    let ca = crate::cmd::ca::load(&args.ca_dir, snapshot.settings().trust_domain.clone())?;
    let tokens = TokenStore::load(&args.tokens)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let config = ControlPlaneConfig {
            config_dir: args.config.clone(),
            ca: Arc::new(ca),
            tokens,
            grpc_addr: args.grpc_addr,
            admin_addr: Some(args.admin_addr),
            watch: !args.no_watch,
            assigned_addresses: Default::default(),
        };
        let cp = palisade_control_plane::start(config, shutdown.clone()).await?;
        tracing::info!(grpc = %cp.grpc_addr(), admin = ?cp.admin_addr(), identity = %cp.identity(), "control plane serving");
        crate::cmd::shutdown_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
        cp.wait().await;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
