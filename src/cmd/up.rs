//! `palisade up [DIR]`: the whole mesh on one machine. Control plane, one sidecar per
//! Workload (each on the workload's own loopback address, standing in for a pod IP), and the
//! demo apps that Workloads name in `palisade.dev/app`. Prints a `curl` line into the mesh and
//! stops everything cleanly on Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use palisade_certs::{CaOptions, CertificateAuthority};
use palisade_control_plane::model::Workload;
use palisade_control_plane::{ControlPlaneConfig, MeshSnapshot, TokenStore};
use palisade_example_shop::FrontendConfig;
use palisade_proxy::{ConfigSource, ControlPlaneTarget, OUTBOUND_PORT, ProxyConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Annotation naming the demo app `palisade up` runs for a workload.
const APP_ANNOTATION: &str = "palisade.dev/app";
/// Annotation marking the workload whose sidecar the printed curl line goes through, and
/// the URL it asks for.
const ENTRYPOINT_ANNOTATION: &str = "palisade.dev/entrypoint";
/// How long the mesh may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags of `palisade up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Directory of mesh YAML.
    #[arg(default_value = "examples/ecommerce")]
    pub dir: PathBuf,
    /// Control plane gRPC address.
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub control_plane: SocketAddr,
    /// Control plane admin address.
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub control_plane_admin: SocketAddr,
}

/// Runs the mesh until Ctrl-C.
pub fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(up(args))
}

/// A temporary directory for the CA and tokens, removed when the mesh stops.
struct StateDir(PathBuf);

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let snapshot = palisade_control_plane::load_dir(&args.dir)?;
    if snapshot.workloads().len() == 0 {
        anyhow::bail!(
            "{}: no Workload resources, nothing to run",
            args.dir.display()
        );
    }
    let state = StateDir(std::env::temp_dir().join(format!("palisade-up-{}", std::process::id())));
    let trust_domain = snapshot.settings().trust_domain.clone();
    let (ca, material) = CertificateAuthority::generate(trust_domain, &CaOptions::default())?;
    material.write_to(&state.0.join("ca"))?;
    let tokens = TokenStore::generate(snapshot.workloads())?;
    tokens.write_to(&state.0.join("tokens"))?;

    let shutdown = CancellationToken::new();
    let cp = palisade_control_plane::start(
        ControlPlaneConfig {
            config_dir: args.dir.clone(),
            ca: Arc::new(ca),
            tokens: tokens.clone(),
            grpc_addr: args.control_plane,
            admin_addr: Some(args.control_plane_admin),
            watch: true,
            assigned_addresses: Default::default(),
        },
        shutdown.clone(),
    )
    .await?;
    let target = ControlPlaneTarget {
        addr: cp.grpc_addr().to_string(),
        identity: cp.identity().clone(),
    };

    let apps = TaskTracker::new();
    let mut proxies = Vec::new();
    for w in snapshot.workloads() {
        let token = tokens
            .get(&w.namespace, &w.name)
            .context("token missing for a workload")?
            .to_owned();
        let source = ConfigSource::ControlPlane {
            target: target.clone(),
            trust_anchors: cp.trust_bundle(),
            token,
        };
        let config = ProxyConfig {
            // `palisade up` logs what policy decided for each request (CONTRACT).
            log_decisions: true,
            ..ProxyConfig::on_address(
                w.identity.clone(),
                w.name.clone(),
                w.namespace.clone(),
                w.address,
                source,
            )
        };
        let proxy = palisade_proxy::start(config, shutdown.clone())
            .await
            .with_context(|| format!("sidecar of {}/{}", w.namespace, w.name))?;
        if let Some(app) = w.annotations.get(APP_ANNOTATION) {
            start_app(&apps, w, app, &shutdown).await?;
        }
        proxies.push((w.clone(), proxy));
    }

    let all_ready = async {
        for (_, p) in &proxies {
            p.ready().await;
        }
    };
    if tokio::time::timeout(READY_TIMEOUT, all_ready)
        .await
        .is_err()
    {
        let waiting: Vec<String> = proxies
            .iter()
            .filter(|(_, p)| !p.is_ready())
            .map(|(w, _)| format!("{}/{}", w.namespace, w.name))
            .collect();
        shutdown.cancel();
        anyhow::bail!(
            "sidecars not ready after {READY_TIMEOUT:?}: {}",
            waiting.join(", ")
        );
    }

    print_summary(&args.dir, &snapshot, &proxies, &cp);
    tokio::select! {
        _ = crate::cmd::shutdown_signal() => {}
        _ = shutdown.cancelled() => {}
    }
    eprintln!("stopping the mesh...");
    shutdown.cancel();
    for (_, p) in proxies {
        p.wait().await;
    }
    apps.close();
    apps.wait().await;
    cp.wait().await;
    drop(state);
    eprintln!("mesh stopped");
    Ok(ExitCode::SUCCESS)
}

async fn start_app(
    apps: &TaskTracker,
    w: &Workload,
    app: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let port = w.ports.first().map(|p| p.port).with_context(|| {
        format!(
            "Workload {}/{}: {APP_ANNOTATION} needs a port in spec.ports",
            w.namespace, w.name
        )
    })?;
    let addr = SocketAddr::new(w.address, port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("app {app} of {}/{} on {addr}", w.namespace, w.name))?;
    let frontend = FrontendConfig::new(SocketAddr::new(w.address, OUTBOUND_PORT));
    let name = app.to_owned();
    let stop = shutdown.clone();
    // Fail early on a typo rather than when the task runs.
    if !palisade_example_shop::APP_NAMES.contains(&app) {
        anyhow::bail!(
            "Workload {}/{}: annotation {APP_ANNOTATION}: unknown app {app:?} (known: {})",
            w.namespace,
            w.name,
            palisade_example_shop::APP_NAMES.join(", ")
        );
    }
    apps.spawn(async move {
        if let Err(e) = palisade_example_shop::serve_app(&name, listener, frontend, stop).await {
            tracing::error!(app = %name, error = %e, "app stopped");
        }
    });
    Ok(())
}

fn print_summary(
    dir: &Path,
    snapshot: &MeshSnapshot,
    proxies: &[(Workload, palisade_proxy::Proxy)],
    cp: &palisade_control_plane::ControlPlane,
) {
    println!();
    println!("Palisade mesh from {} is up.", dir.display());
    println!(
        "  control plane   {}  (admin http://{})",
        cp.grpc_addr(),
        cp.admin_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    for (w, p) in proxies {
        let app = w
            .annotations
            .get(APP_ANNOTATION)
            .map(|a| format!("app {a} on {}", w.address))
            .unwrap_or_else(|| "no app".into());
        println!(
            "  {:<16} {}  {}  sidecar admin http://{}/",
            format!("{}/{}", w.namespace, w.name),
            w.identity,
            app,
            p.admin_addr()
        );
    }
    println!();
    println!("Send a request into the mesh:");
    println!("{}", curl_line(snapshot));
    println!();
    println!("Press Ctrl-C to stop.");
}

/// The curl line: through the entrypoint workload's sidecar, as an explicit proxy.
fn curl_line(snapshot: &MeshSnapshot) -> String {
    let entry = snapshot.workloads().find_map(|w| {
        w.annotations
            .get(ENTRYPOINT_ANNOTATION)
            .map(|url| (w, url.clone()))
    });
    let (via, url) = match entry {
        Some(found) => found,
        None => {
            let Some(first) = snapshot.workloads().next() else {
                return "curl --version".into();
            };
            let url = snapshot
                .services()
                .next()
                .and_then(|s| {
                    s.ports
                        .first()
                        .map(|p| format!("http://{}.{}:{}/", s.name, s.namespace, p.port))
                })
                .unwrap_or_else(|| "http://localhost/".into());
            (first, url)
        }
    };
    format!(
        "curl -sS -x http://{} {url}",
        SocketAddr::new(via.address, OUTBOUND_PORT)
    )
}
