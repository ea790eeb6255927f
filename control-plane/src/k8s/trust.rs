//! The trust anchors ConfigMap (`palisade-trust-anchors`, key `ca.crt`) in every meshed
//! namespace: the injector mounts it into each sidecar, which needs it to verify the control
//! plane before it has a certificate of its own. A ConfigMap is only visible in its own
//! namespace, hence one per namespace.
//!
//! Written with create, then merge patch when the anchors change; the RBAC of
//! `palisade install` allows exactly that name.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// The ConfigMap's name (CONTRACT: Kubernetes names; mounted by the injector).
pub const CONFIG_MAP: &str = "palisade-trust-anchors";
/// The key holding the PEM roots.
pub const KEY: &str = "ca.crt";
/// The field manager named in the API server's records.
const MANAGER: &str = "palisade-control-plane";

/// Keeps the ConfigMap in namespaces as they become meshed, remembering what it wrote.
#[derive(Debug, Default)]
pub(crate) struct TrustAnchorWriter {
    written: BTreeMap<String, String>,
}

impl TrustAnchorWriter {
    /// Writes `pem` into every namespace of `namespaces` that does not hold it yet; a
    /// failure is logged and retried on the next change.
    pub async fn sync(&mut self, client: &Client, namespaces: &BTreeSet<String>, pem: &str) {
        self.written.retain(|ns, _| namespaces.contains(ns));
        for namespace in namespaces {
            if self.written.get(namespace).is_some_and(|w| w == pem) {
                continue;
            }
            match write(client, namespace, pem).await {
                Ok(()) => {
                    tracing::info!(namespace = %namespace, config_map = CONFIG_MAP, "trust anchors written");
                    self.written.insert(namespace.clone(), pem.to_owned());
                }
                Err(e) => {
                    tracing::warn!(namespace = %namespace, config_map = CONFIG_MAP, error = %e, "cannot write the trust anchors; retrying on the next change");
                }
            }
        }
    }
}

async fn write(client: &Client, namespace: &str, pem: &str) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let config_map = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(CONFIG_MAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "palisade".to_owned(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(KEY.to_owned(), pem.to_owned())])),
        ..Default::default()
    };
    let params = PostParams {
        field_manager: Some(MANAGER.to_owned()),
        ..Default::default()
    };
    match api.create(&params, &config_map).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let patch = json!({"data": {KEY: pem}});
            let params = PatchParams {
                field_manager: Some(MANAGER.to_owned()),
                ..Default::default()
            };
            api.patch(CONFIG_MAP, &params, &Patch::Merge(&patch))
                .await
                .map(drop)
        }
        Err(e) => Err(e),
    }
}
