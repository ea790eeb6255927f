//! Push benchmark: how long one policy change takes to reach 100 and 1,000 (or 10,000)
//! connected proxies, and how much memory the control plane holds meanwhile.
//!
//! The control plane runs in the bench process on 127.0.0.1:0 (test-util). The simulated
//! proxies run in child processes (the bench binary re-executed in client mode, at most
//! 5,000 proxies each), so that the bench process holds only the control plane: its RSS is
//! the control plane's, and its file descriptors are the server ends of the connections.
//! Every simulated proxy is a real discovery client: its own certificate issued by the mesh
//! CA (handed to the children in a temporary directory the bench removes), its own TCP
//! connection with mTLS (tokio-rustls under tonic), one stream subscribed to every type,
//! ACKing every response. Once all are synced, ONE root-namespace AuthorizationPolicy that
//! selects every workload is changed, and the bench measures from the change until each
//! stream has received the new Authorization snapshot (first, p50, max; the children
//! report each arrival's wall-clock time on their stdout) and until the control plane has
//! recorded every proxy's ACK of it.
//!
//! Three paths: `watcher` writes the policy file and lets the directory watcher (100 ms
//! debounce) reload it; `update` hands the already-parsed configuration to
//! `ControlPlane::update`, which isolates publish-and-push from file watching and parsing;
//! `netpol` writes a Kubernetes NetworkPolicy selecting every workload (whose rule names
//! another pod each round) and measures the NetworkPolicy snapshot instead.
//!
//! For each size it also prints the bench process's (the control plane's) VmRSS once the
//! proxies are synced and after the last change, its peak (VmHWM, reset at the start of
//! each size), and the client processes' peaks for comparison. Each round's last arrival is
//! printed as it is measured (to attach a profiler to one path); the table comes at the end.
//!
//! Run: `cargo bench -p palisade-control-plane --bench push` (sizes may follow `--`, e.g.
//! `-- 1000 10000`). Every proxy costs one file descriptor in the bench process (the
//! server's end) and one in its client process: 10,000 proxies need a soft limit of about
//! 10,300 (`ulimit -n 20000`); a size that does not fit is skipped with a message. The
//! children are killed when the bench ends or fails, and exit by themselves when the bench
//! process goes away (their stdin closes).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_certs::tls::Credentials;
use palisade_certs::{TrustBundle, TrustDomain};
use palisade_control_plane::ResourceType;
use palisade_control_plane::config::load_files;
use palisade_control_plane::test_util::{TestControlPlane, TestOptions, connect};
use palisade_control_plane::{authorization_for, control_plane_identity};
use palisade_proto::v1 as pb;
use pb::discovery_client::DiscoveryClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};
use tokio_stream::wrappers::ReceiverStream;

/// Changes measured per path and size.
const ROUNDS: usize = 3;
/// Bound on starting the control plane and connecting and syncing every proxy.
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on one change reaching every proxy.
const PUSH_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on stopping the control plane.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// A client process that outlives this (its parent should have ended it long before) exits.
const CLIENT_MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Proxies connecting at once per client process (TLS handshakes are CPU-bound; 2 cores).
const CONNECT_CONCURRENCY: usize = 32;
/// Simulated proxies per client process: one file descriptor each there.
const PROXIES_PER_CLIENT: usize = 5000;
/// Headroom for everything else a process opens.
const FD_HEADROOM: u64 = 256;
const NAMESPACE: &str = "bench";
const POLICY_FILE: &str = "policy.yaml";
const NETPOL_FILE: &str = "netpol.yaml";

/// Set (to the credentials directory) when the binary runs as a client process.
const CLIENT_DIR_ENV: &str = "PALISADE_PUSH_BENCH_CLIENT_DIR";
/// The control plane's address, for a client process.
const CLIENT_ADDR_ENV: &str = "PALISADE_PUSH_BENCH_ADDR";
/// The proxies a client process simulates: `first..end`.
const CLIENT_RANGE_ENV: &str = "PALISADE_PUSH_BENCH_RANGE";
/// In the credentials directory: the trust domain, and the roots as PEM.
const TRUST_DOMAIN_FILE: &str = "trust-domain";
const ROOTS_FILE: &str = "roots.pem";

type BenchError = Box<dyn std::error::Error + Send + Sync>;

fn err(message: impl Into<String>) -> BenchError {
    message.into().into()
}

/// Bounds `f` by `limit`, naming `what` on expiry.
async fn bounded<T>(
    what: &str,
    limit: Duration,
    f: impl Future<Output = T>,
) -> Result<T, BenchError> {
    timeout(limit, f)
        .await
        .map_err(|_| err(format!("timed out after {limit:?}: {what}")))
}

fn main() -> ExitCode {
    let client_dir = std::env::var_os(CLIENT_DIR_ENV).map(PathBuf::from);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("push bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(dir) = client_dir {
        return match runtime.block_on(client_main(&dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("push bench client process failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut sizes = Vec::new();
    for arg in std::env::args().skip(1) {
        // `cargo bench` passes `--bench`; anything else that is not a number is ignored.
        if let Ok(n) = arg.parse::<usize>()
            && n > 0
        {
            sizes.push(n);
        }
    }
    if sizes.is_empty() {
        sizes = vec![100, 1000];
    }
    match runtime.block_on(run(&sizes)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("push bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One measured change.
struct Row {
    proxies: usize,
    path: &'static str,
    round: usize,
    first: Duration,
    p50: Duration,
    max: Duration,
    acked: Duration,
}

/// What one size cost besides the pushes.
struct SizeSummary {
    proxies: usize,
    setup: Duration,
    /// The bench process's (control plane's) VmRSS once every proxy is synced, KiB.
    rss_synced_kib: u64,
    /// Its VmRSS after the last change, KiB.
    rss_end_kib: u64,
    /// Its peak RSS during this size, KiB.
    hwm_kib: u64,
    /// The sum of the client processes' peak RSS, KiB.
    clients_hwm_kib: u64,
}

async fn run(sizes: &[usize]) -> Result<(), BenchError> {
    let limit = soft_fd_limit();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "push bench: {cores} cores, fd soft limit {}, {ROUNDS} rounds per path",
        limit.map_or("unknown".to_owned(), |l| l.to_string())
    );
    let mut rows = Vec::new();
    let mut summaries = Vec::new();
    for &n in sizes {
        // The bench process holds one end of every connection; a client process, its share.
        let need = n as u64 + FD_HEADROOM;
        if let Some(limit) = limit
            && limit < need
        {
            println!(
                "SKIPPED {n} proxies: they need about {need} file descriptors and the soft \
                 limit is {limit}; run with `ulimit -n 20000`"
            );
            continue;
        }
        let (size_rows, summary) = bench_size(n).await?;
        rows.extend(size_rows);
        summaries.push(summary);
    }
    println!();
    println!(
        "{:>7}  {:<7}  {:>5}  {:>12}  {:>12}  {:>12}  {:>12}",
        "proxies", "path", "round", "first", "p50", "last (max)", "all ACKed"
    );
    for r in &rows {
        println!(
            "{:>7}  {:<7}  {:>5}  {:>12}  {:>12}  {:>12}  {:>12}",
            r.proxies,
            r.path,
            r.round,
            ms(r.first),
            ms(r.p50),
            ms(r.max),
            ms(r.acked)
        );
    }
    println!();
    println!(
        "{:>7}  {:>14}  {:>12}  {:>12}  {:>12}  {:>14}",
        "proxies", "connect+sync", "CP RSS sync", "CP RSS end", "CP peak", "clients' peak"
    );
    for s in &summaries {
        println!(
            "{:>7}  {:>12.1} s  {:>12}  {:>12}  {:>12}  {:>14}",
            s.proxies,
            s.setup.as_secs_f64(),
            mib(s.rss_synced_kib),
            mib(s.rss_end_kib),
            mib(s.hwm_kib),
            mib(s.clients_hwm_kib)
        );
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

/// The soft limit on open files, from /proc (Linux); `None` where it cannot be read.
fn soft_fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A `kB` field of /proc/<pid>/status (`VmRSS`, `VmHWM`); 0 where it cannot be read.
fn status_kib(pid: &str, field: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resets this process's VmHWM to its current RSS (Linux 4.0+), so each size reports its
/// own peak; where that is not possible the peak is the process's so far.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mesh_files(n: usize, principal_sa: &str) -> Vec<(&'static str, String)> {
    let mesh = "\
apiVersion: palisade.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh, namespace: palisade-system}
spec: {certificateLifetime: 1h}
"
    .to_owned();
    let mut workloads = String::new();
    for i in 0..n {
        // 127.1.0.0/16 gives every workload its own address, as the loader requires.
        workloads.push_str(&format!(
            "---\napiVersion: palisade.dev/v1alpha1\nkind: Workload\n\
             metadata: {{name: w{i}, namespace: {NAMESPACE}, labels: {{app: w{i}, tier: bench}}}}\n\
             spec:\n  serviceAccount: w{i}\n  address: 127.1.{}.{}\n  ports: [{{name: http, port: 8080}}]\n",
            i / 250,
            i % 250 + 1
        ));
    }
    vec![
        ("mesh.yaml", mesh),
        ("workloads.yaml", workloads),
        (POLICY_FILE, policy(principal_sa)),
        (NETPOL_FILE, network_policy("w0")),
    ]
}

/// A policy in the root namespace without a selector: it selects every workload.
fn policy(principal_sa: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: bench-all, namespace: palisade-system}}\n\
         spec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: \
         [\"cluster.local/ns/{NAMESPACE}/sa/{principal_sa}\"]\n    to:\n    - operation:\n        \
         ports: [\"8080\"]\n        methods: [GET]\n"
    )
}

/// A NetworkPolicy in the bench namespace selecting every workload, admitting pod `client`.
fn network_policy(client: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: bench-all, namespace: {NAMESPACE}}}\n\
         spec:\n  podSelector: {{matchLabels: {{tier: bench}}}}\n  ingress:\n  - from:\n    \
         - podSelector: {{matchLabels: {{app: {client}}}}}\n    ports: [{{port: http}}]\n"
    )
}

/// What a simulated proxy reports: one line per Authorization or NetworkPolicy snapshot
/// received, `<type> <version> <unix nanoseconds>`, on its client process's stdout.
struct Received {
    kind: ResourceType,
    version: String,
    /// Wall-clock time: the processes share the machine's clock, not an `Instant`.
    at: SystemTime,
}

impl Received {
    fn to_line(&self) -> String {
        let nanos = self
            .at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{} {} {nanos}\n", self.kind, self.version)
    }

    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split(' ');
        let kind = fields.next()?;
        let kind = ResourceType::ALL.into_iter().find(|t| t.as_str() == kind)?;
        let version = fields.next()?.to_owned();
        let nanos: u64 = fields.next()?.parse().ok()?;
        Some(Self {
            kind,
            version,
            at: UNIX_EPOCH + Duration::from_nanos(nanos),
        })
    }
}

/// Writes the trust material and one certificate and key per proxy into a new temporary
/// directory for the client processes (removed when the returned value is dropped).
fn write_client_credentials(
    cp: &TestControlPlane,
    n: usize,
) -> Result<tempfile::TempDir, BenchError> {
    let dir = tempfile::Builder::new()
        .prefix("palisade-push-bench-")
        .tempdir()?;
    let snapshot = cp.control_plane.snapshot();
    std::fs::write(
        dir.path().join(TRUST_DOMAIN_FILE),
        cp.ca.trust_domain().to_string(),
    )?;
    std::fs::write(dir.path().join(ROOTS_FILE), cp.bundle().to_pem())?;
    for i in 0..n {
        let workload = snapshot
            .workload(NAMESPACE, &format!("w{i}"))
            .ok_or_else(|| err(format!("no workload w{i}")))?;
        // Each proxy has its own key and certificate, as a real sidecar would.
        let (leaf, key) = cp.ca.issue(&workload.identity, Duration::from_secs(3600))?;
        let mut chain = leaf.leaf_pem();
        for pem in leaf.chain_pem() {
            chain.push_str(&pem);
        }
        std::fs::write(dir.path().join(format!("w{i}.crt")), chain)?;
        std::fs::write(dir.path().join(format!("w{i}.key")), key.private_key_pem())?;
    }
    Ok(dir)
}

/// A running client process and what it reports.
struct ClientProcess {
    /// The process id, to read its memory use.
    pid: String,
}

/// Starts client processes for proxies `0..n`; each one's reader task forwards its reports
/// to `events` and ends (with an error) only if the process ends or misbehaves. Aborting a
/// task kills its process.
fn spawn_clients(
    n: usize,
    dir: &Path,
    addr: std::net::SocketAddr,
    events: &mpsc::UnboundedSender<Received>,
    tasks: &mut JoinSet<Result<(), BenchError>>,
) -> Result<Vec<ClientProcess>, BenchError> {
    let exe = std::env::current_exe()?;
    let mut clients = Vec::new();
    for first in (0..n).step_by(PROXIES_PER_CLIENT) {
        let end = (first + PROXIES_PER_CLIENT).min(n);
        let mut child = tokio::process::Command::new(&exe)
            .env(CLIENT_DIR_ENV, dir)
            .env(CLIENT_ADDR_ENV, addr.to_string())
            .env(CLIENT_RANGE_ENV, format!("{first}..{end}"))
            // The child exits when its stdin closes, i.e. when this process is gone.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| err("no stdout from a client process"))?;
        let events = events.clone();
        tasks.spawn(async move {
            // Held (not read) so the child's stdin stays open while this task runs.
            let _stdin = child.stdin.take();
            let mut lines = BufReader::new(stdout).lines();
            while let Some(line) = lines.next_line().await? {
                let received = Received::parse(&line)
                    .ok_or_else(|| err(format!("unexpected line from a client: {line:?}")))?;
                // The receiver is gone only when the bench is finishing.
                let _ = events.send(received);
            }
            let status = child.wait().await?;
            Err(err(format!(
                "client process for proxies {first}..{end} ended: {status}"
            )))
        });
        clients.push(ClientProcess { pid });
    }
    Ok(clients)
}

async fn bench_size(n: usize) -> Result<(Vec<Row>, SizeSummary), BenchError> {
    println!("{n} proxies: starting the control plane and connecting...");
    reset_peak_rss();
    let setup_started = Instant::now();
    let files = mesh_files(n, "w0");
    let refs: Vec<(&str, &str)> = files.iter().map(|(f, s)| (*f, s.as_str())).collect();
    // The listener's connection cap (4,096 by default) is an operator's setting: a control
    // plane for this many proxies is configured for them.
    let mut limits = palisade_control_plane::GrpcLimits::default();
    limits.max_connections = limits.max_connections.max(n + 64);
    let options = TestOptions {
        watch: true,
        admin: false,
        limits,
        ..TestOptions::default()
    };
    let cp = bounded(
        "start",
        SETUP_TIMEOUT,
        TestControlPlane::start_with(&refs, options),
    )
    .await??;
    let snapshot = cp.control_plane.snapshot();
    let initial = authorization_for(&snapshot, NAMESPACE, "w0")?;
    if initial.policies.len() != 1 {
        return Err(err("the bench policy does not select w0"));
    }

    let credentials = write_client_credentials(&cp, n)?;
    let (events_tx, mut events) = mpsc::unbounded_channel::<Received>();
    let mut proxies = JoinSet::new();
    let clients = spawn_clients(n, credentials.path(), cp.addr(), &events_tx, &mut proxies)?;
    drop(events_tx);

    let all_synced = |ps: &[&palisade_control_plane::ProxyStatus]| {
        ps.len() == n
            && ps
                .iter()
                .all(|p| p.is_synced() && p.types.len() == pb::ALL_TYPE_URLS.len())
    };
    bounded(
        "every proxy connected and synced",
        SETUP_TIMEOUT,
        race(
            &mut proxies,
            cp.control_plane.wait_until_proxies(all_synced),
        ),
    )
    .await??;
    // The clients have read their credentials.
    drop(credentials);
    // Drain the initial snapshots' receipts.
    while events.try_recv().is_ok() {}
    let setup = setup_started.elapsed();
    let rss_synced_kib = status_kib("self", "VmRSS");
    println!(
        "{n} proxies: connected and synced in {:.1} s; control plane RSS {}",
        setup.as_secs_f64(),
        mib(rss_synced_kib)
    );

    let mut rows = Vec::new();
    for round in 1..=ROUNDS {
        // Watcher path: from the file write to every proxy.
        let sa = format!("w{round}");
        let started = SystemTime::now();
        cp.write_file(POLICY_FILE, &policy(&sa))?;
        let row = measure(&cp, &mut proxies, &mut events, n, "watcher", round, started).await?;
        rows.push(row);
    }
    for round in 1..=ROUNDS {
        // NetworkPolicy through the watcher: every workload's compiled rules change.
        let client = format!("w{}", 2 * ROUNDS + round);
        let started = SystemTime::now();
        cp.write_file(NETPOL_FILE, &network_policy(&client))?;
        let row = measure(&cp, &mut proxies, &mut events, n, "netpol", round, started).await?;
        rows.push(row);
    }
    for round in 1..=ROUNDS {
        // Update path: parsing is done before the clock starts.
        let sa = format!("w{}", ROUNDS + round);
        let files = mesh_files(n, &sa);
        let refs: Vec<(&str, &str)> = files.iter().map(|(f, s)| (*f, s.as_str())).collect();
        let next = load_files(&refs)?;
        let started = SystemTime::now();
        cp.control_plane.update(next)?;
        let row = measure(&cp, &mut proxies, &mut events, n, "update", round, started).await?;
        rows.push(row);
    }

    let summary = SizeSummary {
        proxies: n,
        setup,
        rss_synced_kib,
        rss_end_kib: status_kib("self", "VmRSS"),
        hwm_kib: status_kib("self", "VmHWM"),
        clients_hwm_kib: clients.iter().map(|c| status_kib(&c.pid, "VmHWM")).sum(),
    };
    // Kills the client processes (their reader tasks own them).
    proxies.shutdown().await;
    bounded("stop", STOP_TIMEOUT, cp.stop()).await??;
    Ok((rows, summary))
}

/// Waits for `future`, failing early if a client process fails first.
async fn race<T>(
    proxies: &mut JoinSet<Result<(), BenchError>>,
    future: impl Future<Output = T>,
) -> Result<T, BenchError> {
    tokio::pin!(future);
    // Every client runs until the bench ends it, so any one finishing is a failure.
    tokio::select! {
        v = &mut future => Ok(v),
        joined = proxies.join_next() => Err(match joined {
            Some(Ok(Ok(()))) => err("a client process ended"),
            Some(Ok(Err(e))) => err(format!("a client process failed: {e}")),
            Some(Err(e)) => err(format!("a client task failed: {e}")),
            None => err("no client process is running"),
        }),
    }
}

/// Collects one new snapshot per proxy (NetworkPolicy on the `netpol` path, Authorization
/// otherwise), then waits for every ACK of it.
async fn measure(
    cp: &TestControlPlane,
    proxies: &mut JoinSet<Result<(), BenchError>>,
    events: &mut mpsc::UnboundedReceiver<Received>,
    n: usize,
    path: &'static str,
    round: usize,
    started: SystemTime,
) -> Result<Row, BenchError> {
    let kind = if path == "netpol" {
        ResourceType::NetworkPolicy
    } else {
        ResourceType::Authorization
    };
    let mut arrivals = Vec::with_capacity(n);
    let mut version = None::<String>;
    let collect = async {
        while arrivals.len() < n {
            let Some(r) = events.recv().await else {
                return Err(err("every client process is gone"));
            };
            if r.kind != kind {
                // The directory holds the watcher rounds' policy file, so the first reload
                // after an `update` round also brings that Authorization back: not measured.
                continue;
            }
            match &version {
                None => version = Some(r.version.clone()),
                Some(v) if *v != r.version => {
                    return Err(err(format!(
                        "two new versions in one round ({v} and {})",
                        r.version
                    )));
                }
                Some(_) => {}
            }
            // A clock step backwards would make this negative: counted as zero.
            arrivals.push(r.at.duration_since(started).unwrap_or_default());
        }
        Ok(())
    };
    bounded(
        "the new snapshot reaching every proxy",
        PUSH_TIMEOUT,
        race(proxies, collect),
    )
    .await???;
    let version = version.ok_or_else(|| err("no snapshot arrived"))?;
    let acked = |ps: &[&palisade_control_plane::ProxyStatus]| {
        ps.len() == n
            && ps.iter().all(|p| {
                p.types.get(&kind).and_then(|t| t.acked_version.as_deref())
                    == Some(version.as_str())
            })
    };
    bounded(
        "every proxy's ACK",
        PUSH_TIMEOUT,
        race(proxies, cp.control_plane.wait_until_proxies(acked)),
    )
    .await??;
    let acked = SystemTime::now()
        .duration_since(started)
        .unwrap_or_default();
    arrivals.sort();
    // Progress, so a profiler can be attached to one path's rounds.
    println!(
        "{n} proxies: {path} round {round}: last arrival {}",
        ms(arrivals[arrivals.len() - 1])
    );
    Ok(Row {
        proxies: n,
        path,
        round,
        first: arrivals[0],
        p50: arrivals[arrivals.len() / 2],
        max: arrivals[arrivals.len() - 1],
        acked,
    })
}

/// Client mode: simulates the proxies named by the environment against the control plane
/// it names, reporting on stdout, until stdin closes or [`CLIENT_MAX_LIFETIME`] passes.
async fn client_main(dir: &Path) -> Result<(), BenchError> {
    let addr: std::net::SocketAddr = std::env::var(CLIENT_ADDR_ENV)?.parse()?;
    let range = std::env::var(CLIENT_RANGE_ENV)?;
    let (first, end) = range
        .split_once("..")
        .ok_or_else(|| err(format!("bad range {range:?}")))?;
    let (first, end): (usize, usize) = (first.parse()?, end.parse()?);
    let trust_domain =
        TrustDomain::new(std::fs::read_to_string(dir.join(TRUST_DOMAIN_FILE))?.trim())?;
    let bundle = TrustBundle::from_pem(
        trust_domain.clone(),
        &std::fs::read_to_string(dir.join(ROOTS_FILE))?,
    )?;
    let server_id = control_plane_identity(&trust_domain);
    let mut credentials = HashMap::new();
    for i in first..end {
        let chain = std::fs::read_to_string(dir.join(format!("w{i}.crt")))?;
        let key = std::fs::read_to_string(dir.join(format!("w{i}.key")))?;
        credentials.insert(i, Credentials::from_pem(&chain, &key)?);
    }

    // The parent holds our stdin open for as long as it wants us: EOF means stop.
    let (stdin_closed_tx, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = stdin_closed_tx.send(());
    });
    // Reports go out through one writer thread, flushed whenever it has caught up.
    let (events_tx, mut events) = mpsc::unbounded_channel::<Received>();
    std::thread::spawn(move || {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        while let Some(r) = events.blocking_recv() {
            let mut ok = out.write_all(r.to_line().as_bytes()).is_ok();
            while let Ok(r) = events.try_recv() {
                ok &= out.write_all(r.to_line().as_bytes()).is_ok();
            }
            if !ok || out.flush().is_err() {
                // The parent is gone.
                std::process::exit(1);
            }
        }
    });

    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut proxies = JoinSet::new();
    for (i, creds) in credentials {
        let (bundle, server_id, gate) = (bundle.clone(), server_id.clone(), Arc::clone(&gate));
        let events = events_tx.clone();
        proxies.spawn(async move {
            let channel = {
                let _permit = gate.acquire().await.map_err(|e| err(e.to_string()))?;
                connect(addr, &bundle, server_id, Some(&creds)).await?
            };
            simulate_proxy(i, channel, events).await
        });
    }
    drop(events_tx);
    tokio::select! {
        _ = stdin_closed => Ok(()),
        _ = tokio::time::sleep(CLIENT_MAX_LIFETIME) => Err(err("outlived its lifetime")),
        joined = proxies.join_next() => Err(match joined {
            Some(Ok(Ok(()))) => err("a proxy's stream ended"),
            Some(Ok(Err(e))) => err(format!("a proxy failed: {e}")),
            Some(Err(e)) => err(format!("a proxy task failed: {e}")),
            None => err("no proxy is running"),
        }),
    }
}

/// One simulated proxy: subscribes to every type, ACKs every response, and reports when
/// each Authorization and NetworkPolicy snapshot arrives.
async fn simulate_proxy(
    i: usize,
    channel: tonic::transport::Channel,
    events: mpsc::UnboundedSender<Received>,
) -> Result<(), BenchError> {
    let mut client = DiscoveryClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    for (k, url) in pb::ALL_TYPE_URLS.iter().enumerate() {
        let node = (k == 0).then(|| pb::Node {
            workload: format!("w{i}"),
            namespace: NAMESPACE.to_owned(),
            proxy_version: "push-bench".to_owned(),
        });
        tx.send(pb::DiscoveryRequest {
            node,
            type_url: (*url).to_owned(),
            ..Default::default()
        })
        .await
        .map_err(|_| err("request stream closed"))?;
    }
    let mut stream = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    while let Some(resp) = stream.message().await? {
        let at = SystemTime::now();
        let kind = ResourceType::from_type_url(&resp.type_url)
            .filter(|k| matches!(k, ResourceType::Authorization | ResourceType::NetworkPolicy));
        if let Some(kind) = kind {
            // The writer is gone only when the process is finishing.
            let _ = events.send(Received {
                kind,
                version: resp.version_info.clone(),
                at,
            });
        }
        let ack = pb::DiscoveryRequest {
            type_url: resp.type_url,
            version_info: resp.version_info,
            response_nonce: resp.nonce,
            ..Default::default()
        };
        tx.send(ack)
            .await
            .map_err(|_| err("request stream closed"))?;
    }
    Ok(())
}
