//! `palisade proxy`: the sidecar. Settings come from flags or `PALISADE_*` variables.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use palisade_certs::{SpiffeId, TrustBundle, TrustDomain};
use palisade_proxy::probes::AppProbes;
use palisade_proxy::{ConfigSource, ControlPlaneTarget, Limits, ProxyConfig};
use tokio_util::sync::CancellationToken;

/// Flags of `palisade proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Workload name (directory mode: the Workload resource; in a pod: the pod name).
    #[arg(long, env = "PALISADE_WORKLOAD")]
    pub workload: String,
    /// Workload namespace.
    #[arg(long, env = "PALISADE_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Service account: with the trust domain and namespace it makes the SPIFFE ID.
    #[arg(long, env = "PALISADE_SERVICE_ACCOUNT", default_value = "default")]
    pub service_account: String,
    /// Trust domain.
    #[arg(long, env = "PALISADE_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Control plane gRPC address (host:port).
    #[arg(
        long,
        env = "PALISADE_CONTROL_PLANE",
        default_value = "127.0.0.1:15012"
    )]
    pub control_plane: String,
    /// SPIFFE ID the control plane must present (default: spiffe://<trust domain>/ns/palisade-system/sa/palisade-control-plane).
    #[arg(long, env = "PALISADE_CONTROL_PLANE_IDENTITY")]
    pub control_plane_identity: Option<String>,
    /// PEM file with the root(s) that the control plane's certificate chains to.
    #[arg(long, env = "PALISADE_TRUST_ANCHORS")]
    pub trust_anchors: Option<PathBuf>,
    /// File holding the bootstrap token.
    #[arg(long, env = "PALISADE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Inbound mTLS listener.
    #[arg(long, env = "PALISADE_INBOUND_ADDR", default_value = "0.0.0.0:15006")]
    pub inbound: SocketAddr,
    /// Outbound listener for the app.
    #[arg(
        long,
        env = "PALISADE_OUTBOUND_ADDR",
        default_value = "127.0.0.1:15001"
    )]
    pub outbound: SocketAddr,
    /// Admin listener.
    #[arg(long, env = "PALISADE_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Address the app listens on.
    #[arg(long, env = "PALISADE_APP_HOST", default_value = "127.0.0.1")]
    pub app_host: IpAddr,
    /// The app's kubelet probes, as the injector rewrote them: a JSON object keyed by admin
    /// path (`/app-health/<container>/<livez|readyz|startupz>`) holding each original
    /// httpGet, tcpSocket or grpc handler with a numeric port; served on the admin port.
    #[arg(long, env = "PALISADE_APP_PROBES", default_value = "")]
    pub app_probes: String,
    /// Data-plane worker threads.
    #[arg(long, env = "PALISADE_WORKER_THREADS", default_value_t = 2)]
    pub worker_threads: usize,
    /// Seconds in-flight requests get to finish on SIGTERM.
    #[arg(long, env = "PALISADE_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,
    /// Add `x-palisade-mtls: <protocol> <cipher> peer=<SPIFFE ID>` to inbound responses.
    #[arg(long, env = "PALISADE_DEBUG_HEADERS")]
    pub debug_headers: bool,
    /// Log every authorization decision, ALLOW included, with the policy and rule that
    /// decided (denials and AUDIT matches are always logged).
    #[arg(long, env = "PALISADE_LOG_DECISIONS")]
    pub log_decisions: bool,
    /// Milliseconds a captured connection may take to show its protocol (HTTP, TLS) before
    /// it is treated as opaque TCP; ports declared TCP are never waited on.
    #[arg(long, env = "PALISADE_DETECT_TIMEOUT_MS", default_value_t = 1000)]
    pub detect_timeout_ms: u64,
    /// Connections each listener (inbound, outbound) holds open at most; more are closed at
    /// accept.
    #[arg(long, env = "PALISADE_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,
    /// Inbound connections one peer identity (a plaintext caller: one address) holds open at
    /// most.
    #[arg(long, env = "PALISADE_MAX_CONNECTIONS_PER_PEER", default_value_t = Limits::default().max_connections_per_peer)]
    pub max_connections_per_peer: usize,
    /// HTTP/2 streams a client may have open at once on one connection (100 to 256).
    #[arg(long, env = "PALISADE_MAX_CONCURRENT_STREAMS", default_value_t = Limits::default().max_concurrent_streams, value_parser = clap::value_parser!(u32).range(100..=256))]
    pub max_concurrent_streams: u32,
    /// Seconds between HTTP/2 keepalive pings to a silent peer.
    #[arg(long, env = "PALISADE_KEEPALIVE_INTERVAL_SECONDS", default_value_t = Limits::default().keepalive_interval.as_secs())]
    pub keepalive_interval_seconds: u64,
    /// Seconds a keepalive ping may go unanswered before the connection is closed.
    #[arg(long, env = "PALISADE_KEEPALIVE_TIMEOUT_SECONDS", default_value_t = Limits::default().keepalive_timeout.as_secs())]
    pub keepalive_timeout_seconds: u64,
    /// Seconds a connection may carry no request before it is closed.
    #[arg(long, env = "PALISADE_IDLE_TIMEOUT_SECONDS", default_value_t = Limits::default().idle_timeout.as_secs())]
    pub idle_timeout_seconds: u64,
    /// Seconds a connection may live before it is closed gracefully (never past the peer's
    /// certificate, at whose expiry it is closed at once).
    #[arg(long, env = "PALISADE_MAX_CONNECTION_AGE_SECONDS", default_value_t = Limits::default().max_connection_age.as_secs())]
    pub max_connection_age_seconds: u64,
    /// Seconds a client may take to send a complete HTTP/1 request head (15001 and 15006).
    #[arg(long, env = "PALISADE_HEADER_READ_TIMEOUT_SECONDS", default_value_t = Limits::default().header_read_timeout.as_secs())]
    pub header_read_timeout_seconds: u64,
    /// Seconds a request body may stall on its way to the app before the request is aborted.
    #[arg(long, env = "PALISADE_BODY_TIMEOUT_SECONDS", default_value_t = Limits::default().body_timeout.as_secs())]
    pub body_timeout_seconds: u64,
    /// Connections to the app per port; further requests queue for a free one.
    #[arg(long, env = "PALISADE_APP_MAX_CONNECTIONS", default_value_t = Limits::default().app_max_connections)]
    pub app_max_connections: usize,
    /// HTTP/1.1 connections kept to one peer sidecar's port; when all are busy, further requests share the HTTP/2 connection to it.
    #[arg(long, env = "PALISADE_PEER_HTTP1_CONNECTIONS", default_value_t = Limits::default().peer_http1_connections)]
    pub peer_http1_connections: usize,
    /// Seconds a request may queue for an app connection before it is answered 502 (gRPC UNAVAILABLE).
    #[arg(long, env = "PALISADE_APP_QUEUE_TIMEOUT_SECONDS", default_value_t = Limits::default().app_queue_timeout.as_secs())]
    pub app_queue_timeout_seconds: u64,
    /// Standalone mode, no control plane: a directory of mesh YAML to configure from.
    #[arg(long, env = "PALISADE_STATIC_CONFIG", requires_all = ["cert", "key"])]
    pub static_config: Option<PathBuf>,
    /// Standalone mode: certificate chain (leaf first), PEM.
    #[arg(long, env = "PALISADE_CERT", requires = "static_config")]
    pub cert: Option<PathBuf>,
    /// Standalone mode: private key, PEM.
    #[arg(long, env = "PALISADE_KEY", requires = "static_config")]
    pub key: Option<PathBuf>,
}

fn read(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{what} {}", path.display()))
}

/// Turns flags into a proxy configuration (no I/O beyond reading the named files).
pub fn config(args: &ProxyArgs) -> anyhow::Result<ProxyConfig> {
    let td = TrustDomain::new(&args.trust_domain)
        .with_context(|| format!("--trust-domain {:?}", args.trust_domain))?;
    let identity = SpiffeId::for_service_account(&td, &args.namespace, &args.service_account)
        .with_context(|| "--namespace/--service-account do not form a valid SPIFFE ID")?;
    let anchors_path = args
        .trust_anchors
        .as_ref()
        .context("--trust-anchors (PALISADE_TRUST_ANCHORS) is required: the roots peers and the control plane chain to")?;
    let anchors = TrustBundle::from_pem(td.clone(), &read(anchors_path, "--trust-anchors")?)
        .with_context(|| format!("--trust-anchors {}", anchors_path.display()))?;
    let source = if let Some(dir) = &args.static_config {
        let (Some(cert), Some(key)) = (&args.cert, &args.key) else {
            anyhow::bail!("--static-config needs --cert and --key");
        };
        let credentials =
            palisade_certs::Credentials::from_pem(&read(cert, "--cert")?, &read(key, "--key")?)
                .with_context(|| format!("--cert {} / --key {}", cert.display(), key.display()))?;
        let snapshots =
            crate::cmd::static_snapshots(dir, anchors, &args.namespace, &args.workload)?;
        ConfigSource::Static {
            credentials,
            snapshots,
        }
    } else {
        let token_path = args
            .token_file
            .as_ref()
            .context("--token-file (PALISADE_TOKEN_FILE) is required to obtain a certificate")?;
        let token = read(token_path, "--token-file")?.trim().to_owned();
        if token.is_empty() {
            anyhow::bail!("--token-file {} is empty", token_path.display());
        }
        let cp_identity = match &args.control_plane_identity {
            Some(id) => {
                SpiffeId::parse(id).with_context(|| format!("--control-plane-identity {id:?}"))?
            }
            None => palisade_control_plane::control_plane_identity(&td),
        };
        ConfigSource::ControlPlane {
            target: ControlPlaneTarget {
                addr: args.control_plane.clone(),
                identity: cp_identity,
            },
            trust_anchors: anchors,
            token,
        }
    };
    Ok(ProxyConfig {
        identity,
        workload: args.workload.clone(),
        namespace: args.namespace.clone(),
        source,
        inbound_addr: args.inbound,
        outbound_addr: args.outbound,
        admin_addr: args.admin,
        app_host: args.app_host,
        drain_timeout: Duration::from_secs(args.drain_seconds),
        control_runtime: None,
        debug_headers: args.debug_headers,
        log_decisions: args.log_decisions,
        detect_timeout: Duration::from_millis(args.detect_timeout_ms),
        limits: limits(args)?,
        app_probes: Arc::new(AppProbes::parse(&args.app_probes)?),
    })
}

/// The data-path bounds the flags ask for.
fn limits(args: &ProxyArgs) -> anyhow::Result<Limits> {
    let positive = |value: u64, flag: &str| {
        if value == 0 {
            anyhow::bail!("{flag} must be at least 1");
        }
        Ok(Duration::from_secs(value))
    };
    if args.max_connections == 0 || args.max_connections_per_peer == 0 {
        anyhow::bail!("--max-connections and --max-connections-per-peer must be at least 1");
    }
    if args.app_max_connections == 0 {
        anyhow::bail!("--app-max-connections must be at least 1");
    }
    if args.peer_http1_connections == 0 {
        anyhow::bail!(
            "--peer-http1-connections must be at least 1 (requests beyond it share the HTTP/2 connection)"
        );
    }
    Ok(Limits {
        max_connections: args.max_connections,
        max_connections_per_peer: args.max_connections_per_peer,
        max_concurrent_streams: args.max_concurrent_streams,
        keepalive_interval: positive(
            args.keepalive_interval_seconds,
            "--keepalive-interval-seconds",
        )?,
        keepalive_timeout: positive(
            args.keepalive_timeout_seconds,
            "--keepalive-timeout-seconds",
        )?,
        idle_timeout: positive(args.idle_timeout_seconds, "--idle-timeout-seconds")?,
        max_connection_age: positive(
            args.max_connection_age_seconds,
            "--max-connection-age-seconds",
        )?,
        header_read_timeout: positive(
            args.header_read_timeout_seconds,
            "--header-read-timeout-seconds",
        )?,
        body_timeout: positive(args.body_timeout_seconds, "--body-timeout-seconds")?,
        app_max_connections: args.app_max_connections,
        peer_http1_connections: args.peer_http1_connections,
        app_queue_timeout: positive(
            args.app_queue_timeout_seconds,
            "--app-queue-timeout-seconds",
        )?,
    })
}

/// Runs the proxy until SIGINT/SIGTERM, then drains.
pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let mut config = config(&args)?;
    if args.worker_threads == 0 {
        anyhow::bail!("--worker-threads must be at least 1");
    }
    // One worker: a current-thread runtime, which has none of the work-stealing and
    // cross-thread wake-up costs of the multi-thread scheduler.
    let data = if args.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.worker_threads)
            .thread_name("palisade-data")
            .enable_all()
            .build()
    }
    .context("cannot start the data-plane runtime")?;
    // Control work (discovery, certificates, admin) runs on its own thread so that metrics
    // scrapes and config bursts do not show up in request latency.
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control runtime")?;
    config.control_runtime = Some(control.handle().clone());
    let shutdown = CancellationToken::new();
    // The control runtime must keep running until the proxy's tasks on it have finished
    // draining, so it stops on its own token, after `proxy.wait()`.
    let stop_control = CancellationToken::new();
    let control_thread = {
        let stop = stop_control.clone();
        std::thread::Builder::new()
            .name("palisade-control".into())
            .spawn(move || control.block_on(stop.cancelled()))
            .context("cannot start the control thread")?
    };
    let result = data.block_on(async {
        let proxy = palisade_proxy::start(config, shutdown.clone()).await?;
        crate::cmd::shutdown_signal().await;
        tracing::info!("shutting down: draining in-flight requests");
        shutdown.cancel();
        proxy.wait().await;
        anyhow::Ok(())
    });
    shutdown.cancel();
    stop_control.cancel();
    let _ = control_thread.join();
    result.map(|()| ExitCode::SUCCESS)
}
