//! `palisade.v1.Discovery`: the push stream to each proxy (protocol at the top of
//! `discovery.proto`).
//!
//! Each stream is a task holding a receiver of the published configuration: when it
//! changes, the task rebuilds the snapshots of the types its proxy subscribed to and sends
//! those whose version differs from what it last sent. A burst of changes costs one
//! rebuild, since a `watch` receiver only sees the latest value.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::{Stream, StreamExt};
use palisade_certs::SpiffeId;
use palisade_proto::v1::discovery_server::Discovery;
use palisade_proto::v1::{DiscoveryRequest, DiscoveryResponse};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::index::{Published, ResourceType, Versioned};
use crate::logsafe::{MAX_KEPT_BYTES, Untrusted, is_dns_label, truncated};
use crate::metrics::Metrics;
use crate::model::{NamespacedName, Workload};
use crate::transport::PeerInfo;

/// Responses queued per stream before the stream task waits for the proxy to read.
const STREAM_BUFFER: usize = 16;
/// A stream whose first request (naming the node) does not arrive by then is closed, so
/// idle streams cannot hold tasks forever.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the final status of a stream may wait for room in a slow proxy's queue.
const FINAL_STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a proxy rejected a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// The version it rejected.
    pub version: String,
    /// The proxy's reason.
    pub message: String,
}

/// Where one resource type stands on one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// The last version sent.
    pub sent_version: Option<String>,
    /// The last version the proxy acknowledged.
    pub acked_version: Option<String>,
    /// The last rejection, kept after later ACKs (compare its version with `acked_version`).
    pub last_nack: Option<Nack>,
}

/// A connected proxy and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyStatus {
    /// Unique per stream within this process.
    pub stream_id: u64,
    /// The workload it serves.
    pub workload: NamespacedName,
    /// The identity of its certificate.
    pub identity: SpiffeId,
    /// What the proxy said it is (`Node.proxy_version`).
    pub proxy_version: String,
    /// When the stream was accepted.
    pub connected_at: SystemTime,
    /// Per subscribed type.
    pub types: BTreeMap<ResourceType, TypeStatus>,
    /// Issuer fingerprint of the certificate the proxy reports serving with ("" until it
    /// reports one).
    pub certificate_issuer: String,
}

impl ProxyStatus {
    /// Whether the proxy acknowledged the last version sent of every subscribed type.
    pub fn is_synced(&self) -> bool {
        !self.types.is_empty()
            && self
                .types
                .values()
                .all(|t| t.sent_version.is_some() && t.sent_version == t.acked_version)
    }
}

/// The table of connected proxies, observable through a `watch` channel.
#[derive(Debug, Clone)]
pub(crate) struct ProxyRegistry {
    table: Arc<watch::Sender<BTreeMap<u64, ProxyStatus>>>,
}

impl ProxyRegistry {
    pub fn new() -> Self {
        Self {
            table: Arc::new(watch::Sender::new(BTreeMap::new())),
        }
    }

    pub fn list(&self) -> Vec<ProxyStatus> {
        self.table.borrow().values().cloned().collect()
    }

    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<u64, ProxyStatus>> {
        self.table.subscribe()
    }

    fn insert(&self, status: ProxyStatus) {
        self.table.send_modify(|t| {
            t.insert(status.stream_id, status);
        });
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut ProxyStatus)) {
        self.table.send_modify(|t| {
            if let Some(s) = t.get_mut(&id) {
                f(s);
            }
        });
    }

    fn remove(&self, id: u64) {
        self.table.send_modify(|t| {
            t.remove(&id);
        });
    }
}

/// The discovery service.
pub(crate) struct DiscoveryService {
    pub state: watch::Receiver<Arc<Published>>,
    pub metrics: Arc<Metrics>,
    pub registry: ProxyRegistry,
    /// A stream is ended with UNAVAILABLE at this age; the proxy reconnects, presenting its
    /// current certificate (its connection has had GOAWAY by then).
    pub max_age: Duration,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type StreamStream = ResponseStream;

    async fn stream(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let Some((identity, remote)) = peer.and_then(|p| p.identity.map(|id| (id, p.remote_addr)))
        else {
            self.metrics.stream_closed("unauthenticated");
            return Err(Status::unauthenticated(
                "the discovery stream requires a client certificate",
            ));
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = StreamTask {
            id: next_stream_id(),
            identity,
            remote,
            inbound: request.into_inner(),
            tx,
            state: self.state.clone(),
            metrics: Arc::clone(&self.metrics),
            registry: self.registry.clone(),
            types: BTreeMap::new(),
            certificate_issuer: String::new(),
        };
        let shutdown = self.shutdown.clone();
        // The node is validated inside the task, after the response headers have gone out:
        // a client that waits for them before sending its first request still works.
        self.tracker.spawn(stream.run(shutdown, self.max_age));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Drops a configuration this stream no longer serves. The stream that lets go of it last
/// would free a whole mesh's snapshots on its worker thread, stalling the streams queued
/// behind it in the middle of a push (tens of milliseconds at 10,000 workloads): that last
/// reference is handed to the blocking pool instead.
fn release(published: Arc<Published>) {
    // Only weak-free `Arc`s exist, so a count of one means no other holder can appear.
    if Arc::strong_count(&published) == 1 {
        // Outside a runtime (never, for a stream task) it is simply dropped here.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(runtime.spawn_blocking(move || drop(published)));
        }
    }
}

/// A SHA-256 fingerprint in lower-case hex; anything else a proxy reports is ignored.
fn is_fingerprint(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn next_stream_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A nonce unique within this process, and across restarts with high probability.
fn next_nonce() -> String {
    static PREFIX: std::sync::LazyLock<u32> = std::sync::LazyLock::new(|| fastrand::u32(..));
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    format!(
        "{:08x}-{}",
        *PREFIX,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The last response sent for a type, to match ACK/NACK nonces.
#[derive(Debug, Clone)]
struct Sent {
    nonce: String,
    version: String,
}

#[derive(Debug, Default)]
struct TypeState {
    sent: Option<Sent>,
    status: TypeStatus,
}

/// Ends a stream with a status, counted by reason.
struct StreamEnd {
    reason: &'static str,
    status: Status,
}

impl StreamEnd {
    fn new(reason: &'static str, status: Status) -> Self {
        Self { reason, status }
    }
}

struct StreamTask {
    id: u64,
    identity: SpiffeId,
    remote: std::net::SocketAddr,
    inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    state: watch::Receiver<Arc<Published>>,
    metrics: Arc<Metrics>,
    registry: ProxyRegistry,
    types: BTreeMap<ResourceType, TypeState>,
    /// Last issuer fingerprint the proxy reported.
    certificate_issuer: String,
}

/// Keeps the registry and the connected gauge right however the task ends.
struct Registration {
    id: u64,
    registry: ProxyRegistry,
    metrics: Arc<Metrics>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.remove(self.id);
        self.metrics.proxy_disconnected();
    }
}

impl StreamTask {
    async fn run(mut self, shutdown: CancellationToken, max_age: Duration) {
        let tx = self.tx.clone();
        let result = tokio::select! {
            _ = shutdown.cancelled() => Err(StreamEnd::new(
                "shutdown",
                Status::unavailable("the control plane is shutting down"),
            )),
            _ = tokio::time::sleep(max_age) => Err(StreamEnd::new(
                "max_age",
                Status::unavailable("the stream reached its maximum age; reconnect"),
            )),
            r = self.serve() => r,
        };
        if let Err(end) = result {
            self.metrics.stream_closed(end.reason);
            // The proxy may be gone already, or not reading; the stream ends either way.
            let _ = tokio::time::timeout(FINAL_STATUS_TIMEOUT, tx.send(Err(end.status))).await;
        }
    }

    async fn serve(&mut self) -> Result<(), StreamEnd> {
        let first = match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, self.inbound.next()).await {
            Err(_) => {
                return Err(StreamEnd::new(
                    "timeout",
                    Status::deadline_exceeded("no request received on the discovery stream"),
                ));
            }
            Ok(first) => first,
        };
        let first = match first {
            Some(Ok(req)) => req,
            Some(Err(status)) => {
                tracing::debug!(peer = %self.remote, %status, "discovery stream failed before its first request");
                return Ok(());
            }
            None => return Ok(()),
        };
        let Some(node) = first.node.clone() else {
            return Err(StreamEnd::new(
                "invalid_argument",
                Status::invalid_argument("the first request of a stream must carry the node"),
            ));
        };
        // Names are DNS labels in every configuration: anything else names no workload and
        // is refused before it can reach a log line.
        if !is_dns_label(&node.namespace) || !is_dns_label(&node.workload) {
            tracing::warn!(
                namespace = %Untrusted(&node.namespace),
                workload = %Untrusted(&node.workload),
                identity = %self.identity,
                peer = %self.remote,
                "discovery refused: the node's names are not DNS-1123 labels"
            );
            return Err(StreamEnd::new(
                "invalid_argument",
                Status::invalid_argument(
                    "the node's namespace and workload must be DNS-1123 labels",
                ),
            ));
        }
        let proxy_version = truncated(&node.proxy_version, MAX_KEPT_BYTES);
        let key = NamespacedName::new(&node.namespace, &node.workload);
        let published = Arc::clone(&self.state.borrow_and_update());
        self.check_workload(&published, &key)?;
        let _registration = self.register(&key, proxy_version);
        tracing::info!(
            workload = %key,
            identity = %self.identity,
            peer = %self.remote,
            proxy_version = %Untrusted(proxy_version),
            "proxy connected"
        );
        let mut published = published;
        self.handle(&published, &key, first).await?;
        loop {
            tokio::select! {
                changed = self.state.changed() => {
                    if changed.is_err() {
                        return Err(StreamEnd::new(
                            "shutdown",
                            Status::unavailable("the control plane is shutting down"),
                        ));
                    }
                    let previous = std::mem::replace(
                        &mut published,
                        Arc::clone(&self.state.borrow_and_update()),
                    );
                    release(previous);
                    let workload = self.check_workload(&published, &key)?;
                    let types: Vec<ResourceType> = self.types.keys().copied().collect();
                    for ty in types {
                        let resource = published.resource(ty, workload);
                        self.send_if_changed(&key, ty, &resource).await?;
                    }
                }
                msg = self.inbound.next() => match msg {
                    Some(Ok(req)) => self.handle(&published, &key, req).await?,
                    Some(Err(status)) => {
                        tracing::debug!(workload = %key, %status, "discovery stream broken");
                        return Ok(());
                    }
                    None => {
                        tracing::info!(workload = %key, "proxy disconnected");
                        return Ok(());
                    }
                },
                _ = self.tx.closed() => return Ok(()),
            }
        }
    }

    /// The proxy's workload must exist and its identity must be the certificate's.
    fn check_workload<'a>(
        &self,
        published: &'a Published,
        key: &NamespacedName,
    ) -> Result<&'a Workload, StreamEnd> {
        let Some(workload) = published.snapshot.workloads.get(key) else {
            tracing::warn!(workload = %key, identity = %self.identity, "discovery for an unknown workload");
            return Err(StreamEnd::new(
                "not_found",
                Status::not_found(format!("workload {key} is not part of the mesh")),
            ));
        };
        if workload.identity != self.identity {
            tracing::warn!(
                workload = %key,
                expected = %workload.identity,
                presented = %self.identity,
                "discovery refused: certificate of another identity"
            );
            return Err(StreamEnd::new(
                "permission_denied",
                Status::permission_denied(format!(
                    "the client certificate ({}) is not the identity of workload {key} ({})",
                    self.identity, workload.identity
                )),
            ));
        }
        Ok(workload)
    }

    fn register(&self, key: &NamespacedName, proxy_version: &str) -> Registration {
        self.registry.insert(ProxyStatus {
            stream_id: self.id,
            workload: key.clone(),
            identity: self.identity.clone(),
            proxy_version: proxy_version.to_owned(),
            connected_at: SystemTime::now(),
            types: BTreeMap::new(),
            certificate_issuer: String::new(),
        });
        self.metrics.proxy_connected();
        Registration {
            id: self.id,
            registry: self.registry.clone(),
            metrics: Arc::clone(&self.metrics),
        }
    }

    /// A subscription, ACK or NACK.
    async fn handle(
        &mut self,
        published: &Published,
        key: &NamespacedName,
        req: DiscoveryRequest,
    ) -> Result<(), StreamEnd> {
        // Before the type and nonce checks: a proxy repeats its last ACK after renewing
        // just to report this, whatever has been sent since.
        if is_fingerprint(&req.certificate_issuer)
            && req.certificate_issuer != self.certificate_issuer
        {
            self.certificate_issuer.clone_from(&req.certificate_issuer);
            let issuer = req.certificate_issuer.clone();
            self.registry
                .update(self.id, |p| p.certificate_issuer = issuer);
        }
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            // A newer proxy may ask for types this control plane does not know yet.
            tracing::warn!(workload = %key, type_url = %Untrusted(&req.type_url), "ignoring a request for an unknown type");
            return Ok(());
        };
        if req.response_nonce.is_empty() {
            let workload = self.check_workload(published, key)?;
            let resource = published.resource(ty, workload);
            self.types.entry(ty).or_default();
            return self.send(key, ty, &resource).await;
        }
        let Some(state) = self.types.get_mut(&ty) else {
            tracing::debug!(workload = %key, %ty, "ignoring a response to a type never subscribed");
            return Ok(());
        };
        let Some(sent) = state
            .sent
            .as_ref()
            .filter(|s| s.nonce == req.response_nonce)
        else {
            // Answers an older response; the latest one's answer is still to come.
            tracing::debug!(workload = %key, %ty, nonce = %Untrusted(&req.response_nonce), "ignoring a stale nonce");
            return Ok(());
        };
        match req.error_detail {
            Some(detail) => {
                tracing::warn!(
                    workload = %key,
                    r#type = %ty,
                    version = %sent.version,
                    reason = %Untrusted(&detail.message),
                    "proxy rejected a snapshot (NACK)"
                );
                state.status.last_nack = Some(Nack {
                    version: sent.version.clone(),
                    message: truncated(&detail.message, MAX_KEPT_BYTES).to_owned(),
                });
                self.metrics.nacked(ty);
            }
            None => {
                tracing::debug!(workload = %key, %ty, version = %Untrusted(&req.version_info), "ACK");
                state.status.acked_version =
                    Some(truncated(&req.version_info, MAX_KEPT_BYTES).to_owned());
                self.metrics.acked(ty);
            }
        }
        let status = state.status.clone();
        self.registry.update(self.id, |p| {
            p.types.insert(ty, status);
        });
        Ok(())
    }

    async fn send_if_changed(
        &mut self,
        key: &NamespacedName,
        ty: ResourceType,
        resource: &Versioned,
    ) -> Result<(), StreamEnd> {
        let unchanged = self
            .types
            .get(&ty)
            .and_then(|s| s.sent.as_ref())
            .is_some_and(|s| s.version == resource.version);
        if unchanged {
            return Ok(());
        }
        self.send(key, ty, resource).await
    }

    async fn send(
        &mut self,
        key: &NamespacedName,
        ty: ResourceType,
        resource: &Versioned,
    ) -> Result<(), StreamEnd> {
        let nonce = next_nonce();
        let response = DiscoveryResponse {
            type_url: ty.type_url().to_owned(),
            version_info: resource.version.clone(),
            nonce: nonce.clone(),
            resources: Some(resource.resources.clone()),
        };
        if self.tx.send(Ok(response)).await.is_err() {
            // The proxy went away; the loop notices through `tx.closed()`.
            return Ok(());
        }
        tracing::debug!(workload = %key, %ty, version = %resource.version, "pushed");
        self.metrics.pushed(ty);
        let state = self.types.entry(ty).or_default();
        state.sent = Some(Sent {
            nonce,
            version: resource.version.clone(),
        });
        state.status.sent_version = Some(resource.version.clone());
        let status = state.status.clone();
        self.registry.update(self.id, |p| {
            p.types.insert(ty, status);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_unique() {
        let a = next_nonce();
        let b = next_nonce();
        assert_ne!(a, b);
    }
}
