//! Issuance benchmark: leaf certificates signed per second by the identity service, CSR in
//! and signed leaf out over gRPC, with 1, 8 and 64 concurrent clients (or the counts given
//! after `--`).
//!
//! The control plane runs in this process on 127.0.0.1:0 (test-util) with 64 workloads. Each
//! client is a workload's proxy renewing: its own TCP connection with mTLS (its current
//! certificate), one `Certify` call after another with a CSR made once beforehand (so the
//! figure is the server's signing path: CSR parse and signature check, identity check, leaf
//! signing, response), for a fixed time after a warm-up. Clients and server share the
//! machine's cores, as they would not in a cluster: the figure is a floor.
//!
//! Run: `cargo bench -p palisade-control-plane --bench issue` (e.g. `-- 1 16 128`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use palisade_certs::tls::Credentials;
use palisade_control_plane::test_util::{TestControlPlane, csr_for, identity};
use palisade_proto::v1::CertifyRequest;
use palisade_proto::v1::identity_client::IdentityClient;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Workloads in the mesh; client `i` renews as workload `i % WORKLOADS`.
const WORKLOADS: usize = 64;
/// Untimed calls before each measurement.
const WARM_UP: Duration = Duration::from_secs(1);
/// How long each concurrency level is measured.
const MEASURE: Duration = Duration::from_secs(5);

fn mesh() -> String {
    let mut yaml = String::from(
        "apiVersion: palisade.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {certificateLifetime: 1h}\n",
    );
    for i in 0..WORKLOADS {
        yaml.push_str(&format!(
            "---\napiVersion: palisade.dev/v1alpha1\nkind: Workload\nmetadata: {{name: w{i}, namespace: bench}}\n\
             spec: {{serviceAccount: w{i}, address: 10.20.{}.{}}}\n",
            i / 250,
            i % 250 + 1
        ));
    }
    yaml
}

/// A workload ready to renew: its mTLS credentials and a CSR for its identity.
struct Renewer {
    creds: Credentials,
    request: CertifyRequest,
}

/// Bootstraps workload `i` once (its token is then spent, as in production).
async fn renewer(cp: &TestControlPlane, i: usize) -> Result<Renewer, String> {
    let name = format!("w{i}");
    let (creds, _) = cp
        .certify("bench", &name)
        .await
        .map_err(|e| format!("bootstrap {name}: {e}"))?;
    let id = identity("cluster.local", "bench", &name).map_err(|e| e.to_string())?;
    let (_, csr_pem) = csr_for(&id).map_err(|e| e.to_string())?;
    Ok(Renewer {
        creds,
        request: CertifyRequest {
            csr_pem,
            workload: name,
            namespace: "bench".into(),
            token: String::new(),
        },
    })
}

/// One client's calls on its own connection: (issued, latencies in µs) until `end`.
async fn client(
    cp: &TestControlPlane,
    renewer: &Renewer,
    warm_until: Instant,
    end: Instant,
) -> Result<(u64, Vec<u64>), String> {
    let channel = cp
        .channel(Some(&renewer.creds))
        .await
        .map_err(|e| format!("connect as {}: {e}", renewer.request.workload))?;
    let mut identity_client = IdentityClient::new(channel);
    let mut issued = 0;
    let mut latencies = Vec::new();
    loop {
        let start = Instant::now();
        if start >= end {
            break;
        }
        identity_client
            .certify(renewer.request.clone())
            .await
            .map_err(|e| format!("certify {}: {e}", renewer.request.workload))?;
        if start >= warm_until {
            issued += 1;
            let micros = Instant::now().duration_since(start).as_micros();
            latencies.push(u64::try_from(micros).unwrap_or(u64::MAX));
        }
    }
    Ok((issued, latencies))
}

async fn run(levels: &[usize]) -> Result<(), String> {
    let cp = TestControlPlane::start(&[("mesh.yaml", mesh().as_str())])
        .await
        .map_err(|e| format!("control plane: {e}"))?;
    let mut renewers = Vec::with_capacity(WORKLOADS);
    for i in 0..WORKLOADS {
        renewers.push(renewer(&cp, i).await?);
    }
    let cp = Arc::new(cp);
    let renewers = Arc::new(renewers);
    println!("| concurrent clients | leaves issued | per second | p50 ms | p99 ms |");
    println!("|---:|---:|---:|---:|---:|");
    for &level in levels {
        let warm_until = Instant::now() + Duration::from_secs(2) + WARM_UP;
        let end = warm_until + MEASURE;
        let mut tasks = JoinSet::new();
        for i in 0..level {
            let cp = cp.clone();
            let renewers = renewers.clone();
            tasks
                .spawn(async move { client(&cp, &renewers[i % WORKLOADS], warm_until, end).await });
        }
        let mut issued = 0;
        let mut latencies = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (n, l) = joined.map_err(|e| e.to_string())??;
            issued += n;
            latencies.extend(l);
        }
        latencies.sort_unstable();
        let pick = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .map_or(0.0, |us| *us as f64 / 1000.0)
        };
        println!(
            "| {level} | {issued} | {:.0} | {:.2} | {:.2} |",
            issued as f64 / MEASURE.as_secs_f64(),
            pick(0.5),
            pick(0.99)
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut levels: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .filter(|n| *n > 0)
        .collect();
    if levels.is_empty() {
        levels = vec![1, 8, 64];
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("issue bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&levels)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("issue bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}
