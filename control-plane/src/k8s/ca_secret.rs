//! The CA state of a cluster, kept in a Secret (`palisade-system/palisade-ca` as
//! `palisade install` creates it) whose keys are the CA directory's file names. Control plane
//! replicas mount it as their CA directory and poll it; `palisade ca rotate --kubernetes`
//! moves a rotation on by patching it. Each step is one merge patch conditional on the
//! resource version read, so every replica sees a step whole, and two operators rotating at
//! once cannot interleave.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use palisade_certs::CaState;
use palisade_certs::rotation::Change;
use serde_json::{Value, json};

/// The field manager named in the API server's records.
const MANAGER: &str = "palisade-ca-rotate";

/// Why the Secret could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    /// The API server refused or could not be reached.
    #[error("secret {namespace}/{name}: {source}")]
    Api {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// kube's error.
        source: kube::Error,
    },
    /// The Secret changed since it was read (another rotation, an edit).
    #[error(
        "secret {namespace}/{name} changed since it was read (someone else is editing it); \
         run the command again"
    )]
    Conflict {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// No cluster configuration (KUBECONFIG, or in-cluster service account).
    #[error("no cluster to reach: {0}")]
    Config(String),
    /// A key holds something other than UTF-8 text.
    #[error("secret {namespace}/{name}: key {key} is not PEM or JSON text")]
    NotText {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The key.
        key: String,
    },
}

/// The CA Secret of a cluster.
pub struct CaSecret {
    api: Api<Secret>,
    namespace: String,
    name: String,
    /// The resource version of the last read: the precondition of the next patch.
    read_version: Mutex<Option<String>>,
}

impl std::fmt::Debug for CaSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaSecret({}/{})", self.namespace, self.name)
    }
}

impl CaSecret {
    /// The Secret `namespace/name`, through `client`.
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            read_version: Mutex::new(None),
        }
    }

    /// The Secret `namespace/name`, through the cluster named by KUBECONFIG or the pod's
    /// service account.
    pub async fn infer(namespace: &str, name: &str) -> Result<Self, CaSecretError> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| CaSecretError::Config(e.to_string()))?;
        let client = Client::try_from(config).map_err(|e| CaSecretError::Config(e.to_string()))?;
        Ok(Self::new(client, namespace, name))
    }

    fn api_error(&self, source: kube::Error) -> CaSecretError {
        match &source {
            kube::Error::Api(status) if status.code == 409 => CaSecretError::Conflict {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
            },
            _ => CaSecretError::Api {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            },
        }
    }

    /// How the Secret is named in messages about its keys.
    pub fn origin(&self) -> PathBuf {
        PathBuf::from(format!("secret {}/{}", self.namespace, self.name))
    }

    /// Reads the Secret's keys as a CA state.
    pub async fn read(&self) -> Result<CaState, CaSecretError> {
        let secret = self
            .api
            .get(&self.name)
            .await
            .map_err(|e| self.api_error(e))?;
        let mut files = BTreeMap::new();
        for (key, ByteString(bytes)) in secret.data.unwrap_or_default() {
            let text = String::from_utf8(bytes).map_err(|_| CaSecretError::NotText {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                key: key.clone(),
            })?;
            files.insert(key, text);
        }
        *self
            .read_version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = secret.metadata.resource_version;
        Ok(CaState::from_files(self.origin(), files))
    }

    /// Applies `changes` in one merge patch, refused if the Secret changed since the last
    /// [`CaSecret::read`].
    pub async fn apply(&self, changes: &[Change]) -> Result<(), CaSecretError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut data = serde_json::Map::new();
        for change in changes {
            match change {
                Change::Write { name, contents, .. } => {
                    let encoded = serde_json::to_value(ByteString(contents.as_bytes().to_vec()))
                        .unwrap_or(Value::Null);
                    data.insert(name.clone(), encoded);
                }
                // `null` in a merge patch removes the key.
                Change::Remove { name } => {
                    data.insert(name.clone(), Value::Null);
                }
            }
        }
        let version = self
            .read_version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let patch = json!({
            "metadata": {"resourceVersion": version},
            "data": data,
        });
        let params = PatchParams {
            field_manager: Some(MANAGER.to_owned()),
            ..Default::default()
        };
        let patched = self
            .api
            .patch(&self.name, &params, &Patch::Merge(&patch))
            .await
            .map_err(|e| self.api_error(e))?;
        *self
            .read_version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = patched.metadata.resource_version;
        Ok(())
    }
}
