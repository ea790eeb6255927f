//! A Kubernetes API emulator on loopback for tests of the Kubernetes source: kmock (PyPI),
//! run by `kmock_server.py` next to this file. Not a real API server: no admission, no
//! validation and no resource versions of its own (writes here stamp one, as watchers need
//! them); TokenReviews are answered from recorded statuses.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::TestError;

/// The script that runs the emulator.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/test_util/kmock_server.py");
/// Bound on each request and on the emulator's start.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A running emulator, killed when dropped.
#[derive(Debug)]
pub struct Kmock {
    url: String,
    resource_version: AtomicU64,
    _reviews_file: Option<tempfile::NamedTempFile>,
    _child: Child,
}

/// A Python interpreter that can import kmock: /opt/meshtools/bin/python, then python3.
pub async fn python() -> Option<&'static str> {
    for python in ["/opt/meshtools/bin/python", "python3"] {
        let ok = Command::new(python)
            .args(["-c", "import kmock"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if ok {
            return Some(python);
        }
    }
    None
}

/// A recorded TokenReview status for a projected token of `namespace/service_account`,
/// bound to `pod` when given, valid for `audiences`.
pub fn review(
    namespace: &str,
    service_account: &str,
    pod: Option<&str>,
    audiences: &[&str],
) -> Value {
    let mut user = json!({"username": format!("system:serviceaccount:{namespace}:{service_account}"),
                          "uid": "u-1", "groups": ["system:serviceaccounts"]});
    if let Some(pod) = pod {
        user["extra"] = json!({"authentication.kubernetes.io/pod-name": [pod]});
    }
    json!({"authenticated": true, "user": user, "audiences": audiences})
}

/// A running Pod of namespace `shop` with Palisade's native sidecar (as the injector makes
/// it), labelled `app: <app>`, running as service account `app`, serving `http` on 8080.
pub fn meshed_pod(name: &str, app: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}, "uid": format!("uid-{name}")},
        "spec": {
            "serviceAccountName": app,
            "initContainers": [{"name": "palisade-init", "image": "palisade"},
                               {"name": "palisade-proxy", "image": "palisade", "restartPolicy": "Always"}],
            "containers": [{"name": app, "image": app, "ports": [{"name": "http", "containerPort": 8080}]}]
        },
        "status": {"phase": "Running", "podIP": ip}
    })
}

/// The collection URL of an object, from its apiVersion, kind and namespace.
pub fn collection_path(object: &Value) -> String {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    let kind = object["kind"].as_str().unwrap_or_default();
    let plural = format!("{}s", kind.to_ascii_lowercase()).replace("policys", "policies");
    let prefix = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{prefix}/namespaces/{ns}/{plural}"),
        None => format!("{prefix}/{plural}"),
    }
}

impl Kmock {
    /// Starts the emulator with `python`, answering TokenReviews from `reviews` (token →
    /// recorded status) when given.
    pub async fn start(python: &str, reviews: Option<&Value>) -> Result<Kmock, TestError> {
        let reviews_file = match reviews {
            Some(r) => {
                let file = tempfile::NamedTempFile::new()?;
                std::fs::write(file.path(), r.to_string())?;
                Some(file)
            }
            None => None,
        };
        let mut args = vec![SCRIPT.to_owned(), "300".to_owned()];
        if let Some(file) = &reviews_file {
            args.push(file.path().display().to_string());
        }
        let mut child = Command::new(python)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| TestError::Other("kmock: no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(TIMEOUT, lines.next_line())
            .await
            .map_err(|_| TestError::Other("kmock did not print its URL".into()))??
            .ok_or_else(|| TestError::Other("kmock exited before serving".into()))?;
        let url = line
            .strip_prefix("URL ")
            .ok_or_else(|| TestError::Other(format!("kmock printed {line:?}")))?
            .to_owned();
        Ok(Kmock {
            url,
            resource_version: AtomicU64::new(1),
            _reviews_file: reviews_file,
            _child: child,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kubeconfig naming the emulator (no credentials), for a `palisade control-plane
    /// --kubernetes` process (`KUBECONFIG`).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kmock\n  cluster: {{server: \"{url}\"}}\n\
             users:\n- name: test\n  user: {{}}\ncontexts:\n- name: kmock\n  context: {{cluster: kmock, user: test}}\n\
             current-context: kmock\n",
            url = self.url
        )
    }

    /// A client of the emulator.
    pub fn client(&self) -> Result<kube::Client, TestError> {
        let uri = self
            .url
            .parse()
            .map_err(|e| TestError::Other(format!("kmock URL: {e}")))?;
        kube::Client::try_from(kube::Config::new(uri))
            .map_err(|e| TestError::Other(format!("kube client: {e}")))
    }

    /// Sends one request; a body gets the next resource version. Returns the JSON answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        mut body: Option<Value>,
    ) -> Result<Value, TestError> {
        if let Some(body) = &mut body {
            let version = self.resource_version.fetch_add(1, Ordering::SeqCst);
            body["metadata"]["resourceVersion"] = Value::String(version.to_string());
        }
        let addr = self.url.trim_start_matches("http://").to_owned();
        let tcp = TcpStream::connect(&addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| TestError::Other(format!("kmock: {e}")))?;
        tokio::spawn(conn);
        let content_type = if method == Method::PATCH {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", &addr)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .map_err(|e| TestError::Other(format!("kmock request: {e}")))?;
        let response = tokio::time::timeout(TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| TestError::Other(format!("kmock: {method} {path} timed out")))?
            .map_err(|e| TestError::Other(format!("kmock: {e}")))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| TestError::Other(format!("kmock: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(TestError::Other(format!(
                "kmock: {method} {path}: {status} {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Creates `object` in its collection.
    pub async fn create(&self, object: Value) -> Result<(), TestError> {
        let path = collection_path(&object);
        self.send(Method::POST, &path, Some(object)).await.map(drop)
    }

    /// Merge-patches the object at `object_path`.
    pub async fn patch(&self, object_path: &str, patch: Value) -> Result<(), TestError> {
        self.send(Method::PATCH, object_path, Some(patch))
            .await
            .map(drop)
    }

    /// Deletes the object at `object_path`.
    pub async fn delete(&self, object_path: &str) -> Result<(), TestError> {
        self.send(Method::DELETE, object_path, None).await.map(drop)
    }
}
