//! The live view on the admin port: `GET /tap` (Server-Sent Events, one `data:` line of JSON
//! per decision, filtered by `namespace`, `workload` and `denied`) and `GET /top` (JSON edges).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::broadcast::error::RecvError;

use super::{Event, Hub};

/// A comment line is sent this often on a quiet stream, so proxies in between keep it open
/// and a client that left is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// What a watcher asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapFilter {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only this workload (`name` or `namespace/name`), as caller or destination.
    pub workload: Option<String>,
    /// Only denials.
    pub denied: bool,
}

impl TapFilter {
    /// Whether `event` passes.
    pub fn admits(&self, event: &Event) -> bool {
        (!self.denied || event.denied())
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| event.in_namespace(ns))
            && self.workload.as_deref().is_none_or(|w| event.involves(w))
    }

    /// The query string for this filter.
    pub fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(ns) = &self.namespace {
            parts.push(format!("namespace={ns}"));
        }
        if let Some(w) = &self.workload {
            parts.push(format!("workload={w}"));
        }
        if self.denied {
            parts.push("denied=true".to_owned());
        }
        parts.join("&")
    }

    /// Parses a query string; values are names (letters, digits, `-`, `.`, `/`).
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut filter = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name_ok = !value.is_empty()
                && value.len() <= 253
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-./".contains(&b));
            match key {
                "namespace" | "workload" if !name_ok => {
                    return Err(format!("{key}: not a name: {value:?}"));
                }
                "namespace" => filter.namespace = Some(value.to_owned()),
                "workload" => filter.workload = Some(value.to_owned()),
                "denied" => {
                    filter.denied = match value {
                        "" | "true" | "1" => true,
                        "false" | "0" => false,
                        other => {
                            return Err(format!("denied: expected true or false, not {other:?}"));
                        }
                    }
                }
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        Ok(filter)
    }
}

/// The admin answer type: a whole body or a stream.
pub(crate) type Body = BoxBody<Bytes, Infallible>;

fn plain(status: StatusCode, text: String) -> Response<Body> {
    super::ui::respond(status, "text/plain; charset=utf-8", Bytes::from(text))
}

/// `GET /tap?...`: decisions from now on, as Server-Sent Events, until the client leaves.
pub(crate) fn tap(hub: &Arc<Hub>, query: &str) -> Response<Body> {
    let filter = match TapFilter::parse(query) {
        Ok(f) => f,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("/tap: {e}\n")),
    };
    let (watching, rx) = hub.watch();
    // The guard lives in the stream: when the client goes, hyper drops the body, and the
    // proxies are told to stop once nobody else watches.
    let first = futures_util::stream::once(async {
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b": watching\n\n")))
    });
    let events = futures_util::stream::unfold(
        (rx, filter, watching),
        |(mut rx, filter, watching)| async move {
            loop {
                let next = tokio::time::timeout(KEEP_ALIVE, rx.recv()).await;
                let chunk = match next {
                    Err(_) => Bytes::from_static(b": keep-alive\n\n"),
                    Ok(Ok(event)) if filter.admits(&event) => {
                        let json = serde_json::to_string(&*event).unwrap_or_default();
                        Bytes::from(format!("data: {json}\n\n"))
                    }
                    Ok(Ok(_)) => continue,
                    Ok(Err(RecvError::Lagged(missed))) => {
                        Bytes::from(format!("event: lagged\ndata: {{\"missed\":{missed}}}\n\n"))
                    }
                    Ok(Err(RecvError::Closed)) => return None,
                };
                return Some((Ok(Frame::data(chunk)), (rx, filter, watching)));
            }
        },
    );
    let body = StreamBody::new(first.chain(events));
    let mut resp = Response::new(BodyExt::boxed(body));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// `GET /top`: edges over the last window, and proxies kept reporting for a while.
pub(crate) fn top(hub: &Arc<Hub>) -> Response<Body> {
    hub.lease();
    let body = serde_json::to_string_pretty(&hub.top()).unwrap_or_else(|_| "[]".into());
    super::ui::respond(StatusCode::OK, "application/json", Bytes::from(body + "\n"))
}

/// `GET /observed` (the rows the query asks for, JSON) or, with `suggest`, `GET /suggest`
/// (least-privilege policies for them, YAML, on the configuration served now); 404 when
/// observation is off.
pub(crate) fn observed(
    hub: &Arc<Hub>,
    query: &str,
    snapshot: &crate::MeshSnapshot,
    suggest: bool,
) -> Response<Body> {
    let Some(table) = hub.observed() else {
        return super::ui::respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"observation is off (the control plane runs with --no-observe)\n"),
        );
    };
    match crate::observed::query::ObservedQuery::parse(query) {
        Ok(q) => {
            let mut selected = q.select(table, crate::observed::now_seconds());
            match suggest {
                true => {
                    let s = crate::observed::suggest::suggest(snapshot, &selected);
                    super::ui::respond(
                        StatusCode::OK,
                        "application/yaml; charset=utf-8",
                        Bytes::from(s.yaml),
                    )
                }
                false => {
                    selected.label_protocols(snapshot);
                    let body = serde_json::to_vec(&selected).unwrap_or_default();
                    super::ui::respond(StatusCode::OK, "application/json", Bytes::from(body))
                }
            }
        }
        Err(e) => super::ui::respond(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            Bytes::from(format!(
                "{}: {e}\n",
                if suggest { "/suggest" } else { "/observed" }
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_refuse_what_is_not_a_name() {
        let f = TapFilter::parse("namespace=shop&workload=search&denied=true").unwrap();
        assert_eq!(f.namespace.as_deref(), Some("shop"));
        assert_eq!(f.workload.as_deref(), Some("search"));
        assert!(f.denied);
        assert_eq!(TapFilter::parse(&f.query()).unwrap(), f);
        assert!(TapFilter::parse("workload=a%20b").is_err());
        assert!(TapFilter::parse("namespace=").is_err());
        assert!(TapFilter::parse("denied=maybe").is_err());
        assert!(TapFilter::parse("x=1").is_err());
        assert_eq!(TapFilter::parse("").unwrap(), TapFilter::default());
    }
}
