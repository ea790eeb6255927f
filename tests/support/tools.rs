//! Third-party tools (curl, nghttp, grpcurl, openssl, sslyze, tcpdump, tshark, promtool,
//! python with `cryptography`): found on PATH or in /opt/meshtools/bin, run with a bound,
//! and skipped visibly when missing.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;

use super::skip;

/// Where CI installs the Python-packaged tools.
pub const MESHTOOLS_BIN: &str = "/opt/meshtools/bin";

/// The tool's path: /opt/meshtools/bin first, then PATH.
pub fn find(name: &str) -> Option<PathBuf> {
    let meshtools = Path::new(MESHTOOLS_BIN).join(name);
    if meshtools.is_file() {
        return Some(meshtools);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The tool's path, or `None` after printing `SKIPPED: <name> not found (<test>)`.
pub fn require(test: &str, name: &str) -> Option<PathBuf> {
    let found = find(name);
    if found.is_none() {
        skip(
            test,
            &format!("{name} not found on PATH or in {MESHTOOLS_BIN}"),
        );
    }
    found
}

/// Whether this process runs as root (packet capture needs it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// A Python interpreter that can `import <module>`: /opt/meshtools/bin/python, then python3.
pub async fn python_with(module: &str) -> Option<PathBuf> {
    let candidates = [
        Path::new(MESHTOOLS_BIN).join("python"),
        PathBuf::from("python3"),
    ];
    for python in candidates {
        let ok = run(
            &python,
            ["-c", &format!("import {module}")],
            Duration::from_secs(30),
        )
        .await
        .is_some_and(|o| o.status.success());
        if ok {
            return Some(python);
        }
    }
    None
}

/// Runs `program args...` to completion within `limit`; `None` if it cannot start or is
/// killed at the limit.
pub async fn run<I, S>(program: &Path, args: I, limit: Duration) -> Option<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .ok()?
        .ok()
}

/// Like [`run`], but panics (with the command) if the tool cannot run or times out.
pub async fn run_ok<I, S>(program: &Path, args: I, limit: Duration) -> Output
where
    I: IntoIterator<Item = S> + Clone,
    S: AsRef<OsStr>,
{
    let shown: Vec<String> = args
        .clone()
        .into_iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    run(program, args, limit).await.unwrap_or_else(|| {
        panic!(
            "{} {} did not finish within {limit:?}",
            program.display(),
            shown.join(" ")
        )
    })
}

/// stdout and stderr of a finished tool, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Pipes `input` into `program args...` and returns its output (for `promtool check metrics`).
pub async fn run_with_stdin(program: &Path, args: &[&str], input: &str, limit: Duration) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_owned();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(input.as_bytes()).await;
        drop(stdin);
    });
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} timed out", program.display()))
        .expect("wait for the tool");
    let _ = writer.await;
    out
}
