//! `palisade ca rotate`: drives a staged CA rotation. The stage is written into the CA
//! directory (which the control planes poll, see [`crate::ca_source`]); each stage moves on
//! only once every control plane named serves it and what it waits for holds for every
//! connected proxy, as their `/ca` status says:
//!
//! 1. every proxy acknowledged the trust bundle holding the new root;
//! 2. every proxy serves a certificate from the new issuer (they renew when told);
//! 3. every proxy acknowledged the bundle without the old root; then the new CA's files
//!    become the current ones.
//!
//! Each step is safe to repeat: run again after an interruption (or a control plane
//! restart), it resumes at the stage the directory records.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use palisade_certs::rotation::{self, Change, RotationError, RotationRecord, Stage, short};
use palisade_certs::{CaState, TrustDomain};

use crate::ca_status::{CaStatus, FetchError, fetch};
use crate::k8s::ca_secret::{CaSecret, CaSecretError};

/// Where the CA state is kept.
#[derive(Debug)]
pub enum CaStore {
    /// A CA directory (`palisade control-plane --ca-dir`).
    Dir(PathBuf),
    /// A cluster's CA Secret, which the control plane replicas mount as their CA directory.
    Secret(Box<CaSecret>),
}

impl CaStore {
    /// The state as it is now.
    pub async fn read(&self) -> Result<CaState, RotateError> {
        match self {
            CaStore::Dir(dir) => Ok(CaState::read_dir(dir)?),
            CaStore::Secret(secret) => Ok(secret.read().await?),
        }
    }

    /// Applies `changes` (read the state first: a Secret is only changed if it did not
    /// change since).
    pub async fn apply(&self, changes: &[Change]) -> Result<(), RotateError> {
        match self {
            CaStore::Dir(dir) => Ok(rotation::apply_to_dir(dir, changes)?),
            CaStore::Secret(secret) => Ok(secret.apply(changes).await?),
        }
    }

    /// How the store is named in messages.
    pub fn describe(&self) -> String {
        match self {
            CaStore::Dir(dir) => dir.display().to_string(),
            CaStore::Secret(secret) => secret.origin().display().to_string(),
        }
    }
}

/// What `palisade ca rotate` was asked to do.
#[derive(Debug)]
pub struct RotateOptions {
    /// Where the CA state the control planes serve is kept.
    pub store: CaStore,
    /// The CA to rotate to (`ca init --out`, openssl, cert-manager); `None` resumes.
    pub new: Option<PathBuf>,
    /// Admin addresses of every control plane serving `dir`.
    pub control_planes: Vec<SocketAddr>,
    /// The mesh's trust domain.
    pub trust_domain: TrustDomain,
    /// Longest wait for one stage's condition.
    pub stage_timeout: Duration,
    /// Time between status checks.
    pub poll: Duration,
    /// Remove the old root even if workloads still hold certificates chaining to it.
    pub force: bool,
}

/// Where a rotation stands, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The new CA was checked and recorded (stage 1 begins).
    Began(RotationRecord),
    /// A rotation in progress was found and is resumed.
    Resumed(RotationRecord),
    /// The stage was written into the directory.
    Entered(Stage),
    /// Waiting in a stage: `done` of `total` proxies are there (`what` says where).
    Waiting {
        /// The stage.
        stage: Stage,
        /// Proxies done.
        done: usize,
        /// Proxies connected.
        total: usize,
        /// What done means, in words.
        what: &'static str,
        /// Why the control planes do not count yet, if they do not.
        blocked: Option<String>,
    },
    /// The stage's condition holds.
    Completed(Stage),
    /// Stage 3 goes ahead with workloads still on the old root (`--force`).
    Forced(Vec<String>),
    /// The new CA is the current one; nothing of the old one is trusted.
    Finished,
}

/// Why a rotation stopped.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The CA directory or the new CA is unusable, or the step does not apply.
    #[error(transparent)]
    State(#[from] RotationError),
    /// The CA Secret could not be read or changed.
    #[error(transparent)]
    Secret(#[from] CaSecretError),
    /// A stage's condition did not hold in time; running again resumes.
    #[error(
        "stage {} ({}) did not complete within {timeout:?}: {reason}; run `palisade ca \
         rotate` again to resume",
        stage.number(),
        stage.describe()
    )]
    Timeout {
        /// The stage.
        stage: Stage,
        /// The wait.
        timeout: Duration,
        /// What was still missing.
        reason: String,
    },
    /// Stage 3 would break workloads.
    #[error(
        "refusing to remove the old root: {count} connected workload(s) still hold \
         certificates chaining to it: {names}; wait for them to renew and run again, or pass \
         --force to remove it anyway (their connections will fail until they renew)"
    )]
    WouldBreak {
        /// How many.
        count: usize,
        /// Some of them.
        names: String,
    },
    /// No control plane to wait on.
    #[error("no control plane admin address given (--control-plane)")]
    NoControlPlane,
}

/// The condition of a stage, as one control plane reports it: `Ok((done, total))`, or why
/// it does not count yet.
fn stage_condition(
    stage: Stage,
    record: &RotationRecord,
    status: &CaStatus,
) -> Result<(usize, usize), String> {
    let served = status.rotation.as_ref().map(|r| r.stage_number);
    if served != Some(stage.number()) {
        return Err(match served {
            Some(n) => format!("it serves stage {n}"),
            None => "it serves no rotation yet".to_owned(),
        });
    }
    let proxies = &status.proxies;
    let total = proxies.connected;
    let acked = proxies.trust_bundle_current.min(total);
    Ok(match stage {
        Stage::TrustNewRoot | Stage::RemoveOldRoot => (acked, total),
        Stage::IssueFromNew => {
            if status.issuer_fingerprint != record.new_issuer {
                return Err("it does not issue from the new CA yet".to_owned());
            }
            let renewed = proxies
                .leaves_by_issuer
                .get(&record.new_issuer)
                .copied()
                .unwrap_or(0);
            (renewed.min(acked), total)
        }
    })
}

fn what(stage: Stage) -> &'static str {
    match stage {
        Stage::TrustNewRoot => "proxies trust the new root",
        Stage::IssueFromNew => "proxies serve a certificate from the new CA",
        Stage::RemoveOldRoot => "proxies dropped the old root",
    }
}

/// Runs (or resumes) the rotation to its end.
pub async fn rotate(
    options: &RotateOptions,
    mut progress: impl FnMut(Progress),
) -> Result<(), RotateError> {
    if options.control_planes.is_empty() {
        return Err(RotateError::NoControlPlane);
    }
    let store = &options.store;
    let td = &options.trust_domain;
    let state = store.read().await?;
    let mut record = match (&options.new, state.rotation()?) {
        (Some(new), existing) => {
            let files = rotation::read_generation(new)?;
            let (record, changes) = state.begin(td, new, &files, unix_now())?;
            store.apply(&changes).await?;
            progress(match existing {
                Some(_) => Progress::Resumed(record.clone()),
                None => Progress::Began(record.clone()),
            });
            record
        }
        (None, Some(record)) => {
            progress(Progress::Resumed(record.clone()));
            record
        }
        (None, None) => {
            return Err(RotationError::Refused(format!(
                "no rotation is in progress in {}; pass --new DIR to begin one",
                store.describe()
            ))
            .into());
        }
    };
    loop {
        let stage = record.stage;
        progress(Progress::Entered(stage));
        let result = wait_for_stage(options, stage, &record, &mut progress).await;
        match (stage, result) {
            (_, Ok(())) => progress(Progress::Completed(stage)),
            (Stage::IssueFromNew, Err(RotateError::Timeout { .. })) if options.force => {
                let names = not_renewed(options).await;
                progress(Progress::Forced(names));
            }
            (Stage::IssueFromNew, Err(RotateError::Timeout { .. })) => {
                let names = not_renewed(options).await;
                return Err(RotateError::WouldBreak {
                    count: names.len(),
                    names: names.join(", "),
                });
            }
            (_, Err(e)) => return Err(e),
        }
        let state = store.read().await?;
        match stage.next() {
            Some(next) => {
                let (advanced, changes) = state.advance(next)?;
                store.apply(&changes).await?;
                record = advanced;
            }
            None => {
                let changes = state.finish()?;
                store.apply(&changes).await?;
                wait_steady(options, &record).await?;
                progress(Progress::Finished);
                return Ok(());
            }
        }
    }
}

/// Waits until every control plane serves `stage` and its condition holds for all
/// connected proxies.
async fn wait_for_stage(
    options: &RotateOptions,
    stage: Stage,
    record: &RotationRecord,
    progress: &mut impl FnMut(Progress),
) -> Result<(), RotateError> {
    let deadline = Instant::now() + options.stage_timeout;
    let mut last = None;
    loop {
        let mut done = 0;
        let mut total = 0;
        let mut blocked = None;
        for addr in &options.control_planes {
            match fetch(*addr).await {
                Ok(status) => match stage_condition(stage, record, &status) {
                    Ok((d, t)) => {
                        done += d;
                        total += t;
                    }
                    Err(why) => blocked = Some(format!("control plane {addr}: {why}")),
                },
                Err(e) => blocked = Some(unreachable(&e)),
            }
        }
        let report = Progress::Waiting {
            stage,
            done,
            total,
            what: what(stage),
            blocked: blocked.clone(),
        };
        if last.as_ref() != Some(&report) {
            progress(report.clone());
            last = Some(report);
        }
        if blocked.is_none() && done == total {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(RotateError::Timeout {
                stage,
                timeout: options.stage_timeout,
                reason: blocked.unwrap_or_else(|| format!("{done} of {total} {}", what(stage))),
            });
        }
        tokio::time::sleep(options.poll).await;
    }
}

/// After the last step: every control plane serves the new CA outside any rotation.
async fn wait_steady(options: &RotateOptions, record: &RotationRecord) -> Result<(), RotateError> {
    let deadline = Instant::now() + options.stage_timeout;
    loop {
        let mut blocked = None;
        for addr in &options.control_planes {
            match fetch(*addr).await {
                Ok(s) if s.rotation.is_none() && s.issuer_fingerprint == record.new_issuer => {}
                Ok(_) => {
                    blocked = Some(format!(
                        "control plane {addr} has not loaded the new CA files yet"
                    ))
                }
                Err(e) => blocked = Some(unreachable(&e)),
            }
        }
        let Some(reason) = blocked else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(RotateError::Timeout {
                stage: Stage::RemoveOldRoot,
                timeout: options.stage_timeout,
                reason,
            });
        }
        tokio::time::sleep(options.poll).await;
    }
}

/// Workloads whose certificate is not from the new issuer, from every control plane.
async fn not_renewed(options: &RotateOptions) -> Vec<String> {
    let mut names = Vec::new();
    for addr in &options.control_planes {
        match fetch(*addr).await {
            Ok(status) => names.extend(status.proxies.not_on_current_issuer),
            Err(e) => names.push(format!("(unknown: {})", unreachable(&e))),
        }
    }
    names.sort();
    names.dedup();
    names
}

fn unreachable(e: &FetchError) -> String {
    format!("{e} (is it running, and is --control-plane its admin address?)")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A one-line summary of a rotation record.
pub fn describe(record: &RotationRecord) -> String {
    format!(
        "stage {}/3 ({}): issuer {} -> {}, {} root(s) to retire",
        record.stage.number(),
        record.stage.describe(),
        short(&record.old_issuer),
        short(&record.new_issuer),
        record.retired_roots().len()
    )
}
