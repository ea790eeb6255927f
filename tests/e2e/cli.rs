//! The command line, through the real binary: bad input is a user error (exit 1, one line on
//! stderr naming the file and the field, never a panic), and `palisade up` runs the shop in
//! both modes (loopback; network namespaces with real capture, as root), prints a working
//! curl line, and stops cleanly on Ctrl-C, leaving nothing behind.

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

/// `ca init` creates every file new: a link planted at a key path is refused (one line naming
/// the path) and nothing is written through it; `--force` removes the link, never follows it.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_init_writes_nothing_through_a_planted_link() {
    let scratch = tempfile::tempdir().unwrap();
    let ca = scratch.path().join("ca");
    std::fs::create_dir(&ca).unwrap();
    let through_link = scratch.path().join("written-through-link");
    let planted = ca.join("root-key.pem");
    std::os::unix::fs::symlink(&through_link, &planted).unwrap();
    let ca_arg = ca.to_str().unwrap();

    let out = run_palisade(&["ca", "init", "--out", ca_arg]).await;
    assert_one_line_error(
        "ca init over a planted link",
        &out,
        &[&planted.display().to_string(), "already exists"],
    );
    assert!(!through_link.exists(), "a key was written through the link");
    assert!(
        !ca.join("ca-key.pem").exists(),
        "a half-written CA was left"
    );

    let out = run_palisade(&["ca", "init", "--out", ca_arg, "--force"]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(!through_link.exists(), "a key was written through the link");
    let meta = std::fs::symlink_metadata(&planted).unwrap();
    assert!(meta.file_type().is_file(), "{meta:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // An existing CA is never overwritten without --force.
    let key_before = std::fs::read(ca.join("ca-key.pem")).unwrap();
    let out = run_palisade(&["ca", "init", "--out", ca_arg]).await;
    assert_one_line_error("ca init over a CA", &out, &[ca_arg, "--force"]);
    assert_eq!(std::fs::read(ca.join("ca-key.pem")).unwrap(), key_before);
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

/// A running `palisade up`: the process (its stderr in a log file) and what it printed on
/// stdout up to and including the `curl ` line.
struct Up {
    process: ChildGuard,
    printed: Vec<String>,
    curl_line: String,
    _logs: tempfile::TempDir,
}

impl Up {
    /// Runs `palisade up args...` in the workspace root and waits (bounded) for the `curl `
    /// line; stdout is drained afterwards so the process never blocks on a full pipe.
    async fn start(args: &[&str]) -> Self {
        let logs = tempfile::Builder::new()
            .prefix("palisade-e2e-up-")
            .tempdir()
            .unwrap();
        let log = logs.path().join("up.log");
        let mut child = Command::new(palisade_bin())
            .arg("up")
            .args(args)
            .current_dir(workspace_root())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let process = ChildGuard::from_child("palisade up", child, log);

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
                "no `curl ` line from palisade up {}; stdout: {printed:#?}\nlog:\n{}",
                args.join(" "),
                process.log_text()
            );
        };
        // The rest of the summary, then whatever else comes, read in the background.
        let rest = tokio::time::timeout(Duration::from_secs(5), async {
            let mut rest = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                let done = line.starts_with("Press Ctrl-C");
                rest.push(line);
                if done {
                    break;
                }
            }
            rest
        })
        .await
        .unwrap_or_default();
        printed.extend(rest);
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            process,
            printed,
            curl_line,
            _logs: logs,
        }
    }

    fn log(&self) -> String {
        self.process.log_text()
    }

    /// Runs the printed curl line exactly as a user would paste it; asserts success and a
    /// full shop page (search results and a payment).
    async fn assert_curl_line_serves_the_shop(&self, sh: &std::path::Path) {
        let out = tools::run_ok(sh, ["-c", &self.curl_line], Duration::from_secs(30)).await;
        let page = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}: {}\nlog:\n{}",
            self.curl_line,
            output_text(&out),
            self.log()
        );
        // The page, search results answered by the search app, and a payment.
        for expected in [
            "Palisade Shop",
            "lamp",
            "answered by search",
            "payment: charged",
        ] {
            assert!(
                page.contains(expected),
                "the page lacks {expected:?}:\n{page}\nlog:\n{}",
                self.log()
            );
        }
    }

    /// SIGINT (Ctrl-C), then exit status 0 within `limit`.
    async fn interrupt_and_expect_clean_exit(&mut self, limit: Duration) {
        self.process.interrupt().await;
        let status = self.process.wait_exit(limit).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "palisade up did not exit 0 within {limit:?} of SIGINT: {status:?}\nlog:\n{}",
            self.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn palisade_up_serves_the_shop_and_stops_on_interrupt() {
    const TEST: &str = "palisade_up_serves_the_shop_and_stops_on_interrupt";
    let (Some(_curl), Some(sh)) = (tools::require(TEST, "curl"), tools::require(TEST, "sh")) else {
        return;
    };
    let _lock = lock_up_addresses().await;
    let mut up = Up::start(&["examples/ecommerce", "--mode", "loopback"]).await;
    assert!(
        up.printed
            .iter()
            .any(|l| l.starts_with("Mode loopback") && l.contains("reachable directly")),
        "loopback mode does not say that apps are reachable directly: {:#?}",
        up.printed
    );
    up.assert_curl_line_serves_the_shop(&sh).await;
    up.interrupt_and_expect_clean_exit(Duration::from_secs(15))
        .await;
}

/// What `palisade up --mode netns` must leave as it found it in the root namespace: links and
/// every iptables table (IPv4, IPv6, nft and legacy), comments and counters left out.
#[derive(Debug, PartialEq, Eq)]
struct RootNamespace {
    links: String,
    tables: Vec<(String, String)>,
}

impl RootNamespace {
    async fn read(ip: &std::path::Path) -> Self {
        let limit = Duration::from_secs(10);
        let links = tools::run_ok(ip, ["-o", "link", "show"], limit).await;
        assert!(links.status.success(), "ip link: {}", output_text(&links));
        let mut tables = Vec::new();
        for save in [
            "iptables-save",
            "ip6tables-save",
            "iptables-legacy-save",
            "ip6tables-legacy-save",
        ] {
            let Some(path) = tools::find(save) else {
                continue;
            };
            let out = tools::run_ok(&path, std::iter::empty::<&str>(), limit).await;
            assert!(out.status.success(), "{save}: {}", output_text(&out));
            let text: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(without_counters)
                .collect();
            tables.push((save.to_owned(), text.join("\n")));
        }
        Self {
            links: String::from_utf8_lossy(&links.stdout).into_owned(),
            tables,
        }
    }
}

/// An iptables-save line without its `[packets:bytes]` counters.
fn without_counters(line: &str) -> String {
    line.split(' ')
        .filter(|word| {
            !(word.starts_with('[')
                && word.ends_with(']')
                && word[1..word.len() - 1]
                    .split(':')
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A port on 127.0.0.1 that nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The root default: one network namespace per workload with real capture. The printed
/// curl line works from this shell; going around the sidecars is refused (a pod without
/// permission gets the frontend sidecar's 403, the node without a sidecar is refused by
/// STRICT mTLS); SIGINT removes every namespace and leaves the root namespace's links and
/// iptables rules as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn palisade_up_netns_enforces_capture_and_cleans_up() {
    const TEST: &str = "palisade_up_netns_enforces_capture_and_cleans_up";
    if !tools::is_root() {
        crate::support::skip(TEST, "network namespaces and iptables need root");
        return;
    }
    let (Some(curl), Some(sh), Some(ip)) = (
        tools::require(TEST, "curl"),
        tools::require(TEST, "sh"),
        tools::require(TEST, "ip"),
    ) else {
        return;
    };
    if tools::require(TEST, "iptables-save").is_none() {
        return;
    }
    let before = RootNamespace::read(&ip).await;

    let port = free_port().to_string();
    let mut up = Up::start(&["examples/ecommerce", "--port", &port]).await;
    let prefix = format!("pal-up-{}-", up.process.pid());
    let summary = up.printed.join("\n");
    for expected in [
        "(--mode netns)",
        "Apps are reachable only through their sidecars",
        &format!("{prefix}node"),
    ] {
        assert!(
            summary.contains(expected),
            "the summary lacks {expected:?}:\n{summary}"
        );
    }
    up.assert_curl_line_serves_the_shop(&sh).await;

    // A pod's address, from its summary row.
    let pod_ip = |workload: &str| {
        up.printed
            .iter()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(workload))
                    .then(|| words.nth(1).map(str::to_owned))
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no {workload} row in the summary:\n{summary}"))
    };
    let app = format!("http://{}:8080/", pod_ip("shop/frontend"));
    let charge = format!(
        "http://{}:9090/payments.Payments/Charge",
        pod_ip("shop/payments")
    );
    let limit = Duration::from_secs(30);

    // From search's pod, straight at frontend's app: captured by search's sidecar, carried
    // over mTLS, refused by frontend's policy (only ingress may call it).
    let search_pod = format!("{prefix}search.shop");
    let curl_text = curl.to_string_lossy().into_owned();
    let out = tools::run_ok(
        &ip,
        [
            "netns",
            "exec",
            &search_pod,
            &curl_text,
            "-sS",
            "-i",
            "-m",
            "10",
            &app,
        ],
        limit,
    )
    .await;
    let reply = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        out.status.success() && reply.starts_with("http/1.1 403"),
        "search's pod reached frontend's app around the policy: {}\nlog:\n{}",
        output_text(&out),
        up.log()
    );
    assert!(
        reply.contains("x-palisade-denied-by:"),
        "the 403 does not come from a sidecar: {}",
        output_text(&out)
    );

    // From search's pod to payments' gRPC port: the shop's NetworkPolicy lets only the
    // frontend connect, so payments' sidecar closes the connection before any byte reaches
    // the app, and logs why.
    let out = tools::run_ok(
        &ip,
        [
            "netns",
            "exec",
            &search_pod,
            &curl_text,
            "-sS",
            "-i",
            "-m",
            "10",
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "-H",
            "content-type: application/grpc",
            &charge,
        ],
        limit,
    )
    .await;
    let reply = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        !reply.contains("grpc-status: 0") && !reply.contains("grpc-status: 7"),
        "search's pod reached payments' app (or its request rules) around the NetworkPolicy: {}",
        output_text(&out)
    );
    let logged = tokio::time::timeout(Duration::from_secs(10), async {
        while !up.log().contains("shop/payments-ingress") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        logged.is_ok(),
        "no NetworkPolicy denial naming shop/payments-ingress in the log:\n{}",
        up.log()
    );

    // From the node, which has no sidecar: plaintext to a STRICT mesh is refused before any
    // byte reaches the app.
    let node = format!("{prefix}node");
    let out = tools::run_ok(
        &ip,
        ["netns", "exec", &node, &curl_text, "-sS", "-m", "10", &app],
        limit,
    )
    .await;
    assert!(
        !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("Palisade Shop"),
        "the node reached frontend's app without a sidecar: {}\nlog:\n{}",
        output_text(&out),
        up.log()
    );

    // The bypass commands the summary prints behave as it says.
    let printed: Vec<String> = up
        .printed
        .iter()
        .map(|l| l.trim().to_owned())
        .filter(|l| l.starts_with("ip netns exec "))
        .collect();
    assert_eq!(printed.len(), 2, "bypass commands: {printed:#?}");
    for command in &printed {
        let with_bound = format!("{command} -m 10");
        let out = tools::run_ok(&sh, ["-c", &with_bound], limit).await;
        let reply = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        if command.starts_with(&format!("ip netns exec {node} ")) {
            assert!(!out.status.success(), "{command}: {}", output_text(&out));
        } else {
            assert!(
                reply.starts_with("http/1.1 403"),
                "{command}: {}",
                output_text(&out)
            );
        }
    }
    let log = up.log();
    for expected in ["request allowed", "request denied"] {
        assert!(
            log.contains(expected),
            "the log lacks {expected:?} (decisions are logged):\n{log}"
        );
    }

    up.interrupt_and_expect_clean_exit(Duration::from_secs(20))
        .await;
    let left: Vec<String> = crate::support::netns::list()
        .await
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let after = RootNamespace::read(&ip).await;
    assert_eq!(
        before, after,
        "the root namespace's links or iptables rules changed"
    );
}
