//! Where authorization decisions become visible (CONTRACT: "every denial and every AUDIT
//! match is counted in /metrics and logged with source identity, destination, method and
//! path, and the policy that decided"). Denials are logged at WARN and AUDIT matches at INFO
//! under the target `palisade::authz`; with `log_decisions` every ALLOW is logged at INFO.

use std::fmt;

use palisade_certs::SpiffeId;

use crate::authz::{Decision, normalized};
use crate::metrics::{AuthzLabels, Direction, DryRunLabels, Metrics};
use crate::observe::{Seen, Verdict};

/// The `tracing` target of every decision line.
pub const LOG_TARGET: &str = "palisade::authz";

/// The `source` label of a caller without a verified identity.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// What a decision was about.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// inbound or outbound.
    pub direction: Direction,
    /// The caller's verified identity, if any.
    pub source: Option<&'a SpiffeId>,
    /// Inbound: `<ns>/<workload>:<port>`; outbound: `host:port`.
    pub destination: &'a str,
    /// The HTTP method; `None` for an opaque TCP connection.
    pub method: Option<&'a str>,
    /// The raw path (may carry a query); `None` for an opaque TCP connection.
    pub path: Option<&'a str>,
}

impl Subject<'_> {
    fn labels(&self, policy: &str) -> AuthzLabels {
        self.labels_for(policy, self.destination)
    }

    fn labels_for(&self, policy: &str, destination: &str) -> AuthzLabels {
        AuthzLabels {
            direction: self.direction,
            policy: policy.to_owned(),
            source: self
                .source
                .map_or_else(|| UNAUTHENTICATED.to_owned(), |s| s.to_string()),
            destination: destination.to_owned(),
        }
    }

    /// The live view's record of this subject, decided by `policy`/`rule`; `source` and
    /// `path` are rendered into the buffers given.
    fn seen<'b>(
        &'b self,
        policy: &'b str,
        rule: Option<usize>,
        source: &'b mut String,
        path: &'b mut String,
    ) -> Seen<'b> {
        use std::fmt::Write;
        if let Some(id) = self.source {
            let _ = write!(source, "{id}");
        }
        if self.path.is_some() {
            let _ = write!(path, "{}", LogPath(self.path));
        }
        Seen {
            direction: self.direction.as_str(),
            source,
            destination: self.destination,
            method: self.method.unwrap_or(""),
            path,
            policy,
            rule,
        }
    }

    /// Hands the decision to the live view (which keeps every denial and AUDIT match, and
    /// samples allows while watched).
    fn observe(
        &self,
        metrics: &Metrics,
        verdict: Verdict,
        policy: &str,
        rule: Option<usize>,
        explain: impl FnOnce() -> String,
    ) {
        let observer = metrics.observer();
        if verdict == Verdict::Allow && !observer.watched() {
            return;
        }
        let (mut source, mut path) = (String::new(), String::new());
        observer.decision(
            verdict,
            &self.seen(policy, rule, &mut source, &mut path),
            explain,
        );
    }

    fn kind(&self) -> &'static str {
        if self.method.is_some() {
            "request"
        } else {
            "connection"
        }
    }
}

/// The path as logged: normalised and without the query, which may carry secrets.
struct LogPath<'a>(Option<&'a str>);

impl fmt::Display for LogPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(raw) = self.0 else {
            return f.write_str("-");
        };
        match normalized(raw) {
            Ok(p) => f.write_str(&p),
            Err(_) => f.write_str(raw.split(['?', '#']).next().unwrap_or(raw)),
        }
    }
}

/// A rule index, or `-` when no rule decided.
struct RuleField(Option<usize>);

impl fmt::Display for RuleField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(i) => write!(f, "{i}"),
            None => f.write_str("-"),
        }
    }
}

struct Source<'a>(Option<&'a SpiffeId>);

impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => f.write_str(UNAUTHENTICATED),
        }
    }
}

/// Counts and logs one decision: its denial, its AUDIT matches, its dry-run outcome, and
/// (with `log_allows`) its ALLOW.
///
/// A dry-run outcome is counted for every decision on a workload that dry-run policies
/// select (`palisade_proxy_authz_dry_run_total{policy, would}`), and logged at INFO when a
/// dry-run policy matched or it differs from the real decision.
pub fn record<P: AsRef<str>>(
    metrics: &Metrics,
    log_allows: bool,
    subject: &Subject<'_>,
    decision: &Decision<P>,
) {
    for audit in &decision.audits.matched {
        let policy = audit.policy.as_ref();
        metrics.authz_audit(&subject.labels(policy));
        subject.observe(metrics, Verdict::Audit, policy, Some(audit.rule), || {
            format!("AUDIT by {policy} rule {}", audit.rule)
        });
        tracing::info!(
            target: LOG_TARGET,
            source = %Source(subject.source),
            destination = %subject.destination,
            method = %subject.method.unwrap_or("-"),
            path = %LogPath(subject.path),
            decision = %format_args!("AUDIT by {policy} rule {}", audit.rule),
            policy = %policy,
            rule = %audit.rule,
            "{} matched an AUDIT policy", subject.kind()
        );
    }
    if let Some(dry_run) = &decision.audits.dry_run {
        let would = if dry_run.allowed { "allow" } else { "deny" };
        let policy = dry_run.policy_label();
        metrics.authz_dry_run(&DryRunLabels {
            direction: subject.direction,
            policy: policy.clone(),
            would,
        });
        if !dry_run.matched.is_empty() || dry_run.allowed != decision.allowed {
            tracing::info!(
                target: LOG_TARGET,
                source = %Source(subject.source),
                destination = %subject.destination,
                method = %subject.method.unwrap_or("-"),
                path = %LogPath(subject.path),
                decision = %dry_run.explain(),
                enforced = %if decision.allowed { "allow" } else { "deny" },
                policy = %policy,
                would = %would,
                "{} would be {} by dry-run policies (not enforced)",
                subject.kind(),
                if dry_run.allowed { "allowed" } else { "denied" }
            );
        }
    }
    if decision.allowed {
        subject.observe(
            metrics,
            Verdict::Allow,
            &decision.policy_label(),
            decision.rule(),
            || decision.explain(),
        );
        if log_allows {
            tracing::info!(
                target: LOG_TARGET,
                source = %Source(subject.source),
                destination = %subject.destination,
                method = %subject.method.unwrap_or("-"),
                path = %LogPath(subject.path),
                decision = %decision.explain(),
                policy = %decision.policy_label(),
                rule = %RuleField(decision.rule()),
                "{} allowed", subject.kind()
            );
        }
        return;
    }
    denial(
        metrics,
        subject,
        &decision.policy_label(),
        decision.rule(),
        &decision.explain(),
    );
}

/// Counts an inbound decision in the observation table, when the control plane asks for
/// observations (`authz suggest`): every one, unsampled; one atomic load otherwise.
pub fn count_observed<P: AsRef<str>>(
    metrics: &Metrics,
    source: Option<&SpiffeId>,
    port: u16,
    http: Option<(&str, &str)>,
    decision: &Decision<P>,
) {
    let table = metrics.observer().observed();
    if !table.on() {
        return;
    }
    let (method, raw) = http.unwrap_or(("", ""));
    let path = match http {
        None => std::borrow::Cow::Borrowed(""),
        Some(_) => normalized(raw).unwrap_or_else(|_| {
            std::borrow::Cow::Borrowed(raw.split(['?', '#']).next().unwrap_or(raw))
        }),
    };
    table.record(&crate::observed::Request {
        source: source.map_or("", SpiffeId::as_str),
        port,
        method,
        path: &path,
        allowed: decision.allowed,
        policy: decision.policy(),
        rule: decision.rule(),
    });
}

/// Counts and logs a denial decided outside the evaluator (the outbound policy) or a late
/// one (an open connection closed after a policy change).
pub fn denial(
    metrics: &Metrics,
    subject: &Subject<'_>,
    policy: &str,
    rule: Option<usize>,
    explain: &str,
) {
    denial_counted_as(metrics, subject, subject.destination, policy, rule, explain);
}

/// [`denial`], counted under the bounded `metric_destination` (such as `external`) while
/// the log line names the destination as the caller gave it: a label must never take a
/// value an app or a remote caller chooses, or each new one would be a new series.
pub fn denial_counted_as(
    metrics: &Metrics,
    subject: &Subject<'_>,
    metric_destination: &str,
    policy: &str,
    rule: Option<usize>,
    explain: &str,
) {
    metrics.authz_denial(&subject.labels_for(policy, metric_destination));
    subject.observe(metrics, Verdict::Deny, policy, rule, || explain.to_owned());
    tracing::warn!(
        target: LOG_TARGET,
        source = %Source(subject.source),
        destination = %subject.destination,
        method = %subject.method.unwrap_or("-"),
        path = %LogPath(subject.path),
        decision = %explain,
        policy = %policy,
        rule = %RuleField(rule),
        "{} denied", subject.kind()
    );
}

/// Logs an ALLOW decided outside the evaluator (an egress allowance), with `log_allows`.
pub fn allowed(log_allows: bool, subject: &Subject<'_>, policy: &str, explain: &str) {
    if log_allows {
        tracing::info!(
            target: LOG_TARGET,
            source = %Source(subject.source),
            destination = %subject.destination,
            method = %subject.method.unwrap_or("-"),
            path = %LogPath(subject.path),
            decision = %explain,
            policy = %policy,
            rule = %"-",
            "{} allowed", subject.kind()
        );
    }
}
