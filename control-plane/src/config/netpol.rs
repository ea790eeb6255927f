//! Checks of Kubernetes NetworkPolicy (`networking.k8s.io/v1`) and Namespace (`v1`)
//! documents, producing the [`crate::netpol`] model.
//!
//! The API server's validation and defaulting, as documented for `networking.k8s.io/v1`:
//! policyTypes default to Ingress, plus Egress when there are egress rules; a port's
//! protocol defaults to TCP; `endPort` needs a numeric `port`; an `ipBlock` stands alone in
//! its peer and its `except` blocks lie strictly inside its `cidr`. A policy with any error
//! is rejected whole (every error reported), since enforcing part of it would change what
//! it allows.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::policy::Errors;
use super::resources::{
    IpBlockSpec, LabelSelectorSpec, NamespaceDoc, NetworkPolicyDoc, NetworkPolicyPeerSpec,
    NetworkPolicyPortSpec, PortText,
};
use super::validate::{check_metadata, check_metadata_named, dns1123_subdomain};
use super::{ConfigError, DocCtx};
use crate::model::L4Protocol;
use crate::netpol::{
    LabelRequirement, LabelSelector, NAMESPACE_NAME_LABEL, Namespace, NetworkPeer, NetworkPolicy,
    NetworkPolicyPort, NetworkPolicyRule, PolicyPort,
};

/// Longest label name and value (the part after any `prefix/`).
const MAX_LABEL_LEN: usize = 63;

/// Whether `s` is a label name or non-empty value: alphanumerics, `-`, `_`, `.`, starting
/// and ending alphanumeric, at most 63 characters.
fn is_label_text(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// A label key: `name` or `prefix/name`, the prefix a DNS-1123 subdomain.
pub(super) fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && dns1123_subdomain(prefix).is_err()
    {
        return Err(format!(
            "label key {key:?}: the prefix must be a DNS-1123 subdomain (e.g. example.com/app)"
        ));
    }
    if !is_label_text(name) {
        return Err(format!(
            "label key {key:?} is not valid (a name of at most 63 letters, digits, '-', '_' \
             or '.', starting and ending with a letter or digit, optionally after a \
             DNS subdomain and '/')"
        ));
    }
    Ok(())
}

/// A label value: empty, or like a label name.
pub(super) fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_text(value) {
        Ok(())
    } else {
        Err(format!(
            "label value {value:?} is not valid (empty, or at most 63 letters, digits, '-', \
             '_' or '.', starting and ending with a letter or digit)"
        ))
    }
}

fn check_labels(e: &mut Errors<'_>, at: &str, labels: &BTreeMap<String, String>) {
    for (key, value) in labels {
        if let Err(why) = label_key(key) {
            e.push(at, why);
        } else if let Err(why) = label_value(value) {
            e.push(&format!("{at}[{key}]"), why);
        }
    }
}

/// A Kubernetes label selector (absent and `{}` are both the empty selector).
fn label_selector(e: &mut Errors<'_>, at: &str, spec: &LabelSelectorSpec) -> LabelSelector {
    let match_labels = spec.match_labels.clone().unwrap_or_default();
    check_labels(e, &format!("{at}.matchLabels"), &match_labels);
    let mut match_expressions = Vec::new();
    for (i, r) in spec.match_expressions.iter().flatten().enumerate() {
        let here = format!("{at}.matchExpressions[{i}]");
        if let Err(why) = label_key(&r.key) {
            e.push(&format!("{here}.key"), why);
            continue;
        }
        let values = r.values.clone().unwrap_or_default();
        for (j, v) in values.iter().enumerate() {
            if let Err(why) = label_value(v) {
                e.push(&format!("{here}.values[{j}]"), why);
            }
        }
        let key = r.key.clone();
        let set: BTreeSet<String> = values.iter().cloned().collect();
        let requirement = match r.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                e.push(
                    &format!("{here}.values"),
                    format!("operator {} needs at least one value", r.operator),
                );
                continue;
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                e.push(
                    &format!("{here}.values"),
                    format!("operator {} takes no values", r.operator),
                );
                continue;
            }
            "In" => LabelRequirement::In(key, set),
            "NotIn" => LabelRequirement::NotIn(key, set),
            "Exists" => LabelRequirement::Exists(key),
            "DoesNotExist" => LabelRequirement::DoesNotExist(key),
            other => {
                e.push(
                    &format!("{here}.operator"),
                    format!(
                        "unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                    ),
                );
                continue;
            }
        };
        match_expressions.push(requirement);
    }
    LabelSelector {
        match_labels,
        match_expressions,
    }
}

/// A CIDR with host bits cleared; a bare address is refused, as by the API server.
fn cidr(value: &str) -> Result<IpNet, String> {
    if !value.contains('/') {
        return Err(format!(
            "{value:?} is not a CIDR (an address and a prefix length, e.g. 10.0.0.0/8)"
        ));
    }
    value
        .parse::<IpNet>()
        .map(|net| net.trunc())
        .map_err(|_| format!("{value:?} is not a CIDR (e.g. 10.0.0.0/8 or fd00::/8)"))
}

fn ip_block(e: &mut Errors<'_>, at: &str, spec: &IpBlockSpec) -> Option<NetworkPeer> {
    let block = match cidr(&spec.cidr) {
        Ok(block) => block,
        Err(why) => {
            e.push(&format!("{at}.cidr"), why);
            return None;
        }
    };
    let before = e.count;
    let mut except = Vec::new();
    for (i, text) in spec.except.iter().flatten().enumerate() {
        let field = format!("{at}.except[{i}]");
        match cidr(text) {
            Ok(inner) if block.contains(&inner) && inner.prefix_len() > block.prefix_len() => {
                except.push(inner)
            }
            Ok(inner) => e.push(
                &field,
                format!("{inner} is not strictly inside cidr {block}"),
            ),
            Err(why) => e.push(&field, why),
        }
    }
    (e.count == before).then_some(NetworkPeer::IpBlock {
        cidr: block,
        except,
    })
}

fn peer(e: &mut Errors<'_>, at: &str, spec: &NetworkPolicyPeerSpec) -> Option<NetworkPeer> {
    let selectors = spec.pod_selector.is_some() || spec.namespace_selector.is_some();
    match &spec.ip_block {
        Some(_) if selectors => {
            e.push(
                at,
                "ipBlock cannot be combined with podSelector or namespaceSelector in one peer \
                 (write them as separate peers)",
            );
            None
        }
        Some(block) => ip_block(e, &format!("{at}.ipBlock"), block),
        None if !selectors => {
            e.push(
                at,
                "a peer needs podSelector, namespaceSelector or ipBlock (an empty peer is \
                 refused, as by the API server)",
            );
            None
        }
        None => Some(NetworkPeer::Selector {
            pods: spec
                .pod_selector
                .as_ref()
                .map(|s| label_selector(e, &format!("{at}.podSelector"), s)),
            namespaces: spec
                .namespace_selector
                .as_ref()
                .map(|s| label_selector(e, &format!("{at}.namespaceSelector"), s)),
        }),
    }
}

/// An IANA service name, as the API server requires of named ports: at most 15
/// lower-case letters, digits and '-', at least one letter, no leading, trailing or double
/// '-'.
fn is_service_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn port_number(value: i64) -> Result<u16, String> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("port {value} is out of range (1 to 65535)")),
    }
}

fn policy_port(
    e: &mut Errors<'_>,
    at: &str,
    spec: &NetworkPolicyPortSpec,
) -> Option<NetworkPolicyPort> {
    let before = e.count;
    let protocol = match spec.protocol.as_deref() {
        None => L4Protocol::Tcp,
        Some(text) => L4Protocol::parse(text).unwrap_or_else(|| {
            e.push(
                &format!("{at}.protocol"),
                format!("unknown protocol {text:?} (expected TCP, UDP or SCTP)"),
            );
            L4Protocol::Tcp
        }),
    };
    let end = match spec.end_port {
        None => None,
        Some(v) => match port_number(v.0) {
            Ok(p) => Some(p),
            Err(why) => {
                e.push(&format!("{at}.endPort"), why);
                None
            }
        },
    };
    let port = match &spec.port {
        None => {
            if spec.end_port.is_some() {
                e.push(&format!("{at}.endPort"), "needs a numeric port");
            }
            None
        }
        Some(PortText::Number(n)) => match port_number(*n) {
            Ok(first) => {
                let last = end.unwrap_or(first);
                if last < first {
                    e.push(
                        &format!("{at}.endPort"),
                        format!("{last} is below port {first}"),
                    );
                }
                Some(PolicyPort::Range { first, last })
            }
            Err(why) => {
                e.push(&format!("{at}.port"), why);
                None
            }
        },
        Some(PortText::Text(name)) => {
            if spec.end_port.is_some() {
                e.push(
                    &format!("{at}.endPort"),
                    format!("cannot be used with the named port {name:?} (only with a number)"),
                );
            }
            if is_service_name(name) {
                Some(PolicyPort::Named(name.clone()))
            } else {
                let hint = if name.bytes().all(|b| b.is_ascii_digit()) {
                    " (write a port number without quotes)"
                } else {
                    ""
                };
                e.push(
                    &format!("{at}.port"),
                    format!(
                        "{name:?} is not a port name (at most 15 lower-case letters, digits and \
                         '-', with at least one letter){hint}"
                    ),
                );
                None
            }
        }
    };
    (e.count == before).then_some(NetworkPolicyPort { protocol, port })
}

fn rule(
    e: &mut Errors<'_>,
    at: &str,
    peers_field: &str,
    peers: Option<&Vec<NetworkPolicyPeerSpec>>,
    ports: Option<&Vec<NetworkPolicyPortSpec>>,
) -> NetworkPolicyRule {
    NetworkPolicyRule {
        peers: peers
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, p)| peer(e, &format!("{at}.{peers_field}[{i}]"), p))
            .collect(),
        ports: ports
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, p)| policy_port(e, &format!("{at}.ports[{i}]"), p))
            .collect(),
    }
}

/// A NetworkPolicy document, validated and defaulted.
pub(crate) fn network_policy(
    ctx: &DocCtx,
    doc: NetworkPolicyDoc,
    errors: &mut Vec<ConfigError>,
) -> Option<NetworkPolicy> {
    // NetworkPolicy names are DNS-1123 subdomains in Kubernetes (dots allowed).
    let (namespace, name) = check_metadata_named(ctx, &doc.metadata, dns1123_subdomain, errors)?;
    let spec = doc.spec.unwrap_or_default();
    let mut e = Errors {
        ctx,
        errors,
        count: 0,
    };
    let pod_selector = label_selector(
        &mut e,
        "spec.podSelector",
        &spec.pod_selector.unwrap_or_default(),
    );
    let (mut ingress_type, mut egress_type) = (false, false);
    match spec.policy_types.as_deref() {
        // Defaulting, as the API server does it: an empty list is no list.
        None | Some([]) => {
            ingress_type = true;
            egress_type = spec.egress.as_ref().is_some_and(|rules| !rules.is_empty());
        }
        Some(types) => {
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => ingress_type = true,
                    "Egress" => egress_type = true,
                    other => e.push(
                        &format!("spec.policyTypes[{i}]"),
                        format!("unknown policy type {other:?} (expected Ingress or Egress)"),
                    ),
                }
            }
        }
    }
    let ingress = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            rule(
                &mut e,
                &format!("spec.ingress[{i}]"),
                "from",
                r.from.as_ref(),
                r.ports.as_ref(),
            )
        })
        .collect();
    let egress = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            rule(
                &mut e,
                &format!("spec.egress[{i}]"),
                "to",
                r.to.as_ref(),
                r.ports.as_ref(),
            )
        })
        .collect();
    (e.count == 0).then(|| NetworkPolicy {
        namespace,
        name,
        pod_selector,
        ingress_type,
        egress_type,
        ingress,
        egress,
        source: ctx.source(),
    })
}

/// A Namespace document: its labels, with `kubernetes.io/metadata.name` set to its name
/// whatever was written (the API server does the same).
pub(crate) fn namespace(
    ctx: &DocCtx,
    doc: NamespaceDoc,
    errors: &mut Vec<ConfigError>,
) -> Option<Namespace> {
    let mut e = Errors {
        ctx,
        errors,
        count: 0,
    };
    if doc.metadata.namespace.is_some() {
        e.push(
            "metadata.namespace",
            "a Namespace is cluster-scoped and has no namespace",
        );
    }
    check_labels(&mut e, "metadata.labels", &doc.metadata.labels);
    let count = e.count;
    let (_, name) = check_metadata(ctx, &doc.metadata, errors)?;
    if count != 0 {
        return None;
    }
    let mut labels = doc.metadata.labels;
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
    Some(Namespace {
        name,
        labels,
        source: Some(ctx.source()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_syntax() {
        for ok in [
            "app",
            "app.kubernetes.io/name",
            "a_b.c-d",
            "A1",
            "example.com/x",
        ] {
            assert!(label_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a/b/c",
            "Example.com/x",
            "/x",
            "x/",
            &"a".repeat(64),
        ] {
            assert!(label_key(bad).is_err(), "{bad:?}");
        }
        for ok in ["", "v1", "a.b_c-d"] {
            assert!(label_value(ok).is_ok(), "{ok}");
        }
        for bad in ["-", "a b", "a/b", &"v".repeat(64)] {
            assert!(label_value(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidrs_are_canonical_and_never_bare() {
        assert_eq!(
            cidr("10.1.2.3/8").map(|n| n.to_string()),
            Ok("10.0.0.0/8".into())
        );
        assert_eq!(
            cidr("fd00::1/64").map(|n| n.to_string()),
            Ok("fd00::/64".into())
        );
        for bad in ["10.0.0.1", "10.0.0.0/33", "x/8", "10.0.0.0/+8", "10.0.0.0/"] {
            assert!(cidr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn service_names() {
        for ok in ["http", "dns-udp", "h2", "a1"] {
            assert!(is_service_name(ok), "{ok}");
        }
        for bad in ["", "80", "Http", "-a", "a-", "a--b", "abcdefghijklmnop"] {
            assert!(!is_service_name(bad), "{bad:?}");
        }
    }
}
