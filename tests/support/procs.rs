//! Real `palisade` processes: spawned with their output in log files, killed when the guard
//! drops (also when a test panics), and run-to-completion helpers for CLI checks.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// The binary under test.
pub fn palisade_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_palisade"))
}

/// The workspace root (`examples/` lives there).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A running child process; killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    /// For messages.
    pub name: String,
    child: Child,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl ChildGuard {
    /// Spawns `palisade args...` with stdout+stderr appended to `<log_dir>/<name>.log`.
    pub fn palisade(name: &str, args: &[String], log_dir: &Path) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the log file");
        let err = file.try_clone().expect("clone the log file");
        let child = Command::new(palisade_bin())
            .args(args)
            .current_dir(workspace_root())
            .env("PALISADE_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn palisade {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// Wraps an already spawned child.
    pub fn from_child(name: &str, child: Child, log: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// The process id (while running).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process is running")
    }

    /// The child itself (to take its pipes).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it has exited, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// `kill -9` and reap.
    pub async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(super::TIMEOUT, self.child.wait()).await;
    }

    /// Sends SIGINT (as Ctrl-C does) with the `kill` utility (no `unsafe` in this workspace).
    pub async fn interrupt(&self) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -INT {pid} failed");
    }

    /// Waits for the exit status for at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Also on panic: no process outlives its test.
        let _ = self.child.start_kill();
        let _ = self.child.try_wait();
    }
}

/// Runs `palisade args...` to completion (at most 60 s) in the workspace root.
pub async fn run_palisade(args: &[&str]) -> Output {
    let child = Command::new(palisade_bin())
        .args(args)
        .current_dir(workspace_root())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn palisade");
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("palisade {} did not exit within 60 s", args.join(" ")))
        .expect("wait for palisade")
}
