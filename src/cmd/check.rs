//! `palisade check`: validates a configuration directory, or (`--kubernetes`) what a cluster
//! holds, and explains each problem.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use palisade_control_plane::k8s::{KubernetesError, KubernetesSource};
use tokio_util::sync::CancellationToken;

/// Flags of `palisade check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Directory of mesh YAML to validate.
    #[arg(
        long,
        default_value = "examples/ecommerce",
        conflicts_with = "kubernetes"
    )]
    pub config: PathBuf,
    /// Check the cluster instead (KUBECONFIG, or the pod's service account): its resources
    /// as the control plane reads them, and pods opted in to the mesh running without a
    /// sidecar.
    #[arg(long)]
    pub kubernetes: bool,
    /// With --kubernetes: seconds to wait for the API server's listings.
    #[arg(long, default_value_t = 30)]
    pub kubernetes_sync_seconds: u64,
}

/// Prints every problem, one per line on stderr (warnings too, which keep exit 0); exit 1
/// if there is any error.
pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    if args.kubernetes {
        return check_cluster(Duration::from_secs(args.kubernetes_sync_seconds));
    }
    match palisade_control_plane::load_dir(&args.config) {
        Ok(snapshot) => {
            for w in snapshot.warnings() {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: valid ({} workloads, {} services, trust domain {})",
                args.config.display(),
                snapshot.workloads().len(),
                snapshot.services().len(),
                snapshot.settings().trust_domain
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in errors.iter() {
                eprintln!("error: {e}");
            }
            // The count goes to stdout: stderr holds exactly one line per problem (CONTRACT:
            // a user error is a one-line cause on stderr).
            println!("{}: {} problem(s)", args.config.display(), errors.len());
            Ok(ExitCode::from(1))
        }
    }
}

/// `--kubernetes`: the cluster's resources through the control plane's own source.
fn check_cluster(timeout: Duration) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let _stop = shutdown.clone().drop_guard();
        let source = KubernetesSource::infer().await?.start(timeout, shutdown).await;
        let source = match source {
            Ok(source) => source,
            Err(KubernetesError::Invalid(errors)) => {
                for e in errors.iter() {
                    eprintln!("error: {e}");
                }
                println!("cluster: {} problem(s)", errors.len());
                return Ok(ExitCode::from(1));
            }
            Err(other) => return Err(other.into()),
        };
        let snapshot = source.initial();
        for w in snapshot.warnings() {
            eprintln!("warning: {w}");
        }
        for pod in source.unmeshed_pods() {
            let (namespace, name) = pod.split_once('/').unwrap_or(("", pod));
            eprintln!(
                "error: pod {pod} is opted in to the mesh but runs without a sidecar, so its \
                 traffic is not enforced; fix: kubectl delete pod -n {namespace} {name} (its \
                 controller recreates it through the injector)"
            );
        }
        println!(
            "cluster: {} workloads, {} services, trust domain {}; {} opted-in pod(s) without a sidecar",
            snapshot.workloads().len(),
            snapshot.services().len(),
            snapshot.settings().trust_domain,
            source.unmeshed_pods().len()
        );
        Ok(if source.unmeshed_pods().is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}
