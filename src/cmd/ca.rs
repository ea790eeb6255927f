//! `palisade ca ...`: create a CA, show its state, issue a certificate by hand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use std::sync::Arc;

use palisade_certs::{ActiveCa, CaOptions, CaState, CertificateAuthority, SpiffeId, TrustDomain};

/// CA operations.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new root and intermediate CA in a directory (Istio plug-in CA file names).
    Init(InitArgs),
    /// Show the CA in a directory or of a running control plane: roots and issuing CA with
    /// expiry, the rotation stage, and which CA the connected workloads' certificates come from.
    Status(StatusArgs),
    /// Rotate to a new CA in three stages (trust the new root; issue from the new CA and have
    /// every proxy renew; drop the old root), each waiting for every connected proxy.
    /// Interrupted, it resumes where it stopped when run again.
    Rotate(RotateArgs),
    /// Issue a workload certificate and key (for static proxies and tests).
    Issue(IssueArgs),
}

/// Flags of `ca init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to write root-cert.pem, root-key.pem, ca-cert.pem, ca-key.pem, cert-chain.pem.
    #[arg(long)]
    pub out: PathBuf,
    /// Trust domain the CA issues for.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Overwrite an existing CA in the directory.
    #[arg(long)]
    pub force: bool,
}

/// Flags of `ca status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// CA directory.
    #[arg(
        long,
        required_unless_present = "control_plane",
        conflicts_with = "control_plane"
    )]
    pub dir: Option<PathBuf>,
    /// A running control plane's admin address (host:port, e.g. 127.0.0.1:15014): its CA and
    /// the trust bundle versions its connected proxies have acknowledged.
    #[arg(long)]
    pub control_plane: Option<std::net::SocketAddr>,
    /// Print the control plane's answer as JSON (with --control-plane).
    #[arg(long, requires = "control_plane")]
    pub json: bool,
    /// Trust domain.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
}

/// Flags of `ca rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The CA directory the control planes serve (`--ca-dir`).
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    pub dir: Option<PathBuf>,
    /// Keep the rotation in the cluster's CA Secret (see --secret), which the control plane
    /// replicas mount as their CA directory; through KUBECONFIG or the pod's service account.
    #[arg(long)]
    pub kubernetes: bool,
    /// With --kubernetes: the CA Secret, NAMESPACE/NAME.
    #[arg(
        long,
        default_value = "palisade-system/palisade-ca",
        requires = "kubernetes"
    )]
    pub secret: String,
    /// The CA to rotate to: a directory with ca-cert.pem, ca-key.pem, root-cert.pem and
    /// optionally cert-chain.pem (`palisade ca init --out`, openssl, cert-manager). Without
    /// it, a rotation in progress is resumed.
    #[arg(long, conflicts_with_all = ["status", "abort"])]
    pub new: Option<PathBuf>,
    /// Admin addresses of every control plane serving the directory, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:15014")]
    pub control_plane: Vec<std::net::SocketAddr>,
    /// Trust domain.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Longest wait for one stage (seconds); running again resumes.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub stage_timeout_seconds: u64,
    /// Remove the old root even while workloads still hold certificates chaining to it
    /// (after the stage timeout; their names are printed).
    #[arg(long)]
    pub force: bool,
    /// Only print the rotation recorded in the directory.
    #[arg(long, conflicts_with = "abort")]
    pub status: bool,
    /// Abandon a rotation still at stage 1.
    #[arg(long)]
    pub abort: bool,
}

/// Flags of `ca issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// CA directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// The SPIFFE ID to issue for.
    #[arg(long)]
    pub spiffe_id: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 86_400)]
    pub lifetime_seconds: u64,
    /// Where to write the certificate chain (leaf first), PEM.
    #[arg(long)]
    pub cert: PathBuf,
    /// Where to write the private key, PEM (mode 0600).
    #[arg(long)]
    pub key: PathBuf,
}

/// The Secret manifest `ca init` writes beside the files.
const SECRET_FILE: &str = "palisade-ca.yaml";

/// Runs a `ca` subcommand.
pub fn run(command: CaCommand) -> anyhow::Result<ExitCode> {
    match command {
        CaCommand::Init(args) => init(args),
        CaCommand::Status(args) => status(args),
        CaCommand::Rotate(args) => crate::cmd::ca_rotate::run(args),
        CaCommand::Issue(args) => issue(args),
    }
}

fn trust_domain(name: &str) -> anyhow::Result<TrustDomain> {
    TrustDomain::new(name).with_context(|| format!("--trust-domain {name:?}"))
}

fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let td = trust_domain(&args.trust_domain)?;
    let existing = args.out.join("ca-key.pem");
    // `symlink_metadata`: a link at the key path counts, dangling or not.
    if existing.symlink_metadata().is_ok() && !args.force {
        anyhow::bail!(
            "{} already holds a CA (ca-key.pem exists); pass --force to replace it",
            args.out.display()
        );
    }
    let (_, material) = CertificateAuthority::generate(td.clone(), &CaOptions::default())?;
    // Files are created new (never through a link planted at their path); `--force` removes
    // the old ones first.
    if args.force {
        material.replace_in(&args.out)?;
    } else {
        material.write_to(&args.out)?;
    }
    // The same CA as a Secret and trust anchors ConfigMap, for a cluster install.
    let secret = palisade_injector::install::render_mesh_ca(
        td.as_str(),
        &palisade_injector::install::MeshCaPem {
            root_cert: material.root_cert_pem.clone(),
            ca_cert: material.ca_cert_pem.clone(),
            ca_key: material.ca_key_pem.clone(),
            cert_chain: material.cert_chain_pem.clone(),
        },
    )?;
    // Replaced whole through a new file (never through a link planted at its path), 0600.
    palisade_certs::rotation::apply_to_dir(
        &args.out,
        &[palisade_certs::rotation::Change::Write {
            name: SECRET_FILE.to_owned(),
            contents: secret,
            secret: true,
        }],
    )?;
    let secret_path = args.out.join(SECRET_FILE);
    println!(
        "CA written to {} (and as a Kubernetes Secret in {})",
        args.out.display(),
        secret_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Loads the CA in `dir` as a control plane serves it (during a rotation, as its stage
/// says), with errors naming the file.
pub fn load_active(dir: &std::path::Path, td: &TrustDomain) -> anyhow::Result<ActiveCa> {
    Ok(CaState::read_dir(dir)?.active(td)?)
}

/// The issuing CA in `dir` (during a rotation, the one in force).
pub fn load(dir: &std::path::Path, td: TrustDomain) -> anyhow::Result<Arc<CertificateAuthority>> {
    Ok(load_active(dir, &td)?.ca)
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let Some(dir) = &args.dir else {
        return control_plane_status(&args);
    };
    let active = load_active(dir, &trust_domain(&args.trust_domain)?)?;
    let ca = &active.ca;
    let now = palisade_certs::ca::fmt_unix(time_now());
    println!("trust domain: {}   (now {now})", ca.trust_domain());
    for (i, root) in ca.bundle().roots().iter().enumerate() {
        let info = palisade_certs::svid::inspect(root.as_ref())?;
        println!(
            "root {i}: {}  expires {}",
            info.subject,
            palisade_certs::ca::fmt_unix(info.not_after)
        );
    }
    for cert in ca.chain() {
        let info = palisade_certs::svid::inspect(cert.as_ref())?;
        println!(
            "issuing: {}  expires {}",
            info.subject,
            palisade_certs::ca::fmt_unix(info.not_after)
        );
    }
    println!("issuer fingerprint: {}", ca.issuer_fingerprint());
    match &active.rotation {
        Some(record) => println!(
            "rotation: {}",
            palisade_control_plane::rotate::describe(record)
        ),
        None => println!("rotation: none in progress"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `ca status --control-plane`: what a running control plane reports on `/ca`.
fn control_plane_status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let addr = args
        .control_plane
        .context("--dir or --control-plane is required")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let status = runtime.block_on(palisade_control_plane::ca_status::fetch(addr))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    let days = |seconds: i64| seconds.div_euclid(86_400);
    println!(
        "trust domain: {}   (control plane {addr})",
        status.trust_domain
    );
    for (i, root) in status.roots.iter().enumerate() {
        println!(
            "root {i}: {}  expires {} ({} days)",
            root.subject,
            root.not_after,
            days(root.expires_in_seconds)
        );
    }
    for cert in &status.intermediates {
        println!(
            "issuing: {}  expires {} ({} days)",
            cert.subject,
            cert.not_after,
            days(cert.expires_in_seconds)
        );
    }
    println!("issuer fingerprint: {}", status.issuer_fingerprint);
    match &status.rotation {
        Some(r) => println!(
            "rotation: stage {}/3 ({}), started {}, issuer {} -> {}",
            r.stage_number,
            r.stage,
            r.started,
            palisade_certs::rotation::short(&r.old_issuer),
            palisade_certs::rotation::short(&r.new_issuer)
        ),
        None => println!("rotation: none in progress"),
    }
    let p = &status.proxies;
    println!(
        "proxies: {} connected, {} not yet acknowledging the trust bundle sent to them",
        p.connected, p.trust_bundle_pending
    );
    for (version, count) in &p.trust_bundle_acked {
        let current = if *version == status.trust_bundle_version {
            " (current)"
        } else {
            ""
        };
        println!("  trust bundle {version}{current}: acknowledged by {count}");
    }
    for (issuer, count) in &p.leaves_by_issuer {
        let rotation = status.rotation.as_ref();
        let which = if rotation.is_some_and(|r| r.old_issuer == *issuer) {
            " (the old CA: chains to the root being retired)"
        } else if rotation.is_some_and(|r| r.new_issuer == *issuer) {
            " (the new CA: chains to the new root)"
        } else if *issuer == status.issuer_fingerprint {
            " (the current CA)"
        } else {
            ""
        };
        println!(
            "  certificates from issuer {}{which}: {count}",
            palisade_certs::rotation::short(issuer)
        );
    }
    if !p.not_on_current_issuer.is_empty() {
        println!(
            "  not yet renewed from the current issuer: {}",
            p.not_on_current_issuer.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn issue(args: IssueArgs) -> anyhow::Result<ExitCode> {
    let id = SpiffeId::parse(&args.spiffe_id).with_context(|| "--spiffe-id")?;
    let td = trust_domain(id.trust_domain())?;
    let ca = load(&args.dir, td)?;
    let (leaf, key) = ca.issue(&id, Duration::from_secs(args.lifetime_seconds))?;
    let chain = palisade_certs::ca::chain_to_pem(&leaf.leaf, &leaf.chain);
    std::fs::write(&args.cert, chain).with_context(|| format!("{}", args.cert.display()))?;
    write_secret(&args.key, &key.private_key_pem())?;
    println!(
        "issued {} until {}",
        id,
        palisade_certs::ca::fmt_unix(leaf.not_after)
    );
    Ok(ExitCode::SUCCESS)
}

fn write_secret(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .with_context(|| format!("{}", path.display()))
}
