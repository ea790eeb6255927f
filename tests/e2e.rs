//! Palisade's end-to-end suite: one test binary, one module per topic (under `tests/e2e/`),
//! sharing the harness in `tests/support/`.
//!
//! In-process tests wire the real control plane, sidecars and shop apps exactly as
//! `palisade up` does, each test in its own loopback block `127.X.Y.0/24`; process tests run
//! the real `palisade` binary. Checks that need root or a third-party tool print a visible
//! `SKIPPED: <reason> (<test>)` line instead of passing silently.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

/// Requests through two sidecars: HTTP/1.1, HTTP/2, gRPC; metrics after traffic.
#[path = "e2e/skeleton.rs"]
mod skeleton;

/// Inbound mTLS: who is refused at 15006, an impostor behind a Service, and crafted leaves
/// (expired, not yet valid, wrongly signed) refused in both directions.
#[path = "e2e/mtls.rs"]
mod mtls;

/// What crosses the wire between sidecars: a recording relay and a packet capture.
#[path = "e2e/wire.rs"]
mod wire;

/// Identity service refusals and the X.509-SVID profile of served leaves.
#[path = "e2e/identity.rs"]
mod identity;

/// Certificate renewal under load.
#[path = "e2e/renewal.rs"]
mod renewal;

/// Real processes: the control plane killed and restarted under running proxies.
#[path = "e2e/processes.rs"]
mod processes;

/// The command line: bad input, and `palisade up` end to end.
#[path = "e2e/cli.rs"]
mod cli;

/// Authorization on real traffic: enforcement, denial answers, counting, live policy edits.
#[path = "e2e/authz.rs"]
mod authz;

/// Authorization conformance: a table of requests decided by `palisade authz check`.
#[path = "e2e/authz_conformance.rs"]
mod authz_conformance;

/// `palisade init`: capture rules (golden dry runs, real iptables in network namespaces).
#[path = "e2e/init.rs"]
mod init;

/// Transparent capture in pod namespaces: unmodified apps through both sidecars, callers
/// that skip the mesh refused, egress by SNI, Host and address, non-TCP dropped.
#[path = "e2e/capture.rs"]
mod capture;

/// NetworkPolicy conformance: the upstream reachability model decided by `authz check`.
#[path = "e2e/netpol_conformance.rs"]
mod netpol_conformance;

/// Authorization bypasses closed: opaque tunnels to HTTP ports, ambiguous authorities,
/// odd SNI, CONNECT and `OPTIONS *` inbound, path normalisation options, generic 502 bodies.
#[path = "e2e/bypass.rs"]
mod bypass;
/// The control plane as a process under attack: forged log lines, thousands of held streams
/// and connections within a memory bound.
#[path = "e2e/control_plane_limits.rs"]
mod control_plane_limits;
/// Sidecar injection: golden patches applied by python `jsonpatch`, `inject -f` output
/// validated by `kubernetes-validate`, YAML 1.1 against python `yaml`, the webhook process.
#[path = "e2e/injection.rs"]
mod injection;
/// `palisade install`: kubernetes-validate, CRD schemas against the control plane's parser,
/// the webhook's CA and serving certificate, `--ca-dir`, and the golden manifests.
#[path = "e2e/install.rs"]
mod install;
/// The Kubernetes source with real processes: two control-plane replicas on the kmock API
/// emulator, a proxy failing over between them.
#[path = "e2e/kubernetes.rs"]
mod kubernetes;
/// Data-path resource bounds: certificate expiry, streams, app pool, timeouts, connection
/// caps, bounded metric labels, and a load test against one sidecar process.
#[path = "e2e/limits.rs"]
mod limits;
/// Kubernetes NetworkPolicy between pods in network namespaces: allowed and denied pairs,
/// ingress at the receiver, egress at the sender, counted and logged.
#[path = "e2e/netpol.rs"]
mod netpol;
/// Kubelet probes rewritten by `palisade inject`, passing under default deny in the
/// network-namespace bed while the same app path stays denied to other pods.
#[path = "e2e/probes.rs"]
mod probes;

/// CA rotation under HTTP/1.1, HTTP/2 and gRPC load, driven by `palisade ca rotate`.
#[path = "e2e/rotation.rs"]
mod rotation;

/// The live view: `palisade tap` against a running shop.
#[path = "e2e/live_view.rs"]
mod live_view;

/// Policies from observed traffic: `authz suggest` and `authz diff`.
#[path = "e2e/suggest.rs"]
mod suggest;
