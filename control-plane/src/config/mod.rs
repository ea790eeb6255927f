//! Loading the mesh from a directory of Kubernetes-style YAML.
//!
//! Every `*.yaml`/`*.yml` file of the directory (not recursive, dotfiles skipped) may hold
//! several documents. Loading has two phases: each document is parsed and checked on its
//! own (apiVersion/kind dispatch, typed deserialization with field paths, value checks),
//! then, once every document is valid, the resources are checked against each other
//! (selectors, target ports, protocols, unique addresses) and resolved into a
//! [`MeshSnapshot`]. Every error names its file, document and field; all of them are
//! returned, not only the first.
//!
//! `AuthorizationPolicy` (Palisade's, or Istio's `security.istio.io/v1`/`v1beta1` as they
//! are) and `EgressPolicy` documents are compiled into [`crate::policy`] values here too: a
//! policy with any field Palisade cannot enforce is rejected whole, with the field named.

mod netpol;
mod policy;
pub(crate) use policy::policy_path_error;
mod resources;
mod validate;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::model::{MeshSnapshot, NamespacedName, Source};
pub use resources::{
    API_VERSION, CORE_API_VERSION, ISTIO_SECURITY_API_VERSIONS, NETWORKING_API_VERSION,
};
pub use validate::parse_duration;

/// Names a document within a file: its position and, as far as it could be read, its
/// kind and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentRef {
    /// Position in the file, from 1.
    pub index: usize,
    /// `kind` ("" if missing).
    pub kind: String,
    /// `metadata.namespace` (`default` if missing).
    pub namespace: String,
    /// `metadata.name` ("" if missing).
    pub name: String,
}

impl fmt::Display for DocumentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.index)?;
        match (self.kind.is_empty(), self.name.is_empty()) {
            (true, true) => Ok(()),
            (false, true) => write!(f, " ({})", self.kind),
            (true, false) => write!(f, " ({}/{})", self.namespace, self.name),
            (false, false) => write!(f, " ({} {}/{})", self.kind, self.namespace, self.name),
        }
    }
}

/// A line and column in a file, both from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

/// One problem in the configuration, displayed on one line as
/// `file[:line:column]: document N (Kind ns/name): field: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (or the directory, for errors about the directory itself).
    pub file: PathBuf,
    /// Where in the file, for YAML syntax errors.
    pub location: Option<Location>,
    /// The document, when the error is about one.
    pub document: Option<DocumentRef>,
    /// Path of the offending field, e.g. `spec.ports[0].targetPort`.
    pub field: Option<String>,
    /// What is wrong, on one line.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.file.display().to_string();
        if let Some(loc) = self.location {
            line.push_str(&format!(":{}:{}", loc.line, loc.column));
        }
        if let Some(doc) = &self.document {
            line.push_str(&format!(": {doc}"));
        }
        if let Some(field) = &self.field {
            line.push_str(&format!(": {field}"));
        }
        line.push_str(&format!(": {}", self.message));
        // Names, fields and paths come from the user's files: a line break in any of them
        // must not split the one-line error (or forge a second log line).
        f.write_str(&escape_line_breaks(&line))
    }
}

/// Escapes control characters and Unicode line/paragraph separators, keeping one line.
fn escape_line_breaks(text: &str) -> std::borrow::Cow<'_, str> {
    let breaks = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !text.chars().any(breaks) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if breaks(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl ConfigError {
    /// An error about a whole file or directory.
    pub fn file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            location: None,
            document: None,
            field: None,
            message: one_line(message.into()),
        }
    }
}

/// Every error found while loading a configuration (never empty). Displayed as the first
/// one, plus " (and N more)".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    /// Wraps a non-empty list; `None` if it is empty.
    pub fn new(errors: Vec<ConfigError>) -> Option<Self> {
        (!errors.is_empty()).then_some(Self(errors))
    }

    /// The first error.
    pub fn first(&self) -> &ConfigError {
        // Never empty by construction.
        &self.0[0]
    }

    /// All errors, in file and document order.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// How many errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false; present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The errors as a vector.
    pub fn into_vec(self) -> Vec<ConfigError> {
        self.0
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.first())?;
        if self.0.len() > 1 {
            write!(f, " (and {} more)", self.0.len() - 1)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.first())
    }
}

/// Loads and validates every `*.yaml`/`*.yml` file of `dir` (not recursive; dotfiles
/// skipped). An empty or missing directory is an error.
pub fn load_dir(dir: &Path) -> Result<MeshSnapshot, ConfigErrors> {
    load_dir_assigned(dir, &AddressAssignments::new())
}

/// Workload addresses assigned by whoever runs the workloads, replacing the Workloads'
/// `spec.address` (`palisade up --mode netns` gives each workload a network namespace and
/// an address of its own there, as a cluster gives each Pod its IP).
pub type AddressAssignments = std::collections::BTreeMap<NamespacedName, std::net::IpAddr>;

/// [`load_dir`], with the Workloads named in `assigned` at their assigned addresses.
pub fn load_dir_assigned(
    dir: &Path,
    assigned: &AddressAssignments,
) -> Result<MeshSnapshot, ConfigErrors> {
    let files = read_dir(dir)?;
    load_files_assigned(&files, assigned)
}

/// Validates configuration held in memory: `(file name, contents)` pairs, in order. The
/// names only appear in error messages and [`Source`]s.
pub fn load_files<P: AsRef<Path>, S: AsRef<str>>(
    files: &[(P, S)],
) -> Result<MeshSnapshot, ConfigErrors> {
    load_files_assigned(files, &AddressAssignments::new())
}

/// [`load_files`], with the Workloads named in `assigned` at their assigned addresses.
pub fn load_files_assigned<P: AsRef<Path>, S: AsRef<str>>(
    files: &[(P, S)],
    assigned: &AddressAssignments,
) -> Result<MeshSnapshot, ConfigErrors> {
    let mut parsed = validate::Parsed::default();
    let mut errors = Vec::new();
    for (path, text) in files {
        parse_file(path.as_ref(), text.as_ref(), &mut parsed, &mut errors);
    }
    finish(parsed, errors, assigned)
}

/// Service annotation, read in cluster mode only: comma-separated addresses Kubernetes reports
/// not ready (from EndpointSlices), left out of the Service's endpoints.
pub const NOT_READY_ANNOTATION: &str = "palisade.dev/not-ready-addresses";

/// Validates documents read from a cluster (the Kubernetes source), each named by where it
/// comes from: the checks of [`load_files`], except that a Service may select no Workload
/// and a Workload need not declare a port a Service targets (normal in a cluster).
pub fn load_json_documents(
    documents: Vec<(PathBuf, serde_json::Value)>,
) -> Result<MeshSnapshot, ConfigErrors> {
    let mut parsed = validate::Parsed::default();
    parsed.cluster = true;
    let mut errors = Vec::new();
    for (path, json) in documents {
        match serde_yaml_ng::to_value(&json) {
            Ok(value) => parse_document(&path, 1, value, &mut parsed, &mut errors),
            Err(e) => errors.push(ConfigError::file(&path, format!("cannot convert: {e}"))),
        }
    }
    finish(parsed, errors, &AddressAssignments::new())
}

/// The YAML documents of each configuration file as last read, so that a reload parses
/// again only the files whose text changed: re-parsing a mesh's thousands of Workloads on
/// every policy edit delayed each push by hundreds of milliseconds.
#[derive(Debug, Default)]
pub(crate) struct ParseCache {
    files: HashMap<PathBuf, YamlFile>,
}

/// One file's text and its YAML documents.
#[derive(Debug)]
struct YamlFile {
    text: String,
    /// The documents before the first syntax error, in order.
    documents: Vec<Value>,
    /// The syntax error that ended the file's parsing, if any.
    error: Option<ConfigError>,
}

/// [`load_dir_assigned`], parsing only the files whose text differs from `cache`'s (which
/// is updated); the result is the same as without the cache.
pub(crate) fn load_dir_cached(
    dir: &Path,
    assigned: &AddressAssignments,
    cache: &mut ParseCache,
) -> Result<MeshSnapshot, ConfigErrors> {
    let files = read_dir(dir)?;
    cache
        .files
        .retain(|cached, _| files.iter().any(|(path, _)| path == cached));
    let mut parsed = validate::Parsed::default();
    let mut errors = Vec::new();
    for (path, text) in files {
        let stale = cache
            .files
            .get(&path)
            .is_none_or(|cached| cached.text != text);
        if stale {
            let yaml = parse_yaml(&path, text);
            cache.files.insert(path.clone(), yaml);
        }
        if let Some(yaml) = cache.files.get(&path) {
            apply_documents(
                &path,
                yaml.documents.iter().cloned(),
                yaml.error.clone(),
                &mut parsed,
                &mut errors,
            );
        }
    }
    finish(parsed, errors, assigned)
}

fn finish(
    mut parsed: validate::Parsed,
    errors: Vec<ConfigError>,
    assigned: &AddressAssignments,
) -> Result<MeshSnapshot, ConfigErrors> {
    parsed.assign_addresses(assigned);
    if !errors.is_empty() {
        // Cross-resource checks on a partial set would report consequences (a Service
        // "selecting nothing" because its Workload was rejected) rather than causes.
        return Err(ConfigErrors(errors));
    }
    parsed.build().map_err(ConfigErrors)
}

fn is_config_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

fn read_dir(dir: &Path) -> Result<Vec<(PathBuf, String)>, ConfigErrors> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ConfigError::file(dir, format!("cannot read configuration directory: {e}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            ConfigError::file(dir, format!("cannot read configuration directory: {e}"))
        })?;
        let path = entry.path();
        // Follows symlinks, as Kubernetes ConfigMap mounts are symlinks.
        if is_config_file(&path) && path.is_file() {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(ConfigError::file(
            dir,
            "no configuration: the directory has no *.yaml or *.yml file",
        )
        .into());
    }
    paths.sort();
    let mut files = Vec::with_capacity(paths.len());
    let mut errors = Vec::new();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push((path, text)),
            Err(e) => errors.push(ConfigError::file(&path, format!("cannot read: {e}"))),
        }
    }
    match ConfigErrors::new(errors) {
        Some(errors) => Err(errors),
        None => Ok(files),
    }
}

/// Replaces line breaks so every error stays on one line.
pub(crate) fn one_line(message: String) -> String {
    if message.contains('\n') {
        message
            .split('\n')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        message
    }
}

/// A document being parsed: what error messages need to name it.
#[derive(Debug, Clone)]
pub(crate) struct DocCtx {
    pub file: PathBuf,
    pub doc: DocumentRef,
}

impl DocCtx {
    pub fn error(&self, field: Option<&str>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            location: None,
            document: Some(self.doc.clone()),
            field: field.map(str::to_owned),
            message: one_line(message.into()),
        }
    }

    pub fn source(&self) -> Source {
        Source {
            file: self.file.clone(),
            document: self.doc.index,
        }
    }

    pub fn key(&self) -> NamespacedName {
        NamespacedName::new(&self.doc.namespace, &self.doc.name)
    }
}

/// Deserializes `value` into `T`; on failure records an error naming the field path.
pub(crate) fn typed<T: for<'de> Deserialize<'de>>(
    ctx: &DocCtx,
    value: Value,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    match serde_path_to_error::deserialize(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let field = (path != ".").then_some(path);
            errors.push(ctx.error(field.as_deref(), e.into_inner().to_string()));
            None
        }
    }
}

fn str_field<'a>(map: &'a serde_yaml_ng::Mapping, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

fn parse_file(
    path: &Path,
    text: &str,
    parsed: &mut validate::Parsed,
    errors: &mut Vec<ConfigError>,
) {
    let yaml = parse_yaml(path, text.to_owned());
    apply_documents(path, yaml.documents, yaml.error, parsed, errors);
}

/// Validates `documents` of the file at `path` in order, then records the file's syntax
/// error if it had one: the errors come in the order a single pass would find them.
fn apply_documents(
    path: &Path,
    documents: impl IntoIterator<Item = Value>,
    syntax_error: Option<ConfigError>,
    parsed: &mut validate::Parsed,
    errors: &mut Vec<ConfigError>,
) {
    for (i, value) in documents.into_iter().enumerate() {
        parse_document(path, i + 1, value, parsed, errors);
    }
    errors.extend(syntax_error);
}

/// The YAML documents of `text`, up to the first syntax error.
fn parse_yaml(path: &Path, text: String) -> YamlFile {
    let mut documents = Vec::new();
    let mut error = None;
    for (i, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let index = i + 1;
        match Value::deserialize(document) {
            Ok(v) => documents.push(v),
            Err(e) => {
                let location = e.location().map(|l| Location {
                    line: l.line(),
                    column: l.column(),
                });
                error = Some(ConfigError {
                    file: path.to_owned(),
                    location,
                    document: Some(DocumentRef {
                        index,
                        kind: String::new(),
                        namespace: String::new(),
                        name: String::new(),
                    }),
                    field: None,
                    message: one_line(format!("invalid YAML: {e}")),
                });
                // The parser cannot resynchronise reliably after a syntax error.
                break;
            }
        }
    }
    YamlFile {
        text,
        documents,
        error,
    }
}

fn parse_document(
    path: &Path,
    index: usize,
    value: Value,
    parsed: &mut validate::Parsed,
    errors: &mut Vec<ConfigError>,
) {
    // Merge keys (`<<: *anchor`) are resolved here, so anchors work as in kubectl.
    let mut value = value;
    if let Err(e) = value.apply_merge() {
        errors.push(ConfigError::file(path, format!("document {index}: {e}")));
        return;
    }
    let mut ctx = DocCtx {
        file: path.to_owned(),
        doc: DocumentRef {
            index,
            kind: String::new(),
            namespace: "default".to_owned(),
            name: String::new(),
        },
    };
    let map = match &value {
        // Empty documents (a trailing `---`, a file of comments) are allowed and skipped.
        Value::Null => return,
        Value::Mapping(map) => map,
        _ => {
            errors.push(ctx.error(
                None,
                "a document must be a mapping with apiVersion, kind, metadata and spec",
            ));
            return;
        }
    };
    let kind = str_field(map, "kind").map(str::to_owned);
    let api_version = str_field(map, "apiVersion").map(str::to_owned);
    if let Some(Value::Mapping(meta)) = map.get("metadata") {
        if let Some(ns) = str_field(meta, "namespace") {
            ns.clone_into(&mut ctx.doc.namespace);
        }
        if let Some(name) = str_field(meta, "name") {
            name.clone_into(&mut ctx.doc.name);
        }
    }
    if let Some(kind) = &kind {
        kind.clone_into(&mut ctx.doc.kind);
    }
    let Some(api_version) = api_version else {
        let message = match map.get("apiVersion") {
            None => format!("is required (use {API_VERSION})"),
            Some(_) => "must be a string".to_owned(),
        };
        errors.push(ctx.error(Some("apiVersion"), message));
        return;
    };
    let Some(kind) = kind else {
        let message = match map.get("kind") {
            None => "is required".to_owned(),
            Some(_) => "must be a string".to_owned(),
        };
        errors.push(ctx.error(Some("kind"), message));
        return;
    };
    let istio = ISTIO_SECURITY_API_VERSIONS.contains(&api_version.as_str());
    match (api_version.as_str(), kind.as_str()) {
        (API_VERSION, "Workload") => parsed.workload(&ctx, value, errors),
        (API_VERSION, "Service") => parsed.service(&ctx, value, errors),
        (API_VERSION, "MeshConfig") => parsed.mesh_config(&ctx, value, errors),
        (_, "AuthorizationPolicy") if istio || api_version == API_VERSION => {
            parsed.authorization_policy(&ctx, value, errors)
        }
        (API_VERSION, "EgressPolicy") => parsed.egress_policy(&ctx, value, errors),
        (NETWORKING_API_VERSION, "NetworkPolicy") => parsed.network_policy(&ctx, value, errors),
        (CORE_API_VERSION, "Namespace") => parsed.namespace(&ctx, value, errors),
        (API_VERSION, other) => errors.push(ctx.error(
            Some("kind"),
            format!(
                "unknown kind {other:?} (expected Workload, Service, MeshConfig, \
                 AuthorizationPolicy or EgressPolicy)"
            ),
        )),
        (_, other) if istio => errors.push(ctx.error(
            Some("kind"),
            format!(
                "kind {other:?} of {api_version} is not supported (only AuthorizationPolicy is)"
            ),
        )),
        (other, _) => errors.push(ctx.error(
            Some("apiVersion"),
            format!(
                "unsupported apiVersion {other:?} for kind {kind} (expected {})",
                match kind.as_str() {
                    "AuthorizationPolicy" =>
                        format!("{API_VERSION}, security.istio.io/v1 or security.istio.io/v1beta1"),
                    "NetworkPolicy" => NETWORKING_API_VERSION.to_owned(),
                    "Namespace" => CORE_API_VERSION.to_owned(),
                    _ => API_VERSION.to_owned(),
                }
            ),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cached_reloads_equal_uncached_loads() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        let workload = |name: &str, address: &str| {
            format!(
                "apiVersion: palisade.dev/v1alpha1\nkind: Workload\n\
                 metadata: {{name: {name}, namespace: shop}}\nspec: {{address: {address}}}\n"
            )
        };
        let mut cache = ParseCache::default();
        let mut check = |what: &str| {
            let cached = load_dir_cached(dir.path(), &AddressAssignments::new(), &mut cache);
            assert_eq!(cached, load_dir(dir.path()), "{what}");
            cached
        };
        write("a.yaml", &workload("a", "127.0.1.1"));
        write("b.yaml", &workload("b", "127.0.1.2"));
        assert_eq!(check("first load").unwrap().workloads().len(), 2);
        write("b.yaml", &workload("b", "127.0.1.3"));
        let reloaded = check("one file edited");
        assert_eq!(
            reloaded
                .unwrap()
                .workload("shop", "b")
                .unwrap()
                .address
                .to_string(),
            "127.0.1.3"
        );
        // A syntax error after a valid document: both reported, on every reload.
        write(
            "c.yaml",
            &format!("{}---\n[unclosed\n", workload("c", "127.0.1.4")),
        );
        assert!(check("syntax error").is_err());
        assert!(check("syntax error, cached").is_err());
        std::fs::remove_file(dir.path().join("c.yaml")).unwrap();
        std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
        assert_eq!(check("files removed").unwrap().workloads().len(), 1);
        assert_eq!(cache.files.len(), 1, "removed files are forgotten");
    }

    #[test]
    fn error_display_is_one_line() {
        let e = ConfigError {
            file: PathBuf::from("examples/x/svc.yaml"),
            location: None,
            document: Some(DocumentRef {
                index: 2,
                kind: "Service".into(),
                namespace: "shop".into(),
                name: "search".into(),
            }),
            field: Some("spec.ports[0].targetPort".into()),
            message: "port 9999 is not exposed by Workload shop/search (it exposes 8080)".into(),
        };
        assert_eq!(
            e.to_string(),
            "examples/x/svc.yaml: document 2 (Service shop/search): spec.ports[0].targetPort: \
             port 9999 is not exposed by Workload shop/search (it exposes 8080)"
        );
        let all = ConfigErrors(vec![e.clone(), e.clone(), e]);
        assert!(all.to_string().ends_with(" (and 2 more)"));
    }

    #[test]
    fn config_files_are_yaml_and_not_hidden() {
        assert!(is_config_file(Path::new("d/a.yaml")));
        assert!(is_config_file(Path::new("d/a.yml")));
        assert!(!is_config_file(Path::new("d/.a.yaml")));
        assert!(!is_config_file(Path::new("d/a.json")));
        assert!(!is_config_file(Path::new("d/a.yaml.swp")));
    }
}

#[cfg(test)]
mod display_tests {
    use super::*;

    #[test]
    fn names_with_line_breaks_stay_on_one_line() {
        let err = ConfigError {
            file: PathBuf::from("p.yaml"),
            location: None,
            document: Some(DocumentRef {
                index: 1,
                kind: "Workload".into(),
                namespace: "shop".into(),
                name: "a\nb\r\u{85}c\u{2028}".into(),
            }),
            field: Some("metadata.labels[x\ny]".into()),
            message: "bad".into(),
        };
        let text = err.to_string();
        assert_eq!(text.lines().count(), 1, "{text:?}");
        assert!(text.contains("a\\nb\\r"), "{text}");
    }
}
