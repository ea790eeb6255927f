//! [`TestMesh`]: a whole mesh in this process, wired exactly as `palisade up` wires it.
//!
//! The builder writes the mesh YAML (with `{block}` replaced by the test's loopback block
//! prefix) into a temporary directory, makes a CA and bootstrap tokens, starts the control
//! plane on `<block>.250:15012` (admin `:15014`), one sidecar per Workload on the workload's
//! address (`:15006` inbound, `:15001` outbound, `:15000` admin) configured from the control
//! plane, and the apps Workloads name in the `palisade.dev/app` annotation on each of their
//! ports; then it awaits `Proxy::ready()` for every sidecar under a timeout.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use palisade_certs::tls::Credentials;
use palisade_certs::{CaMaterial, CaOptions, CertificateAuthority, SpiffeId, TrustBundle};
use palisade_control_plane::{
    CaSource, ControlPlane, ControlPlaneConfig, MeshSnapshot, TokenStore,
};
use palisade_proxy::{ConfigSource, ControlPlaneTarget, Proxy, ProxyConfig};
use tempfile::TempDir;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::apps::{self, App};
use super::clients::admin_get;
use super::net::Block;
use super::{READY_TIMEOUT, within};

/// Annotation naming the shop app to run on every port of a workload (as `palisade up`).
pub const APP_ANNOTATION: &str = "palisade.dev/app";
/// How often the control plane reads a [`MeshBuilder::ca_dir`] CA directory.
const CA_POLL: Duration = Duration::from_millis(200);

/// A DENY of search's admin paths, which several tests need a denial from.
pub const SEARCH_NO_ADMIN: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: search-no-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: search}}
  action: DENY
  rules:
  - to: [{operation: {paths: [\"/admin*\"]}}]
";

/// Host octet of the control plane in every block.
pub const CONTROL_PLANE_HOST: u8 = 250;

/// A MeshConfig for test meshes: default authorization `allow`, since what these tests
/// exercise is transport, identity and routing (policy has its own suite).
pub const MESH_CONFIG: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh, namespace: palisade-system}
spec:
  trustDomain: cluster.local
  defaultAuthorization: allow
  certificateLifetime: 1h
";

/// The same MeshConfig with default authorization `deny`, for the policy tests.
pub const DENY_MESH_CONFIG: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh, namespace: palisade-system}
spec:
  trustDomain: cluster.local
  defaultAuthorization: deny
  certificateLifetime: 1h
";

/// Builds a [`TestMesh`].
#[derive(Debug)]
pub struct MeshBuilder {
    test: &'static str,
    block: Block,
    files: Vec<(String, String)>,
    sidecar_hosts: HashMap<String, u8>,
    without_sidecar: HashSet<String>,
    apps: Vec<(u8, u16, App)>,
    watch: bool,
    ca_dir: bool,
}

/// One running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    /// Workload name.
    pub workload: String,
    /// Namespace.
    pub namespace: String,
    /// The identity it holds.
    pub identity: SpiffeId,
    /// The address its listeners (and its app) use.
    pub ip: IpAddr,
    /// The proxy.
    pub proxy: Proxy,
}

impl Sidecar {
    /// Inbound mTLS listener.
    pub fn inbound(&self) -> SocketAddr {
        self.proxy.inbound_addr()
    }

    /// Outbound listener for the app.
    pub fn outbound(&self) -> SocketAddr {
        self.proxy.outbound_addr()
    }

    /// Admin listener.
    pub fn admin(&self) -> SocketAddr {
        self.proxy.admin_addr()
    }

    /// Sample `name` of this sidecar's `/metrics`, summed over the series that carry every
    /// label in `labels` (as [`metric`](super::metric) reads them).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = admin_get(self.admin(), "/metrics").await.text();
        super::metric(&text, name, labels)
    }
}

/// A running in-process mesh; stopped when dropped (or with [`TestMesh::stop`]).
#[derive(Debug)]
pub struct TestMesh {
    /// The test it belongs to (for messages).
    pub test: &'static str,
    /// Its loopback block.
    pub block: Block,
    /// The configuration directory.
    pub dir: TempDir,
    /// The loaded configuration.
    pub snapshot: Arc<MeshSnapshot>,
    /// The mesh CA.
    pub ca: Arc<CertificateAuthority>,
    /// Its PEM files.
    pub ca_material: CaMaterial,
    /// The CA directory the control plane polls (with [`MeshBuilder::ca_dir`]).
    pub ca_dir: Option<TempDir>,
    /// Bootstrap tokens of every workload.
    pub tokens: TokenStore,
    /// Sidecars by workload name.
    pub sidecars: BTreeMap<String, Sidecar>,
    control_plane: Option<ControlPlane>,
    cp_grpc: SocketAddr,
    cp_admin: SocketAddr,
    cp_identity: SpiffeId,
    /// Cancelling it stops everything.
    pub shutdown: CancellationToken,
    _guard: DropGuard,
}

impl TestMesh {
    /// A builder for a mesh in a fresh loopback block.
    pub fn builder(test: &'static str) -> MeshBuilder {
        super::init_logging();
        MeshBuilder {
            test,
            block: Block::next(),
            files: Vec::new(),
            sidecar_hosts: HashMap::new(),
            without_sidecar: HashSet::new(),
            apps: Vec::new(),
            watch: false,
            ca_dir: false,
        }
    }

    /// The sidecar of `workload`; panics if there is none.
    pub fn sidecar(&self, workload: &str) -> &Sidecar {
        self.sidecars
            .get(workload)
            .unwrap_or_else(|| panic!("{}: no sidecar for workload {workload}", self.test))
    }

    /// The control plane's gRPC address.
    pub fn cp_addr(&self) -> SocketAddr {
        self.cp_grpc
    }

    /// The control plane's admin address.
    pub fn cp_admin(&self) -> SocketAddr {
        self.cp_admin
    }

    /// The identity the control plane presents.
    pub fn cp_identity(&self) -> &SpiffeId {
        &self.cp_identity
    }

    /// The control plane handle.
    pub fn control_plane(&self) -> &ControlPlane {
        self.control_plane.as_ref().expect("running")
    }

    /// The mesh's trust bundle.
    pub fn bundle(&self) -> TrustBundle {
        self.ca.bundle().clone()
    }

    /// The SPIFFE ID of a workload of the configuration.
    pub fn identity(&self, namespace: &str, workload: &str) -> SpiffeId {
        self.snapshot
            .workload(namespace, workload)
            .unwrap_or_else(|| panic!("no workload {namespace}/{workload}"))
            .identity
            .clone()
    }

    /// The bootstrap token of a workload.
    pub fn token(&self, namespace: &str, workload: &str) -> String {
        self.tokens
            .get(namespace, workload)
            .unwrap_or_else(|| panic!("no token for {namespace}/{workload}"))
            .to_owned()
    }

    /// Mesh credentials for `identity`, issued by the mesh CA (as a peer sidecar holds).
    pub fn issue(&self, identity: &SpiffeId) -> Credentials {
        super::tls::issue(&self.ca, identity)
    }

    /// Stops every component and waits (bounded) for all of them.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let sidecars = std::mem::take(&mut self.sidecars);
        let cp = self.control_plane.take();
        within(Duration::from_secs(20), "the mesh stops", async move {
            for (_, s) in sidecars {
                s.proxy.wait().await;
            }
            if let Some(cp) = cp {
                cp.wait().await;
            }
        })
        .await;
    }
}

impl MeshBuilder {
    /// The test's loopback block.
    pub fn block(&self) -> Block {
        self.block
    }

    /// Adds (or replaces) a YAML file; `{block}` is replaced by the block prefix (`127.X.Y`).
    pub fn file(mut self, name: &str, yaml: &str) -> Self {
        self.files.retain(|(n, _)| n != name);
        self.files.push((
            name.to_owned(),
            yaml.replace("{block}", &self.block.prefix()),
        ));
        self
    }

    /// Runs `workload`'s sidecar (and its annotated app) on `<block>.host` instead of the
    /// workload's own address.
    pub fn sidecar_on(mut self, workload: &str, host: u8) -> Self {
        self.sidecar_hosts.insert(workload.to_owned(), host);
        self
    }

    /// Starts no sidecar (and no app) for `workload`.
    pub fn without_sidecar(mut self, workload: &str) -> Self {
        self.without_sidecar.insert(workload.to_owned());
        self
    }

    /// Has the control plane watch the configuration directory (edits are pushed).
    pub fn watch(mut self) -> Self {
        self.watch = true;
        self
    }

    /// Keeps the CA in a directory (`TestMesh::ca_dir`) that the control plane polls, as
    /// `palisade control-plane --ca-dir` does, so `palisade ca rotate` can rotate it.
    pub fn ca_dir(mut self) -> Self {
        self.ca_dir = true;
        self
    }

    /// Runs `app` on `<block>.host:port`.
    pub fn app(mut self, host: u8, port: u16, app: App) -> Self {
        self.apps.push((host, port, app));
        self
    }

    /// Starts everything and waits until every sidecar is ready.
    pub async fn start(self) -> TestMesh {
        let test = self.test;
        let block = self.block;
        let dir = tempfile::Builder::new()
            .prefix("palisade-e2e-")
            .tempdir()
            .expect("temp dir");
        for (name, yaml) in &self.files {
            std::fs::write(dir.path().join(name), yaml).expect("write mesh YAML");
        }
        let snapshot = palisade_control_plane::load_dir(dir.path())
            .unwrap_or_else(|e| panic!("{test}: invalid test mesh: {e}"));
        let trust_domain = snapshot.settings().trust_domain.clone();
        let (ca, ca_material) = CertificateAuthority::generate(trust_domain, &CaOptions::default())
            .expect("generate a CA");
        let ca = Arc::new(ca);
        let tokens = TokenStore::generate(snapshot.workloads()).expect("tokens");
        let ca_dir = self.ca_dir.then(|| {
            let ca_dir = tempfile::Builder::new()
                .prefix("palisade-e2e-ca-")
                .tempdir()
                .expect("temp dir");
            ca_material.replace_in(ca_dir.path()).expect("write the CA");
            ca_dir
        });
        let ca_source = match &ca_dir {
            Some(d) => CaSource::Dir {
                dir: d.path().to_owned(),
                poll: CA_POLL,
            },
            None => ca.clone().into(),
        };

        let shutdown = CancellationToken::new();
        let guard = shutdown.clone().drop_guard();
        let cp = palisade_control_plane::start(
            ControlPlaneConfig {
                config_dir: dir.path().to_owned(),
                ca: ca_source,
                tokens: tokens.clone(),
                grpc_addr: block.addr(CONTROL_PLANE_HOST, 15012),
                admin_addr: Some(block.addr(CONTROL_PLANE_HOST, 15014)),
                watch: self.watch,
                assigned_addresses: Default::default(),
                limits: Default::default(),
                observe: Default::default(),
                kubernetes: None,
                live_view_remote: false,
            },
            shutdown.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{test}: control plane: {e}"));
        let target = ControlPlaneTarget {
            addr: cp.grpc_addr().to_string(),
            identity: cp.identity().clone(),
        };

        let mut sidecars = BTreeMap::new();
        for w in snapshot.workloads() {
            if self.without_sidecar.contains(&w.name) {
                continue;
            }
            let ip = match self.sidecar_hosts.get(&w.name) {
                Some(host) => block.ip(*host),
                None => w.address,
            };
            let token = tokens.get(&w.namespace, &w.name).expect("token").to_owned();
            let source = ConfigSource::ControlPlane {
                target: target.clone(),
                trust_anchors: cp.trust_bundle(),
                token,
            };
            // Exactly as `palisade up` lays out a sidecar, with a shorter drain.
            let config = ProxyConfig {
                drain_timeout: Duration::from_secs(2),
                ..ProxyConfig::on_address(
                    w.identity.clone(),
                    w.name.clone(),
                    w.namespace.clone(),
                    ip,
                    source,
                )
            };
            let proxy = palisade_proxy::start(config, shutdown.clone())
                .await
                .unwrap_or_else(|e| panic!("{test}: sidecar of {}: {e}", w.name));
            if let Some(app) = w.annotations.get(APP_ANNOTATION) {
                for p in &w.ports {
                    let outbound = SocketAddr::new(ip, 15001);
                    apps::start(
                        SocketAddr::new(ip, p.port),
                        App::shop(app, outbound),
                        shutdown.clone(),
                    )
                    .await;
                }
            }
            sidecars.insert(
                w.name.clone(),
                Sidecar {
                    workload: w.name.clone(),
                    namespace: w.namespace.clone(),
                    identity: w.identity.clone(),
                    ip,
                    proxy,
                },
            );
        }
        for (host, port, app) in self.apps {
            apps::start(block.addr(host, port), app, shutdown.clone()).await;
        }

        let all_ready = async {
            for s in sidecars.values() {
                s.proxy.ready().await;
            }
        };
        if tokio::time::timeout(READY_TIMEOUT, all_ready)
            .await
            .is_err()
        {
            let waiting: Vec<&str> = sidecars
                .values()
                .filter(|s| !s.proxy.is_ready())
                .map(|s| s.workload.as_str())
                .collect();
            panic!("{test}: sidecars not ready after {READY_TIMEOUT:?}: {waiting:?}");
        }
        TestMesh {
            test,
            block,
            dir,
            snapshot: Arc::new(snapshot),
            ca,
            ca_material,
            ca_dir,
            tokens,
            sidecars,
            cp_grpc: cp.grpc_addr(),
            cp_admin: cp.admin_addr().expect("admin enabled"),
            cp_identity: cp.identity().clone(),
            control_plane: Some(cp),
            shutdown,
            _guard: guard,
        }
    }
}

/// The test shop: a `client` workload with no app (its sidecar is where tests send from),
/// `search` serving the search app on 8080 (HTTP/1.1) and 8081 (declared `http2`, so its
/// sidecar speaks h2c to it), and `payments` serving gRPC on 9090.
pub const SHOP_WORKLOADS: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  serviceAccount: client
  address: {block}.1
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: search, namespace: shop, labels: {app: search}, annotations: {palisade.dev/app: search}}
spec:
  serviceAccount: search
  address: {block}.2
  ports:
  - {name: http, port: 8080, appProtocol: http}
  - {name: http2, port: 8081, appProtocol: http2}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: payments, namespace: shop, labels: {app: payments}, annotations: {palisade.dev/app: payments}}
spec:
  serviceAccount: payments
  address: {block}.3
  ports:
  - {name: grpc, port: 9090, appProtocol: grpc}
";

/// Services of the test shop: `search.shop:8080`, `search-h2.shop:8081` (http2) and
/// `payments.shop:9090` (grpc).
pub const SHOP_SERVICES: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: search, namespace: shop}
spec:
  selector: {app: search}
  ports:
  - {name: http, port: 8080, targetPort: 8080, appProtocol: http}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: search-h2, namespace: shop}
spec:
  selector: {app: search}
  ports:
  - {name: http2, port: 8081, targetPort: 8081, appProtocol: http2}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: payments, namespace: shop}
spec:
  selector: {app: payments}
  ports:
  - {name: grpc, port: 9090, targetPort: 9090, appProtocol: grpc}
";

/// A builder for the test shop (MeshConfig, workloads, services).
pub fn shop(test: &'static str) -> MeshBuilder {
    TestMesh::builder(test)
        .file("mesh.yaml", MESH_CONFIG)
        .file("workloads.yaml", SHOP_WORKLOADS)
        .file("services.yaml", SHOP_SERVICES)
}

/// SPIFFE ID of a service account of namespace `shop` in `cluster.local`.
pub fn shop_id(service_account: &str) -> String {
    format!("spiffe://cluster.local/ns/shop/sa/{service_account}")
}

/// Two workloads on a loopback block (`{block}` in the text): `client` calling the `search`
/// Service on 8080; used by tests that run the control plane and sidecars as processes.
pub const CLIENT_AND_SEARCH: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  serviceAccount: client
  address: {block}.1
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: search, namespace: shop, labels: {app: search}}
spec:
  serviceAccount: search
  address: {block}.2
  ports:
  - {name: http, port: 8080}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: search, namespace: shop}
spec:
  selector: {app: search}
  ports:
  - {name: http, port: 8080}
";
