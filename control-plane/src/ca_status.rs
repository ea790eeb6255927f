//! The CA as a running control plane sees it (`GET /ca` on the admin port, and `palisade ca
//! status --control-plane`): roots of the trust bundle and issuing intermediates with their
//! expiry, and which trust bundle version the connected proxies have acknowledged, the
//! number a staged rotation waits on.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use palisade_certs::ActiveCa;
use serde::{Deserialize, Serialize};

use crate::discovery::ProxyStatus;
use crate::expiry::ca_certs;
use crate::index::ResourceType;

/// Largest status answer read.
const MAX_ANSWER: usize = 4 << 20;

/// One CA certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaCertStatus {
    /// Subject.
    pub subject: String,
    /// Serial, hex.
    pub serial: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Seconds left (negative once expired).
    pub expires_in_seconds: i64,
}

/// What the connected proxies hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxiesStatus {
    /// Discovery streams open.
    pub connected: usize,
    /// Proxies by the trust bundle version they acknowledged last.
    pub trust_bundle_acked: BTreeMap<String, usize>,
    /// Proxies that have not acknowledged the trust bundle last sent to them.
    pub trust_bundle_pending: usize,
    /// Proxies that acknowledged the trust bundle version served now.
    #[serde(default)]
    pub trust_bundle_current: usize,
    /// Proxies by the issuer fingerprint of the certificate they serve with ("unknown":
    /// not reported yet).
    #[serde(default)]
    pub leaves_by_issuer: BTreeMap<String, usize>,
    /// Proxies (`namespace/workload`) whose certificate is not from the issuer in force,
    /// at most [`MAX_LISTED`] of them.
    #[serde(default)]
    pub not_on_current_issuer: Vec<String>,
}

/// A rotation as a control plane serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationStatus {
    /// `trust-new-root`, `issue-from-new` or `remove-old-root`.
    pub stage: String,
    /// 1, 2 or 3.
    pub stage_number: u8,
    /// When the rotation began, RFC 3339.
    pub started: String,
    /// Fingerprint of the issuer being replaced.
    pub old_issuer: String,
    /// Fingerprint of the issuer replacing it.
    pub new_issuer: String,
    /// Fingerprints of the roots stage 3 stops trusting.
    pub retired_roots: Vec<String>,
}

/// The CA status of one control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaStatus {
    /// Trust domain.
    pub trust_domain: String,
    /// Roots of the trust bundle (several during a rotation).
    pub roots: Vec<CaCertStatus>,
    /// Certificates leaves are issued from, below the root.
    pub intermediates: Vec<CaCertStatus>,
    /// Fingerprint of the certificate that signs leaves now.
    #[serde(default)]
    pub issuer_fingerprint: String,
    /// The trust bundle version pushed now.
    #[serde(default)]
    pub trust_bundle_version: String,
    /// The rotation in progress, as this control plane serves it.
    #[serde(default)]
    pub rotation: Option<RotationStatus>,
    /// The connected proxies.
    pub proxies: ProxiesStatus,
}

/// Longest list of workloads in a status.
pub const MAX_LISTED: usize = 100;

/// Why the status could not be fetched.
pub type FetchError = crate::admin_client::AdminClientError;

/// The status of `active` with `proxies` connected and trust bundle `bundle_version`
/// served, at `now` (Unix seconds).
pub(crate) fn status(
    active: &ActiveCa,
    proxies: &[ProxyStatus],
    bundle_version: &str,
    now: i64,
) -> CaStatus {
    let ca = &active.ca;
    let mut roots = Vec::new();
    let mut intermediates = Vec::new();
    for cert in ca_certs(ca) {
        let entry = CaCertStatus {
            subject: cert.subject,
            serial: cert.serial,
            not_after: palisade_certs::ca::fmt_unix(cert.not_after),
            expires_in_seconds: cert.not_after - now,
        };
        match cert.role {
            "root" => roots.push(entry),
            _ => intermediates.push(entry),
        }
    }
    let issuer = ca.issuer_fingerprint();
    let mut summary = ProxiesStatus {
        connected: proxies.len(),
        ..Default::default()
    };
    for proxy in proxies {
        let leaf = if proxy.certificate_issuer.is_empty() {
            "unknown"
        } else {
            proxy.certificate_issuer.as_str()
        };
        *summary.leaves_by_issuer.entry(leaf.to_owned()).or_default() += 1;
        if leaf != issuer && summary.not_on_current_issuer.len() < MAX_LISTED {
            summary
                .not_on_current_issuer
                .push(proxy.workload.to_string());
        }
        let Some(bundle) = proxy.types.get(&ResourceType::TrustBundle) else {
            summary.trust_bundle_pending += 1;
            continue;
        };
        if let Some(acked) = &bundle.acked_version {
            *summary.trust_bundle_acked.entry(acked.clone()).or_default() += 1;
            if acked == bundle_version {
                summary.trust_bundle_current += 1;
            }
        }
        if bundle.acked_version != bundle.sent_version || bundle.acked_version.is_none() {
            summary.trust_bundle_pending += 1;
        }
    }
    summary.not_on_current_issuer.sort();
    let rotation = active.rotation.as_ref().map(|r| RotationStatus {
        stage: r.stage.to_string(),
        stage_number: r.stage.number(),
        started: palisade_certs::ca::fmt_unix(r.started_unix),
        old_issuer: r.old_issuer.clone(),
        new_issuer: r.new_issuer.clone(),
        retired_roots: r.retired_roots().into_iter().map(str::to_owned).collect(),
    });
    CaStatus {
        trust_domain: ca.trust_domain().to_string(),
        roots,
        intermediates,
        issuer_fingerprint: issuer.to_owned(),
        trust_bundle_version: bundle_version.to_owned(),
        rotation,
        proxies: summary,
    }
}

/// Fetches `GET /ca` from a control plane's admin address.
pub async fn fetch(addr: SocketAddr) -> Result<CaStatus, FetchError> {
    crate::admin_client::get_json(addr, "/ca", MAX_ANSWER).await
}
