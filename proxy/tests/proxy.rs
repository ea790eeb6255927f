//! Integration tests of the sidecar: two real proxies on loopback with real mTLS, statically
//! configured through the same snapshot conversion discovery uses, in front of real apps.
//! One test binary, one module per topic (STYLE habit 12).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "proxy/support.rs"]
mod support;

/// HTTP and gRPC authorization at inbound: decisions, responses, metrics, logs, pushes.
#[path = "proxy/authz.rs"]
mod authz;

/// Opaque TCP: CONNECT tunnels, connection-level authorization, late rejection.
#[path = "proxy/tcp.rs"]
mod tcp;

/// Destinations outside the mesh: REGISTRY_ONLY, EgressPolicy, ALLOW_ANY.
#[path = "proxy/egress.rs"]
mod egress;

/// MeshConfig mTLS mode: plaintext callers refused in STRICT, served unauthenticated in
/// PERMISSIVE.
#[path = "proxy/permissive.rs"]
mod permissive;

/// Kubernetes NetworkPolicy: ingress by address and verified identity, egress before any
/// byte leaves, late rejection, metrics, NACK.
#[path = "proxy/netpol.rs"]
mod netpol;

/// The hop between sidecars: pooled HTTP/1.1 for HTTP/1.1 ports, HTTP/2 beyond the bound.
#[path = "proxy/hop.rs"]
mod hop;

/// Kubelet probes on the admin port: every handler kind against real apps, bounded.
#[path = "proxy/probes.rs"]
mod probes;
