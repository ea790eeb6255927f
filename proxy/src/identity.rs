//! The workload certificate: a key made here, a CSR sent to the control plane, the leaf
//! renewed at 70% of its life, and retries with backoff while the CA is unreachable (the
//! current certificate keeps serving meanwhile).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_certs::tls::Credentials;
use palisade_certs::{SpiffeId, TrustBundle, WorkloadKey};
use palisade_proto::v1::CertifyRequest;
use palisade_proto::v1::identity_client::IdentityClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::control::{Backoff, ControlPlaneTarget};
use crate::metrics::Metrics;
use crate::model::MeshView;

/// Fraction of a leaf's remaining life after which it is renewed.
const REFRESH_FRACTION: f64 = 0.7;
/// Never renew sooner than this after receiving a certificate.
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// When the control plane starts issuing from another CA (a rotation's second stage),
/// proxies renew within this spread, so thousands do not ask in the same instant.
const ROTATION_SPREAD: Duration = Duration::from_secs(3);
/// If the leaf still comes from another issuer after such a renewal (a control plane
/// replica that has not switched yet), the next attempt waits this long.
const ROTATION_RETRY: Duration = Duration::from_secs(5);

/// What the proxy needs to obtain certificates from the control plane.
#[derive(Debug, Clone)]
pub struct IdentityRequest {
    /// The identity to ask for.
    pub identity: SpiffeId,
    /// Workload name, as the control plane knows it.
    pub workload: String,
    /// Workload namespace.
    pub namespace: String,
    /// Bootstrap credential; used while the proxy holds no valid certificate.
    pub token: String,
}

/// Failure to obtain a certificate.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Key or CSR generation failed.
    #[error("cannot create key or CSR: {0}")]
    Key(String),
    /// The control plane could not be reached.
    #[error(transparent)]
    Connect(#[from] crate::control::ControlPlaneError),
    /// The control plane refused.
    #[error("control plane refused the certificate request: {0}")]
    Refused(tonic::Status),
    /// The answer was unusable.
    #[error("certificate from control plane is unusable: {0}")]
    Unusable(String),
}

/// Delay until a leaf received at `received_at` (Unix seconds) and valid until `not_after`
/// should be renewed: 70% of the way through its remaining life, at least one second.
pub fn refresh_delay(received_at: i64, not_after: i64, now: i64) -> Duration {
    let life = (not_after - received_at).max(0) as f64;
    let at = received_at as f64 + life * REFRESH_FRACTION;
    let wait = (at - now as f64).max(0.0);
    Duration::from_secs_f64(wait).max(MIN_REFRESH)
}

/// Seconds since the Unix epoch, from the wall clock (certificates are wall-clock bound).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// One certificate request round trip.
pub async fn certify(
    target: &ControlPlaneTarget,
    request: &IdentityRequest,
    bundle: &TrustBundle,
    current: Option<&Credentials>,
) -> Result<(Credentials, Vec<String>), IdentityError> {
    let key = WorkloadKey::generate().map_err(|e| IdentityError::Key(e.to_string()))?;
    let csr_pem = key
        .csr_pem(&request.identity)
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    // Renew over mTLS while the current certificate is valid; bootstrap with the token otherwise.
    let current = current.filter(|c| c.not_after() > unix_now() + 5);
    let channel = target.connect(bundle, current).await?;
    let token = if current.is_some() {
        String::new()
    } else {
        request.token.clone()
    };
    let response = IdentityClient::new(channel)
        .certify(CertifyRequest {
            csr_pem,
            workload: request.workload.clone(),
            namespace: request.namespace.clone(),
            token,
        })
        .await
        .map_err(IdentityError::Refused)?
        .into_inner();
    let mut chain_pem = response.certificate_pem.clone();
    for c in &response.chain_pem {
        chain_pem.push_str(c);
    }
    let creds = Credentials::from_pem(&chain_pem, &key.private_key_pem())
        .map_err(|e| IdentityError::Unusable(e.to_string()))?
        .with_issuer(&response.issuer_fingerprint);
    if creds.identity() != &request.identity {
        return Err(IdentityError::Unusable(format!(
            "certificate is for {}, expected {}",
            creds.identity(),
            request.identity
        )));
    }
    Ok((creds, response.trust_bundle_pem))
}

/// The issuer the control plane advertises, if the current leaf is not from it.
fn rotation_target(
    view: &watch::Receiver<Option<Arc<MeshView>>>,
    creds: &watch::Sender<Option<Arc<Credentials>>>,
) -> Option<Arc<str>> {
    let advertised = view.borrow().as_ref()?.issuer_fingerprint.clone();
    let held = creds.borrow().as_ref()?.issuer_fingerprint().to_owned();
    (!advertised.is_empty() && *advertised != *held).then_some(advertised)
}

/// Sleeps until `deadline`, or earlier when the control plane issues from a CA other than
/// the current leaf's (then within [`ROTATION_SPREAD`], and at most once per
/// [`ROTATION_RETRY`] for the same issuer); false on shutdown.
async fn wait_for_renewal(
    deadline: tokio::time::Instant,
    view: &mut watch::Receiver<Option<Arc<MeshView>>>,
    creds: &watch::Sender<Option<Arc<Credentials>>>,
    early: &mut Option<(Arc<str>, tokio::time::Instant)>,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        let mut wake = deadline;
        let target = rotation_target(view, creds);
        if let Some(target) = &target {
            let at = match early {
                Some((t, at)) if t == target => *at,
                _ => {
                    let spread = ROTATION_SPREAD.mul_f64(fastrand::f64());
                    let at = tokio::time::Instant::now() + spread;
                    *early = Some((target.clone(), at));
                    at
                }
            };
            wake = wake.min(at);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep_until(wake) => {
                if let (Some(target), true) = (target, wake < deadline) {
                    tracing::info!(
                        issuer = %palisade_certs::rotation::short(&target),
                        "the control plane issues from another CA: renewing now"
                    );
                    *early = Some((target, tokio::time::Instant::now() + ROTATION_RETRY));
                }
                return true;
            }
            changed = view.changed() => if changed.is_err() {
                // No more views: only the schedule matters.
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep_until(deadline) => return true,
                }
            },
        }
    }
}

/// Keeps `creds` fresh until `shutdown`: renews at 70% of each leaf's life, at once (spread
/// over a few seconds) when the control plane starts issuing from another CA, retries with
/// jittered backoff on failure, and publishes every new certificate (and, until discovery
/// provides one, the bundle that came with it).
#[allow(clippy::too_many_arguments)]
pub async fn run_refresh(
    target: ControlPlaneTarget,
    request: IdentityRequest,
    bundle: watch::Receiver<TrustBundle>,
    mut view: watch::Receiver<Option<Arc<MeshView>>>,
    creds: watch::Sender<Option<Arc<Credentials>>>,
    issued_bundle: watch::Sender<Option<Vec<String>>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut early = None;
    loop {
        let current = creds.borrow().clone();
        let verify_with = bundle.borrow().clone();
        let wait = match certify(&target, &request, &verify_with, current.as_deref()).await {
            Ok((fresh, roots)) => {
                backoff.reset();
                let received = unix_now();
                let wait = refresh_delay(received, fresh.not_after(), received);
                tracing::info!(
                    identity = %fresh.identity(),
                    serial = fresh.serial(),
                    not_after = %palisade_certs::ca::fmt_unix(fresh.not_after()),
                    renew_in_s = wait.as_secs(),
                    "workload certificate issued"
                );
                metrics.certificate_renewed(fresh.not_after());
                creds.send_replace(Some(Arc::new(fresh)));
                issued_bundle.send_replace(Some(roots));
                wait
            }
            Err(e) => {
                metrics.certificate_failure();
                let wait = backoff.next_delay();
                match current.as_deref() {
                    Some(c) => tracing::warn!(
                        error = %e,
                        retry_in_ms = wait.as_millis() as u64,
                        expires_in_s = c.not_after() - unix_now(),
                        "certificate renewal failed; serving with the current certificate"
                    ),
                    None => tracing::warn!(
                        error = %e,
                        retry_in_ms = wait.as_millis() as u64,
                        "cannot obtain a workload certificate yet"
                    ),
                }
                wait
            }
        };
        let deadline = tokio::time::Instant::now() + wait;
        if !wait_for_renewal(deadline, &mut view, &creds, &mut early, &shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_at_seventy_percent_of_remaining_life() {
        // 24 h leaf received now: renew after 16.8 h.
        assert_eq!(
            refresh_delay(1_000, 1_000 + 86_400, 1_000),
            Duration::from_secs_f64(60_480.0)
        );
        // Halfway through the wait, the rest remains.
        assert_eq!(refresh_delay(0, 100, 50), Duration::from_secs(20));
        // Past due or already expired: retry soon, never in a tight loop.
        assert_eq!(refresh_delay(0, 100, 500), MIN_REFRESH);
        assert_eq!(refresh_delay(0, 0, 0), MIN_REFRESH);
    }
}
