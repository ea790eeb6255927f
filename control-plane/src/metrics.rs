//! Prometheus metrics of the control plane, served on the admin port's `/metrics`.
//!
//! Counters are registered without the `_total` suffix, which the encoder appends.
//! prometheus-client writes OpenMetrics, where a counter family `x` has samples `x_total`;
//! the classic Prometheus text format (what `promtool check metrics` and most scrapers
//! read) names the family `x_total` itself, so the exposition is converted to it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::index::ResourceType;

/// Label set of per-type discovery metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct TypeLabel {
    r#type: &'static str,
}

impl From<ResourceType> for TypeLabel {
    fn from(t: ResourceType) -> Self {
        Self { r#type: t.as_str() }
    }
}

/// Label set of refusal and rejection counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    reason: &'static str,
}

/// Label set of the CA expiry gauge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct CaCertLabel {
    role: &'static str,
    serial: String,
}

/// Label set of the reload counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    result: &'static str,
}

/// Every metric of the control plane.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    certificates_issued: Counter,
    certify_refusals: Family<ReasonLabel, Counter>,
    connected_proxies: Gauge,
    streams_closed: Family<ReasonLabel, Counter>,
    pushes: Family<TypeLabel, Counter>,
    acks: Family<TypeLabel, Counter>,
    nacks: Family<TypeLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
    serving_certificate_renewals: Counter,
    grpc_connections: Gauge,
    grpc_refusals: Family<ReasonLabel, Counter>,
    unmeshed_pods: Gauge,
    ca_expiry: Family<CaCertLabel, Gauge>,
    ca_reloads: Family<ResultLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let certificates_issued = Counter::default();
        let certify_refusals = Family::<ReasonLabel, Counter>::default();
        let connected_proxies = Gauge::default();
        let streams_closed = Family::<ReasonLabel, Counter>::default();
        let pushes = Family::<TypeLabel, Counter>::default();
        let acks = Family::<TypeLabel, Counter>::default();
        let nacks = Family::<TypeLabel, Counter>::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        let serving_certificate_renewals = Counter::default();
        let grpc_connections = Gauge::default();
        let grpc_refusals = Family::<ReasonLabel, Counter>::default();
        let unmeshed_pods = Gauge::default();
        let ca_expiry = Family::<CaCertLabel, Gauge>::default();
        let ca_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "palisade_ca_reloads",
            "Changes of the CA directory (a rotation stage, new files) loaded, by result; on \
             failure the CA in force stays",
            ca_reloads.clone(),
        );
        registry.register(
            "palisade_ca_certificate_expiry_seconds",
            "Seconds until each CA certificate expires (role root: in the trust bundle; \
             intermediate: issuing), by serial",
            ca_expiry.clone(),
        );
        registry.register(
            "palisade_kubernetes_unmeshed_pods",
            "Pods opted in to the mesh (namespace label or pod annotation) running without a \
             sidecar, as the Kubernetes source last saw them",
            unmeshed_pods.clone(),
        );
        registry.register(
            "palisade_identity_certificates_issued",
            "Workload certificates signed by the identity service",
            certificates_issued.clone(),
        );
        registry.register(
            "palisade_identity_refusals",
            "Certificate requests refused, by reason",
            certify_refusals.clone(),
        );
        registry.register(
            "palisade_discovery_connected_proxies",
            "Discovery streams currently open",
            connected_proxies.clone(),
        );
        registry.register(
            "palisade_discovery_streams_closed",
            "Discovery streams refused or closed by the control plane, by reason",
            streams_closed.clone(),
        );
        registry.register(
            "palisade_discovery_pushes",
            "Snapshots sent to proxies, by type",
            pushes.clone(),
        );
        registry.register(
            "palisade_discovery_acks",
            "Snapshots acknowledged by proxies, by type",
            acks.clone(),
        );
        registry.register(
            "palisade_discovery_nacks",
            "Snapshots rejected by proxies, by type",
            nacks.clone(),
        );
        registry.register(
            "palisade_config_reloads",
            "Configuration reloads, by result",
            reloads.clone(),
        );
        registry.register(
            "palisade_control_plane_certificate_renewals",
            "Renewals of the control plane's own serving certificate",
            serving_certificate_renewals.clone(),
        );
        registry.register(
            "palisade_grpc_connections",
            "gRPC connections open after their TLS handshake",
            grpc_connections.clone(),
        );
        registry.register(
            "palisade_grpc_connections_refused",
            "gRPC connections closed by a limit, by reason",
            grpc_refusals.clone(),
        );
        Self {
            registry,
            certificates_issued,
            certify_refusals,
            connected_proxies,
            streams_closed,
            pushes,
            acks,
            nacks,
            reloads,
            serving_certificate_renewals,
            grpc_connections,
            grpc_refusals,
            unmeshed_pods,
            ca_expiry,
            ca_reloads,
        }
    }

    /// Replaces the CA expiry gauges: (role, serial, seconds left) per certificate.
    pub fn ca_expiry(&self, certs: impl Iterator<Item = (&'static str, String, i64)>) {
        self.ca_expiry.clear();
        for (role, serial, left) in certs {
            self.ca_expiry
                .get_or_create(&CaCertLabel { role, serial })
                .set(left);
        }
    }

    pub fn unmeshed_pods(&self, count: usize) {
        self.unmeshed_pods
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The exposition in the Prometheus text format 0.0.4.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        palisade_proto::exposition::to_prometheus_text(&out)
    }

    pub fn certificate_issued(&self) {
        self.certificates_issued.inc();
    }

    pub fn certify_refused(&self, reason: &'static str) {
        self.certify_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn proxy_connected(&self) {
        self.connected_proxies.inc();
    }

    pub fn proxy_disconnected(&self) {
        self.connected_proxies.dec();
    }

    pub fn stream_closed(&self, reason: &'static str) {
        self.streams_closed
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn pushed(&self, t: ResourceType) {
        self.pushes.get_or_create(&t.into()).inc();
    }

    pub fn acked(&self, t: ResourceType) {
        self.acks.get_or_create(&t.into()).inc();
    }

    pub fn nacked(&self, t: ResourceType) {
        self.nacks.get_or_create(&t.into()).inc();
    }

    pub fn ca_reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.ca_reloads.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn serving_certificate_renewed(&self) {
        self.serving_certificate_renewals.inc();
    }

    pub fn grpc_connection_opened(&self) {
        self.grpc_connections.inc();
    }

    pub fn grpc_connection_closed(&self) {
        self.grpc_connections.dec();
    }

    /// `reason` is one of a fixed set: `connection_limit`, `anonymous_limit`,
    /// `handshake_timeout`.
    pub fn grpc_connection_refused(&self, reason: &'static str) {
        self.grpc_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_end_in_total() {
        let m = Metrics::new();
        m.certificate_issued();
        m.certify_refused("unauthenticated");
        m.acked(ResourceType::Services);
        m.nacked(ResourceType::Workload);
        m.reloaded(true);
        let text = m.encode();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                assert!(name.starts_with("palisade_"), "{line}");
                if kind == "counter" {
                    assert!(
                        name.ends_with("_total"),
                        "counter {name} does not end in _total"
                    );
                }
            }
        }
        assert!(
            text.contains("palisade_discovery_nacks_total{type=\"workload\"} 1"),
            "{text}"
        );
        assert!(text.contains("palisade_discovery_acks_total{type=\"services\"} 1"));
        assert!(text.contains("palisade_identity_certificates_issued_total 1"));
        assert!(text.contains("# TYPE palisade_discovery_connected_proxies gauge"));
        assert!(!text.contains("# EOF"));
    }
}

#[cfg(test)]
mod promtool {
    use super::*;

    /// Runs `promtool check metrics` on the exposition when promtool is installed.
    #[test]
    fn exposition_passes_promtool() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let m = Metrics::new();
        m.certificate_issued();
        m.certify_refused("unauthenticated");
        m.proxy_connected();
        m.stream_closed("shutdown");
        for t in ResourceType::ALL {
            m.pushed(t);
            m.acked(t);
            m.nacked(t);
        }
        m.reloaded(true);
        m.reloaded(false);
        m.serving_certificate_renewed();
        let text = m.encode();
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                println!("SKIPPED exposition_passes_promtool: promtool not runnable ({e})");
                return;
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(text.as_bytes()).expect("write to promtool");
        }
        let out = child.wait_with_output().expect("promtool runs");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "promtool: {report}\n{text}"
        );
    }
}
