//! The command line, through the real binary: bad input is a user error (exit 1, one line on
//! stderr naming the file and the field, never a panic), and `palisade up` runs the shop,
//! prints a working curl line, and stops cleanly on Ctrl-C.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::mesh::MESH_CONFIG;
use crate::support::procs::{ChildGuard, palisade_bin, run_palisade, workspace_root};
use crate::support::tools::{self, output_text};
use crate::support::{Block, within};

/// Exit status 1, exactly one line on stderr containing every needle, no panic.
fn assert_one_line_error(what: &str, out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "{what} panicked: {}",
        output_text(out)
    );
    assert_eq!(out.status.code(), Some(1), "{what}: {}", output_text(out));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected exactly one line on stderr: {}",
        output_text(out)
    );
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{what}: stderr does not name {needle:?}: {}",
            lines[0]
        );
    }
}

const WORKLOADS: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: search, namespace: shop, labels: {app: search}}
spec:
  serviceAccount: search
  address: {block}.2
  ports:
  - {name: http, port: 8080}
";

fn service(selector: &str, target_port: &str) -> String {
    format!(
        "\
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {{name: search, namespace: shop}}
spec:
  selector: {{app: {selector}}}
  ports:
  - {{name: http, port: 8080, targetPort: {target_port}}}
"
    )
}

/// A scratch directory with a CA (`ca/`, made by `palisade ca init`), a tokens file and a
/// configuration directory `config/` holding `files`.
struct Scratch {
    dir: tempfile::TempDir,
    block: Block,
}

impl Scratch {
    async fn new(files: &[(&str, String)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("palisade-e2e-cli-")
            .tempdir()
            .unwrap();
        let block = Block::next();
        let config = dir.path().join("config");
        std::fs::create_dir(&config).unwrap();
        for (name, contents) in files {
            std::fs::write(
                config.join(name),
                contents.replace("{block}", &block.prefix()),
            )
            .unwrap();
        }
        let ca = dir.path().join("ca");
        let out = run_palisade(&["ca", "init", "--out", ca.to_str().unwrap()]).await;
        assert!(out.status.success(), "ca init: {}", output_text(&out));
        std::fs::write(
            dir.path().join("tokens"),
            "shop/search 0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        Self { dir, block }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    async fn control_plane(&self) -> Output {
        let grpc = self.block.addr(250, 15012).to_string();
        let admin = self.block.addr(250, 15014).to_string();
        run_palisade(&[
            "control-plane",
            "--config",
            &self.arg("config"),
            "--ca-dir",
            &self.arg("ca"),
            "--tokens",
            &self.arg("tokens"),
            "--grpc-addr",
            &grpc,
            "--admin-addr",
            &admin,
        ])
        .await
    }

    async fn check(&self) -> Output {
        run_palisade(&["check", "--config", &self.arg("config")]).await
    }

    async fn up(&self) -> Output {
        run_palisade(&["up", &self.arg("config")]).await
    }

    /// control-plane, check and up must all refuse the configuration the same way.
    async fn assert_config_refused(&self, file: &str, needles: &[&str]) {
        let file = self.path("config").join(file).display().to_string();
        let mut needles: Vec<&str> = needles.to_vec();
        needles.push(&file);
        let (cp, check, up) = tokio::join!(self.control_plane(), self.check(), self.up());
        assert_one_line_error("palisade control-plane", &cp, &needles);
        assert_one_line_error("palisade check", &check, &needles);
        assert_one_line_error("palisade up", &up, &needles);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_yaml_is_one_line_naming_file_and_position() {
    let broken = "apiVersion: palisade.dev/v1alpha1\nkind: Service\nmetadata: {name: search, namespace: shop\nspec: {}\n";
    let scratch = Scratch::new(&[
        ("mesh.yaml", MESH_CONFIG.into()),
        ("workloads.yaml", WORKLOADS.into()),
        ("services.yaml", broken.into()),
    ])
    .await;
    scratch
        .assert_config_refused("services.yaml", &["invalid YAML", "services.yaml:"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_selecting_nothing_is_one_line_naming_the_selector() {
    let scratch = Scratch::new(&[
        ("mesh.yaml", MESH_CONFIG.into()),
        ("workloads.yaml", WORKLOADS.into()),
        ("services.yaml", service("nothing", "8080")),
    ])
    .await;
    scratch
        .assert_config_refused("services.yaml", &["Service shop/search", "spec.selector"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_port_not_exposed_is_one_line_naming_the_port() {
    let scratch = Scratch::new(&[
        ("mesh.yaml", MESH_CONFIG.into()),
        ("workloads.yaml", WORKLOADS.into()),
        ("services.yaml", service("search", "9999")),
    ])
    .await;
    scratch
        .assert_config_refused("services.yaml", &["spec.ports[0].targetPort", "9999"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_out_of_range_is_one_line_naming_the_port() {
    let scratch = Scratch::new(&[
        ("mesh.yaml", MESH_CONFIG.into()),
        ("workloads.yaml", WORKLOADS.into()),
        ("services.yaml", service("search", "70000")),
    ])
    .await;
    scratch
        .assert_config_refused("services.yaml", &["spec.ports[0].targetPort", "70000"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_ca_key_is_one_line_naming_the_file() {
    let scratch = Scratch::new(&[
        ("mesh.yaml", MESH_CONFIG.into()),
        ("workloads.yaml", WORKLOADS.into()),
        ("services.yaml", service("search", "8080")),
    ])
    .await;
    // The configuration itself is fine.
    let check = scratch.check().await;
    assert!(check.status.success(), "{}", output_text(&check));
    let key = scratch.path("ca").join("ca-key.pem");
    std::fs::remove_file(&key).unwrap();
    let out = scratch.control_plane().await;
    assert_one_line_error(
        "palisade control-plane without ca-key.pem",
        &out,
        &[&key.display().to_string()],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_with_missing_trust_anchors_is_one_line_naming_the_file() {
    let scratch = Scratch::new(&[("mesh.yaml", MESH_CONFIG.into())]).await;
    std::fs::write(
        scratch.path("search.token"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let missing = scratch
        .path("ca")
        .join("no-such-root.pem")
        .display()
        .to_string();
    let ip = scratch.block.ip(2);
    let out = run_palisade(&[
        "proxy",
        "--workload",
        "search",
        "--namespace",
        "shop",
        "--service-account",
        "search",
        "--control-plane",
        &scratch.block.addr(250, 15012).to_string(),
        "--trust-anchors",
        &missing,
        "--token-file",
        &scratch.arg("search.token"),
        "--inbound",
        &format!("{ip}:15006"),
        "--outbound",
        &format!("{ip}:15001"),
        "--admin",
        &format!("{ip}:15000"),
    ])
    .await;
    assert_one_line_error(
        "palisade proxy with a missing --trust-anchors file",
        &out,
        &["--trust-anchors", &missing],
    );
}

/// Serialises users of `palisade up`'s fixed addresses (127.0.1.x, 127.0.0.1:15012/15014)
/// across test processes on this machine.
async fn lock_up_addresses() -> std::fs::File {
    let path = std::env::temp_dir().join("palisade-e2e-up.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap();
    within(
        Duration::from_secs(180),
        "the lock on palisade up's addresses",
        tokio::task::spawn_blocking(move || {
            file.lock().expect("lock");
            file
        }),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn palisade_up_serves_the_shop_and_stops_on_interrupt() {
    const TEST: &str = "palisade_up_serves_the_shop_and_stops_on_interrupt";
    let (Some(_curl), Some(sh)) = (tools::require(TEST, "curl"), tools::require(TEST, "sh")) else {
        return;
    };
    let _lock = lock_up_addresses().await;
    let logs = tempfile::Builder::new()
        .prefix("palisade-e2e-up-")
        .tempdir()
        .unwrap();
    let log = logs.path().join("up.log");
    let mut child = Command::new(palisade_bin())
        .args(["up", "examples/ecommerce"])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut up = ChildGuard::from_child("palisade up", child, log);

    let mut lines = BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            printed.push(line.clone());
            if line.starts_with("curl ") {
                return Some(line);
            }
        }
        None
    })
    .await;
    let Ok(Some(curl_line)) = found else {
        panic!(
            "no `curl ` line from palisade up; stdout: {printed:#?}\nlog:\n{}",
            up.log_text()
        );
    };
    // Keep reading stdout so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    // The exact line, as a user would paste it.
    let out = tools::run_ok(&sh, ["-c", &curl_line], Duration::from_secs(30)).await;
    let page = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{curl_line}: {}\nlog:\n{}",
        output_text(&out),
        up.log_text()
    );
    for expected in ["Palisade Shop", "lamp", "charged"] {
        assert!(
            page.contains(expected),
            "the page lacks {expected:?}:\n{page}\nlog:\n{}",
            up.log_text()
        );
    }

    up.interrupt().await;
    let status = up.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "palisade up did not exit 0 within 15 s of SIGINT: {status:?}\nlog:\n{}",
        up.log_text()
    );
}
