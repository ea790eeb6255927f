//! The request (L7) half of a check: the path and authority read as the sidecar reads
//! them, then AuthorizationPolicy as the destination's sidecar evaluates it.

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use palisade_certs::SpiffeId;
use palisade_proxy::authz::{
    Authorizer, DecidedBy, Decision, DryRun, HttpAttrs, PathNormalization, PathOptions,
    RequestAttrs, normalize_request,
};

use super::CheckError;
use crate::MeshSnapshot;
use crate::model::{DefaultAuthorization, PathNormalization as CpPath, Workload};

/// The `policy` of a request the sidecar refuses (400) before authorization because its
/// path cannot be normalised or holds an encoded slash the mesh refuses.
pub const PATH_REFUSED: &str = "path-refused";
/// The `policy` of a request the sidecar refuses (400) before authorization because its
/// authority is ambiguous (two Host lines, userinfo) or malformed.
pub const AUTHORITY_REFUSED: &str = "authority-refused";

/// What the destination's sidecar does with the request.
#[derive(Debug)]
pub enum RequestVerdict {
    /// Refused with 400 before authorization: the reason label and why.
    Refused(&'static str, String),
    /// Decided by AuthorizationPolicy and the mesh default.
    Decided(Box<Decision>),
}

/// One request (or, with `http` absent, one opaque TCP connection) as the caller sends it.
#[derive(Debug)]
pub struct Request<'a> {
    /// The caller's verified identity.
    pub source: Option<&'a SpiffeId>,
    /// The caller's address.
    pub source_ip: Option<std::net::IpAddr>,
    /// App port at the destination.
    pub port: u16,
    /// Method, raw path (may carry a query), `NAME=VALUE` headers; `None` on a TCP port.
    pub http: Option<(&'a str, &'a str, &'a [String])>,
}

/// The headers given as `NAME=VALUE`, in order (a repeated name stays repeated).
fn header_map(headers: &[String]) -> Result<HeaderMap, CheckError> {
    let bad = |h: &str, why: &'static str| CheckError::Header(h.to_owned(), why);
    let mut map = HeaderMap::new();
    for h in headers {
        let (k, v) = h
            .split_once('=')
            .ok_or_else(|| bad(h, "expected NAME=VALUE"))?;
        let key = HeaderName::try_from(k.trim().to_ascii_lowercase())
            .map_err(|_| bad(h, "invalid header name"))?;
        let value = HeaderValue::try_from(v).map_err(|_| bad(h, "invalid value"))?;
        map.append(key, value);
    }
    Ok(map)
}

/// The authority a client in the mesh would use for this port: a Service in front of it.
pub fn default_authority(snapshot: &MeshSnapshot, destination: &Workload, port: u16) -> String {
    let (namespace, name) = (&destination.namespace, &destination.name);
    snapshot
        .services()
        .filter(|s| &s.namespace == namespace && s.endpoints.iter().any(|e| &e.workload == name))
        .find_map(|s| {
            s.ports
                .iter()
                .find(|p| p.target_port == port)
                .map(|p| format!("{}.{}:{}", s.name, s.namespace, p.port))
        })
        .unwrap_or_else(|| format!("{name}.{namespace}:{port}"))
}

/// Decides `request` as the destination's sidecar would.
pub fn decide(
    snapshot: &MeshSnapshot,
    destination: &Workload,
    request: &Request<'_>,
) -> Result<RequestVerdict, CheckError> {
    let compiled = crate::authorization_for(snapshot, &destination.namespace, &destination.name)?;
    let authorizer = Authorizer::try_from(&compiled).map_err(|e| CheckError::Compiled {
        what: format!(
            "policies selecting {}/{}",
            destination.namespace, destination.name
        ),
        message: e.to_string(),
    })?;
    let default_allow = snapshot.settings().default_authorization == DefaultAuthorization::Allow;
    let mut attrs = RequestAttrs {
        source: request.source,
        source_ip: request.source_ip,
        destination_ip: Some(destination.address),
        destination_port: request.port,
        sni: None,
        http: None,
    };
    let Some((method, raw_path, headers)) = request.http else {
        return Ok(RequestVerdict::Decided(Box::new(
            authorizer.evaluate(&attrs, default_allow),
        )));
    };

    // The sidecar normalises the path (MeshConfig pathNormalization) before authorization,
    // and refuses with 400 what it cannot or may not normalise.
    let settings = snapshot.settings();
    let path_options = PathOptions {
        normalization: match settings.path_normalization {
            CpPath::Base => PathNormalization::Base,
            CpPath::MergeSlashes => PathNormalization::MergeSlashes,
            CpPath::DecodeAndMergeSlashes => PathNormalization::DecodeAndMergeSlashes,
        },
        reject_escaped_slashes: settings.reject_escaped_slashes,
    };
    let path = match normalize_request(raw_path, &path_options) {
        Ok(path) => path.into_owned(),
        Err(e) => {
            return Ok(RequestVerdict::Refused(
                PATH_REFUSED,
                format!("refused with 400 before authorization: {e}"),
            ));
        }
    };
    // The authority, read by the sidecar's own parser: canonical, and refused when two
    // readings are possible.
    let mut headers = header_map(headers)?;
    if !headers.contains_key(http::header::HOST) {
        let host = default_authority(snapshot, destination, request.port);
        let value = HeaderValue::try_from(host.as_str())
            .map_err(|_| CheckError::Header(host.clone(), "not a valid authority"))?;
        headers.insert(http::header::HOST, value);
    }
    let host = match palisade_proxy::authority::of(&Uri::from_static("/"), &headers) {
        Ok(authority) => authority.to_string(),
        Err(e) => {
            return Ok(RequestVerdict::Refused(
                AUTHORITY_REFUSED,
                format!("refused with 400 before authorization: {e}"),
            ));
        }
    };
    attrs.http = Some(HttpAttrs {
        method,
        host: &host,
        path: &path,
        headers: &headers,
    });
    Ok(RequestVerdict::Decided(Box::new(
        authorizer.evaluate(&attrs, default_allow),
    )))
}

/// The decision's (policy, rule) as `--output json` names them.
pub fn policy_and_rule(decision: &Decision) -> (String, Option<usize>) {
    match &decision.decided_by {
        DecidedBy::Deny(m) | DecidedBy::Allow(m) => (m.policy.clone(), Some(m.rule)),
        _ => (decision.policy_label(), None),
    }
}

/// What dry-run policies would have decided, shown like the decision itself.
pub fn dry_run_json(d: &DryRun) -> serde_json::Value {
    let rule = match &d.decided_by {
        DecidedBy::Deny(m) | DecidedBy::Allow(m) => Some(m.rule),
        _ => None,
    };
    serde_json::json!({
        "decision": if d.allowed { "ALLOW" } else { "DENY" },
        "policy": d.policy_label(),
        "rule": rule,
        "explanation": d.explain(),
        "matched": d.matched.iter().map(|(action, m)| serde_json::json!({
            "policy": m.policy,
            "rule": m.rule,
            "action": action,
        })).collect::<Vec<_>>(),
    })
}
