//! The CA's state and its staged rotation, kept as a flat set of named files: the current
//! issuing CA (Istio's plug-in CA names), the next one while a rotation runs (`next-`
//! names), and the stage (`rotation.json`). Flat, so that the same names are the keys of
//! the Kubernetes Secret a cluster keeps them in.
//!
//! Every operation reads a [`CaState`] and returns the [`Change`]s to make, in an order
//! chosen so that a reader seeing any prefix of them (a crash, a control plane polling the
//! directory mid-way) understands the state, and a rerun of the same operation completes
//! it. A Secret applies them all in one update.
//!
//! The stages, and what the control plane serves in each:
//!
//! | stage | issues leaves from | trusts |
//! |---|---|---|
//! | none | current | current roots |
//! | [`Stage::TrustNewRoot`] | current | current and next roots |
//! | [`Stage::IssueFromNew`] | next | current and next roots |
//! | [`Stage::RemoveOldRoot`] | next | next roots |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bundle::TrustBundle;
use crate::ca::{CaError, CertificateAuthority, fingerprint};
use crate::pem::decode_certs;
use crate::spiffe::TrustDomain;

/// The issuing CA certificate.
pub const CA_CERT: &str = "ca-cert.pem";
/// Its private key.
pub const CA_KEY: &str = "ca-key.pem";
/// Intermediates above the issuing CA (optional).
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// The trusted roots.
pub const ROOT_CERT: &str = "root-cert.pem";
/// The root's key, which `palisade ca init` writes beside the rest; never read.
pub const ROOT_KEY: &str = "root-key.pem";
/// The stage of a rotation in progress.
pub const ROTATION_FILE: &str = "rotation.json";
/// Prefix of the next CA's files during a rotation.
pub const NEXT_PREFIX: &str = "next-";

/// The files that make up one CA generation, with whether each is a private key.
const GENERATION: [(&str, bool); 4] = [
    (CA_CERT, false),
    (CA_KEY, true),
    (CERT_CHAIN, false),
    (ROOT_CERT, false),
];

/// Largest file read: CA material is a few KiB.
const MAX_FILE: u64 = 1 << 20;

/// A stage of a rotation, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// 1: proxies learn the new root; leaves still come from the current CA.
    TrustNewRoot,
    /// 2: leaves come from the new CA; proxies are asked to renew now.
    IssueFromNew,
    /// 3: the old root is no longer trusted; the new CA becomes the current one.
    RemoveOldRoot,
}

impl Stage {
    /// All stages, in order.
    pub const ALL: [Stage; 3] = [
        Stage::TrustNewRoot,
        Stage::IssueFromNew,
        Stage::RemoveOldRoot,
    ];

    /// 1, 2 or 3.
    pub fn number(self) -> u8 {
        match self {
            Stage::TrustNewRoot => 1,
            Stage::IssueFromNew => 2,
            Stage::RemoveOldRoot => 3,
        }
    }

    /// The stage after this one.
    pub fn next(self) -> Option<Stage> {
        match self {
            Stage::TrustNewRoot => Some(Stage::IssueFromNew),
            Stage::IssueFromNew => Some(Stage::RemoveOldRoot),
            Stage::RemoveOldRoot => None,
        }
    }

    /// What the stage does, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::TrustNewRoot => "trust the new root",
            Stage::IssueFromNew => "issue from the new CA",
            Stage::RemoveOldRoot => "remove the old root",
        }
    }

    /// The name written in `rotation.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::TrustNewRoot => "trust-new-root",
            Stage::IssueFromNew => "issue-from-new",
            Stage::RemoveOldRoot => "remove-old-root",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `rotation.json`: a rotation in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationRecord {
    /// Where it stands.
    pub stage: Stage,
    /// When it began, Unix seconds.
    pub started_unix: i64,
    /// Fingerprint of the issuing CA being replaced.
    pub old_issuer: String,
    /// Fingerprint of the issuing CA replacing it.
    pub new_issuer: String,
    /// Fingerprints of the roots trusted before.
    pub old_roots: Vec<String>,
    /// Fingerprints of the roots trusted after.
    pub new_roots: Vec<String>,
}

impl RotationRecord {
    /// The old roots that the new bundle drops: what stage 3 stops trusting.
    pub fn retired_roots(&self) -> Vec<&str> {
        self.old_roots
            .iter()
            .filter(|r| !self.new_roots.contains(r))
            .map(String::as_str)
            .collect()
    }
}

/// One step of an operation on the CA's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create or replace a file.
    Write {
        /// File name (a Secret key).
        name: String,
        /// Its contents.
        contents: String,
        /// Whether it is a private key.
        secret: bool,
    },
    /// Remove a file if it exists.
    Remove {
        /// File name.
        name: String,
    },
}

/// Why a CA state could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// A CA of the state is unusable (the error names the file).
    #[error(transparent)]
    Ca(#[from] CaError),
    /// `rotation.json` is unreadable.
    #[error("{path}: {reason}")]
    Record {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The operation does not apply to the current state.
    #[error("{0}")]
    Refused(String),
}

/// The issuing CA to serve now, as the state's stage says.
#[derive(Debug)]
pub struct ActiveCa {
    /// Issues leaves; its bundle is what proxies must trust now.
    pub ca: Arc<CertificateAuthority>,
    /// The rotation in progress, if any.
    pub rotation: Option<RotationRecord>,
}

impl ActiveCa {
    /// A CA outside any rotation.
    pub fn steady(ca: Arc<CertificateAuthority>) -> Self {
        Self { ca, rotation: None }
    }
}

/// The CA's files as read at one moment, and where from (for messages).
#[derive(Debug, Clone)]
pub struct CaState {
    origin: PathBuf,
    files: BTreeMap<String, String>,
}

/// Every file name of the layout.
fn known_names() -> Vec<String> {
    let mut names: Vec<String> = GENERATION.iter().map(|(n, _)| (*n).to_owned()).collect();
    names.extend(GENERATION.iter().map(|(n, _)| format!("{NEXT_PREFIX}{n}")));
    names.push(ROOT_KEY.to_owned());
    names.push(ROTATION_FILE.to_owned());
    names
}

/// The issuing certificate of a `ca-cert.pem` text.
fn issuing_fingerprint(path: &Path, pem: &str) -> Result<String, RotationError> {
    let certs = decode_certs(pem).map_err(|source| CaError::Pem {
        path: path.to_owned(),
        source,
    })?;
    Ok(fingerprint(certs[0].as_ref()))
}

fn fingerprints(bundle: &TrustBundle) -> Vec<String> {
    bundle
        .roots()
        .iter()
        .map(|r| fingerprint(r.as_ref()))
        .collect()
}

impl CaState {
    /// Files held in memory (a Secret's data), named in messages by `origin`.
    pub fn from_files(origin: impl Into<PathBuf>, files: BTreeMap<String, String>) -> Self {
        let known = known_names();
        Self {
            origin: origin.into(),
            files: files
                .into_iter()
                .filter(|(k, _)| known.contains(k))
                .collect(),
        }
    }

    /// Reads the layout's files in `dir` (following links: a mounted Secret's files are).
    pub fn read_dir(dir: &Path) -> Result<Self, RotationError> {
        use std::io::Read;
        if !dir.is_dir() {
            return Err(RotationError::Refused(format!(
                "CA directory {} does not exist (create one with `palisade ca init --out {}`)",
                dir.display(),
                dir.display()
            )));
        }
        let mut files = BTreeMap::new();
        for name in known_names() {
            let path = dir.join(&name);
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(RotationError::Io { path, source }),
            };
            let mut text = String::new();
            file.take(MAX_FILE)
                .read_to_string(&mut text)
                .map_err(|source| RotationError::Io {
                    path: path.clone(),
                    source,
                })?;
            files.insert(name, text);
        }
        Ok(Self {
            origin: dir.to_owned(),
            files,
        })
    }

    /// The files, by name.
    pub fn files(&self) -> &BTreeMap<String, String> {
        &self.files
    }

    fn path(&self, name: &str) -> PathBuf {
        self.origin.join(name)
    }

    fn get(&self, name: &str) -> Result<&str, RotationError> {
        self.files.get(name).map(String::as_str).ok_or_else(|| {
            let path = self.path(name);
            RotationError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "missing"),
            }
        })
    }

    /// The rotation in progress, if any.
    pub fn rotation(&self) -> Result<Option<RotationRecord>, RotationError> {
        let Some(text) = self.files.get(ROTATION_FILE) else {
            return Ok(None);
        };
        serde_json::from_str(text)
            .map(Some)
            .map_err(|e| RotationError::Record {
                path: self.path(ROTATION_FILE),
                reason: e.to_string(),
            })
    }

    /// Loads one generation (`prefix` "" or [`NEXT_PREFIX`]) as an issuing CA.
    fn generation(
        &self,
        td: &TrustDomain,
        prefix: &str,
    ) -> Result<CertificateAuthority, RotationError> {
        let name = |n: &str| format!("{prefix}{n}");
        let chain_name = name(CERT_CHAIN);
        let chain_path = self.path(&chain_name);
        let chain = self
            .files
            .get(&chain_name)
            .map(|c| (chain_path.as_path(), c.as_str()));
        Ok(CertificateAuthority::build(
            td.clone(),
            (&self.path(&name(CA_CERT)), self.get(&name(CA_CERT))?),
            (&self.path(&name(CA_KEY)), self.get(&name(CA_KEY))?),
            chain,
            (&self.path(&name(ROOT_CERT)), self.get(&name(ROOT_CERT))?),
        )?)
    }

    /// The roots of one generation, without loading its issuer (which may have expired).
    fn roots(&self, td: &TrustDomain, prefix: &str) -> Result<TrustBundle, RotationError> {
        let name = format!("{prefix}{ROOT_CERT}");
        TrustBundle::from_pem(td.clone(), self.get(&name)?).map_err(|source| {
            RotationError::Ca(CaError::Bundle {
                path: self.path(&name),
                source,
            })
        })
    }

    /// The CA to serve now.
    pub fn active(&self, td: &TrustDomain) -> Result<ActiveCa, RotationError> {
        let Some(record) = self.rotation()? else {
            return Ok(ActiveCa::steady(Arc::new(self.generation(td, "")?)));
        };
        let ca = match record.stage {
            Stage::TrustNewRoot => self
                .generation(td, "")?
                .trusting_also(&self.roots(td, NEXT_PREFIX)?)?,
            Stage::IssueFromNew => self
                .generation(td, NEXT_PREFIX)?
                .trusting_also(&self.roots(td, "")?)?,
            // The current files may be half replaced by now: only the next ones are read.
            Stage::RemoveOldRoot => self.generation(td, NEXT_PREFIX)?,
        };
        Ok(ActiveCa {
            ca: Arc::new(ca),
            rotation: Some(record),
        })
    }

    /// Begins a rotation to the CA in `new` (PEM texts by generation file name: the
    /// `ca-cert.pem`, `ca-key.pem`, optional `cert-chain.pem` and `root-cert.pem` of a
    /// directory `palisade ca init`, openssl or cert-manager made), named `new_origin` in
    /// messages. The new CA is checked in full first; nothing changes if it is unusable.
    /// Repeating it for the same new CA resumes; another new CA is refused while one runs.
    pub fn begin(
        &self,
        td: &TrustDomain,
        new_origin: &Path,
        new: &BTreeMap<String, String>,
        now_unix: i64,
    ) -> Result<(RotationRecord, Vec<Change>), RotationError> {
        let candidate = Self {
            origin: new_origin.to_owned(),
            files: new.clone(),
        };
        let next = candidate.generation(td, "")?;
        if let Some(record) = self.rotation()? {
            if record.new_issuer == next.issuer_fingerprint() {
                return Ok((record, Vec::new()));
            }
            return Err(RotationError::Refused(format!(
                "a rotation to another CA (issuer {}) is at stage {} ({}) in {}; run \
                 `palisade ca rotate` without --new to resume it, or `--abort` while it is at \
                 stage 1",
                short(&record.new_issuer),
                record.stage.number(),
                record.stage,
                self.origin.display()
            )));
        }
        let old_issuer = issuing_fingerprint(&self.path(CA_CERT), self.get(CA_CERT)?)?;
        let old_roots = self.roots(td, "")?;
        if old_issuer == next.issuer_fingerprint() {
            return Err(RotationError::Refused(format!(
                "{} is already the issuing CA in {}",
                new_origin.join(CA_CERT).display(),
                self.origin.display()
            )));
        }
        let record = RotationRecord {
            stage: Stage::TrustNewRoot,
            started_unix: now_unix,
            old_issuer,
            new_issuer: next.issuer_fingerprint().to_owned(),
            old_roots: fingerprints(&old_roots),
            new_roots: fingerprints(next.bundle()),
        };
        let mut changes = Vec::new();
        for (name, secret) in GENERATION {
            let target = format!("{NEXT_PREFIX}{name}");
            match new.get(name) {
                Some(contents) => changes.push(Change::Write {
                    name: target,
                    contents: contents.clone(),
                    secret,
                }),
                None => changes.push(Change::Remove { name: target }),
            }
        }
        // Last: until the record exists, the next files mean nothing to a reader.
        changes.push(record_change(&record)?);
        Ok((record, changes))
    }

    /// Moves the rotation on to `to`, which must be the stage after the current one (or
    /// the current one: nothing to do).
    pub fn advance(&self, to: Stage) -> Result<(RotationRecord, Vec<Change>), RotationError> {
        let mut record = self.rotation()?.ok_or_else(|| {
            RotationError::Refused(format!(
                "no rotation is in progress in {}",
                self.origin.display()
            ))
        })?;
        if record.stage == to {
            return Ok((record, Vec::new()));
        }
        if record.stage.next() != Some(to) {
            return Err(RotationError::Refused(format!(
                "the rotation is at stage {} ({}); it cannot move to stage {} ({})",
                record.stage.number(),
                record.stage,
                to.number(),
                to
            )));
        }
        record.stage = to;
        let change = record_change(&record)?;
        Ok((record, vec![change]))
    }

    /// Ends a rotation at stage 3: the next CA's files become the current ones, and the
    /// record, the next files and the retired root's key (if `ca init` left it here) go.
    pub fn finish(&self) -> Result<Vec<Change>, RotationError> {
        let record = self.rotation()?.ok_or_else(|| {
            RotationError::Refused(format!(
                "no rotation is in progress in {}",
                self.origin.display()
            ))
        })?;
        if record.stage != Stage::RemoveOldRoot {
            return Err(RotationError::Refused(format!(
                "the rotation is at stage {} ({}); it finishes at stage 3",
                record.stage.number(),
                record.stage
            )));
        }
        let mut changes = Vec::new();
        // While the record says stage 3, readers use only the next files, so the current
        // ones can be replaced one by one.
        for (name, secret) in GENERATION {
            match self.files.get(&format!("{NEXT_PREFIX}{name}")) {
                Some(contents) => changes.push(Change::Write {
                    name: name.to_owned(),
                    contents: contents.clone(),
                    secret,
                }),
                None => changes.push(Change::Remove {
                    name: name.to_owned(),
                }),
            }
        }
        changes.push(Change::Remove {
            name: ROOT_KEY.to_owned(),
        });
        changes.push(Change::Remove {
            name: ROTATION_FILE.to_owned(),
        });
        changes.extend(next_removals());
        Ok(changes)
    }

    /// Abandons a rotation still at stage 1 (no leaf has been issued from the new CA yet).
    pub fn abort(&self) -> Result<Vec<Change>, RotationError> {
        let Some(record) = self.rotation()? else {
            return Err(RotationError::Refused(format!(
                "no rotation is in progress in {}",
                self.origin.display()
            )));
        };
        if record.stage != Stage::TrustNewRoot {
            return Err(RotationError::Refused(format!(
                "the rotation is at stage {} ({}): leaves from the new CA exist, so it can \
                 only go forward",
                record.stage.number(),
                record.stage
            )));
        }
        let mut changes = vec![Change::Remove {
            name: ROTATION_FILE.to_owned(),
        }];
        changes.extend(next_removals());
        Ok(changes)
    }
}

fn next_removals() -> impl Iterator<Item = Change> {
    GENERATION.iter().map(|(name, _)| Change::Remove {
        name: format!("{NEXT_PREFIX}{name}"),
    })
}

fn record_change(record: &RotationRecord) -> Result<Change, RotationError> {
    let contents = serde_json::to_string_pretty(record)
        .map_err(|e| RotationError::Refused(format!("cannot encode the rotation record: {e}")))?;
    Ok(Change::Write {
        name: ROTATION_FILE.to_owned(),
        contents: contents + "\n",
        secret: false,
    })
}

/// The first 16 hex digits of a fingerprint, for messages.
pub fn short(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}

/// Applies `changes` to `dir` in order. Each write goes to a new temporary file (never
/// through a link planted there; keys mode 0600 from the start) renamed over the target,
/// so a reader sees a file whole or not at all.
pub fn apply_to_dir(dir: &Path, changes: &[Change]) -> Result<(), RotationError> {
    for change in changes {
        match change {
            Change::Write {
                name,
                contents,
                secret,
            } => {
                let target = dir.join(name);
                let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
                let io = |path: &Path| {
                    let path = path.to_owned();
                    move |source| RotationError::Io { path, source }
                };
                match std::fs::remove_file(&temp) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&temp)(e)),
                }
                crate::ca::create_new(&temp, contents, *secret).map_err(io(&temp))?;
                std::fs::rename(&temp, &target).map_err(io(&target))?;
            }
            Change::Remove { name } => {
                let path = dir.join(name);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(RotationError::Io { path, source }),
                }
            }
        }
    }
    // The renames and removals are durable once the directory is.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// cert-manager's names for a CA Secret's keys, mounted or saved as files, and the names
/// they stand for: `tls.crt` holds the issuing CA followed by its chain.
const CERT_MANAGER_NAMES: [(&str, &str); 3] = [
    ("tls.crt", CA_CERT),
    ("tls.key", CA_KEY),
    ("ca.crt", ROOT_CERT),
];

/// Reads the generation files of a CA directory (a new CA to rotate to), by name: Istio's
/// plug-in CA names (`palisade ca init`, openssl), or cert-manager's (`tls.crt`, `tls.key`,
/// `ca.crt`) when there is no `ca-cert.pem`.
pub fn read_generation(dir: &Path) -> Result<BTreeMap<String, String>, RotationError> {
    let mut files = BTreeMap::new();
    if !dir.join(CA_CERT).exists() && dir.join("tls.crt").exists() {
        for (theirs, ours) in CERT_MANAGER_NAMES {
            let path = dir.join(theirs);
            let text = std::fs::read_to_string(&path)
                .map_err(|source| RotationError::Io { path, source })?;
            files.insert(ours.to_owned(), text);
        }
        return Ok(files);
    }
    for (name, _) in GENERATION {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                files.insert(name.to_owned(), text);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name == CERT_CHAIN => {}
            Err(source) => return Err(RotationError::Io { path, source }),
        }
    }
    Ok(files)
}
