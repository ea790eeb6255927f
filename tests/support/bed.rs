//! The capture test bed: pods as network namespaces on a node bridge ([`super::netns`]),
//! each meshed pod with `palisade init`'s rules, its sidecar as a real `palisade proxy`
//! process running as UID 1337, and its apps in this process on sockets made inside the
//! pod; the control plane is a real `palisade control-plane` process in the node namespace.
//! Apps know nothing of the mesh: they listen on their pod address and dial other pods'
//! addresses (or Service cluster IPs), and the capture rules do the rest.
//!
//! Sockets of this process are put in a namespace by making them on a thread that entered
//! it ([`in_netns`]): a socket stays in the namespace it was made in. Clients made that way
//! run as root, so their connections are captured like any app's.
//!
//! Everything is removed when the bed drops, also when a test panics: processes are killed,
//! namespaces deleted (which takes their links and rules with them).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use palisade_control_plane::TokenStore;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::process::Command;
use tokio::time::Instant;

use super::netns::{Netns, Node, Pod, output_within};
use super::procs::{ChildGuard, palisade_bin, run_palisade};
use super::tools::{self, output_text};

/// The node's gRPC address for the control plane.
pub const CONTROL_PLANE_PORT: u16 = 15012;
/// How long a process may take to become ready.
const READY_LIMIT: Duration = Duration::from_secs(40);
/// Bound on one command run inside a namespace.
const RUN_LIMIT: Duration = Duration::from_secs(30);
/// The proxy's UID (CONTRACT).
pub const PROXY_UID: &str = "1337";

/// Runs `f` on a thread that has entered network namespace `ns`, so every socket it makes
/// (and every process it spawns) belongs to that namespace.
pub fn in_netns<T, F>(ns: &str, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let path = PathBuf::from(format!("/run/netns/{ns}"));
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path)?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        f()
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// A TCP connection to `addr` made inside `ns` (bounded by [`super::TIMEOUT`]).
pub async fn connect_in(ns: &str, addr: SocketAddr) -> io::Result<TcpStream> {
    let ns = ns.to_owned();
    let std = tokio::task::spawn_blocking(move || {
        in_netns(&ns, move || {
            let s = std::net::TcpStream::connect_timeout(&addr, super::TIMEOUT)?;
            s.set_nonblocking(true)?;
            s.set_nodelay(true)?;
            Ok(s)
        })
    })
    .await
    .map_err(io::Error::other)??;
    TcpStream::from_std(std)
}

/// A TCP listener on `addr` inside `ns`.
pub fn listen_in(ns: &str, addr: SocketAddr) -> io::Result<TcpListener> {
    let std = in_netns(ns, move || {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })?;
    TcpListener::from_std(std)
}

/// A UDP socket bound to `addr` inside `ns`.
pub fn udp_in(ns: &str, addr: SocketAddr) -> io::Result<UdpSocket> {
    let std = in_netns(ns, move || {
        let s = std::net::UdpSocket::bind(addr)?;
        s.set_nonblocking(true)?;
        Ok(s)
    })?;
    UdpSocket::from_std(std)
}

/// `GET http://<addr><path>` from inside `ns` over HTTP/1.1: status and body, or `None` if
/// the connection or request failed.
pub async fn http_get_in(ns: &str, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let stream = connect_in(ns, addr).await.ok()?;
    let exchange = async {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .ok()?;
        let resp = send.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(super::TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}

/// One pod of the bed: a name (its Workload's), an address, and whether it is meshed.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// Workload name (namespace `shop`, service account of the same name).
    pub name: &'static str,
    /// Last octet of its address on the node bridge (10.77.1.0/24).
    pub host: u8,
    /// With `palisade init` and a sidecar; `false`: a plain namespace outside the mesh.
    pub meshed: bool,
    /// Environment of its sidecar beyond the bed's flags (as an injected pod's
    /// `palisade-proxy` container has it); `PALISADE_ADMIN_ADDR` here replaces `--admin`.
    pub sidecar_env: Vec<(String, String)>,
}

impl PodSpec {
    /// A meshed pod.
    pub const fn meshed(name: &'static str, host: u8) -> Self {
        Self {
            name,
            host,
            meshed: true,
            sidecar_env: Vec::new(),
        }
    }

    /// A pod without sidecar or capture rules.
    pub const fn plain(name: &'static str, host: u8) -> Self {
        Self {
            name,
            host,
            meshed: false,
            sidecar_env: Vec::new(),
        }
    }
}

/// A running pod.
#[derive(Debug)]
pub struct BedPod {
    // Dropped in this order: the sidecar is killed before its namespace goes.
    proxy: Option<ChildGuard>,
    /// `/etc/netns/<pod>/`: files `ip netns exec` shows the pod's processes as `/etc/...`.
    _etc: Option<EtcDir>,
    /// Its spec.
    pub spec: PodSpec,
    /// Its namespace.
    pub pod: Pod,
}

/// `/etc/netns/<name>/`, removed on drop.
#[derive(Debug)]
struct EtcDir(PathBuf);

impl EtcDir {
    /// A `hosts` file for processes started in namespace `ns` with `ip netns exec`, mapping
    /// `names` (as a cluster's DNS would) to addresses.
    fn hosts(ns: &str, names: &[(&str, Ipv4Addr)]) -> Self {
        let dir = PathBuf::from(format!("/etc/netns/{ns}"));
        std::fs::create_dir_all(&dir).expect("create /etc/netns/<pod>");
        let guard = Self(dir);
        let mut text = "127.0.0.1 localhost\n::1 localhost\n".to_owned();
        for (name, ip) in names {
            text.push_str(&format!("{ip} {name}\n"));
        }
        std::fs::write(guard.0.join("hosts"), text).expect("write hosts");
        guard
    }
}

impl Drop for EtcDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl BedPod {
    /// The namespace name.
    pub fn ns(&self) -> &str {
        self.pod.name()
    }

    /// Its address.
    pub fn ip(&self) -> Ipv4Addr {
        self.pod.ip()
    }

    /// `<its address>:<port>`.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip()), port)
    }

    /// A listener for an app of this pod on its address.
    pub fn listen(&self, port: u16) -> TcpListener {
        listen_in(self.ns(), self.addr(port))
            .unwrap_or_else(|e| panic!("listen on {} in {}: {e}", self.addr(port), self.ns()))
    }

    /// The sidecar's `/metrics` text (its admin listener is on the pod's 127.0.0.1).
    pub async fn metrics(&self) -> String {
        let (status, body) = http_get_in(self.ns(), admin_addr(), "/metrics")
            .await
            .unwrap_or_else(|| panic!("{}: no /metrics", self.spec.name));
        assert_eq!(status, 200, "{}: /metrics: {body}", self.spec.name);
        body
    }

    /// `palisade init --status` inside the pod.
    pub async fn init_status(&self) -> String {
        let mut cmd = self.pod.command(palisade_bin());
        cmd.args(["init", "--status"]);
        let out = output_within(cmd, RUN_LIMIT).await;
        assert!(out.status.success(), "init --status: {}", output_text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The sidecar's log so far.
    pub fn proxy_log(&self) -> String {
        self.proxy
            .as_ref()
            .map(ChildGuard::log_text)
            .unwrap_or_default()
    }
}

fn admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15000))
}

/// The bed: node, control plane, pods.
#[derive(Debug)]
pub struct Bed {
    /// Logs, configuration, CA; readable by UID 1337.
    pub dir: tempfile::TempDir,
    /// The pods, in the order given.
    pub pods: Vec<BedPod>,
    control_plane: ChildGuard,
    /// Dropped last: deleting it takes the bridge and every veth with it.
    pub node: Node,
}

impl Bed {
    /// Whether this machine can run the bed; prints the skip line if not.
    pub fn can_run(test: &str) -> bool {
        if !tools::is_root() {
            super::skip(test, "network namespaces and iptables need root");
            return false;
        }
        [
            "ip",
            "iptables-nft-restore",
            "ip6tables-nft-restore",
            "setpriv",
        ]
        .iter()
        .all(|tool| tools::require(test, tool).is_some())
    }

    /// Starts the bed: `config` is the mesh YAML (MeshConfig, Workloads at `{pod:<name>}`
    /// addresses, Services, policies); `pods` the namespaces to make.
    pub async fn start(test: &str, config: &str, pods: &[PodSpec]) -> Self {
        Self::start_with_hosts(test, config, pods, &[]).await
    }

    /// [`Bed::start`], with `hosts` resolving names in every pod (apps and sidecars alike
    /// read the pod's `/etc/hosts`, as they would share a pod's DNS).
    pub async fn start_with_hosts(
        test: &str,
        config: &str,
        pods: &[PodSpec],
        hosts: &[(&str, Ipv4Addr)],
    ) -> Self {
        let node = Node::new().await;
        let dir = tempfile::Builder::new()
            .prefix("palisade-e2e-bed-")
            .tempdir()
            .expect("temp dir");
        set_mode(dir.path(), 0o755);
        // UID 1337 runs the binary from a copy it can reach wherever the build directory is.
        std::fs::copy(palisade_bin(), dir.path().join("palisade")).expect("copy the binary");
        set_mode(&dir.path().join("palisade"), 0o755);

        let mut config = config.to_owned();
        for p in pods {
            config = config.replace(
                &format!("{{pod:{}}}", p.name),
                &format!("10.77.1.{}", p.host),
            );
        }
        let config_dir = dir.path().join("config");
        std::fs::create_dir(&config_dir).expect("config dir");
        std::fs::write(config_dir.join("mesh.yaml"), config).expect("write config");
        let ca_dir = dir.path().join("ca");
        let out = run_palisade(&["ca", "init", "--out", &path_arg(&ca_dir)]).await;
        assert!(out.status.success(), "ca init: {}", output_text(&out));
        set_mode(&ca_dir, 0o755);
        set_mode(&ca_dir.join("root-cert.pem"), 0o644);
        let snapshot = palisade_control_plane::load_dir(&config_dir)
            .unwrap_or_else(|e| panic!("{test}: bed configuration: {e}"));
        let tokens = TokenStore::generate(snapshot.workloads()).expect("tokens");
        let tokens_file = dir.path().join("tokens");
        tokens.write_to(&tokens_file).expect("write tokens");

        let gateway = Node::GATEWAY;
        let mut cmd = node.netns().command(palisade_bin());
        cmd.args([
            "control-plane",
            "--config",
            &path_arg(&config_dir),
            "--ca-dir",
            &path_arg(&ca_dir),
            "--tokens",
            &path_arg(&tokens_file),
            "--grpc-addr",
            &format!("{gateway}:{CONTROL_PLANE_PORT}"),
            "--admin-addr",
            &format!("{gateway}:15014"),
        ]);
        let control_plane = spawn_logged("control-plane", cmd, dir.path());
        let cp_admin = SocketAddr::from((gateway, 15014));
        await_ready(node.netns(), cp_admin, "control plane", &control_plane).await;

        let mut bed_pods = Vec::new();
        for spec in pods {
            let pod = node.pod(Ipv4Addr::new(10, 77, 1, spec.host)).await;
            let etc = (!hosts.is_empty()).then(|| EtcDir::hosts(pod.name(), hosts));
            let mut bed_pod = BedPod {
                spec: spec.clone(),
                pod,
                proxy: None,
                _etc: etc,
            };
            if spec.meshed {
                let token = tokens
                    .get("shop", spec.name)
                    .unwrap_or_else(|| panic!("no Workload shop/{} in the bed config", spec.name));
                bed_pod.proxy = Some(start_sidecar(&dir, &bed_pod, token).await);
            }
            bed_pods.push(bed_pod);
        }
        Self {
            dir,
            pods: bed_pods,
            control_plane,
            node,
        }
    }

    /// The pod named `name`.
    pub fn pod(&self, name: &str) -> &BedPod {
        self.pods
            .iter()
            .find(|p| p.spec.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Rewrites the mesh configuration (the control plane watches it and pushes).
    pub fn write_config(&self, text: &str) {
        let mut text = text.to_owned();
        for p in &self.pods {
            text = text.replace(&format!("{{pod:{}}}", p.spec.name), &p.ip().to_string());
        }
        std::fs::write(self.dir.path().join("config/mesh.yaml"), text).expect("write config");
    }

    /// Every process log, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = format!("--- control plane\n{}", self.control_plane.log_text());
        for p in &self.pods {
            if p.proxy.is_some() {
                text.push_str(&format!("--- sidecar {}\n{}", p.spec.name, p.proxy_log()));
            }
        }
        text
    }
}

/// `palisade init` in the pod (DNS: the node), then its sidecar as UID 1337, awaited ready.
async fn start_sidecar(dir: &tempfile::TempDir, pod: &BedPod, token: &str) -> ChildGuard {
    let name = pod.spec.name;
    let mut init = pod.pod.command(palisade_bin());
    init.args(["init", "--dns-servers", &Node::GATEWAY.to_string()]);
    let out = output_within(init, RUN_LIMIT).await;
    assert!(
        out.status.success(),
        "init in {name}: {}",
        output_text(&out)
    );

    let token_file = dir.path().join(format!("{name}.token"));
    std::fs::write(&token_file, format!("{token}\n")).expect("token");
    chown_proxy(&token_file);
    set_mode(&token_file, 0o600);
    let setpriv = tools::find("setpriv").expect("setpriv");
    let mut cmd = pod.pod.command(setpriv);
    cmd.args(["--reuid=1337", "--regid=1337", "--clear-groups"])
        .arg(dir.path().join("palisade"))
        .args([
            "proxy",
            "--workload",
            name,
            "--namespace",
            "shop",
            "--service-account",
            name,
            "--control-plane",
            &format!("{}:{CONTROL_PLANE_PORT}", Node::GATEWAY),
            "--trust-anchors",
            &path_arg(&dir.path().join("ca/root-cert.pem")),
            "--token-file",
            &path_arg(&token_file),
            "--inbound",
            "0.0.0.0:15006",
            "--outbound",
            "127.0.0.1:15001",
            "--app-host",
            &pod.ip().to_string(),
            "--drain-seconds",
            "1",
            "--log-decisions",
        ]);
    if !pod
        .spec
        .sidecar_env
        .iter()
        .any(|(k, _)| k == "PALISADE_ADMIN_ADDR")
    {
        cmd.args(["--admin", &admin_addr().to_string()]);
    }
    cmd.envs(pod.spec.sidecar_env.iter().map(|(k, v)| (k, v)));
    let proxy = spawn_logged(&format!("sidecar-{name}"), cmd, dir.path());
    await_ready(&pod.pod, admin_addr(), &format!("sidecar {name}"), &proxy).await;
    proxy
}

/// Spawns `cmd` with stdout and stderr in `<dir>/<name>.log`, killed on drop.
fn spawn_logged(name: &str, mut cmd: Command, dir: &Path) -> ChildGuard {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let err = file.try_clone().expect("log file");
    cmd.env("PALISADE_LOG_FORMAT", "text")
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err))
        .stdin(Stdio::null());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    ChildGuard::from_child(name, child, log)
}

/// Waits until `GET http://<admin>/ready` inside `ns` answers 200.
async fn await_ready(ns: &Netns, admin: SocketAddr, what: &str, process: &ChildGuard) {
    let deadline = Instant::now() + READY_LIMIT;
    loop {
        if let Some((200, _)) = http_get_in(ns.name(), admin, "/ready").await {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{what} not ready at {admin} within {READY_LIMIT:?}:\n{}",
                process.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn chown_proxy(path: &Path) {
    std::os::unix::fs::chown(path, Some(1337), Some(1337))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}
