//! Watching the CA's own expiry: `/metrics` gives the seconds left for every root of the
//! trust bundle and every intermediate the control plane issues from, and the log warns
//! when one has fewer than 30, then fewer than 7 days left, so that a rotation
//! (`palisade ca rotate`) starts long before workloads fail.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use palisade_certs::{ActiveCa, CertificateAuthority};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::transport::unix_now;

/// How often the metrics are refreshed and the thresholds checked.
const PERIOD: Duration = Duration::from_secs(60);
/// Warnings, by days left: each logged once per certificate when crossed.
pub(crate) const WARN_DAYS: [i64; 2] = [30, 7];

/// One CA certificate: what it is and when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CaCert {
    /// `root` or `intermediate`.
    pub role: &'static str,
    /// Serial, hex.
    pub serial: String,
    /// Subject, for messages.
    pub subject: String,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

/// The roots of the bundle and the intermediates the CA issues from.
pub(crate) fn ca_certs(ca: &CertificateAuthority) -> Vec<CaCert> {
    let roots = ca.bundle().roots().iter().map(|der| ("root", der));
    let intermediates = ca.chain().iter().map(|der| ("intermediate", der));
    roots
        .chain(intermediates)
        .filter_map(|(role, der)| {
            let info = palisade_certs::svid::inspect(der.as_ref()).ok()?;
            Some(CaCert {
                role,
                serial: info.serial,
                subject: info.subject,
                not_after: info.not_after,
            })
        })
        .collect()
}

/// The thresholds (days) `cert` has crossed at `now` that `warned` does not hold yet; they
/// are added to it.
pub(crate) fn new_warnings(
    cert: &CaCert,
    now: i64,
    warned: &mut HashSet<(String, i64)>,
) -> Vec<i64> {
    let left = cert.not_after - now;
    WARN_DAYS
        .iter()
        .copied()
        .filter(|days| left < days * 86_400)
        .filter(|days| warned.insert((cert.serial.clone(), *days)))
        .collect()
}

/// Refreshes the expiry gauges and logs crossed thresholds until `shutdown`.
pub(crate) async fn watch(
    mut ca: watch::Receiver<Arc<ActiveCa>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut warned = HashSet::new();
    loop {
        let certs = ca_certs(&ca.borrow_and_update().ca);
        let now = unix_now();
        metrics.ca_expiry(
            certs
                .iter()
                .map(|c| (c.role, c.serial.clone(), c.not_after - now)),
        );
        for cert in &certs {
            // Only the tightest threshold crossed is worth a line.
            if let Some(days) = new_warnings(cert, now, &mut warned).into_iter().min() {
                let left_days = (cert.not_after - now).div_euclid(86_400);
                tracing::warn!(
                    role = cert.role,
                    subject = %cert.subject,
                    serial = %cert.serial,
                    days_left = left_days,
                    not_after = %palisade_certs::ca::fmt_unix(cert.not_after),
                    "the mesh CA's {} certificate expires in under {days} days: rotate it \
                     (palisade ca rotate) before workloads lose their certificates",
                    cert.role
                );
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
            changed = ca.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_threshold_warns_once() {
        let cert = |days: i64| CaCert {
            role: "root",
            serial: "01".into(),
            subject: "CN=root".into(),
            not_after: days * 86_400,
        };
        let mut warned = HashSet::new();
        assert!(new_warnings(&cert(40), 0, &mut warned).is_empty());
        assert_eq!(new_warnings(&cert(29), 0, &mut warned), [30]);
        assert!(
            new_warnings(&cert(29), 3_600, &mut warned).is_empty(),
            "once"
        );
        assert_eq!(new_warnings(&cert(29), 23 * 86_400, &mut warned), [7]);
        // A certificate already past both gets both at once (the log keeps the tightest).
        let mut fresh = HashSet::new();
        assert_eq!(new_warnings(&cert(3), 0, &mut fresh), [30, 7]);
    }
}
