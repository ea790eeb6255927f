//! Where the control plane's CA comes from, and how a rotation reaches it: the CA directory
//! (a mounted Secret in a cluster) is read at start and polled afterwards, and each change
//! of its files or stage (`palisade ca rotate` writes them) replaces the CA the identity
//! service issues from, the trust bundle pushed to proxies and the gRPC server's own
//! certificate. A state that cannot be loaded is logged and counted; the last good CA stays.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use palisade_certs::rotation::RotationError;
use palisade_certs::{ActiveCa, CaState, CertificateAuthority, TrustDomain};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::runtime::Shared;

/// A second read after this long, before a failed read is reported: a rotation step
/// replacing files can be caught half way.
const REREAD_DELAY: Duration = Duration::from_millis(250);

/// The CA a control plane issues from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// A CA that never changes while running (tests, `palisade up`).
    Fixed(Arc<CertificateAuthority>),
    /// A CA directory in the layout of [`palisade_certs::rotation`], polled for changes.
    Dir {
        /// The directory.
        dir: PathBuf,
        /// How often it is read again.
        poll: Duration,
    },
}

impl From<Arc<CertificateAuthority>> for CaSource {
    fn from(ca: Arc<CertificateAuthority>) -> Self {
        CaSource::Fixed(ca)
    }
}

impl CaSource {
    /// The CA to start with, for the mesh's trust domain.
    pub(crate) fn initial(&self, td: &TrustDomain) -> Result<ActiveCa, RotationError> {
        match self {
            CaSource::Fixed(ca) => Ok(ActiveCa::steady(Arc::clone(ca))),
            CaSource::Dir { dir, .. } => CaState::read_dir(dir)?.active(td),
        }
    }
}

/// Polls `dir` until `shutdown`, handing every new CA to `shared`.
pub(crate) async fn watch_dir(
    dir: PathBuf,
    poll: Duration,
    td: TrustDomain,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut last = CaState::read_dir(&dir).ok().map(|s| s.files().clone());
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
        let mut attempt = load(&dir, &td, last.as_ref());
        if attempt.is_err() {
            tokio::time::sleep(REREAD_DELAY).await;
            attempt = load(&dir, &td, last.as_ref());
        }
        match attempt {
            Ok(None) => {}
            Ok(Some((files, active))) => {
                failing = false;
                let stage = active.rotation.as_ref().map(|r| r.stage);
                let issuer = active.ca.issuer_fingerprint().to_owned();
                let roots = active.ca.bundle().roots().len();
                shared.set_ca(Arc::new(active));
                metrics.ca_reloaded(true);
                last = Some(files);
                match stage {
                    Some(stage) => tracing::info!(
                        dir = %dir.display(),
                        stage = %stage,
                        stage_number = stage.number(),
                        issuer = palisade_certs::rotation::short(&issuer),
                        roots,
                        "CA rotation: serving stage {} ({})",
                        stage.number(),
                        stage.describe()
                    ),
                    None => tracing::info!(
                        dir = %dir.display(),
                        issuer = palisade_certs::rotation::short(&issuer),
                        roots,
                        "CA changed; serving it"
                    ),
                }
            }
            Err(e) => {
                metrics.ca_reloaded(false);
                // Once per failure, not once per poll.
                if !failing {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot load the CA; keeping the current one");
                }
                failing = true;
            }
        }
    }
}

/// The files of a CA directory, by name.
type Files = BTreeMap<String, String>;

/// Reads `dir`; `None` when nothing changed since `last`.
fn load(
    dir: &std::path::Path,
    td: &TrustDomain,
    last: Option<&Files>,
) -> Result<Option<(Files, ActiveCa)>, RotationError> {
    let state = CaState::read_dir(dir)?;
    if last == Some(state.files()) {
        return Ok(None);
    }
    let active = state.active(td)?;
    Ok(Some((state.files().clone(), active)))
}
