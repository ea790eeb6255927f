//! Fixtures and helpers shared by the test modules.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use palisade_control_plane::ResourceType;
use palisade_proto::v1 as pb;

use palisade_control_plane::test_util::TestControlPlane;
use palisade_proto::v1::discovery_client::DiscoveryClient;
use palisade_proto::v1::{DiscoveryRequest, DiscoveryResponse, ErrorDetail, Node};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// Bound on every network await.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test if it takes longer than [`TIMEOUT`].
pub async fn timed<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

pub const MESH: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh, namespace: palisade-system}
spec:
  certificateLifetime: 1h
  mtls: {mode: STRICT}
";

pub const WORKLOADS: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: frontend, namespace: shop, labels: {app: frontend}}
spec:
  serviceAccount: frontend
  address: 127.0.1.1
  ports:
  - {name: http, port: 8080}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: search, namespace: shop, labels: {app: search}, annotations: {palisade.dev/app: search}}
spec:
  serviceAccount: search
  address: 127.0.1.2
  ports:
  - {name: http, port: 8080, appProtocol: http}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: payments, namespace: shop, labels: {app: payments}}
spec:
  serviceAccount: payments
  address: 127.0.1.3
  ports:
  - {name: grpc, port: 9090}
";

pub const SERVICES: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: frontend, namespace: shop}
spec:
  selector: {app: frontend}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: search, namespace: shop}
spec:
  selector: {app: search}
  ports:
  - {name: http, port: 8080, protocol: TCP}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: payments, namespace: shop}
spec:
  selector: {app: payments}
  ports:
  - {name: grpc, port: 9090, appProtocol: grpc}
";

pub const POLICIES: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: search-from-frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: search}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]
";

/// The shop mesh as (file, contents).
pub fn shop() -> Vec<(&'static str, &'static str)> {
    vec![
        ("mesh.yaml", MESH),
        ("workloads.yaml", WORKLOADS),
        ("services.yml", SERVICES),
        ("policies.yaml", POLICIES),
    ]
}

/// Starts the shop mesh.
pub async fn start_shop() -> TestControlPlane {
    timed("start", TestControlPlane::start(&shop()))
        .await
        .unwrap()
}

/// A subscription; the node is set when `node` is given.
pub fn subscribe(type_url: &str, node: Option<(&str, &str)>) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node.map(|(namespace, workload)| Node {
            workload: workload.to_owned(),
            namespace: namespace.to_owned(),
            proxy_version: "test-proxy 0.1".to_owned(),
        }),
        type_url: type_url.to_owned(),
        ..Default::default()
    }
}

/// The ACK of a response.
pub fn ack(resp: &DiscoveryResponse) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: resp.type_url.clone(),
        version_info: resp.version_info.clone(),
        response_nonce: resp.nonce.clone(),
        ..Default::default()
    }
}

/// The NACK of a response, keeping `applied` as the version in force.
pub fn nack(resp: &DiscoveryResponse, applied: &str, reason: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: resp.type_url.clone(),
        version_info: applied.to_owned(),
        response_nonce: resp.nonce.clone(),
        error_detail: Some(ErrorDetail {
            message: reason.to_owned(),
        }),
        ..Default::default()
    }
}

/// One proxy's discovery stream: requests go in through `tx`, responses come out of `rx`.
pub struct ProxyStream {
    pub tx: mpsc::Sender<DiscoveryRequest>,
    pub rx: Streaming<DiscoveryResponse>,
}

impl ProxyStream {
    /// Opens a stream on `client`, sending `first` right away.
    pub async fn open(
        client: &mut DiscoveryClient<tonic::transport::Channel>,
        first: DiscoveryRequest,
    ) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.unwrap();
        let resp = timed("open stream", client.stream(ReceiverStream::new(rx))).await?;
        Ok(Self {
            tx,
            rx: resp.into_inner(),
        })
    }

    pub async fn send(&self, req: DiscoveryRequest) {
        timed("send request", self.tx.send(req)).await.unwrap();
    }

    /// The next response; panics on end of stream or error.
    pub async fn recv(&mut self) -> DiscoveryResponse {
        match timed("receive response", self.rx.message()).await {
            Ok(Some(resp)) => resp,
            Ok(None) => panic!("stream ended"),
            Err(status) => panic!("stream failed: {status:?}"),
        }
    }

    /// The status the stream ends with (`Ok` if it ended cleanly).
    pub async fn end(&mut self) -> Result<(), tonic::Status> {
        loop {
            match timed("stream end", self.rx.message()).await {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(status) => return Err(status),
            }
        }
    }
}

/// Subscribes to every type as the proxy of `shop/<workload>`.
pub async fn connect_as(
    cp: &palisade_control_plane::test_util::TestControlPlane,
    workload: &str,
) -> (
    DiscoveryClient<tonic::transport::Channel>,
    ProxyStream,
    BTreeMap<String, pb::DiscoveryResponse>,
) {
    let token = cp.token("shop", workload).unwrap().to_owned();
    connect_with_token(cp, workload, &token).await
}

/// [`connect_as`], bootstrapping with `token`.
pub async fn connect_with_token(
    cp: &palisade_control_plane::test_util::TestControlPlane,
    workload: &str,
    token: &str,
) -> (
    DiscoveryClient<tonic::transport::Channel>,
    ProxyStream,
    BTreeMap<String, pb::DiscoveryResponse>,
) {
    let (creds, _) = cp
        .certify_with_token("shop", workload, token)
        .await
        .unwrap();
    let mut client = DiscoveryClient::new(cp.channel(Some(&creds)).await.unwrap());
    let mut urls = pb::ALL_TYPE_URLS.iter();
    let first = subscribe(urls.next().unwrap(), Some(("shop", workload)));
    let mut stream = ProxyStream::open(&mut client, first).await.unwrap();
    for url in urls {
        stream.send(subscribe(url, None)).await;
    }
    let mut got = BTreeMap::new();
    // One response per type this control plane serves (proxies subscribe to every type
    // they know; a type the control plane does not serve is ignored).
    for _ in 0..ResourceType::ALL.len() {
        let resp = stream.recv().await;
        assert!(!resp.nonce.is_empty());
        assert_eq!(resp.version_info.len(), 16, "FNV-1a 64 in hex");
        assert!(
            got.insert(resp.type_url.clone(), resp).is_none(),
            "one response per type"
        );
    }
    (client, stream, got)
}
