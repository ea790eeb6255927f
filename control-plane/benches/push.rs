//! Push benchmark: how long one policy change takes to reach 100 and 1,000 connected
//! proxies.
//!
//! One process: the control plane runs in-process on 127.0.0.1:0 (test-util), and every
//! simulated proxy is a real discovery client: its own certificate issued by the mesh CA,
//! its own TCP connection with mTLS (tokio-rustls under tonic), one stream subscribed to
//! every type, ACKing every response. Once all are synced, ONE root-namespace
//! AuthorizationPolicy that selects every workload is changed, and the bench measures from
//! the change until each stream has received the new Authorization snapshot (first, p50,
//! max) and until the control plane has recorded every proxy's ACK of it.
//!
//! Three paths: `watcher` writes the policy file and lets the directory watcher (100 ms
//! debounce) reload it; `update` hands the already-parsed configuration to
//! `ControlPlane::update`, which isolates publish-and-push from file watching and parsing;
//! `netpol` writes a Kubernetes NetworkPolicy selecting every workload (whose rule names
//! another pod each round) and measures the NetworkPolicy snapshot instead.
//!
//! Run: `cargo bench -p palisade-control-plane --bench push` (sizes may follow `--`, e.g.
//! `-- 100 1000 2000`). 1,000 proxies hold about 2,000 sockets in this one process: if the
//! soft file-descriptor limit is lower, the bench says so and skips that size (raise it with
//! `ulimit -n 8192`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use palisade_certs::tls::Credentials;
use palisade_control_plane::ResourceType;
use palisade_control_plane::config::load_files;
use palisade_control_plane::test_util::{TestControlPlane, TestOptions, connect};
use palisade_control_plane::{authorization_for, control_plane_identity};
use palisade_proto::v1 as pb;
use pb::discovery_client::DiscoveryClient;
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
/// Proxies connecting at once (TLS handshakes are CPU-bound; 2 cores).
const CONNECT_CONCURRENCY: usize = 32;
/// File descriptors needed per proxy: its client socket and the server's end.
const FDS_PER_PROXY: u64 = 2;
/// Headroom for everything else the process opens.
const FD_HEADROOM: u64 = 256;
const NAMESPACE: &str = "bench";
const POLICY_FILE: &str = "policy.yaml";
const NETPOL_FILE: &str = "netpol.yaml";

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

async fn run(sizes: &[usize]) -> Result<(), BenchError> {
    let limit = soft_fd_limit();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "push bench: {cores} cores, fd soft limit {}, {ROUNDS} rounds per path",
        limit.map_or("unknown".to_owned(), |l| l.to_string())
    );
    let mut rows = Vec::new();
    for &n in sizes {
        let need = n as u64 * FDS_PER_PROXY + FD_HEADROOM;
        if let Some(limit) = limit
            && limit < need
        {
            println!(
                "SKIPPED {n} proxies: they need about {need} file descriptors and the soft \
                 limit is {limit}; run with `ulimit -n 8192`"
            );
            continue;
        }
        rows.extend(bench_size(n).await?);
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
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The soft limit on open files, from /proc (Linux); `None` where it cannot be read.
fn soft_fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
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

/// What a simulated proxy reports.
struct Received {
    /// Authorization or NetworkPolicy.
    kind: ResourceType,
    version: String,
    at: Instant,
}

async fn bench_size(n: usize) -> Result<Vec<Row>, BenchError> {
    println!("{n} proxies: starting the control plane and connecting...");
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

    let (events_tx, mut events) = mpsc::unbounded_channel::<Received>();
    let bundle = cp.bundle();
    let server_id = control_plane_identity(cp.ca.trust_domain());
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut proxies = JoinSet::new();
    for i in 0..n {
        let workload = snapshot
            .workload(NAMESPACE, &format!("w{i}"))
            .ok_or_else(|| err(format!("no workload w{i}")))?;
        // Each proxy has its own key and certificate, as a real sidecar would.
        let (leaf, key) = cp.ca.issue(&workload.identity, Duration::from_secs(3600))?;
        let creds = Credentials::new(&leaf, &key)?;
        let (addr, bundle, server_id, gate) = (
            cp.addr(),
            bundle.clone(),
            server_id.clone(),
            Arc::clone(&gate),
        );
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
    // Drain the initial snapshots' receipts.
    while events.try_recv().is_ok() {}
    println!(
        "{n} proxies: connected and synced in {:.1} s",
        setup_started.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    for round in 1..=ROUNDS {
        // Watcher path: from the file write to every proxy.
        let sa = format!("w{round}");
        let started = Instant::now();
        cp.write_file(POLICY_FILE, &policy(&sa))?;
        let row = measure(&cp, &mut proxies, &mut events, n, "watcher", round, started).await?;
        rows.push(row);
    }
    for round in 1..=ROUNDS {
        // NetworkPolicy through the watcher: every workload's compiled rules change.
        let client = format!("w{}", 2 * ROUNDS + round);
        let started = Instant::now();
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
        let started = Instant::now();
        cp.control_plane.update(next)?;
        let row = measure(&cp, &mut proxies, &mut events, n, "update", round, started).await?;
        rows.push(row);
    }

    proxies.abort_all();
    bounded("stop", STOP_TIMEOUT, cp.stop()).await??;
    Ok(rows)
}

/// Waits for `future`, failing early if a simulated proxy fails first.
async fn race<T>(
    proxies: &mut JoinSet<Result<(), BenchError>>,
    future: impl Future<Output = T>,
) -> Result<T, BenchError> {
    tokio::pin!(future);
    // Every proxy runs until the bench ends it, so any proxy finishing is a failure.
    tokio::select! {
        v = &mut future => Ok(v),
        joined = proxies.join_next() => Err(match joined {
            Some(Ok(Ok(()))) => err("a proxy's stream ended"),
            Some(Ok(Err(e))) => err(format!("a proxy failed: {e}")),
            Some(Err(e)) => err(format!("a proxy task failed: {e}")),
            None => err("no proxy is running"),
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
    started: Instant,
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
                return Err(err("every proxy is gone"));
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
            arrivals.push(r.at.duration_since(started));
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
    let acked = started.elapsed();
    arrivals.sort();
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
        let at = Instant::now();
        let kind = ResourceType::from_type_url(&resp.type_url)
            .filter(|k| matches!(k, ResourceType::Authorization | ResourceType::NetworkPolicy));
        if let Some(kind) = kind {
            // The receiver is gone only when the bench is finishing.
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
