//! `palisade install`: prints the Kubernetes manifests of the mesh on stdout. Wiring only:
//! the key material is made (or read) here, the manifests come from
//! `palisade_injector::install::render`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use palisade_certs::{CaFiles, CaOptions, CertificateAuthority, TrustDomain};
use palisade_injector::install::{
    INJECTOR_SERVICE_HOST, InstallOptions, MeshCaPem, NAMESPACE, WebhookTlsPem,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Flags of `palisade install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Container image of the palisade binary for the control plane and the injector.
    #[arg(long, default_value = concat!("ghcr.io/palisade-mesh/palisade:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// Trust domain of workload identities (the mesh CA is made or checked for it).
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Use this mesh CA (as `palisade ca init --out DIR` writes it: ca-cert.pem, ca-key.pem,
    /// root-cert.pem, optional cert-chain.pem) instead of generating a new one.
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
}

/// Lifetime of the webhook CA made at install time.
const WEBHOOK_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of the injector's serving certificate. Long, because nothing rotates it but a new
/// `palisade install`, and an expired one stops pod creation in opted-in namespaces
/// (failurePolicy Fail); still well inside the webhook CA's.
const WEBHOOK_CERT_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Backdating, so API servers with a slightly late clock accept a fresh certificate.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Renders the manifests and prints them.
pub fn run(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let td = TrustDomain::new(&args.trust_domain)
        .with_context(|| format!("--trust-domain {:?}", args.trust_domain))?;
    let mesh_ca = match &args.ca_dir {
        Some(dir) => load_mesh_ca(dir, td)?,
        None => generate_mesh_ca(td)?,
    };
    let webhook_tls = webhook_tls().context("cannot create the injector's certificate")?;
    let yaml = palisade_injector::install::render(&InstallOptions {
        image: args.image,
        trust_domain: args.trust_domain,
        mesh_ca,
        webhook_tls,
    })?;
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(yaml.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// A new root and issuing CA, as `palisade ca init` makes them. The root key is dropped:
/// nothing in the cluster needs it (see the `palisade-ca` Secret's comment).
fn generate_mesh_ca(td: TrustDomain) -> anyhow::Result<MeshCaPem> {
    let (_, material) = CertificateAuthority::generate(td, &CaOptions::default())
        .context("cannot create the mesh CA")?;
    Ok(MeshCaPem {
        root_cert: material.root_cert_pem,
        ca_cert: material.ca_cert_pem,
        ca_key: material.ca_key_pem,
        cert_chain: material.cert_chain_pem,
    })
}

/// Reads a CA directory and checks it with the loader the control plane uses, so that a CA
/// the control plane would refuse is refused here, before it reaches a cluster.
fn load_mesh_ca(dir: &Path, td: TrustDomain) -> anyhow::Result<MeshCaPem> {
    let ca = crate::cmd::ca::load(dir, td.clone())?;
    let files = CaFiles::in_dir(dir);
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("--ca-dir: {}", path.display()))
    };
    let ca_cert = read(&files.ca_cert)?;
    // The Secret always carries cert-chain.pem; without one the chain is the issuing CA
    // alone, which the loader accepts (checked below).
    let cert_chain = match &files.cert_chain {
        Some(path) => read(path)?,
        None => ca_cert.clone(),
    };
    let pem = MeshCaPem {
        root_cert: read(&files.root_cert)?,
        ca_key: read(&files.ca_key)?,
        ca_cert,
        cert_chain,
    };
    CertificateAuthority::from_pem(
        td,
        &pem.ca_cert,
        &pem.ca_key,
        Some(&pem.cert_chain),
        &pem.root_cert,
    )
    .with_context(|| format!("--ca-dir {}", dir.display()))?;
    tracing::debug!(?ca, "mesh CA loaded");
    Ok(pem)
}

/// A webhook CA and the injector's serving certificate for
/// `palisade-injector.palisade-system.svc`, signed by it. The CA key is not returned: once
/// the serving certificate exists nothing needs it.
fn webhook_tls() -> Result<WebhookTlsPem, rcgen::Error> {
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - CLOCK_SKEW;
    let after = |d: Duration| now + d;

    let ca_key = KeyPair::generate_for(alg)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = names("Palisade injector webhook CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = after(WEBHOOK_CA_LIFETIME);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);

    let key = KeyPair::generate_for(alg)?;
    // The name the API server dials, plus the short form for tools inside the namespace.
    let mut leaf = CertificateParams::new(vec![
        INJECTOR_SERVICE_HOST.to_owned(),
        format!("palisade-injector.{NAMESPACE}"),
    ])?;
    leaf.distinguished_name = names(INJECTOR_SERVICE_HOST);
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = not_before;
    leaf.not_after = after(WEBHOOK_CERT_LIFETIME);
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(WebhookTlsPem {
        ca_cert: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn names(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Palisade");
    dn.push(DnType::CommonName, common_name);
    dn
}
