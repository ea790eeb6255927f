//! `palisade.v1.Identity`: signs workload CSRs.
//!
//! The identity written into a certificate is always derived from the current snapshot
//! (`spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>` of the named workload),
//! never taken from the request: the caller proves which workload it is (bootstrap token,
//! or a still-valid certificate of the same identity), and the CSR must ask for exactly
//! that workload's identity.
//!
//! A bootstrap token proves it once per certificate lifetime: while a certificate issued
//! with it (or renewed from one) is valid, the token is refused, since its holder renews
//! over mTLS ([`TokenLedger`]). Failed bootstrap attempts are limited per peer address.

use std::sync::{Arc, RwLock};

use palisade_certs::{ActiveCa, CaError};
use palisade_proto::v1::identity_server::Identity;
use palisade_proto::v1::{CertifyRequest, CertifyResponse};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::index::Published;
use crate::k8s::token_review::{ReviewError, ReviewedToken, TokenReviewer};
use crate::logsafe::{Untrusted, is_dns_label};
use crate::metrics::Metrics;
use crate::model::NamespacedName;
use crate::tokens::{TokenLedger, TokenStore};
use crate::transport::{PeerInfo, unix_now};

/// The identity service.
pub(crate) struct IdentityService {
    /// The CA in force; replaced at each rotation stage.
    pub ca: watch::Receiver<Arc<ActiveCa>>,
    pub state: watch::Receiver<Arc<Published>>,
    pub tokens: Arc<RwLock<Arc<TokenStore>>>,
    pub ledger: Arc<TokenLedger>,
    pub metrics: Arc<Metrics>,
    /// In a cluster: bootstrap tokens are projected service-account tokens, checked by the
    /// API server's TokenReview instead of the token file.
    pub reviewer: Option<TokenReviewer>,
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
        reviewed: Option<Result<ReviewedToken, ReviewError>>,
    ) -> Result<CertifyResponse, Refusal> {
        // Names are checked before anything else uses them, so every message below (and
        // the log lines that quote them) holds only DNS labels.
        if !is_dns_label(&req.namespace) || !is_dns_label(&req.workload) {
            return Err(Refusal::new(
                "invalid_argument",
                Status::invalid_argument(
                    "namespace and workload must be DNS-1123 labels (lower-case letters, \
                     digits and '-', at most 63 characters)",
                ),
            ));
        }
        let key = NamespacedName::new(&req.namespace, &req.workload);
        let published = Arc::clone(&self.state.borrow());
        let lifetime = published.snapshot.settings().certificate_lifetime;
        let bootstrap = !req.token.is_empty();
        let workload = if bootstrap {
            let peer_ip = peer.map(|p| p.remote_addr.ip());
            self.ledger.admit(peer_ip, Instant::now()).map_err(|e| {
                Refusal::new("rate_limited", Status::resource_exhausted(e.to_string()))
            })?;
            if let Some(reviewed) = reviewed {
                let who = reviewed.map_err(|e| {
                    Refusal::new(
                        "unauthenticated",
                        Status::unauthenticated(format!("token rejected for {key}: {e}")),
                    )
                })?;
                let Some(workload) = published.snapshot.workload(&req.namespace, &req.workload)
                else {
                    return Err(Refusal::new(
                        "not_found",
                        Status::not_found(format!("workload {key} is not part of the mesh")),
                    ));
                };
                let same_pod = who.pod_name.as_ref().is_none_or(|pod| *pod == req.workload);
                if who.namespace != workload.namespace
                    || who.service_account != workload.service_account
                    || !same_pod
                {
                    return Err(Refusal::new(
                        "permission_denied",
                        Status::permission_denied(format!(
                            "the token is service account {}/{}{} and cannot prove {key}, \
                             which runs as {}",
                            who.namespace,
                            who.service_account,
                            who.pod_name
                                .as_ref()
                                .map(|p| format!(" of pod {p}"))
                                .unwrap_or_default(),
                            workload.service_account
                        )),
                    ));
                }
                // No ledger claim: the token is bound to its pod and short-lived, and a
                // restarted proxy in the same pod must be able to bootstrap again with it.
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
                        Status::unauthenticated(format!("bootstrap token rejected for {key}")),
                    ));
                }
                let Some(workload) = published.snapshot.workload(&req.namespace, &req.workload)
                else {
                    return Err(Refusal::new(
                        "not_found",
                        Status::not_found(format!("workload {key} is not part of the mesh")),
                    ));
                };
                self.ledger
                    .claim(&key, &req.token, unix_now())
                    .map_err(|e| {
                        Refusal::new("token_in_use", Status::unauthenticated(e.to_string()))
                    })?;
                workload
            }
        } else {
            // Renewal: the connection's certificate must already be this workload's.
            let Some(peer_id) = peer.and_then(|p| p.identity.as_ref()) else {
                return Err(Refusal::new(
                    "unauthenticated",
                    Status::unauthenticated(format!(
                        "no bootstrap token and no client certificate: cannot prove the \
                         identity of {key}"
                    )),
                ));
            };
            let Some(workload) = published.snapshot.workload(&req.namespace, &req.workload) else {
                return Err(Refusal::new(
                    "not_found",
                    Status::not_found(format!("workload {key} is not part of the mesh")),
                ));
            };
            if *peer_id != workload.identity {
                return Err(Refusal::new(
                    "permission_denied",
                    Status::permission_denied(format!(
                        "the client certificate ({peer_id}) is not the identity of {key} ({})",
                        workload.identity
                    )),
                ));
            }
            workload
        };
        let ca = Arc::clone(&self.ca.borrow().ca);
        let issued = match ca.sign_csr(&req.csr_pem, &workload.identity, lifetime) {
            Ok(issued) => issued,
            Err(e) => {
                if bootstrap {
                    self.ledger.release(&key);
                }
                return Err(match e {
                    CaError::IdentityMismatch { .. } => Refusal::new(
                        "permission_denied",
                        Status::permission_denied(format!(
                            "asking for another workload's SPIFFE ID is refused: {e}"
                        )),
                    ),
                    // The CSR parser's words may quote the CSR: escaped.
                    CaError::BadCsr(_) => Refusal::new(
                        "invalid_argument",
                        Status::invalid_argument(Untrusted(&e.to_string()).to_string()),
                    ),
                    other => {
                        tracing::error!(workload = %key, error = %other, "cannot sign a certificate");
                        Refusal::new(
                            "internal",
                            Status::internal(format!("cannot sign: {other}")),
                        )
                    }
                });
            }
        };
        let current_token = self
            .tokens
            .read()
            .ok()
            .and_then(|t| t.get(&req.namespace, &req.workload).map(str::to_owned));
        self.ledger
            .issued(&key, current_token.as_deref(), issued.not_after);
        tracing::info!(
            workload = %key,
            identity = %issued.spiffe_id,
            peer = ?peer.map(|p| p.remote_addr),
            bootstrap_token_used = bootstrap,
            not_after = %palisade_certs::ca::fmt_unix(issued.not_after),
            "issued a workload certificate"
        );
        Ok(CertifyResponse {
            certificate_pem: issued.leaf_pem(),
            chain_pem: issued.chain_pem(),
            trust_bundle_pem: ca.bundle().to_pem_list(),
            spiffe_id: issued.spiffe_id.to_string(),
            not_before_unix: issued.not_before,
            not_after_unix: issued.not_after,
            issuer_fingerprint: ca.issuer_fingerprint().to_owned(),
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
        let reviewed = match &self.reviewer {
            Some(reviewer) if !req.token.is_empty() => {
                // The per-address budget is spent before the API server is asked, so a
                // flood of tokens cannot become a flood of TokenReviews.
                let admitted = self
                    .ledger
                    .admit(peer.as_ref().map(|p| p.remote_addr.ip()), Instant::now());
                match admitted {
                    Ok(()) => Some(reviewer.review(&req.token).await),
                    Err(e) => Some(Err(ReviewError::Api(format!("not asked: {e}")))),
                }
            }
            _ => None,
        };
        match self.certify_inner(peer.as_ref(), &req, reviewed) {
            Ok(resp) => {
                self.metrics.certificate_issued();
                Ok(Response::new(resp))
            }
            Err(refusal) => {
                self.metrics.certify_refused(refusal.reason);
                if !req.token.is_empty() && refusal.reason != "rate_limited" {
                    // Every failed bootstrap spends the address's budget: guessing tokens,
                    // or retrying one that is in use, soon meets `rate_limited`.
                    self.ledger
                        .failed(peer.as_ref().map(|p| p.remote_addr.ip()), Instant::now());
                }
                if refusal.reason == "rate_limited" {
                    // Counted; one line per refused attempt would let the address that is
                    // being limited fill the log instead.
                    tracing::debug!(
                        peer = ?peer.as_ref().map(|p| p.remote_addr),
                        "bootstrap attempt refused: rate limited"
                    );
                } else {
                    tracing::warn!(
                        namespace = %Untrusted(&req.namespace),
                        workload = %Untrusted(&req.workload),
                        peer = ?peer.as_ref().map(|p| p.remote_addr),
                        bootstrap_token_used = !req.token.is_empty(),
                        reason = %Untrusted(refusal.status.message()),
                        "certificate request refused"
                    );
                }
                Err(refusal.status)
            }
        }
    }
}
