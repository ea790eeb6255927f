//! `palisade up --mode loopback`: everything in this process. The control plane, one sidecar
//! per Workload on the workload's own loopback address (standing in for a pod IP), and the
//! demo apps there too. Nothing captures traffic, so the apps are reachable directly, around
//! their sidecars; the summary says so.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use palisade_control_plane::model::Workload;
use palisade_control_plane::{ControlPlaneConfig, MeshSnapshot};
use palisade_example_shop::FrontendConfig;
use palisade_proxy::{ConfigSource, ControlPlaneTarget, OUTBOUND_PORT, ProxyConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{READY_TIMEOUT, StateDir, app_of, credentials, entrypoint};

/// What loopback mode needs from the flags.
#[derive(Debug)]
pub(super) struct Settings {
    /// Directory of mesh YAML.
    pub dir: PathBuf,
    /// Control plane gRPC address.
    pub control_plane: SocketAddr,
    /// Control plane admin address.
    pub control_plane_admin: SocketAddr,
    /// Why loopback was chosen when it was not asked for.
    pub default_because: Option<&'static str>,
}

/// Runs the mesh until Ctrl-C or SIGTERM.
pub(super) fn run(settings: Settings, snapshot: MeshSnapshot) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(up(settings, snapshot))
}

async fn up(settings: Settings, snapshot: MeshSnapshot) -> anyhow::Result<ExitCode> {
    let state = StateDir::create(0o700)?;
    let (ca, material, tokens) = credentials(&snapshot)?;
    state.write_ca(&material)?;
    state.write_tokens(&tokens)?;

    let shutdown = CancellationToken::new();
    let cp = palisade_control_plane::start(
        ControlPlaneConfig {
            config_dir: settings.dir.clone(),
            ca: Arc::new(ca).into(),
            tokens: tokens.clone(),
            grpc_addr: settings.control_plane,
            admin_addr: Some(settings.control_plane_admin),
            watch: true,
            assigned_addresses: Default::default(),
            limits: Default::default(),
            observe: Default::default(),
            kubernetes: None,
            live_view_remote: false,
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
        start_app(&apps, w, &shutdown).await?;
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

    print_summary(&settings, &snapshot, &proxies, &cp);
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
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let Some((app, port)) = app_of(w)? else {
        return Ok(());
    };
    let addr = SocketAddr::new(w.address, port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("app {app} of {}/{} on {addr}", w.namespace, w.name))?;
    let frontend = FrontendConfig::new(SocketAddr::new(w.address, OUTBOUND_PORT));
    let name = app.to_owned();
    let stop = shutdown.clone();
    apps.spawn(async move {
        if let Err(e) = palisade_example_shop::serve_app(&name, listener, frontend, stop).await {
            tracing::error!(app = %name, error = %e, "app stopped");
        }
    });
    Ok(())
}

fn print_summary(
    settings: &Settings,
    snapshot: &MeshSnapshot,
    proxies: &[(Workload, palisade_proxy::Proxy)],
    cp: &palisade_control_plane::ControlPlane,
) {
    println!();
    println!("Palisade mesh from {} is up.", settings.dir.display());
    println!(
        "  control plane   {}  (admin http://{})",
        cp.grpc_addr(),
        cp.admin_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    for (w, p) in proxies {
        let app = w
            .annotations
            .get(super::APP_ANNOTATION)
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
    match settings.default_because {
        Some(why) => println!(
            "Mode loopback ({why}): apps listen on their loopback addresses and are reachable \
             directly, around their sidecars; nothing is enforced against a caller that skips \
             the mesh (run as root for --mode netns)."
        ),
        None => println!(
            "Mode loopback: apps listen on their loopback addresses and are reachable \
             directly, around their sidecars; nothing is enforced against a caller that skips \
             the mesh (--mode netns, as root, captures their traffic)."
        ),
    }
    println!();
    println!("Send a request into the mesh:");
    println!("{}", curl_line(snapshot));
    println!();
    println!("Press Ctrl-C to stop.");
}

/// The curl line: through the entrypoint workload's sidecar, as an explicit proxy.
fn curl_line(snapshot: &MeshSnapshot) -> String {
    match entrypoint(snapshot) {
        Some((via, url)) => format!(
            "curl -sS -x http://{} {url}",
            SocketAddr::new(via.address, OUTBOUND_PORT)
        ),
        None => "curl --version".into(),
    }
}
