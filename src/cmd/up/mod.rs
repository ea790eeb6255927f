//! `palisade up [DIR] [--mode netns|loopback]`: the whole mesh on one machine. Control
//! plane, one sidecar per Workload, and the demo apps that Workloads name in
//! `palisade.dev/app`; prints a `curl` line into the mesh and stops everything cleanly on
//! Ctrl-C (SIGINT) or SIGTERM.
//!
//! - `netns` (the default as root, [`netns`]): one network namespace per workload with the
//!   capture rules of `palisade init`, so apps are reachable only through their sidecars.
//! - `loopback` ([`loopback`]): everything in this process, each workload on its own loopback
//!   address; apps are reachable directly.
//!
//! This module holds what both share: flags, loading the directory, the CA and tokens, the
//! state directory, and reading the mesh (apps, the entry point, names to addresses).

mod loopback;
mod netns;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use palisade_certs::{CaMaterial, CaOptions, CertificateAuthority};
use palisade_control_plane::model::Workload;
use palisade_control_plane::{MeshSnapshot, TokenStore};

/// Annotation naming the demo app `palisade up` runs for a workload.
const APP_ANNOTATION: &str = "palisade.dev/app";
/// Annotation marking the workload the printed curl line enters the mesh through, and the
/// URL it asks for.
const ENTRYPOINT_ANNOTATION: &str = "palisade.dev/entrypoint";
/// How long the mesh may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// `--mode loopback`'s default control plane gRPC address.
const LOOPBACK_CONTROL_PLANE: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15012);
/// `--mode loopback`'s default control plane admin address.
const LOOPBACK_CONTROL_PLANE_ADMIN: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15014);
/// `--mode netns`'s default `--port`.
const DEFAULT_FORWARD_PORT: u16 = 18080;

/// Flags of `palisade up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Directory of mesh YAML.
    #[arg(default_value = "examples/ecommerce")]
    pub dir: PathBuf,
    /// How workloads are run: `netns` (one network namespace per workload, traffic captured
    /// into its sidecar, so apps are reachable only through the mesh; needs root) or
    /// `loopback` (each workload on its own loopback address in this process; apps are
    /// reachable directly). [default: netns as root, else loopback]
    #[arg(long, value_enum, value_name = "MODE")]
    pub mode: Option<Mode>,
    /// --mode loopback: control plane gRPC address. [default: 127.0.0.1:15012]
    #[arg(long, value_name = "ADDR")]
    pub control_plane: Option<SocketAddr>,
    /// --mode loopback: control plane admin address. [default: 127.0.0.1:15014]
    #[arg(long, value_name = "ADDR")]
    pub control_plane_admin: Option<SocketAddr>,
    /// --mode netns: the port on 127.0.0.1 the printed curl line connects to; each
    /// connection is made again from inside the entry-point workload's network namespace,
    /// so its sidecar carries it into the mesh. [default: 18080]
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
}

/// How `palisade up` runs the workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One network namespace per workload, with real traffic capture (needs root).
    Netns,
    /// Each workload on its own loopback address; apps are reachable directly.
    Loopback,
}

/// Runs the mesh until Ctrl-C or SIGTERM.
pub fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    // The configuration first: a bad directory is refused before anything is made.
    let snapshot = load(&args.dir)?;
    let (mode, why) = choose_mode(args.mode)?;
    match mode {
        Mode::Netns => {
            if args.control_plane.is_some() || args.control_plane_admin.is_some() {
                anyhow::bail!(
                    "--control-plane and --control-plane-admin are for --mode loopback; \
                     in --mode netns the control plane listens on the node's address"
                );
            }
            netns::run(
                &args.dir,
                snapshot,
                args.port.unwrap_or(DEFAULT_FORWARD_PORT),
            )
        }
        Mode::Loopback => {
            if args.port.is_some() {
                anyhow::bail!("--port is for --mode netns");
            }
            loopback::run(
                loopback::Settings {
                    dir: args.dir,
                    control_plane: args.control_plane.unwrap_or(LOOPBACK_CONTROL_PLANE),
                    control_plane_admin: args
                        .control_plane_admin
                        .unwrap_or(LOOPBACK_CONTROL_PLANE_ADMIN),
                    default_because: why,
                },
                snapshot,
            )
        }
    }
}

/// The mode to run in, and why loopback was chosen when it was not asked for.
fn choose_mode(requested: Option<Mode>) -> anyhow::Result<(Mode, Option<&'static str>)> {
    let root = palisade_proxy::netns::is_root();
    let ip = palisade_proxy::netns::find_program(std::env::var_os("PATH").as_deref(), "ip");
    match requested {
        Some(Mode::Netns) if !root => anyhow::bail!(
            "--mode netns needs root (it makes network namespaces and iptables rules); \
             run it as root, or use --mode loopback"
        ),
        Some(Mode::Netns) if ip.is_none() => {
            anyhow::bail!("--mode netns needs the `ip` command (iproute2), which is not on PATH")
        }
        Some(mode) => Ok((mode, None)),
        None if !root => Ok((
            Mode::Loopback,
            Some("not root, and network namespaces need root"),
        )),
        None if ip.is_none() => Ok((Mode::Loopback, Some("no `ip` command (iproute2) on PATH"))),
        None => Ok((Mode::Netns, None)),
    }
}

/// Loads and validates the directory; it must hold at least one Workload.
fn load(dir: &Path) -> anyhow::Result<MeshSnapshot> {
    let snapshot = palisade_control_plane::load_dir(dir)?;
    if snapshot.workloads().len() == 0 {
        anyhow::bail!("{}: no Workload resources, nothing to run", dir.display());
    }
    Ok(snapshot)
}

/// A fresh CA for the mesh's trust domain and a bootstrap token per workload.
fn credentials(
    snapshot: &MeshSnapshot,
) -> anyhow::Result<(CertificateAuthority, CaMaterial, TokenStore)> {
    let trust_domain = snapshot.settings().trust_domain.clone();
    let (ca, material) = CertificateAuthority::generate(trust_domain, &CaOptions::default())?;
    let tokens = TokenStore::generate(snapshot.workloads())?;
    Ok((ca, material, tokens))
}

/// A directory for the CA and tokens of this run, removed when the mesh stops.
///
/// Made as `mkdtemp(3)` does, through `tempfile`: a new directory with an unpredictable name
/// (`palisade-up-<pid>-<random>`), created exclusively with `mode`, never one that existed;
/// so no other user can have placed files or symlinks in it beforehand. Its secret files
/// are created exclusively too ([`StateDir::write_new`], `CaMaterial::write_to`).
struct StateDir(tempfile::TempDir);

impl StateDir {
    const PREFIX: &str = "palisade-up-";

    /// A fresh directory in the system's temporary directory, with `mode`.
    fn create(mode: u32) -> anyhow::Result<Self> {
        Self::create_in(&std::env::temp_dir(), mode)
    }

    fn create_in(parent: &Path, mode: u32) -> anyhow::Result<Self> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}{}-", Self::PREFIX, std::process::id()))
            .permissions(std::fs::Permissions::from_mode(mode))
            .tempdir_in(parent)
            .with_context(|| format!("cannot create a state directory in {}", parent.display()))?;
        // The mode given at creation passed through the umask: set it exactly.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", dir.path().display()))?;
        let owner = std::fs::symlink_metadata(dir.path())
            .with_context(|| format!("cannot read {}", dir.path().display()))?
            .uid();
        Self::remove_stale(parent, owner);
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Creates `name` in the directory with `mode` and `contents`: refused if anything
    /// (a file, a symlink) is already there, so it is never written through a symlink.
    fn write_new(&self, name: &str, contents: &str, mode: u32) -> anyhow::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path().join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(contents.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// Writes the CA's files into a new `ca/` subdirectory (keys 0600, certificates 0644).
    fn write_ca(&self, material: &CaMaterial) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.path().join("ca");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // Every file created new (`CaMaterial::write_to`), never through a link.
        material.write_to(&dir)?;
        Ok(dir)
    }

    /// Writes the bootstrap tokens to a new `tokens` file, 0600.
    fn write_tokens(&self, tokens: &TokenStore) -> anyhow::Result<PathBuf> {
        self.write_new("tokens", &tokens.to_file_string(), 0o600)
    }

    /// Removes the directories of killed earlier runs (their pid is gone) owned by `owner`:
    /// their tokens are secrets of meshes that no longer run. Symlinks and other users'
    /// directories are left alone.
    fn remove_stale(temp: &Path, owner: u32) {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = std::fs::read_dir(temp) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            // `palisade-up-<pid>-<random>`, or `palisade-up-<pid>` from older versions.
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(Self::PREFIX))
                .map(|rest| rest.split_once('-').map_or(rest, |(pid, _)| pid))
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() && meta.uid() == owner && !palisade_proxy::netns::pid_alive(pid) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The demo app a workload runs, checked: its name and the port it listens on.
fn app_of(w: &Workload) -> anyhow::Result<Option<(&str, u16)>> {
    let Some(app) = w.annotations.get(APP_ANNOTATION) else {
        return Ok(None);
    };
    if !palisade_example_shop::APP_NAMES.contains(&app.as_str()) {
        anyhow::bail!(
            "Workload {}/{}: annotation {APP_ANNOTATION}: unknown app {app:?} (known: {})",
            w.namespace,
            w.name,
            palisade_example_shop::APP_NAMES.join(", ")
        );
    }
    let port = w.ports.first().map(|p| p.port).with_context(|| {
        format!(
            "Workload {}/{}: {APP_ANNOTATION} needs a port in spec.ports",
            w.namespace, w.name
        )
    })?;
    Ok(Some((app, port)))
}

/// Where the curl line enters the mesh and what it asks for: the workload annotated
/// `palisade.dev/entrypoint` and its URL; without one, the first workload and the first
/// Service's first port.
fn entrypoint(snapshot: &MeshSnapshot) -> Option<(&Workload, String)> {
    if let Some(found) = snapshot.workloads().find_map(|w| {
        w.annotations
            .get(ENTRYPOINT_ANNOTATION)
            .map(|url| (w, url.clone()))
    }) {
        return Some(found);
    }
    let first = snapshot.workloads().next()?;
    let url = snapshot
        .services()
        .next()
        .and_then(|s| {
            s.ports
                .first()
                .map(|p| format!("http://{}.{}:{}/", s.name, s.namespace, p.port))
        })
        .unwrap_or_else(|| "http://localhost/".into());
    Some((first, url))
}

/// Host and port of an `http://` URL (port 80 when not written).
fn url_authority(url: &str) -> anyhow::Result<(String, u16)> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("{ENTRYPOINT_ANNOTATION} {url:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        anyhow::bail!("{ENTRYPOINT_ANNOTATION} {url:?}: only http:// URLs are supported");
    }
    let host = uri
        .host()
        .with_context(|| format!("{ENTRYPOINT_ANNOTATION} {url:?} has no host"))?;
    Ok((host.to_owned(), uri.port_u16().unwrap_or(80)))
}

/// The address a client inside the mesh dials for `host:port`, as a cluster's DNS would
/// answer: the Service's cluster IP if it has one, else its first endpoint at the target
/// port; an IP literal is itself.
fn resolve(snapshot: &MeshSnapshot, host: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    snapshot.services().find_map(|s| {
        if !s.hostnames.contains(&host) {
            return None;
        }
        let service_port = s.ports.iter().find(|p| p.port == port)?;
        match s.cluster_ip {
            Some(ip) => Some(SocketAddr::new(ip, port)),
            None => s
                .endpoints
                .first()
                .map(|e| SocketAddr::new(e.address, service_port.target_port)),
        }
    })
}

/// [`resolve`] for a `host:port` authority.
fn resolve_authority(snapshot: &MeshSnapshot, authority: &str) -> anyhow::Result<SocketAddr> {
    let parsed: http::uri::Authority = authority
        .parse()
        .with_context(|| format!("{authority:?} is not host:port"))?;
    let port = parsed
        .port_u16()
        .with_context(|| format!("{authority:?} has no port"))?;
    resolve(snapshot, parsed.host(), port)
        .with_context(|| format!("{authority} is not a Service port of the mesh"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn the_state_directory_is_fresh_private_and_unpredictable() {
        let parent = tempfile::tempdir().unwrap();
        // Another local user prepares the name an older version used, as a symlink to a
        // directory of theirs, hoping the mesh's secrets land there.
        let theirs = parent.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        let predictable = parent
            .path()
            .join(format!("{}{}", StateDir::PREFIX, std::process::id()));
        std::os::unix::fs::symlink(&theirs, &predictable).unwrap();

        let a = StateDir::create_in(parent.path(), 0o700).unwrap();
        let b = StateDir::create_in(parent.path(), 0o700).unwrap();
        assert_ne!(a.path(), predictable);
        assert_ne!(a.path(), b.path(), "names are not predictable");
        assert!(!std::fs::symlink_metadata(a.path()).unwrap().is_symlink());
        assert_eq!(mode(a.path()), 0o700);
        assert_eq!(
            mode(&StateDir::create_in(parent.path(), 0o750).unwrap().0.keep()),
            0o750
        );
        a.write_tokens(&TokenStore::new()).unwrap();
        a.write_ca(
            &CertificateAuthority::generate(
                palisade_certs::TrustDomain::new("cluster.local").unwrap(),
                &CaOptions::default(),
            )
            .unwrap()
            .1,
        )
        .unwrap();
        assert_eq!(mode(&a.path().join("tokens")), 0o600);
        assert_eq!(mode(&a.path().join("ca")), 0o700);
        assert_eq!(mode(&a.path().join("ca/ca-key.pem")), 0o600);
        assert_eq!(mode(&a.path().join("ca/root-key.pem")), 0o600);
        // Nothing reached their directory, and their symlink was not followed or removed.
        assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);
        assert!(
            std::fs::symlink_metadata(&predictable)
                .unwrap()
                .is_symlink()
        );
    }

    #[test]
    fn secret_files_are_never_written_through_a_symlink() {
        let parent = tempfile::tempdir().unwrap();
        let state = StateDir::create_in(parent.path(), 0o700).unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), "theirs").unwrap();
        std::os::unix::fs::symlink(outside.path(), state.path().join("tokens")).unwrap();
        let err = state.write_tokens(&TokenStore::new()).unwrap_err();
        assert!(format!("{err:#}").contains("tokens"), "{err:#}");
        assert_eq!(std::fs::read_to_string(outside.path()).unwrap(), "theirs");
        // And a file is never replaced.
        state.write_new("once", "a", 0o600).unwrap();
        assert!(state.write_new("once", "b", 0o600).is_err());
    }

    fn shop() -> MeshSnapshot {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ecommerce");
        palisade_control_plane::load_dir(&dir).unwrap()
    }

    #[test]
    fn names_resolve_to_cluster_ips_then_endpoints() {
        let snapshot = shop();
        let search = resolve_authority(&snapshot, "search.shop:8080").unwrap();
        let expected = snapshot
            .service("shop", "search")
            .and_then(|s| s.cluster_ip)
            .map_or_else(
                || "127.0.1.2:8080".parse().unwrap(),
                |ip| SocketAddr::new(ip, 8080),
            );
        assert_eq!(search, expected);
        assert!(resolve_authority(&snapshot, "search.shop:9999").is_err());
        assert!(resolve_authority(&snapshot, "nothing.shop:8080").is_err());
        assert_eq!(
            resolve_authority(&snapshot, "10.1.2.3:80").unwrap(),
            "10.1.2.3:80".parse().unwrap()
        );
    }

    #[test]
    fn the_shop_enters_through_ingress() {
        let snapshot = shop();
        let (w, url) = entrypoint(&snapshot).unwrap();
        assert_eq!(w.name, "ingress");
        assert_eq!(
            url_authority(&url).unwrap(),
            ("frontend.shop".to_owned(), 8080)
        );
        assert!(url_authority("https://x/").is_err());
        assert_eq!(url_authority("http://x/").unwrap(), ("x".to_owned(), 80));
    }
}
