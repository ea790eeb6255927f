//! Test mesh of two real proxies on loopback, configured statically (the same conversion
//! discovery uses), with real apps: an HTTP app that echoes what it received, and a TCP
//! echo server that counts the connections reaching it.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use palisade_certs::{CaOptions, CertificateAuthority, Credentials, SpiffeId, TrustDomain};
use palisade_proto::v1::{self, discovery_response::Resources};
use palisade_proxy::{ConfigSource, Proxy, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Upper bound for any single step; a test fails rather than hangs.
pub const STEP: Duration = Duration::from_secs(10);

pub const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
pub const SEARCH: &str = "spiffe://cluster.local/ns/shop/sa/search";
/// The Service ports the client addresses.
pub const HTTP_PORT: u16 = 8080;
pub const TCP_PORT: u16 = 9000;

/// Bounds a future by [`STEP`].
pub async fn step<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {STEP:?}"))
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

// === protos ===

pub fn exact(s: &str) -> v1::StringMatch {
    v1::StringMatch {
        kind: Some(v1::string_match::Kind::Exact(s.into())),
    }
}

pub fn prefix(s: &str) -> v1::StringMatch {
    v1::StringMatch {
        kind: Some(v1::string_match::Kind::Prefix(s.into())),
    }
}

pub fn policy(name: &str, action: v1::Action, rules: Vec<v1::Rule>) -> v1::AuthorizationPolicy {
    v1::AuthorizationPolicy {
        namespace: "shop".into(),
        name: name.into(),
        action: action as i32,
        dry_run: false,
        rules,
    }
}

pub fn response(resources: Resources) -> v1::DiscoveryResponse {
    let type_url = match &resources {
        Resources::Workload(_) => v1::WORKLOAD_TYPE_URL,
        Resources::Services(_) => v1::SERVICES_TYPE_URL,
        Resources::TrustBundle(_) => v1::TRUST_BUNDLE_TYPE_URL,
        Resources::Mesh(_) => v1::MESH_TYPE_URL,
        Resources::Authorization(_) => v1::AUTHORIZATION_TYPE_URL,
        Resources::Egress(_) => v1::EGRESS_TYPE_URL,
        Resources::NetworkPolicy(_) => v1::NETWORK_POLICY_TYPE_URL,
    };
    v1::DiscoveryResponse {
        type_url: type_url.into(),
        version_info: "test".into(),
        nonce: String::new(),
        resources: Some(resources),
    }
}

pub fn authz(policies: Vec<v1::AuthorizationPolicy>) -> v1::DiscoveryResponse {
    response(Resources::Authorization(v1::AuthorizationSnapshot {
        policies,
    }))
}

pub fn egress(rules: Vec<v1::EgressRule>) -> v1::DiscoveryResponse {
    response(Resources::Egress(v1::EgressSnapshot { rules }))
}

/// No NetworkPolicy selects the workload (proxies wait for this type like every other).
pub fn unrestricted_network_policy() -> v1::DiscoveryResponse {
    response(Resources::NetworkPolicy(
        v1::NetworkPolicySnapshot::default(),
    ))
}

pub fn mesh_settings(
    default_allow: bool,
    allow_any: bool,
    hide: bool,
    permissive: bool,
) -> v1::DiscoveryResponse {
    response(Resources::Mesh(v1::MeshSettings {
        trust_domain: "cluster.local".into(),
        root_namespace: "palisade-system".into(),
        mtls_mode: if permissive {
            v1::MtlsMode::Permissive
        } else {
            v1::MtlsMode::Strict
        } as i32,
        outbound_policy: if allow_any {
            v1::OutboundPolicy::AllowAny
        } else {
            v1::OutboundPolicy::RegistryOnly
        } as i32,
        default_authorization: if default_allow {
            v1::DefaultAuthorization::Allow
        } else {
            v1::DefaultAuthorization::Deny
        } as i32,
        hide_denial_reasons: hide,
        certificate_lifetime_seconds: 3600,
        ..Default::default()
    }))
}

// === apps ===

/// An HTTP/1.1 app answering `<path and query>`, counting requests and keeping the headers
/// of each.
pub struct HttpApp {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub headers: Arc<Mutex<Vec<http::HeaderMap>>>,
}

pub async fn http_app(shutdown: CancellationToken) -> HttpApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let headers = Arc::new(Mutex::new(Vec::new()));
    let count = requests.clone();
    let seen = headers.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            let count = count.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        count.fetch_add(1, Ordering::SeqCst);
                        seen.lock().unwrap().push(req.headers().clone());
                        let body = req
                            .uri()
                            .path_and_query()
                            .map_or("/".to_owned(), |pq| pq.as_str().to_owned());
                        async move {
                            // `/slow...` holds its connection a while; `/big...` answers
                            // 4 MiB, more than any socket buffer holds.
                            if body.starts_with("/slow") {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                            let body = if body.starts_with("/big") {
                                Bytes::from(vec![b'x'; 4 << 20])
                            } else {
                                Bytes::from(body)
                            };
                            Ok::<_, Infallible>(Response::new(Full::new(body)))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    HttpApp {
        addr,
        requests,
        headers,
    }
}

/// A TCP echo server counting the connections that reach it.
pub struct EchoApp {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
}

pub async fn echo_app(shutdown: CancellationToken) -> EchoApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    EchoApp { addr, connections }
}

// === the mesh ===

/// The Service snapshot naming `search.shop` (8080 → the HTTP app, 9000 → the echo app),
/// served by the sidecar at `127.0.0.1:<proxy_port>` that must present `identity`.
pub fn search_service(
    app_port: u16,
    echo_port: u16,
    proxy_port: u16,
    identity: &str,
) -> v1::DiscoveryResponse {
    let service = v1::Service {
        name: "search".into(),
        namespace: "shop".into(),
        hostnames: vec!["search.shop".into()],
        ports: vec![
            v1::ServicePort {
                name: "http".into(),
                port: HTTP_PORT.into(),
                target_port: app_port.into(),
                protocol: v1::Protocol::Http as i32,
            },
            v1::ServicePort {
                name: "tcp".into(),
                port: TCP_PORT.into(),
                target_port: echo_port.into(),
                protocol: v1::Protocol::Tcp as i32,
            },
        ],
        endpoints: vec![v1::Endpoint {
            address: "127.0.0.1".into(),
            proxy_port: proxy_port.into(),
            spiffe_id: identity.into(),
            workload: "search".into(),
        }],
    };
    response(Resources::Services(v1::ServiceSnapshot {
        services: vec![service],
    }))
}

/// Two proxies: `frontend` (the client side) and `search` (the server side, fronting an
/// HTTP app on Service port 8080 and a TCP echo app on Service port 9000).
pub struct Mesh {
    pub frontend: Proxy,
    pub search: Proxy,
    pub app: HttpApp,
    pub echo: EchoApp,
    pub shutdown: CancellationToken,
}

/// What to start the mesh with.
pub struct MeshOptions {
    pub default_allow: bool,
    pub allow_any: bool,
    pub hide_denial_reasons: bool,
    pub search_policies: Vec<v1::AuthorizationPolicy>,
    pub frontend_egress: Vec<v1::EgressRule>,
    pub log_decisions: bool,
    /// MeshConfig `mtls.mode: PERMISSIVE` (else STRICT).
    pub permissive: bool,
    /// Bounds of both proxies.
    pub limits: palisade_proxy::Limits,
    /// Kubelet probes served on search's admin port.
    pub search_probes: Option<Arc<palisade_proxy::probes::AppProbes>>,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            default_allow: true,
            allow_any: false,
            hide_denial_reasons: false,
            search_policies: Vec::new(),
            frontend_egress: Vec::new(),
            log_decisions: false,
            permissive: false,
            limits: palisade_proxy::Limits::default(),
            search_probes: None,
        }
    }
}

fn credentials(ca: &CertificateAuthority, identity: &str) -> Credentials {
    let (leaf, key) = ca.issue(&id(identity), Duration::from_secs(3600)).unwrap();
    Credentials::new(&leaf, &key).unwrap()
}

fn config(
    identity: &str,
    name: &str,
    credentials: Credentials,
    snapshots: Vec<v1::DiscoveryResponse>,
    log_decisions: bool,
    limits: &palisade_proxy::Limits,
) -> ProxyConfig {
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    ProxyConfig {
        identity: id(identity),
        workload: name.into(),
        namespace: "shop".into(),
        source: ConfigSource::Static {
            credentials,
            snapshots,
        },
        inbound_addr: local(0),
        outbound_addr: local(0),
        admin_addr: local(0),
        app_host: "127.0.0.1".parse().unwrap(),
        drain_timeout: Duration::from_secs(1),
        control_runtime: None,
        debug_headers: false,
        log_decisions,
        detect_timeout: palisade_proxy::DEFAULT_DETECT_TIMEOUT,
        limits: limits.clone(),
        app_probes: Default::default(),
    }
}

impl Mesh {
    pub async fn start(options: MeshOptions) -> Mesh {
        let shutdown = CancellationToken::new();
        let td = TrustDomain::new("cluster.local").unwrap();
        let (ca, _) = CertificateAuthority::generate(td, &CaOptions::default()).unwrap();
        let bundle = response(Resources::TrustBundle(v1::TrustBundle {
            trust_domain: "cluster.local".into(),
            roots_pem: ca.bundle().to_pem_list(),
            issuer_fingerprint: String::new(),
        }));
        let settings = mesh_settings(
            options.default_allow,
            options.allow_any,
            options.hide_denial_reasons,
            options.permissive,
        );
        let app = http_app(shutdown.clone()).await;
        let echo = echo_app(shutdown.clone()).await;

        let workload = |name: &str, identity: &str, ports: Vec<v1::WorkloadPort>| {
            response(Resources::Workload(v1::WorkloadSnapshot {
                name: name.into(),
                namespace: "shop".into(),
                spiffe_id: identity.into(),
                labels: Default::default(),
                ports,
            }))
        };
        let search = palisade_proxy::start(
            ProxyConfig {
                app_probes: options.search_probes.clone().unwrap_or_default(),
                ..config(
                    SEARCH,
                    "search",
                    credentials(&ca, SEARCH),
                    vec![
                        workload(
                            "search",
                            SEARCH,
                            vec![
                                v1::WorkloadPort {
                                    name: "http".into(),
                                    port: app.addr.port().into(),
                                    protocol: v1::Protocol::Http as i32,
                                },
                                v1::WorkloadPort {
                                    name: "tcp".into(),
                                    port: echo.addr.port().into(),
                                    protocol: v1::Protocol::Tcp as i32,
                                },
                            ],
                        ),
                        settings.clone(),
                        bundle.clone(),
                        response(Resources::Services(v1::ServiceSnapshot::default())),
                        authz(options.search_policies),
                        egress(vec![]),
                        unrestricted_network_policy(),
                    ],
                    options.log_decisions,
                    &options.limits,
                )
            },
            shutdown.clone(),
        )
        .await
        .unwrap();

        let frontend = palisade_proxy::start(
            config(
                FRONTEND,
                "frontend",
                credentials(&ca, FRONTEND),
                vec![
                    workload("frontend", FRONTEND, vec![]),
                    settings,
                    bundle,
                    search_service(
                        app.addr.port(),
                        echo.addr.port(),
                        search.inbound_addr().port(),
                        SEARCH,
                    ),
                    authz(vec![]),
                    egress(options.frontend_egress),
                    unrestricted_network_policy(),
                ],
                options.log_decisions,
                &options.limits,
            ),
            shutdown.clone(),
        )
        .await
        .unwrap();
        step("proxies ready", async {
            frontend.ready().await;
            search.ready().await;
        })
        .await;
        Mesh {
            frontend,
            search,
            app,
            echo,
            shutdown,
        }
    }

    /// Sends `GET <path>` for `host` through the frontend's outbound listener.
    pub async fn get(&self, host: &str, path: &str) -> Response<Bytes> {
        let req = Request::get(path)
            .header(http::header::HOST, host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(self.frontend.outbound_addr(), req).await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        step("frontend stops", self.frontend.wait()).await;
        step("search stops", self.search.wait()).await;
    }
}

/// One HTTP/1.1 request on a new connection to `addr`.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Bytes> {
    step("HTTP request", async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let response = sender.send_request(req).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Response::from_parts(parts, body)
    })
    .await
}

/// Opens `CONNECT target` through the proxy's outbound listener; returns the status line
/// and, on 200, the tunnel.
pub async fn connect(outbound: SocketAddr, target: &str) -> (String, TcpStream) {
    step("CONNECT", async {
        let mut tcp = TcpStream::connect(outbound).await.unwrap();
        tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        // Read the response head byte by byte, so nothing of the tunnel is consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if tcp.read(&mut b).await.unwrap() == 0 {
                break;
            }
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        (head, tcp)
    })
    .await
}

/// Writes `data` and reads the same number of bytes back.
pub async fn echo_round_trip(tcp: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    step("echo", async {
        tcp.write_all(data).await.unwrap();
        let mut buf = vec![0u8; data.len()];
        tcp.read_exact(&mut buf).await.unwrap();
        buf
    })
    .await
}

/// Reads until EOF (or a reset); returns what arrived.
pub async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
    step("connection closes", async {
        let mut out = Vec::new();
        let _ = tcp.read_to_end(&mut out).await;
        out
    })
    .await
}

/// The value of the sample of `name` whose labels contain every `labels` pair.
pub fn metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = proxy.metrics().encode();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// === log capture ===

thread_local! {
    /// Where this thread's log lines go, if it captures.
    static CAPTURE: std::cell::RefCell<Option<Arc<Mutex<Vec<u8>>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Captures `tracing` output of the current thread. Tests run on a current-thread runtime,
/// so every task of their proxies logs on the test's thread. One global subscriber routes
/// lines to the capturing thread: per-thread `set_default` subscribers are unreliable in a
/// parallel test binary, because callsite interest is cached process-wide.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

/// Stops capturing on drop.
pub struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

impl Logs {
    pub fn install(&self) -> CaptureGuard {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(ThreadWriter)
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .finish();
            tracing::subscriber::set_global_default(subscriber).unwrap();
        });
        CAPTURE.with(|c| *c.borrow_mut() = Some(self.0.clone()));
        CaptureGuard
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Lines of target `palisade::authz`.
    pub fn authz_lines(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains("palisade::authz"))
            .map(str::to_owned)
            .collect()
    }
}

/// Writes to the current thread's capture buffer, or nowhere.
struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(sink) = &*c.borrow() {
                sink.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ThreadWriter {
    type Writer = ThreadWriter;
    fn make_writer(&'a self) -> Self::Writer {
        ThreadWriter
    }
}
