//! Checks of AuthorizationPolicy and EgressPolicy documents, producing the compiled
//! [`crate::policy`] values.
//!
//! A policy is all or nothing: any field Palisade cannot enforce (JWT principals,
//! X-Forwarded-For addresses, external authorizers, Gateway API targets, unknown condition
//! keys) rejects the whole document with an error naming the field, because enforcing the
//! rest of it would silently widen or narrow what the author wrote. Every error of a
//! document is reported, not only the first.

use std::net::IpAddr;

use palisade_certs::SpiffeId;

use super::resources::{
    AuthorizationPolicyDoc, ConditionSpec, EgressPolicyDoc, OperationSpec, PortText, PortValue,
    RuleSpec, SelectorSpec, SourceSpec, Unsupported,
};
use super::validate::{check_metadata, dns1123_label, dns1123_subdomain};
use super::{ConfigError, DocCtx};
use crate::policy::{
    Action, AuthorizationPolicy, Condition, ConditionKey, EgressHost, EgressPolicy, IpBlock,
    OperationMatch, Rule, Selector, ServiceAccount, SourceMatch, StringMatch, max_prefix,
};

/// The tail of every "not supported" message.
const REJECTED: &str = "a policy using it is rejected rather than enforced partially";

/// Collects the errors of one document, each with its field path.
pub(super) struct Errors<'a> {
    pub ctx: &'a DocCtx,
    pub errors: &'a mut Vec<ConfigError>,
    pub count: usize,
}

impl Errors<'_> {
    pub fn push(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(self.ctx.error(Some(field), message));
        self.count += 1;
    }

    /// Runs `f` with a count of its own errors (to tell "empty" from "every entry was
    /// invalid"), adding them to this one's.
    fn scoped<R>(&mut self, f: impl FnOnce(&mut Errors<'_>) -> R) -> R {
        let mut sub = Errors {
            ctx: self.ctx,
            errors: &mut *self.errors,
            count: 0,
        };
        let r = f(&mut sub);
        self.count += sub.count;
        r
    }
}

/// Whether an unsupported field is actually used. A null or an empty list is the same as
/// leaving the field out, as in Istio (proto3 lists have no presence), so it is accepted.
fn is_used(value: &Unsupported) -> bool {
    match value {
        None | Some(serde_yaml_ng::Value::Null) => false,
        Some(serde_yaml_ng::Value::Sequence(items)) => !items.is_empty(),
        Some(_) => true,
    }
}

fn reject_unsupported(e: &mut Errors<'_>, field: &str, value: &Unsupported, why: &str) {
    if is_used(value) {
        e.push(
            field,
            format!("not supported by Palisade ({why}); {REJECTED}"),
        );
    }
}

fn selector(e: &mut Errors<'_>, spec: Option<SelectorSpec>) -> Selector {
    let match_labels = spec.and_then(|s| s.match_labels).unwrap_or_default();
    for (key, value) in &match_labels {
        if key.is_empty() {
            e.push("spec.selector.matchLabels", "a label key is empty");
        }
        // Kubernetes label selectors have no wildcards: a `*` would only match a label
        // whose value is literally `*`, which is never what the author meant.
        if key.contains('*') || value.contains('*') {
            e.push(
                &format!("spec.selector.matchLabels[{key}]"),
                "wildcards are not allowed in label selectors",
            );
        }
    }
    Selector { match_labels }
}

/// Parses one of Istio's match forms: `exact`, `prefix*`, `*suffix` or `*`.
fn match_form(value: &str) -> Result<StringMatch, String> {
    if value.is_empty() {
        return Err("an empty value is not allowed".to_owned());
    }
    let form = if value == "*" {
        StringMatch::Presence
    } else if let Some(suffix) = value.strip_prefix('*') {
        StringMatch::Suffix(suffix.to_owned())
    } else if let Some(prefix) = value.strip_suffix('*') {
        StringMatch::Prefix(prefix.to_owned())
    } else {
        StringMatch::Exact(value.to_owned())
    };
    let inner = match_text(&form);
    if inner.contains('*') {
        return Err(format!(
            "{value:?}: '*' is only allowed alone, at the start or at the end (Istio's match \
             forms: exact, prefix*, *suffix, *)"
        ));
    }
    Ok(form)
}

/// The text a match compares, if any.
fn match_text(m: &StringMatch) -> &str {
    match m {
        StringMatch::Exact(v)
        | StringMatch::Prefix(v)
        | StringMatch::Suffix(v)
        | StringMatch::Template(v) => v,
        StringMatch::Presence => "",
    }
}

/// A principal, `spiffe://` optional, as Istio writes it (`cluster.local/ns/a/sa/b`).
fn principal(value: &str) -> Result<StringMatch, String> {
    let bare = value.strip_prefix("spiffe://").unwrap_or(value);
    if bare.contains("://") {
        return Err(format!(
            "{value:?} is not a principal (expected <trust-domain>/ns/<namespace>/sa/<account>, \
             optionally with spiffe://)"
        ));
    }
    let form = match_form(bare)?;
    match &form {
        StringMatch::Exact(id) => {
            SpiffeId::parse(&format!("spiffe://{id}"))
                .map_err(|e| format!("{value:?} is not a valid SPIFFE ID: {e}"))?;
        }
        StringMatch::Prefix(text) | StringMatch::Suffix(text) => {
            // A character no SPIFFE ID can hold makes the match dead, which in a DENY rule
            // is a hole: reject it rather than never match.
            if let Some(ch) = text
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/')))
            {
                return Err(format!(
                    "{value:?} can never match a SPIFFE ID: {ch:?} is not allowed in one"
                ));
            }
        }
        // `match_form` never makes a template.
        StringMatch::Presence | StringMatch::Template(_) => {}
    }
    Ok(form)
}

fn namespace(value: &str) -> Result<StringMatch, String> {
    let form = match_form(value)?;
    match &form {
        StringMatch::Exact(ns) => {
            dns1123_label(ns).map_err(|why| format!("{value:?} {why}"))?;
        }
        StringMatch::Prefix(text) | StringMatch::Suffix(text) => {
            if let Some(ch) = text
                .chars()
                .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
            {
                return Err(format!(
                    "{value:?} can never match a namespace: {ch:?} is not allowed in one"
                ));
            }
        }
        // `match_form` never makes a template.
        StringMatch::Presence | StringMatch::Template(_) => {}
    }
    Ok(form)
}

/// Istio's limit on `serviceAccounts` values, which keeps a policy's size bounded.
const MAX_SERVICE_ACCOUNTS: usize = 16;

/// A `serviceAccounts` value: `<namespace>/<name>`, exact (Istio allows no wildcard here).
fn service_account(value: &str) -> Result<ServiceAccount, String> {
    const FORM: &str = "expected <namespace>/<service account>";
    if value.contains('*') {
        return Err(format!(
            "{value:?}: wildcards are not allowed in service accounts ({FORM})"
        ));
    }
    let Some((namespace, name)) = value.split_once('/') else {
        return Err(format!("{value:?}: {FORM}"));
    };
    dns1123_label(namespace).map_err(|why| format!("{value:?}: namespace {namespace:?} {why}"))?;
    dns1123_subdomain(name).map_err(|why| format!("{value:?}: service account {name:?} {why}"))?;
    Ok(ServiceAccount {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

fn host(value: &str) -> Result<StringMatch, String> {
    // Authorities compare case-insensitively; the proxy lower-cases the request's.
    let lower = value.to_ascii_lowercase();
    let form = match_form(&lower)?;
    if let Some(ch) = match_text(&form)
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']')))
    {
        return Err(format!(
            "{value:?} is not a host: {ch:?} is not allowed in one"
        ));
    }
    Ok(form)
}

fn method(value: &str) -> Result<StringMatch, String> {
    let form = match_form(value)?;
    if let Some(ch) = match_text(&form).chars().find(|c| !is_tchar(*c)) {
        return Err(format!(
            "{value:?} is not an HTTP method: {ch:?} is not allowed in one"
        ));
    }
    Ok(form)
}

/// RFC 3986 pchar: what a literal segment of a path template is made of (Envoy's URI
/// templates, which Istio uses; `%` stands for its escapes).
fn is_pchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~%!$&'()+,;:@=".contains(c)
}

/// A path holding `{` or `}`: an Istio path template, checked as Istio does. `{*}` is one
/// segment, `{**}` any number and must be the last operator; both are whole segments; every
/// other segment is a non-empty pchar literal (so no `*` beside them).
fn path_template(value: &str) -> Result<StringMatch, String> {
    let bad = |why: &str| Err(format!("{value:?} is not a valid path template: {why}"));
    if !value.contains("{*}") && !value.contains("{**}") {
        return bad(
            "'{' and '}' are only allowed in the operators {*} (one segment) and {**} (any \
             number of segments)",
        );
    }
    let Some(body) = value.strip_prefix('/') else {
        return bad("paths start with '/'");
    };
    let body = body.strip_suffix('/').unwrap_or(body);
    let mut seen_any = false;
    for segment in body.split('/') {
        match segment {
            "{*}" | "{**}" if seen_any => return bad("{**} must be the last operator"),
            "{**}" => seen_any = true,
            "{*}" => {}
            s if s.contains(['{', '}']) => {
                return bad(&format!(
                    "segment {s:?}: an operator must be a whole segment, {{*}} or {{**}}"
                ));
            }
            s if s.is_empty() || !s.chars().all(is_pchar) => {
                return bad(&format!(
                    "segment {s:?} must be a non-empty literal of letters, digits and \
                     -._~%!$&'()+,;:@= ('*' is not allowed beside {{*}} and {{**}})"
                ));
            }
            _ => {}
        }
    }
    Ok(StringMatch::Template(value.to_owned()))
}

/// Why an AuthorizationPolicy could not name `value` in `paths`, if it could not (for tools
/// that write policies, such as `authz suggest`, so they never write one the loader refuses).
pub(crate) fn policy_path_error(value: &str) -> Option<String> {
    path(value).err()
}

fn path(value: &str) -> Result<StringMatch, String> {
    if value.contains(['{', '}']) {
        return path_template(value);
    }
    let form = match_form(value)?;
    match &form {
        // Paths are compared after normalisation, which always yields a leading `/` and no
        // query: a value without one could never match, a silent hole in a DENY rule.
        StringMatch::Exact(p) | StringMatch::Prefix(p) if !p.starts_with('/') => Err(format!(
            "{value:?} can never match: paths start with '/' (a suffix is written *suffix)"
        )),
        other if match_text(other).contains(['?', '#']) => Err(format!(
            "{value:?} can never match: paths are compared without the query string and \
             fragment"
        )),
        _ => Ok(form),
    }
}

fn sni(value: &str) -> Result<StringMatch, String> {
    // Server names are DNS names, which compare case-insensitively.
    match_form(&value.to_ascii_lowercase())
}

/// RFC 9110 `tchar`: what methods and header names are made of.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// A CIDR (`10.0.0.0/8`) or a single address, with host bits cleared.
pub(crate) fn ip_block(value: &str) -> Result<IpBlock, String> {
    let (addr, len) = match value.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (value, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{value:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"))?;
    let max = max_prefix(ip);
    let prefix_len = match len {
        None => max,
        Some(len) => match len.parse::<u8>() {
            Ok(n) if n <= max && !len.starts_with('+') => n,
            _ => {
                return Err(format!(
                    "{value:?}: prefix length must be a number from 0 to {max}"
                ));
            }
        },
    };
    let network = match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::from((u32::from(v4) & mask).to_be_bytes())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::from((u128::from(v6) & mask).to_be_bytes())
        }
    };
    Ok(IpBlock {
        network,
        prefix_len,
    })
}

fn port(value: &PortText) -> Result<u16, String> {
    let number = match value {
        PortText::Number(n) => *n,
        PortText::Text(text) => text
            .parse::<i64>()
            .map_err(|_| format!("{text:?} is not a port number (1 to 65535)"))?,
    };
    match u16::try_from(number) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("port {number} is out of range (1 to 65535)")),
    }
}

/// Checks every entry of an optional list with `check`; errors name `field[i]`.
fn list<T, U>(
    e: &mut Errors<'_>,
    field: &str,
    values: &Option<Vec<T>>,
    check: impl Fn(&T) -> Result<U, String>,
) -> Vec<U> {
    let mut out = Vec::new();
    for (i, v) in values.iter().flatten().enumerate() {
        match check(v) {
            Ok(u) => out.push(u),
            Err(why) => e.push(&format!("{field}[{i}]"), why),
        }
    }
    out
}

fn source(e: &mut Errors<'_>, at: &str, s: &SourceSpec) -> SourceMatch {
    const JWT: &str = "JWT request authentication is not implemented";
    const XFF: &str = "remote addresses from X-Forwarded-For are not implemented";
    reject_unsupported(
        e,
        &format!("{at}.requestPrincipals"),
        &s.request_principals,
        JWT,
    );
    reject_unsupported(
        e,
        &format!("{at}.notRequestPrincipals"),
        &s.not_request_principals,
        JWT,
    );
    reject_unsupported(e, &format!("{at}.remoteIpBlocks"), &s.remote_ip_blocks, XFF);
    reject_unsupported(
        e,
        &format!("{at}.notRemoteIpBlocks"),
        &s.not_remote_ip_blocks,
        XFF,
    );
    let accounts = |e: &mut Errors<'_>, field: &str, values: &Option<Vec<String>>| {
        let field = format!("{at}.{field}");
        if values
            .as_ref()
            .is_some_and(|v| v.len() > MAX_SERVICE_ACCOUNTS)
        {
            e.push(
                &field,
                format!("may not hold more than {MAX_SERVICE_ACCOUNTS} values (as in Istio)"),
            );
        }
        list(e, &field, values, |v| service_account(v))
    };
    let service_accounts = accounts(e, "serviceAccounts", &s.service_accounts);
    let not_service_accounts = accounts(e, "notServiceAccounts", &s.not_service_accounts);
    let m = SourceMatch {
        principals: list(e, &format!("{at}.principals"), &s.principals, |v| {
            principal(v)
        }),
        not_principals: list(e, &format!("{at}.notPrincipals"), &s.not_principals, |v| {
            principal(v)
        }),
        namespaces: list(e, &format!("{at}.namespaces"), &s.namespaces, |v| {
            namespace(v)
        }),
        not_namespaces: list(e, &format!("{at}.notNamespaces"), &s.not_namespaces, |v| {
            namespace(v)
        }),
        service_accounts,
        not_service_accounts,
        ip_blocks: list(e, &format!("{at}.ipBlocks"), &s.ip_blocks, |v| ip_block(v)),
        not_ip_blocks: list(e, &format!("{at}.notIpBlocks"), &s.not_ip_blocks, |v| {
            ip_block(v)
        }),
    };
    if m == SourceMatch::default() && e.count == 0 {
        e.push(
            at,
            "must set at least one field (an empty source would match every caller; leave \
             `from` out for that)",
        );
    }
    m
}

fn operation(e: &mut Errors<'_>, at: &str, o: &OperationSpec) -> OperationMatch {
    let m = OperationMatch {
        hosts: list(e, &format!("{at}.hosts"), &o.hosts, |v| host(v)),
        not_hosts: list(e, &format!("{at}.notHosts"), &o.not_hosts, |v| host(v)),
        ports: list(e, &format!("{at}.ports"), &o.ports, port),
        not_ports: list(e, &format!("{at}.notPorts"), &o.not_ports, port),
        methods: list(e, &format!("{at}.methods"), &o.methods, |v| method(v)),
        not_methods: list(e, &format!("{at}.notMethods"), &o.not_methods, |v| {
            method(v)
        }),
        paths: list(e, &format!("{at}.paths"), &o.paths, |v| path(v)),
        not_paths: list(e, &format!("{at}.notPaths"), &o.not_paths, |v| path(v)),
    };
    if m == OperationMatch::default() && e.count == 0 {
        e.push(
            at,
            "must set at least one field (an empty operation would match every request; leave \
             `to` out for that)",
        );
    }
    m
}

/// The key of a `when` condition.
fn condition_key(key: &str) -> Result<ConditionKey, String> {
    const SUPPORTED: &str = "supported keys: request.headers[<name>], source.ip, \
                             source.namespace, source.principal, source.serviceAccount, \
                             destination.ip, destination.port, connection.sni";
    Ok(match key {
        "source.ip" => ConditionKey::SourceIp,
        "source.namespace" => ConditionKey::SourceNamespace,
        "source.principal" => ConditionKey::SourcePrincipal,
        "source.serviceAccount" => ConditionKey::SourceServiceAccount,
        "destination.ip" => ConditionKey::DestinationIp,
        "destination.port" => ConditionKey::DestinationPort,
        "connection.sni" => ConditionKey::ConnectionSni,
        "remote.ip" => {
            return Err(format!(
                "{key:?} is not supported by Palisade (remote addresses from X-Forwarded-For \
                 are not implemented); {REJECTED}"
            ));
        }
        _ if key.starts_with("request.auth.") => {
            return Err(format!(
                "{key:?} is not supported by Palisade (JWT request authentication is not \
                 implemented); {REJECTED}"
            ));
        }
        _ if key.starts_with("experimental.") => {
            return Err(format!(
                "{key:?} is not supported by Palisade (experimental Envoy attributes); {REJECTED}"
            ));
        }
        _ => {
            let name = key
                .strip_prefix("request.headers[")
                .and_then(|rest| rest.strip_suffix(']'))
                .ok_or_else(|| format!("unknown key {key:?} ({SUPPORTED}); {REJECTED}"))?;
            if name.is_empty() || !name.chars().all(is_tchar) {
                return Err(format!(
                    "{key:?}: {name:?} is not a valid header name (letters, digits and \
                     !#$%&'*+-.^_`|~; pseudo-headers such as :authority are not supported)"
                ));
            }
            ConditionKey::RequestHeader(name.to_ascii_lowercase())
        }
    })
}

/// A value of a condition on `key`.
fn condition_value(key: &ConditionKey, value: &str) -> Result<StringMatch, String> {
    match key {
        ConditionKey::SourceIp | ConditionKey::DestinationIp => {
            ip_block(value).map(|b| StringMatch::Exact(b.to_string()))
        }
        ConditionKey::DestinationPort => {
            port(&PortText::Text(value.to_owned())).map(|p| StringMatch::Exact(p.to_string()))
        }
        ConditionKey::SourcePrincipal => principal(value),
        ConditionKey::SourceServiceAccount => {
            service_account(value).map(|a| StringMatch::Exact(a.to_string()))
        }
        ConditionKey::SourceNamespace => namespace(value),
        ConditionKey::ConnectionSni => sni(value),
        ConditionKey::RequestHeader(_) => match_form(value),
    }
}

fn condition(e: &mut Errors<'_>, at: &str, c: &ConditionSpec) -> Option<Condition> {
    let Some(text) = c.key.as_deref().filter(|k| !k.is_empty()) else {
        e.push(&format!("{at}.key"), "is required");
        return None;
    };
    let key = match condition_key(text) {
        Ok(key) => key,
        Err(why) => {
            e.push(&format!("{at}.key"), why);
            return None;
        }
    };
    let present = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|v| !v.is_empty());
    if !present(&c.values) && !present(&c.not_values) {
        e.push(
            at,
            format!("at least one of values or notValues must be set and non-empty for key {text}"),
        );
        return None;
    }
    Some(Condition {
        values: list(e, &format!("{at}.values"), &c.values, |v| {
            condition_value(&key, v)
        }),
        not_values: list(e, &format!("{at}.notValues"), &c.not_values, |v| {
            condition_value(&key, v)
        }),
        key,
    })
}

fn rule(e: &mut Errors<'_>, i: usize, r: &RuleSpec) -> Rule {
    let at = format!("spec.rules[{i}]");
    let mut out = Rule::default();
    match &r.from {
        Some(from) if from.is_empty() => e.push(
            &format!("{at}.from"),
            "must not be empty (leave it out to match any caller)",
        ),
        from => {
            for (j, f) in from.iter().flatten().enumerate() {
                let at = format!("{at}.from[{j}].source");
                match &f.source {
                    None => e.push(&at, "is required"),
                    Some(s) => out.from.push(e.scoped(|e| source(e, &at, s))),
                }
            }
        }
    }
    match &r.to {
        Some(to) if to.is_empty() => e.push(
            &format!("{at}.to"),
            "must not be empty (leave it out to match any operation)",
        ),
        to => {
            for (j, t) in to.iter().flatten().enumerate() {
                let at = format!("{at}.to[{j}].operation");
                match &t.operation {
                    None => e.push(&at, "is required"),
                    Some(o) => out.to.push(e.scoped(|e| operation(e, &at, o))),
                }
            }
        }
    }
    for (j, c) in r.when.iter().flatten().enumerate() {
        if let Some(c) = condition(e, &format!("{at}.when[{j}]"), c) {
            out.when.push(c);
        }
    }
    out
}

/// Checks a parsed AuthorizationPolicy document; `None` if it has any error.
pub(crate) fn authorization_policy(
    ctx: &DocCtx,
    doc: AuthorizationPolicyDoc,
    errors: &mut Vec<ConfigError>,
) -> Option<AuthorizationPolicy> {
    let (namespace, name) = check_metadata(ctx, &doc.metadata, errors)?;
    let spec = doc.spec.unwrap_or_default();
    let mut e = Errors {
        ctx,
        errors,
        count: 0,
    };
    let dry_run = dry_run(&mut e, &doc.metadata.annotations);
    reject_unsupported(
        &mut e,
        "spec.targetRef",
        &spec.target_ref,
        "policies attach to workloads through spec.selector only",
    );
    reject_unsupported(
        &mut e,
        "spec.targetRefs",
        &spec.target_refs,
        "policies attach to workloads through spec.selector only",
    );
    reject_unsupported(
        &mut e,
        "spec.provider",
        &spec.provider,
        "there is no external authorizer for action CUSTOM",
    );
    let action = match spec.action.as_deref() {
        None | Some("ALLOW") => Action::Allow,
        Some("DENY") => Action::Deny,
        Some("AUDIT") => Action::Audit,
        Some("CUSTOM") => {
            e.push(
                "spec.action",
                format!(
                    "CUSTOM is not supported by Palisade (there is no external authorizer); \
                     {REJECTED}"
                ),
            );
            Action::Allow
        }
        Some(other) => {
            e.push(
                "spec.action",
                format!("{other:?} is not valid (expected ALLOW, DENY or AUDIT)"),
            );
            Action::Allow
        }
    };
    let selector = selector(&mut e, spec.selector);
    if action == Action::Deny && spec.rules.as_ref().is_none_or(Vec::is_empty) {
        // As Istio does: a DENY policy without rules matches nothing, which is never what
        // its author meant.
        e.push(
            "spec.rules",
            "a DENY policy without rules never matches; add an empty rule `{}` to deny every \
             request",
        );
    }
    let rules = spec
        .rules
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| rule(&mut e, i, r))
        .collect();
    (e.count == 0).then(|| AuthorizationPolicy {
        namespace,
        name,
        selector,
        action,
        rules,
        dry_run,
        source: ctx.source(),
    })
}

/// The annotations that put a policy in dry-run mode: Istio's, and Palisade's own.
const DRY_RUN_ANNOTATIONS: [&str; 2] = ["istio.io/dry-run", "palisade.dev/dry-run"];

/// Whether the policy is a dry run. Each annotation must read `"true"` or `"false"`; when
/// both are set they must agree.
fn dry_run(e: &mut Errors<'_>, annotations: &std::collections::BTreeMap<String, String>) -> bool {
    let mut found: Option<(&str, bool)> = None;
    for key in DRY_RUN_ANNOTATIONS {
        let Some(value) = annotations.get(key) else {
            continue;
        };
        let field = format!("metadata.annotations[{key}]");
        let on = match value.as_str() {
            "true" => true,
            "false" => false,
            other => {
                e.push(
                    &field,
                    format!("{other:?} is not valid (expected \"true\" or \"false\")"),
                );
                continue;
            }
        };
        match found {
            Some((first, was)) if was != on => e.push(
                &field,
                format!("says {on} but metadata.annotations[{first}] says {was}"),
            ),
            _ => found = Some((key, on)),
        }
    }
    found.is_some_and(|(_, on)| on)
}

/// An EgressPolicy host: a DNS name, `*.suffix` or an IP literal.
fn egress_host(value: &str) -> Result<EgressHost, String> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(EgressHost::Ip(ip));
    }
    let lower = value.to_ascii_lowercase();
    if value.contains('/') {
        return Err(format!(
            "{value:?}: CIDRs are not supported; list IP addresses or host names"
        ));
    }
    if lower == "*" {
        return Err(
            "\"*\" would allow every host; set MeshConfig spec.outboundTrafficPolicy.mode to \
             ALLOW_ANY instead"
                .to_owned(),
        );
    }
    let (wildcard, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    dns_name(name).map_err(|why| {
        format!("{value:?} is not a host name, *.suffix wildcard or IP address: {why}")
    })?;
    Ok(if wildcard {
        EgressHost::Wildcard(format!(".{name}"))
    } else {
        EgressHost::Name(name.to_owned())
    })
}

/// A DNS name: dot-separated labels of letters, digits and '-', at most 253 characters.
fn dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("a name has 1 to 253 characters".to_owned());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "label {label:?} is not letters, digits and inner '-' (1 to 63 characters); \
                 '*' is only allowed as a whole first label"
            ));
        }
    }
    Ok(())
}

/// Checks a parsed EgressPolicy document; `None` if it has any error.
pub(crate) fn egress_policy(
    ctx: &DocCtx,
    doc: EgressPolicyDoc,
    errors: &mut Vec<ConfigError>,
) -> Option<EgressPolicy> {
    let (namespace, name) = check_metadata(ctx, &doc.metadata, errors)?;
    let spec = doc.spec;
    let mut e = Errors {
        ctx,
        errors,
        count: 0,
    };
    let selector = selector(&mut e, spec.selector);
    if spec.hosts.as_ref().is_none_or(Vec::is_empty)
        && spec.ip_blocks.as_ref().is_none_or(Vec::is_empty)
    {
        e.push(
            "spec.hosts",
            "spec.hosts or spec.ipBlocks is required and must not be empty (the hosts or \
             addresses the selected workloads may reach)",
        );
    }
    let hosts = list(&mut e, "spec.hosts", &spec.hosts, |v| egress_host(v));
    let ip_blocks = list(&mut e, "spec.ipBlocks", &spec.ip_blocks, |v| {
        egress_ip_block(v)
    });
    let ports = list(
        &mut e,
        "spec.ports",
        &spec.ports,
        |p: &PortValue| match u16::try_from(p.0) {
            Ok(n) if n != 0 => Ok(n),
            _ => Err(format!("port {} is out of range (1 to 65535)", p.0)),
        },
    );
    (e.count == 0).then(|| EgressPolicy {
        namespace,
        name,
        selector,
        hosts,
        ip_blocks,
        ports,
        source: ctx.source(),
    })
}

/// An EgressPolicy address block: a CIDR or one address, never every address.
fn egress_ip_block(value: &str) -> Result<IpBlock, String> {
    let block = ip_block(value)?;
    if block.prefix_len == 0 {
        return Err(format!(
            "{value:?} would allow every address; set MeshConfig \
             spec.outboundTrafficPolicy.mode to ALLOW_ANY instead"
        ));
    }
    Ok(block)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn match_forms() {
        assert_eq!(match_form("a"), Ok(StringMatch::Exact("a".into())));
        assert_eq!(match_form("a*"), Ok(StringMatch::Prefix("a".into())));
        assert_eq!(match_form("*a"), Ok(StringMatch::Suffix("a".into())));
        assert_eq!(match_form("*"), Ok(StringMatch::Presence));
        for bad in ["", "a*b", "**", "*a*", "a**", "***"] {
            assert!(match_form(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn principals_are_normalised_and_checked() {
        let want = StringMatch::Exact("cluster.local/ns/shop/sa/frontend".into());
        assert_eq!(
            principal("cluster.local/ns/shop/sa/frontend"),
            Ok(want.clone())
        );
        assert_eq!(
            principal("spiffe://cluster.local/ns/shop/sa/frontend"),
            Ok(want)
        );
        assert_eq!(
            principal("spiffe://cluster.local/ns/shop/*"),
            Ok(StringMatch::Prefix("cluster.local/ns/shop/".into()))
        );
        assert_eq!(
            principal("*/sa/frontend"),
            Ok(StringMatch::Suffix("/sa/frontend".into()))
        );
        assert_eq!(principal("*"), Ok(StringMatch::Presence));
        for bad in [
            "frontend",
            "cluster.local/ns//sa/x",
            "Cluster.Local/ns/a/sa/b",
            "http://cluster.local/ns/a/sa/b",
            "*/sa/front end",
            "",
        ] {
            assert!(principal(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn service_accounts_are_namespace_slash_name() {
        assert_eq!(
            service_account("shop/frontend"),
            Ok(ServiceAccount {
                namespace: "shop".into(),
                name: "frontend".into()
            })
        );
        assert!(service_account("shop/sa.v2").is_ok());
        for bad in [
            "frontend",
            "shop/*",
            "*/frontend",
            "shop/",
            "/frontend",
            "Shop/a",
            "a/b/c",
            "",
        ] {
            assert!(service_account(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ip_blocks_are_canonical() {
        assert_eq!(ip_block("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(ip_block("10.1.2.3").unwrap().to_string(), "10.1.2.3");
        assert_eq!(ip_block("10.1.2.3/32").unwrap().to_string(), "10.1.2.3");
        assert_eq!(ip_block("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(ip_block("FD00::1/8").unwrap().to_string(), "fd00::/8");
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "x",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "::/129",
        ] {
            assert!(ip_block(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_hosts_methods_ports() {
        assert_eq!(path("/api/*"), Ok(StringMatch::Prefix("/api/".into())));
        assert_eq!(path("*.html"), Ok(StringMatch::Suffix(".html".into())));
        assert_eq!(
            path("/a/{*}/b"),
            Ok(StringMatch::Template("/a/{*}/b".into()))
        );
        assert_eq!(path("/a/{**}"), Ok(StringMatch::Template("/a/{**}".into())));
        assert!(path("/a/{**}/b").is_ok());
        assert!(path("/{*}/foo/").is_ok());
        // Istio's own list of malformed templates.
        for bad in [
            "/foo/{**}buzz/bar",
            "/{*}/foo/{}/bar",
            "/foo/{*}/bar/*",
            "/foo/{*}/bar/**/buzz",
            "/foo/{buzz}/bar",
            "/{buzz}",
            "/foo/{buzz}/bar/{**}",
            "/foo/{buzz=*}/bar/{**}",
            "/{*}/foo/{buzz=**}/bar",
            "/{*}/foo/{**}bar",
            "/{*}/foo/{*}.txt",
            "/{*}/foo/{temp",
            "/{*}/foo/temp}/bar",
            "/{*}/foo/temp}/*",
            "/{**}/foo/temp/{*}/bar",
            "/{**}/{**}",
            "/{**}/foo/temp/{**}/bar",
            "/{*}/foo/?abc",
            "{*}/foo",
            "/{*}//foo",
        ] {
            assert!(path(bad).is_err(), "{bad:?}");
        }
        assert!(path("admin").is_err());
        assert!(path("/a?b=c").is_err());
        assert_eq!(
            host("API.Example.com"),
            Ok(StringMatch::Exact("api.example.com".into()))
        );
        assert!(host("a b").is_err());
        assert_eq!(method("GET"), Ok(StringMatch::Exact("GET".into())));
        assert!(method("GE T").is_err());
        assert_eq!(port(&PortText::Text("8080".into())), Ok(8080));
        assert_eq!(port(&PortText::Number(8080)), Ok(8080));
        assert!(port(&PortText::Text("0".into())).is_err());
        assert!(port(&PortText::Text("http".into())).is_err());
        assert!(port(&PortText::Number(65536)).is_err());
    }

    #[test]
    fn condition_keys() {
        assert_eq!(
            condition_key("request.headers[X-Tenant]"),
            Ok(ConditionKey::RequestHeader("x-tenant".into()))
        );
        assert_eq!(condition_key("source.ip"), Ok(ConditionKey::SourceIp));
        assert_eq!(
            condition_key("source.serviceAccount"),
            Ok(ConditionKey::SourceServiceAccount)
        );
        assert_eq!(
            condition_value(&ConditionKey::SourceServiceAccount, "shop/web"),
            Ok(StringMatch::Exact("shop/web".into()))
        );
        assert!(condition_value(&ConditionKey::SourceServiceAccount, "web").is_err());
        assert!(condition_value(&ConditionKey::SourceServiceAccount, "shop/*").is_err());
        for bad in [
            "request.headers[]",
            "request.headers[:authority]",
            "request.headers[a b]",
            "request.auth.claims[iss]",
            "remote.ip",
            "experimental.envoy.filters.x",
            "source.user",
            "request.headers",
        ] {
            assert!(condition_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn egress_hosts() {
        assert_eq!(
            egress_host("API.Stripe.com"),
            Ok(EgressHost::Name("api.stripe.com".into()))
        );
        assert_eq!(
            egress_host("*.googleapis.com"),
            Ok(EgressHost::Wildcard(".googleapis.com".into()))
        );
        assert_eq!(
            egress_host("192.0.2.10"),
            Ok(EgressHost::Ip("192.0.2.10".parse().unwrap()))
        );
        for bad in [
            "*",
            "a.*.com",
            "*.",
            "-a.com",
            "a..com",
            "10.0.0.0/8",
            "a_b.com",
            "",
        ] {
            assert!(egress_host(bad).is_err(), "{bad:?}");
        }
    }
}
