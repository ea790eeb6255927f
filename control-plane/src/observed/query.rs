//! Which observations a tool asks for: `GET /observed?since=SECONDS&namespace=NS&workload=W`
//! on the admin port (loopback callers only, like the live view), and `--since` spellings.

use std::time::Duration;

use super::{Observations, ObservedRow};

/// Longest `--since` accepted: the table forgets rows after [`super::RETENTION`] anyway.
const MAX_SINCE: Duration = super::RETENTION;

/// A filter on the observation table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedQuery {
    /// Only rows seen within this many seconds.
    pub since_seconds: Option<u64>,
    /// Only rows whose destination is in this namespace.
    pub namespace: Option<String>,
    /// Only rows whose destination is this workload (`name` or `namespace/name`).
    pub workload: Option<String>,
}

/// `90s`, `15m`, `1h`, `2d` (or plain seconds) as a duration of at most the retention.
pub fn parse_since(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 30m or 1h"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use s, m, h or d)"
            ));
        }
    };
    if seconds == 0 || seconds > MAX_SINCE.as_secs() {
        return Err(format!(
            "{text:?}: must be between 1s and {}d (observations are kept that long)",
            MAX_SINCE.as_secs() / 86_400
        ));
    }
    Ok(Duration::from_secs(seconds))
}

fn name_ok(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-./".contains(&b))
}

impl ObservedQuery {
    /// Reads the query string; unknown, repeated or malformed parameters are refused.
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut q = Self::default();
        let mut seen = std::collections::BTreeSet::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if !seen.insert(k.clone()) {
                return Err(format!("{k}: given twice"));
            }
            match &*k {
                "since" => {
                    q.since_seconds = Some(
                        parse_since(&v)
                            .map_err(|e| format!("since: {e}"))?
                            .as_secs(),
                    );
                }
                "namespace" | "workload" if !name_ok(&v) => {
                    return Err(format!("{k}: not a name: {v:?}"));
                }
                "namespace" => q.namespace = Some(v.into_owned()),
                "workload" => q.workload = Some(v.into_owned()),
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        Ok(q)
    }

    /// The query string [`Self::parse`] reads back.
    pub fn to_query(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if let Some(since) = self.since_seconds {
            s.append_pair("since", &since.to_string());
        }
        if let Some(ns) = &self.namespace {
            s.append_pair("namespace", ns);
        }
        if let Some(w) = &self.workload {
            s.append_pair("workload", w);
        }
        s.finish()
    }

    /// Whether `row`'s destination passes.
    pub fn admits(&self, row: &ObservedRow) -> bool {
        let destination = &row.key.destination;
        let (ns, name) = destination.split_once('/').unwrap_or(("", destination));
        self.namespace.as_deref().is_none_or(|n| n == ns)
            && self
                .workload
                .as_deref()
                .is_none_or(|w| w == destination || w == name)
    }

    /// The table's rows this query asks for; `now` in Unix seconds.
    pub fn select(&self, table: &super::ObservedTable, now: i64) -> Observations {
        let since = self
            .since_seconds
            .map_or(i64::MIN, |s| now - i64::try_from(s).unwrap_or(i64::MAX));
        let mut o = table.snapshot(since);
        o.rows.retain(|r| self.admits(r));
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_spellings_and_refusals() {
        assert_eq!(parse_since("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_since("15m").unwrap().as_secs(), 900);
        assert_eq!(parse_since("1h").unwrap().as_secs(), 3600);
        assert_eq!(parse_since("2d").unwrap().as_secs(), 172_800);
        assert_eq!(parse_since("120").unwrap().as_secs(), 120);
        for bad in ["", "h", "1w", "0s", "-1h", "99999999999999999999d", "30d"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn queries_round_trip_and_bad_ones_are_refused() {
        let q = ObservedQuery::parse("since=1h&namespace=shop&workload=search").unwrap();
        assert_eq!(q.since_seconds, Some(3600));
        assert_eq!(ObservedQuery::parse(&q.to_query()).unwrap(), q);
        for bad in [
            "since=1h&since=2h",
            "token=x",
            "workload=a%20b",
            "namespace=",
            "since=forever",
        ] {
            assert!(ObservedQuery::parse(bad).is_err(), "{bad}");
        }
    }
}
