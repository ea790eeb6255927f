//! `palisade install`: the Kubernetes manifests of the mesh, as multi-document YAML.
//!
//! The manifests are YAML templates kept next to this file, so that reviewers read (and
//! operators get) the objects exactly as they are applied, with comments explaining the
//! choices. [`render`] fills in the few values that differ per install: the image, the trust
//! domain and the PEM material the caller generated or loaded (this crate does no
//! cryptography; the binary's wiring does). Every value is checked before it is written and
//! written double-quoted, so no input can change the structure of the YAML.
//!
//! Output is deterministic: the same options give the same bytes.

use std::fmt;

use base64::Engine as _;

#[cfg(test)]
mod tests;

/// The namespace the control plane and the injector run in (fixed by the product contract).
pub const NAMESPACE: &str = "palisade-system";
/// The DNS name the API server uses to reach the injector; its serving certificate names it.
pub const INJECTOR_SERVICE_HOST: &str = "palisade-injector.palisade-system.svc";
/// Webhook path for pods of opted-in namespaces: every pod is injected (unless annotated
/// `palisade.dev/inject: disabled`). Its webhook fails closed (`failurePolicy: Fail`): an
/// opted-in pod must never start without its sidecar, and an injector outage only holds up
/// namespaces that opted in.
pub const INJECT_PATH: &str = "/inject";
/// Webhook path for pods of every other namespace: only pods annotated `palisade.dev/inject:
/// enabled` are injected (the API server cannot select pods by annotation, so it sends them
/// all). Its webhook fails open (`failurePolicy: Ignore`), so an injector outage never blocks
/// pods that did not ask for the mesh; the control plane reports annotated pods running
/// without a sidecar. A path rather than `?require-annotation=true`: the API server refuses a
/// webhook service path whose segments are not DNS-1123 subdomains, a query string included.
pub const REQUIRE_ANNOTATION_PATH: &str = "/inject/require-annotation";

/// The templates, in the order their documents are applied: the namespace and CRDs first,
/// identities and permissions, secrets, workloads, and the webhook last so that it only
/// starts routing pods once the injector exists.
const TEMPLATES: [(&str, &str); 7] = [
    ("namespace.yaml", include_str!("namespace.yaml")),
    ("crds.yaml", include_str!("crds.yaml")),
    ("rbac.yaml", include_str!("rbac.yaml")),
    ("mesh-ca.yaml", include_str!("mesh-ca.yaml")),
    ("control-plane.yaml", include_str!("control-plane.yaml")),
    ("injector.yaml", include_str!("injector.yaml")),
    ("webhook.yaml", include_str!("webhook.yaml")),
];

/// The first lines of the output.
const HEADER: &str = "\
# Palisade service mesh: Kubernetes manifests printed by `palisade install`.
# Apply with `palisade install | kubectl apply -f -` (server-side field validation, kubectl's
# default, refuses unknown fields in Palisade resources). Secrets below hold key material
# generated for this install: keep this output private.
";

/// What varies between installs.
#[derive(Clone)]
pub struct InstallOptions {
    /// Container image of the `palisade` binary, e.g. `ghcr.io/palisade-mesh/palisade:0.1.0`.
    pub image: String,
    /// SPIFFE trust domain the mesh CA issues for (recorded on the CA Secret and ConfigMap).
    pub trust_domain: String,
    /// The mesh CA, as `palisade ca init` writes it.
    pub mesh_ca: MeshCaPem,
    /// The injector's serving certificate and the CA the API server trusts it by.
    pub webhook_tls: WebhookTlsPem,
}

/// The mesh CA files (Istio plug-in CA names), PEM.
#[derive(Clone)]
pub struct MeshCaPem {
    /// `root-cert.pem`: the trusted roots (one or several, during a rotation).
    pub root_cert: String,
    /// `ca-cert.pem`: the issuing CA certificate.
    pub ca_cert: String,
    /// `ca-key.pem`: the issuing CA's private key.
    pub ca_key: String,
    /// `cert-chain.pem`: the issuing CA up to (excluding) the root.
    pub cert_chain: String,
}

/// The injector's TLS material, PEM.
#[derive(Clone)]
pub struct WebhookTlsPem {
    /// The CA certificate written into the webhook configuration's `caBundle`.
    pub ca_cert: String,
    /// The serving certificate for [`INJECTOR_SERVICE_HOST`].
    pub cert: String,
    /// Its private key.
    pub key: String,
}

// Key material stays out of logs and panics: Debug shows which fields are set, not their
// contents.
impl fmt::Debug for InstallOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallOptions")
            .field("image", &self.image)
            .field("trust_domain", &self.trust_domain)
            .field("mesh_ca", &self.mesh_ca)
            .field("webhook_tls", &self.webhook_tls)
            .finish()
    }
}

impl fmt::Debug for MeshCaPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshCaPem")
            .field("root_cert", &self.root_cert)
            .field("ca_cert", &self.ca_cert)
            .field("ca_key", &"<redacted>")
            .field("cert_chain", &self.cert_chain)
            .finish()
    }
}

impl fmt::Debug for WebhookTlsPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookTlsPem")
            .field("ca_cert", &self.ca_cert)
            .field("cert", &self.cert)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Why the manifests cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    /// The image reference is empty or has a character no image reference has.
    #[error(
        "image {0:?} is not an image reference (letters, digits and . _ - / : @ only, e.g. \
         ghcr.io/palisade-mesh/palisade:0.1.0)"
    )]
    Image(String),
    /// The trust domain breaks the SPIFFE rules.
    #[error(
        "trust domain {0:?} is not valid (1 to 255 characters of a-z 0-9 . - _, e.g. \
         cluster.local)"
    )]
    TrustDomain(String),
    /// A PEM input is missing, of the wrong kind, or has characters PEM never has.
    #[error("{what} is not a PEM {kind} (expected -----BEGIN {kind}----- in ASCII text)")]
    Pem {
        /// Which input (e.g. `mesh CA root-cert.pem`).
        what: &'static str,
        /// The PEM label expected (`CERTIFICATE` or `PRIVATE KEY`).
        kind: &'static str,
    },
    /// A template names a value render does not have (a bug, caught by the unit tests).
    #[error("template {template}: unknown placeholder {placeholder:?}")]
    Template {
        /// The template file.
        template: &'static str,
        /// What was between the braces.
        placeholder: String,
    },
}

/// Renders every manifest, in apply order, as one multi-document YAML string.
pub fn render(options: &InstallOptions) -> Result<String, InstallError> {
    let image = check_image(&options.image)?;
    let tls = &options.webhook_tls;
    let mut values = mesh_ca_values(&options.trust_domain, &options.mesh_ca)?;
    values.extend([
        ("image", quoted(image)),
        (
            "webhook_ca_b64",
            b64(&pem(&tls.ca_cert, "webhook CA certificate", CERTIFICATE)?),
        ),
        (
            "webhook_cert_b64",
            b64(&pem(
                &tls.cert,
                "injector serving certificate",
                CERTIFICATE,
            )?),
        ),
        (
            "webhook_key_b64",
            b64(&pem(&tls.key, "injector serving key", PRIVATE_KEY)?),
        ),
    ]);
    let mut out = String::from(HEADER);
    for (name, template) in TEMPLATES {
        out.push_str("---\n");
        out.push_str(&fill(name, template, &values)?);
    }
    Ok(out)
}

/// The template values of the mesh CA and trust domain.
fn mesh_ca_values(
    trust_domain: &str,
    ca: &MeshCaPem,
) -> Result<Vec<(&'static str, String)>, InstallError> {
    let trust_domain = check_trust_domain(trust_domain)?;
    let root_cert = pem(&ca.root_cert, "mesh CA root-cert.pem", CERTIFICATE)?;
    Ok(vec![
        ("trust_domain", quoted(trust_domain)),
        ("mesh_root_cert_b64", b64(&root_cert)),
        (
            "mesh_ca_cert_b64",
            b64(&pem(&ca.ca_cert, "mesh CA ca-cert.pem", CERTIFICATE)?),
        ),
        (
            "mesh_ca_key_b64",
            b64(&pem(&ca.ca_key, "mesh CA ca-key.pem", PRIVATE_KEY)?),
        ),
        (
            "mesh_cert_chain_b64",
            b64(&pem(&ca.cert_chain, "mesh CA cert-chain.pem", CERTIFICATE)?),
        ),
        ("trust_anchors_block", literal_block(&root_cert, 4)),
    ])
}

/// The mesh CA's Secret (`palisade-system/palisade-ca`, keys named as the CA directory's
/// files) and trust anchors ConfigMap, as `palisade install` writes them: for
/// `palisade ca init`, so a CA made beside the install can be applied on its own.
pub fn render_mesh_ca(trust_domain: &str, ca: &MeshCaPem) -> Result<String, InstallError> {
    let values = mesh_ca_values(trust_domain, ca)?;
    let (name, template) = TEMPLATES[3];
    let mut out = String::from(
        "# The Palisade mesh CA for a cluster, written by `palisade ca init`. It holds the \
         issuing CA's\n# private key: keep it private. Apply with `kubectl apply -f`.\n",
    );
    out.push_str("---\n");
    out.push_str(&fill(name, template, &values)?);
    Ok(out)
}

/// PEM label of certificates.
const CERTIFICATE: &str = "CERTIFICATE";
/// PEM label of private keys (`PRIVATE KEY`, `EC PRIVATE KEY` and `RSA PRIVATE KEY` all end so).
const PRIVATE_KEY: &str = "PRIVATE KEY";

fn check_image(image: &str) -> Result<&str, InstallError> {
    let ok = !image.is_empty()
        && image.len() <= 1024
        && image
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b));
    if ok {
        Ok(image)
    } else {
        Err(InstallError::Image(image.to_owned()))
    }
}

/// The SPIFFE trust domain rule (as palisade-certs applies it), checked here too because
/// this crate does not depend on palisade-certs.
fn check_trust_domain(td: &str) -> Result<&str, InstallError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(td)
    } else {
        Err(InstallError::TrustDomain(td.to_owned()))
    }
}

/// Checks a PEM input and normalises it: no surrounding blank space or `\r`, one final
/// newline. Only the label is checked; the caller parsed the material.
fn pem(text: &str, what: &'static str, kind: &'static str) -> Result<String, InstallError> {
    let err = || InstallError::Pem { what, kind };
    let lines: Vec<&str> = text.trim().lines().map(str::trim_end).collect();
    let first = lines.first().copied().unwrap_or_default();
    let is_begin = first.starts_with("-----BEGIN ") && first.ends_with(&format!("{kind}-----"));
    let printable = lines
        .iter()
        .all(|l| l.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
    let has_end = lines
        .last()
        .is_some_and(|l| l.starts_with("-----END ") && l.ends_with("-----"));
    if !(is_begin && printable && has_end) {
        return Err(err());
    }
    let mut out = lines.join("\n");
    out.push('\n');
    Ok(out)
}

fn b64(text: &str) -> String {
    quoted(&base64::engine::general_purpose::STANDARD.encode(text))
}

/// A double-quoted YAML scalar. Callers pass only checked text (no `"`, `\` or control
/// characters), so no escaping is needed; the quotes keep YAML from reading a value as a
/// number, boolean or null.
fn quoted(text: &str) -> String {
    format!("\"{text}\"")
}

/// A YAML literal block (`|`) for normalised PEM, its lines indented by `indent` spaces.
fn literal_block(text: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::from("|");
    for line in text.lines() {
        out.push('\n');
        if !line.is_empty() {
            out.push_str(&pad);
            out.push_str(line);
        }
    }
    out
}

/// Replaces each `{{name}}` of `template` with its value.
fn fill(
    template_name: &'static str,
    template: &str,
    values: &[(&str, String)],
) -> Result<String, InstallError> {
    let unknown = |placeholder: &str| InstallError::Template {
        template: template_name,
        placeholder: placeholder.to_owned(),
    };
    let mut out = String::with_capacity(template.len() + 8192);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| unknown(&after[..after.len().min(40)]))?;
        let name = &after[..end];
        let value = values
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, v)| v)
            .ok_or_else(|| unknown(name))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}
