//! Where NetworkPolicy decisions ([`crate::netpol`]) meet connections: a connection is
//! admitted or refused before any byte passes, every refusal is counted
//! (`palisade_proxy_netpol_denials_total{direction, policy}`) and logged at WARN under the
//! authorization log target, and an open connection is watched so that a configuration
//! change that no longer allows it closes it ("late rejection").

use std::net::IpAddr;
use std::sync::Arc;

use palisade_certs::SpiffeId;
use tokio::sync::watch;

use crate::enforce::{LOG_TARGET, UNAUTHENTICATED};
use crate::http::Failure;
use crate::metrics::{Metrics, NetpolLabels};
use crate::model::MeshView;
use crate::netpol::{NetDecidedBy, NetDecision, NetDirection, NetworkPolicies};
use crate::observe::{Seen, Verdict};

/// One TCP connection as NetworkPolicy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetConn {
    /// Ingress: a connection this workload receives; egress: one it opens.
    pub(crate) direction: NetDirection,
    /// Ingress: the caller's address; egress: the destination's (the chosen endpoint's pod
    /// address, or an address outside the mesh).
    pub(crate) peer: IpAddr,
    /// Ingress: the caller's verified identity (`None` for a plaintext caller).
    pub(crate) identity: Option<SpiffeId>,
    /// Ingress: this workload's app port; egress: the destination workload's port.
    pub(crate) port: u16,
}

impl NetConn {
    /// A connection this workload receives.
    pub(crate) fn ingress(source: IpAddr, identity: Option<SpiffeId>, port: u16) -> Self {
        Self {
            direction: NetDirection::Ingress,
            peer: source,
            identity,
            port,
        }
    }

    /// A connection this workload opens.
    pub(crate) fn egress(destination: IpAddr, port: u16) -> Self {
        Self {
            direction: NetDirection::Egress,
            peer: destination,
            identity: None,
            port,
        }
    }

    /// The decision of `policies` on this connection.
    pub(crate) fn decide(&self, policies: &NetworkPolicies) -> NetDecision {
        match self.direction {
            NetDirection::Ingress => policies.ingress(self.peer, self.identity.as_ref(), self.port),
            NetDirection::Egress => policies.egress(self.peer, self.port),
        }
    }
}

/// Decides `conn` under `view`; a denial is counted and logged, and returned.
pub(crate) fn admit(metrics: &Metrics, view: &MeshView, conn: &NetConn) -> Result<(), NetDecision> {
    let decision = conn.decide(&view.netpol);
    if decision.allowed {
        return Ok(());
    }
    record_denial(metrics, view, conn, &decision, false);
    Err(decision)
}

/// The response-level failure of a NetworkPolicy denial (HTTP 403 / grpc-status 7, with
/// `x-palisade-denied-by` naming the first isolating policy unless the mesh hides it).
pub(crate) fn failure(view: &MeshView, decision: &NetDecision) -> Failure {
    Failure::NetworkPolicy {
        by: decision.policy_label().to_owned(),
        hide: view.settings.hide_denial_reasons,
    }
}

/// Counts and logs a denial; `late` marks an open connection closed after a change.
pub(crate) fn record_denial(
    metrics: &Metrics,
    view: &MeshView,
    conn: &NetConn,
    decision: &NetDecision,
    late: bool,
) {
    metrics.netpol_denial(&NetpolLabels {
        direction: conn.direction.as_str(),
        policy: decision.policy_label().to_owned(),
    });
    let workload = format!("{}/{}", view.workload.namespace, view.workload.name);
    let (source, identity, destination) = match conn.direction {
        NetDirection::Ingress => (
            conn.peer.to_string(),
            conn.identity
                .as_ref()
                .map_or_else(|| UNAUTHENTICATED.to_owned(), ToString::to_string),
            format!("{workload}:{}", conn.port),
        ),
        NetDirection::Egress => (
            workload,
            view.workload.identity.to_string(),
            SocketText(conn.peer, conn.port).to_string(),
        ),
    };
    let (observed_direction, observed_source) = match conn.direction {
        NetDirection::Ingress => (
            "inbound",
            conn.identity
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        ),
        NetDirection::Egress => ("outbound", identity.clone()),
    };
    if conn.direction == NetDirection::Ingress {
        metrics
            .observer()
            .observed()
            .record(&crate::observed::Request {
                source: &observed_source,
                port: conn.port,
                method: "",
                path: "",
                allowed: false,
                policy: decision.policy_label(),
                rule: None,
            });
    }
    metrics.observer().decision(
        Verdict::Deny,
        &Seen {
            direction: observed_direction,
            source: &observed_source,
            destination: &destination,
            method: "",
            path: "",
            policy: decision.policy_label(),
            rule: None,
        },
        || decision.explain().to_string(),
    );
    let policies = match &decision.decided_by {
        NetDecidedBy::NoRuleAllows { isolating } => {
            isolating.iter().map(|p| &**p).collect::<Vec<_>>().join(",")
        }
        NetDecidedBy::NotIsolated | NetDecidedBy::Rule { .. } => String::new(),
    };
    tracing::warn!(
        target: LOG_TARGET,
        direction = %conn.direction,
        source = %source,
        identity = %identity,
        destination = %destination,
        port = conn.port,
        policies = %policies,
        decision = %decision.explain(),
        late,
        "{}",
        if late {
            "open connection closed by NetworkPolicy after a policy change"
        } else {
            "connection denied by NetworkPolicy"
        }
    );
}

/// `ip:port` with IPv6 brackets.
struct SocketText(IpAddr, u16);

impl std::fmt::Display for SocketText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::net::SocketAddr::new(self.0, self.1).fmt(f)
    }
}

/// Resolves once a new configuration no longer allows `conn` (the late denial has been
/// counted and logged then); never while it is allowed, nor after the proxy stops
/// publishing configurations.
pub(crate) async fn revoked(
    mut view: watch::Receiver<Option<Arc<MeshView>>>,
    metrics: Arc<Metrics>,
    conn: NetConn,
) {
    loop {
        // The current view first: one published between the admission and this future's
        // first poll must not be missed (deciding the admitting view again is cheap).
        let current = view.borrow_and_update().clone();
        if let Some(current) = current {
            let decision = conn.decide(&current.netpol);
            if !decision.allowed {
                record_denial(&metrics, &current, &conn, &decision, true);
                return;
            }
        }
        if view.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}
