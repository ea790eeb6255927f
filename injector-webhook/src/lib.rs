//! Palisade's Kubernetes sidecar injection: the mutating admission webhook
//! (`palisade injector`) and manual injection of YAML (`palisade inject -f`), one mutation
//! shared by both.
//!
//! Layers: [`value`] (an order-keeping JSON tree), [`yaml`] (YAML 1.1 in, as `kubectl` reads
//! it, and out), [`annotations`] (the `palisade.dev/*` pod annotations, parsed),
//! [`mutate`] (pod → decision and JSON Patch, pure), [`patch`] (RFC 6902), [`review`]
//! (AdmissionReview in and out, pure), [`manifests`] (`inject -f`), [`server`] (HTTPS).
//!
//! # What an injected pod gets
//! - init container `palisade-init` (`palisade init --proxy-uid 1337 --proxy-gid 1337` plus
//!   the flags the `palisade.dev/exclude-*` and `allow-udp-ports` annotations map to), root
//!   with `NET_ADMIN` and `NET_RAW` only;
//! - the proxy `palisade-proxy`: a native sidecar (init container with
//!   `restartPolicy: Always`, right after `palisade-init`), or the first app container with
//!   `palisade.dev/sidecar: classic`; UID/GID 1337, no capabilities, read-only root. In
//!   classic form the user's init containers run after the capture rules and before the
//!   proxy, so they have no network: prefer the native form (Kubernetes 1.29+);
//! - volumes `palisade-token` (projected service-account token, audience `palisade`) and
//!   `palisade-trust` (ConfigMap `palisade-trust-anchors`, key `ca.crt`);
//! - annotation `palisade.dev/status: injected` (an injected pod is never injected again).
//!
//! # Probes under default deny: `PALISADE_APP_PROBES`
//! Kubelet probes of an app container (`httpGet`, `tcpSocket`, `grpc`; in `containers` and in
//! the user's own native sidecars) would be captured and denied, so each is pointed at the
//! proxy's admin port: `httpGet: {path: /app-health/<container>/<livez|readyz|startupz>,
//! port: 15000, scheme: HTTP}`, every other probe field kept. The proxy receives the
//! original handlers in the env variable `PALISADE_APP_PROBES`, a JSON object keyed by that
//! admin path; each value is a Kubernetes probe handler with a numeric port (named ports
//! resolved against the container's `ports[].name`) and the probe's `timeoutSeconds`
//! (default 1):
//!
//! ```json
//! {"/app-health/web/livez":{"httpGet":{"path":"/healthz","port":8080,"scheme":"HTTP",
//!    "httpHeaders":[{"name":"X","value":"y"}]},"timeoutSeconds":1},
//!  "/app-health/web/readyz":{"tcpSocket":{"port":8080},"timeoutSeconds":1},
//!  "/app-health/web/startupz":{"grpc":{"port":9090,"service":"x"},"timeoutSeconds":1}}
//! ```
//!
//! `httpGet` always carries `path` (default `/`), `port` and `scheme` (`HTTP` or `HTTPS`),
//! and `httpHeaders` only when the probe had them; `grpc` carries `service` only when set.
//! `exec` probes and probes with a `host` are left alone; a probe whose named port does not
//! resolve is left alone with a warning (webhook `warnings`, `inject -f` stderr).

pub mod annotations;
pub mod install;
pub mod manifests;
pub mod mutate;
pub mod patch;
pub mod review;
pub mod server;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod value;
pub mod yaml;

pub use manifests::{Injected, ManifestError, inject_stream};
pub use mutate::{Decision, InjectError, Policy, Settings};
pub use server::{Config, Handle, Limits, ServerError, run};
pub use value::Value;
