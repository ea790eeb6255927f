//! An in-process control plane for tests (feature `test-util`): a temporary config
//! directory, a throwaway CA made at test time, generated bootstrap tokens, the control
//! plane on 127.0.0.1:0, and a TLS client that talks to it exactly as a proxy would.
//!
//! ```no_run
//! # async fn demo(yaml: &str) -> Result<(), palisade_control_plane::test_util::TestError> {
//! use palisade_control_plane::test_util::TestControlPlane;
//! let cp = TestControlPlane::start(&[("mesh.yaml", yaml)]).await?;
//! let (creds, _) = cp.certify("shop", "search").await?;
//! let channel = cp.channel(Some(&creds)).await?;
//! // ... talk to cp.addr() as a proxy would, then:
//! drop(channel);
//! cp.stop().await?;
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use palisade_certs::tls::{Credentials, client_config, placeholder_server_name};
use palisade_certs::{
    ALPN_H2, BundleError, CaError, CaMaterial, CaOptions, CertificateAuthority, SpiffeId, TlsError,
    TrustBundle, TrustDomain, WorkloadKey,
};
use palisade_proto::v1::identity_client::IdentityClient;
use palisade_proto::v1::{CertifyRequest, CertifyResponse};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

pub mod kmock;
pub mod raw_h2;

use crate::{
    ControlPlane, ControlPlaneConfig, StartError, TokenError, TokenStore, control_plane_identity,
};

/// Trust domain of test meshes unless a test says otherwise.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// Bound on connecting and on each request made by these helpers.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a test helper failed.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// File system.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// CA generation or use.
    #[error("CA: {0}")]
    Ca(#[from] CaError),
    /// TLS configuration or credentials.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// Trust bundle.
    #[error("trust bundle: {0}")]
    Bundle(#[from] BundleError),
    /// The control plane did not start.
    #[error("start: {0}")]
    Start(#[from] StartError),
    /// Tokens.
    #[error("tokens: {0}")]
    Token(#[from] TokenError),
    /// Connecting.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A call failed.
    #[error("status: {0}")]
    Status(#[from] tonic::Status),
    /// Something else, in words.
    #[error("{0}")]
    Other(String),
}

/// Writes `(file name, contents)` pairs into a new temporary directory.
pub fn write_config_dir(files: &[(&str, &str)]) -> io::Result<TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("palisade-config-")
        .tempdir()?;
    for (name, contents) in files {
        std::fs::write(dir.path().join(name), contents)?;
    }
    Ok(dir)
}

/// A new CA (root + intermediate) for `trust_domain`, with its PEM files.
pub fn generate_ca(
    trust_domain: &str,
) -> Result<(Arc<CertificateAuthority>, CaMaterial), TestError> {
    generate_ca_with(trust_domain, &CaOptions::default())
}

/// [`generate_ca`] with the given lifetimes.
pub fn generate_ca_with(
    trust_domain: &str,
    options: &CaOptions,
) -> Result<(Arc<CertificateAuthority>, CaMaterial), TestError> {
    let td = TrustDomain::new(trust_domain).map_err(|e| TestError::Other(e.to_string()))?;
    let (ca, material) = CertificateAuthority::generate(td, options)?;
    Ok((Arc::new(ca), material))
}

/// A workload identity `spiffe://<td>/ns/<ns>/sa/<sa>`.
pub fn identity(
    trust_domain: &str,
    namespace: &str,
    service_account: &str,
) -> Result<SpiffeId, TestError> {
    SpiffeId::parse(&format!(
        "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
    ))
    .map_err(|e| TestError::Other(e.to_string()))
}

/// A fresh key and a CSR for `identity` made with it.
pub fn csr_for(identity: &SpiffeId) -> Result<(WorkloadKey, String), TestError> {
    let key = WorkloadKey::generate().map_err(|e| TestError::Other(e.to_string()))?;
    let csr = key
        .csr_pem(identity)
        .map_err(|e| TestError::Other(e.to_string()))?;
    Ok((key, csr))
}

/// Client credentials from a Certify response and the key of its CSR.
pub fn credentials(resp: &CertifyResponse, key: &WorkloadKey) -> Result<Credentials, TestError> {
    let mut chain = resp.certificate_pem.clone();
    for pem in &resp.chain_pem {
        chain.push_str(pem);
    }
    Ok(Credentials::from_pem(&chain, &key.private_key_pem())?)
}

/// A gRPC channel to `addr` over TLS (ALPN h2) that accepts only a server presenting
/// `server_identity` chained to `bundle`, and presents `creds` if given.
pub async fn connect(
    addr: SocketAddr,
    bundle: &TrustBundle,
    server_identity: SpiffeId,
    creds: Option<&Credentials>,
) -> Result<Channel, TestError> {
    let config = Arc::new(client_config(creds, bundle, server_identity, &[ALPN_H2])?);
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
        async move {
            let tcp = TcpStream::connect(addr).await?;
            // As the proxy does: without it each small gRPC message waits for a delayed ACK.
            tcp.set_nodelay(true)?;
            let tls = connector.connect(placeholder_server_name(), tcp).await?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    let channel = Endpoint::from_static("http://palisade-control-plane")
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .connect_with_connector(connector)
        .await?;
    Ok(channel)
}

/// A raw TLS connection (ALPN h2) to `addr`, for tests that write HTTP/2 frames
/// themselves ([`raw_h2`]); the server must present `server_identity` chained to `bundle`.
pub async fn tls_connect(
    addr: SocketAddr,
    bundle: &TrustBundle,
    server_identity: SpiffeId,
    creds: Option<&Credentials>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TestError> {
    let config = Arc::new(client_config(creds, bundle, server_identity, &[ALPN_H2])?);
    let connector = tokio_rustls::TlsConnector::from(config);
    let connect = async {
        let tcp = TcpStream::connect(addr).await?;
        connector.connect(placeholder_server_name(), tcp).await
    };
    tokio::time::timeout(TIMEOUT, connect)
        .await
        .map_err(|_| TestError::Other(format!("timed out connecting to {addr}")))?
        .map_err(TestError::Io)
}

/// Options of [`TestControlPlane::start_with`].
#[derive(Debug, Clone)]
pub struct TestOptions {
    /// Trust domain of the CA (the config must agree).
    pub trust_domain: String,
    /// Serve the admin endpoint on 127.0.0.1:0.
    pub admin: bool,
    /// Watch the directory.
    pub watch: bool,
    /// Bounds on the gRPC listener.
    pub limits: crate::GrpcLimits,
    /// Lifetimes of the generated CA.
    pub ca: CaOptions,
    /// Keep the CA in a directory the control plane polls (every 100 ms), so it can be
    /// rotated (`TestControlPlane::ca_dir`).
    pub ca_dir: bool,
    /// What becomes of the sidecars' observations.
    pub observe: crate::Observe,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            trust_domain: TRUST_DOMAIN.to_owned(),
            admin: true,
            watch: false,
            limits: crate::GrpcLimits::default(),
            ca: CaOptions::default(),
            ca_dir: false,
            observe: crate::Observe::default(),
        }
    }
}

/// A control plane running in this process, with everything a test proxy needs.
#[derive(Debug)]
pub struct TestControlPlane {
    /// The handle.
    pub control_plane: ControlPlane,
    /// The configuration directory (deleted on drop).
    pub dir: TempDir,
    /// The CA.
    pub ca: Arc<CertificateAuthority>,
    /// The CA's PEM files (`root_cert_pem` is what proxies trust).
    pub ca_material: CaMaterial,
    /// The bootstrap tokens of every workload of the initial configuration.
    pub tokens: TokenStore,
    /// Cancelling it stops the control plane.
    pub shutdown: CancellationToken,
    /// The CA directory, with [`TestOptions::ca_dir`].
    pub ca_dir: Option<TempDir>,
}

impl TestControlPlane {
    /// Starts a control plane on loopback with the given files and default options.
    pub async fn start(files: &[(&str, &str)]) -> Result<Self, TestError> {
        Self::start_with(files, TestOptions::default()).await
    }

    /// Starts a control plane on loopback.
    pub async fn start_with(
        files: &[(&str, &str)],
        options: TestOptions,
    ) -> Result<Self, TestError> {
        let dir = write_config_dir(files)?;
        // Tokens for the workloads that load; an invalid config fails in `start` below.
        let tokens = match crate::load_dir(dir.path()) {
            Ok(snapshot) => TokenStore::generate(snapshot.workloads())?,
            Err(_) => TokenStore::new(),
        };
        Self::start_in(dir, tokens, None, options).await
    }

    /// Starts a control plane on loopback reading the mesh from a Kubernetes source that has
    /// listed the cluster once; tokens are made for the workloads of that first listing.
    pub async fn start_kubernetes(
        source: crate::k8s::RunningSource,
        options: TestOptions,
    ) -> Result<Self, TestError> {
        let tokens = TokenStore::generate(source.initial().workloads())?;
        let options = TestOptions {
            watch: false,
            ..options
        };
        Self::start_in(tempfile::tempdir()?, tokens, Some(source), options).await
    }

    /// Starts a control plane on loopback with a new CA, the configuration in `dir` (or from
    /// `kubernetes`), and `tokens`.
    async fn start_in(
        dir: TempDir,
        tokens: TokenStore,
        kubernetes: Option<crate::k8s::RunningSource>,
        options: TestOptions,
    ) -> Result<Self, TestError> {
        let (ca, ca_material) = generate_ca_with(&options.trust_domain, &options.ca)?;
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let shutdown = CancellationToken::new();
        let ca_dir = match options.ca_dir {
            true => {
                let ca_dir = tempfile::tempdir()?;
                ca_material.replace_in(ca_dir.path())?;
                Some(ca_dir)
            }
            false => None,
        };
        let ca_source = match &ca_dir {
            Some(d) => crate::CaSource::Dir {
                dir: d.path().to_owned(),
                poll: std::time::Duration::from_millis(100),
            },
            None => Arc::clone(&ca).into(),
        };
        let control_plane = crate::start(
            ControlPlaneConfig {
                config_dir: dir.path().to_owned(),
                ca: ca_source,
                tokens: tokens.clone(),
                grpc_addr: loopback,
                admin_addr: options.admin.then_some(loopback),
                watch: options.watch,
                assigned_addresses: Default::default(),
                limits: options.limits.clone(),
                observe: options.observe.clone(),
                kubernetes,
                live_view_remote: false,
            },
            shutdown.clone(),
        )
        .await?;
        Ok(Self {
            control_plane,
            dir,
            ca,
            ca_material,
            tokens,
            shutdown,
            ca_dir,
        })
    }

    /// The gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.control_plane.grpc_addr()
    }

    /// The root certificate(s), PEM.
    pub fn root_pem(&self) -> &str {
        &self.ca_material.root_cert_pem
    }

    /// The trust bundle.
    pub fn bundle(&self) -> TrustBundle {
        self.ca.bundle().clone()
    }

    /// The bootstrap token of a workload.
    pub fn token(&self, namespace: &str, workload: &str) -> Result<&str, TestError> {
        self.tokens
            .get(namespace, workload)
            .ok_or_else(|| TestError::Other(format!("no token for {namespace}/{workload}")))
    }

    /// Writes (or replaces) a file in the configuration directory.
    pub fn write_file(&self, name: &str, contents: &str) -> io::Result<()> {
        std::fs::write(self.dir.path().join(name), contents)
    }

    /// Removes a file from the configuration directory.
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.path().join(name))
    }

    /// The configuration directory.
    pub fn config_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A channel to the control plane, presenting `creds` if given.
    pub async fn channel(&self, creds: Option<&Credentials>) -> Result<Channel, TestError> {
        let id = control_plane_identity(self.ca.trust_domain());
        tokio::time::timeout(
            TIMEOUT,
            connect(self.addr(), &self.ca.bundle().clone(), id, creds),
        )
        .await
        .map_err(|_| TestError::Other("timed out connecting to the control plane".into()))?
    }

    /// A raw TLS connection to the gRPC port, presenting `creds` if given.
    pub async fn tls(
        &self,
        creds: Option<&Credentials>,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TestError> {
        let id = control_plane_identity(self.ca.trust_domain());
        tls_connect(self.addr(), &self.ca.bundle().clone(), id, creds).await
    }

    /// Obtains a certificate for a workload with its bootstrap token, as a proxy's first
    /// start does; returns the credentials and the raw response.
    pub async fn certify(
        &self,
        namespace: &str,
        workload: &str,
    ) -> Result<(Credentials, CertifyResponse), TestError> {
        let token = self.token(namespace, workload)?.to_owned();
        self.certify_with_token(namespace, workload, &token).await
    }

    /// Bootstraps a certificate for `namespace/workload` presenting `token`; the gRPC status
    /// of a refusal is in [`TestError`].
    pub async fn certify_with_token(
        &self,
        namespace: &str,
        workload: &str,
        token: &str,
    ) -> Result<(Credentials, CertifyResponse), TestError> {
        let snapshot = self.control_plane.snapshot();
        let w = snapshot
            .workload(namespace, workload)
            .ok_or_else(|| TestError::Other(format!("no workload {namespace}/{workload}")))?;
        let (key, csr_pem) = csr_for(&w.identity)?;
        let mut client = IdentityClient::new(self.channel(None).await?);
        let request = CertifyRequest {
            csr_pem,
            workload: workload.to_owned(),
            namespace: namespace.to_owned(),
            token: token.to_owned(),
        };
        let resp = tokio::time::timeout(TIMEOUT, client.certify(request))
            .await
            .map_err(|_| TestError::Other("Certify timed out".into()))??
            .into_inner();
        Ok((credentials(&resp, &key)?, resp))
    }

    /// Signals shutdown and waits until every task has finished.
    pub async fn stop(self) -> Result<(), TestError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.control_plane.wait())
            .await
            .map_err(|_| TestError::Other("the control plane did not stop in time".into()))
    }
}
