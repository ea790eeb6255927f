//! The cluster as the configuration source: Pods, Services (with their EndpointSlices' view
//! of which Pods are ready), Namespaces, NetworkPolicies and
//! Palisade's custom resources (AuthorizationPolicy, EgressPolicy, MeshConfig) are watched
//! through the API server (kube-rs watchers: list, then watch, relisting after an error with
//! backoff), converted to the mesh's own documents ([`convert`]) and validated by the same
//! loader as a directory, so both sources build the same snapshot from the same resources.
//!
//! Nothing is served before every kind has been listed once: a half-read cluster would push
//! policies without their workloads. After that, each change rebuilds the snapshot (changes
//! within [`DEBOUNCE`] are taken together); a snapshot the loader rejects is logged, counted
//! in `/metrics` and not pushed: the last good one stays in force, as in directory mode.

pub mod ca_secret;
pub mod convert;
pub mod token_review;
pub mod trust;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use palisade_certs::ActiveCa;
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigErrors};
use crate::model::MeshSnapshot;

/// Changes arriving within this window are applied as one.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// No client configuration (neither in a pod nor a usable KUBECONFIG).
    #[error("no Kubernetes client configuration: {0}")]
    Config(String),
    /// Some kinds were never listed within the start timeout.
    #[error(
        "the Kubernetes API did not list {kinds} within {waited:?}{}",
        last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
    )]
    NotSynced {
        /// The kinds still unlisted.
        kinds: String,
        /// How long the source waited.
        waited: Duration,
        /// The last watch error seen, if any.
        last_error: Option<String>,
    },
    /// The cluster's resources do not make a valid mesh configuration.
    #[error("the cluster's configuration is invalid: {0}")]
    Invalid(#[from] ConfigErrors),
}

/// One watched kind: where it lives in the API and how its objects become documents.
struct Kind {
    /// Name in logs and errors (`pods`, `authorizationpolicies.palisade.dev`…).
    name: &'static str,
    resource: ApiResource,
    convert: fn(&Value) -> Option<Value>,
    /// A kind whose CRD may not be installed (Istio's): while the API answers 404 it counts
    /// as listed and empty, and the watcher keeps retrying in case it is installed later.
    optional: bool,
}

fn kinds() -> Vec<Kind> {
    let resource = |group: &str, version: &str, kind: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    };
    vec![
        Kind {
            name: "pods",
            resource: resource("", "v1", "Pod", "pods"),
            convert: convert::pod_document,
            optional: false,
        },
        Kind {
            name: "services",
            resource: resource("", "v1", "Service", "services"),
            convert: convert::service_to_service,
            optional: false,
        },
        Kind {
            name: "endpointslices.discovery.k8s.io",
            resource: resource("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
            convert: convert::endpoint_slice,
            optional: false,
        },
        Kind {
            name: "namespaces",
            resource: resource("", "v1", "Namespace", "namespaces"),
            convert: convert::namespace,
            optional: false,
        },
        Kind {
            name: "networkpolicies.networking.k8s.io",
            resource: resource(
                "networking.k8s.io",
                "v1",
                "NetworkPolicy",
                "networkpolicies",
            ),
            convert: |o| convert::with_spec(o, "networking.k8s.io/v1", "NetworkPolicy"),
            optional: false,
        },
        Kind {
            name: "authorizationpolicies.palisade.dev",
            resource: resource(
                "palisade.dev",
                "v1alpha1",
                "AuthorizationPolicy",
                "authorizationpolicies",
            ),
            convert: |o| convert::with_spec(o, "palisade.dev/v1alpha1", "AuthorizationPolicy"),
            optional: false,
        },
        Kind {
            name: "egresspolicies.palisade.dev",
            resource: resource("palisade.dev", "v1alpha1", "EgressPolicy", "egresspolicies"),
            convert: |o| convert::with_spec(o, "palisade.dev/v1alpha1", "EgressPolicy"),
            optional: false,
        },
        Kind {
            name: "meshconfigs.palisade.dev",
            resource: resource("palisade.dev", "v1alpha1", "MeshConfig", "meshconfigs"),
            convert: |o| convert::with_spec(o, "palisade.dev/v1alpha1", "MeshConfig"),
            optional: false,
        },
        // Users coming from Istio keep their AuthorizationPolicies (CONTRACT: accepted as
        // they are); a cluster without Istio's CRDs simply has none.
        Kind {
            name: "authorizationpolicies.security.istio.io",
            resource: resource(
                "security.istio.io",
                "v1",
                "AuthorizationPolicy",
                "authorizationpolicies",
            ),
            convert: |o| convert::with_spec(o, "security.istio.io/v1", "AuthorizationPolicy"),
            optional: true,
        },
    ]
}

/// The converted objects of one kind.
#[derive(Default)]
struct KindState {
    /// Listed at least once.
    synced: bool,
    /// By `namespace/name`: the document, or `None` for an object that is not part of the
    /// mesh (a Pod without a sidecar).
    objects: BTreeMap<String, Option<Value>>,
    /// Objects of a relist in progress, swapped in when it completes.
    relisting: Option<BTreeMap<String, Option<Value>>>,
}

/// What every watcher has seen, and who to wake on a change.
struct Objects {
    kinds: Mutex<Vec<KindState>>,
    changed: Notify,
    last_error: Mutex<Option<String>>,
}

/// A connection to the API server and the watchers feeding the snapshot.
pub struct KubernetesSource {
    client: Client,
}

impl std::fmt::Debug for KubernetesSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesSource")
            .field("api", &self.client.default_namespace())
            .finish()
    }
}

impl KubernetesSource {
    /// A source on `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// A source on the API server the environment names: the pod's service account in a
    /// cluster, else `KUBECONFIG` or `~/.kube/config`.
    pub async fn infer() -> Result<Self, KubernetesError> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| KubernetesError::Config(e.to_string()))?;
        let client =
            Client::try_from(config).map_err(|e| KubernetesError::Config(e.to_string()))?;
        Ok(Self::new(client))
    }

    /// Starts the watchers, waits (at most `timeout`) until every kind has been listed, and
    /// returns the first snapshot with the running source.
    pub async fn start(
        self,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<RunningSource, KubernetesError> {
        let kinds = kinds();
        let objects = Arc::new(Objects {
            kinds: Mutex::new(kinds.iter().map(|_| KindState::default()).collect()),
            changed: Notify::new(),
            last_error: Mutex::new(None),
        });
        for (index, kind) in kinds.into_iter().enumerate() {
            tokio::spawn(watch_kind(
                self.client.clone(),
                index,
                kind,
                Arc::clone(&objects),
                shutdown.clone(),
            ));
        }
        let synced = async {
            loop {
                let notified = objects.changed.notified();
                if unsynced(&objects).is_empty() {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(timeout, synced).await.is_err() {
            shutdown.cancel();
            return Err(KubernetesError::NotSynced {
                kinds: unsynced(&objects).join(", "),
                waited: timeout,
                last_error: lock(&objects.last_error).clone(),
            });
        }
        let built = build(&objects);
        let initial = built.snapshot?;
        report_unmeshed(&built.unmeshed);
        Ok(RunningSource {
            objects,
            initial,
            unmeshed: built.unmeshed,
            meshed_namespaces: built.meshed_namespaces,
            reviewer: token_review::TokenReviewer::new(self.client.clone()),
            client: self.client,
        })
    }
}

/// The watchers after the first complete listing, with the snapshot it made;
/// [`RunningSource::run`] turns their later changes into new snapshots.
pub struct RunningSource {
    objects: Arc<Objects>,
    initial: MeshSnapshot,
    unmeshed: Vec<String>,
    meshed_namespaces: BTreeSet<String>,
    reviewer: token_review::TokenReviewer,
    client: Client,
}

impl std::fmt::Debug for RunningSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunningSource")
    }
}

impl RunningSource {
    /// The snapshot of the first complete listing.
    pub fn initial(&self) -> &MeshSnapshot {
        &self.initial
    }

    /// Pods opted in to the mesh but running without a sidecar (`namespace/name`), at the
    /// first listing.
    pub fn unmeshed_pods(&self) -> &[String] {
        &self.unmeshed
    }

    /// TokenReviews against the same API server.
    pub fn reviewer(&self) -> token_review::TokenReviewer {
        self.reviewer.clone()
    }

    /// Rebuilds the snapshot on every change and hands it to `publish` (which may refuse it;
    /// the refusal is logged), keeps `trust_anchors_pem` in every meshed namespace, and
    /// reports opted-in Pods without a sidecar through `unmeshed`, until `shutdown`.
    pub(crate) async fn run(
        self,
        publish: impl Fn(Result<MeshSnapshot, ConfigErrors>) -> Result<(), ConfigErrors>,
        mut ca: watch::Receiver<Arc<ActiveCa>>,
        unmeshed: impl Fn(usize),
        shutdown: CancellationToken,
    ) {
        let mut trust = trust::TrustAnchorWriter::default();
        unmeshed(self.unmeshed.len());
        let anchors = |ca: &mut watch::Receiver<Arc<ActiveCa>>| {
            ca.borrow_and_update().ca.bundle().to_pem_list().concat()
        };
        let mut meshed_namespaces = self.meshed_namespaces.clone();
        trust
            .sync(&self.client, &meshed_namespaces, &anchors(&mut ca))
            .await;
        let mut last_unmeshed = self.unmeshed;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.objects.changed.notified() => {}
                // A rotation stage changed the roots: every meshed namespace gets them.
                changed = ca.changed() => {
                    if changed.is_err() { return }
                    trust.sync(&self.client, &meshed_namespaces, &anchors(&mut ca)).await;
                    continue;
                }
            }
            // Take a burst (a rollout, a relist) as one change.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(DEBOUNCE) => break,
                    _ = self.objects.changed.notified() => {}
                }
            }
            let objects = Arc::clone(&self.objects);
            let built = match tokio::task::spawn_blocking(move || build(&objects)).await {
                Ok(built) => built,
                Err(e) => {
                    tracing::error!(error = %e, "snapshot build panicked");
                    continue;
                }
            };
            match publish(built.snapshot) {
                Ok(()) => tracing::info!("cluster configuration changed; pushed"),
                Err(errors) => {
                    for e in &errors {
                        tracing::warn!(error = %e, "cluster configuration rejected; keeping the last good one");
                    }
                }
            }
            unmeshed(built.unmeshed.len());
            if built.unmeshed != last_unmeshed {
                report_unmeshed(&built.unmeshed);
                last_unmeshed = built.unmeshed;
            }
            meshed_namespaces = built.meshed_namespaces;
            trust
                .sync(&self.client, &meshed_namespaces, &anchors(&mut ca))
                .await;
        }
    }
}

/// Logs each opted-in Pod running without a sidecar, with the fix.
fn report_unmeshed(pods: &[String]) {
    for pod in pods {
        tracing::warn!(
            pod = %pod,
            "pod opted in to the mesh runs without a sidecar (created while the injector was \
             unreachable, or before the namespace was labelled): delete it so that it is \
             recreated with one"
        );
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unsynced(objects: &Objects) -> Vec<&'static str> {
    let names: Vec<&'static str> = kinds().iter().map(|k| k.name).collect();
    lock(&objects.kinds)
        .iter()
        .zip(names)
        .filter(|(state, _)| !state.synced)
        .map(|(_, name)| name)
        .collect()
}

/// What one pass over the watched objects gives.
struct Built {
    /// The snapshot, validated by the directory loader.
    snapshot: Result<MeshSnapshot, ConfigErrors>,
    /// `namespace/name` of running Pods opted in to the mesh without a sidecar.
    unmeshed: Vec<String>,
    /// Namespaces that need the trust anchors: opted in, or running meshed or opted-in Pods.
    meshed_namespaces: BTreeSet<String>,
}

/// One pass over everything the watchers hold.
fn build(objects: &Objects) -> Built {
    let names: Vec<&'static str> = kinds().iter().map(|k| k.name).collect();
    let all: Vec<(PathBuf, Value)> = lock(&objects.kinds)
        .iter()
        .zip(names)
        .flat_map(|(state, kind)| {
            state.objects.iter().filter_map(move |(key, document)| {
                document
                    .clone()
                    .map(|d| (PathBuf::from(format!("kubernetes {kind} {key}")), d))
            })
        })
        .collect();
    let (slices, all): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|(_, d)| d["kind"] == convert::ENDPOINT_SLICE);
    let slices: Vec<Value> = slices.into_iter().map(|(_, d)| d).collect();
    let (markers, mut documents): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|(_, d)| d["kind"] == convert::UNMESHED_POD);
    let opted_in_namespaces: BTreeSet<String> = documents
        .iter()
        .filter(|(_, d)| {
            d["kind"] == "Namespace" && d["metadata"]["labels"][convert::INJECT] == "enabled"
        })
        .filter_map(|(_, d)| d["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    let mut meshed_namespaces = opted_in_namespaces.clone();
    let mut unmeshed = Vec::new();
    for (_, marker) in &markers {
        let namespace = marker["metadata"]["namespace"].as_str().unwrap_or_default();
        let annotation = marker["metadata"]["annotations"][convert::INJECT].as_str();
        let opted_in = annotation == Some("enabled")
            || (opted_in_namespaces.contains(namespace) && annotation != Some("disabled"));
        if opted_in {
            meshed_namespaces.insert(namespace.to_owned());
            unmeshed.push(format!(
                "{namespace}/{}",
                marker["metadata"]["name"].as_str().unwrap_or_default()
            ));
        }
    }
    let workloads: Vec<Value> = documents
        .iter()
        .filter(|(_, d)| d["kind"] == "Workload")
        .map(|(_, d)| d.clone())
        .collect();
    meshed_namespaces.extend(
        workloads
            .iter()
            .filter_map(|w| w["metadata"]["namespace"].as_str().map(str::to_owned)),
    );
    for (_, document) in &mut documents {
        if document["kind"] == "Service" {
            convert::resolve_target_ports(document, &workloads);
            convert::mark_not_ready(document, &slices);
        }
    }
    Built {
        snapshot: config::load_json_documents(documents),
        unmeshed,
        meshed_namespaces,
    }
}

/// Keeps one kind's objects in `objects` until `shutdown`, relisting with backoff on errors.
async fn watch_kind(
    client: Client,
    index: usize,
    kind: Kind,
    objects: Arc<Objects>,
    shutdown: CancellationToken,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &kind.resource);
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        let Some(event) = event else { return };
        let event = match event {
            Ok(event) => event,
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                if kind.optional && status.code == 404 =>
            {
                let mut kinds = lock(&objects.kinds);
                let Some(state) = kinds.get_mut(index) else {
                    return;
                };
                let had_objects = !state.objects.is_empty();
                if !state.synced {
                    tracing::info!(kind = kind.name, "not installed in this cluster; none read");
                }
                state.objects.clear();
                state.relisting = None;
                state.synced = true;
                drop(kinds);
                if had_objects {
                    tracing::warn!(
                        kind = kind.name,
                        "no longer installed; its objects are gone"
                    );
                }
                objects.changed.notify_waiters();
                objects.changed.notify_one();
                continue;
            }
            Err(e) => {
                tracing::warn!(kind = kind.name, error = %e, "Kubernetes watch error; retrying");
                *lock(&objects.last_error) = Some(format!("{}: {e}", kind.name));
                continue;
            }
        };
        let entry = |object: &DynamicObject| {
            let key = format!(
                "{}/{}",
                object.metadata.namespace.as_deref().unwrap_or(""),
                object.metadata.name.as_deref().unwrap_or("")
            );
            let document = serde_json::to_value(object)
                .ok()
                .and_then(|json| (kind.convert)(&json));
            (key, document)
        };
        let mut kinds = lock(&objects.kinds);
        let Some(state) = kinds.get_mut(index) else {
            return;
        };
        let changed = match event {
            Event::Init => {
                state.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply(object) => {
                let (key, document) = entry(&object);
                state
                    .relisting
                    .get_or_insert_default()
                    .insert(key, document);
                false
            }
            Event::InitDone => {
                state.objects = state.relisting.take().unwrap_or_default();
                state.synced = true;
                true
            }
            Event::Apply(object) => {
                let (key, document) = entry(&object);
                state.objects.insert(key, document.clone()) != Some(document)
            }
            Event::Delete(object) => {
                let (key, _) = entry(&object);
                state.objects.remove(&key).is_some()
            }
        };
        drop(kinds);
        if changed {
            objects.changed.notify_waiters();
            // A waiter between its check and its `notified()` still sees this one.
            objects.changed.notify_one();
        }
    }
}
