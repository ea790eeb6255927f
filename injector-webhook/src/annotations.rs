//! The pod annotations injection reads, each parsed into a typed value or refused with the
//! annotation's name. `sidecar.istio.io/*` and `linkerd.io/*` annotations mean nothing here.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::value::{Map, Value};

/// `enabled` or `disabled`: whether this pod wants a sidecar.
pub const INJECT: &str = "palisade.dev/inject";
/// Set to `injected` on every injected pod.
pub const STATUS: &str = "palisade.dev/status";
/// `native` (default) or `classic`: where the proxy container goes.
pub const SIDECAR: &str = "palisade.dev/sidecar";
/// Inbound destination ports that are not captured (`palisade init --exclude-inbound-ports`).
pub const EXCLUDE_INBOUND_PORTS: &str = "palisade.dev/exclude-inbound-ports";
/// Outbound destination ports that are not captured.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "palisade.dev/exclude-outbound-ports";
/// Source CIDRs whose inbound connections are not captured.
pub const EXCLUDE_INBOUND_CIDRS: &str = "palisade.dev/exclude-inbound-cidrs";
/// Destination CIDRs whose outbound connections are not captured.
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "palisade.dev/exclude-outbound-cidrs";
/// UDP ports let through the non-TCP default deny.
pub const ALLOW_UDP_PORTS: &str = "palisade.dev/allow-udp-ports";
/// Ports whose traffic is opaque TCP: validated at injection, read by the control plane from
/// the pod (every caller's sidecar must know, not only this pod's).
pub const OPAQUE_PORTS: &str = "palisade.dev/opaque-ports";
/// The proxy's CPU request.
pub const PROXY_CPU: &str = "palisade.dev/proxy-cpu";
/// The proxy's memory request.
pub const PROXY_MEMORY: &str = "palisade.dev/proxy-memory";
/// The proxy's CPU limit.
pub const PROXY_CPU_LIMIT: &str = "palisade.dev/proxy-cpu-limit";
/// The proxy's memory limit.
pub const PROXY_MEMORY_LIMIT: &str = "palisade.dev/proxy-memory-limit";

/// The proxy's CPU request when `palisade.dev/proxy-cpu` is not set.
pub const DEFAULT_PROXY_CPU: &str = "100m";
/// The proxy's memory request when `palisade.dev/proxy-memory` is not set.
pub const DEFAULT_PROXY_MEMORY: &str = "64Mi";

/// A bad annotation value: which annotation, the value, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {value:?} {problem}")]
pub struct AnnotationError {
    /// The annotation's name.
    pub annotation: &'static str,
    /// The value as written.
    pub value: String,
    /// What is wrong with it.
    pub problem: String,
}

fn bad(annotation: &'static str, value: &str, problem: impl Into<String>) -> AnnotationError {
    AnnotationError {
        annotation,
        value: value.to_owned(),
        problem: problem.into(),
    }
}

/// What `palisade.dev/inject` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectRequest {
    /// The annotation is absent.
    Unset,
    /// `enabled`.
    Enabled,
    /// `disabled`.
    Disabled,
}

/// Where the proxy container goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarMode {
    /// A Kubernetes native sidecar: an init container with `restartPolicy: Always`.
    Native,
    /// The first entry of `containers`.
    Classic,
}

/// A resource quantity as written, with its value for comparisons.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    /// The text, as the pod will carry it.
    pub text: String,
    value: f64,
}

/// The proxy's resources.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyResources {
    /// CPU request.
    pub cpu: Quantity,
    /// Memory request.
    pub memory: Quantity,
    /// CPU limit, when asked for.
    pub cpu_limit: Option<Quantity>,
    /// Memory limit, when asked for.
    pub memory_limit: Option<Quantity>,
}

/// Everything the annotations ask of the injection.
#[derive(Debug, Clone, PartialEq)]
pub struct PodOptions {
    /// Native or classic sidecar.
    pub sidecar: SidecarMode,
    /// `palisade init` flags and their normalised values, in a fixed order.
    pub init_flags: Vec<(&'static str, String)>,
    /// The proxy's opaque ports (normalised), when set.
    pub opaque_ports: Option<String>,
    /// Requests and limits.
    pub resources: ProxyResources,
}

/// The raw value of annotation `name`, if the pod has it.
pub fn get<'a>(annotations: Option<&'a Map>, name: &'static str) -> Option<&'a Value> {
    annotations.and_then(|a| a.get(name))
}

fn text<'a>(
    annotations: Option<&'a Map>,
    name: &'static str,
) -> Result<Option<&'a str>, AnnotationError> {
    match get(annotations, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        // Kubernetes annotations are strings; a YAML `yes` or `8080` is not one.
        Some(other) => Err(bad(name, &other.to_json(), "must be a string (quote it)")),
    }
}

/// `palisade.dev/inject`.
pub fn inject_request(annotations: Option<&Map>) -> Result<InjectRequest, AnnotationError> {
    match text(annotations, INJECT)? {
        None => Ok(InjectRequest::Unset),
        Some("enabled") => Ok(InjectRequest::Enabled),
        Some("disabled") => Ok(InjectRequest::Disabled),
        Some(other) => Err(bad(INJECT, other, "must be \"enabled\" or \"disabled\"")),
    }
}

/// Every other annotation injection reads.
pub fn pod_options(annotations: Option<&Map>) -> Result<PodOptions, AnnotationError> {
    let sidecar = match text(annotations, SIDECAR)? {
        None | Some("native") => SidecarMode::Native,
        Some("classic") => SidecarMode::Classic,
        Some(other) => return Err(bad(SIDECAR, other, "must be \"native\" or \"classic\"")),
    };
    let mut init_flags = Vec::new();
    for (annotation, flag, parse) in [
        (
            EXCLUDE_INBOUND_PORTS,
            "--exclude-inbound-ports",
            ports as fn(&'static str, &str) -> Result<String, AnnotationError>,
        ),
        (EXCLUDE_OUTBOUND_PORTS, "--exclude-outbound-ports", ports),
        (EXCLUDE_INBOUND_CIDRS, "--exclude-inbound-cidrs", cidrs),
        (EXCLUDE_OUTBOUND_CIDRS, "--exclude-outbound-cidrs", cidrs),
        (ALLOW_UDP_PORTS, "--allow-udp-ports", ports),
    ] {
        if let Some(value) = text(annotations, annotation)? {
            let normalised = parse(annotation, value)?;
            if !normalised.is_empty() {
                init_flags.push((flag, normalised));
            }
        }
    }
    let opaque_ports = match text(annotations, OPAQUE_PORTS)? {
        Some(value) => Some(ports(OPAQUE_PORTS, value)?).filter(|p| !p.is_empty()),
        None => None,
    };
    let quantity_or = |name: &'static str, default: &str| -> Result<Quantity, AnnotationError> {
        let written = text(annotations, name)?;
        quantity(name, written.unwrap_or(default))
    };
    let optional_quantity = |name: &'static str| -> Result<Option<Quantity>, AnnotationError> {
        text(annotations, name)?
            .map(|v| quantity(name, v))
            .transpose()
    };
    let resources = ProxyResources {
        cpu: quantity_or(PROXY_CPU, DEFAULT_PROXY_CPU)?,
        memory: quantity_or(PROXY_MEMORY, DEFAULT_PROXY_MEMORY)?,
        cpu_limit: optional_quantity(PROXY_CPU_LIMIT)?,
        memory_limit: optional_quantity(PROXY_MEMORY_LIMIT)?,
    };
    // Kubernetes refuses a pod whose limit is below its request; say which annotation.
    for (limit, limit_name, request, request_name) in [
        (
            &resources.cpu_limit,
            PROXY_CPU_LIMIT,
            &resources.cpu,
            PROXY_CPU,
        ),
        (
            &resources.memory_limit,
            PROXY_MEMORY_LIMIT,
            &resources.memory,
            PROXY_MEMORY,
        ),
    ] {
        if let Some(limit) = limit
            && limit.value < request.value
        {
            return Err(bad(
                limit_name,
                &limit.text,
                format!(
                    "is below the proxy's request {} ({request_name} or its default)",
                    request.text
                ),
            ));
        }
    }
    Ok(PodOptions {
        sidecar,
        init_flags,
        opaque_ports,
        resources,
    })
}

fn items(list: &str) -> impl Iterator<Item = &str> {
    // As `palisade init` reads its flags: empty items (a trailing comma) carry nothing.
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A comma-separated list of ports 1-65535, normalised (no spaces, no repeats).
fn ports(annotation: &'static str, list: &str) -> Result<String, AnnotationError> {
    let mut seen: Vec<u16> = Vec::new();
    for item in items(list) {
        let port = match item.parse::<u16>() {
            Ok(p) if p != 0 && item.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => {
                return Err(bad(
                    annotation,
                    list,
                    format!("has {item:?}, which is not a port (1-65535)"),
                ));
            }
        };
        if !seen.contains(&port) {
            seen.push(port);
        }
    }
    Ok(seen
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(","))
}

/// A comma-separated list of CIDRs (a bare address is its own block), normalised with host
/// bits masked, as `palisade init` masks them.
fn cidrs(annotation: &'static str, list: &str) -> Result<String, AnnotationError> {
    let mut seen: Vec<IpNet> = Vec::new();
    for item in items(list) {
        let parsed = if item.contains('/') {
            item.parse::<IpNet>().ok()
        } else {
            item.parse::<IpAddr>().ok().map(IpNet::from)
        };
        let Some(net) = parsed else {
            return Err(bad(
                annotation,
                list,
                format!("has {item:?}, which is not a CIDR"),
            ));
        };
        let net = net.trunc();
        if !seen.contains(&net) {
            seen.push(net);
        }
    }
    Ok(seen
        .iter()
        .map(IpNet::to_string)
        .collect::<Vec<_>>()
        .join(","))
}

/// A Kubernetes resource quantity (`100m`, `64Mi`, `1.5`, `2e3`), not negative.
fn quantity(annotation: &'static str, text: &str) -> Result<Quantity, AnnotationError> {
    parse_quantity(text)
        .map(|value| Quantity {
            text: text.to_owned(),
            value,
        })
        .ok_or_else(|| {
            bad(
                annotation,
                text,
                "is not a Kubernetes quantity (e.g. 100m, 0.5, 64Mi, 1Gi)",
            )
        })
}

/// The quantity's value in base units, following the grammar of Kubernetes'
/// `resource.Quantity` (sign `-` refused: resources cannot be negative).
pub fn parse_quantity(text: &str) -> Option<f64> {
    let body = text.strip_prefix('+').unwrap_or(text);
    let number_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    let base: f64 = if number.starts_with('.') {
        format!("0{number}").parse().ok()?
    } else {
        number.trim_end_matches('.').parse().ok()?
    };
    let multiplier = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let digits = &exp[1..];
            let unsigned = digits.strip_prefix(['+', '-']).unwrap_or(digits);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(digits.parse::<i32>().ok()?)
        }
        _ => return None,
    };
    Some(base * multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::from_json;

    fn annotations(json: &str) -> Map {
        from_json(json.as_bytes())
            .unwrap()
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn quantities() {
        for (text, value) in [
            ("100m", 0.1),
            ("64Mi", 64.0 * 1024.0 * 1024.0),
            ("1", 1.0),
            ("0.5", 0.5),
            (".5", 0.5),
            ("2e3", 2000.0),
            ("1G", 1e9),
            ("+1", 1.0),
        ] {
            assert_eq!(parse_quantity(text), Some(value), "{text}");
        }
        for text in ["", "-1", "1x", "m", "1..0", "abc", "1e", "1Mib", "."] {
            assert_eq!(parse_quantity(text), None, "{text}");
        }
    }

    #[test]
    fn options_map_onto_init_flags() {
        let a = annotations(
            r#"{"palisade.dev/exclude-inbound-ports":"22, 8081,22",
                "palisade.dev/exclude-outbound-cidrs":"169.254.169.254,10.1.2.3/8",
                "palisade.dev/allow-udp-ports":"4789",
                "palisade.dev/opaque-ports":"5432",
                "sidecar.istio.io/inject":"false"}"#,
        );
        let o = pod_options(Some(&a)).unwrap();
        assert_eq!(
            o.init_flags,
            vec![
                ("--exclude-inbound-ports", "22,8081".to_owned()),
                (
                    "--exclude-outbound-cidrs",
                    "169.254.169.254/32,10.0.0.0/8".to_owned()
                ),
                ("--allow-udp-ports", "4789".to_owned()),
            ]
        );
        assert_eq!(o.opaque_ports.as_deref(), Some("5432"));
        assert_eq!(o.sidecar, SidecarMode::Native);
    }

    #[test]
    fn bad_values_name_the_annotation() {
        for (json, name) in [
            (
                r#"{"palisade.dev/exclude-inbound-ports":"80,http"}"#,
                EXCLUDE_INBOUND_PORTS,
            ),
            (
                r#"{"palisade.dev/exclude-outbound-ports":"0"}"#,
                EXCLUDE_OUTBOUND_PORTS,
            ),
            (
                r#"{"palisade.dev/exclude-inbound-cidrs":"10.0.0.0/33"}"#,
                EXCLUDE_INBOUND_CIDRS,
            ),
            (r#"{"palisade.dev/sidecar":"sidecar"}"#, SIDECAR),
            (r#"{"palisade.dev/proxy-cpu":"lots"}"#, PROXY_CPU),
            (
                r#"{"palisade.dev/proxy-memory-limit":"32Mi"}"#,
                PROXY_MEMORY_LIMIT,
            ),
            (r#"{"palisade.dev/opaque-ports":7}"#, OPAQUE_PORTS),
        ] {
            let err = pod_options(Some(&annotations(json))).unwrap_err();
            assert_eq!(err.annotation, name, "{json}: {err}");
        }
        let err =
            inject_request(Some(&annotations(r#"{"palisade.dev/inject":"true"}"#))).unwrap_err();
        assert_eq!(err.annotation, INJECT);
    }
}
