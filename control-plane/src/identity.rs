//! `palisade.v1.Identity`: signs workload CSRs.
//!
//! The identity written into a certificate is always derived from the current snapshot
//! (`spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>` of the named workload),
//! never taken from the request: the caller proves which workload it is (bootstrap token,
//! or a still-valid certificate of the same identity), and the CSR must ask for exactly
//! that workload's identity.

use std::sync::{Arc, RwLock};

use palisade_certs::{CaError, CertificateAuthority};
use palisade_proto::v1::identity_server::Identity;
use palisade_proto::v1::{CertifyRequest, CertifyResponse};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::index::Published;
use crate::metrics::Metrics;
use crate::tokens::TokenStore;
use crate::transport::PeerInfo;

/// The identity service.
pub(crate) struct IdentityService {
    pub ca: Arc<CertificateAuthority>,
    pub state: watch::Receiver<Arc<Published>>,
    pub tokens: Arc<RwLock<Arc<TokenStore>>>,
    pub metrics: Arc<Metrics>,
}

/// A refusal with its metric label.
struct Refusal {
    reason: &'static str,
    status: Status,
}

impl Refusal {
    fn new(reason: &'static str, status: Status) -> Self {
        Self { reason, status }
    }
}

impl IdentityService {
    fn certify_inner(
        &self,
        peer: Option<&PeerInfo>,
        req: &CertifyRequest,
    ) -> Result<CertifyResponse, Refusal> {
        let who = format!("{}/{}", req.namespace, req.workload);
        if req.namespace.is_empty() || req.workload.is_empty() {
            return Err(Refusal::new(
                "invalid_argument",
                Status::invalid_argument("workload and namespace are required"),
            ));
        }
        let published = Arc::clone(&self.state.borrow());
        let lifetime = published.snapshot.settings().certificate_lifetime;
        let workload = if req.token.is_empty() {
            // Renewal: the connection's certificate must already be this workload's.
            let Some(peer_id) = peer.and_then(|p| p.identity.as_ref()) else {
                return Err(Refusal::new(
                    "unauthenticated",
                    Status::unauthenticated(format!(
                        "no bootstrap token and no client certificate: cannot prove the \
                         identity of {who}"
                    )),
                ));
            };
            let Some(workload) = published.snapshot.workload(&req.namespace, &req.workload) else {
                return Err(Refusal::new(
                    "not_found",
                    Status::not_found(format!("workload {who} is not part of the mesh")),
                ));
            };
            if *peer_id != workload.identity {
                return Err(Refusal::new(
                    "permission_denied",
                    Status::permission_denied(format!(
                        "the client certificate ({peer_id}) is not the identity of {who} ({})",
                        workload.identity
                    )),
                ));
            }
            workload
        } else {
            let valid = self
                .tokens
                .read()
                .map(|t| t.verify(&req.namespace, &req.workload, &req.token))
                .unwrap_or(false);
            if !valid {
                return Err(Refusal::new(
                    "unauthenticated",
                    Status::unauthenticated(format!("bootstrap token rejected for {who}")),
                ));
            }
            let Some(workload) = published.snapshot.workload(&req.namespace, &req.workload) else {
                return Err(Refusal::new(
                    "not_found",
                    Status::not_found(format!("workload {who} is not part of the mesh")),
                ));
            };
            workload
        };
        let issued = self
            .ca
            .sign_csr(&req.csr_pem, &workload.identity, lifetime)
            .map_err(|e| match e {
                CaError::IdentityMismatch { .. } => Refusal::new(
                    "permission_denied",
                    Status::permission_denied(format!(
                        "asking for another workload's SPIFFE ID is refused: {e}"
                    )),
                ),
                CaError::BadCsr(_) => {
                    Refusal::new("invalid_argument", Status::invalid_argument(e.to_string()))
                }
                other => {
                    tracing::error!(workload = %who, error = %other, "cannot sign a certificate");
                    Refusal::new(
                        "internal",
                        Status::internal(format!("cannot sign: {other}")),
                    )
                }
            })?;
        tracing::info!(
            workload = %who,
            identity = %issued.spiffe_id,
            renewal = req.token.is_empty(),
            not_after = %palisade_certs::ca::fmt_unix(issued.not_after),
            "issued a workload certificate"
        );
        Ok(CertifyResponse {
            certificate_pem: issued.leaf_pem(),
            chain_pem: issued.chain_pem(),
            trust_bundle_pem: self.ca.bundle().to_pem_list(),
            spiffe_id: issued.spiffe_id.to_string(),
            not_before_unix: issued.not_before,
            not_after_unix: issued.not_after,
        })
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let req = request.into_inner();
        match self.certify_inner(peer.as_ref(), &req) {
            Ok(resp) => {
                self.metrics.certificate_issued();
                Ok(Response::new(resp))
            }
            Err(refusal) => {
                self.metrics.certify_refused(refusal.reason);
                tracing::warn!(
                    workload = %format!("{}/{}", req.namespace, req.workload),
                    peer = ?peer.as_ref().map(|p| p.remote_addr),
                    reason = refusal.status.message(),
                    "certificate request refused"
                );
                Err(refusal.status)
            }
        }
    }
}
