//! The client side of a control plane's admin port (plain HTTP/1.1), for the CLI: bounded in
//! time and size, with errors naming the address.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

/// Bound on connecting and on an answer's headers (and, for JSON, its body).
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why the admin port could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// Connecting or the HTTP exchange failed.
    #[error("control plane admin at {addr}: {reason}")]
    Http {
        /// The admin address.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// The answer is not what was asked for.
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

/// `GET path`; a status other than 200 is an error quoting the body's start.
pub(crate) async fn get(
    addr: SocketAddr,
    path: &str,
) -> Result<http::Response<hyper::body::Incoming>, AdminClientError> {
    let http = |reason: String| AdminClientError::Http { addr, reason };
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
    let response = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| http(format!("no answer within {TIMEOUT:?}")))??;
    if response.status() != http::StatusCode::OK {
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), 4096)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(AdminClientError::Answer {
            addr,
            status,
            body: body.trim().chars().take(200).collect(),
        });
    }
    Ok(response)
}

/// `GET path`'s body as text, reading at most `max` bytes.
pub(crate) async fn get_text(
    addr: SocketAddr,
    path: &str,
    max: usize,
) -> Result<String, AdminClientError> {
    let response = get(addr, path).await?;
    let body = Limited::new(response.into_body(), max)
        .collect()
        .await
        .map_err(|e| AdminClientError::Http {
            addr,
            reason: e.to_string(),
        })?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// `GET path` as JSON of type `T`, reading at most `max` bytes.
pub(crate) async fn get_json<T: DeserializeOwned>(
    addr: SocketAddr,
    path: &str,
    max: usize,
) -> Result<T, AdminClientError> {
    let read = async {
        let body = get_text(addr, path, max).await?;
        serde_json::from_str(&body).map_err(|e| AdminClientError::Answer {
            addr,
            status: 200,
            body: format!("not the expected JSON from {path}: {e}"),
        })
    };
    tokio::time::timeout(TIMEOUT * 3, read)
        .await
        .map_err(|_| AdminClientError::Http {
            addr,
            reason: format!("{path} not read within {:?}", TIMEOUT * 3),
        })?
}
