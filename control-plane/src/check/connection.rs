//! The connection (L4) half of a check: NetworkPolicy at the sender's sidecar (egress)
//! and at the receiver's (ingress), each compiled by the control plane exactly as it is
//! pushed, and decided by the sidecar's own evaluator.

use std::net::IpAddr;

use palisade_certs::SpiffeId;
use palisade_proxy::netpol::{NetDecidedBy, NetDecision, NetworkPolicies};

use super::CheckError;
use crate::MeshSnapshot;
use crate::model::Workload;

/// NetworkPolicy's answer for one connection.
#[derive(Debug)]
pub struct ConnectionVerdict {
    /// At the caller's sidecar; `None` when the caller is not a workload of the mesh.
    pub egress: Option<NetDecision>,
    /// At the destination's sidecar.
    pub ingress: NetDecision,
}

impl ConnectionVerdict {
    /// The side that refused it, egress first (the sender decides before any byte leaves).
    pub fn refusal(&self) -> Option<(&'static str, &NetDecision)> {
        match &self.egress {
            Some(e) if !e.allowed => Some(("egress", e)),
            _ if !self.ingress.allowed => Some(("ingress", &self.ingress)),
            _ => None,
        }
    }
}

/// Decides the connection `source` (a workload, or an address and identity) makes to
/// `destination`'s app `port`.
pub fn decide(
    snapshot: &MeshSnapshot,
    source_workload: Option<&Workload>,
    source_ip: Option<IpAddr>,
    source_identity: Option<&SpiffeId>,
    destination: &Workload,
    port: u16,
) -> Result<ConnectionVerdict, CheckError> {
    let egress = source_workload
        .map(|w| policies_of(snapshot, w).map(|p| p.egress(destination.address, port)))
        .transpose()?;
    let ingress_policies = policies_of(snapshot, destination)?;
    let ingress = match source_ip {
        Some(ip) => ingress_policies.ingress(ip, source_identity, port),
        None if !ingress_policies.ingress_isolated() => {
            // Not isolated: every caller passes, whatever its address.
            ingress_policies.ingress(IpAddr::from([0, 0, 0, 0]), source_identity, port)
        }
        None => {
            return Err(CheckError::NeedsSourceAddress(format!(
                "{}/{}",
                destination.namespace, destination.name
            )));
        }
    };
    Ok(ConnectionVerdict { egress, ingress })
}

fn policies_of(snapshot: &MeshSnapshot, w: &Workload) -> Result<NetworkPolicies, CheckError> {
    let compiled = crate::network_policy_for(snapshot, &w.namespace, &w.name)?;
    NetworkPolicies::try_from(&compiled).map_err(|e| CheckError::Compiled {
        what: format!("NetworkPolicies selecting {}/{}", w.namespace, w.name),
        message: e.to_string(),
    })
}

/// The decision as one JSON object.
pub fn decision_json(d: &NetDecision) -> serde_json::Value {
    let rule = match &d.decided_by {
        NetDecidedBy::Rule { rule, .. } => Some(*rule),
        _ => None,
    };
    let selected_by: Vec<&str> = match &d.decided_by {
        NetDecidedBy::NoRuleAllows { isolating } => isolating.iter().map(|p| &**p).collect(),
        _ => Vec::new(),
    };
    serde_json::json!({
        "decision": if d.allowed { "ALLOW" } else { "DENY" },
        "policy": d.policy_label(),
        "rule": rule,
        "selected_by": selected_by,
        "explanation": d.explain(),
    })
}
