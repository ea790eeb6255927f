//! `palisade.v1.Telemetry`: proxies' report streams. The reporter is the workload of the
//! client certificate, never a name the proxy gives; it is told to report while the hub is
//! watched.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use palisade_proto::v1::telemetry_server::Telemetry;
use palisade_proto::v1::{TelemetryControl, TelemetryReport};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use super::{Hub, Resolver};
use crate::index::Published;
use crate::transport::PeerInfo;

/// Identities remembered per stream before the cache starts over.
const RESOLVE_CACHE: usize = 1024;
/// Report streams open at once per client identity. A proxy needs one; a reconnect may
/// briefly overlap the old stream, and replicas of a workload share an identity.
pub const MAX_STREAMS_PER_IDENTITY: usize = 16;

/// Report streams open per identity, so one certificate cannot hold the hub's attention
/// (and memory) many times over.
#[derive(Debug, Default)]
pub(crate) struct StreamCounts(std::sync::Mutex<HashMap<String, usize>>);

/// One open stream of an identity; closing it frees its place.
struct StreamSlot {
    counts: Arc<StreamCounts>,
    identity: String,
}

impl StreamCounts {
    /// A place for another stream of `identity`, or `None` at the cap.
    fn take(self: &Arc<Self>, identity: &str) -> Option<StreamSlot> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = map.entry(identity.to_owned()).or_default();
        if *open >= MAX_STREAMS_PER_IDENTITY {
            return None;
        }
        *open += 1;
        Some(StreamSlot {
            counts: Arc::clone(self),
            identity: identity.to_owned(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(open) = map.get_mut(&self.identity) {
            *open -= 1;
            if *open == 0 {
                map.remove(&self.identity);
            }
        }
    }
}

/// The telemetry service.
pub(crate) struct TelemetryService {
    pub hub: Arc<Hub>,
    pub state: watch::Receiver<Arc<Published>>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// Streams end after this long (the proxy reconnects), like discovery streams, so none
    /// outlives the client certificate it was opened with by much.
    pub max_age: std::time::Duration,
    /// Streams open per identity.
    pub streams: Arc<StreamCounts>,
}

type ControlStream = Pin<Box<dyn Stream<Item = Result<TelemetryControl, Status>> + Send>>;

/// `namespace/name` of the only workload running as `identity`, if there is one.
fn workload_of(state: &watch::Receiver<Arc<Published>>, identity: &str) -> Option<String> {
    let published = state.borrow();
    let mut found = published
        .snapshot
        .workloads()
        .filter(|w| w.identity.as_str() == identity);
    let first = found.next()?;
    found
        .next()
        .is_none()
        .then(|| format!("{}/{}", first.namespace, first.name))
}

/// A resolver for one stream, remembering what it looked up (bounded).
fn resolver(state: watch::Receiver<Arc<Published>>) -> Resolver {
    let cache = std::sync::Mutex::new(HashMap::<String, Option<String>>::new());
    Arc::new(move |identity: &str| {
        let mut cache = cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(hit) = cache.get(identity) {
            return hit.clone();
        }
        if cache.len() >= RESOLVE_CACHE {
            cache.clear();
        }
        let found = workload_of(&state, identity);
        cache.insert(identity.to_owned(), found.clone());
        found
    })
}

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    type ReportStream = ControlStream;

    async fn report(
        &self,
        request: Request<Streaming<TelemetryReport>>,
    ) -> Result<Response<ControlStream>, Status> {
        let Some(identity) = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.identity.clone())
        else {
            return Err(Status::unauthenticated(
                "the telemetry stream requires a client certificate",
            ));
        };
        let Some(slot) = self.streams.take(identity.as_str()) else {
            return Err(Status::resource_exhausted(format!(
                "{identity} already has {MAX_STREAMS_PER_IDENTITY} telemetry streams open"
            )));
        };
        let reporter =
            workload_of(&self.state, identity.as_str()).unwrap_or_else(|| identity.to_string());
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let hub = Arc::clone(&self.hub);
        let resolve = resolver(self.state.clone());
        let shutdown = self.shutdown.clone();
        let end = tokio::time::sleep(self.max_age);
        // Only a workload's sidecar has observations to give: the destination is its own.
        let observe = self.hub.observed().is_some() && !reporter.starts_with("spiffe://");
        self.tracker.spawn(async move {
            let _slot = slot;
            tokio::pin!(end);
            let mut active = hub.active();
            let mut last = *active.borrow_and_update();
            if tx
                .send(Ok(TelemetryControl { active: last, observe }))
                .await
                .is_err()
            {
                return;
            }
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = &mut end => return,
                    changed = active.changed() => {
                        if changed.is_err() { return }
                        let now = *active.borrow_and_update();
                        if now != last {
                            last = now;
                            if tx.send(Ok(TelemetryControl { active: now, observe })).await.is_err() {
                                return;
                            }
                        }
                    }
                    report = inbound.message() => match report {
                        Ok(Some(report)) => hub.ingest(&reporter, report, &resolve),
                        Ok(None) => return,
                        Err(e) => {
                            tracing::debug!(%reporter, error = %e, "telemetry stream failed");
                            return;
                        }
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
