//! The client side of the live view, for `palisade tap` and `palisade top`: reads a control
//! plane's `/tap` event stream and `/top` table over its admin port.

use std::net::SocketAddr;

use http_body_util::BodyExt;

use super::http::TapFilter;
use super::{EdgeStats, Event};

/// Largest event accepted (a decision is well under 4 KiB).
const MAX_EVENT: usize = 64 * 1024;
/// Largest `/top` answer read.
const MAX_TOP: usize = 8 << 20;

/// Why watching failed.
pub type WatchError = crate::admin_client::AdminClientError;

/// Calls `on_event` for every decision `filter` admits, from now until it returns false or
/// the stream ends; `on_missed` is told how many the control plane skipped when this
/// client fell behind. Bound it with a timeout.
pub async fn tap(
    addr: SocketAddr,
    filter: &TapFilter,
    mut on_event: impl FnMut(Event) -> bool,
    mut on_missed: impl FnMut(u64),
) -> Result<(), WatchError> {
    let response = crate::admin_client::get(addr, &format!("/tap?{}", filter.query())).await?;
    let mut body = response.into_body();
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| WatchError::Http {
            addr,
            reason: e.to_string(),
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&data);
        while let Some(end) = find(&buffer, b"\n\n") {
            let block: Vec<u8> = buffer.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let mut kind = "message";
            let mut payload = String::new();
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    kind = if v == "lagged" { "lagged" } else { "other" };
                } else if let Some(v) = line.strip_prefix("data: ") {
                    payload.push_str(v);
                }
            }
            match kind {
                "message" if !payload.is_empty() => {
                    if let Ok(event) = serde_json::from_str::<Event>(&payload)
                        && !on_event(event)
                    {
                        return Ok(());
                    }
                }
                "lagged" => {
                    let missed = serde_json::from_str::<serde_json::Value>(&payload)
                        .ok()
                        .and_then(|v| v["missed"].as_u64())
                        .unwrap_or(0);
                    on_missed(missed);
                }
                _ => {}
            }
        }
        if buffer.len() > MAX_EVENT {
            return Err(WatchError::Http {
                addr,
                reason: format!("an event longer than {MAX_EVENT} bytes"),
            });
        }
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The edges with traffic in the control plane's window, busiest first.
pub async fn top(addr: SocketAddr) -> Result<Vec<EdgeStats>, WatchError> {
    crate::admin_client::get_json(addr, "/top", MAX_TOP).await
}
