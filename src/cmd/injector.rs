//! `palisade injector`: the HTTPS mutating admission webhook (`POST /inject`). Wiring only:
//! flags → `palisade_injector::Config` → `palisade_injector::run`, stopped by SIGTERM/ctrl-c.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use palisade_injector::{Limits, Settings};
use tokio_util::sync::CancellationToken;

/// What injection puts into pods; shared by `palisade injector` and `palisade inject`.
#[derive(Debug, Args)]
pub struct InjectionArgs {
    /// Image of the injected containers (`palisade init` and `palisade proxy`).
    #[arg(long, env = "PALISADE_PROXY_IMAGE", default_value = palisade_injector::mutate::DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// The control plane's address (host:port) the proxies connect to.
    #[arg(long, env = "PALISADE_CONTROL_PLANE", default_value = palisade_injector::mutate::DEFAULT_CONTROL_PLANE)]
    pub control_plane: String,
    /// The SPIFFE ID the proxies require of the control plane's certificate.
    #[arg(long, env = "PALISADE_CONTROL_PLANE_IDENTITY", default_value = palisade_injector::mutate::DEFAULT_CONTROL_PLANE_IDENTITY)]
    pub control_plane_identity: String,
    /// The mesh's trust domain.
    #[arg(long, env = "PALISADE_TRUST_DOMAIN", default_value = palisade_injector::mutate::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
}

impl InjectionArgs {
    /// The settings, checked.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let settings = Settings {
            proxy_image: self.proxy_image.clone(),
            control_plane: self.control_plane.clone(),
            control_plane_identity: self.control_plane_identity.clone(),
            trust_domain: self.trust_domain.clone(),
        };
        settings.check()?;
        Ok(settings)
    }
}

/// Flags of `palisade injector`.
#[derive(Debug, Args)]
pub struct InjectorArgs {
    /// Address of the HTTPS listener.
    #[arg(
        long,
        env = "PALISADE_INJECTOR_LISTEN",
        default_value = "0.0.0.0:15017"
    )]
    pub listen: SocketAddr,
    /// PEM certificate chain the webhook serves (the webhook configuration's caBundle must
    /// trust it); re-read within 10 s when the file changes.
    #[arg(long, env = "PALISADE_INJECTOR_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "PALISADE_INJECTOR_TLS_KEY")]
    pub tls_key: PathBuf,
    /// Open connections at most; more are closed at once.
    #[arg(long, env = "PALISADE_INJECTOR_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,
    #[command(flatten)]
    pub injection: InjectionArgs,
}

/// Serves the webhook until SIGINT/SIGTERM.
pub fn run(args: InjectorArgs) -> anyhow::Result<ExitCode> {
    let settings = args.injection.settings()?;
    if args.max_connections == 0 {
        anyhow::bail!("--max-connections must be at least 1");
    }
    let tls = palisade_injector::server::load_tls(&args.tls_cert, &args.tls_key)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let config = palisade_injector::Config {
            listen: args.listen,
            tls: Arc::new(tls),
            settings,
            limits: Limits {
                max_connections: args.max_connections,
                ..Limits::default()
            },
        };
        let handle = palisade_injector::run(config, shutdown.clone()).await?;
        tracing::info!(addr = %handle.local_addr(), "injector serving POST /inject");
        crate::cmd::shutdown_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
        handle.wait().await;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
