//! `palisade ca ...`: create a CA, show its state, issue a certificate by hand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use palisade_certs::{CaFiles, CaOptions, CertificateAuthority, SpiffeId, TrustDomain};

/// CA operations.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new root and intermediate CA in a directory (Istio plug-in CA file names).
    Init(InitArgs),
    /// Show the CA in a directory: roots and issuing CA with expiry.
    Status(StatusArgs),
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

/// Runs a `ca` subcommand.
pub fn run(command: CaCommand) -> anyhow::Result<ExitCode> {
    match command {
        CaCommand::Init(args) => init(args),
        CaCommand::Status(args) => status(args),
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
    let (_, material) = CertificateAuthority::generate(td, &CaOptions::default())?;
    // Files are created new (never through a link planted at their path); `--force` removes
    // the old ones first.
    if args.force {
        material.replace_in(&args.out)?;
    } else {
        material.write_to(&args.out)?;
    }
    println!("CA written to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

/// Loads the CA in `dir`, with errors naming the file.
pub fn load(dir: &std::path::Path, td: TrustDomain) -> anyhow::Result<CertificateAuthority> {
    if !dir.is_dir() {
        anyhow::bail!(
            "CA directory {} does not exist (create one with `palisade ca init --out {}`)",
            dir.display(),
            dir.display()
        );
    }
    Ok(CertificateAuthority::load(td, &CaFiles::in_dir(dir))?)
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let Some(dir) = &args.dir else {
        return control_plane_status(&args);
    };
    let ca = load(dir, trust_domain(&args.trust_domain)?)?;
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
    let p = &status.proxies;
    println!(
        "proxies: {} connected, {} not yet acknowledging the trust bundle sent to them",
        p.connected, p.trust_bundle_pending
    );
    for (version, count) in &p.trust_bundle_acked {
        println!("  trust bundle {version}: acknowledged by {count}");
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
