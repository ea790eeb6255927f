//! The YAML resource formats, as serde types. Every struct denies unknown fields: a field
//! the mesh silently ignores (a misspelt `selector`, say) is a security hole.
//!
//! Numbers and enumerations are read loosely here (`i64`, `String`) and checked in
//! `validate`, so that errors say "port 70000 is out of range" rather than serde's
//! "expected u16".

use std::collections::BTreeMap;

use serde::Deserialize;

/// The `apiVersion` of Palisade's own resources.
pub const API_VERSION: &str = "palisade.dev/v1alpha1";
/// Istio's AuthorizationPolicy API versions, accepted as they are.
pub const ISTIO_SECURITY_API_VERSIONS: &[&str] =
    &["security.istio.io/v1", "security.istio.io/v1beta1"];

/// A port number as written: any integer, so that range errors are ours ("port 70000 is out
/// of range") and type errors say what was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PortValue(pub i64);

impl<'de> Deserialize<'de> for PortValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port number (1 to 65535)")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortValue, E> {
                Ok(PortValue(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortValue, E> {
                Ok(PortValue(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_i64(Visitor)
    }
}

/// `metadata` of every resource.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Metadata {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// `kind: Workload`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct WorkloadDoc {
    #[allow(dead_code)]
    pub api_version: String,
    #[allow(dead_code)]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: WorkloadSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct WorkloadSpec {
    #[serde(default)]
    pub service_account: Option<String>,
    pub address: String,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
}

/// A port of a Workload or a Service (`targetPort` is only allowed on Services).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct PortSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub port: PortValue,
    #[serde(default)]
    pub app_protocol: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
}

/// `kind: Service`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ServiceDoc {
    #[allow(dead_code)]
    pub api_version: String,
    #[allow(dead_code)]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ServiceSpec {
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(default)]
    pub ports: Vec<ServicePortSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ServicePortSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub port: PortValue,
    #[serde(default)]
    pub target_port: Option<PortValue>,
    #[serde(default)]
    pub app_protocol: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
}

/// `kind: MeshConfig`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct MeshConfigDoc {
    #[allow(dead_code)]
    pub api_version: String,
    #[allow(dead_code)]
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: MeshConfigSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct MeshConfigSpec {
    #[serde(default)]
    pub trust_domain: Option<String>,
    #[serde(default)]
    pub root_namespace: Option<String>,
    #[serde(default)]
    pub default_authorization: Option<String>,
    #[serde(default)]
    pub mtls: Option<ModeSpec>,
    #[serde(default)]
    pub outbound_traffic_policy: Option<ModeSpec>,
    #[serde(default)]
    pub certificate_lifetime: Option<String>,
    #[serde(default)]
    pub hide_denial_reasons: Option<bool>,
    #[serde(default)]
    pub path_normalization: Option<PathNormalizationSpec>,
}

/// MeshConfig `pathNormalization` (Istio's `ProxyPathNormalization`, plus Palisade's
/// `rejectEscapedSlashes`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct PathNormalizationSpec {
    #[serde(default)]
    pub normalization: Option<String>,
    #[serde(default)]
    pub reject_escaped_slashes: Option<bool>,
}

/// `{mode: ...}` objects of MeshConfig.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ModeSpec {
    #[serde(default)]
    pub mode: Option<String>,
}

/// A port as Istio writes it in an AuthorizationPolicy (a string, `"8080"`), or as an
/// integer; checked in `policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PortText {
    /// Written as an integer.
    Number(i64),
    /// Written as a string.
    Text(String),
}

impl<'de> Deserialize<'de> for PortText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortText;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port number (1 to 65535), as an integer or a string")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortText, E> {
                Ok(PortText::Number(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortText, E> {
                Ok(PortText::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortText, E> {
                Ok(PortText::Text(v.to_owned()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A field Palisade recognises in order to reject it by name (see `policy`): its value is
/// kept only to tell an empty list or null (absent, as in Istio) from a real use.
pub(crate) type Unsupported = Option<serde_yaml_ng::Value>;

/// `spec.selector` of AuthorizationPolicy and EgressPolicy (Istio's WorkloadSelector).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct SelectorSpec {
    #[serde(default)]
    pub match_labels: Option<BTreeMap<String, String>>,
}

/// `kind: AuthorizationPolicy` (Istio's `security.istio.io/v1` field for field).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct AuthorizationPolicyDoc {
    #[allow(dead_code)]
    pub api_version: String,
    #[allow(dead_code)]
    pub kind: String,
    pub metadata: Metadata,
    /// Absent or null is `{}`, as in Kubernetes.
    #[serde(default)]
    pub spec: Option<AuthorizationPolicySpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct AuthorizationPolicySpec {
    #[serde(default)]
    pub selector: Option<SelectorSpec>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub rules: Option<Vec<RuleSpec>>,
    #[serde(default)]
    pub provider: Unsupported,
    #[serde(default)]
    pub target_ref: Unsupported,
    #[serde(default)]
    pub target_refs: Unsupported,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RuleSpec {
    #[serde(default)]
    pub from: Option<Vec<FromSpec>>,
    #[serde(default)]
    pub to: Option<Vec<ToSpec>>,
    #[serde(default)]
    pub when: Option<Vec<ConditionSpec>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct FromSpec {
    #[serde(default)]
    pub source: Option<SourceSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct SourceSpec {
    #[serde(default)]
    pub principals: Option<Vec<String>>,
    #[serde(default)]
    pub not_principals: Option<Vec<String>>,
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub not_namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub ip_blocks: Option<Vec<String>>,
    #[serde(default)]
    pub not_ip_blocks: Option<Vec<String>>,
    #[serde(default)]
    pub request_principals: Unsupported,
    #[serde(default)]
    pub not_request_principals: Unsupported,
    #[serde(default)]
    pub remote_ip_blocks: Unsupported,
    #[serde(default)]
    pub not_remote_ip_blocks: Unsupported,
    #[serde(default)]
    pub service_accounts: Option<Vec<String>>,
    #[serde(default)]
    pub not_service_accounts: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ToSpec {
    #[serde(default)]
    pub operation: Option<OperationSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct OperationSpec {
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub not_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub ports: Option<Vec<PortText>>,
    #[serde(default)]
    pub not_ports: Option<Vec<PortText>>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub not_methods: Option<Vec<String>>,
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    #[serde(default)]
    pub not_paths: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ConditionSpec {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub values: Option<Vec<String>>,
    #[serde(default)]
    pub not_values: Option<Vec<String>>,
}

/// `kind: EgressPolicy` (Palisade's own).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct EgressPolicyDoc {
    #[allow(dead_code)]
    pub api_version: String,
    #[allow(dead_code)]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: EgressPolicySpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct EgressPolicySpec {
    #[serde(default)]
    pub selector: Option<SelectorSpec>,
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub ip_blocks: Option<Vec<String>>,
    #[serde(default)]
    pub ports: Option<Vec<PortValue>>,
}

/// The `apiVersion` of Kubernetes NetworkPolicy.
pub const NETWORKING_API_VERSION: &str = "networking.k8s.io/v1";
/// The `apiVersion` of Kubernetes core resources (`Namespace`).
pub const CORE_API_VERSION: &str = "v1";

/// A label selector (`metav1.LabelSelector`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct LabelSelectorSpec {
    #[serde(default)]
    pub match_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub match_expressions: Option<Vec<LabelRequirementSpec>>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct LabelRequirementSpec {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Option<Vec<String>>,
}

/// `kind: NetworkPolicy` (`networking.k8s.io/v1`, field for field).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct NetworkPolicyDoc {
    #[allow(dead_code)]
    pub api_version: String,
    #[allow(dead_code)]
    pub kind: String,
    pub metadata: Metadata,
    /// Absent or null is `{}` (every pod, ingress isolated), as the API server reads it.
    #[serde(default)]
    pub spec: Option<NetworkPolicySpecDoc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct NetworkPolicySpecDoc {
    #[serde(default)]
    pub pod_selector: Option<LabelSelectorSpec>,
    #[serde(default)]
    pub policy_types: Option<Vec<String>>,
    #[serde(default)]
    pub ingress: Option<Vec<NetworkPolicyIngressRuleSpec>>,
    #[serde(default)]
    pub egress: Option<Vec<NetworkPolicyEgressRuleSpec>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct NetworkPolicyIngressRuleSpec {
    #[serde(default)]
    pub from: Option<Vec<NetworkPolicyPeerSpec>>,
    #[serde(default)]
    pub ports: Option<Vec<NetworkPolicyPortSpec>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct NetworkPolicyEgressRuleSpec {
    #[serde(default)]
    pub to: Option<Vec<NetworkPolicyPeerSpec>>,
    #[serde(default)]
    pub ports: Option<Vec<NetworkPolicyPortSpec>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct NetworkPolicyPeerSpec {
    #[serde(default)]
    pub pod_selector: Option<LabelSelectorSpec>,
    #[serde(default)]
    pub namespace_selector: Option<LabelSelectorSpec>,
    #[serde(default)]
    pub ip_block: Option<IpBlockSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct IpBlockSpec {
    pub cidr: String,
    #[serde(default)]
    pub except: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct NetworkPolicyPortSpec {
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub port: Option<PortText>,
    #[serde(default)]
    pub end_port: Option<PortValue>,
}

/// `kind: Namespace` (`v1`): only its name and labels matter to the mesh.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct NamespaceDoc {
    #[allow(dead_code)]
    pub api_version: String,
    #[allow(dead_code)]
    pub kind: String,
    pub metadata: Metadata,
    /// Accepted so that exported Namespaces load; finalizers mean nothing here.
    #[serde(default)]
    #[allow(dead_code)]
    pub spec: Option<NamespaceSpecDoc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct NamespaceSpecDoc {
    #[serde(default)]
    #[allow(dead_code)]
    pub finalizers: Option<Vec<String>>,
}
