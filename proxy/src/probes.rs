//! Kubelet probes under default deny. The injector rewrites each app container's HTTP, TCP and
//! gRPC probe to `GET /app-health/<container>/<livez|readyz|startupz>` on the admin port, which
//! inbound capture never redirects, and hands the original handlers to the proxy in
//! `PALISADE_APP_PROBES`: a JSON object keyed by that admin path, each value in the Kubernetes
//! probe handler shape with a numeric port:
//!
//! ```json
//! {"/app-health/web/livez": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP",
//!                                         "httpHeaders": [{"name": "x-probe", "value": "1"}]},
//!                             "timeoutSeconds": 1},
//!  "/app-health/web/readyz": {"tcpSocket": {"port": 8080}},
//!  "/app-health/web/startupz": {"grpc": {"port": 9090, "service": "shop"}}}
//! ```
//!
//! The proxy runs exactly these probes against the app and answers with the verdict only
//! (200 or 503, never the app's body), so a caller reaching the admin port learns whether the
//! app is healthy and nothing else: the probes open no path to the app. Kubelet's rules are
//! kept: HTTP succeeds on a status from 200 to 399, HTTPS skips certificate verification, TCP
//! succeeds on connect, gRPC on `grpc.health.v1.Health/Check` answering SERVING.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Prefix of every probe path on the admin port.
pub const PATH_PREFIX: &str = "/app-health/";
/// Most probes one proxy accepts (a pod has few containers, each with three probes).
const MAX_PROBES: usize = 64;
/// Most probes run at once; more callers get 503 at once (the admin port is reachable by
/// anyone who can reach the pod, so a flood must not become a flood on the app).
const MAX_CONCURRENT: usize = 8;
/// Longest timeout a probe may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes of a gRPC health answer read.
const MAX_GRPC_ANSWER: usize = 1024;

/// Why `PALISADE_APP_PROBES` was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProbeConfigError {
    /// Not the JSON shape described in the module docs.
    #[error("PALISADE_APP_PROBES is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// A key or handler is out of bounds.
    #[error("PALISADE_APP_PROBES: {key}: {reason}")]
    Invalid {
        /// The admin path.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// More probes than a pod can have.
    #[error("PALISADE_APP_PROBES holds {0} probes; at most {MAX_PROBES}")]
    TooMany(usize),
}

/// One probe as the proxy runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeHandler {
    /// `GET` over HTTP or HTTPS; 200-399 is healthy.
    Http {
        /// HTTPS (certificate not verified, as kubelet does).
        tls: bool,
        /// The app's port.
        port: u16,
        /// Path and query.
        path_and_query: http::uri::PathAndQuery,
        /// Extra request headers.
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// A TCP connect.
    Tcp {
        /// The app's port.
        port: u16,
    },
    /// `grpc.health.v1.Health/Check` over cleartext HTTP/2.
    Grpc {
        /// The app's port.
        port: u16,
        /// The service asked about (empty: the server as a whole).
        service: String,
    },
}

/// A probe and its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppProbe {
    /// What to run.
    pub handler: ProbeHandler,
    /// How long it may take.
    pub timeout: Duration,
}

/// The probes of one pod, by admin path; runs them with bounded concurrency.
#[derive(Debug)]
pub struct AppProbes {
    probes: BTreeMap<String, AppProbe>,
    running: Arc<Semaphore>,
}

impl Default for AppProbes {
    fn default() -> Self {
        Self {
            probes: BTreeMap::new(),
            running: Arc::new(Semaphore::new(MAX_CONCURRENT)),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WireProbe {
    http_get: Option<WireHttp>,
    tcp_socket: Option<WirePort>,
    grpc: Option<WireGrpc>,
    timeout_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WireHttp {
    path: Option<String>,
    port: u16,
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<WireHeader>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireHeader {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePort {
    port: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireGrpc {
    port: u16,
    service: Option<String>,
}

impl AppProbes {
    /// Parses `PALISADE_APP_PROBES`; an empty string means no probes.
    pub fn parse(json: &str) -> Result<Self, ProbeConfigError> {
        if json.trim().is_empty() {
            return Ok(Self::default());
        }
        let wire: BTreeMap<String, WireProbe> = serde_json::from_str(json)?;
        if wire.len() > MAX_PROBES {
            return Err(ProbeConfigError::TooMany(wire.len()));
        }
        let mut probes = BTreeMap::new();
        for (key, probe) in wire {
            let invalid = |reason: String| ProbeConfigError::Invalid {
                key: key.clone(),
                reason,
            };
            let rest = key
                .strip_prefix(PATH_PREFIX)
                .ok_or_else(|| invalid(format!("the admin path must start with {PATH_PREFIX}")))?;
            if rest.is_empty() || rest.bytes().any(|b| !is_path_byte(b)) {
                return Err(invalid(
                    "the admin path may hold only letters, digits, '-', '_', '.' and '/'".into(),
                ));
            }
            let probe = convert(probe).map_err(invalid)?;
            probes.insert(key, probe);
        }
        Ok(Self {
            probes,
            running: Arc::new(Semaphore::new(MAX_CONCURRENT)),
        })
    }

    /// The probe served at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&AppProbe> {
        self.probes.get(path)
    }

    /// How many probes are configured.
    pub fn len(&self) -> usize {
        self.probes.len()
    }

    /// Whether no probe is configured.
    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }

    /// Runs the probe at `path` against the app on `app_host`: `Ok` when healthy, else why not.
    /// `None` when no probe is configured there.
    pub async fn run(&self, path: &str, app_host: IpAddr) -> Option<Result<(), String>> {
        let probe = self.get(path)?;
        let Ok(_permit) = self.running.clone().try_acquire_owned() else {
            return Some(Err(format!(
                "more than {MAX_CONCURRENT} probes at once; try again"
            )));
        };
        let outcome = tokio::time::timeout(probe.timeout, run_handler(&probe.handler, app_host))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", probe.timeout)));
        Some(outcome)
    }
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/')
}

fn convert(probe: WireProbe) -> Result<AppProbe, String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1));
    if timeout > MAX_TIMEOUT {
        return Err(format!("timeoutSeconds over {}", MAX_TIMEOUT.as_secs()));
    }
    let nonzero = |port: u16| {
        if port == 0 {
            Err("port 0".to_owned())
        } else {
            Ok(port)
        }
    };
    let handler = match (probe.http_get, probe.tcp_socket, probe.grpc) {
        (Some(http), None, None) => {
            let tls = match http.scheme.as_deref().unwrap_or("HTTP") {
                "HTTP" => false,
                "HTTPS" => true,
                other => return Err(format!("scheme {other:?}: HTTP or HTTPS")),
            };
            let path = http.path.unwrap_or_else(|| "/".into());
            if !path.starts_with('/') {
                return Err(format!("path {path:?} must start with '/'"));
            }
            let path_and_query = path
                .parse::<http::uri::PathAndQuery>()
                .map_err(|e| format!("path {path:?}: {e}"))?;
            let headers = http
                .http_headers
                .into_iter()
                .map(|h| {
                    let name = HeaderName::try_from(h.name.as_str())
                        .map_err(|e| format!("header name {:?}: {e}", h.name))?;
                    let value = HeaderValue::try_from(h.value.as_str())
                        .map_err(|e| format!("header {name} value: {e}"))?;
                    Ok((name, value))
                })
                .collect::<Result<Vec<_>, String>>()?;
            ProbeHandler::Http {
                tls,
                port: nonzero(http.port)?,
                path_and_query,
                headers,
            }
        }
        (None, Some(tcp), None) => ProbeHandler::Tcp {
            port: nonzero(tcp.port)?,
        },
        (None, None, Some(grpc)) => ProbeHandler::Grpc {
            port: nonzero(grpc.port)?,
            service: grpc.service.unwrap_or_default(),
        },
        _ => return Err("exactly one of httpGet, tcpSocket, grpc".into()),
    };
    Ok(AppProbe { handler, timeout })
}

async fn run_handler(handler: &ProbeHandler, app_host: IpAddr) -> Result<(), String> {
    let connect = |port: u16| async move {
        let addr = SocketAddr::new(app_host, port);
        TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))
    };
    match handler {
        ProbeHandler::Tcp { port } => connect(*port).await.map(drop),
        ProbeHandler::Http {
            tls,
            port,
            path_and_query,
            headers,
        } => {
            let stream = connect(*port).await?;
            let status = if *tls {
                let connector = tokio_rustls::TlsConnector::from(insecure_client_config());
                let name = rustls_pki_types::ServerName::IpAddress(app_host.into());
                let stream = connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS to the app: {e}"))?;
                http_get(stream, app_host, *port, path_and_query, headers).await?
            } else {
                http_get(stream, app_host, *port, path_and_query, headers).await?
            };
            if (200..400).contains(&status.as_u16()) {
                Ok(())
            } else {
                Err(format!("the app answered {status}"))
            }
        }
        ProbeHandler::Grpc { port, service } => {
            let stream = connect(*port).await?;
            grpc_check(stream, app_host, *port, service).await
        }
    }
}

async fn http_get<S>(
    stream: S,
    host: IpAddr,
    port: u16,
    path_and_query: &http::uri::PathAndQuery,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<StatusCode, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP to the app: {e}"))?;
    tokio::spawn(conn);
    let mut request = Request::new(Empty::<Bytes>::new());
    *request.uri_mut() = Uri::from(path_and_query.clone());
    let authority = SocketAddr::new(host, port).to_string();
    let request_headers = request.headers_mut();
    // Kubelet's defaults, which the probe's own headers may override.
    request_headers.insert(header::USER_AGENT, HeaderValue::from_static("kube-probe"));
    request_headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    if let Ok(value) = HeaderValue::try_from(authority) {
        request_headers.insert(header::HOST, value);
    }
    for (name, value) in headers {
        request_headers.insert(name.clone(), value.clone());
    }
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP to the app: {e}"))?;
    Ok(response.status())
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`; status 1 is SERVING.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

const SERVING: i32 = 1;

async fn grpc_check(
    stream: TcpStream,
    host: IpAddr,
    port: u16,
    service: &str,
) -> Result<(), String> {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 to the app: {e}"))?;
    tokio::spawn(conn);
    let message = prost::Message::encode_to_vec(&HealthCheckRequest {
        service: service.to_owned(),
    });
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).map_err(|_| "service name too long")?);
    frame.put_slice(&message);
    let uri = Uri::builder()
        .scheme("http")
        .authority(SocketAddr::new(host, port).to_string())
        .path_and_query("/grpc.health.v1.Health/Check")
        .build()
        .map_err(|e| format!("gRPC request: {e}"))?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, "kube-probe")
        .body(Full::new(frame.freeze()))
        .map_err(|e| format!("gRPC request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("gRPC to the app: {e}"))?;
    if response.status() != StatusCode::OK {
        return Err(format!("the app answered HTTP {}", response.status()));
    }
    let (parts, body) = response.into_parts();
    let collected = http_body_util::Limited::new(body, MAX_GRPC_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("gRPC answer: {e}"))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let grpc_status = trailers
        .get("grpc-status")
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("missing");
    if grpc_status != "0" {
        return Err(format!("the app answered grpc-status {grpc_status}"));
    }
    let mut body = collected.to_bytes();
    if body.len() < 5 || body[0] != 0 {
        return Err("the app's health answer is not one uncompressed gRPC message".into());
    }
    body.advance(1);
    let len = usize::try_from(body.get_u32()).unwrap_or(usize::MAX);
    if len != body.len() {
        return Err("the app's health answer has a wrong length".into());
    }
    let answer: HealthCheckResponse =
        prost::Message::decode(body).map_err(|e| format!("the app's health answer: {e}"))?;
    if answer.status == SERVING {
        Ok(())
    } else {
        Err(format!(
            "the app reports status {} (not SERVING)",
            answer.status
        ))
    }
}

/// A TLS client that accepts any server certificate: kubelet's HTTPS probes do not verify
/// the app's certificate either, and the connection never leaves the pod.
fn insecure_client_config() -> Arc<rustls::ClientConfig> {
    use std::sync::OnceLock;
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map(|builder| {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
                        .with_no_client_auth()
                });
            // The default protocol versions are always supported by ring.
            Arc::new(config.unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            }))
        })
        .clone()
}

/// Accepts every server certificate but still checks handshake signatures.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_handler_kind() {
        let probes = AppProbes::parse(
            r#"{"/app-health/web/livez":{"httpGet":{"path":"/healthz?x=1","port":8080,"scheme":"HTTPS","httpHeaders":[{"name":"x-probe","value":"1"}]},"timeoutSeconds":3},
                "/app-health/web/readyz":{"tcpSocket":{"port":8080}},
                "/app-health/grpc-app/startupz":{"grpc":{"port":9090}}}"#,
        )
        .expect("valid");
        assert_eq!(probes.len(), 3);
        let live = probes.get("/app-health/web/livez").expect("live");
        assert_eq!(live.timeout, Duration::from_secs(3));
        assert!(
            matches!(&live.handler, ProbeHandler::Http { tls: true, port: 8080, path_and_query, headers }
            if path_and_query.as_str() == "/healthz?x=1" && headers.len() == 1)
        );
        assert_eq!(
            probes.get("/app-health/web/readyz").map(|p| &p.handler),
            Some(&ProbeHandler::Tcp { port: 8080 })
        );
        assert_eq!(
            probes
                .get("/app-health/grpc-app/startupz")
                .map(|p| (&p.handler, p.timeout)),
            Some((
                &ProbeHandler::Grpc {
                    port: 9090,
                    service: String::new()
                },
                Duration::from_secs(1)
            ))
        );
        assert!(AppProbes::parse("").expect("empty").is_empty());
    }

    #[test]
    fn refuses_what_would_widen_or_break_the_admin_port() {
        for (json, needle) in [
            (
                r#"{"/config":{"tcpSocket":{"port":1}}}"#,
                "must start with /app-health/",
            ),
            (
                r#"{"/app-health/":{"tcpSocket":{"port":1}}}"#,
                "may hold only",
            ),
            (
                r#"{"/app-health/a?b":{"tcpSocket":{"port":1}}}"#,
                "may hold only",
            ),
            (r#"{"/app-health/a":{"tcpSocket":{"port":0}}}"#, "port 0"),
            (
                r#"{"/app-health/a":{"tcpSocket":{"port":70000}}}"#,
                "not valid",
            ),
            (
                r#"{"/app-health/a":{"httpGet":{"port":1,"path":"x"}}}"#,
                "must start with '/'",
            ),
            (
                r#"{"/app-health/a":{"httpGet":{"port":1,"scheme":"FTP"}}}"#,
                "HTTP or HTTPS",
            ),
            (
                r#"{"/app-health/a":{"httpGet":{"port":1,"httpHeaders":[{"name":"bad name","value":"x"}]}}}"#,
                "header name",
            ),
            (
                r#"{"/app-health/a":{"tcpSocket":{"port":1},"grpc":{"port":2}}}"#,
                "exactly one",
            ),
            (r#"{"/app-health/a":{}}"#, "exactly one"),
            (
                r#"{"/app-health/a":{"exec":{"command":["true"]}}}"#,
                "not valid",
            ),
            (
                r#"{"/app-health/a":{"tcpSocket":{"port":1},"timeoutSeconds":61}}"#,
                "timeoutSeconds",
            ),
            ("[1]", "not valid"),
        ] {
            let err = AppProbes::parse(json).expect_err(json).to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
        let many: BTreeMap<String, serde_json::Value> = (0..=MAX_PROBES)
            .map(|i| {
                (
                    format!("/app-health/c{i}/livez"),
                    serde_json::json!({"tcpSocket":{"port":1}}),
                )
            })
            .collect();
        let err = AppProbes::parse(&serde_json::to_string(&many).expect("json"))
            .expect_err("too many")
            .to_string();
        assert!(err.contains("at most"), "{err}");
    }
}
