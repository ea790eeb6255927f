//! `palisade control-plane`: CA + identity service + discovery, from a directory of YAML or
//! (`--kubernetes`) from the cluster's API server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use palisade_control_plane::k8s::KubernetesSource;
use palisade_control_plane::{CaSource, ControlPlaneConfig, GrpcLimits, Observe, TokenStore};
use tokio_util::sync::CancellationToken;

/// Flags of `palisade control-plane`.
#[derive(Debug, Args)]
pub struct ControlPlaneArgs {
    /// Directory of mesh YAML (Workload, Service, MeshConfig, policies); watched for changes.
    #[arg(
        long,
        env = "PALISADE_CONFIG_DIR",
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    pub config: Option<PathBuf>,
    /// Read the mesh from the cluster (Pods with a sidecar, Services, Namespaces,
    /// NetworkPolicies, Palisade's custom resources) through the API server named by the
    /// pod's service account, or KUBECONFIG outside a cluster.
    #[arg(long, env = "PALISADE_KUBERNETES")]
    pub kubernetes: bool,
    /// With --kubernetes: seconds to wait for the first complete listing before giving up.
    #[arg(long, env = "PALISADE_KUBERNETES_SYNC_SECONDS", default_value_t = 60)]
    pub kubernetes_sync_seconds: u64,
    /// CA directory (ca-cert.pem, ca-key.pem, root-cert.pem, optional cert-chain.pem);
    /// create one with `palisade ca init --out DIR`.
    #[arg(long, env = "PALISADE_CA_DIR")]
    pub ca_dir: PathBuf,
    /// Seconds between reads of the CA directory, which is how the stages of
    /// `palisade ca rotate` (and new CA files, e.g. an updated Secret) take effect.
    #[arg(long, env = "PALISADE_CA_POLL_SECONDS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ca_poll_seconds: u64,
    /// Bootstrap tokens, one `namespace/workload token` per line (directory mode; with
    /// --kubernetes, proxies present projected service-account tokens, checked by TokenReview).
    #[arg(long, env = "PALISADE_TOKENS", required_unless_present = "kubernetes")]
    pub tokens: Option<PathBuf>,
    /// gRPC listener (identity and discovery, TLS).
    #[arg(long, env = "PALISADE_GRPC_ADDR", default_value = "0.0.0.0:15012")]
    pub grpc_addr: SocketAddr,
    /// Admin listener (/live, /ready, /metrics).
    #[arg(long, env = "PALISADE_CP_ADMIN_ADDR", default_value = "0.0.0.0:15014")]
    pub admin_addr: SocketAddr,
    /// Answer the live view (`/tap`, `/top`: who calls whom, and what is denied) on the
    /// admin port to callers other than loopback ones.
    #[arg(long, env = "PALISADE_LIVE_VIEW_REMOTE")]
    pub live_view_remote: bool,
    /// Keep the sidecars' observations (`palisade authz suggest`, `authz diff`) in this
    /// file: read at start, saved every 30 s and at shutdown. Without it they are kept in
    /// memory only.
    #[arg(long, env = "PALISADE_OBSERVE_STATE", conflicts_with = "no_observe")]
    pub observe_state: Option<PathBuf>,
    /// Do not ask sidecars to count requests for `authz suggest` and `authz diff`.
    #[arg(long, env = "PALISADE_NO_OBSERVE")]
    pub no_observe: bool,
    /// Do not watch the config directory for changes.
    #[arg(long)]
    pub no_watch: bool,
    /// gRPC: open connections at most (handshaking ones included); more are closed at once.
    #[arg(long, env = "PALISADE_GRPC_MAX_CONNECTIONS", default_value_t = GrpcLimits::default().max_connections)]
    pub grpc_max_connections: usize,
    /// gRPC: open connections without a client certificate (bootstrap) at most; keep it
    /// below --grpc-max-connections so proxies with a certificate always find room.
    #[arg(long, env = "PALISADE_GRPC_MAX_ANONYMOUS_CONNECTIONS", default_value_t = GrpcLimits::default().max_anonymous_connections)]
    pub grpc_max_anonymous_connections: usize,
    /// gRPC: TLS handshakes in progress at most; further clients wait in the listen backlog.
    #[arg(long, env = "PALISADE_GRPC_MAX_HANDSHAKES", default_value_t = GrpcLimits::default().max_handshakes)]
    pub grpc_max_handshakes: usize,
    /// gRPC: seconds a client gets to finish its TLS handshake.
    #[arg(long, env = "PALISADE_GRPC_HANDSHAKE_TIMEOUT_SECONDS", default_value_t = GrpcLimits::default().handshake_timeout.as_secs())]
    pub grpc_handshake_timeout_seconds: u64,
    /// gRPC: HTTP/2 concurrent streams per connection.
    #[arg(long, env = "PALISADE_GRPC_MAX_CONCURRENT_STREAMS", default_value_t = GrpcLimits::default().max_concurrent_streams)]
    pub grpc_max_concurrent_streams: u32,
    /// gRPC: requests handled at once per connection; more wait for a slot.
    #[arg(long, env = "PALISADE_GRPC_CONCURRENCY_PER_CONNECTION", default_value_t = GrpcLimits::default().concurrency_per_connection)]
    pub grpc_concurrency_per_connection: usize,
    /// gRPC: seconds a call may take until its response starts (all of a Certify call; a
    /// discovery stream lives on once accepted).
    #[arg(long, env = "PALISADE_GRPC_REQUEST_TIMEOUT_SECONDS", default_value_t = GrpcLimits::default().request_timeout.as_secs())]
    pub grpc_request_timeout_seconds: u64,
    /// gRPC: streams reset by the client before being accepted that may wait at once before
    /// the connection gets GOAWAY (rapid reset, CVE-2023-44487).
    #[arg(long, env = "PALISADE_GRPC_MAX_PENDING_RESET_STREAMS", default_value_t = GrpcLimits::default().max_pending_reset_streams)]
    pub grpc_max_pending_reset_streams: usize,
    /// gRPC: streams the server had to reset for a client's protocol errors, per connection,
    /// before it gets GOAWAY (MadeYouReset, CVE-2025-8671).
    #[arg(long, env = "PALISADE_GRPC_MAX_LOCAL_ERROR_RESETS", default_value_t = GrpcLimits::default().max_local_error_resets)]
    pub grpc_max_local_error_resets: usize,
    /// gRPC: seconds after which a connection gets GOAWAY and a discovery stream is ended
    /// (proxies reconnect), so none outlives its client certificate by much.
    #[arg(long, env = "PALISADE_GRPC_MAX_CONNECTION_AGE_SECONDS", default_value_t = GrpcLimits::default().max_connection_age.as_secs())]
    pub grpc_max_connection_age_seconds: u64,
    /// gRPC: largest Identity (Certify) request message, in bytes.
    #[arg(long, env = "PALISADE_GRPC_MAX_IDENTITY_MESSAGE", default_value_t = GrpcLimits::default().max_identity_message)]
    pub grpc_max_identity_message: usize,
}

impl ControlPlaneArgs {
    /// The gRPC limits the flags ask for; a zero would refuse every client or hang them.
    fn limits(&self) -> anyhow::Result<GrpcLimits> {
        let counts = [
            ("--grpc-max-connections", self.grpc_max_connections),
            (
                "--grpc-max-anonymous-connections",
                self.grpc_max_anonymous_connections,
            ),
            ("--grpc-max-handshakes", self.grpc_max_handshakes),
            (
                "--grpc-concurrency-per-connection",
                self.grpc_concurrency_per_connection,
            ),
            (
                "--grpc-max-identity-message",
                self.grpc_max_identity_message,
            ),
            (
                "--grpc-handshake-timeout-seconds",
                self.grpc_handshake_timeout_seconds as usize,
            ),
            (
                "--grpc-request-timeout-seconds",
                self.grpc_request_timeout_seconds as usize,
            ),
            (
                "--grpc-max-connection-age-seconds",
                self.grpc_max_connection_age_seconds as usize,
            ),
            (
                "--grpc-max-concurrent-streams",
                self.grpc_max_concurrent_streams as usize,
            ),
        ];
        if let Some((flag, _)) = counts.iter().find(|(_, v)| *v == 0) {
            anyhow::bail!("{flag} must be at least 1");
        }
        Ok(GrpcLimits {
            max_connections: self.grpc_max_connections,
            max_anonymous_connections: self.grpc_max_anonymous_connections,
            max_handshakes: self.grpc_max_handshakes,
            handshake_timeout: Duration::from_secs(self.grpc_handshake_timeout_seconds),
            max_concurrent_streams: self.grpc_max_concurrent_streams,
            concurrency_per_connection: self.grpc_concurrency_per_connection,
            request_timeout: Duration::from_secs(self.grpc_request_timeout_seconds),
            max_pending_reset_streams: self.grpc_max_pending_reset_streams,
            max_local_error_resets: self.grpc_max_local_error_resets,
            max_identity_message: self.grpc_max_identity_message,
            max_telemetry_message: GrpcLimits::default().max_telemetry_message,
            max_connection_age: Duration::from_secs(self.grpc_max_connection_age_seconds),
        })
    }
}

/// Runs the control plane until SIGINT/SIGTERM.
pub fn run(args: ControlPlaneArgs) -> anyhow::Result<ExitCode> {
    // Flags first: a bad value is a one-line error before any file is read.
    let limits = args.limits()?;
    let tokens = match &args.tokens {
        Some(path) => TokenStore::load(path)?,
        None => TokenStore::new(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let (config_dir, snapshot, kubernetes) = match &args.config {
            Some(dir) => (dir.clone(), palisade_control_plane::load_dir(dir)?, None),
            None => {
                let source = KubernetesSource::infer()
                    .await?
                    .start(
                        Duration::from_secs(args.kubernetes_sync_seconds),
                        shutdown.clone(),
                    )
                    .await?;
                let snapshot = source.initial().clone();
                (PathBuf::from("kubernetes"), snapshot, Some(source))
            }
        };
        // Loaded here first, so a bad CA is one clear error naming its file.
        crate::cmd::ca::load_active(&args.ca_dir, &snapshot.settings().trust_domain)?;
        let config = ControlPlaneConfig {
            config_dir,
            ca: CaSource::Dir {
                dir: args.ca_dir.clone(),
                poll: Duration::from_secs(args.ca_poll_seconds),
            },
            tokens,
            grpc_addr: args.grpc_addr,
            admin_addr: Some(args.admin_addr),
            watch: !args.no_watch,
            assigned_addresses: Default::default(),
            limits,
            observe: match (&args.observe_state, args.no_observe) {
                (_, true) => Observe::Off,
                (Some(file), false) => Observe::Saved(file.clone()),
                (None, false) => Observe::InMemory,
            },
            kubernetes,
            live_view_remote: args.live_view_remote,
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
