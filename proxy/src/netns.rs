//! Pods as Linux network namespaces, for running a mesh on one machine with real traffic
//! capture (`palisade up --mode netns`).
//!
//! - [`Namespace`]: a named namespace (`ip netns add`, `lo` up), deleted when dropped.
//! - [`Node`]: a namespace holding a bridge and an address, to which pods [`Node::attach`]:
//!   each gets a veth made inside the node namespace whose peer is moved straight into the
//!   pod as `eth0`, with a default route via the node. Nothing is ever created in the root
//!   namespace, so deleting the namespaces removes every link (and every iptables rule made
//!   inside them).
//! - [`NsHandle`]: runs closures on std threads that have entered a namespace (`setns(2)`):
//!   sockets made and processes spawned there belong to that namespace. A socket keeps its
//!   namespace for life, so it can be handed to a runtime on another thread.
//! - [`ChildProcess`]: a child process (spawned inside a namespace, possibly as another
//!   user) whose stderr is tagged line by line, stopped with SIGTERM then SIGKILL.
//! - [`forward`]: a port-forward from a listener of this namespace to an address dialled
//!   from inside another one.
//! - Stale namespaces: names carry the creating process's pid (`<prefix><pid>-<suffix>`);
//!   [`remove_stale`] deletes those of processes that are gone (a killed earlier run),
//!   killing what still runs inside them first.
//!
//! Every external command is bounded in time ([`COMMAND_LIMIT`]); failures name the command
//! and what it printed.

use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use ipnet::Ipv4Net;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// Bound on one external command (`ip ...`).
pub const COMMAND_LIMIT: Duration = Duration::from_secs(10);
/// The name of a pod's interface on the node bridge.
pub const POD_INTERFACE: &str = "eth0";

/// Why a namespace operation failed. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr, on one line.
        stderr: String,
    },
    /// A command did not finish in time (it was killed).
    #[error("`{command}` did not finish within {limit:?}")]
    Timeout {
        /// The command line.
        command: String,
        /// The bound.
        limit: Duration,
    },
    /// A command could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: io::Error,
    },
    /// A namespace or interface name that cannot be used.
    #[error("{what} name {name:?} {problem}")]
    InvalidName {
        /// `namespace` or `interface`.
        what: &'static str,
        /// The name.
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A network prefix length above 32.
    #[error("prefix length /{prefix_len} is not an IPv4 prefix length")]
    InvalidPrefix {
        /// The length.
        prefix_len: u8,
    },
    /// A thread could not enter the namespace.
    #[error("cannot enter network namespace {name} ({path}): {source}")]
    Enter {
        /// The namespace.
        name: String,
        /// Its file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start a thread in network namespace {name}: {source}")]
    Thread {
        /// The namespace.
        name: String,
        /// Why.
        source: io::Error,
    },
    /// The closure run in the namespace panicked.
    #[error("the thread in network namespace {name} panicked")]
    Panicked {
        /// The namespace.
        name: String,
    },
}

// === names ===

/// `<prefix><pid>-<suffix>`: the name of a namespace made by process `pid`.
pub fn namespace_name(prefix: &str, pid: u32, suffix: &str) -> String {
    format!("{prefix}{pid}-{suffix}")
}

/// The pid in a name made by [`namespace_name`] with `prefix`; `None` for names of any other
/// shape (they belong to someone else and are never touched).
pub fn owner_pid(prefix: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let (pid, suffix) = rest.split_once('-')?;
    if suffix.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// The names in `names` made with `prefix` by a process for which `alive` is false.
pub fn stale<'a>(
    prefix: &str,
    names: impl IntoIterator<Item = &'a str>,
    alive: impl Fn(u32) -> bool,
) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| owner_pid(prefix, n).is_some_and(|pid| !alive(pid)))
        .map(str::to_owned)
        .collect()
}

/// Whether a process with this pid exists.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Checks a namespace name: a file name under [`NETNS_DIR`].
pub fn check_namespace_name(name: &str) -> Result<(), NetnsError> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name.len() > 255 {
        Some("is longer than 255 bytes")
    } else if name == "." || name == ".." {
        Some("is not a file name")
    } else if name
        .chars()
        .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        Some("contains '/', white space or a control character")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(NetnsError::InvalidName {
            what: "namespace",
            name: name.to_owned(),
            problem,
        }),
        None => Ok(()),
    }
}

/// Checks an interface name: 1 to [`IFNAME_MAX`] bytes, no `/`, `:` or white space.
pub fn check_interface_name(name: &str) -> Result<(), NetnsError> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name.len() > IFNAME_MAX {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is not a valid interface name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("contains '/', ':', white space or a control character")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(NetnsError::InvalidName {
            what: "interface",
            name: name.to_owned(),
            problem,
        }),
        None => Ok(()),
    }
}

/// Whether this process runs as root (namespaces and iptables need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The first executable called `name` on `path` (the value of PATH).
pub fn find_program(path: Option<&std::ffi::OsStr>, name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

// === commands ===

fn shown(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a failed command said, on one line.
fn one_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "no output".to_owned()
    } else {
        lines.join("; ")
    }
}

/// Runs `program args...` to completion within `limit` (killed at the limit) and returns its
/// output, whatever its exit status.
pub fn run_bounded(program: &str, args: &[&str], limit: Duration) -> Result<Output, NetnsError> {
    let command = shown(program, args);
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetnsError::Spawn {
            command: command.clone(),
            source,
        })?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    // The waiter owns the child, so its pid cannot be reused before it is reaped: killing
    // by pid at the limit is safe.
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let result = match rx.recv_timeout(limit) {
        Ok(result) => result,
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = rx.recv_timeout(Duration::from_secs(1));
            return Err(NetnsError::Timeout { command, limit });
        }
    };
    result.map_err(|source| NetnsError::Spawn { command, source })
}

/// Runs `program args...` within [`COMMAND_LIMIT`]; its stdout if it succeeded.
pub fn run_checked(program: &str, args: &[&str]) -> Result<String, NetnsError> {
    let out = run_bounded(program, args, COMMAND_LIMIT)?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(NetnsError::Command {
        command: shown(program, args),
        status: out
            .status
            .code()
            .map_or_else(|| "killed".to_owned(), |c| format!("exit status {c}")),
        stderr: one_line(&out.stderr),
    })
}

fn ip(args: &[&str]) -> Result<String, NetnsError> {
    run_checked("ip", args)
}

/// The names of the namespaces that exist now (`ip netns list`).
pub fn list() -> Result<Vec<String>, NetnsError> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// Deletes the namespace called `name` (`ip netns del`), after killing (SIGKILL) every
/// process inside it. Links inside go with it once nothing holds it any more.
pub fn delete_killing(name: &str) -> Result<(), NetnsError> {
    check_namespace_name(name)?;
    let pids = ip(&["netns", "pids", name])?;
    for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if u32::try_from(pid).is_ok_and(|p| p != std::process::id()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    ip(&["netns", "del", name]).map(drop)
}

/// Deletes the namespaces named with `prefix` whose creating process is gone (left behind
/// by a killed earlier run), killing what still runs inside them; returns their names. Call
/// it before this process makes any: names with this process's own pid count as stale too
/// (an earlier process had the same pid). Every stale namespace is tried; the first failure
/// is returned.
pub fn remove_stale(prefix: &str) -> Result<Vec<String>, NetnsError> {
    let names = list()?;
    let me = std::process::id();
    let stale = stale(prefix, names.iter().map(String::as_str), |pid| {
        pid != me && pid_alive(pid)
    });
    let mut first_error = None;
    let mut removed = Vec::new();
    for name in stale {
        match delete_killing(&name) {
            Ok(()) => removed.push(name),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

// === impl Namespace ===

/// A named network namespace with `lo` up; deleted when dropped (also on a failed start).
#[derive(Debug)]
pub struct Namespace {
    handle: NsHandle,
    deleted: bool,
}

impl Namespace {
    /// Creates the namespace `name` (`ip netns add`) and brings its `lo` up.
    pub fn create(name: &str) -> Result<Self, NetnsError> {
        check_namespace_name(name)?;
        ip(&["netns", "add", name])?;
        // From here on, Drop deletes it even if bringing lo up fails.
        let ns = Self {
            handle: NsHandle::named(name),
            deleted: false,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name (for `ip netns exec` and `ip -n`).
    pub fn name(&self) -> &str {
        self.handle.name()
    }

    /// A cloneable handle to run code inside it.
    pub fn handle(&self) -> &NsHandle {
        &self.handle
    }

    /// `ip -n NAME args...`; its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut all = vec!["-n", self.name()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Deletes it now, reporting failure (dropping deletes it too, silently).
    pub fn delete(mut self) -> Result<(), NetnsError> {
        self.deleted = true;
        ip(&["netns", "del", self.name()]).map(drop)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = ip(&["netns", "del", self.handle.name()]);
        }
    }
}

// === impl Node ===

/// A "node": a namespace with a bridge holding the node's address, to which pods attach.
#[derive(Debug)]
pub struct Node {
    ns: Namespace,
    bridge: String,
    address: Ipv4Net,
    links: u32,
}

fn network(address: Ipv4Addr, prefix_len: u8) -> Result<Ipv4Net, NetnsError> {
    Ipv4Net::new(address, prefix_len).map_err(|_| NetnsError::InvalidPrefix { prefix_len })
}

impl Node {
    /// Creates the namespace `name` with a bridge `bridge` at `address/prefix_len` (e.g.
    /// 10.78.0.1/24).
    pub fn create(
        name: &str,
        bridge: &str,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<Self, NetnsError> {
        check_interface_name(bridge)?;
        let address = network(address, prefix_len)?;
        let ns = Namespace::create(name)?;
        ns.ip(&["link", "add", bridge, "type", "bridge"])?;
        ns.ip(&["addr", "add", &address.to_string(), "dev", bridge])?;
        ns.ip(&["link", "set", bridge, "up"])?;
        Ok(Self {
            ns,
            bridge: bridge.to_owned(),
            address,
            links: 0,
        })
    }

    /// The node's namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// The node's address on the bridge: the pods' default gateway.
    pub fn address(&self) -> Ipv4Addr {
        self.address.addr()
    }

    /// The bridge's name (inside the node namespace).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Connects `pod` to the bridge: a veth `veth<n>` inside the node namespace whose peer
    /// goes straight into the pod as [`POD_INTERFACE`] with `address` (on the node's
    /// network), and a default route via the node. Returns the node side's name.
    pub fn attach(&mut self, pod: &Namespace, address: Ipv4Addr) -> Result<String, NetnsError> {
        let address = network(address, self.address.prefix_len())?;
        let veth = format!("veth{}", self.links);
        check_interface_name(&veth)?;
        self.links += 1;
        self.ns.ip(&[
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            POD_INTERFACE,
            "netns",
            pod.name(),
        ])?;
        self.ns
            .ip(&["link", "set", &veth, "master", &self.bridge, "up"])?;
        pod.ip(&["addr", "add", &address.to_string(), "dev", POD_INTERFACE])?;
        pod.ip(&["link", "set", POD_INTERFACE, "up"])?;
        pod.ip(&[
            "route",
            "add",
            "default",
            "via",
            &self.address().to_string(),
        ])?;
        Ok(veth)
    }

    /// Deletes the node namespace now, reporting failure.
    pub fn delete(self) -> Result<(), NetnsError> {
        self.ns.delete()
    }
}

// === impl NsHandle ===

/// A reference to a named namespace: runs code on threads that have entered it.
#[derive(Debug, Clone)]
pub struct NsHandle {
    name: Arc<str>,
    path: Arc<Path>,
}

impl NsHandle {
    /// The namespace `name` under [`NETNS_DIR`] (it must exist when code is run in it).
    pub fn named(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            path: Arc::from(Path::new(NETNS_DIR).join(name)),
        }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves the calling thread into the namespace.
    fn enter(&self) -> Result<(), NetnsError> {
        let enter_error = |source| NetnsError::Enter {
            name: self.name.to_string(),
            path: self.path.display().to_string(),
            source,
        };
        let file = File::open(&self.path).map_err(enter_error)?;
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
            .map_err(|errno| enter_error(io::Error::from(errno)))
    }

    fn thread_name(&self) -> String {
        // Linux keeps 15 bytes of a thread name.
        let mut name = format!("ns-{}", self.name);
        while name.len() > 15 {
            name.pop();
        }
        name
    }

    /// Runs `f` on a new thread that has entered the namespace and waits for it: sockets it
    /// makes and processes it spawns belong to the namespace.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name(self.thread_name())
                .spawn_scoped(scope, || {
                    self.enter()?;
                    Ok(f())
                })
                .map_err(|source| NetnsError::Thread {
                    name: self.name.to_string(),
                    source,
                })?;
            thread.join().map_err(|_| NetnsError::Panicked {
                name: self.name.to_string(),
            })?
        })
    }

    /// Starts `f` on a long-lived thread called `thread_name` that has entered the
    /// namespace; returns once it has, with the thread to join.
    pub fn spawn<T, F>(&self, thread_name: &str, f: F) -> Result<NsThread<T>, NetnsError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (entered_tx, entered_rx) = mpsc::sync_channel(1);
        let ns = self.clone();
        let thread = std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(move || {
                let entered = ns.enter();
                let ok = entered.is_ok();
                let _ = entered_tx.send(entered);
                ok.then(f)
            })
            .map_err(|source| NetnsError::Thread {
                name: self.name.to_string(),
                source,
            })?;
        let entered = entered_rx.recv().unwrap_or_else(|_| {
            Err(NetnsError::Panicked {
                name: self.name.to_string(),
            })
        });
        match entered {
            Ok(()) => Ok(NsThread {
                name: self.name.to_string(),
                thread,
            }),
            Err(e) => {
                let _ = thread.join();
                Err(e)
            }
        }
    }

    /// Spawns `command` from a thread inside the namespace (with `uid`/`gid` set through
    /// `std::os::unix::process::CommandExt`, it runs there as that user). Its stderr is
    /// copied to this process's stderr, each line prefixed with `[tag] ` (lines that are
    /// JSON objects are copied unchanged, so JSON logs stay parseable).
    pub fn spawn_process(
        &self,
        tag: &str,
        mut command: Command,
    ) -> Result<ChildProcess, NetnsError> {
        command.stderr(Stdio::piped());
        let shown = format!("{command:?}");
        let mut child = self
            .run(move || command.spawn())?
            .map_err(|source| NetnsError::Spawn {
                command: shown,
                source,
            })?;
        let tagger = child.stderr.take().map(|stderr| {
            let tag = tag.to_owned();
            std::thread::spawn(move || copy_tagged(stderr, &tag))
        });
        Ok(ChildProcess {
            tag: tag.to_owned(),
            child,
            tagger,
            exited: None,
        })
    }
}

/// A thread inside a namespace started by [`NsHandle::spawn`].
#[derive(Debug)]
pub struct NsThread<T> {
    name: String,
    thread: JoinHandle<Option<T>>,
}

impl<T> NsThread<T> {
    /// Waits for the thread to finish.
    pub fn join(self) -> Result<T, NetnsError> {
        match self.thread.join() {
            Ok(Some(value)) => Ok(value),
            _ => Err(NetnsError::Panicked { name: self.name }),
        }
    }

    /// Whether it has finished.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

fn copy_tagged(stderr: impl Read, tag: &str) {
    let mut reader = io::BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                let mut out = io::stderr().lock();
                let _ = if text.starts_with('{') {
                    writeln!(out, "{text}")
                } else {
                    writeln!(out, "[{tag}] {text}")
                };
            }
        }
    }
}

// === impl ChildProcess ===

/// A child process started by [`NsHandle::spawn_process`]; killed (SIGKILL) and reaped when
/// dropped if it still runs.
#[derive(Debug)]
pub struct ChildProcess {
    tag: String,
    child: Child,
    tagger: Option<JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

impl ChildProcess {
    /// The tag of its output lines.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Asks it to stop (SIGTERM) unless it has exited.
    pub fn request_stop(&mut self) {
        if self.exited().is_none()
            && let Ok(pid) = i32::try_from(self.child.id())
        {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }

    /// Waits until it exits or `deadline` passes; then kills it (SIGKILL) and reaps it.
    /// Returns the exit status, `None` if it had to be killed.
    pub fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.exited() {
                self.join_tagger();
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.join_tagger();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn join_tagger(&mut self) {
        if let Some(tagger) = self.tagger.take() {
            // The pipe closes when the process exits, and the last lines are copied soon
            // after; a grandchild holding the pipe open would keep the thread reading, so
            // it is left detached after a short wait.
            let deadline = Instant::now() + Duration::from_millis(500);
            while !tagger.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if tagger.is_finished() {
                let _ = tagger.join();
            }
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Stops every process: SIGTERM to all at once, then waits until `grace` has passed, then
/// SIGKILL for the rest. Returns the tags of those that had to be killed.
pub fn stop_all<'a>(
    processes: impl IntoIterator<Item = &'a mut ChildProcess>,
    grace: Duration,
) -> Vec<String> {
    let mut processes: Vec<&mut ChildProcess> = processes.into_iter().collect();
    for p in &mut processes {
        p.request_stop();
    }
    let deadline = Instant::now() + grace;
    processes
        .into_iter()
        .filter_map(|p| p.wait_until(deadline).is_none().then(|| p.tag.clone()))
        .collect()
}

// === probes ===

/// `GET path` over HTTP/1.1 to `addr` (blocking, every step bounded by `timeout`): the
/// response's status code. Run it inside a namespace with [`NsHandle::run`].
pub fn http_status(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status_line(&head).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no HTTP status line from {addr}"),
        )
    })
}

fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

// === port-forward ===

/// Bounds of a [`forward`] listener.
#[derive(Debug, Clone, Copy)]
pub struct ForwardLimits {
    /// Connections forwarded at once; more are closed at once.
    pub max_connections: usize,
    /// How long dialling the target may take.
    pub connect_timeout: Duration,
    /// Longest life of a forwarded connection.
    pub max_age: Duration,
}

impl Default for ForwardLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            connect_timeout: Duration::from_secs(5),
            max_age: Duration::from_secs(600),
        }
    }
}

/// Forwards every connection accepted on `listener` to `target`, dialled from inside the
/// namespace `via` (the socket is made on a thread there, so the connection is that
/// namespace's: captured by its rules like any app's). Runs until `shutdown`; open
/// connections are closed then.
pub async fn forward(
    listener: tokio::net::TcpListener,
    via: NsHandle,
    target: SocketAddr,
    limits: ForwardLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (inbound, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(%error, "port-forward: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                %peer,
                limit = limits.max_connections,
                "port-forward: too many connections; closing this one"
            );
            continue;
        };
        let via = via.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let outbound = match dial_in(&via, target, limits.connect_timeout).await {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(%peer, %target, netns = via.name(), %error, "port-forward: cannot connect");
                    return;
                }
            };
            let mut inbound = inbound;
            let mut outbound = outbound;
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(limits.max_age) => {}
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// A TCP connection to `target` whose socket belongs to the namespace `via`.
pub async fn dial_in(
    via: &NsHandle,
    target: SocketAddr,
    timeout: Duration,
) -> io::Result<tokio::net::TcpStream> {
    let ns = via.clone();
    let socket = tokio::task::spawn_blocking(move || {
        ns.run(move || match target.ip() {
            IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        })
    })
    .await
    .map_err(io::Error::other)?
    .map_err(io::Error::other)??;
    let stream = tokio::time::timeout(timeout, socket.connect(target))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_pid() {
        let name = namespace_name("pal-up-", 4242, "frontend.shop");
        assert_eq!(name, "pal-up-4242-frontend.shop");
        assert_eq!(owner_pid("pal-up-", &name), Some(4242));
        assert_eq!(owner_pid("pal-up-", "pal-up-7-node"), Some(7));
        assert_eq!(owner_pid("pal-up-", "pal-up-7-a-b-c"), Some(7));
    }

    #[test]
    fn names_of_other_shapes_have_no_owner() {
        for other in [
            "pal-up-",
            "pal-up-12",
            "pal-up-12-",
            "pal-up--x",
            "pal-up-x1-node",
            "pal-up-+12-node",
            "pal-i1234-0",
            "pal-p77-12",
            "pal-node",
            "other-up-12-node",
            "",
        ] {
            assert_eq!(owner_pid("pal-up-", other), None, "{other:?}");
        }
        assert_eq!(owner_pid("pal-up-", "pal-up-99999999999999-x"), None);
    }

    #[test]
    fn stale_names_are_those_of_dead_processes_with_the_prefix() {
        let names = [
            "pal-up-10-node",
            "pal-up-10-frontend.shop",
            "pal-up-11-node",
            "pal-i10-0",
            "mine",
        ];
        let stale = stale("pal-up-", names, |pid| pid == 11);
        assert_eq!(stale, ["pal-up-10-node", "pal-up-10-frontend.shop"]);
    }

    #[test]
    fn interface_names_fit_linux() {
        assert!(check_interface_name("veth0").is_ok());
        assert!(check_interface_name("palisade0").is_ok());
        assert!(check_interface_name("fifteen-bytes-x").is_ok());
        for bad in ["", "sixteen-bytes-xx", "a/b", "a b", "a:1", ".", ".."] {
            let e = check_interface_name(bad).unwrap_err();
            assert!(e.to_string().starts_with("interface name"), "{e}");
        }
    }

    #[test]
    fn namespace_names_are_file_names() {
        assert!(check_namespace_name("pal-up-1-frontend.shop").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "a\nb"] {
            assert!(check_namespace_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_namespace_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\nx"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[test]
    fn failed_commands_name_the_command_and_its_stderr() {
        let e = run_checked("sh", &["-c", "echo oops >&2; echo more >&2; exit 3"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`sh -c echo oops >&2; echo more >&2; exit 3` failed (exit status 3): oops; more"
        );
        let e = run_checked("palisade-no-such-program", &[]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot run `palisade-no-such-program`"),
            "{e}"
        );
    }

    #[test]
    fn commands_are_bounded() {
        let e = run_bounded("sleep", &["5"], Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, NetnsError::Timeout { .. }), "{e}");
    }
}
