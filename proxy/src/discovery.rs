//! The discovery client: subscribes to every resource type, validates each snapshot, ACKs or
//! NACKs it by version and nonce, and publishes a complete [`MeshView`]. A rejected snapshot
//! changes nothing; losing the control plane changes nothing either (the last view stays in
//! force) while the client reconnects with jittered backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use palisade_certs::TrustBundle;
use palisade_certs::tls::Credentials;
use palisade_proto::v1::discovery_client::DiscoveryClient;
use palisade_proto::v1::{self, DiscoveryRequest, DiscoveryResponse, ErrorDetail, Node};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::authz::Authorizer;
use crate::control::{Backoff, ControlPlaneTarget, StreamError};
use crate::egress::EgressRules;
use crate::metrics::Metrics;
use crate::model::{
    LocalWorkload, MeshSettings, MeshView, ServiceTable, SnapshotError, trust_bundle,
};
use crate::netpol::NetworkPolicies;

/// The policy named by decisions while the first NetworkPolicy snapshot was rejected.
pub const INVALID_NETWORK_POLICY: &str = "invalid-network-policy";

/// Snapshots received so far, by type; a view is published once all are present.
#[derive(Debug, Default, Clone)]
pub struct Snapshots {
    workload: Option<Arc<LocalWorkload>>,
    services: Option<Arc<ServiceTable>>,
    bundle: Option<(TrustBundle, Arc<str>)>,
    settings: Option<Arc<MeshSettings>>,
    authorization: Option<Arc<Authorizer>>,
    egress: Option<Arc<EgressRules>>,
    network_policy: Option<Arc<NetworkPolicies>>,
    /// Applied version per type URL.
    pub versions: BTreeMap<String, String>,
    /// Last rejection per type URL (cleared by the next accepted snapshot).
    pub rejections: BTreeMap<String, String>,
}

impl Snapshots {
    /// Validates and applies one response; on error nothing changes, except that a first
    /// NetworkPolicy snapshot that is rejected leaves every connection refused.
    pub fn apply(&mut self, response: &DiscoveryResponse) -> Result<(), SnapshotError> {
        use v1::discovery_response::Resources;
        let mismatch = |expected: &str| SnapshotError {
            resource: "DiscoveryResponse".into(),
            field: "resources".into(),
            message: format!(
                "type_url {} does not match payload {expected}",
                response.type_url
            ),
        };
        match &response.resources {
            Some(Resources::Workload(w)) if response.type_url == v1::WORKLOAD_TYPE_URL => {
                self.workload = Some(Arc::new(LocalWorkload::try_from(w)?));
            }
            Some(Resources::Services(s)) if response.type_url == v1::SERVICES_TYPE_URL => {
                self.services = Some(Arc::new(ServiceTable::try_from(s)?));
            }
            Some(Resources::TrustBundle(b)) if response.type_url == v1::TRUST_BUNDLE_TYPE_URL => {
                let bundle = trust_bundle(b)?;
                if let Some(settings) = &self.settings
                    && bundle.trust_domain() != &settings.trust_domain
                {
                    return Err(SnapshotError {
                        resource: "TrustBundle".into(),
                        field: "trust_domain".into(),
                        message: format!(
                            "{} differs from the mesh trust domain {}",
                            bundle.trust_domain(),
                            settings.trust_domain
                        ),
                    });
                }
                self.bundle = Some((bundle, Arc::from(b.issuer_fingerprint.as_str())));
            }
            Some(Resources::Mesh(m)) if response.type_url == v1::MESH_TYPE_URL => {
                self.settings = Some(Arc::new(MeshSettings::try_from(m)?));
            }
            Some(Resources::Authorization(a))
                if response.type_url == v1::AUTHORIZATION_TYPE_URL =>
            {
                self.authorization = Some(Arc::new(Authorizer::try_from(a)?));
            }
            Some(Resources::Egress(e)) if response.type_url == v1::EGRESS_TYPE_URL => {
                self.egress = Some(Arc::new(EgressRules::try_from(e)?));
            }
            Some(Resources::Workload(_)) => return Err(mismatch("WorkloadSnapshot")),
            Some(Resources::Authorization(_)) => return Err(mismatch("AuthorizationSnapshot")),
            Some(Resources::Egress(_)) => return Err(mismatch("EgressSnapshot")),
            Some(Resources::Services(_)) => return Err(mismatch("ServiceSnapshot")),
            Some(Resources::TrustBundle(_)) => return Err(mismatch("TrustBundle")),
            Some(Resources::Mesh(_)) => return Err(mismatch("MeshSettings")),
            Some(Resources::NetworkPolicy(n))
                if response.type_url == v1::NETWORK_POLICY_TYPE_URL =>
            {
                match NetworkPolicies::try_from(n) {
                    Ok(policies) => self.network_policy = Some(Arc::new(policies)),
                    Err(e) => {
                        // With no last good snapshot there is nothing to keep: refuse
                        // every connection until a valid one arrives (the view is complete
                        // and the proxy ready, so the refusals are counted and explained).
                        if self.network_policy.is_none() {
                            self.network_policy =
                                Some(Arc::new(NetworkPolicies::deny_all(INVALID_NETWORK_POLICY)));
                        }
                        return Err(e.into());
                    }
                }
            }
            Some(Resources::NetworkPolicy(_)) => return Err(mismatch("NetworkPolicySnapshot")),
            None => {
                return Err(SnapshotError {
                    resource: "DiscoveryResponse".into(),
                    field: "resources".into(),
                    message: format!("no payload for {}", response.type_url),
                });
            }
        }
        self.versions
            .insert(response.type_url.clone(), response.version_info.clone());
        self.rejections.remove(&response.type_url);
        Ok(())
    }

    /// The complete view, once every type has arrived.
    pub fn view(&self) -> Option<MeshView> {
        // A view is only complete once the policies are known too, so a proxy never serves
        // before its authorization has arrived (and, with none, serves nothing).
        Some(MeshView {
            workload: self.workload.clone()?,
            services: self.services.clone()?,
            bundle: self.bundle.as_ref()?.0.clone(),
            issuer_fingerprint: self.bundle.as_ref()?.1.clone(),
            settings: self.settings.clone()?,
            authz: self.authorization.clone()?,
            egress: self.egress.clone()?,
            netpol: self.network_policy.clone()?,
        })
    }
}

/// Where discovery results go.
#[derive(Debug, Clone)]
pub struct DiscoveryOutputs {
    /// The complete, validated view.
    pub view: watch::Sender<Option<Arc<MeshView>>>,
    /// Versions and rejections, for `/config`.
    pub status: watch::Sender<Snapshots>,
}

/// Runs the discovery stream until `shutdown`, reconnecting with backoff.
pub async fn run(
    target: ControlPlaneTarget,
    node: Node,
    creds: watch::Receiver<Option<Arc<Credentials>>>,
    verify_bundle: watch::Receiver<TrustBundle>,
    outputs: DiscoveryOutputs,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
    let mut snapshots = Snapshots::default();
    let mut creds = creds;
    loop {
        let Some(current) = crate::control::credentials(&mut creds, &shutdown).await else {
            return;
        };
        let bundle = verify_bundle.borrow().clone();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = stream_once(&target, &node, (&current, creds.clone()), &bundle, &mut snapshots, &outputs, &metrics, &mut backoff) => r,
        };
        metrics.discovery_connected(false);
        let wait = backoff.next_delay();
        match result {
            Ok(()) => tracing::warn!(
                retry_in_ms = wait.as_millis() as u64,
                "discovery stream ended; reconnecting"
            ),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "discovery stream failed; keeping the last configuration and reconnecting")
            }
        }
        metrics.discovery_reconnect();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream_once(
    target: &ControlPlaneTarget,
    node: &Node,
    (creds, mut renewals): (&Credentials, watch::Receiver<Option<Arc<Credentials>>>),
    bundle: &TrustBundle,
    snapshots: &mut Snapshots,
    outputs: &DiscoveryOutputs,
    metrics: &Metrics,
    backoff: &mut Backoff,
) -> Result<(), StreamError> {
    let channel = target.connect(bundle, Some(creds)).await?;
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    // Every request says which CA the certificate served now comes from, so the control
    // plane can tell when a rotation may drop the old root.
    let issuer = |renewals: &mut watch::Receiver<Option<Arc<Credentials>>>| {
        renewals
            .borrow_and_update()
            .as_ref()
            .map(|c| c.issuer_fingerprint().to_owned())
            .unwrap_or_default()
    };
    let mut certificate_issuer = issuer(&mut renewals);
    let mut watching_renewals = true;
    // The last answer to a trust bundle, repeated after a renewal to report it.
    let mut last_bundle_answer: Option<DiscoveryRequest> = None;
    for (i, type_url) in v1::ALL_TYPE_URLS.iter().enumerate() {
        let request = DiscoveryRequest {
            node: (i == 0).then(|| node.clone()),
            type_url: (*type_url).to_owned(),
            version_info: snapshots
                .versions
                .get(*type_url)
                .cloned()
                .unwrap_or_default(),
            response_nonce: String::new(),
            error_detail: None,
            certificate_issuer: certificate_issuer.clone(),
        };
        tx.send(request).await.map_err(|_| StreamError::Closed)?;
    }
    let mut responses = DiscoveryClient::new(channel)
        .stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    tracing::info!(control_plane = %target.addr, "discovery stream open");
    metrics.discovery_connected(true);
    loop {
        let response = tokio::select! {
            message = responses.message() => match message? {
                Some(response) => response,
                None => break,
            },
            changed = renewals.changed(), if watching_renewals => {
                if changed.is_err() {
                    watching_renewals = false;
                    continue;
                }
                certificate_issuer = issuer(&mut renewals);
                if let Some(mut again) = last_bundle_answer.clone() {
                    again.certificate_issuer.clone_from(&certificate_issuer);
                    tx.send(again).await.map_err(|_| StreamError::Closed)?;
                }
                continue;
            }
        };
        backoff.reset();
        let ack = match snapshots.apply(&response) {
            Ok(()) => {
                metrics.discovery_update(&response.type_url, true);
                tracing::debug!(type_url = %response.type_url, version = %response.version_info, "applied");
                DiscoveryRequest {
                    node: None,
                    type_url: response.type_url.clone(),
                    version_info: response.version_info.clone(),
                    response_nonce: response.nonce.clone(),
                    error_detail: None,
                    certificate_issuer: certificate_issuer.clone(),
                }
            }
            Err(e) => {
                metrics.discovery_update(&response.type_url, false);
                tracing::warn!(type_url = %response.type_url, version = %response.version_info, error = %e, "rejected configuration; keeping the last good one");
                snapshots
                    .rejections
                    .insert(response.type_url.clone(), e.to_string());
                DiscoveryRequest {
                    node: None,
                    type_url: response.type_url.clone(),
                    version_info: snapshots
                        .versions
                        .get(&response.type_url)
                        .cloned()
                        .unwrap_or_default(),
                    response_nonce: response.nonce.clone(),
                    error_detail: Some(ErrorDetail {
                        message: e.to_string(),
                    }),
                    certificate_issuer: certificate_issuer.clone(),
                }
            }
        };
        if ack.type_url == v1::TRUST_BUNDLE_TYPE_URL {
            last_bundle_answer = Some(ack.clone());
        }
        publish(snapshots, outputs);
        tx.send(ack).await.map_err(|_| StreamError::Closed)?;
    }
    Ok(())
}

/// Publishes the view if it is complete and changed, and the status always.
pub fn publish(snapshots: &Snapshots, outputs: &DiscoveryOutputs) {
    if let Some(view) = snapshots.view() {
        outputs.view.send_replace(Some(Arc::new(view)));
    }
    outputs.status.send_replace(snapshots.clone());
}

#[cfg(test)]
mod tests {
    use super::*;
    use v1::discovery_response::Resources;

    fn response(resources: Resources, type_url: &str) -> DiscoveryResponse {
        DiscoveryResponse {
            type_url: type_url.into(),
            version_info: "v".into(),
            nonce: "n".into(),
            resources: Some(resources),
        }
    }

    fn authz(action: v1::Action) -> DiscoveryResponse {
        response(
            Resources::Authorization(v1::AuthorizationSnapshot {
                policies: vec![v1::AuthorizationPolicy {
                    namespace: "shop".into(),
                    name: "p".into(),
                    action: action as i32,
                    dry_run: false,
                    rules: vec![],
                }],
            }),
            v1::AUTHORIZATION_TYPE_URL,
        )
    }

    #[test]
    fn an_invalid_authorization_snapshot_is_rejected_and_the_last_good_one_kept() {
        let mut snapshots = Snapshots::default();
        snapshots.apply(&authz(v1::Action::Deny)).unwrap();
        let good = snapshots.authorization.clone().unwrap();
        assert_eq!(good.len(), 1);
        let e = snapshots
            .apply(&authz(v1::Action::Unspecified))
            .unwrap_err();
        assert_eq!(e.resource, "AuthorizationPolicy shop/p (policies[0])");
        assert_eq!(e.field, "action");
        assert!(Arc::ptr_eq(
            snapshots.authorization.as_ref().unwrap(),
            &good
        ));
        let bad_egress = response(
            Resources::Egress(v1::EgressSnapshot {
                rules: vec![v1::EgressRule {
                    policy: "shop/e".into(),
                    hosts: vec![],
                    ports: vec![0],
                    ip_blocks: vec![],
                }],
            }),
            v1::EGRESS_TYPE_URL,
        );
        assert_eq!(snapshots.apply(&bad_egress).unwrap_err().field, "ports[0]");
        assert!(snapshots.egress.is_none());
        // Without every type, and so without policies, there is no view to serve with.
        assert!(snapshots.view().is_none());
    }

    fn netpol(snapshot: v1::NetworkPolicySnapshot) -> DiscoveryResponse {
        response(
            Resources::NetworkPolicy(snapshot),
            v1::NETWORK_POLICY_TYPE_URL,
        )
    }

    #[test]
    fn a_network_policy_snapshot_is_applied_and_an_invalid_one_keeps_the_last_good() {
        let mut snapshots = Snapshots::default();
        let deny_all = v1::NetworkPolicySnapshot {
            ingress_isolated: true,
            ingress: vec![v1::NetworkPolicyRules {
                policy: "shop/deny-all".into(),
                rules: vec![],
            }],
            ..Default::default()
        };
        snapshots.apply(&netpol(deny_all.clone())).unwrap();
        let good = snapshots.network_policy.clone().unwrap();
        assert!(good.ingress_isolated());
        let mut bad = deny_all;
        bad.peers.push(v1::NetworkPeerWorkload {
            address: "not-an-ip".into(),
            ..Default::default()
        });
        let e = snapshots.apply(&netpol(bad)).unwrap_err();
        assert_eq!(e.resource, "NetworkPolicySnapshot");
        assert_eq!(e.field, "peers[0].address");
        assert_eq!(e.message, "\"not-an-ip\" is not an IP address");
        assert!(Arc::ptr_eq(
            snapshots.network_policy.as_ref().unwrap(),
            &good
        ));
        // The payload must be the type it claims.
        let mut mislabelled = netpol(v1::NetworkPolicySnapshot::default());
        mislabelled.type_url = v1::EGRESS_TYPE_URL.into();
        assert!(snapshots.apply(&mislabelled).is_err());
        assert!(Arc::ptr_eq(
            snapshots.network_policy.as_ref().unwrap(),
            &good
        ));
    }

    #[test]
    fn a_rejected_first_network_policy_snapshot_denies_everything() {
        let mut snapshots = Snapshots::default();
        let bad = v1::NetworkPolicySnapshot {
            egress_isolated: true,
            ..Default::default()
        };
        assert!(snapshots.apply(&netpol(bad)).is_err());
        let policies = snapshots.network_policy.clone().unwrap();
        let d = policies.ingress("10.0.0.1".parse().unwrap(), None, 80);
        assert!(!d.allowed);
        assert_eq!(d.policy_label(), INVALID_NETWORK_POLICY);
        assert!(!policies.egress("10.0.0.1".parse().unwrap(), 80).allowed);
        // A valid snapshot replaces it.
        snapshots
            .apply(&netpol(v1::NetworkPolicySnapshot::default()))
            .unwrap();
        let policies = snapshots.network_policy.clone().unwrap();
        assert!(!policies.ingress_isolated() && !policies.egress_isolated());
    }
}
