//! Proto → compiled policies. Every value is parsed here, once per snapshot; anything
//! unusable rejects the whole snapshot with the policy, rule and field it came from (STYLE:
//! never a silent drop, never half a policy).

use std::sync::Arc;

use http::HeaderName;
use palisade_proto::v1::{self, string_match::Kind};

use super::matcher::{HostMatcher, InvalidMatch, IpNet, StringMatcher, parse_port};
use crate::model::SnapshotError;

/// Why a policy is unusable; the message of the NACK names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPolicy {
    /// A match value is unusable.
    #[error(transparent)]
    Match(#[from] InvalidMatch),
    /// The action is unspecified or unknown.
    #[error("action {0} is not ALLOW, DENY or AUDIT")]
    Action(i32),
    /// The policy has no namespace or name.
    #[error("is empty")]
    EmptyName,
    /// A port outside 1-65535.
    #[error("{0} is not a port (1-65535)")]
    Port(u32),
    /// An unknown `when` key.
    #[error(
        "unknown key {0:?}; expected request.headers[<name>], source.ip, source.namespace, \
         source.principal, destination.ip, destination.port or connection.sni"
    )]
    ConditionKey(String),
    /// `request.headers[...]` with an invalid header name.
    #[error("{0:?} is not a valid header name")]
    HeaderName(String),
    /// An empty principal where a service account was expected.
    #[error("is empty (expected a principal, <trust-domain>/ns/<namespace>/sa/<name>)")]
    EmptyPrincipal,
    /// A condition with neither `values` nor `not_values`.
    #[error("a condition needs values or not_values")]
    EmptyCondition,
}

/// The action of a compiled policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Action {
    /// Requests must match one ALLOW policy (when any exists).
    Allow,
    /// A match denies.
    Deny,
    /// A match is recorded only.
    Audit,
}

/// One compiled policy.
#[derive(Debug)]
pub(crate) struct Policy {
    /// `namespace/name`, shared with every decision that names it.
    pub(crate) name: Arc<str>,
    pub(crate) action: Action,
    pub(crate) rules: Box<[Rule]>,
    /// Evaluated and recorded, never enforced (`istio.io/dry-run`).
    pub(crate) dry_run: bool,
}

/// One rule: `from` AND `to` AND `when`; an empty part matches anything.
#[derive(Debug, Default)]
pub(crate) struct Rule {
    pub(crate) from: Box<[Source]>,
    pub(crate) to: Box<[Operation]>,
    pub(crate) when: Box<[Condition]>,
    /// Uses an attribute that exists only for HTTP (hosts, methods, paths, headers).
    pub(crate) http_only: bool,
    /// Has a `source.principal` or `source.namespace` condition.
    pub(crate) identity_condition: bool,
}

/// One `from` entry; every present field must match.
#[derive(Debug, Default)]
pub(crate) struct Source {
    pub(crate) principals: Box<[StringMatcher]>,
    pub(crate) not_principals: Box<[StringMatcher]>,
    pub(crate) namespaces: Box<[StringMatcher]>,
    pub(crate) not_namespaces: Box<[StringMatcher]>,
    /// `serviceAccounts` as the exact principals they stand for.
    pub(crate) service_accounts: Box<[StringMatcher]>,
    pub(crate) not_service_accounts: Box<[StringMatcher]>,
    pub(crate) ip_blocks: Box<[IpNet]>,
    pub(crate) not_ip_blocks: Box<[IpNet]>,
}

/// One `to` entry; every present field must match.
#[derive(Debug, Default)]
pub(crate) struct Operation {
    pub(crate) hosts: Box<[HostMatcher]>,
    pub(crate) not_hosts: Box<[HostMatcher]>,
    pub(crate) ports: Box<[u16]>,
    pub(crate) not_ports: Box<[u16]>,
    pub(crate) methods: Box<[StringMatcher]>,
    pub(crate) not_methods: Box<[StringMatcher]>,
    pub(crate) paths: Box<[StringMatcher]>,
    pub(crate) not_paths: Box<[StringMatcher]>,
}

impl Operation {
    fn http_only(&self) -> bool {
        !(self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty())
    }

    pub(crate) fn has_path_fields(&self) -> bool {
        !(self.paths.is_empty() && self.not_paths.is_empty())
    }
}

/// Which string attribute a condition reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrAttr {
    SourcePrincipal,
    SourceNamespace,
    ConnectionSni,
}

/// Which address a condition reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IpAttr {
    Source,
    Destination,
}

/// A value of an address or port condition: a specific one, or presence (`*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pattern<T> {
    Any,
    One(T),
}

/// One `when` condition; `values` match if any does, `not_values` if none does.
#[derive(Debug)]
pub(crate) enum Condition {
    Header {
        name: HeaderName,
        values: Box<[StringMatcher]>,
        not_values: Box<[StringMatcher]>,
    },
    Str {
        attr: StrAttr,
        values: Box<[StringMatcher]>,
        not_values: Box<[StringMatcher]>,
    },
    Ip {
        attr: IpAttr,
        values: Box<[Pattern<IpNet>]>,
        not_values: Box<[Pattern<IpNet>]>,
    },
    Port {
        values: Box<[Pattern<u16>]>,
        not_values: Box<[Pattern<u16>]>,
    },
}

/// Compiles one proto policy; errors carry the field path within the policy.
pub(crate) fn policy(p: &v1::AuthorizationPolicy) -> Result<Policy, (String, InvalidPolicy)> {
    if p.namespace.is_empty() {
        return Err(("namespace".into(), InvalidPolicy::EmptyName));
    }
    if p.name.is_empty() {
        return Err(("name".into(), InvalidPolicy::EmptyName));
    }
    let action = match v1::Action::try_from(p.action) {
        Ok(v1::Action::Allow) => Action::Allow,
        Ok(v1::Action::Deny) => Action::Deny,
        Ok(v1::Action::Audit) => Action::Audit,
        Ok(v1::Action::Unspecified) | Err(_) => {
            return Err(("action".into(), InvalidPolicy::Action(p.action)));
        }
    };
    let rules = p
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(r).map_err(|(field, e)| (format!("rules[{i}].{field}"), e)))
        .collect::<Result<_, _>>()?;
    Ok(Policy {
        name: format!("{}/{}", p.namespace, p.name).into(),
        action,
        rules,
        dry_run: p.dry_run,
    })
}

type FieldResult<T> = Result<T, (String, InvalidPolicy)>;

fn list<T, U>(
    items: &[T],
    field: &str,
    f: impl Fn(&T) -> Result<U, InvalidPolicy>,
) -> FieldResult<Box<[U]>> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| f(item).map_err(|e| (format!("{field}[{i}]"), e)))
        .collect()
}

fn strings(items: &[v1::StringMatch], field: &str) -> FieldResult<Box<[StringMatcher]>> {
    list(items, field, |m| Ok(StringMatcher::compile(m, false)?))
}

/// Principals written out in full (`serviceAccounts`), compared exactly.
fn principals(items: &[String], field: &str) -> FieldResult<Box<[StringMatcher]>> {
    list(items, field, |p| {
        if p.is_empty() {
            Err(InvalidPolicy::EmptyPrincipal)
        } else {
            Ok(StringMatcher::Exact(p.as_bytes().into()))
        }
    })
}

fn ports(items: &[u32], field: &str) -> FieldResult<Box<[u16]>> {
    list(items, field, |p| {
        u16::try_from(*p)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(InvalidPolicy::Port(*p))
    })
}

fn rule(r: &v1::Rule) -> FieldResult<Rule> {
    let from: Box<[Source]> = r
        .from
        .iter()
        .enumerate()
        .map(|(i, s)| source(s).map_err(|(f, e)| (format!("from[{i}].{f}"), e)))
        .collect::<Result<_, _>>()?;
    let to: Box<[Operation]> =
        r.to.iter()
            .enumerate()
            .map(|(i, o)| operation(o).map_err(|(f, e)| (format!("to[{i}].{f}"), e)))
            .collect::<Result<_, _>>()?;
    let when: Box<[Condition]> = r
        .when
        .iter()
        .enumerate()
        .map(|(i, c)| condition(c).map_err(|(f, e)| (format!("when[{i}].{f}"), e)))
        .collect::<Result<_, _>>()?;
    let http_only = to.iter().any(Operation::http_only)
        || when.iter().any(|c| matches!(c, Condition::Header { .. }));
    let identity_condition = when.iter().any(|c| {
        matches!(
            c,
            Condition::Str {
                attr: StrAttr::SourcePrincipal | StrAttr::SourceNamespace,
                ..
            }
        )
    });
    Ok(Rule {
        from,
        to,
        when,
        http_only,
        identity_condition,
    })
}

fn source(s: &v1::Source) -> FieldResult<Source> {
    let blocks = |items: &[String], field: &str| list(items, field, |b| Ok(IpNet::parse(b)?));
    Ok(Source {
        principals: strings(&s.principals, "principals")?,
        not_principals: strings(&s.not_principals, "not_principals")?,
        namespaces: strings(&s.namespaces, "namespaces")?,
        not_namespaces: strings(&s.not_namespaces, "not_namespaces")?,
        service_accounts: principals(&s.service_accounts, "service_accounts")?,
        not_service_accounts: principals(&s.not_service_accounts, "not_service_accounts")?,
        ip_blocks: blocks(&s.ip_blocks, "ip_blocks")?,
        not_ip_blocks: blocks(&s.not_ip_blocks, "not_ip_blocks")?,
    })
}

fn operation(o: &v1::Operation) -> FieldResult<Operation> {
    let hosts = |items: &[v1::StringMatch], field: &str| {
        list(items, field, |m| Ok(HostMatcher::compile(m)?))
    };
    Ok(Operation {
        hosts: hosts(&o.hosts, "hosts")?,
        not_hosts: hosts(&o.not_hosts, "not_hosts")?,
        ports: ports(&o.ports, "ports")?,
        not_ports: ports(&o.not_ports, "not_ports")?,
        methods: strings(&o.methods, "methods")?,
        not_methods: strings(&o.not_methods, "not_methods")?,
        paths: list(&o.paths, "paths", |m| Ok(StringMatcher::compile_path(m)?))?,
        not_paths: list(&o.not_paths, "not_paths", |m| {
            Ok(StringMatcher::compile_path(m)?)
        })?,
    })
}

/// An exact value parsed by `parse`, or presence; prefix and suffix make no sense here.
fn exact_or_any<T>(
    attribute: &'static str,
    parse: impl Fn(&str) -> Result<T, InvalidMatch>,
) -> impl Fn(&v1::StringMatch) -> Result<Pattern<T>, InvalidPolicy> {
    move |m| match &m.kind {
        Some(Kind::Exact(v)) => Ok(Pattern::One(parse(v)?)),
        Some(Kind::Presence(true)) => Ok(Pattern::Any),
        Some(Kind::Presence(false)) => Err(InvalidMatch::PresenceFalse.into()),
        Some(Kind::Prefix(_)) | Some(Kind::Suffix(_)) => {
            Err(InvalidMatch::ExactOnly { attribute }.into())
        }
        Some(Kind::PathTemplate(_)) => Err(InvalidMatch::TemplateOutsidePaths.into()),
        None => Err(InvalidMatch::NoKind.into()),
    }
}

fn condition(c: &v1::Condition) -> FieldResult<Condition> {
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(("values".into(), InvalidPolicy::EmptyCondition));
    }
    let str_attr = |attr| -> FieldResult<Condition> {
        Ok(Condition::Str {
            attr,
            values: strings(&c.values, "values")?,
            not_values: strings(&c.not_values, "not_values")?,
        })
    };
    let ip_attr = |attr, name| -> FieldResult<Condition> {
        let parse = exact_or_any(name, IpNet::parse);
        Ok(Condition::Ip {
            attr,
            values: list(&c.values, "values", &parse)?,
            not_values: list(&c.not_values, "not_values", &parse)?,
        })
    };
    match c.key.as_str() {
        "source.principal" => str_attr(StrAttr::SourcePrincipal),
        "source.namespace" => str_attr(StrAttr::SourceNamespace),
        "connection.sni" => str_attr(StrAttr::ConnectionSni),
        "source.ip" => ip_attr(IpAttr::Source, "source.ip"),
        "destination.ip" => ip_attr(IpAttr::Destination, "destination.ip"),
        "destination.port" => {
            let parse = exact_or_any("destination.port", parse_port);
            Ok(Condition::Port {
                values: list(&c.values, "values", &parse)?,
                not_values: list(&c.not_values, "not_values", &parse)?,
            })
        }
        key => {
            let name = key
                .strip_prefix("request.headers[")
                .and_then(|k| k.strip_suffix(']'))
                .ok_or_else(|| ("key".to_owned(), InvalidPolicy::ConditionKey(key.into())))?;
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ("key".to_owned(), InvalidPolicy::HeaderName(name.into())))?;
            Ok(Condition::Header {
                name,
                values: strings(&c.values, "values")?,
                not_values: strings(&c.not_values, "not_values")?,
            })
        }
    }
}

/// Wraps a policy error into the snapshot error the NACK carries.
pub(crate) fn snapshot_error(
    p: &v1::AuthorizationPolicy,
    index: usize,
    field: String,
    e: InvalidPolicy,
) -> SnapshotError {
    SnapshotError {
        resource: format!(
            "AuthorizationPolicy {}/{} (policies[{index}])",
            p.namespace, p.name
        ),
        field,
        message: e.to_string(),
    }
}
