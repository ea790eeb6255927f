//! Palisade's sidecar proxy.
//!
//! At start it binds its listeners, makes its own ECDSA P-256 key, obtains a workload
//! certificate from the control plane (renewed at 70% of its life), and subscribes to the
//! discovery stream. Inbound (15006) terminates mTLS from peer sidecars (and, only while
//! MeshConfig `mtls.mode` is PERMISSIVE, serves plaintext HTTP callers as unauthenticated)
//! and forwards to the app; outbound (15001) takes plaintext HTTP from the app and originates mTLS to the peer
//! sidecar that serves the destination, verifying its SPIFFE ID. Admin (15000) reports
//! liveness, readiness, metrics, certificates and configuration.
//!
//! Every inbound request (or opaque TCP connection) is authorized against the workload's
//! AuthorizationPolicies before it reaches the app; outbound traffic to destinations outside
//! the mesh passes only as the outbound policy and EgressPolicies allow.
//!
//! Layout: `model` (validated view from proto) · `authz` (compiled policies, per-request
//! decision; pure) · `egress` (egress allowances; pure) · `netpol` (Kubernetes
//! NetworkPolicy, per-connection decision; pure) and `netgate` (where it is enforced) · `discovery` and `identity`
//! (control-plane clients) · `tls` (swappable rustls state) · `outbound`, `pool`, `inbound`,
//! `app` (data path) · `limits` (connection caps, connection lifetimes, timeouts) ·
//! `enforce` (decision metrics and logs) · `admin`, `metrics` · `serve` (accept loop and
//! drain).

pub mod admin;
pub mod app;
pub mod authority;
pub mod authz;
pub mod capture;
pub mod control;
pub mod detect;
pub mod discovery;
pub mod egress;
pub mod enforce;
mod h2;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod limits;
pub mod metrics;
pub mod model;
mod netgate;
pub mod netns;
pub mod netpol;
pub mod observe;
pub mod observed;
pub mod orig_dst;
pub mod outbound;
pub mod pool;
pub mod probes;
pub mod serve;
pub mod telemetry;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use palisade_certs::tls::Credentials;
use palisade_certs::{SpiffeId, TrustBundle};
use palisade_proto::v1::{DiscoveryResponse, Node};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use control::ControlPlaneTarget;
pub use identity::IdentityRequest;
pub use limits::Limits;

use crate::discovery::{DiscoveryOutputs, Snapshots};
use crate::metrics::Metrics;
use crate::model::MeshView;
use crate::tls::TlsState;

/// Where the proxy gets its certificate and configuration.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// From the control plane: certificate via the identity service, config via discovery.
    ControlPlane {
        /// Where it is and which identity it presents.
        target: ControlPlaneTarget,
        /// Roots to verify the control plane with until discovery delivers the bundle.
        trust_anchors: TrustBundle,
        /// Bootstrap credential.
        token: String,
    },
    /// Fixed credentials and snapshots (benchmarks, standalone use): no control plane.
    Static {
        /// The workload certificate and key.
        credentials: Credentials,
        /// One snapshot per discovery type.
        snapshots: Vec<DiscoveryResponse>,
    },
}

/// Everything a proxy needs to start.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The workload's SPIFFE ID.
    pub identity: SpiffeId,
    /// Workload name.
    pub workload: String,
    /// Workload namespace.
    pub namespace: String,
    /// Certificate and configuration source.
    pub source: ConfigSource,
    /// Inbound mTLS listener (15006).
    pub inbound_addr: SocketAddr,
    /// Outbound listener for the app (15001).
    pub outbound_addr: SocketAddr,
    /// Admin listener (15000).
    pub admin_addr: SocketAddr,
    /// Where the app listens (its ports are learned from discovery).
    pub app_host: IpAddr,
    /// How long in-flight requests may take to finish at shutdown.
    pub drain_timeout: Duration,
    /// Runtime for control work (discovery, certificates, admin), kept off the data path;
    /// `None` uses the current runtime.
    pub control_runtime: Option<Handle>,
    /// Add `x-palisade-mtls` (protocol, cipher, peer identity of the mTLS hop) to inbound
    /// responses, for debugging a hop from the caller's side.
    pub debug_headers: bool,
    /// Log every ALLOW decision too (target `palisade::authz`, INFO), naming the policy that
    /// decided; denials and AUDIT matches are always logged.
    pub log_decisions: bool,
    /// How long a captured connection may take to show its protocol before it is treated
    /// as opaque TCP (ports declared TCP are never waited on).
    pub detect_timeout: Duration,
    /// Resource bounds of the data path (connections, streams, timeouts, app pool).
    pub limits: Limits,
    /// The app's kubelet probes, served on the admin port under `/app-health/`.
    pub app_probes: Arc<probes::AppProbes>,
}

/// Default of [`ProxyConfig::detect_timeout`].
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Port of the inbound mTLS listener in a pod.
pub const INBOUND_PORT: u16 = 15006;
/// Port of the outbound listener in a pod.
pub const OUTBOUND_PORT: u16 = 15001;
/// Port of the admin listener in a pod.
pub const ADMIN_PORT: u16 = 15000;

impl ProxyConfig {
    /// A sidecar laid out as in a pod: its listeners on the default ports and its app on one
    /// address (the pod IP; in directory mode the workload's own loopback address).
    pub fn on_address(
        identity: SpiffeId,
        workload: String,
        namespace: String,
        ip: IpAddr,
        source: ConfigSource,
    ) -> Self {
        Self {
            identity,
            workload,
            namespace,
            source,
            inbound_addr: SocketAddr::new(ip, INBOUND_PORT),
            outbound_addr: SocketAddr::new(ip, OUTBOUND_PORT),
            admin_addr: SocketAddr::new(ip, ADMIN_PORT),
            app_host: ip,
            drain_timeout: Duration::from_secs(5),
            control_runtime: None,
            debug_headers: false,
            log_decisions: false,
            detect_timeout: DEFAULT_DETECT_TIMEOUT,
            limits: Limits::default(),
            app_probes: Arc::default(),
        }
    }
}

/// Failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Static credentials or snapshots are unusable.
    #[error("static configuration: {0}")]
    Static(String),
}

/// Why [`Proxy::apply_static`] refused a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum StaticUpdateError {
    /// The proxy is configured by the control plane; only discovery changes its view.
    #[error("the proxy is configured by the control plane, not statically")]
    NotStatic,
    /// The snapshot is invalid; the previous configuration stays in force.
    #[error(transparent)]
    Rejected(#[from] model::SnapshotError),
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    inbound_addr: SocketAddr,
    outbound_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin: Arc<admin::Admin>,
    view: watch::Receiver<Option<Arc<MeshView>>>,
    tls: watch::Receiver<Option<Arc<TlsState>>>,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
    /// Standalone mode only: the applied snapshots and where a new view is published.
    statics: Option<std::sync::Mutex<(Snapshots, DiscoveryOutputs)>>,
}

impl Proxy {
    /// Standalone mode: validates and applies one more snapshot exactly as discovery would
    /// (an invalid one changes nothing) and publishes the new view, which open connections
    /// use from their next request on.
    pub fn apply_static(&self, response: &DiscoveryResponse) -> Result<(), StaticUpdateError> {
        let statics = self.statics.as_ref().ok_or(StaticUpdateError::NotStatic)?;
        let mut guard = statics.lock().unwrap_or_else(|p| p.into_inner());
        let (snapshots, outputs) = &mut *guard;
        if let Err(e) = snapshots.apply(response) {
            snapshots
                .rejections
                .insert(response.type_url.clone(), e.to_string());
            // A rejection can still narrow the view (a first NetworkPolicy snapshot that
            // is invalid denies everything), so the view is published as discovery does.
            discovery::publish(snapshots, outputs);
            return Err(e.into());
        }
        discovery::publish(snapshots, outputs);
        Ok(())
    }

    /// Address of the inbound mTLS listener.
    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound_addr
    }

    /// Address of the outbound listener.
    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound_addr
    }

    /// Address of the admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Whether the proxy holds a certificate and a complete configuration.
    pub fn is_ready(&self) -> bool {
        self.admin.not_ready_reason().is_none()
    }

    /// Waits until the proxy is ready.
    pub async fn ready(&self) {
        let mut tls = self.tls.clone();
        let mut view = self.view.clone();
        while !self.is_ready() {
            tokio::select! {
                r = tls.changed() => if r.is_err() { return },
                r = view.changed() => if r.is_err() { return },
            }
        }
    }

    /// The current TLS state (certificate and bundle), if any.
    pub fn tls_state(&self) -> Option<Arc<TlsState>> {
        self.tls.borrow().clone()
    }

    /// The current mesh view, if complete.
    pub fn view(&self) -> Option<Arc<MeshView>> {
        self.view.borrow().clone()
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Resolves once every task has stopped after shutdown was requested.
    pub async fn wait(self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Binds the listeners, starts every task, and returns at once with the bound addresses.
/// Everything stops (listeners first, then a drain of in-flight requests) when `shutdown`
/// is cancelled.
pub async fn start(config: ProxyConfig, shutdown: CancellationToken) -> Result<Proxy, StartError> {
    let inbound_listener = bind("inbound", config.inbound_addr).await?;
    let outbound_listener = bind("outbound", config.outbound_addr).await?;
    let admin_listener = bind("admin", config.admin_addr).await?;
    let local = |l: &TcpListener, addr| l.local_addr().unwrap_or(addr);
    let inbound_addr = local(&inbound_listener, config.inbound_addr);
    let outbound_addr = local(&outbound_listener, config.outbound_addr);
    let admin_addr = local(&admin_listener, config.admin_addr);

    let metrics = Arc::new(Metrics::new());
    let (creds_tx, creds_rx) = watch::channel::<Option<Arc<Credentials>>>(None);
    let (view_tx, view_rx) = watch::channel::<Option<Arc<MeshView>>>(None);
    let (status_tx, status_rx) = watch::channel(Snapshots::default());
    let (tls_tx, tls_rx) = watch::channel::<Option<Arc<TlsState>>>(None);
    let (issued_bundle_tx, issued_bundle_rx) = watch::channel::<Option<Vec<String>>>(None);
    let outputs = DiscoveryOutputs {
        view: view_tx,
        status: status_tx,
    };
    let control = config
        .control_runtime
        .clone()
        .unwrap_or_else(Handle::current);
    let tasks = TaskTracker::new();
    // Every log line of this proxy names its workload (several may share a process).
    let span = tracing::info_span!("proxy", workload = %format!("{}/{}", config.namespace, config.workload));

    let mut statics = None;
    let anchors = match &config.source {
        ConfigSource::ControlPlane { trust_anchors, .. } => trust_anchors.clone(),
        ConfigSource::Static {
            snapshots,
            credentials,
        } => {
            let mut snaps = Snapshots::default();
            for s in snapshots {
                snaps
                    .apply(s)
                    .map_err(|e| StartError::Static(e.to_string()))?;
            }
            let view = snaps
                .view()
                .ok_or_else(|| StartError::Static("snapshots do not cover every type".into()))?;
            let bundle = view.bundle.clone();
            discovery::publish(&snaps, &outputs);
            creds_tx.send_replace(Some(Arc::new(credentials.clone())));
            statics = Some(std::sync::Mutex::new((snaps, outputs.clone())));
            bundle
        }
    };
    // The bundle used to verify peers and the control plane: discovery's once it has one,
    // else the one that came with the certificate, else the configured anchors.
    let (bundle_tx, bundle_rx) = watch::channel(anchors.clone());

    if let ConfigSource::ControlPlane { target, token, .. } = &config.source {
        let request = IdentityRequest {
            identity: config.identity.clone(),
            workload: config.workload.clone(),
            namespace: config.namespace.clone(),
            token: token.clone(),
        };
        tasks.spawn_on(
            identity::run_refresh(
                target.clone(),
                request,
                bundle_rx.clone(),
                view_rx.clone(),
                creds_tx.clone(),
                issued_bundle_tx.clone(),
                metrics.clone(),
                shutdown.clone(),
            )
            .instrument(span.clone()),
            &control,
        );
        let node = Node {
            workload: config.workload.clone(),
            namespace: config.namespace.clone(),
            proxy_version: concat!("palisade-proxy ", env!("CARGO_PKG_VERSION")).to_owned(),
        };
        tasks.spawn_on(
            telemetry::run(
                target.clone(),
                creds_rx.clone(),
                bundle_rx.clone(),
                metrics.clone(),
                shutdown.clone(),
            )
            .instrument(span.clone()),
            &control,
        );
        tasks.spawn_on(
            discovery::run(
                target.clone(),
                node,
                creds_rx.clone(),
                bundle_rx.clone(),
                outputs.clone(),
                metrics.clone(),
                shutdown.clone(),
            )
            .instrument(span.clone()),
            &control,
        );
    }

    tasks.spawn_on(
        assemble_tls(
            anchors,
            creds_rx.clone(),
            issued_bundle_rx,
            view_rx.clone(),
            bundle_tx,
            tls_tx,
            shutdown.clone(),
        )
        .instrument(span.clone()),
        &control,
    );

    let admin = Arc::new(admin::Admin {
        view: view_rx.clone(),
        tls: tls_rx.clone(),
        status: status_rx,
        metrics: metrics.clone(),
        probes: config.app_probes.clone(),
        app_host: config.app_host,
    });
    {
        let admin = admin.clone();
        tasks.spawn_on(
            serve::accept_loop(
                "admin",
                admin_listener,
                shutdown.clone(),
                Duration::from_secs(1),
                move |s, peer, w| admin.clone().serve_connection(s, peer, w),
            )
            .instrument(span.clone()),
            &control,
        );
    }

    let inbound = Arc::new(inbound::Inbound {
        view: view_rx.clone(),
        tls: tls_rx.clone(),
        apps: app::AppClients::new(config.app_host, &config.limits, metrics.clone()),
        metrics: metrics.clone(),
        debug_headers: config.debug_headers,
        log_decisions: config.log_decisions,
        conns: limits::ConnCounter::new(
            config.limits.max_connections,
            config.limits.max_connections_per_peer,
        ),
        limits: config.limits.clone(),
        grace: config.drain_timeout,
        shutdown: shutdown.clone(),
    });
    tasks.spawn(
        serve::accept_loop(
            "inbound",
            inbound_listener,
            shutdown.clone(),
            config.drain_timeout,
            move |s, peer, w| inbound.clone().serve_connection(s, peer, w),
        )
        .instrument(span.clone()),
    );

    let outbound = Arc::new(outbound::Outbound {
        view: view_rx.clone(),
        pool: pool::PeerPool::new(tls_rx.clone(), config.app_host, &config.limits),
        metrics: metrics.clone(),
        passthrough: hyper_util::client::legacy::Client::builder(
            hyper_util::rt::TokioExecutor::new(),
        )
        .build_http(),
        log_decisions: config.log_decisions,
        detect_timeout: config.detect_timeout,
        conns: limits::ConnCounter::new(config.limits.max_connections, usize::MAX),
        limits: config.limits.clone(),
        grace: config.drain_timeout,
        shutdown: shutdown.clone(),
        no_peer: metrics::PeerLabel::new("none"),
    });
    tasks.spawn(
        serve::accept_loop(
            "outbound",
            outbound_listener,
            shutdown.clone(),
            config.drain_timeout,
            move |s, peer, w| outbound.clone().serve_connection(s, peer, w),
        )
        .instrument(span.clone()),
    );
    tasks.spawn(serve::timer_floor(shutdown.clone()));
    tasks.close();

    let _entered = span.enter();
    tracing::info!(
        identity = %config.identity,
        inbound = %inbound_addr,
        outbound = %outbound_addr,
        admin = %admin_addr,
        "proxy listening"
    );
    Ok(Proxy {
        inbound_addr,
        outbound_addr,
        admin_addr,
        admin,
        view: view_rx,
        tls: tls_rx,
        metrics,
        tasks,
        statics,
    })
}

/// Rebuilds the TLS state whenever the certificate or the trust bundle changes.
async fn assemble_tls(
    anchors: TrustBundle,
    mut creds: watch::Receiver<Option<Arc<Credentials>>>,
    mut issued_bundle: watch::Receiver<Option<Vec<String>>>,
    mut view: watch::Receiver<Option<Arc<MeshView>>>,
    bundle_tx: watch::Sender<TrustBundle>,
    tls_tx: watch::Sender<Option<Arc<TlsState>>>,
    shutdown: CancellationToken,
) {
    loop {
        let bundle = current_bundle(
            &anchors,
            &issued_bundle.borrow_and_update(),
            &view.borrow_and_update(),
        );
        bundle_tx.send_if_modified(|b| {
            let changed = *b != bundle;
            if changed {
                *b = bundle.clone();
            }
            changed
        });
        let current = creds.borrow_and_update().clone();
        if let Some(c) = current {
            let unchanged = tls_tx
                .borrow()
                .as_ref()
                .is_some_and(|t| Arc::ptr_eq(t.credentials(), &c) && *t.bundle() == bundle);
            if !unchanged {
                match TlsState::new(c, bundle) {
                    Ok(state) => {
                        tls_tx.send_replace(Some(Arc::new(state)));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot build TLS configuration; keeping the previous one")
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = creds.changed() => if r.is_err() { return },
            r = issued_bundle.changed() => if r.is_err() { return },
            r = view.changed() => if r.is_err() { return },
        }
    }
}

fn current_bundle(
    anchors: &TrustBundle,
    issued: &Option<Vec<String>>,
    view: &Option<Arc<MeshView>>,
) -> TrustBundle {
    if let Some(v) = view {
        return v.bundle.clone();
    }
    if let Some(pems) = issued
        && let Ok(b) = TrustBundle::from_pem_list(anchors.trust_domain().clone(), pems)
    {
        return b;
    }
    anchors.clone()
}
