//! `palisade up --mode netns`: each Workload in a network namespace of its own ("pod"), as a
//! cluster would run it. Wiring only; the plumbing is `palisade_proxy::netns`.
//!
//! - A node namespace `pal-up-<pid>-node` with a bridge at 10.78.0.1/24; the control plane
//!   runs in this process on a thread inside it (its own runtime), on 10.78.0.1:15012 (admin
//!   :15014).
//! - Per Workload, a pod namespace `pal-up-<pid>-<name>.<namespace>` on the bridge at the next
//!   address (handed to the control plane as the workload's address), with `palisade init`'s
//!   capture rules; its sidecar is a `palisade proxy` child process running as UID/GID 1337
//!   inside it, and its demo app runs in this process on a thread inside it, listening on the
//!   pod address. The frontend dials its upstreams at the addresses the mesh's names resolve
//!   to, knowing nothing of the mesh.
//! - The printed curl line connects to 127.0.0.1:<port> in the root namespace; each
//!   connection is made again from inside the entry-point workload's pod to the entry-point
//!   Service, so that pod's sidecar captures it and carries it into the mesh over mTLS.
//!
//! Nothing is created in the root namespace but that listener. SIGINT and SIGTERM, at any
//! time, stop the sidecars and delete every namespace, which takes every link and rule with
//! it; so does a failed start. Namespaces left by a killed earlier run (its pid gone) are
//! removed at start.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use palisade_control_plane::model::{MtlsMode, NamespacedName, Workload};
use palisade_control_plane::{AddressAssignments, ControlPlaneConfig, MeshSnapshot, TokenStore};
use palisade_example_shop::{FrontendConfig, ResolvedUpstreams};
use palisade_proxy::capture::{self, CaptureConfig};
use palisade_proxy::netns::{
    self, ChildProcess, ForwardLimits, Namespace, NetnsError, Node, NsHandle, NsThread,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{READY_TIMEOUT, StateDir, app_of, credentials, entrypoint, resolve_authority};

/// Prefix of every namespace this mode makes; the pid follows.
const PREFIX: &str = "pal-up-";
/// The node's address on the bridge; pods get the next ones.
const NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
/// Prefix length of the pod network.
const PREFIX_LEN: u8 = 24;
/// The bridge inside the node namespace.
const BRIDGE: &str = "palisade0";
/// Control plane ports on the node's address (CONTRACT: 15012 gRPC, 15014 admin).
const CONTROL_PLANE_PORT: u16 = 15012;
const CONTROL_PLANE_ADMIN_PORT: u16 = 15014;
/// The sidecars' user and group (CONTRACT: 1337; the capture rules exempt it).
const PROXY_UID: u32 = capture::DEFAULT_PROXY_UID;
/// Seconds a sidecar drains in-flight requests on SIGTERM.
const SIDECAR_DRAIN_SECONDS: u64 = 2;
/// How long sidecars get to exit after SIGTERM before SIGKILL.
const SIDECAR_STOP_GRACE: Duration = Duration::from_secs(5);
/// How long in-process apps and the control plane get to finish after the stop signal.
const SERVICE_GRACE: Duration = Duration::from_secs(2);
/// Bound on starting the control plane or an app.
const SERVICE_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on each readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The sidecar's admin listener inside its pod.
const SIDECAR_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);

/// Runs the mesh until Ctrl-C or SIGTERM.
pub(super) fn run(dir: &Path, loaded: MeshSnapshot, port: u16) -> anyhow::Result<ExitCode> {
    let plan = Plan::new(dir, &loaded, std::process::id())?;
    let listener = bind_forwarded_port(port)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let stop = CancellationToken::new();
    watch_signals(&runtime, stop.clone())?;
    remove_stale_namespaces();
    let state = StateDir::create(0o750)?;
    // Only root and the sidecars' group may enter: the tokens are secrets.
    std::os::unix::fs::chown(state.path(), Some(0), Some(PROXY_UID))
        .with_context(|| format!("cannot chown {}", state.path().display()))?;

    let mut mesh = Mesh::new(stop.clone());
    let outcome = match start(&mut mesh, &plan, &state, &stop) {
        Ok(()) => {
            serve(&runtime, &mut mesh, &plan, listener, port);
            eprintln!("stopping the mesh...");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is::<Interrupted>() => {
            eprintln!("interrupted while starting; removing what was made...");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e),
    };
    mesh.teardown();
    drop(state);
    runtime.shutdown_timeout(Duration::from_secs(1));
    if outcome.is_ok() {
        eprintln!("mesh stopped");
    }
    outcome
}

/// The root namespace's listener for the curl line, bound before anything is made so that a
/// taken port is a clear error.
fn bind_forwarded_port(port: u16) -> anyhow::Result<std::net::TcpListener> {
    let listener =
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
                "127.0.0.1:{port} is already in use (another palisade up?); choose a free \
                 port with --port"
            ),
            _ => anyhow::Error::new(e).context(format!("cannot listen on 127.0.0.1:{port}")),
        })?;
    listener
        .set_nonblocking(true)
        .context("cannot set up the forwarded port")?;
    Ok(listener)
}

/// Namespaces left by a killed earlier run are harmless to this one (other names), so a
/// failure to remove them is only reported.
fn remove_stale_namespaces() {
    match netns::remove_stale(PREFIX) {
        Ok(removed) => {
            for name in removed {
                tracing::info!(netns = %name, "removed a namespace left by an earlier run");
            }
        }
        Err(error) => tracing::warn!(%error, "cannot remove namespaces of an earlier run"),
    }
}

/// Forwards the curl line's port into the entry point's pod, prints the summary, and waits
/// for the stop signal, reporting any sidecar that dies meanwhile.
fn serve(
    runtime: &tokio::runtime::Runtime,
    mesh: &mut Mesh,
    plan: &Plan,
    listener: std::net::TcpListener,
    port: u16,
) {
    let stop = mesh.stop.clone();
    let forwarding = {
        let via = mesh.pods[plan.entry.pod].ns.handle().clone();
        let target = plan.entry.target;
        let stop = stop.clone();
        runtime.spawn(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    netns::forward(listener, via, target, ForwardLimits::default(), stop).await
                }
                Err(error) => tracing::error!(%error, "cannot serve the forwarded port"),
            }
        })
    };
    print_summary(plan, port);

    let stopped = || {
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), stop.cancelled())
                .await
                .is_ok()
        })
    };
    let mut reported = vec![false; mesh.pods.len()];
    while !stopped() {
        for (pod, reported) in mesh.pods.iter_mut().zip(&mut reported) {
            if let Some(status) = pod.sidecar.as_mut().and_then(ChildProcess::exited)
                && !*reported
            {
                *reported = true;
                tracing::error!(workload = %pod.workload, %status, "sidecar exited");
            }
        }
    }
    let _ = runtime.block_on(async { tokio::time::timeout(SERVICE_GRACE, forwarding).await });
}

/// Turns SIGINT and SIGTERM into `stop`. Registered before anything is made, so a signal
/// at any later time is a clean stop rather than the default exit.
fn watch_signals(runtime: &tokio::runtime::Runtime, stop: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let _entered = runtime.enter();
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    runtime.spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        stop.cancel();
    });
    Ok(())
}

/// The stop signal arrived while starting.
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

fn check_stop(stop: &CancellationToken) -> anyhow::Result<()> {
    if stop.is_cancelled() {
        return Err(Interrupted.into());
    }
    Ok(())
}

// === Plan ===

/// Names and addresses, decided before anything is made.
struct Plan {
    dir: PathBuf,
    /// The directory with the workloads at their pod addresses.
    snapshot: MeshSnapshot,
    assigned: AddressAssignments,
    node_netns: String,
    pods: Vec<PodPlan>,
    entry: Entry,
}

struct PodPlan {
    workload: Workload,
    netns: String,
    address: Ipv4Addr,
    /// The demo app and its port.
    app: Option<(String, u16)>,
}

/// Where the curl line enters: the entry-point workload's pod, and the address its
/// connections are made to.
struct Entry {
    /// Index in `Plan::pods`.
    pod: usize,
    url: String,
    host: String,
    port: u16,
    target: SocketAddr,
}

impl Plan {
    fn new(dir: &Path, loaded: &MeshSnapshot, pid: u32) -> anyhow::Result<Self> {
        let mut assigned = AddressAssignments::new();
        let mut names = Vec::new();
        for (i, w) in loaded.workloads().enumerate() {
            let host = i
                .checked_add(2)
                .and_then(|h| u8::try_from(h).ok())
                .filter(|h| *h < 255)
                .with_context(|| {
                    format!(
                        "{} Workloads: the pod network {NODE_ADDRESS}/{PREFIX_LEN} has room \
                         for 253",
                        loaded.workloads().len()
                    )
                })?;
            let [a, b, c, _] = NODE_ADDRESS.octets();
            let address = Ipv4Addr::new(a, b, c, host);
            assigned.insert(
                NamespacedName::new(&w.namespace, &w.name),
                IpAddr::V4(address),
            );
            names.push((w.namespace.clone(), w.name.clone(), address));
        }
        let snapshot = palisade_control_plane::load_dir_assigned(dir, &assigned)?;
        let mut pods = Vec::new();
        for (namespace, name, address) in names {
            let workload = snapshot
                .workload(&namespace, &name)
                .with_context(|| format!("Workload {namespace}/{name} vanished while loading"))?
                .clone();
            let app = app_of(&workload)?.map(|(a, p)| (a.to_owned(), p));
            pods.push(PodPlan {
                netns: netns::namespace_name(PREFIX, pid, &format!("{name}.{namespace}")),
                workload,
                address,
                app,
            });
        }

        let (via, url) = entrypoint(&snapshot).context("no workload to enter the mesh through")?;
        let pod = pods
            .iter()
            .position(|p| p.workload.key() == via.key())
            .context("the entry-point workload has no pod")?;
        let (host, port) = super::url_authority(&url)?;
        let target = resolve_authority(&snapshot, &format!("{host}:{port}"))
            .with_context(|| format!("the entry point {url}"))?;
        Ok(Self {
            dir: dir.to_owned(),
            node_netns: netns::namespace_name(PREFIX, pid, "node"),
            assigned,
            pods,
            entry: Entry {
                pod,
                url,
                host,
                port,
                target,
            },
            snapshot,
        })
    }

    fn control_plane_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(NODE_ADDRESS), CONTROL_PLANE_PORT)
    }

    fn control_plane_admin_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(NODE_ADDRESS), CONTROL_PLANE_ADMIN_PORT)
    }
}

// === Mesh: what is running, torn down in order ===

/// Everything started so far. [`Mesh::teardown`] (also run on drop) stops it in order:
/// sidecars (SIGTERM, then SIGKILL), in-process apps and the control plane, then the pod
/// namespaces and the node namespace.
struct Mesh {
    stop: CancellationToken,
    pods: Vec<Pod>,
    control_plane: Option<Service>,
    node: Option<Node>,
}

/// One running pod; its fields drop in order: sidecar (killed), app (stopped), namespace
/// (deleted).
struct Pod {
    /// `namespace/name`, for messages and log tags.
    workload: String,
    sidecar: Option<ChildProcess>,
    app: Option<Service>,
    ns: Namespace,
}

impl Mesh {
    fn new(stop: CancellationToken) -> Self {
        Self {
            stop,
            pods: Vec::new(),
            control_plane: None,
            node: None,
        }
    }

    fn teardown(&mut self) {
        self.stop.cancel();
        let killed = netns::stop_all(
            self.pods.iter_mut().filter_map(|p| p.sidecar.as_mut()),
            SIDECAR_STOP_GRACE,
        );
        if !killed.is_empty() {
            tracing::warn!(sidecars = %killed.join(", "), "killed after {SIDECAR_STOP_GRACE:?}");
        }
        for pod in &mut self.pods {
            pod.sidecar = None;
            pod.app = None;
        }
        self.control_plane = None;
        for pod in self.pods.drain(..) {
            let name = pod.ns.name().to_owned();
            if let Err(error) = pod.ns.delete() {
                tracing::warn!(netns = %name, %error, "cannot delete the namespace");
            }
        }
        if let Some(node) = self.node.take() {
            let name = node.namespace().name().to_owned();
            if let Err(error) = node.delete() {
                tracing::warn!(netns = %name, %error, "cannot delete the namespace");
            }
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Something running in this process on a thread inside a namespace, on its own
/// current-thread runtime; stopped and joined when dropped.
struct Service {
    stop: CancellationToken,
    thread: Option<NsThread<()>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            // The thread bounds its own shutdown (SERVICE_GRACE, then the runtime is shut
            // down with a timeout).
            let _ = thread.join();
        }
    }
}

/// Starts `start` on a thread inside `ns` with a runtime of its own: `start` binds what it
/// needs there and returns a value for the caller and the future that serves until its
/// token is cancelled. Returns once `start` has finished, with its value or its error.
fn spawn_service<T, F, Fut, Serve>(
    ns: &NsHandle,
    thread_name: &str,
    what: &str,
    stop: &CancellationToken,
    start: F,
) -> anyhow::Result<(T, Service)>
where
    T: Send + 'static,
    F: FnOnce(CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<(T, Serve)>>,
    Serve: Future<Output = ()>,
{
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
    let token = stop.child_token();
    let inner = token.clone();
    let thread = ns.spawn(thread_name, move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ =
                    started_tx.send(Err(anyhow::Error::new(e).context("cannot start a runtime")));
                return;
            }
        };
        runtime.block_on(async {
            match start(inner.clone()).await {
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                }
                Ok((value, serve)) => {
                    let _ = started_tx.send(Ok(value));
                    let grace = async {
                        inner.cancelled().await;
                        tokio::time::sleep(SERVICE_GRACE).await;
                    };
                    tokio::select! {
                        _ = serve => {}
                        _ = grace => {}
                    }
                }
            }
        });
        runtime.shutdown_timeout(Duration::from_secs(1));
    })?;
    // From here on, dropping `service` stops and joins the thread.
    let service = Service {
        stop: token,
        thread: Some(thread),
    };
    match started_rx.recv_timeout(SERVICE_START_TIMEOUT) {
        Ok(Ok(value)) => Ok((value, service)),
        Ok(Err(e)) => Err(e.context(format!("{what} did not start"))),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            anyhow::bail!("{what} did not start within {SERVICE_START_TIMEOUT:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            anyhow::bail!("{what} stopped while starting")
        }
    }
}

// === start ===

fn start(
    mesh: &mut Mesh,
    plan: &Plan,
    state: &StateDir,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let (ca, _material, tokens) = credentials(&plan.snapshot)?;

    check_stop(stop)?;
    let node = mesh.node.insert(Node::create(
        &plan.node_netns,
        BRIDGE,
        NODE_ADDRESS,
        PREFIX_LEN,
    )?);
    let node_ns = node.namespace().handle().clone();

    check_stop(stop)?;
    let config = ControlPlaneConfig {
        config_dir: plan.dir.clone(),
        ca: Arc::new(ca).into(),
        tokens: tokens.clone(),
        grpc_addr: plan.control_plane_addr(),
        admin_addr: Some(plan.control_plane_admin_addr()),
        watch: true,
        assigned_addresses: plan.assigned.clone(),
        limits: Default::default(),
        observe: Default::default(),
        kubernetes: None,
        live_view_remote: false,
    };
    let (anchors, control_plane) = spawn_service(
        &node_ns,
        "palisade-cp",
        "the control plane",
        stop,
        move |token| async move {
            let cp = palisade_control_plane::start(config, token.clone()).await?;
            let anchors = cp.trust_bundle().to_pem();
            Ok((anchors, async move {
                token.cancelled().await;
                cp.wait().await;
            }))
        },
    )?;
    mesh.control_plane = Some(control_plane);
    let files = write_files(state, &anchors, &tokens, plan)?;
    let mut binary = ProxyBinary::current(state)?;

    for pod_plan in &plan.pods {
        check_stop(stop)?;
        // Until it joins `mesh`, a failure drops `pod`: its sidecar is killed, its app
        // stopped and its namespace deleted.
        let mut pod = Pod {
            workload: format!("{}/{}", pod_plan.workload.namespace, pod_plan.workload.name),
            sidecar: None,
            app: None,
            ns: Namespace::create(&pod_plan.netns)?,
        };
        let node = mesh.node.as_mut().context("the node namespace is gone")?;
        node.attach(&pod.ns, pod_plan.address)?;
        install_capture(pod.ns.handle())
            .with_context(|| format!("capture rules in {}", pod.ns.name()))?;
        if let Some((app, port)) = &pod_plan.app {
            pod.app = Some(start_app(
                plan,
                pod_plan,
                pod.ns.handle(),
                app,
                *port,
                stop,
            )?);
        }
        pod.sidecar = Some(binary.spawn_sidecar(plan, pod_plan, pod.ns.handle(), &files)?);
        tracing::debug!(workload = %pod.workload, netns = pod.ns.name(), "pod started");
        mesh.pods.push(pod);
    }

    wait_ready(mesh, stop)
}

/// `palisade init`'s rules inside the pod: inbound TCP to 15006, outbound to 15001, UID
/// 1337 exempt, non-TCP denied except DNS to the node.
fn install_capture(ns: &NsHandle) -> anyhow::Result<()> {
    let config = CaptureConfig {
        dns_servers: vec![IpAddr::V4(NODE_ADDRESS)],
        ..CaptureConfig::default()
    };
    let system = capture::apply::System::new(std::env::var_os("PATH"));
    ns.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a runtime")?;
        runtime
            .block_on(capture::apply::install(&config, &system))
            .map(drop)
            .map_err(anyhow::Error::from)
    })?
}

fn start_app(
    plan: &Plan,
    pod: &PodPlan,
    ns: &NsHandle,
    app: &str,
    port: u16,
    stop: &CancellationToken,
) -> anyhow::Result<Service> {
    let addr = SocketAddr::new(IpAddr::V4(pod.address), port);
    let w = &pod.workload;
    let frontend = if app == "frontend" {
        // An app that resolved its upstreams' names through DNS: it dials those addresses
        // and the capture rules hand the connections to its sidecar.
        let defaults = FrontendConfig::default();
        FrontendConfig::transparent(ResolvedUpstreams {
            search: resolve_authority(&plan.snapshot, &defaults.search_authority)
                .context("the frontend app's search upstream")?,
            payments: resolve_authority(&plan.snapshot, &defaults.payments_authority)
                .context("the frontend app's payments upstream")?,
        })
    } else {
        FrontendConfig::default()
    };
    let name = app.to_owned();
    let what = format!("app {app} of {}/{} on {addr}", w.namespace, w.name);
    let ((), service) = spawn_service(
        ns,
        &format!("app-{app}"),
        &what,
        stop,
        move |token| async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            Ok(((), async move {
                if let Err(error) =
                    palisade_example_shop::serve_app(&name, listener, frontend, token).await
                {
                    tracing::error!(app = %name, %error, "app stopped");
                }
            }))
        },
    )?;
    Ok(service)
}

/// Files the sidecars read: readable by UID 1337, by no one else but root.
struct Files {
    anchors: PathBuf,
    dir: PathBuf,
}

impl Files {
    /// The token file of workload `w`.
    fn token(&self, w: &Workload) -> PathBuf {
        self.dir.join(format!("token-{}.{}", w.name, w.namespace))
    }
}

fn write_files(
    state: &StateDir,
    anchors: &str,
    tokens: &TokenStore,
    plan: &Plan,
) -> anyhow::Result<Files> {
    let files = Files {
        anchors: state.path().join("trust-anchors.pem"),
        dir: state.path().to_owned(),
    };
    write_for_proxy(&files.anchors, anchors)?;
    for pod in &plan.pods {
        let w = &pod.workload;
        let token = tokens
            .get(&w.namespace, &w.name)
            .context("token missing for a workload")?;
        write_for_proxy(&files.token(w), token)?;
    }
    Ok(files)
}

/// Writes `contents` to a new file owned by UID/GID 1337, mode 0400.
fn write_for_proxy(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::os::unix::fs::chown(path, Some(PROXY_UID), Some(PROXY_UID))
        .with_context(|| format!("cannot chown {}", path.display()))
}

/// The `palisade` binary the sidecars run: this one, or a copy in the state directory when
/// UID 1337 cannot execute this one where it is.
struct ProxyBinary {
    path: PathBuf,
    state: PathBuf,
    copied: bool,
}

impl ProxyBinary {
    fn current(state: &StateDir) -> anyhow::Result<Self> {
        Ok(Self {
            path: std::env::current_exe().context("cannot find this program's path")?,
            state: state.path().to_owned(),
            copied: false,
        })
    }

    fn spawn_sidecar(
        &mut self,
        plan: &Plan,
        pod: &PodPlan,
        ns: &NsHandle,
        files: &Files,
    ) -> anyhow::Result<ChildProcess> {
        match self.try_spawn(plan, pod, ns, files) {
            Err(NetnsError::Spawn { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied && !self.copied =>
            {
                let copy = self.state.join("palisade");
                tracing::info!(
                    from = %self.path.display(),
                    to = %copy.display(),
                    "UID {PROXY_UID} cannot run this binary where it is; using a copy"
                );
                std::fs::copy(&self.path, &copy)
                    .with_context(|| format!("cannot copy the binary to {}", copy.display()))?;
                std::os::unix::fs::chown(&copy, Some(0), Some(PROXY_UID))
                    .with_context(|| format!("cannot chown {}", copy.display()))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o750))
                    .with_context(|| format!("cannot chmod {}", copy.display()))?;
                self.path = copy;
                self.copied = true;
                Ok(self.try_spawn(plan, pod, ns, files)?)
            }
            other => other.with_context(|| {
                format!(
                    "cannot start the sidecar of {}/{} as UID {PROXY_UID}",
                    pod.workload.namespace, pod.workload.name
                )
            }),
        }
    }

    fn try_spawn(
        &self,
        plan: &Plan,
        pod: &PodPlan,
        ns: &NsHandle,
        files: &Files,
    ) -> Result<ChildProcess, NetnsError> {
        use std::os::unix::process::CommandExt;
        let w = &pod.workload;
        let mut command = Command::new(&self.path);
        command
            .arg("proxy")
            .args(["--workload", &w.name])
            .args(["--namespace", &w.namespace])
            .args(["--service-account", &w.service_account])
            .args([
                "--trust-domain",
                plan.snapshot.settings().trust_domain.as_str(),
            ])
            .args(["--control-plane", &plan.control_plane_addr().to_string()])
            .arg("--trust-anchors")
            .arg(&files.anchors)
            .arg("--token-file")
            .arg(files.token(w))
            .args(["--inbound", "0.0.0.0:15006"])
            .args(["--outbound", "127.0.0.1:15001"])
            .args(["--admin", &SIDECAR_ADMIN.to_string()])
            .args(["--app-host", &pod.address.to_string()])
            .args(["--drain-seconds", &SIDECAR_DRAIN_SECONDS.to_string()])
            .arg("--log-decisions")
            .uid(PROXY_UID)
            .gid(PROXY_UID)
            // Its own process group: a Ctrl-C in the terminal reaches `palisade up` only,
            // which stops the sidecars in order.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // Flags say everything; stray PALISADE_* settings of this shell must not add to it.
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("PALISADE_") && key_text != "PALISADE_LOG_FORMAT" {
                command.env_remove(&key);
            }
        }
        ns.spawn_process(&format!("{}/{}", w.namespace, w.name), command)
    }
}

/// Waits until every sidecar's `/ready` answers 200 (probed from inside its pod), at most
/// [`READY_TIMEOUT`]; a sidecar that exits is an error at once.
fn wait_ready(mesh: &mut Mesh, stop: &CancellationToken) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut waiting: Vec<usize> = (0..mesh.pods.len()).collect();
    loop {
        let mut still = Vec::new();
        for i in waiting {
            let pod = &mut mesh.pods[i];
            if let Some(status) = pod.sidecar.as_mut().and_then(ChildProcess::exited) {
                anyhow::bail!(
                    "the sidecar of {} exited ({status}) before it was ready; its log lines are \
                     tagged [{}] above",
                    pod.workload,
                    pod.workload
                );
            }
            let ready = pod
                .ns
                .handle()
                .run(|| netns::http_status(SIDECAR_ADMIN, "/ready", PROBE_TIMEOUT))
                .ok()
                .and_then(Result::ok)
                == Some(200);
            if !ready {
                still.push(i);
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        check_stop(stop)?;
        if Instant::now() >= deadline {
            let names: Vec<&str> = still
                .iter()
                .map(|i| mesh.pods[*i].workload.as_str())
                .collect();
            anyhow::bail!(
                "sidecars not ready after {READY_TIMEOUT:?}: {}",
                names.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
        waiting = still;
    }
}

// === summary ===

fn print_summary(plan: &Plan, port: u16) {
    let entry = &plan.entry;
    let via = &plan.pods[entry.pod];
    println!();
    println!(
        "Palisade mesh from {} is up, one network namespace per workload (--mode netns).",
        plan.dir.display()
    );
    println!(
        "  {:<16} {:<28} {:<10} control plane {} (admin http://{}/)",
        "node",
        plan.node_netns,
        NODE_ADDRESS,
        plan.control_plane_addr(),
        plan.control_plane_admin_addr()
    );
    for pod in &plan.pods {
        let w = &pod.workload;
        let app = match &pod.app {
            Some((app, port)) => format!("app {app} on :{port}"),
            None => "no app".to_owned(),
        };
        println!(
            "  {:<16} {:<28} {:<10} {}  {app}",
            format!("{}/{}", w.namespace, w.name),
            pod.netns,
            pod.address,
            w.identity
        );
    }
    println!(
        "  Admin endpoints are inside the namespaces, e.g. the control plane's metrics: \
         ip netns exec {} curl -s http://{}/metrics",
        plan.node_netns,
        plan.control_plane_admin_addr()
    );
    println!(
        "  and a sidecar's configuration: ip netns exec {} curl -s http://{SIDECAR_ADMIN}/config",
        via.netns
    );
    println!();
    let mtls = match plan.snapshot.settings().mtls_mode {
        MtlsMode::Strict => "STRICT mTLS: callers without a mesh identity are refused",
        MtlsMode::Permissive => {
            "PERMISSIVE mTLS: callers without a mesh identity are served only as policy allows"
        }
    };
    println!(
        "Apps are reachable only through their sidecars: every pod's TCP is captured ({mtls})."
    );
    println!();
    println!(
        "Send a request into the mesh (127.0.0.1:{port} is dialled again from inside {}/{}'s \
         namespace to {}:{} = {}; its sidecar carries it over mTLS):",
        via.workload.namespace, via.workload.name, entry.host, entry.port, entry.target
    );
    println!(
        "curl -sS --connect-to {host}:{p}:127.0.0.1:{port} {url}",
        host = entry.host,
        p = entry.port,
        url = entry.url
    );
    if let Some(bypass) = bypass_lines(plan) {
        println!();
        println!("Try to go around the mesh (as root, from this shell):");
        for line in bypass {
            println!("{line}");
        }
    }
    println!();
    println!("Press Ctrl-C to stop.");
}

/// Commands that reach the entry point's app directly: from another workload's pod (its
/// sidecar captures the call; the app's policy decides) and from the node (no sidecar).
fn bypass_lines(plan: &Plan) -> Option<Vec<String>> {
    let (host, port) = (&plan.entry.host, plan.entry.port);
    let service = plan
        .snapshot
        .services()
        .find(|s| s.hostnames.iter().any(|h| h == host))?;
    let endpoint = service.endpoints.first()?;
    let target_port = service.ports.iter().find(|p| p.port == port)?.target_port;
    let target = SocketAddr::new(endpoint.address, target_port);
    let target_name = format!("{}/{}", endpoint.namespace, endpoint.workload);
    let mut lines = Vec::new();
    let other =
        plan.pods
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                *i != plan.entry.pod
                    && !service.endpoints.iter().any(|e| {
                        e.workload == p.workload.name && e.namespace == p.workload.namespace
                    })
            })
            .map(|(_, p)| p)
            .min_by_key(|p| p.app.is_none());
    if let Some(from) = other {
        lines.push(format!(
            "  from the pod of {}/{}, to {target_name}'s app (captured by its sidecar; \
             {target_name}'s policy decides):",
            from.workload.namespace, from.workload.name
        ));
        lines.push(format!(
            "    ip netns exec {} curl -sS -i http://{target}/",
            from.netns
        ));
    }
    let refusal = match plan.snapshot.settings().mtls_mode {
        MtlsMode::Strict => "refused: STRICT mTLS",
        MtlsMode::Permissive => "PERMISSIVE mTLS: policy decides",
    };
    lines.push(format!(
        "  from the node, which has no sidecar, to {target_name}'s app ({refusal}):"
    ));
    lines.push(format!(
        "    ip netns exec {} curl -sS -i http://{target}/",
        plan.node_netns
    ));
    Some(lines)
}
