//! The client side of the live view, for `palisade tap` and `palisade top`: reads a control
//! plane's `/tap` event stream and `/top` table over its admin port.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::http::TapFilter;
use super::{EdgeStats, Event};

/// Bound on connecting and on each answer's headers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest event accepted (a decision is well under 4 KiB).
const MAX_EVENT: usize = 64 * 1024;
/// Largest `/top` answer read.
const MAX_TOP: usize = 8 << 20;

/// Why watching failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// Connecting or the HTTP exchange failed.
    #[error("control plane admin at {addr}: {reason}")]
    Http {
        /// The admin address.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// The control plane answered something else.
    #[error("control plane admin at {addr} answered {status}: {body}")]
    Answer {
        /// The admin address.
        addr: SocketAddr,
        /// HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
}

async fn get(
    addr: SocketAddr,
    path: &str,
) -> Result<http::Response<hyper::body::Incoming>, WatchError> {
    let http = |reason: String| WatchError::Http { addr, reason };
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| http(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| http(e.to_string()))?;
        tokio::spawn(conn);
        let request = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| http(e.to_string()))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| http(e.to_string()))
    };
    let response = tokio::time::timeout(CONNECT_TIMEOUT, exchange)
        .await
        .map_err(|_| http(format!("no answer within {CONNECT_TIMEOUT:?}")))??;
    if response.status() != http::StatusCode::OK {
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), 4096)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(WatchError::Answer {
            addr,
            status,
            body: body.trim().to_owned(),
        });
    }
    Ok(response)
}

/// Calls `on_event` for every decision `filter` admits, from now until it returns false or
/// the stream ends; `on_missed` is told how many the control plane skipped when this
/// client fell behind. Bound it with a timeout.
pub async fn tap(
    addr: SocketAddr,
    filter: &TapFilter,
    mut on_event: impl FnMut(Event) -> bool,
    mut on_missed: impl FnMut(u64),
) -> Result<(), WatchError> {
    let response = get(addr, &format!("/tap?{}", filter.query())).await?;
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
    let response = get(addr, "/top").await?;
    let body = Limited::new(response.into_body(), MAX_TOP)
        .collect()
        .await
        .map_err(|e| WatchError::Http {
            addr,
            reason: e.to_string(),
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| WatchError::Answer {
        addr,
        status: 200,
        body: format!("not an edge table: {e}"),
    })
}
