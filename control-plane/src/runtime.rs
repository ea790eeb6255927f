//! Wiring: bind the listeners, start the servers and background tasks, and hand back a
//! handle with the real addresses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use palisade_certs::rotation::RotationError;
use palisade_certs::{ActiveCa, CaError, SpiffeId, TlsError, TrustBundle, TrustDomain};
use palisade_proto::v1::discovery_server::DiscoveryServer;
use palisade_proto::v1::identity_server::IdentityServer;
use palisade_proto::v1::telemetry_server::TelemetryServer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::ca_source::CaSource;
use crate::config::{self, ConfigError, ConfigErrors, DocumentRef};
use crate::discovery::{DiscoveryService, ProxyRegistry, ProxyStatus};
use crate::identity::IdentityService;
use crate::index::Published;
use crate::metrics::Metrics;
use crate::model::MeshSnapshot;
use crate::tokens::{TokenLedger, TokenStore};
use crate::transport::{self, ConnectionLimits, ServingCertError};
use crate::{control_plane_identity, watcher};

/// Default gRPC (identity + discovery) address (CONTRACT: port 15012).
pub const DEFAULT_GRPC_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 15012);
/// Default admin address (CONTRACT: port 15014).
pub const DEFAULT_ADMIN_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 15014);

/// How long open gRPC connections get to finish after shutdown is signalled.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Finished TLS handshakes waiting for tonic to take them.
const INCOMING_BUFFER: usize = 64;
/// HTTP/2 pings on idle connections, so dead proxies are noticed and their streams closed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the control plane needs to start.
#[derive(Debug)]
pub struct ControlPlaneConfig {
    /// Directory of YAML resources.
    pub config_dir: PathBuf,
    /// The mesh CA: fixed, or a directory read at start and polled for rotation stages;
    /// its trust domain must be MeshConfig's.
    pub ca: CaSource,
    /// Bootstrap tokens of the workloads.
    pub tokens: TokenStore,
    /// gRPC listener (identity and discovery over TLS); port 0 picks a free port.
    pub grpc_addr: SocketAddr,
    /// Admin HTTP listener; `None` disables it.
    pub admin_addr: Option<SocketAddr>,
    /// Reload the directory when its files change.
    pub watch: bool,
    /// Workload addresses assigned by the runner, replacing `spec.address` (empty: the
    /// directory's addresses).
    pub assigned_addresses: config::AddressAssignments,
    /// Bounds on what gRPC clients can hold.
    pub limits: GrpcLimits,
    /// Answer the live view (`/tap`, `/top`) on the admin port to non-loopback callers.
    pub live_view_remote: bool,
    /// Read the mesh from the cluster instead of `config_dir` (which then only names the
    /// source in messages); already listed once, see [`crate::k8s`].
    pub kubernetes: Option<crate::k8s::RunningSource>,
    /// Whether proxies count every inbound request for `authz suggest` and `authz diff`,
    /// and where the counts are kept.
    pub observe: Observe,
}

/// What becomes of the sidecars' observations ([`crate::observed`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Observe {
    /// Counted, kept in memory only.
    #[default]
    InMemory,
    /// Counted, saved to this file every [`OBSERVED_SAVE_EVERY`] and at shutdown, and
    /// read back at start.
    Saved(PathBuf),
    /// Not counted: proxies are not asked to observe.
    Off,
}

/// How often the observation table is saved (with [`Observe::Saved`]) and pruned.
pub const OBSERVED_SAVE_EVERY: Duration = Duration::from_secs(30);

/// Bounds on the gRPC listener, which anyone who can reach it may use before proving an
/// identity. Every default is printed by `palisade control-plane --help`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcLimits {
    /// Open connections (handshaking ones included); more are closed at once.
    pub max_connections: usize,
    /// Open connections without a client certificate (bootstrap); kept below
    /// `max_connections` so proxies with a certificate always find room.
    pub max_anonymous_connections: usize,
    /// TLS handshakes in progress; further clients wait in the listen backlog.
    pub max_handshakes: usize,
    /// Time a client gets to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS per connection.
    pub max_concurrent_streams: u32,
    /// Requests handled at once per connection; more wait for a slot.
    pub concurrency_per_connection: usize,
    /// Deadline of a call until its response starts: the whole of a unary call such as
    /// `Certify`; a discovery stream only until it is accepted, so it may live on.
    pub request_timeout: Duration,
    /// Streams the client reset before they were accepted, allowed to wait at once before
    /// the connection gets GOAWAY (CVE-2023-44487, rapid reset).
    pub max_pending_reset_streams: usize,
    /// Streams the server had to reset because of the client's protocol errors, over a
    /// connection's life, before it gets GOAWAY (CVE-2025-8671, "MadeYouReset").
    pub max_local_error_resets: usize,
    /// Largest `Identity` request message (a CSR is under 1 KiB).
    pub max_identity_message: usize,
    /// Largest telemetry report (a proxy sends at most 512 decisions of a few hundred bytes).
    pub max_telemetry_message: usize,
    /// Age at which a connection is sent GOAWAY (no new streams), and at which a discovery
    /// stream is ended (the proxy reconnects): so no connection outlives the client
    /// certificate it was verified with by more than twice this, nor holds a place forever.
    pub max_connection_age: Duration,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_anonymous_connections: 1024,
            max_handshakes: 256,
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_streams: 100,
            concurrency_per_connection: 32,
            request_timeout: Duration::from_secs(30),
            max_pending_reset_streams: 20,
            max_local_error_resets: 100,
            max_identity_message: 16 * 1024,
            max_telemetry_message: 1 << 20,
            max_connection_age: Duration::from_secs(3600),
        }
    }
}

/// Why the control plane did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration directory is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The CA and the mesh disagree on the trust domain.
    #[error(
        "the CA issues for trust domain {ca}, but the mesh's trust domain is {mesh} \
         ({where_}); use a CA of trust domain {mesh} or set MeshConfig spec.trustDomain to {ca}"
    )]
    TrustDomainMismatch {
        /// The CA's trust domain.
        ca: TrustDomain,
        /// MeshConfig's `spec.trustDomain` (or the default).
        mesh: TrustDomain,
        /// Where the mesh's value comes from, in words.
        where_: String,
    },
    /// The CA directory cannot be loaded.
    #[error("{0}")]
    Ca(#[from] RotationError),
    /// The serving certificate could not be issued.
    #[error("cannot issue the control plane's serving certificate: {0}")]
    Certificate(#[source] CaError),
    /// The TLS configuration could not be built.
    #[error("cannot build the gRPC TLS configuration: {0}")]
    Tls(#[source] TlsError),
    /// A listener could not be bound.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration directory cannot be watched.
    #[error("cannot watch {dir} for changes: {source}")]
    Watch {
        /// The directory.
        dir: PathBuf,
        /// notify's error.
        source: notify::Error,
    },
}

impl From<ServingCertError> for StartError {
    fn from(e: ServingCertError) -> Self {
        match e {
            ServingCertError::Issue(e) => StartError::Certificate(e),
            ServingCertError::Tls(e) => StartError::Tls(e),
        }
    }
}

/// State shared by the handle, the servers and the background tasks.
pub(crate) struct Shared {
    config_dir: PathBuf,
    assigned_addresses: config::AddressAssignments,
    ca: watch::Sender<Arc<ActiveCa>>,
    state: watch::Sender<Arc<Published>>,
    /// Serialises load-and-publish, so a slow reload cannot publish over a newer one; holds
    /// the YAML of the files last loaded, so a reload parses only what changed.
    reload_lock: Mutex<config::ParseCache>,
    tokens: Arc<RwLock<Arc<TokenStore>>>,
    metrics: Arc<Metrics>,
    proxies: ProxyRegistry,
}

/// Where the mesh's trust domain comes from, in words.
fn trust_domain_origin(snapshot: &MeshSnapshot) -> String {
    match snapshot.settings_source() {
        Some(src) => format!("MeshConfig in {src}"),
        None => "the default, as there is no MeshConfig".to_owned(),
    }
}

impl Shared {
    /// The trust domain of a new snapshot must be the CA's: certificates cannot change
    /// trust domain at runtime.
    fn check_trust_domain(&self, snapshot: &MeshSnapshot) -> Result<(), ConfigErrors> {
        let mesh = &snapshot.settings().trust_domain;
        let ca = Arc::clone(&self.ca.borrow().ca);
        if mesh == ca.trust_domain() {
            return Ok(());
        }
        let message = format!(
            "trust domain {mesh} differs from the CA's ({}); it cannot change while running",
            ca.trust_domain()
        );
        let error = match snapshot.settings_source() {
            Some(src) => ConfigError {
                file: src.file.clone(),
                location: None,
                document: Some(DocumentRef {
                    index: src.document,
                    kind: "MeshConfig".to_owned(),
                    namespace: String::new(),
                    name: String::new(),
                }),
                field: Some("spec.trustDomain".to_owned()),
                message,
            },
            None => ConfigError::file(&self.config_dir, message),
        };
        Err(error.into())
    }

    fn publish(&self, snapshot: MeshSnapshot) -> Result<(), ConfigErrors> {
        self.check_trust_domain(&snapshot)?;
        let ca = Arc::clone(&self.ca.borrow().ca);
        let published = Published::new(
            Arc::new(snapshot),
            ca.bundle().clone(),
            ca.issuer_fingerprint(),
        );
        self.state.send_replace(Arc::new(published));
        Ok(())
    }

    /// Serves `active` from now on (a rotation stage, or new CA files): new certificates
    /// come from it, and its trust bundle goes to every proxy with the current snapshot.
    pub(crate) fn set_ca(&self, active: Arc<ActiveCa>) {
        let _guard = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.ca.send_replace(Arc::clone(&active));
        let snapshot = Arc::clone(&self.state.borrow().snapshot);
        let published = Published::new(
            snapshot,
            active.ca.bundle().clone(),
            active.ca.issuer_fingerprint(),
        );
        self.state.send_replace(Arc::new(published));
    }

    /// Publishes a snapshot another source built (or counts its rejection), serialised with
    /// reloads like [`ControlPlane::update`].
    pub(crate) fn publish_built(
        &self,
        built: Result<MeshSnapshot, ConfigErrors>,
    ) -> Result<(), ConfigErrors> {
        let _guard = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let result = built.and_then(|s| self.publish(s));
        self.metrics.reloaded(result.is_ok());
        result
    }

    pub(crate) fn reload(&self) -> Result<(), ConfigErrors> {
        let mut cache = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let result =
            config::load_dir_cached(&self.config_dir, &self.assigned_addresses, &mut cache)
                .and_then(|s| self.publish(s));
        self.metrics.reloaded(result.is_ok());
        result
    }

    pub(crate) fn config_dir(&self) -> &std::path::Path {
        &self.config_dir
    }
}

/// A running control plane.
pub struct ControlPlane {
    shared: Arc<Shared>,
    grpc_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    identity: SpiffeId,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_addr", &self.admin_addr)
            .field("identity", &self.identity)
            .field("config_dir", &self.shared.config_dir)
            .finish_non_exhaustive()
    }
}

/// Loads the configuration, binds the listeners and starts serving; returns once both
/// listeners are bound, so clients can connect at once. Everything stops when `shutdown`
/// is cancelled; [`ControlPlane::wait`] resolves when it has.
pub async fn start(
    config: ControlPlaneConfig,
    shutdown: CancellationToken,
) -> Result<ControlPlane, StartError> {
    // The first reload then parses only the files edited since.
    let mut parse_cache = config::ParseCache::default();
    let mut config = config;
    let kubernetes = config.kubernetes.take();
    let snapshot = match &kubernetes {
        Some(source) => source.initial().clone(),
        None => config::load_dir_cached(
            &config.config_dir,
            &config.assigned_addresses,
            &mut parse_cache,
        )?,
    };
    let settings = snapshot.settings().clone();
    let active = Arc::new(config.ca.initial(&settings.trust_domain)?);
    if &settings.trust_domain != active.ca.trust_domain() {
        return Err(StartError::TrustDomainMismatch {
            ca: active.ca.trust_domain().clone(),
            mesh: settings.trust_domain.clone(),
            where_: trust_domain_origin(&snapshot),
        });
    }
    let identity = control_plane_identity(&settings.trust_domain);
    let cert = transport::issue_serving_cert(&active.ca, &identity, settings.certificate_lifetime)?;

    let grpc_listener = bind("gRPC", config.grpc_addr).await?;
    let grpc_addr = local_addr("gRPC", &grpc_listener, config.grpc_addr)?;
    let admin = match config.admin_addr {
        Some(addr) => {
            let listener = bind("admin HTTP", addr).await?;
            let bound = local_addr("admin HTTP", &listener, addr)?;
            Some((listener, bound))
        }
        None => None,
    };

    let metrics = Arc::new(Metrics::new());
    let published = Published::new(
        Arc::new(snapshot),
        active.ca.bundle().clone(),
        active.ca.issuer_fingerprint(),
    );
    let (state_tx, state_rx) = watch::channel(Arc::new(published));
    let (ca_tx, ca_rx) = watch::channel(Arc::clone(&active));
    let shared = Arc::new(Shared {
        config_dir: config.config_dir.clone(),
        assigned_addresses: config.assigned_addresses.clone(),
        ca: ca_tx,
        state: state_tx,
        reload_lock: Mutex::new(parse_cache),
        tokens: Arc::new(RwLock::new(Arc::new(config.tokens))),
        metrics: Arc::clone(&metrics),
        proxies: ProxyRegistry::new(),
    });
    let tracker = TaskTracker::new();
    // Created before any task starts, so a failure leaves nothing running.
    let watcher = if config.watch && kubernetes.is_none() {
        Some(
            watcher::DirWatcher::new(&config.config_dir).map_err(|source| StartError::Watch {
                dir: config.config_dir.clone(),
                source,
            })?,
        )
    } else {
        None
    };

    let (tls_tx, tls_rx) = watch::channel(cert.config);
    let (conn_tx, conn_rx) = mpsc::channel(INCOMING_BUFFER);
    let limits = &config.limits;
    tracker.spawn(transport::accept_loop(
        grpc_listener,
        tls_rx,
        conn_tx,
        ConnectionLimits::new(
            limits.max_connections,
            limits.max_anonymous_connections,
            limits.max_handshakes,
            limits.handshake_timeout,
        ),
        Arc::clone(&metrics),
        shutdown.clone(),
        tracker.clone(),
    ));
    tracker.spawn(transport::renew_serving_cert(
        ca_rx.clone(),
        identity.clone(),
        (cert.issued_at, cert.not_after),
        state_rx.clone(),
        tls_tx,
        Arc::clone(&metrics),
        shutdown.clone(),
    ));

    let identity_service = IdentityService {
        ca: ca_rx.clone(),
        state: state_rx.clone(),
        tokens: Arc::clone(&shared.tokens),
        ledger: Arc::new(TokenLedger::default()),
        metrics: Arc::clone(&metrics),
        reviewer: kubernetes.as_ref().map(crate::k8s::RunningSource::reviewer),
    };
    let observed = match &config.observe {
        Observe::Off => None,
        Observe::InMemory => Some(Arc::new(crate::observed::ObservedTable::default())),
        Observe::Saved(file) => Some(Arc::new(load_observed(file))),
    };
    let hub = Arc::new(crate::telemetry::Hub::observing(observed.clone()));
    if let (Some(table), Observe::Saved(file)) = (&observed, &config.observe) {
        tracker.spawn(save_observed(
            Arc::clone(table),
            file.clone(),
            shutdown.clone(),
        ));
    }
    let telemetry_service = crate::telemetry::service::TelemetryService {
        hub: Arc::clone(&hub),
        state: state_rx.clone(),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        max_age: limits.max_connection_age,
        streams: Arc::default(),
    };
    let discovery_service = DiscoveryService {
        state: state_rx,
        metrics: Arc::clone(&metrics),
        registry: shared.proxies.clone(),
        max_age: limits.max_connection_age,
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
    };
    // tonic hands hyper `None` for every HTTP/2 guard it is not given, which turns off
    // hyper's own defaults (stream and reset limits): each is set here.
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .concurrency_limit_per_connection(limits.concurrency_per_connection)
        .timeout(limits.request_timeout)
        .http2_max_pending_accept_reset_streams(Some(limits.max_pending_reset_streams))
        .http2_max_local_error_reset_streams(Some(limits.max_local_error_resets))
        // Without a grace period: tonic's grace skips the GOAWAY and only cuts the
        // connection later; long streams end themselves instead (discovery `max_age`).
        .max_connection_age(limits.max_connection_age)
        .add_service(
            IdentityServer::new(identity_service)
                .max_decoding_message_size(limits.max_identity_message),
        )
        .add_service(DiscoveryServer::new(discovery_service))
        .add_service(
            TelemetryServer::new(telemetry_service)
                .max_decoding_message_size(limits.max_telemetry_message),
        );
    let ready = Arc::new(AtomicBool::new(false));
    {
        let shutdown = shutdown.clone();
        let ready = Arc::clone(&ready);
        tracker.spawn(async move {
            let serve = router.serve_with_incoming_shutdown(
                ReceiverStream::new(conn_rx),
                shutdown.clone().cancelled_owned(),
            );
            let deadline = async {
                shutdown.cancelled().await;
                ready.store(false, Ordering::Release);
                tokio::time::sleep(DRAIN_GRACE).await;
            };
            tokio::select! {
                result = serve => if let Err(e) = result {
                    tracing::error!(error = %e, "the gRPC server failed");
                },
                _ = deadline => {
                    tracing::warn!("gRPC connections still open after the grace period: closing them");
                }
            }
            ready.store(false, Ordering::Release);
        });
    }
    let admin_addr = admin.map(|(listener, bound)| {
        let state = AdminState {
            ready: Arc::clone(&ready),
            metrics: Arc::clone(&metrics),
            ca: ca_rx.clone(),
            state: shared.state.subscribe(),
            proxies: shared.proxies.clone(),
            hub: Arc::clone(&hub),
            live_view_remote: config.live_view_remote,
        };
        tracker.spawn(admin::serve(
            listener,
            state,
            shutdown.clone(),
            tracker.clone(),
        ));
        bound
    });
    if let Some(watcher) = watcher {
        tracker.spawn(watcher.run(Arc::clone(&shared), shutdown.clone()));
    }
    if let CaSource::Dir { dir, poll } = &config.ca {
        tracker.spawn(crate::ca_source::watch_dir(
            dir.clone(),
            *poll,
            settings.trust_domain.clone(),
            Arc::clone(&shared),
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
    }
    tracker.spawn(crate::expiry::watch(
        ca_rx.clone(),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    if let Some(source) = kubernetes {
        let publisher = Arc::clone(&shared);
        let gauge = Arc::clone(&metrics);
        tracker.spawn(source.run(
            move |built| publisher.publish_built(built),
            ca_rx.clone(),
            move |count| gauge.unmeshed_pods(count),
            shutdown.clone(),
        ));
    }
    tracker.close();
    ready.store(true, Ordering::Release);

    let snapshot = shared.state.borrow().snapshot.clone();
    let s = snapshot.settings();
    tracing::info!(
        config_dir = %config.config_dir.display(),
        grpc = %grpc_addr,
        admin = ?admin_addr,
        identity = %identity,
        trust_domain = %s.trust_domain,
        workloads = snapshot.workloads().len(),
        services = snapshot.services().len(),
        authorization_policies = snapshot.authorization_policies().len(),
        egress_policies = snapshot.egress_policies().len(),
        mtls = ?s.mtls_mode,
        default_authorization = ?s.default_authorization,
        certificate_lifetime_secs = s.certificate_lifetime.as_secs(),
        watch = config.watch,
        limits = ?config.limits,
        "control plane serving"
    );
    Ok(ControlPlane {
        shared,
        grpc_addr,
        admin_addr,
        identity,
        tracker,
        shutdown,
    })
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

fn local_addr(
    what: &'static str,
    listener: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Bind { what, addr, source })
}

impl ControlPlane {
    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound admin address, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The identity the gRPC server presents (see [`control_plane_identity`]).
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The roots the mesh trusts.
    pub fn trust_bundle(&self) -> TrustBundle {
        self.shared.ca.borrow().ca.bundle().clone()
    }

    /// The CA in force (during a rotation, as its stage says).
    pub fn active_ca(&self) -> Arc<ActiveCa> {
        Arc::clone(&self.shared.ca.borrow())
    }

    /// The configuration in force.
    pub fn snapshot(&self) -> Arc<MeshSnapshot> {
        Arc::clone(&self.shared.state.borrow().snapshot)
    }

    /// Replaces the configuration and pushes what changed to every proxy. Refused (and the
    /// current one kept) if its trust domain differs from the CA's.
    pub fn update(&self, snapshot: MeshSnapshot) -> Result<(), ConfigErrors> {
        let _guard = self
            .shared
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.shared.publish(snapshot)
    }

    /// Re-reads the configuration directory; on error the last good configuration stays in
    /// force and the errors are returned.
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        self.shared.reload()
    }

    /// Replaces the bootstrap tokens (e.g. after adding workloads).
    pub fn set_tokens(&self, tokens: TokenStore) {
        let mut guard = self
            .shared
            .tokens
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *guard = Arc::new(tokens);
    }

    /// Every connected proxy, with what it was sent and acknowledged.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        self.shared.proxies.list()
    }

    /// Waits until `done` holds for the connected proxies (checked now and after every
    /// change) and returns them. Bound it with a timeout.
    pub async fn wait_for_proxies(
        &self,
        mut done: impl FnMut(&[ProxyStatus]) -> bool,
    ) -> Vec<ProxyStatus> {
        let mut rx = self.shared.proxies.subscribe();
        loop {
            let list: Vec<ProxyStatus> = rx.borrow_and_update().values().cloned().collect();
            if done(&list) {
                return list;
            }
            if rx.changed().await.is_err() {
                return list;
            }
        }
    }

    /// Like [`wait_for_proxies`](Self::wait_for_proxies) without copying the table on every
    /// change: `done` sees the connected proxies by reference, so waiting on thousands of
    /// proxies (benchmarks) costs little next to what it measures. Bound it with a timeout.
    pub async fn wait_until_proxies(&self, mut done: impl FnMut(&[&ProxyStatus]) -> bool) {
        let mut rx = self.shared.proxies.subscribe();
        // Fails only if the registry is gone, i.e. the control plane was dropped.
        let _ = rx
            .wait_for(|table| done(&table.values().collect::<Vec<_>>()))
            .await;
    }

    /// The metrics exposition, as `/metrics` serves it.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.encode()
    }

    /// Resolves once `shutdown` was cancelled and every task and connection has finished.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        self.tracker.wait().await;
    }
}

/// The saved observation table, or an empty one when it cannot be read: observations are
/// worth keeping but never worth an outage. A file that does not parse is moved aside
/// (`.bad`) and named in the log, so nothing is overwritten unseen.
fn load_observed(file: &std::path::Path) -> crate::observed::ObservedTable {
    match crate::observed::ObservedTable::load(file) {
        Ok(table) => table,
        Err(e) => {
            let aside = file.with_extension("bad");
            let moved = std::fs::rename(file, &aside);
            tracing::warn!(
                error = %e,
                moved_to = %aside.display(),
                moved = moved.is_ok(),
                "observation table not loaded; starting with an empty one"
            );
            crate::observed::ObservedTable::default()
        }
    }
}

/// Saves (and prunes) the observation table every [`OBSERVED_SAVE_EVERY`] and once more at
/// shutdown.
async fn save_observed(
    table: Arc<crate::observed::ObservedTable>,
    file: PathBuf,
    shutdown: CancellationToken,
) {
    let save = |table: &crate::observed::ObservedTable| {
        if let Err(e) = table.save(&file) {
            tracing::warn!(file = %file.display(), error = %e, "could not save the observation table");
        }
    };
    let mut tick = tokio::time::interval(OBSERVED_SAVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                table.prune();
                save(&table);
            }
        }
    }
    save(&table);
}
