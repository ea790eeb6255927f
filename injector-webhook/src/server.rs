//! The HTTPS admission webhook: `POST /inject` (namespaces opted in by label) and
//! `POST /inject/require-annotation` (elsewhere: only pods annotated
//! `palisade.dev/inject: enabled`; a webhook configuration's service path cannot carry a
//! query, so this is a path; `/inject?require-annotation=true` means the same).
//!
//! Bounded everywhere, because the API server is not the only thing that can reach the port:
//! connections (more are closed at once), TLS handshake time, header read time, body size
//! (3 MiB, as the API server's own limit) and time per request.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::mutate::Settings;
use crate::review::{self, Answer};

/// The path the webhook configuration calls.
pub const INJECT_PATH: &str = "/inject";

/// Resource bounds of the webhook listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body; larger ones get 413 (the API server caps objects at 3 MiB).
    pub max_body_bytes: usize,
    /// Open connections at most; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time a client gets to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a client gets to send a request's headers once it started one.
    pub header_read_timeout: Duration,
    /// Age after which a connection is closed gracefully (the API server reconnects), so
    /// idle keep-alive connections cannot hold the connection slots forever.
    pub max_connection_age: Duration,
    /// Time one request may take, body included (the API server waits at most 30 s).
    pub request_timeout: Duration,
    /// Time open connections get to finish after shutdown before they are dropped.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 3 * 1024 * 1024,
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (`0.0.0.0:15017` in a cluster; port 0 in tests).
    pub listen: SocketAddr,
    /// The serving certificate and key.
    pub tls: Arc<rustls::ServerConfig>,
    /// What injection puts into pods.
    pub settings: Settings,
    /// Resource bounds.
    pub limits: Limits,
}

/// Why the webhook cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key file cannot be read or has no usable content.
    #[error("{path}: {problem}")]
    TlsFile {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// rustls refused the certificate and key pair.
    #[error("TLS certificate and key: {0}")]
    Tls(#[from] rustls::Error),
}

/// A running webhook.
#[derive(Debug)]
pub struct Handle {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Handle {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the server has stopped (after the shutdown token fired and connections
    /// drained or were dropped).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// A rustls server config from a PEM certificate chain and PEM private key (ring provider,
/// HTTP/1.1 only).
pub fn tls_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// How often the serving certificate files are checked for a change.
pub const CERT_RECHECK: Duration = Duration::from_secs(10);

/// Reads `--tls-cert` and `--tls-key` files into a server config that picks up new files
/// (a renewed Secret) within [`CERT_RECHECK`], without a restart.
pub fn load_tls(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ServerError> {
    load_tls_with_recheck(cert, key, CERT_RECHECK)
}

/// [`load_tls`] with another recheck interval (tests use a short one).
pub fn load_tls_with_recheck(
    cert: &Path,
    key: &Path,
    recheck: Duration,
) -> Result<rustls::ServerConfig, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let files = CertFiles::load(cert, key, provider.clone(), recheck)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(files));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

// === impl CertFiles ===

/// The serving certificate, re-read when its files change. Certificates for admission
/// webhooks are rotated by replacing a mounted Secret; a process that kept the first pair
/// would serve an expired one and block every pod creation in meshed namespaces.
#[derive(Debug)]
struct CertFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    recheck: Duration,
    state: std::sync::Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    current: Arc<rustls::sign::CertifiedKey>,
    stamp: FileStamp,
    checked: tokio::time::Instant,
}

/// Modification time and length of both files: what tells a rewrite apart.
type FileStamp = [Option<(std::time::SystemTime, u64)>; 2];

impl CertFiles {
    fn load(
        cert: &Path,
        key: &Path,
        provider: Arc<rustls::crypto::CryptoProvider>,
        recheck: Duration,
    ) -> Result<Self, ServerError> {
        let stamp = stamp(cert, key);
        let current = read_pair(cert, key, &provider)?;
        Ok(CertFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            recheck,
            state: std::sync::Mutex::new(Loaded {
                current: Arc::new(current),
                stamp,
                checked: tokio::time::Instant::now(),
            }),
        })
    }
}

impl rustls::server::ResolvesServerCert for CertFiles {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        // A poisoned lock still holds a usable pair.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= self.recheck {
            state.checked = tokio::time::Instant::now();
            let now = stamp(&self.cert, &self.key);
            if now != state.stamp {
                match read_pair(&self.cert, &self.key, &self.provider) {
                    Ok(pair) => {
                        tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                        state.current = Arc::new(pair);
                        state.stamp = now;
                    }
                    // Half-written files during a rotation: keep serving the last good pair
                    // and try again at the next check.
                    Err(e) => tracing::warn!(error = %e, "serving certificate not reloaded"),
                }
            }
        }
        Some(state.current.clone())
    }
}

fn stamp(cert: &Path, key: &Path) -> FileStamp {
    [cert, key].map(|p| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
}

fn read_pair(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<rustls::sign::CertifiedKey, ServerError> {
    let file_error = |path: &Path, problem: String| ServerError::TlsFile {
        path: path.display().to_string(),
        problem,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no CERTIFICATE block".to_owned()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e.to_string()))?;
    Ok(rustls::sign::CertifiedKey::from_der(
        chain, key_der, provider,
    )?)
}

/// Binds `config.listen` and serves until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Handle, ServerError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    let task = tokio::spawn(serve(listener, config, shutdown));
    Ok(Handle { addr, task })
}

async fn serve(listener: TcpListener, config: Config, shutdown: CancellationToken) {
    let acceptor = TlsAcceptor::from(config.tls.clone());
    let settings = Arc::new(config.settings);
    let limits = Arc::new(config.limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = limits.max_connections, "connection limit reached; closing");
            continue;
        };
        let acceptor = acceptor.clone();
        let settings = settings.clone();
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let tls =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let (header_read_timeout, max_age, drain) = (
                limits.header_read_timeout,
                limits.max_connection_age,
                limits.drain_timeout,
            );
            let service = service_fn(move |req| {
                let settings = settings.clone();
                let limits = limits.clone();
                async move {
                    let answer = tokio::time::timeout(
                        limits.request_timeout,
                        handle(req, &settings, &limits),
                    )
                    .await
                    .unwrap_or_else(|_| text(StatusCode::REQUEST_TIMEOUT, "request took too long"));
                    Ok::<_, std::convert::Infallible>(answer)
                }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Some(header_read_timeout))
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(max_age) => {}
            }
            // Finish the request in flight, then close; dropped at the drain deadline.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(drain, conn).await;
        });
    }
    drop(listener);
    connections.close();
    // Every connection task ends by itself within the drain timeout (plus a handshake).
    connections.wait().await;
}

async fn handle(
    req: Request<Incoming>,
    settings: &Settings,
    limits: &Limits,
) -> Response<Full<Bytes>> {
    let path_requires_annotation = match req.uri().path() {
        INJECT_PATH => false,
        crate::install::REQUIRE_ANNOTATION_PATH => true,
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "not found: the webhook serves POST /inject and /inject/require-annotation",
            );
        }
    };
    if req.method() != Method::POST {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use POST",
        );
        r.headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("POST"));
        return r;
    }
    let require_annotation = match require_annotation(req.uri().query()) {
        Ok(v) => v || path_requires_annotation,
        Err(message) => return text(StatusCode::BAD_REQUEST, &message),
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body larger than {} bytes", limits.max_body_bytes),
        )
    };
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return too_large();
    }
    let body = match Limited::new(req.into_body(), limits.max_body_bytes)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            );
        }
    };
    match review::answer(&body, require_annotation, settings) {
        Answer::Review(review) => {
            let mut r = Response::new(Full::new(Bytes::from(review.to_json())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Answer::BadRequest(message) => text(StatusCode::BAD_REQUEST, &message),
    }
}

/// The `require-annotation` query parameter; anything but `true` or `false` is refused, so
/// a typo in the webhook configuration cannot turn "only annotated pods" into "every pod".
fn require_annotation(query: Option<&str>) -> Result<bool, String> {
    let mut require = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "require-annotation" {
            require = match value {
                "true" => true,
                "false" => false,
                other => {
                    return Err(format!(
                        "require-annotation must be true or false, not {other:?}"
                    ));
                }
            };
        }
    }
    Ok(require)
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_annotation_query() {
        assert_eq!(require_annotation(None), Ok(false));
        assert_eq!(
            require_annotation(Some("require-annotation=true")),
            Ok(true)
        );
        assert_eq!(
            require_annotation(Some("x=1&require-annotation=false")),
            Ok(false)
        );
        assert!(require_annotation(Some("require-annotation=yes")).is_err());
    }
}
