//! Network namespaces for root-only tests: a [`Netns`] guard that creates a namespace (with
//! `lo` up) and deletes it on drop, also when the test panics; commands run inside it with a
//! bound. A [`Node`] is a "node" namespace holding a bridge; [`Node::pod`] adds "pod"
//! namespaces whose `eth0` is a veth on that bridge. Nothing is created in the root
//! namespace: every link is made inside the node namespace with its peer moved straight into
//! the pod, so deleting the namespaces removes everything.
//!
//! Names are `pal-<kind><pid>-<n>` (kind: `i` plain, `n` node, `p` pod). The first namespace
//! a process creates removes stale ones a killed earlier run left behind: names of that
//! shape whose pid is no longer alive.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::process::Command;

use super::tools::{self, output_text};

/// Bound on one `ip` command.
const IP_LIMIT: Duration = Duration::from_secs(10);
/// Prefix of every namespace these helpers create.
pub const PREFIX: &str = "pal-";

/// The `ip` binary (iproute2), if installed.
pub fn ip_binary() -> Option<PathBuf> {
    tools::find("ip")
}

fn ip_path() -> PathBuf {
    ip_binary().unwrap_or_else(|| PathBuf::from("/usr/sbin/ip"))
}

/// Runs a command to completion within `limit`, synchronously (for `Drop`); `None` on
/// failure to start or at the limit (the child is then killed).
fn run_blocking(program: &Path, args: &[&str], limit: Duration) -> Option<std::process::Output> {
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let step = Duration::from_millis(10);
    let mut waited = Duration::ZERO;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().ok(),
            Ok(None) if waited < limit => {
                std::thread::sleep(step);
                waited += step;
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Parses `pal-<kind><pid>-<n>` into the pid; `None` for names of any other shape (which
/// belong to someone else and are never touched).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut chars = rest.chars();
    if !chars.next()?.is_ascii_lowercase() {
        return None;
    }
    let (pid, n) = chars.as_str().split_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Deletes namespaces left by killed earlier runs (their pid is gone). Runs once per process.
fn remove_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let ip = ip_path();
        let Some(out) = run_blocking(&ip, &["netns", "list"], IP_LIMIT) else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if let Some(pid) = owner_pid(name)
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = run_blocking(&ip, &["netns", "del", name], IP_LIMIT);
            }
        }
    });
}

/// A unique name `pal-<kind><pid>-<n>` for this process.
fn next_name(kind: char) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{kind}{}-{n}", std::process::id())
}

/// A network namespace that exists as long as this guard does.
#[derive(Debug)]
pub struct Netns {
    name: String,
    ip: PathBuf,
}

impl Netns {
    /// Creates a fresh namespace with `lo` up. Panics if it cannot (the caller has checked
    /// for root and `ip`).
    pub async fn new() -> Self {
        Self::with_kind('i').await
    }

    async fn with_kind(kind: char) -> Self {
        remove_stale();
        let ip = ip_path();
        let name = next_name(kind);
        let out = tools::run_ok(&ip, ["netns", "add", &name], IP_LIMIT).await;
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            output_text(&out)
        );
        // From here on, Drop removes it even if bringing lo up fails.
        let ns = Self { name, ip };
        ns.ip(&["link", "set", "lo", "up"]).await;
        ns
    }

    /// The namespace's name (for `ip netns exec` and `ip -n`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME args...`; panics (with the output) unless it succeeds.
    pub async fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        let out = tools::run_ok(&self.ip, &all, IP_LIMIT).await;
        assert!(
            out.status.success(),
            "ip {}: {}",
            all.join(" "),
            output_text(&out)
        );
        out
    }

    /// A command running `program` inside the namespace (`ip netns exec NAME program`),
    /// killed when dropped; add arguments and environment, then run it with [`output_within`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(&self.ip);
        cmd.args(["netns", "exec", &self.name])
            .arg(program)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `program args...` inside the namespace to completion; panics if it cannot start
    /// or takes longer than `limit`.
    pub async fn run<I, S>(&self, program: impl AsRef<OsStr>, args: I, limit: Duration) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args);
        output_within(cmd, limit).await
    }
}

/// Runs a prepared command to completion; panics if it cannot start or exceeds `limit`.
pub async fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let shown = format!("{:?}", cmd.as_std());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{shown} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("{shown}: {e}"))
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Also on panic; processes still inside keep the namespace alive only until they
        // exit (every test process is killed on drop).
        let _ = run_blocking(&self.ip, &["netns", "del", &self.name], IP_LIMIT);
    }
}

/// A "node": a namespace with a bridge `pal-br0` at `10.77.1.1/24`, to which pods attach.
#[derive(Debug)]
pub struct Node {
    ns: Netns,
    links: AtomicU32,
}

/// A "pod": a namespace whose `eth0` sits on the node's bridge, with a default route via the
/// node's bridge address.
#[derive(Debug)]
pub struct Pod {
    ns: Netns,
    ip: Ipv4Addr,
}

impl Node {
    /// The bridge's name inside the node namespace.
    pub const BRIDGE: &'static str = "pal-br0";
    /// The node's address on the bridge: the pods' default gateway.
    pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
    /// Prefix length of the pod network.
    pub const PREFIX_LEN: u8 = 24;

    /// Creates the node namespace and its bridge.
    pub async fn new() -> Self {
        let ns = Netns::with_kind('n').await;
        ns.ip(&["link", "add", Self::BRIDGE, "type", "bridge"])
            .await;
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/{}", Self::GATEWAY, Self::PREFIX_LEN),
            "dev",
            Self::BRIDGE,
        ])
        .await;
        ns.ip(&["link", "set", Self::BRIDGE, "up"]).await;
        Self {
            ns,
            links: AtomicU32::new(0),
        }
    }

    /// The node's namespace (e.g. to capture on the bridge).
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Adds a pod with `eth0` at `ip/24` on the bridge and a default route via the node.
    /// The veth is created inside the node namespace with its peer moved straight into the
    /// pod, so nothing ever appears in the root namespace.
    pub async fn pod(&self, ip: Ipv4Addr) -> Pod {
        let ns = Netns::with_kind('p').await;
        // Interface names are at most 15 bytes: `v<pid>-<n>` fits for any pid.
        let veth = format!(
            "v{}-{}",
            std::process::id(),
            self.links.fetch_add(1, Ordering::Relaxed)
        );
        self.ns
            .ip(&[
                "link",
                "add",
                &veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ])
            .await;
        self.ns
            .ip(&["link", "set", &veth, "master", Self::BRIDGE, "up"])
            .await;
        ns.ip(&[
            "addr",
            "add",
            &format!("{ip}/{}", Self::PREFIX_LEN),
            "dev",
            "eth0",
        ])
        .await;
        ns.ip(&["link", "set", "eth0", "up"]).await;
        ns.ip(&["route", "add", "default", "via", &Self::GATEWAY.to_string()])
            .await;
        Pod { ns, ip }
    }
}

impl Pod {
    /// The pod's address on the bridge.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
}

impl std::ops::Deref for Pod {
    type Target = Netns;

    fn deref(&self) -> &Netns {
        &self.ns
    }
}

/// Names of the namespaces that exist now.
pub async fn list() -> Vec<String> {
    let out = tools::run_ok(&ip_path(), ["netns", "list"], IP_LIMIT).await;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_names_of_our_shape_have_an_owner() {
        assert_eq!(super::owner_pid("pal-i1234-0"), Some(1234));
        assert_eq!(super::owner_pid("pal-p77-12"), Some(77));
        assert_eq!(super::owner_pid("pal-node"), None);
        assert_eq!(super::owner_pid("pal-a"), None);
        assert_eq!(super::owner_pid("pal-t1"), None);
        assert_eq!(super::owner_pid("pal-i12-"), None);
        assert_eq!(super::owner_pid("other-i12-3"), None);
    }
}
