//! `admission.k8s.io/v1` AdmissionReview in, AdmissionReview response out. Pure: the server
//! hands it the body and the query, and sends back what it returns.
//!
//! A review is answered only when we can say whose it is: with a readable `request.uid`,
//! every answer (including "this review is malformed") is an AdmissionReview echoing it;
//! without one, the body gets an HTTP 400 with a text message.

use base64::Engine as _;

use crate::mutate::{self, Decision, Policy, Settings, Skip};
use crate::patch;
use crate::value::{Map, Value, from_json, object};

/// The review API version answered (the webhook configuration asks for v1 only).
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// What the server sends back.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// HTTP 200 with this AdmissionReview (JSON).
    Review(Value),
    /// HTTP 400 with this text: the body cannot be answered as a review.
    BadRequest(String),
}

/// Why a review (with a readable uid) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// A field of the review is missing or has the wrong type.
    #[error("{field}: {problem}")]
    Malformed {
        /// e.g. `request.object.spec`.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// The pod cannot be injected safely.
    #[error("pod {pod}: {source}")]
    Refused {
        /// `namespace/name` (or generateName).
        pod: String,
        /// Why.
        #[source]
        source: mutate::InjectError,
    },
}

/// Answers one review body. `require_annotation` is the `require-annotation=true` query: the
/// namespace is not opted in, so only pods annotated `palisade.dev/inject: enabled` are
/// injected.
pub fn answer(body: &[u8], require_annotation: bool, settings: &Settings) -> Answer {
    let review = match from_json(body) {
        Ok(v) => v,
        Err(e) => return Answer::BadRequest(format!("body is not a JSON AdmissionReview: {e}")),
    };
    let Some(uid) = review
        .get("request")
        .and_then(|r| r.get("uid"))
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
    else {
        return Answer::BadRequest(
            "not an AdmissionReview: request.uid is missing (expected \
             {\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":...}})"
                .to_owned(),
        );
    };
    let policy = if require_annotation {
        Policy::RequireAnnotation
    } else {
        Policy::UnlessDisabled
    };
    let response = match decide(&review, policy, settings) {
        Ok(Reply::Allow { warnings }) => allowed(uid, None, warnings),
        Ok(Reply::Patch { patch, warnings }) => allowed(uid, Some(patch), warnings),
        Err(e) => {
            tracing::info!(uid, error = %e, "review refused");
            object([
                ("uid", uid.into()),
                ("allowed", false.into()),
                (
                    "status",
                    object([("code", Value::Int(400)), ("message", e.to_string().into())]),
                ),
            ])
        }
    };
    Answer::Review(object([
        ("apiVersion", API_VERSION.into()),
        ("kind", "AdmissionReview".into()),
        ("response", response),
    ]))
}

enum Reply {
    Allow { warnings: Vec<String> },
    Patch { patch: Value, warnings: Vec<String> },
}

fn malformed(field: &str, problem: impl Into<String>) -> ReviewError {
    ReviewError::Malformed {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

fn str_field<'a>(parent: &'a Value, key: &str, field: &str) -> Result<&'a str, ReviewError> {
    match parent.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(malformed(
            field,
            format!("expected a string, found {}", other.kind()),
        )),
        None => Err(malformed(field, "missing")),
    }
}

fn decide(review: &Value, policy: Policy, settings: &Settings) -> Result<Reply, ReviewError> {
    let api_version = str_field(review, "apiVersion", "apiVersion")?;
    if api_version != API_VERSION {
        return Err(malformed(
            "apiVersion",
            format!("{api_version:?} is not {API_VERSION:?}"),
        ));
    }
    let kind = str_field(review, "kind", "kind")?;
    if kind != "AdmissionReview" {
        return Err(malformed(
            "kind",
            format!("{kind:?} is not \"AdmissionReview\""),
        ));
    }
    let request = review
        .get("request")
        .filter(|r| r.as_object().is_some())
        .ok_or_else(|| malformed("request", "expected an object"))?;
    let Some(kind) = request.get("kind").filter(|k| k.as_object().is_some()) else {
        return Err(malformed("request.kind", "expected an object"));
    };
    let group = kind.get("group").and_then(Value::as_str).unwrap_or("");
    let kind_name = str_field(kind, "kind", "request.kind.kind")?;
    let operation = str_field(request, "operation", "request.operation")?;
    let sub_resource = request
        .get("subResource")
        .and_then(Value::as_str)
        .unwrap_or("");
    // Only pod creation is ours to mutate; anything else the webhook configuration lets
    // through is allowed untouched.
    if !(group.is_empty() && kind_name == "Pod" && operation == "CREATE" && sub_resource.is_empty())
    {
        return Ok(Reply::Allow {
            warnings: Vec::new(),
        });
    }
    let pod = match request.get("object") {
        Some(p @ Value::Object(_)) => p,
        Some(other) => {
            return Err(malformed(
                "request.object",
                format!("expected a Pod object, found {}", other.kind()),
            ));
        }
        None => return Err(malformed("request.object", "missing")),
    };
    if !matches!(pod.get("spec"), Some(Value::Object(_))) {
        return Err(malformed("request.object.spec", "expected an object"));
    }
    let pod_name = pod_label(request, pod);
    let decision =
        mutate::decide(pod, policy, settings).map_err(|source| ReviewError::Refused {
            pod: pod_name.clone(),
            source,
        })?;
    match decision {
        Decision::Skip { reason, requested } => {
            tracing::info!(pod = %pod_name, reason = reason.reason(), "not injected");
            let mut warnings = Vec::new();
            if requested && reason == Skip::HostNetwork {
                warnings.push(format!(
                    "palisade: {pod_name} asks for injection but uses the host network; no \
                     sidecar was added"
                ));
            }
            Ok(Reply::Allow { warnings })
        }
        Decision::Inject { patch, warnings } => {
            tracing::info!(pod = %pod_name, "injected");
            Ok(Reply::Patch {
                patch: patch::to_value(&patch),
                warnings: warnings
                    .into_iter()
                    .map(|w| format!("palisade: {w}"))
                    .collect(),
            })
        }
    }
}

/// `namespace/name` for messages; a pod being created may only have a generateName.
fn pod_label(request: &Value, pod: &Value) -> String {
    let metadata = pod.get("metadata");
    let namespace = request
        .get("namespace")
        .and_then(Value::as_str)
        .or_else(|| {
            metadata
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
        })
        .unwrap_or("");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            metadata
                .and_then(|m| m.get("generateName"))
                .and_then(Value::as_str)
                .map(|g| format!("{g}*"))
        })
        .unwrap_or_else(|| "(unnamed)".to_owned());
    if namespace.is_empty() {
        name
    } else {
        format!("{namespace}/{name}")
    }
}

fn allowed(uid: &str, patch: Option<Value>, warnings: Vec<String>) -> Value {
    let mut response = Map::new();
    response.insert("uid".into(), uid.into());
    response.insert("allowed".into(), true.into());
    if let Some(patch) = patch {
        response.insert("patchType".into(), "JSONPatch".into());
        let encoded = base64::engine::general_purpose::STANDARD.encode(patch.to_json());
        response.insert("patch".into(), encoded.into());
    }
    if !warnings.is_empty() {
        response.insert(
            "warnings".into(),
            Value::Array(warnings.into_iter().map(Value::from).collect()),
        );
    }
    Value::Object(response)
}

/// The JSON Patch of an answer, decoded (for tests and golden files); `None` without one.
pub fn decoded_patch(answer: &Value) -> Option<Value> {
    let encoded = answer.get("response")?.get("patch")?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    from_json(&bytes).ok()
}
