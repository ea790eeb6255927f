//! Palisade's gRPC API between proxies and the control plane: the identity
//! (certificate) service and the xDS-like discovery stream.
//!
//! The Rust code under `src/gen` is generated from `palisade/v1/*.proto` and committed,
//! so building needs no `protoc`; `tests/bootstrap.rs` regenerates it and fails on any
//! difference.

/// Generated messages and services of package `palisade.v1`.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod v1 {
    include!("gen/palisade.v1.rs");

    /// Type URL of [`WorkloadSnapshot`] on the discovery stream.
    pub const WORKLOAD_TYPE_URL: &str = "type.palisade.dev/palisade.v1.WorkloadSnapshot";
    /// Type URL of [`ServiceSnapshot`] on the discovery stream.
    pub const SERVICES_TYPE_URL: &str = "type.palisade.dev/palisade.v1.ServiceSnapshot";
    /// Type URL of [`TrustBundle`] on the discovery stream.
    pub const TRUST_BUNDLE_TYPE_URL: &str = "type.palisade.dev/palisade.v1.TrustBundle";
    /// Type URL of [`MeshSettings`] on the discovery stream.
    pub const MESH_TYPE_URL: &str = "type.palisade.dev/palisade.v1.MeshSettings";

    /// Type URL of [`AuthorizationSnapshot`] on the discovery stream.
    pub const AUTHORIZATION_TYPE_URL: &str = "type.palisade.dev/palisade.v1.AuthorizationSnapshot";
    /// Type URL of [`EgressSnapshot`] on the discovery stream.
    pub const EGRESS_TYPE_URL: &str = "type.palisade.dev/palisade.v1.EgressSnapshot";
    /// Type URL of [`NetworkPolicySnapshot`] on the discovery stream.
    pub const NETWORK_POLICY_TYPE_URL: &str = "type.palisade.dev/palisade.v1.NetworkPolicySnapshot";

    /// Every type a proxy subscribes to, in the order it subscribes.
    pub const ALL_TYPE_URLS: &[&str] = &[
        WORKLOAD_TYPE_URL,
        MESH_TYPE_URL,
        TRUST_BUNDLE_TYPE_URL,
        SERVICES_TYPE_URL,
        AUTHORIZATION_TYPE_URL,
        EGRESS_TYPE_URL,
        NETWORK_POLICY_TYPE_URL,
    ];

    /// Upper bounds (milliseconds) of [`EdgeDelta::latency_buckets`]; the last bucket counts
    /// everything slower.
    pub const LATENCY_BUCKETS_MS: &[f64] = &[
        0.25,
        0.5,
        1.0,
        2.0,
        5.0,
        10.0,
        25.0,
        50.0,
        100.0,
        250.0,
        500.0,
        1000.0,
        2500.0,
        5000.0,
        f64::INFINITY,
    ];

    /// Milliseconds between a proxy's reports of [`ObservedRequest`]s while nobody watches
    /// (while watched they ride on every report).
    pub const OBSERVE_EVERY_MS: u64 = 5_000;
}

/// Conventions of the admin endpoints every Palisade component serves.
pub mod exposition {
    /// Rewrites the OpenMetrics text that `prometheus-client` produces into the classic
    /// Prometheus text format (what `promtool check metrics` and older scrapers expect):
    /// counter HELP/TYPE lines take the `_total` sample name, and `# EOF` is dropped.
    pub fn to_prometheus_text(openmetrics: &str) -> String {
        let counters: std::collections::HashSet<&str> = openmetrics
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.strip_suffix(" counter"))
            .collect();
        let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
        for line in openmetrics.lines() {
            if line == "# EOF" {
                continue;
            }
            let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
                let rest = line.strip_prefix(prefix)?;
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                counters
                    .contains(name)
                    .then(|| format!("{prefix}{name}_total {tail}"))
            });
            match rewritten {
                Some(l) => out.push_str(l.trim_end()),
                None => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }

    /// Content type of [`to_prometheus_text`] output.
    pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

    #[cfg(test)]
    mod tests {
        #[test]
        fn counter_metadata_takes_the_total_name() {
            let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total 3\n# HELP g Gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
            let text = super::to_prometheus_text(om);
            assert_eq!(
                text,
                "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total 3\n# HELP g Gauge.\n# TYPE g gauge\ng 1\n"
            );
        }
    }
}
