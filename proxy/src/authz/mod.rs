//! Authorization: the compiled AuthorizationPolicies of one workload and the per-request
//! decision, in Istio's semantics (CONTRACT, "AuthorizationPolicy"). Pure: no I/O, no clock.
//!
//! Dry-run policies (`istio.io/dry-run: "true"` or `palisade.dev/dry-run: "true"`) are
//! compiled and evaluated like the others but never enforced: [`Audits::dry_run`] says what
//! the decision would have been with them enforced too, for metrics and logs.
//!
//! Order of evaluation: any matching DENY policy denies (the first in policy order names
//! the decision); else, if any ALLOW policy exists, the request must match one; else the
//! mesh default applies. AUDIT policies never change the decision; every one that matches
//! is listed. A policy matches if any rule matches (no rules: nothing); a rule matches if
//! its `from`, `to` and `when` parts do (an absent part matches anything).
//!
//! Where an attribute is not known, the answer depends on the action, so that the unknown
//! never lets a request in:
//! - **No verified identity** (plaintext caller): in an ALLOW rule, a `from` entry naming
//!   principals or namespaces, or a `source.principal`/`source.namespace` condition, never
//!   matches, negated or not (CONTRACT: Palisade fails closed where Istio fails open); the
//!   same holds for `serviceAccounts`/`notServiceAccounts`;
//!   `ipBlocks`/`notIpBlocks` match the peer address of every caller. In DENY and AUDIT rules the
//!   attribute is simply absent, as in Istio: positive fields do not match it, negated ones
//!   do (`notPrincipals: ["*"]` denies plaintext).
//! - **Opaque TCP** (no HTTP attributes): an ALLOW rule with any HTTP-only field (hosts,
//!   methods, paths, their negations, `request.headers` conditions) does not match; in DENY
//!   and AUDIT rules those fields are ignored, so the rule matches on the rest (Istio).
//! - **A path that cannot be normalised** ([`PathError`]): `paths`/`not_paths` never match
//!   in an ALLOW rule and always match in DENY and AUDIT rules.
//! - **A header sent several times**: `request.headers[...]` conditions see the values
//!   joined with `,` (Istio); each single value is also tried where that can only refuse
//!   more (see `header_condition`).
//!
//! Hot path: matchers are compiled when the snapshot is converted; [`Authorizer::decide`]
//! allocates only to normalise a path that needs it, and for the rare AUDIT match
//! ([`Authorizer::evaluate`] adds one copy of the deciding policy's name).

mod compile;
mod matcher;
mod path;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use palisade_certs::SpiffeId;
use palisade_proto::v1;

pub use compile::{Action, InvalidPolicy};
pub use matcher::InvalidMatch;
pub use path::{
    PathError, PathNormalization, PathOptions, normalize_path, normalize_request, normalized,
};

use compile::{Condition, IpAttr, Operation, Pattern, Policy, Rule, Source, StrAttr};
use matcher::{IpNet, StringMatcher, canonical_authority};

use crate::model::SnapshotError;

/// The compiled authorization policies of one workload.
#[derive(Debug, Default)]
pub struct Authorizer {
    deny: Box<[Policy]>,
    allow: Box<[Policy]>,
    audit: Box<[Policy]>,
    /// Dry-run policies (`istio.io/dry-run: "true"`), by action: evaluated and recorded in
    /// [`Audits::dry_run`], never enforced.
    dry: DryRunPolicies,
    /// Names of the ALLOW policies, for [`Decision::explain`] (shared, never copied).
    allow_names: Arc<[Arc<str>]>,
    /// Whether any rule looks at paths, so clean requests skip normalisation entirely.
    uses_paths: bool,
}

/// The dry-run policies of a workload, by action.
#[derive(Debug, Default)]
struct DryRunPolicies {
    deny: Box<[Policy]>,
    allow: Box<[Policy]>,
    audit: Box<[Policy]>,
}

impl DryRunPolicies {
    fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty() && self.audit.is_empty()
    }
}

impl TryFrom<&v1::AuthorizationSnapshot> for Authorizer {
    type Error = SnapshotError;
    fn try_from(snapshot: &v1::AuthorizationSnapshot) -> Result<Self, SnapshotError> {
        let (mut deny, mut allow, mut audit) = (Vec::new(), Vec::new(), Vec::new());
        let (mut dry_deny, mut dry_allow, mut dry_audit) = (Vec::new(), Vec::new(), Vec::new());
        for (i, p) in snapshot.policies.iter().enumerate() {
            let compiled =
                compile::policy(p).map_err(|(field, e)| compile::snapshot_error(p, i, field, e))?;
            match (compiled.action, compiled.dry_run) {
                (Action::Deny, false) => deny.push(compiled),
                (Action::Allow, false) => allow.push(compiled),
                (Action::Audit, false) => audit.push(compiled),
                (Action::Deny, true) => dry_deny.push(compiled),
                (Action::Allow, true) => dry_allow.push(compiled),
                (Action::Audit, true) => dry_audit.push(compiled),
            }
        }
        let uses_paths = [&deny, &allow, &audit, &dry_deny, &dry_allow, &dry_audit]
            .iter()
            .any(|ps| {
                ps.iter()
                    .flat_map(|p| p.rules.iter())
                    .flat_map(|r| r.to.iter())
                    .any(Operation::has_path_fields)
            });
        Ok(Self {
            allow_names: allow.iter().map(|p| p.name.clone()).collect(),
            deny: deny.into(),
            allow: allow.into(),
            audit: audit.into(),
            dry: DryRunPolicies {
                deny: dry_deny.into(),
                allow: dry_allow.into(),
                audit: dry_audit.into(),
            },
            uses_paths,
        })
    }
}

/// What is known about one request (HTTP) or connection (opaque TCP).
#[derive(Debug, Clone, Copy)]
pub struct RequestAttrs<'a> {
    /// The caller's verified SPIFFE ID; `None` for a plaintext caller.
    pub source: Option<&'a SpiffeId>,
    /// The caller's address.
    pub source_ip: Option<IpAddr>,
    /// The address the caller connected to.
    pub destination_ip: Option<IpAddr>,
    /// The destination (app) port.
    pub destination_port: u16,
    /// The TLS server name the caller sent.
    pub sni: Option<&'a str>,
    /// HTTP attributes; `None` for an opaque TCP connection.
    pub http: Option<HttpAttrs<'a>>,
}

/// The HTTP attributes of a request.
#[derive(Debug, Clone, Copy)]
pub struct HttpAttrs<'a> {
    /// Method, e.g. `GET` (gRPC: `POST`).
    pub method: &'a str,
    /// The authority the app receives (`Host` / `:authority`), port kept if present;
    /// `hosts` rules compare it case-insensitively, without a trailing dot on the host.
    pub host: &'a str,
    /// The raw path, which may carry a query; normalised before matching.
    pub path: &'a str,
    /// Request headers.
    pub headers: &'a http::HeaderMap,
}

/// The policy and rule that matched. `P` is `String` for an owned [`Decision`], `&str` for
/// the borrowed one of [`Authorizer::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched<P = String> {
    /// `namespace/name` of the policy.
    pub policy: P,
    /// Index of the first matching rule.
    pub rule: usize,
}

/// Why a request was allowed or denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecidedBy<P = String> {
    /// A DENY policy matched.
    Deny(Matched<P>),
    /// An ALLOW policy matched (and no DENY did).
    Allow(Matched<P>),
    /// ALLOW policies exist and none matched.
    NoAllowMatched,
    /// No policy decided; MeshConfig `defaultAuthorization: allow`.
    DefaultAllow,
    /// No policy decided; MeshConfig `defaultAuthorization: deny`.
    DefaultDeny,
}

/// The outcome of [`Authorizer::evaluate`] (owned) or [`Authorizer::decide`] (borrowing
/// the policy names from the authorizer, so the data path allocates nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<P = String> {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// What decided.
    pub decided_by: DecidedBy<P>,
    /// What is recorded without changing `allowed`: AUDIT matches and dry-run outcomes.
    pub audits: Audits<P>,
    allow_policies: Arc<[Arc<str>]>,
}

/// The record-only side of a decision: nothing here changes whether a request proceeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audits<P = String> {
    /// Every AUDIT policy that matched, in policy order.
    pub matched: Vec<Matched<P>>,
    /// When dry-run policies select the workload: what they would have decided.
    pub dry_run: Option<DryRun<P>>,
}

impl<P> Audits<P> {
    /// Whether there is nothing to record.
    pub fn is_empty(&self) -> bool {
        self.matched.is_empty() && self.dry_run.is_none()
    }
}

/// What the decision would have been with the dry-run policies enforced alongside the
/// others (Istio's `istio.io/dry-run` annotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRun<P = String> {
    /// Whether the request would have proceeded.
    pub allowed: bool,
    /// What would have decided.
    pub decided_by: DecidedBy<P>,
    /// Every dry-run policy that matched, with its action: DENY, then ALLOW, then AUDIT,
    /// each in policy order.
    pub matched: Vec<(Action, Matched<P>)>,
}

impl<P: AsRef<str>> DryRun<P> {
    /// The policy that would have decided, as [`Decision::policy_label`] names it.
    pub fn policy_label(&self) -> String {
        label(&self.decided_by)
    }

    /// One line, e.g. `DRY-RUN would DENY by shop/new-deny rule 0 (dry-run matches:
    /// shop/new-deny rule 0)`.
    pub fn explain(&self) -> String {
        let verdict = if self.allowed { "ALLOW" } else { "DENY" };
        let mut line = match &self.decided_by {
            DecidedBy::Deny(m) | DecidedBy::Allow(m) => format!(
                "DRY-RUN would {verdict} by {} rule {}",
                m.policy.as_ref(),
                m.rule
            ),
            DecidedBy::NoAllowMatched => {
                "DRY-RUN would DENY: no ALLOW policy, dry-run ones included, matched".into()
            }
            DecidedBy::DefaultAllow => "DRY-RUN would ALLOW by default".into(),
            DecidedBy::DefaultDeny => "DRY-RUN would DENY by default".into(),
        };
        for (i, (action, m)) in self.matched.iter().enumerate() {
            let sep = if i == 0 { " (dry-run matches: " } else { ", " };
            let _ = write!(
                line,
                "{sep}{} {} rule {}",
                action_name(*action),
                m.policy.as_ref(),
                m.rule
            );
        }
        if !self.matched.is_empty() {
            line.push(')');
        }
        line
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Audit => "AUDIT",
    }
}

fn label<P: AsRef<str>>(decided_by: &DecidedBy<P>) -> String {
    label_str(decided_by).to_owned()
}

fn label_str<P: AsRef<str>>(decided_by: &DecidedBy<P>) -> &str {
    match decided_by {
        DecidedBy::Deny(m) | DecidedBy::Allow(m) => m.policy.as_ref(),
        DecidedBy::NoAllowMatched | DecidedBy::DefaultDeny => "default-deny",
        DecidedBy::DefaultAllow => "default-allow",
    }
}

fn owned_by<P: AsRef<str>>(decided_by: &DecidedBy<P>) -> DecidedBy {
    match decided_by {
        DecidedBy::Deny(m) => DecidedBy::Deny(m.to_owned_match()),
        DecidedBy::Allow(m) => DecidedBy::Allow(m.to_owned_match()),
        DecidedBy::NoAllowMatched => DecidedBy::NoAllowMatched,
        DecidedBy::DefaultAllow => DecidedBy::DefaultAllow,
        DecidedBy::DefaultDeny => DecidedBy::DefaultDeny,
    }
}

impl<P: AsRef<str>> Matched<P> {
    fn to_owned_match(&self) -> Matched {
        Matched {
            policy: self.policy.as_ref().to_owned(),
            rule: self.rule,
        }
    }
}

impl Decision<&str> {
    /// The owned form, e.g. to keep beyond the authorizer's life.
    pub fn into_owned(self) -> Decision {
        Decision {
            allowed: self.allowed,
            decided_by: owned_by(&self.decided_by),
            audits: Audits {
                matched: self
                    .audits
                    .matched
                    .iter()
                    .map(Matched::to_owned_match)
                    .collect(),
                dry_run: self.audits.dry_run.as_ref().map(|d| DryRun {
                    allowed: d.allowed,
                    decided_by: owned_by(&d.decided_by),
                    matched: d
                        .matched
                        .iter()
                        .map(|(a, m)| (*a, m.to_owned_match()))
                        .collect(),
                }),
            },
            allow_policies: self.allow_policies,
        }
    }
}

impl<P: AsRef<str>> Decision<P> {
    /// The deciding policy as `ns/name`, or `default-deny` / `default-allow`.
    pub fn policy_label(&self) -> String {
        label(&self.decided_by)
    }

    /// [`Self::policy_label`], borrowed (for the per-request observation table).
    pub fn policy(&self) -> &str {
        label_str(&self.decided_by)
    }

    /// The index of the deciding rule, when a policy decided.
    pub fn rule(&self) -> Option<usize> {
        match &self.decided_by {
            DecidedBy::Deny(m) | DecidedBy::Allow(m) => Some(m.rule),
            DecidedBy::NoAllowMatched | DecidedBy::DefaultAllow | DecidedBy::DefaultDeny => None,
        }
    }

    /// One line saying what decided, e.g. `DENY by shop/payments-deny-search rule 0`.
    pub fn explain(&self) -> String {
        let mut line = match &self.decided_by {
            DecidedBy::Deny(m) => format!("DENY by {} rule {}", m.policy.as_ref(), m.rule),
            DecidedBy::Allow(m) => format!("ALLOW by {} rule {}", m.policy.as_ref(), m.rule),
            DecidedBy::NoAllowMatched => {
                let names: Vec<&str> = self.allow_policies.iter().map(|n| &**n).collect();
                format!(
                    "DENY: no ALLOW policy matched (ALLOW policies: {})",
                    names.join(", ")
                )
            }
            DecidedBy::DefaultAllow => "ALLOW by default (no ALLOW policy selects this \
                workload, MeshConfig defaultAuthorization: allow)"
                .into(),
            DecidedBy::DefaultDeny => "DENY by default (no ALLOW policy selects this \
                workload, MeshConfig defaultAuthorization: deny)"
                .into(),
        };
        for (i, a) in self.audits.matched.iter().enumerate() {
            let sep = if i == 0 { "; AUDIT by " } else { ", " };
            let _ = write!(line, "{sep}{} rule {}", a.policy.as_ref(), a.rule);
        }
        if let Some(dry_run) = &self.audits.dry_run {
            let _ = write!(line, "; {}", dry_run.explain());
        }
        line
    }
}

/// How a rule treats what it cannot know: ALLOW rules do not match, DENY/AUDIT rules do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Allow,
    DenyOrAudit,
}

impl Mode {
    fn unknown_matches(self) -> bool {
        match self {
            Mode::Allow => false,
            Mode::DenyOrAudit => true,
        }
    }
}

/// Attributes prepared once per evaluation.
struct Ctx<'a> {
    /// SPIFFE ID without `spiffe://`, Istio's principal form.
    principal: Option<&'a str>,
    namespace: Option<&'a str>,
    authenticated: bool,
    source_ip: Option<IpAddr>,
    destination_ip: Option<IpAddr>,
    destination_port: u16,
    sni: Option<&'a str>,
    http: Option<HttpCtx<'a>>,
}

struct HttpCtx<'a> {
    method: &'a str,
    /// The canonical authority ([`matcher::canonical_authority`]).
    authority: Cow<'a, str>,
    /// `None` when no rule looks at paths.
    path: Option<Result<Cow<'a, str>, PathError>>,
    headers: &'a http::HeaderMap,
}

impl<'a> Ctx<'a> {
    fn new(req: &RequestAttrs<'a>, uses_paths: bool) -> Self {
        Self {
            principal: req
                .source
                .map(|id| id.as_str().strip_prefix("spiffe://").unwrap_or(id.as_str())),
            namespace: req.source.and_then(SpiffeId::namespace),
            authenticated: req.source.is_some(),
            source_ip: req.source_ip,
            destination_ip: req.destination_ip,
            destination_port: req.destination_port,
            sni: req.sni,
            http: req.http.map(|h| HttpCtx {
                method: h.method,
                authority: canonical_authority(h.host),
                path: uses_paths.then(|| normalized(h.path)),
                headers: h.headers,
            }),
        }
    }
}

/// A positive list: absent (empty) matches; else the attribute must be present and match one.
fn any_of<M>(list: &[M], value: Option<&str>, f: impl Fn(&M, &str) -> bool) -> bool {
    list.is_empty() || value.is_some_and(|v| list.iter().any(|m| f(m, v)))
}

/// A negative list: absent (empty) matches; else no entry may match (an absent attribute
/// matches none).
fn none_of<M>(list: &[M], value: Option<&str>, f: impl Fn(&M, &str) -> bool) -> bool {
    list.is_empty() || !value.is_some_and(|v| list.iter().any(|m| f(m, v)))
}

fn str_match(m: &StringMatcher, v: &str) -> bool {
    m.matches(v.as_bytes())
}

fn ip_in(list: &[IpNet], ip: Option<IpAddr>) -> bool {
    ip.is_some_and(|ip| list.iter().any(|n| n.contains(ip)))
}

fn pattern_in<T: Copy, V: Copy>(
    list: &[Pattern<T>],
    value: Option<V>,
    eq: impl Fn(T, V) -> bool,
) -> bool {
    value.is_some_and(|v| {
        list.iter().any(|p| match p {
            Pattern::Any => true,
            Pattern::One(x) => eq(*x, v),
        })
    })
}

impl Source {
    /// Whether it names identities (principals, namespaces or service accounts, negated or
    /// not), which a caller without a verified identity never satisfies in an ALLOW rule.
    fn asks_identity(&self) -> bool {
        !(self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.namespaces.is_empty()
            && self.not_namespaces.is_empty()
            && self.service_accounts.is_empty()
            && self.not_service_accounts.is_empty())
    }

    fn matches(&self, ctx: &Ctx<'_>) -> bool {
        any_of(&self.principals, ctx.principal, str_match)
            && none_of(&self.not_principals, ctx.principal, str_match)
            && any_of(&self.namespaces, ctx.namespace, str_match)
            && none_of(&self.not_namespaces, ctx.namespace, str_match)
            && any_of(&self.service_accounts, ctx.principal, str_match)
            && none_of(&self.not_service_accounts, ctx.principal, str_match)
            && (self.ip_blocks.is_empty() || ip_in(&self.ip_blocks, ctx.source_ip))
            && (self.not_ip_blocks.is_empty() || !ip_in(&self.not_ip_blocks, ctx.source_ip))
    }
}

impl Operation {
    fn matches(&self, ctx: &Ctx<'_>, mode: Mode) -> bool {
        let port = ctx.destination_port;
        if !(self.ports.is_empty() || self.ports.contains(&port)) || self.not_ports.contains(&port)
        {
            return false;
        }
        let Some(h) = &ctx.http else {
            // Connection level: HTTP-only fields are ignored here; ALLOW rules that have
            // any were already refused by `Rule::matches`.
            return true;
        };
        let host = |m: &matcher::HostMatcher, authority: &str| m.matches(authority);
        if !(any_of(&self.hosts, Some(&h.authority), host)
            && none_of(&self.not_hosts, Some(&h.authority), host)
            && any_of(&self.methods, Some(h.method), str_match)
            && none_of(&self.not_methods, Some(h.method), str_match))
        {
            return false;
        }
        if !self.has_path_fields() {
            return true;
        }
        match &h.path {
            Some(Ok(path)) => {
                any_of(&self.paths, Some(path), str_match)
                    && none_of(&self.not_paths, Some(path), str_match)
            }
            // Unnormalisable: the path fields are unknown (see the module docs).
            Some(Err(_)) => mode.unknown_matches(),
            // `uses_paths` is computed from these very rules, so this cannot happen; if it
            // did, the unknown path is treated as above.
            None => mode.unknown_matches(),
        }
    }
}

impl Condition {
    fn matches(&self, ctx: &Ctx<'_>, mode: Mode) -> bool {
        match self {
            Condition::Header {
                name,
                values,
                not_values,
            } => {
                let Some(h) = &ctx.http else {
                    // Connection level, DENY/AUDIT only (ALLOW refused in `Rule::matches`).
                    return true;
                };
                header_condition(h.headers, name, values, not_values, mode)
            }
            Condition::Str {
                attr,
                values,
                not_values,
            } => {
                let value = match attr {
                    StrAttr::SourcePrincipal => ctx.principal,
                    StrAttr::SourceNamespace => ctx.namespace,
                    StrAttr::ConnectionSni => ctx.sni,
                };
                any_of(values, value, str_match) && none_of(not_values, value, str_match)
            }
            Condition::Ip {
                attr,
                values,
                not_values,
            } => {
                let ip = match attr {
                    IpAttr::Source => ctx.source_ip,
                    IpAttr::Destination => ctx.destination_ip,
                };
                let contains = |net: IpNet, ip: IpAddr| net.contains(ip);
                (values.is_empty() || pattern_in(values, ip, contains))
                    && (not_values.is_empty() || !pattern_in(not_values, ip, contains))
            }
            Condition::Port { values, not_values } => {
                let port = Some(ctx.destination_port);
                (values.is_empty() || pattern_in(values, port, |a, b| a == b))
                    && (not_values.is_empty() || !pattern_in(not_values, port, |a, b| a == b))
            }
        }
    }
}

/// A `request.headers[name]` condition. As Istio documents it, a header sent several times
/// is seen as its values joined with `,` (what `values` and `not_values` compare). Splitting
/// a value over several lines must never walk around a policy, so each single value is also
/// tried where that can only refuse more: in DENY and AUDIT rules the condition matches if
/// the joined value or any single one does; in ALLOW rules `not_values` must exclude the
/// joined value and every single one. An absent header matches no `values` and every
/// `not_values`.
fn header_condition(
    headers: &http::HeaderMap,
    name: &http::HeaderName,
    values: &[StringMatcher],
    not_values: &[StringMatcher],
    mode: Mode,
) -> bool {
    let mut all = headers.get_all(name).iter();
    let Some(first) = all.next() else {
        return values.is_empty();
    };
    let any = |list: &[StringMatcher], v: &[u8]| list.iter().any(|m| m.matches(v));
    let rest: Vec<&[u8]> = all.map(http::HeaderValue::as_bytes).collect();
    // One value (the common case): no copy.
    let joined: Cow<'_, [u8]> = if rest.is_empty() {
        Cow::Borrowed(first.as_bytes())
    } else {
        let mut j = first.as_bytes().to_vec();
        for v in &rest {
            j.push(b',');
            j.extend_from_slice(v);
        }
        Cow::Owned(j)
    };
    let singles = || std::iter::once(first.as_bytes()).chain(rest.iter().copied());
    let several = !rest.is_empty();
    let (positive, negative) = if mode.unknown_matches() {
        (
            values.is_empty()
                || any(values, &joined)
                || (several && singles().any(|v| any(values, v))),
            not_values.is_empty()
                || !any(not_values, &joined)
                || (several && singles().any(|v| !any(not_values, v))),
        )
    } else {
        (
            values.is_empty() || any(values, &joined),
            not_values.is_empty()
                || !(any(not_values, &joined)
                    || (several && singles().any(|v| any(not_values, v)))),
        )
    };
    positive && negative
}

impl Rule {
    fn matches(&self, ctx: &Ctx<'_>, mode: Mode) -> bool {
        // Fail closed (CONTRACT): without a verified identity no ALLOW rule that asks who
        // the caller is can match, negated or not. Address fields (`ipBlocks`,
        // `notIpBlocks`) still match the peer address of every caller.
        let fail_closed = mode == Mode::Allow && !ctx.authenticated;
        if mode == Mode::Allow {
            if fail_closed && self.identity_condition {
                return false;
            }
            // Istio: at connection level an ALLOW rule using HTTP-only fields is skipped.
            if ctx.http.is_none() && self.http_only {
                return false;
            }
        }
        let source = |s: &Source| !(fail_closed && s.asks_identity()) && s.matches(ctx);
        (self.from.is_empty() || self.from.iter().any(source))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(ctx, mode)))
            && self.when.iter().all(|c| c.matches(ctx, mode))
    }
}

impl Policy {
    fn first_match(&self, ctx: &Ctx<'_>, mode: Mode) -> Option<Matched<&str>> {
        let rule = self.rules.iter().position(|r| r.matches(ctx, mode))?;
        Some(Matched {
            policy: &self.name,
            rule,
        })
    }
}

impl Authorizer {
    /// Decides one request. `default_allow` is MeshConfig `defaultAuthorization: allow`.
    pub fn evaluate(&self, req: &RequestAttrs<'_>, default_allow: bool) -> Decision {
        self.decide(req, default_allow).into_owned()
    }

    /// Like [`Authorizer::evaluate`], borrowing policy names from `self`: no allocation
    /// unless the path needs normalising or an AUDIT policy matches (the data path).
    pub fn decide(&self, req: &RequestAttrs<'_>, default_allow: bool) -> Decision<&str> {
        let ctx = Ctx::new(req, self.uses_paths);
        let matched = self
            .audit
            .iter()
            .filter_map(|p| p.first_match(&ctx, Mode::DenyOrAudit))
            .collect();
        let decided_by = if let Some(m) = self
            .deny
            .iter()
            .find_map(|p| p.first_match(&ctx, Mode::DenyOrAudit))
        {
            DecidedBy::Deny(m)
        } else if !self.allow.is_empty() {
            match self
                .allow
                .iter()
                .find_map(|p| p.first_match(&ctx, Mode::Allow))
            {
                Some(m) => DecidedBy::Allow(m),
                None => DecidedBy::NoAllowMatched,
            }
        } else if default_allow {
            DecidedBy::DefaultAllow
        } else {
            DecidedBy::DefaultDeny
        };
        let allowed = match decided_by {
            DecidedBy::Allow(_) | DecidedBy::DefaultAllow => true,
            DecidedBy::Deny(_) | DecidedBy::NoAllowMatched | DecidedBy::DefaultDeny => false,
        };
        let dry_run =
            (!self.dry.is_empty()).then(|| self.dry_run(&ctx, &decided_by, default_allow));
        Decision {
            allowed,
            decided_by,
            audits: Audits { matched, dry_run },
            allow_policies: self.allow_names.clone(),
        }
    }

    /// The decision with the dry-run policies enforced too, given the real one.
    fn dry_run<'s>(
        &'s self,
        ctx: &Ctx<'_>,
        real: &DecidedBy<&'s str>,
        default_allow: bool,
    ) -> DryRun<&'s str> {
        let matches = |ps: &'s [Policy], mode: Mode| {
            ps.iter()
                .filter_map(move |p| p.first_match(ctx, mode).map(|m| (p.action, m)))
        };
        let matched: Vec<(Action, Matched<&str>)> = matches(&self.dry.deny, Mode::DenyOrAudit)
            .chain(matches(&self.dry.allow, Mode::Allow))
            .chain(matches(&self.dry.audit, Mode::DenyOrAudit))
            .collect();
        let first = |action: Action| {
            matched
                .iter()
                .find(|(a, _)| *a == action)
                .map(|(_, m)| m.clone())
        };
        let decided_by = match (real, first(Action::Deny)) {
            (DecidedBy::Deny(m), _) => DecidedBy::Deny(m.clone()),
            (_, Some(m)) => DecidedBy::Deny(m),
            (DecidedBy::Allow(m), None) => DecidedBy::Allow(m.clone()),
            (_, None) => match first(Action::Allow) {
                Some(m) => DecidedBy::Allow(m),
                None if !(self.allow.is_empty() && self.dry.allow.is_empty()) => {
                    DecidedBy::NoAllowMatched
                }
                None if default_allow => DecidedBy::DefaultAllow,
                None => DecidedBy::DefaultDeny,
            },
        };
        DryRun {
            allowed: matches!(decided_by, DecidedBy::Allow(_) | DecidedBy::DefaultAllow),
            decided_by,
            matched,
        }
    }

    /// Whether no policy selects the workload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.dry.is_empty()
    }

    /// Number of enforced policies (dry-run ones are counted by
    /// [`Authorizer::dry_run_policies`]).
    pub fn len(&self) -> usize {
        self.deny.len() + self.allow.len() + self.audit.len()
    }

    /// Every dry-run policy as (`namespace/name`, action, number of rules).
    pub fn dry_run_policies(&self) -> impl Iterator<Item = (&str, Action, usize)> {
        self.dry
            .deny
            .iter()
            .chain(self.dry.allow.iter())
            .chain(self.dry.audit.iter())
            .map(|p| (&*p.name, p.action, p.rules.len()))
    }

    /// Every policy as (`namespace/name`, action, number of rules), DENY, ALLOW, then AUDIT.
    pub fn policies(&self) -> impl Iterator<Item = (&str, Action, usize)> {
        self.deny
            .iter()
            .chain(self.allow.iter())
            .chain(self.audit.iter())
            .map(|p| (&*p.name, p.action, p.rules.len()))
    }
}
