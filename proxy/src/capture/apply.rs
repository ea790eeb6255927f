//! The thin layer that runs the iptables binaries, Istio-init style: one
//! `*-restore --noflush` batch per family (never rule by rule), checked afterwards with
//! `*-save`. Before anything changes, the tables Palisade touches are saved (`*-save -c`) for
//! every family; on any failure every family already touched is restored from its snapshot,
//! so a namespace never holds half a rule set.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::save::{self, Dump, FamilyStatus};
use super::{Batch, CaptureConfig, IpFamily, Ipv6Unavailable, RuleSet, Table};

/// Bound on one iptables run. Restores wait at most [`LOCK_WAIT_SECS`] for the xtables lock,
/// so this is only reached by a hung binary.
const RUN_LIMIT: Duration = Duration::from_secs(30);
/// How long a legacy restore waits for the machine-wide xtables lock (shared by every
/// namespace) instead of failing at once when another restore holds it.
const LOCK_WAIT_SECS: &str = "10";

/// Which iptables implementation writes the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `iptables-nft` (nf_tables kernel API).
    Nft,
    /// `iptables-legacy` (x_tables kernel API).
    Legacy,
}

impl Backend {
    /// `nft` or `legacy`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    /// The binary name, e.g. `ip6tables-legacy-restore`.
    pub fn binary(self, family: IpFamily, tool: Tool) -> String {
        format!("{}-{}-{}", family.tool(), self.name(), tool.name())
    }
}

/// The two iptables programs Palisade runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `*-save`.
    Save,
    /// `*-restore`.
    Restore,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Save => "save",
            Tool::Restore => "restore",
        }
    }
}

/// Why installing, removing or reading the rules failed. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A binary the chosen back end needs is not on PATH.
    #[error("{binary} not found on PATH")]
    NotFound {
        /// The binary's name.
        binary: String,
    },
    /// Neither back end is installed.
    #[error("no iptables found on PATH: neither iptables-nft-restore nor iptables-legacy-restore")]
    NoIptables,
    /// `--ipv6 on` without IPv6.
    #[error(transparent)]
    Ipv6(#[from] Ipv6Unavailable),
    /// iptables refused for lack of privileges.
    #[error(
        "permission denied: {binary} needs root (CAP_NET_ADMIN) in the pod's network namespace: {message}"
    )]
    PermissionDenied {
        /// The binary.
        binary: String,
        /// What it said.
        message: String,
    },
    /// `*-restore` refused one line of a batch.
    #[error("{binary} refused line {line} of the {family} batch ({text}): {message}")]
    Refused {
        /// The binary.
        binary: String,
        /// The family of the batch.
        family: IpFamily,
        /// The 1-based line it named.
        line: usize,
        /// That line of the batch (the rule), or a note when it is the table's COMMIT.
        text: String,
        /// What it said.
        message: String,
    },
    /// A binary failed in another way.
    #[error("{binary} failed ({status}): {message}")]
    Failed {
        /// The binary.
        binary: String,
        /// Exit status.
        status: String,
        /// What it said.
        message: String,
    },
    /// A binary did not finish in time.
    #[error("{binary} did not finish within {limit:?}")]
    Timeout {
        /// The binary.
        binary: String,
        /// The bound.
        limit: Duration,
    },
    /// A binary could not be started.
    #[error("cannot run {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// Why.
        source: std::io::Error,
    },
    /// `*-save` printed something unexpected.
    #[error("{binary}: {source}")]
    Parse {
        /// The binary.
        binary: String,
        /// The bad line.
        source: save::SaveParseError,
    },
    /// After a restore, the saved rules are not what was applied.
    #[error("after applying, {binary} shows {detail}")]
    Verify {
        /// The save binary.
        binary: String,
        /// What differs.
        detail: String,
    },
    /// A failure, then a failed rollback: the namespace may hold part of the change.
    #[error("{cause}; rolling back also failed, the namespace may be changed: {rollback}")]
    RollbackFailed {
        /// The first failure.
        cause: Box<CaptureError>,
        /// Why the rollback failed.
        rollback: Box<CaptureError>,
    },
}

/// Where to find binaries and whether the namespace has IPv6: read once at the edge.
#[derive(Debug, Clone)]
pub struct System {
    path: Option<OsString>,
    if_inet6: PathBuf,
}

impl System {
    /// `path` is the value of PATH (`None`: unset, nothing is found).
    pub fn new(path: Option<OsString>) -> Self {
        Self {
            path,
            if_inet6: PathBuf::from("/proc/net/if_inet6"),
        }
    }

    /// Whether this network namespace has IPv6.
    pub fn ipv6_available(&self) -> bool {
        self.if_inet6.exists()
    }

    /// The first executable file called `name` in PATH.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        let path = self.path.as_ref()?;
        std::env::split_paths(path)
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The save and restore binaries of one back end and family.
#[derive(Debug, Clone)]
struct Tools {
    backend: Backend,
    family: IpFamily,
    save: PathBuf,
    restore: PathBuf,
}

impl Tools {
    fn find(system: &System, backend: Backend, family: IpFamily) -> Result<Self, CaptureError> {
        let find = |tool| {
            let binary = backend.binary(family, tool);
            system
                .find(&binary)
                .ok_or(CaptureError::NotFound { binary })
        };
        Ok(Self {
            backend,
            family,
            restore: find(Tool::Restore)?,
            save: find(Tool::Save)?,
        })
    }

    fn name(path: &Path) -> String {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string())
    }

    /// `*-save -c`, parsed.
    async fn save(&self) -> Result<Dump, CaptureError> {
        save_dump(&self.save).await
    }

    /// `*-restore --noflush` with `batch`; a refused line is named.
    async fn apply(&self, batch: &Batch) -> Result<(), CaptureError> {
        let out = run(
            &self.restore,
            &["-w", LOCK_WAIT_SECS, "--noflush"],
            Some(&batch.text()),
        )
        .await?;
        if out.status.success() {
            return Ok(());
        }
        Err(failure(
            &Self::name(&self.restore),
            &out,
            Some((self.family, batch)),
        ))
    }

    /// `*-restore -c` (flushing the tables in `text`): puts a snapshot back, counters too.
    async fn restore_snapshot(&self, text: &str) -> Result<(), CaptureError> {
        let out = run(&self.restore, &["-w", LOCK_WAIT_SECS, "-c"], Some(text)).await?;
        if out.status.success() {
            return Ok(());
        }
        Err(failure(&Self::name(&self.restore), &out, None))
    }
}

/// Runs the save binary at `path` with `-c` and parses its output.
async fn save_dump(path: &Path) -> Result<Dump, CaptureError> {
    let binary = Tools::name(path);
    let out = run(path, &["-c"], None).await?;
    if !out.status.success() {
        return Err(failure(&binary, &out, None));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    save::parse(&text).map_err(|source| CaptureError::Parse { binary, source })
}

async fn run(
    program: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<std::process::Output, CaptureError> {
    let binary = Tools::name(program);
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CaptureError::Spawn {
            binary: binary.clone(),
            source,
        })?;
    let input = stdin.map(str::to_owned);
    let mut pipe = child.stdin.take();
    let work = async move {
        if let (Some(pipe), Some(input)) = (pipe.as_mut(), input) {
            // A binary that exits early closes its end; its exit status tells why.
            let _ = pipe.write_all(input.as_bytes()).await;
        }
        drop(pipe);
        child.wait_with_output().await
    };
    match tokio::time::timeout(RUN_LIMIT, work).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(source)) => Err(CaptureError::Spawn { binary, source }),
        Err(_) => Err(CaptureError::Timeout {
            binary,
            limit: RUN_LIMIT,
        }),
    }
}

/// What a failed binary said, on one line (the usage hint left out).
fn message(stderr: &str) -> String {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Try `"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Classifies a failed run: no privileges, a refused batch line, or anything else.
fn failure(
    binary: &str,
    out: &std::process::Output,
    batch: Option<(IpFamily, &Batch)>,
) -> CaptureError {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = message(&stderr);
    if stderr.contains("Permission denied") || stderr.contains("must be root") {
        return CaptureError::PermissionDenied {
            binary: binary.to_owned(),
            message: text,
        };
    }
    if let Some((family, batch)) = batch
        && let Some(line) = save::failed_line(&stderr)
    {
        let rule = match batch.line(line) {
            // nf_tables reports errors found at commit time on the COMMIT line itself.
            Some("COMMIT") => {
                let table = (1..line)
                    .rev()
                    .filter_map(|n| batch.line(n))
                    .find_map(|l| l.strip_prefix('*'))
                    .unwrap_or("?");
                format!("the COMMIT of table {table}")
            }
            Some(rule) => rule.to_owned(),
            None => "past the end of the batch".to_owned(),
        };
        return CaptureError::Refused {
            binary: binary.to_owned(),
            family,
            line,
            text: rule,
            message: text,
        };
    }
    CaptureError::Failed {
        binary: binary.to_owned(),
        status: out
            .status
            .code()
            .map_or_else(|| "killed".to_owned(), |c| format!("exit status {c}")),
        message: text,
    }
}

/// The back end to install with: the chosen one, else legacy if the legacy tables already
/// hold rules in this namespace (two back ends in one namespace would fight), else nft if its
/// binaries exist, else legacy.
async fn detect(
    system: &System,
    chosen: Option<Backend>,
    families: &[IpFamily],
) -> Result<Backend, CaptureError> {
    if let Some(backend) = chosen {
        return Ok(backend);
    }
    for family in families {
        // Plain `*-legacy-save` lists only tables that exist: it creates nothing (`-t TABLE`
        // would load, and so create, the table).
        let Some(save) = system.find(&Backend::Legacy.binary(*family, Tool::Save)) else {
            continue;
        };
        match save_dump(&save).await {
            Ok(dump) if dump.has_rules() => return Ok(Backend::Legacy),
            Ok(_) => {}
            Err(e @ CaptureError::PermissionDenied { .. }) => return Err(e),
            // A kernel without x_tables cannot hold legacy rules: nothing to defer to.
            Err(_) => {}
        }
    }
    let nft = Backend::Nft.binary(IpFamily::V4, Tool::Restore);
    let legacy = Backend::Legacy.binary(IpFamily::V4, Tool::Restore);
    match (system.find(&nft), system.find(&legacy)) {
        (Some(_), _) => Ok(Backend::Nft),
        (None, Some(_)) => Ok(Backend::Legacy),
        (None, None) => Err(CaptureError::NoIptables),
    }
}

/// What [`install`] did.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The back end used.
    pub backend: Backend,
    /// Rules installed per family (jumps included).
    pub rules: Vec<(IpFamily, usize)>,
}

/// One family's state before a change, to put back on failure.
struct Snapshot {
    tools: Tools,
    dump: Dump,
}

/// Installs the rule set of `config` for every family: snapshot, one batch per family,
/// verify; on any failure the snapshots are restored and the first failure is returned.
pub async fn install(config: &CaptureConfig, system: &System) -> Result<Installed, CaptureError> {
    let families = super::families(config.ipv6, system.ipv6_available())?;
    let backend = detect(system, config.backend, &families).await?;
    let tools = families
        .iter()
        .map(|f| Tools::find(system, backend, *f))
        .collect::<Result<Vec<_>, _>>()?;

    let mut snapshots = Vec::new();
    for t in tools {
        let dump = t.save().await?;
        snapshots.push(Snapshot { tools: t, dump });
    }

    let mut installed = Vec::new();
    for (done, snapshot) in snapshots.iter().enumerate() {
        let rules = super::rules(config, snapshot.tools.family);
        let batch = rules.batch(&snapshot.dump);
        if let Err(e) = snapshot.tools.apply(&batch).await {
            // A failed restore may have committed earlier tables (legacy commits per table).
            return Err(rollback(&snapshots[..=done], e).await);
        }
        installed.push((snapshot.tools.family, rules));
    }

    for (snapshot, (_, rules)) in snapshots.iter().zip(&installed) {
        let check = match snapshot.tools.save().await {
            Ok(now) => verify(rules, &now).map_err(|detail| CaptureError::Verify {
                binary: Tools::name(&snapshot.tools.save),
                detail,
            }),
            Err(e) => Err(e),
        };
        if let Err(e) = check {
            return Err(rollback(&snapshots, e).await);
        }
    }

    Ok(Installed {
        backend,
        rules: installed
            .iter()
            .map(|(f, r)| (*f, r.rule_count()))
            .collect(),
    })
}

/// Checks that the saved state holds the rule set: every Palisade chain with exactly the
/// expected rules (compared by comment and count, which survive the canonical rewriting
/// `*-save` does), and each jump exactly once.
fn verify(rules: &RuleSet, now: &Dump) -> Result<(), String> {
    for table in &rules.tables {
        let name = table.table.name();
        let saved = now.table(name).ok_or_else(|| format!("no {name} table"))?;
        for chain in &table.chains {
            if !saved.has_chain(chain) {
                return Err(format!("no chain {chain} in table {name}"));
            }
            let expected: Vec<&str> = table
                .rules
                .iter()
                .filter(|r| r.chain == *chain)
                .map(|r| r.comment.as_str())
                .collect();
            let found: Vec<&str> = saved
                .rules_of(chain)
                .map(|r| r.comment.as_deref().unwrap_or("(no comment)"))
                .collect();
            if expected != found {
                return Err(format!(
                    "chain {chain} in table {name} holding {} rules ({}) instead of {} ({})",
                    found.len(),
                    found.join(", "),
                    expected.len(),
                    expected.join(", ")
                ));
            }
        }
        for jump in &table.jumps {
            let count = saved
                .rules_of(jump.chain)
                .filter(|r| r.comment.as_deref() == Some(jump.comment.as_str()))
                .count();
            if count != 1 {
                return Err(format!(
                    "{count} jumps \"{}\" in chain {} of table {name} instead of 1",
                    jump.comment, jump.chain
                ));
            }
        }
    }
    Ok(())
}

/// Puts every snapshot back; returns `cause`, or both failures if the rollback failed too.
async fn rollback(snapshots: &[Snapshot], cause: CaptureError) -> CaptureError {
    let mut first_failure = None;
    for snapshot in snapshots {
        if let Err(e) = restore(snapshot).await
            && first_failure.is_none()
        {
            first_failure = Some(e);
        }
    }
    match first_failure {
        None => cause,
        Some(rollback) => CaptureError::RollbackFailed {
            cause: Box::new(cause),
            rollback: Box::new(rollback),
        },
    }
}

/// Restores one family's snapshot: tables that existed are restored whole (a restore without
/// `--noflush` replaces every chain and rule of the tables it names, counters included);
/// from tables that did not exist, Palisade's jumps and chains are taken out. (Such a table
/// then exists empty: iptables has no command that deletes a table.)
async fn restore(snapshot: &Snapshot) -> Result<(), CaptureError> {
    let present: Vec<Table> = Table::ALL
        .into_iter()
        .filter(|t| snapshot.dump.table(t.name()).is_some())
        .collect();
    let absent: Vec<Table> = Table::ALL
        .into_iter()
        .filter(|t| !present.contains(t))
        .collect();
    if !absent.is_empty() {
        let now = snapshot.tools.save().await?;
        if let Some(batch) = super::removal_batch_for(&now, &absent) {
            snapshot.tools.apply(&batch).await?;
        }
    }
    if !present.is_empty() {
        snapshot
            .tools
            .restore_snapshot(&snapshot.dump.restore_text(&present))
            .await?;
    }
    Ok(())
}

/// The back ends and families that hold Palisade's rules now, with their saved state. With
/// a chosen back end only that one is read (its binaries must exist); otherwise every back
/// end whose binaries are on PATH is read, so rules installed by either are found.
async fn installed_state(
    config: &CaptureConfig,
    system: &System,
) -> Result<Vec<Snapshot>, CaptureError> {
    let families = super::families(config.ipv6, system.ipv6_available())?;
    let backends: Vec<Backend> = match config.backend {
        Some(b) => vec![b],
        None => [Backend::Nft, Backend::Legacy]
            .into_iter()
            .filter(|b| {
                families.iter().any(|f| {
                    system.find(&b.binary(*f, Tool::Restore)).is_some()
                        && system.find(&b.binary(*f, Tool::Save)).is_some()
                })
            })
            .collect(),
    };
    if backends.is_empty() {
        return Err(CaptureError::NoIptables);
    }
    let mut found = Vec::new();
    for backend in backends {
        for family in &families {
            let tools = match Tools::find(system, backend, *family) {
                Ok(t) => t,
                Err(e) if config.backend.is_some() => return Err(e),
                // Detecting: a back end without this family's binaries holds nothing here.
                Err(_) => continue,
            };
            let dump = match tools.save().await {
                Ok(dump) => dump,
                Err(e) if config.backend.is_some() => return Err(e),
                Err(e @ CaptureError::PermissionDenied { .. }) => return Err(e),
                // Detecting: a back end the kernel cannot run holds nothing here.
                Err(_) => continue,
            };
            if dump.has_palisade() {
                found.push(Snapshot { tools, dump });
            }
        }
    }
    Ok(found)
}

/// What [`remove`] did.
#[derive(Debug, Clone)]
pub struct Removed {
    /// The back ends and families it took rules out of (empty: nothing was installed).
    pub from: Vec<(Backend, IpFamily)>,
}

/// Takes out every jump and chain Palisade added (jumps first, then flush and delete the
/// chains) and nothing else; nothing installed is a success. On failure the snapshots are
/// restored.
pub async fn remove(config: &CaptureConfig, system: &System) -> Result<Removed, CaptureError> {
    let snapshots = installed_state(config, system).await?;
    for (done, snapshot) in snapshots.iter().enumerate() {
        if let Some(batch) = super::removal_batch(&snapshot.dump)
            && let Err(e) = snapshot.tools.apply(&batch).await
        {
            return Err(rollback(&snapshots[..=done], e).await);
        }
    }
    for snapshot in &snapshots {
        let check = match snapshot.tools.save().await {
            Ok(now) if now.has_palisade() => Err(CaptureError::Verify {
                binary: Tools::name(&snapshot.tools.save),
                detail: "Palisade's rules still present".to_owned(),
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = check {
            return Err(rollback(&snapshots, e).await);
        }
    }
    Ok(Removed {
        from: snapshots
            .iter()
            .map(|s| (s.tools.backend, s.tools.family))
            .collect(),
    })
}

/// What is installed, per back end and family, with counters (empty: not installed).
pub async fn status(
    config: &CaptureConfig,
    system: &System,
) -> Result<Vec<FamilyStatus>, CaptureError> {
    Ok(installed_state(config, system)
        .await?
        .into_iter()
        .map(|s| FamilyStatus {
            family: s.tools.family,
            backend: s.tools.backend.name(),
            dump: s.dump,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(code: i32, stderr: &str) -> std::process::Output {
        use std::os::unix::process::ExitStatusExt;
        std::process::Output {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    fn batch() -> Batch {
        super::super::rules(&CaptureConfig::default(), IpFamily::V4).fresh_batch()
    }

    #[test]
    fn a_refused_line_names_the_rule_of_the_batch() {
        let batch = batch();
        let e = failure(
            "iptables-nft-restore",
            &output(
                4,
                "iptables-nft-restore v1.8.9 (nf_tables): \nline 4: RULE_APPEND failed (Invalid argument): rule in chain PALISADE_INBOUND\n",
            ),
            Some((IpFamily::V4, &batch)),
        );
        let text = e.to_string();
        assert!(matches!(e, CaptureError::Refused { line: 4, .. }), "{text}");
        assert!(
            text.contains(batch.line(4).unwrap()) && text.contains("RULE_APPEND failed"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn an_error_at_commit_names_the_table() {
        let batch = batch();
        let commit = (1..=batch.len())
            .find(|n| batch.line(*n) == Some("COMMIT"))
            .unwrap();
        let e = failure(
            "iptables-legacy-restore",
            &output(1, &format!("iptables-restore: line {commit} failed\n")),
            Some((IpFamily::V4, &batch)),
        );
        assert!(e.to_string().contains("the COMMIT of table nat"), "{e}");
    }

    #[test]
    fn permission_errors_are_recognised_before_line_numbers() {
        let e = failure(
            "iptables-nft-save",
            &output(
                4,
                "iptables-nft-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)\n",
            ),
            None,
        );
        assert!(matches!(e, CaptureError::PermissionDenied { .. }), "{e}");
        assert!(e.to_string().starts_with("permission denied"), "{e}");
    }

    #[test]
    fn other_failures_keep_the_message_on_one_line() {
        let e = failure(
            "iptables-nft-restore",
            &output(
                2,
                "iptables-nft-restore v1.8.9 (nf_tables): Couldn't load match `foo'\n\nTry `iptables-nft-restore -h' for more information.\n",
            ),
            None,
        );
        let text = e.to_string();
        assert!(
            text.contains("exit status 2") && !text.contains("Try"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn binary_names_follow_family_and_backend() {
        assert_eq!(
            Backend::Nft.binary(IpFamily::V6, Tool::Restore),
            "ip6tables-nft-restore"
        );
        assert_eq!(
            Backend::Legacy.binary(IpFamily::V4, Tool::Save),
            "iptables-legacy-save"
        );
    }

    #[test]
    fn verify_accepts_the_rule_set_and_names_a_missing_rule() {
        let rules = super::super::rules(&CaptureConfig::default(), IpFamily::V4);
        // What `*-save` prints after the fresh batch: the same rules, jumps as -A.
        let mut text = String::new();
        for table in &rules.tables {
            text.push_str(&format!("*{}\n", table.table.name()));
            for chain in &table.chains {
                text.push_str(&format!(":{chain} - [0:0]\n"));
            }
            for rule in table.jumps.iter().chain(&table.rules) {
                text.push_str(&format!("-A {} {}\n", rule.chain, rule.spec()));
            }
            text.push_str("COMMIT\n");
        }
        let dump = save::parse(&text).unwrap();
        assert_eq!(verify(&rules, &dump), Ok(()));
        let cut: String = text
            .lines()
            .filter(|l| !l.contains("loopback address"))
            .map(|l| format!("{l}\n"))
            .collect();
        let detail = verify(&rules, &save::parse(&cut).unwrap()).unwrap_err();
        assert!(detail.contains("PALISADE_OUTBOUND"), "{detail}");
    }
}
