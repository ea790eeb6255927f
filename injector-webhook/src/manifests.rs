//! `palisade inject -f`: the webhook's mutation applied to every pod template of a YAML
//! stream. Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers,
//! Jobs, CronJobs and `List`s of them are injected; every other document passes through.
//! Document order is kept and empty documents are dropped; comments are not kept (the
//! stream is re-written from its content, as `kubectl` would read it).

use crate::mutate::{self, InjectError, Policy, Settings};
use crate::value::Value;
use crate::yaml::{self, YamlError};

/// Why a manifest stream cannot be injected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The YAML does not parse.
    #[error(transparent)]
    Yaml(#[from] YamlError),
    /// A pod template cannot be injected safely.
    #[error("document {document} ({object}): {source}")]
    Inject {
        /// 1-based document number in the stream.
        document: usize,
        /// `Kind namespace/name` of the document.
        object: String,
        /// The problem, its field given from the document's root.
        #[source]
        source: InjectError,
    },
}

/// The injected stream and the warnings to show.
#[derive(Debug, Clone, PartialEq)]
pub struct Injected {
    /// The YAML to print.
    pub yaml: String,
    /// One line per probe left unchanged and the like, naming document and container.
    pub warnings: Vec<String>,
    /// How many pod templates were injected.
    pub injected: usize,
}

/// Injects every pod template in `text` (a YAML stream).
pub fn inject_stream(text: &str, settings: &Settings) -> Result<Injected, ManifestError> {
    let documents = yaml::read_documents(text)?;
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    let mut injected = 0;
    for doc in documents {
        if doc.value == Value::Null {
            continue;
        }
        let mut value = doc.value;
        let object = describe(&value);
        let mut found = Vec::new();
        inject_object(&mut value, "", settings, &mut found).map_err(|source| {
            ManifestError::Inject {
                document: doc.number,
                object: object.clone(),
                source,
            }
        })?;
        // `None`: a template left alone (opted out, host network, already injected).
        for (at, list) in found {
            if let Some(list) = list {
                injected += 1;
                for line in list {
                    warnings.push(format!("document {} ({object}) {at}: {line}", doc.number));
                }
            }
        }
        out.push(value);
    }
    Ok(Injected {
        yaml: yaml::write_documents(&out),
        warnings,
        injected,
    })
}

/// `Kind namespace/name` for messages.
fn describe(value: &Value) -> String {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("(no kind)");
    let metadata = value.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)");
    match metadata
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Where the pod template of a kind sits, if the kind has one.
fn template_path(value: &Value) -> Option<&'static [&'static str]> {
    let kind = value.get("kind").and_then(Value::as_str)?;
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    match (group, kind) {
        ("", "Pod") => Some(&[]),
        ("", "ReplicationController") => Some(&["spec", "template"]),
        ("apps" | "extensions", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => {
            Some(&["spec", "template"])
        }
        ("batch", "Job") => Some(&["spec", "template"]),
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

type Found = Vec<(String, Option<Vec<String>>)>;

fn inject_object(
    value: &mut Value,
    prefix: &str,
    settings: &Settings,
    found: &mut Found,
) -> Result<(), InjectError> {
    let is_list = value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"))
        && matches!(value.get("items"), Some(Value::Array(_)));
    if is_list {
        if let Some(Value::Array(items)) = value.as_object_mut().and_then(|m| m.get_mut("items")) {
            for (i, item) in items.iter_mut().enumerate() {
                inject_object(item, &format!("{prefix}items[{i}]."), settings, found)?;
            }
        }
        return Ok(());
    }
    let Some(path) = template_path(value) else {
        return Ok(());
    };
    let mut field = prefix.to_owned();
    let mut target = &mut *value;
    for key in path {
        field.push_str(key);
        field.push('.');
        match target.as_object_mut().and_then(|m| m.get_mut(*key)) {
            Some(next) => target = next,
            // No template: nothing to inject (the API server would refuse it anyway).
            None => return Ok(()),
        }
    }
    let warnings = mutate::inject_in_place(target, Policy::UnlessDisabled, settings)
        .map_err(|e| e.within(&field))?;
    let at = if field.is_empty() {
        "pod".to_owned()
    } else {
        field.trim_end_matches('.').to_owned()
    };
    found.push((at, warnings));
    Ok(())
}
