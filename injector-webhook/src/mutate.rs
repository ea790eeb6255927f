//! The mutation: a pod (or pod template) in, a decision out: leave it alone, refuse it, or
//! the JSON Patch operations that add Palisade's containers, volumes and annotation. Pure:
//! the webhook sends the operations, `palisade inject -f` applies them.
//!
//! Injection only adds. The user's containers, security contexts, volumes, labels,
//! annotations and unknown fields come out as they went in; the one rewrite is of probes the
//! kubelet could no longer reach under default deny (see the crate docs for the format the
//! proxy receives them in).

use crate::annotations::{self, AnnotationError, InjectRequest, PodOptions, SidecarMode};
use crate::patch::{PatchOp, Pointer};
use crate::value::{Map, Value, object};

/// Name of the init container that installs the capture rules.
pub const INIT_CONTAINER: &str = "palisade-init";
/// Name of the proxy container.
pub const PROXY_CONTAINER: &str = "palisade-proxy";
/// Volume with the projected service-account token the proxy presents to the control plane.
pub const TOKEN_VOLUME: &str = "palisade-token";
/// Volume with the trust anchors (ConfigMap `palisade-trust-anchors`, key `ca.crt`).
pub const TRUST_VOLUME: &str = "palisade-trust";
/// The ConfigMap the control plane keeps in every meshed namespace.
pub const TRUST_CONFIGMAP: &str = "palisade-trust-anchors";
/// Where the token volume is mounted in the proxy.
pub const TOKEN_DIR: &str = "/var/run/secrets/palisade";
/// Where the trust volume is mounted in the proxy.
pub const TRUST_DIR: &str = "/var/run/palisade/trust";
/// Audience of the projected token.
pub const TOKEN_AUDIENCE: &str = "palisade";
/// Lifetime the kubelet gives the projected token.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// The UID and GID the proxy runs as (never captured).
pub const PROXY_UID: i64 = 1337;
/// The proxy's admin port (readiness, and the probe forwarding under `/app-health/`).
pub const ADMIN_PORT: i64 = 15000;
/// The value of `palisade.dev/status` on injected pods.
pub const STATUS_INJECTED: &str = "injected";

/// What the injector puts into pods: image, control plane and trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Image of both injected containers (`palisade init` and `palisade proxy`).
    pub proxy_image: String,
    /// The control plane's discovery and identity address (`host:port`).
    pub control_plane: String,
    /// The SPIFFE ID the control plane's certificate must carry.
    pub control_plane_identity: String,
    /// The mesh's trust domain.
    pub trust_domain: String,
}

/// Default `--proxy-image`: this release's image.
pub const DEFAULT_PROXY_IMAGE: &str =
    concat!("ghcr.io/palisade-mesh/palisade:", env!("CARGO_PKG_VERSION"));
/// Default `--control-plane`.
pub const DEFAULT_CONTROL_PLANE: &str = "palisade-control-plane.palisade-system.svc:15012";
/// Default `--control-plane-identity`.
pub const DEFAULT_CONTROL_PLANE_IDENTITY: &str =
    "spiffe://cluster.local/ns/palisade-system/sa/palisade-control-plane";
/// Default `--trust-domain`.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

impl Default for Settings {
    fn default() -> Self {
        Settings {
            proxy_image: DEFAULT_PROXY_IMAGE.to_owned(),
            control_plane: DEFAULT_CONTROL_PLANE.to_owned(),
            control_plane_identity: DEFAULT_CONTROL_PLANE_IDENTITY.to_owned(),
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
        }
    }
}

/// A setting injection cannot put into pods.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting} {value:?}: {problem}")]
pub struct SettingsError {
    /// The flag.
    pub setting: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong.
    pub problem: &'static str,
}

impl Settings {
    /// Refuses values that would make every injected proxy fail at start.
    pub fn check(&self) -> Result<(), SettingsError> {
        let fail = |setting, value: &str, problem| {
            Err(SettingsError {
                setting,
                value: value.to_owned(),
                problem,
            })
        };
        if self.proxy_image.trim().is_empty() || self.proxy_image.contains(char::is_whitespace) {
            return fail(
                "--proxy-image",
                &self.proxy_image,
                "is not an image reference",
            );
        }
        if self
            .control_plane
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return fail("--control-plane", &self.control_plane, "is not host:port");
        }
        if !self.control_plane_identity.starts_with("spiffe://") {
            return fail(
                "--control-plane-identity",
                &self.control_plane_identity,
                "is not a spiffe:// ID",
            );
        }
        if self.trust_domain.is_empty()
            || !self.trust_domain.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            })
        {
            return fail(
                "--trust-domain",
                &self.trust_domain,
                "is not a trust domain (lower-case letters, digits, '.', '-', '_')",
            );
        }
        Ok(())
    }
}

/// Which pods the caller wants injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Every pod unless annotated `palisade.dev/inject: disabled` (an opted-in namespace,
    /// `inject -f`).
    UnlessDisabled,
    /// Only pods annotated `palisade.dev/inject: enabled`.
    RequireAnnotation,
}

/// Why a pod is left as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// It has Palisade's proxy or status annotation already.
    AlreadyInjected,
    /// It shares the node's network namespace: capture rules there would hit the node.
    HostNetwork,
    /// `palisade.dev/inject: disabled`.
    Disabled,
    /// The policy requires `palisade.dev/inject: enabled` and the pod lacks it.
    NotRequested,
}

impl Skip {
    /// A short human reason.
    pub fn reason(self) -> &'static str {
        match self {
            Skip::AlreadyInjected => "already injected",
            Skip::HostNetwork => "host-network pod",
            Skip::Disabled => "palisade.dev/inject: disabled",
            Skip::NotRequested => "not annotated palisade.dev/inject: enabled",
        }
    }
}

/// The outcome for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Leave it alone; the pod explicitly asked for injection when `requested` is true.
    Skip {
        /// Why.
        reason: Skip,
        /// The pod is annotated `palisade.dev/inject: enabled` (worth a warning).
        requested: bool,
    },
    /// Apply these operations (paths relative to the pod or template).
    Inject {
        /// The JSON Patch.
        patch: Vec<PatchOp>,
        /// Things left undone that the user should know (e.g. a probe left unchanged).
        warnings: Vec<String>,
    },
}

/// Why a pod cannot be injected safely; `field` is relative to the pod (or template).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InjectError {
    /// Where (`metadata.annotations["palisade.dev/sidecar"]`, `spec.volumes[2].name`).
    pub field: String,
    /// What.
    pub problem: Problem,
}

/// What is wrong with a pod that cannot be injected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// An annotation has a value injection cannot use.
    #[error("{value:?} {problem}")]
    Annotation {
        /// The value as written.
        value: String,
        /// What was expected.
        problem: String,
    },
    /// A field has the wrong JSON type.
    #[error("expected {expected}, found {found}")]
    Type {
        /// The type wanted.
        expected: &'static str,
        /// The type found.
        found: &'static str,
    },
    /// The pod already uses a name Palisade adds.
    #[error("the {what} name {name:?} is reserved for Palisade's injection; rename it")]
    NameTaken {
        /// `container` or `volume`.
        what: &'static str,
        /// The name.
        name: &'static str,
    },
    /// A field injection needs is absent.
    #[error("missing")]
    Missing,
    /// A bug: the operations did not apply to the pod they were made for.
    #[error("internal error: {0}")]
    Internal(String),
}

impl InjectError {
    /// The same error, with `prefix` (e.g. `spec.template.`) before the field.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}{}", self.field);
        self
    }
}

impl From<AnnotationError> for InjectError {
    fn from(e: AnnotationError) -> Self {
        InjectError {
            field: format!("metadata.annotations[\"{}\"]", e.annotation),
            problem: Problem::Annotation {
                value: e.value,
                problem: e.problem,
            },
        }
    }
}

fn type_error(field: impl Into<String>, expected: &'static str, found: &Value) -> InjectError {
    InjectError {
        field: field.into(),
        problem: Problem::Type {
            expected,
            found: found.kind(),
        },
    }
}

/// An optional object member: absent or `null` is `None`; any other non-object an error.
fn opt_object<'a>(parent: &'a Map, key: &str, field: &str) -> Result<Option<&'a Map>, InjectError> {
    match parent.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(type_error(field, "an object", other)),
    }
}

/// An optional array of objects.
fn opt_objects<'a>(
    parent: &'a Map,
    key: &str,
    field: &str,
) -> Result<Option<Vec<&'a Map>>, InjectError> {
    match parent.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_object()
                    .ok_or_else(|| type_error(format!("{field}[{i}]"), "an object", item))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(type_error(field, "an array", other)),
    }
}

fn name_of(item: &Map) -> Option<&str> {
    item.get("name").and_then(Value::as_str)
}

/// Decides what to do with `pod` (a Pod object, or a workload's `spec.template`).
pub fn decide(pod: &Value, policy: Policy, settings: &Settings) -> Result<Decision, InjectError> {
    let Value::Object(pod) = pod else {
        return Err(type_error("(pod)", "an object", pod));
    };
    let metadata = opt_object(pod, "metadata", "metadata")?;
    let annotations = match metadata {
        Some(m) => opt_object(m, "annotations", "metadata.annotations")?,
        None => None,
    };
    let spec = opt_object(pod, "spec", "spec")?.ok_or_else(|| InjectError {
        field: "spec".to_owned(),
        problem: Problem::Missing,
    })?;
    let containers = opt_objects(spec, "containers", "spec.containers")?.unwrap_or_default();
    let init_containers =
        opt_objects(spec, "initContainers", "spec.initContainers")?.unwrap_or_default();
    let volumes = opt_objects(spec, "volumes", "spec.volumes")?.unwrap_or_default();

    let requested = annotations::inject_request(annotations);
    let explicitly_requested = requested == Ok(InjectRequest::Enabled);
    let skip = |reason| {
        Ok(Decision::Skip {
            reason,
            requested: explicitly_requested,
        })
    };
    let status = annotations::get(annotations, annotations::STATUS).and_then(Value::as_str);
    let has_proxy = containers
        .iter()
        .chain(&init_containers)
        .any(|c| name_of(c) == Some(PROXY_CONTAINER));
    if status == Some(STATUS_INJECTED) || has_proxy {
        return skip(Skip::AlreadyInjected);
    }
    if spec.get("hostNetwork") == Some(&Value::Bool(true)) {
        return skip(Skip::HostNetwork);
    }
    match (requested?, policy) {
        (InjectRequest::Disabled, _) => return skip(Skip::Disabled),
        (InjectRequest::Unset, Policy::RequireAnnotation) => return skip(Skip::NotRequested),
        _ => {}
    }

    // Names we add must be free: a user's `palisade-init` or `palisade-token` would make the
    // pod invalid or, worse, be mistaken for ours.
    for (list, field) in [
        (&containers, "spec.containers"),
        (&init_containers, "spec.initContainers"),
    ] {
        if let Some(i) = list.iter().position(|c| name_of(c) == Some(INIT_CONTAINER)) {
            return Err(InjectError {
                field: format!("{field}[{i}].name"),
                problem: Problem::NameTaken {
                    what: "container",
                    name: INIT_CONTAINER,
                },
            });
        }
    }
    for (i, volume) in volumes.iter().enumerate() {
        for reserved in [TOKEN_VOLUME, TRUST_VOLUME] {
            if name_of(volume) == Some(reserved) {
                return Err(InjectError {
                    field: format!("spec.volumes[{i}].name"),
                    problem: Problem::NameTaken {
                        what: "volume",
                        name: reserved,
                    },
                });
            }
        }
    }

    let options = annotations::pod_options(annotations)?;
    let mut patch = Vec::new();
    let mut warnings = Vec::new();
    let mut app_probes = Map::new();
    let spec_ptr = Pointer::root().child("spec");

    // Probes first, at the indices the pod has before anything is inserted.
    for (list, key, only_sidecars) in [
        (&containers, "containers", false),
        (&init_containers, "initContainers", true),
    ] {
        for (i, container) in list.iter().enumerate() {
            // Among init containers only the user's own native sidecars are probed.
            if only_sidecars
                && container.get("restartPolicy").and_then(Value::as_str) != Some("Always")
            {
                continue;
            }
            let field = format!("spec.{key}[{i}]");
            for rewrite in probe_rewrites(container, &field, &mut warnings)? {
                app_probes.insert(rewrite.admin_path, rewrite.forwarded);
                patch.push(PatchOp::Replace {
                    path: spec_ptr
                        .child(key)
                        .child(i.to_string())
                        .child(rewrite.probe_key),
                    value: rewrite.probe,
                });
            }
        }
    }

    let init = init_container(settings, &options);
    let proxy = proxy_container(settings, &options, &app_probes);
    let init_ptr = spec_ptr.child("initContainers");
    let mut ours_first = vec![init];
    if options.sidecar == SidecarMode::Native {
        ours_first.push(proxy.clone());
    }
    if spec.get("initContainers").is_none_or(|v| *v == Value::Null) {
        patch.push(PatchOp::Add {
            path: init_ptr,
            value: Value::Array(ours_first),
        });
    } else {
        for (i, c) in ours_first.into_iter().enumerate() {
            patch.push(PatchOp::Add {
                path: init_ptr.child(i.to_string()),
                value: c,
            });
        }
    }
    if options.sidecar == SidecarMode::Classic {
        let containers_ptr = spec_ptr.child("containers");
        patch.push(
            if spec.get("containers").is_none_or(|v| *v == Value::Null) {
                PatchOp::Add {
                    path: containers_ptr,
                    value: Value::Array(vec![proxy]),
                }
            } else {
                PatchOp::Add {
                    path: containers_ptr.child("0"),
                    value: proxy,
                }
            },
        );
    }
    let volumes_ptr = spec_ptr.child("volumes");
    if spec.get("volumes").is_none_or(|v| *v == Value::Null) {
        patch.push(PatchOp::Add {
            path: volumes_ptr,
            value: Value::Array(palisade_volumes()),
        });
    } else {
        for v in palisade_volumes() {
            patch.push(PatchOp::Add {
                path: volumes_ptr.child("-"),
                value: v,
            });
        }
    }
    let metadata_ptr = Pointer::root().child("metadata");
    let status = object([(annotations::STATUS, STATUS_INJECTED.into())]);
    patch.push(match (metadata, annotations) {
        (None, _) => PatchOp::Add {
            path: metadata_ptr,
            value: object([("annotations", status)]),
        },
        (Some(_), None) => PatchOp::Add {
            path: metadata_ptr.child("annotations"),
            value: status,
        },
        (Some(_), Some(_)) => PatchOp::Add {
            path: metadata_ptr.child("annotations").child(annotations::STATUS),
            value: STATUS_INJECTED.into(),
        },
    });
    Ok(Decision::Inject { patch, warnings })
}

// === probes ===

struct ProbeRewrite {
    probe_key: &'static str,
    probe: Value,
    admin_path: String,
    forwarded: Value,
}

const PROBES: [(&str, &str); 3] = [
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];

/// The probes of one container the kubelet would lose under default deny, each pointed at
/// the proxy's admin port; the original handler goes to the proxy.
fn probe_rewrites(
    container: &Map,
    field: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<ProbeRewrite>, InjectError> {
    let mut out = Vec::new();
    let Some(name) = name_of(container) else {
        // A container without a name is refused by the API server; nothing to key on here.
        return Ok(out);
    };
    for (probe_key, suffix) in PROBES {
        let probe_field = format!("{field}.{probe_key}");
        let Some(probe) = opt_object(container, probe_key, &probe_field)? else {
            continue;
        };
        let Some((handler_key, handler)) = probe
            .iter()
            .find(|(k, _)| matches!(k.as_str(), "httpGet" | "tcpSocket" | "grpc"))
        else {
            // exec probes run inside the container: no network, nothing to forward.
            continue;
        };
        let Value::Object(handler) = handler else {
            return Err(type_error(
                format!("{probe_field}.{handler_key}"),
                "an object",
                handler,
            ));
        };
        let host_set = handler
            .get("host")
            .and_then(Value::as_str)
            .is_some_and(|h| !h.is_empty());
        if host_set {
            // The kubelet probes another host: not through this pod's capture.
            continue;
        }
        let mut left_alone = |why: String| {
            // Short: the API server truncates admission warnings past 120 characters.
            warnings.push(format!(
                "container {name:?} {probe_key} left unchanged: {why}"
            ));
        };
        let port = match resolve_port(container, handler.get("port"), handler_key == "grpc") {
            Ok(p) => p,
            Err(why) => {
                left_alone(why);
                continue;
            }
        };
        let forwarded_handler = match handler_key.as_str() {
            "httpGet" => {
                let scheme = match handler.get("scheme") {
                    None | Some(Value::Null) => "HTTP",
                    Some(Value::String(s)) if s == "HTTP" || s == "HTTPS" => s.as_str(),
                    Some(other) => {
                        left_alone(format!("scheme {} is not HTTP or HTTPS", other.to_json()));
                        continue;
                    }
                };
                let path = match handler.get("path") {
                    None | Some(Value::Null) => "/",
                    Some(Value::String(p)) if p.is_empty() => "/",
                    Some(Value::String(p)) => p.as_str(),
                    Some(other) => {
                        return Err(type_error(
                            format!("{probe_field}.httpGet.path"),
                            "a string",
                            other,
                        ));
                    }
                };
                let mut h = Map::new();
                h.insert("path".into(), path.into());
                h.insert("port".into(), Value::Int(port));
                h.insert("scheme".into(), scheme.into());
                if let Some(headers) = handler.get("httpHeaders").filter(|v| **v != Value::Null) {
                    h.insert("httpHeaders".into(), headers.clone());
                }
                h
            }
            "tcpSocket" => {
                let mut h = Map::new();
                h.insert("port".into(), Value::Int(port));
                h
            }
            _ => {
                let mut h = Map::new();
                h.insert("port".into(), Value::Int(port));
                match handler.get("service") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(s)) => {
                        h.insert("service".into(), s.as_str().into());
                    }
                    Some(other) => {
                        return Err(type_error(
                            format!("{probe_field}.grpc.service"),
                            "a string",
                            other,
                        ));
                    }
                }
                h
            }
        };
        let timeout = match probe.get("timeoutSeconds") {
            None | Some(Value::Null) => Value::Int(1),
            Some(v @ Value::Int(_)) => v.clone(),
            Some(other) => {
                return Err(type_error(
                    format!("{probe_field}.timeoutSeconds"),
                    "an integer",
                    other,
                ));
            }
        };
        let admin_path = format!("/app-health/{name}/{suffix}");
        let mut forwarded = Map::new();
        forwarded.insert(handler_key.clone(), Value::Object(forwarded_handler));
        forwarded.insert("timeoutSeconds".into(), timeout);
        // The handler is swapped in place; every other probe field is kept as written.
        let rewritten: Map = probe
            .iter()
            .map(|(k, v)| {
                if k == handler_key {
                    (
                        "httpGet".to_owned(),
                        object([
                            ("path", admin_path.as_str().into()),
                            ("port", Value::Int(ADMIN_PORT)),
                            ("scheme", "HTTP".into()),
                        ]),
                    )
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect();
        out.push(ProbeRewrite {
            probe_key,
            probe: Value::Object(rewritten),
            admin_path,
            forwarded: Value::Object(forwarded),
        });
    }
    Ok(out)
}

/// A probe's port as a number: numeric, or a name looked up in the container's `ports`.
fn resolve_port(container: &Map, port: Option<&Value>, numeric_only: bool) -> Result<i64, String> {
    match port {
        Some(Value::Int(p)) if (1..=65535).contains(p) => Ok(*p),
        Some(Value::String(name)) if !numeric_only => container
            .get("ports")
            .and_then(Value::as_array)
            .and_then(|ports| {
                ports.iter().find_map(|p| {
                    (p.get("name").and_then(Value::as_str) == Some(name.as_str()))
                        .then(|| p.get("containerPort").and_then(Value::as_i64))
                        .flatten()
                })
            })
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| format!("port {name:?} is no port name of the container")),
        Some(other) => Err(format!("port {} is not a port number", other.to_json())),
        None => Err("no port".to_owned()),
    }
}

// === what is added ===

fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
    Value::Array(items.into_iter().map(Value::from).collect())
}

fn init_container(settings: &Settings, options: &PodOptions) -> Value {
    let uid = PROXY_UID.to_string();
    let mut args = vec!["init", "--proxy-uid", &uid, "--proxy-gid", &uid];
    for (flag, value) in &options.init_flags {
        args.push(flag);
        args.push(value);
    }
    object([
        ("name", INIT_CONTAINER.into()),
        ("image", settings.proxy_image.as_str().into()),
        ("args", strings(args)),
        (
            "securityContext",
            object([
                ("runAsUser", Value::Int(0)),
                ("runAsNonRoot", false.into()),
                ("allowPrivilegeEscalation", false.into()),
                ("readOnlyRootFilesystem", true.into()),
                (
                    "capabilities",
                    object([
                        ("add", strings(["NET_ADMIN", "NET_RAW"])),
                        ("drop", strings(["ALL"])),
                    ]),
                ),
            ]),
        ),
    ])
}

fn env(name: &str, value: &str) -> Value {
    object([("name", name.into()), ("value", value.into())])
}

fn env_field(name: &str, field_path: &str) -> Value {
    object([
        ("name", name.into()),
        (
            "valueFrom",
            object([("fieldRef", object([("fieldPath", field_path.into())]))]),
        ),
    ])
}

fn proxy_container(settings: &Settings, options: &PodOptions, app_probes: &Map) -> Value {
    let mut env_list = vec![
        env_field("PALISADE_WORKLOAD", "metadata.name"),
        env_field("PALISADE_NAMESPACE", "metadata.namespace"),
        env_field("PALISADE_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        env("PALISADE_CONTROL_PLANE", &settings.control_plane),
        env(
            "PALISADE_CONTROL_PLANE_IDENTITY",
            &settings.control_plane_identity,
        ),
        env("PALISADE_TRUST_DOMAIN", &settings.trust_domain),
        env("PALISADE_TRUST_ANCHORS", &format!("{TRUST_DIR}/ca.crt")),
        env("PALISADE_TOKEN_FILE", &format!("{TOKEN_DIR}/token")),
        env("PALISADE_ADMIN_ADDR", &format!("0.0.0.0:{ADMIN_PORT}")),
    ];
    if !app_probes.is_empty() {
        let probes = Value::Object(app_probes.clone()).to_json();
        env_list.push(env("PALISADE_APP_PROBES", &probes));
    }
    // `palisade.dev/opaque-ports` is checked here but read by the control plane from the pod:
    // callers' sidecars need it too, so it travels in the Workload, not to this proxy alone.
    let r = &options.resources;
    let mut resources = Map::new();
    resources.insert(
        "requests".into(),
        object([
            ("cpu", r.cpu.text.as_str().into()),
            ("memory", r.memory.text.as_str().into()),
        ]),
    );
    let mut limits = Map::new();
    if let Some(cpu) = &r.cpu_limit {
        limits.insert("cpu".into(), cpu.text.as_str().into());
    }
    if let Some(memory) = &r.memory_limit {
        limits.insert("memory".into(), memory.text.as_str().into());
    }
    if !limits.is_empty() {
        resources.insert("limits".into(), Value::Object(limits));
    }
    let mut c = Map::new();
    c.insert("name".into(), PROXY_CONTAINER.into());
    c.insert("image".into(), settings.proxy_image.as_str().into());
    c.insert("args".into(), strings(["proxy"]));
    c.insert("env".into(), Value::Array(env_list));
    if options.sidecar == SidecarMode::Native {
        c.insert("restartPolicy".into(), "Always".into());
    }
    c.insert("resources".into(), Value::Object(resources));
    c.insert(
        "readinessProbe".into(),
        object([(
            "httpGet",
            object([("path", "/ready".into()), ("port", Value::Int(ADMIN_PORT))]),
        )]),
    );
    c.insert(
        "securityContext".into(),
        object([
            ("runAsUser", Value::Int(PROXY_UID)),
            ("runAsGroup", Value::Int(PROXY_UID)),
            ("runAsNonRoot", true.into()),
            ("allowPrivilegeEscalation", false.into()),
            ("readOnlyRootFilesystem", true.into()),
            ("capabilities", object([("drop", strings(["ALL"]))])),
        ]),
    );
    c.insert(
        "volumeMounts".into(),
        Value::Array(vec![
            object([
                ("name", TOKEN_VOLUME.into()),
                ("mountPath", TOKEN_DIR.into()),
                ("readOnly", true.into()),
            ]),
            object([
                ("name", TRUST_VOLUME.into()),
                ("mountPath", TRUST_DIR.into()),
                ("readOnly", true.into()),
            ]),
        ]),
    );
    Value::Object(c)
}

fn palisade_volumes() -> Vec<Value> {
    vec![
        object([
            ("name", TOKEN_VOLUME.into()),
            (
                "projected",
                object([(
                    "sources",
                    Value::Array(vec![object([(
                        "serviceAccountToken",
                        object([
                            ("audience", TOKEN_AUDIENCE.into()),
                            ("expirationSeconds", Value::Int(TOKEN_EXPIRATION_SECONDS)),
                            ("path", "token".into()),
                        ]),
                    )])]),
                )]),
            ),
        ]),
        object([
            ("name", TRUST_VOLUME.into()),
            (
                "configMap",
                object([
                    ("name", TRUST_CONFIGMAP.into()),
                    (
                        "items",
                        Value::Array(vec![object([
                            ("key", "ca.crt".into()),
                            ("path", "ca.crt".into()),
                        ])]),
                    ),
                ]),
            ),
        ]),
    ]
}

/// Applies the decision to `pod` in place (for `inject -f`); returns the warnings, or `None`
/// when the pod is left alone.
pub fn inject_in_place(
    pod: &mut Value,
    policy: Policy,
    settings: &Settings,
) -> Result<Option<Vec<String>>, InjectError> {
    match decide(pod, policy, settings)? {
        Decision::Skip { .. } => Ok(None),
        Decision::Inject { patch, warnings } => {
            crate::patch::apply(pod, &patch).map_err(|e| InjectError {
                field: "(pod)".to_owned(),
                problem: Problem::Internal(e.to_string()),
            })?;
            Ok(Some(warnings))
        }
    }
}
