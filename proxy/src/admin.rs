//! Admin HTTP (127.0.0.1:15000 by default): `/live`, `/ready`, `/metrics`, `/certs`, `/config`,
//! and the app's rewritten kubelet probes under `/app-health/` (see [`crate::probes`]).
//! `/config` lists enforced AuthorizationPolicies under `authorization` and dry-run ones, which
//! are only evaluated, under `authorization_dry_run`.
//!
//! In a pod the admin port listens on every address so that kubelet reaches it, and inbound
//! capture leaves it alone: so a caller from outside the pod gets only what kubelet and a
//! metrics scraper need (`/live`, `/ready`, `/metrics`, `/app-health/`); `/config` and
//! `/certs`, which describe the policies and credentials, answer the pod itself only.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::discovery::Snapshots;
use crate::http::{ProxyBody, full};
use crate::identity::unix_now;
use crate::metrics::Metrics;
use crate::model::MeshView;
use crate::probes::{self, AppProbes};
use crate::tls::TlsState;

/// What the admin endpoints report on.
#[derive(Debug)]
pub struct Admin {
    /// Current mesh view.
    pub view: watch::Receiver<Option<Arc<MeshView>>>,
    /// Current TLS material.
    pub tls: watch::Receiver<Option<Arc<TlsState>>>,
    /// Discovery versions and rejections.
    pub status: watch::Receiver<Snapshots>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The app's kubelet probes, run on request.
    pub probes: Arc<AppProbes>,
    /// Where the app listens (the probes' target).
    pub app_host: IpAddr,
}

impl Admin {
    /// Why the proxy is not ready, or `None` when it is.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.tls.borrow().is_none() {
            Some("no workload certificate yet")
        } else if self.view.borrow().is_none() {
            Some("no complete configuration from the control plane yet")
        } else {
            None
        }
    }

    /// Serves one admin connection (HTTP/1.1).
    pub async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        watcher: Watcher,
    ) {
        let local_caller = peer.ip().to_canonical().is_loopback();
        let service = hyper::service::service_fn(move |req| {
            let this = self.clone();
            async move { Ok::<_, Infallible>(this.handle(&req, local_caller).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(stream), service);
        let _ = watcher.watch(conn).await;
    }

    async fn handle(&self, req: &Request<Incoming>, local_caller: bool) -> Response<ProxyBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        }
        let path = req.uri().path();
        if path.starts_with(probes::PATH_PREFIX) {
            return match self.probes.run(path, self.app_host).await {
                Some(Ok(())) => text(StatusCode::OK, "ok\n"),
                Some(Err(reason)) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("probe failed: {reason}\n"),
                ),
                None => text(StatusCode::NOT_FOUND, "no such probe\n"),
            };
        }
        if matches!(path, "/certs" | "/config") && !local_caller {
            return text(
                StatusCode::FORBIDDEN,
                "only from inside the pod (127.0.0.1)\n",
            );
        }
        match path {
            "/live" => text(StatusCode::OK, "live\n"),
            "/ready" => match self.not_ready_reason() {
                None => text(StatusCode::OK, "ready\n"),
                Some(reason) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {reason}\n"),
                ),
            },
            "/metrics" => {
                self.refresh_expiry();
                respond(
                    StatusCode::OK,
                    palisade_proto::exposition::PROMETHEUS_TEXT,
                    self.metrics.encode(),
                )
            }
            "/certs" => json(&self.certs()),
            "/config" => json(&self.config()),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /live /ready /metrics /certs /config\n",
            ),
        }
    }

    /// Sets the seconds left of the leaf, its intermediates and the trusted roots, as of now.
    fn refresh_expiry(&self) {
        let Some(tls) = self.tls.borrow().clone() else {
            return;
        };
        let now = unix_now();
        let creds = tls.credentials();
        let chain = creds
            .chain()
            .iter()
            .enumerate()
            .map(|(i, c)| (if i == 0 { "leaf" } else { "intermediate" }, c));
        let roots = tls.bundle().roots().iter().map(|c| ("root", c));
        let certs: Vec<(&'static str, String, i64)> = chain
            .chain(roots)
            .filter_map(|(role, c)| {
                let info = palisade_certs::svid::inspect(c.as_ref()).ok()?;
                Some((role, info.serial, info.not_after - now))
            })
            .collect();
        self.metrics.certificate_expiry(certs.into_iter());
    }

    fn certs(&self) -> serde_json::Value {
        let Some(tls) = self.tls.borrow().clone() else {
            return serde_json::json!({ "certificate": null, "reason": "no workload certificate yet" });
        };
        let creds = tls.credentials();
        let chain: Vec<serde_json::Value> = creds
            .chain()
            .iter()
            .filter_map(|c| palisade_certs::svid::inspect(c.as_ref()).ok())
            .map(|info| cert_json(&info))
            .collect();
        let roots: Vec<serde_json::Value> = tls
            .bundle()
            .roots()
            .iter()
            .filter_map(|c| palisade_certs::svid::inspect(c.as_ref()).ok())
            .map(|info| cert_json(&info))
            .collect();
        serde_json::json!({
            "identity": creds.identity().to_string(),
            "serial": creds.serial(),
            "not_before": palisade_certs::ca::fmt_unix(creds.not_before()),
            "not_after": palisade_certs::ca::fmt_unix(creds.not_after()),
            "expires_in_seconds": creds.not_after() - unix_now(),
            "chain": chain,
            "chain_pem": creds.chain().iter().map(palisade_certs::pem::encode_cert).collect::<String>(),
            "trust_domain": tls.bundle().trust_domain().to_string(),
            "trust_bundle": roots,
        })
    }

    fn config(&self) -> serde_json::Value {
        let status = self.status.borrow().clone();
        let view = self.view.borrow().clone();
        serde_json::json!({
            "versions": status.versions,
            "rejections": status.rejections,
            "workload": view.as_ref().map(|v| serde_json::to_value(&*v.workload).unwrap_or_default()),
            "settings": view.as_ref().map(|v| serde_json::to_value(&*v.settings).unwrap_or_default()),
            "services": view.as_ref().map(|v| serde_json::to_value(&*v.services).unwrap_or_default()),
            // Enforced policies, then the dry-run ones apart: those are only evaluated and logged.
            "authorization": view.as_ref().map(|v| policies_json(v.authz.policies())),
            "authorization_dry_run": view.as_ref().map(|v| policies_json(v.authz.dry_run_policies())),
            "egress": view.as_ref().map(|v| serde_json::to_value(&*v.egress).unwrap_or_default()),
            "network_policy": view.as_ref().map(|v| serde_json::to_value(v.netpol.summary()).unwrap_or_default()),
        })
    }
}

fn policies_json<'a>(
    policies: impl Iterator<Item = (&'a str, crate::authz::Action, usize)>,
) -> Vec<serde_json::Value> {
    policies
        .map(|(policy, action, rules)| {
            serde_json::json!({"policy": policy, "action": action, "rules": rules})
        })
        .collect()
}

fn cert_json(info: &palisade_certs::CertInfo) -> serde_json::Value {
    serde_json::json!({
        "subject": info.subject,
        "issuer": info.issuer,
        "serial": info.serial,
        "uri_sans": info.uri_sans,
        "is_ca": info.is_ca,
        "not_before": palisade_certs::ca::fmt_unix(info.not_before),
        "not_after": palisade_certs::ca::fmt_unix(info.not_after),
    })
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    respond(status, "text/plain; charset=utf-8", body.to_owned())
}

fn json(value: &serde_json::Value) -> Response<ProxyBody> {
    let body = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".into());
    respond(StatusCode::OK, "application/json", body + "\n")
}
