//! Bootstrap authentication in a cluster: the proxy presents the projected service-account
//! token the injector mounted (audience [`AUDIENCE`]); the API server's TokenReview says whose
//! it is. The identity comes from the review (namespace and service account, and the pod name
//! a bound token carries), never from the request.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

/// The audience of the token the injector projects for the proxy.
pub const AUDIENCE: &str = "palisade";
/// The `extra` key under which a bound token names its pod.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// Who a reviewed token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewedToken {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
    /// The pod the token is bound to, when the API server says.
    pub pod_name: Option<String>,
}

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The API server could not be asked.
    #[error("TokenReview failed: {0}")]
    Api(String),
    /// The API server did not authenticate the token.
    #[error("the token is not valid{}", .0.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    NotAuthenticated(Option<String>),
    /// The token is valid for other audiences only.
    #[error("the token's audiences {0:?} do not include {AUDIENCE:?}")]
    WrongAudience(Vec<String>),
    /// The token is not a service account's.
    #[error("the token belongs to {0:?}, not a service account")]
    NotServiceAccount(String),
}

/// Asks the API server about tokens.
#[derive(Clone)]
pub struct TokenReviewer {
    client: Client,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenReviewer")
    }
}

impl TokenReviewer {
    /// A reviewer using `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// Reviews `token` for [`AUDIENCE`].
    pub async fn review(&self, token: &str) -> Result<ReviewedToken, ReviewError> {
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = api
            .create(&PostParams::default(), &request)
            .await
            .map_err(|e| ReviewError::Api(e.to_string()))?;
        let status = reviewed.status.unwrap_or_default();
        interpret(
            status.authenticated.unwrap_or(false),
            status.error,
            status.audiences.unwrap_or_default(),
            status.user.as_ref().and_then(|u| u.username.clone()),
            status
                .user
                .as_ref()
                .and_then(|u| u.extra.as_ref())
                .and_then(|extra| extra.get(POD_NAME_EXTRA))
                .and_then(|names| names.first().cloned()),
        )
    }
}

/// The checks on a review's status, apart so they are tested without an API server.
fn interpret(
    authenticated: bool,
    error: Option<String>,
    audiences: Vec<String>,
    username: Option<String>,
    pod_name: Option<String>,
) -> Result<ReviewedToken, ReviewError> {
    if !authenticated {
        return Err(ReviewError::NotAuthenticated(
            error.filter(|e| !e.is_empty()),
        ));
    }
    // The API server lists the audiences the token is valid for among those asked; an empty
    // list from an old server is not a confirmation.
    if !audiences.iter().any(|a| a == AUDIENCE) {
        return Err(ReviewError::WrongAudience(audiences));
    }
    let username = username.unwrap_or_default();
    let parts: Vec<&str> = username.split(':').collect();
    match parts.as_slice() {
        ["system", "serviceaccount", namespace, service_account]
            if !namespace.is_empty() && !service_account.is_empty() =>
        {
            Ok(ReviewedToken {
                namespace: (*namespace).to_owned(),
                service_account: (*service_account).to_owned(),
                pod_name,
            })
        }
        _ => Err(ReviewError::NotServiceAccount(username)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(user: &str) -> Result<ReviewedToken, ReviewError> {
        interpret(
            true,
            None,
            vec!["palisade".into()],
            Some(user.into()),
            Some("web-1".into()),
        )
    }

    #[test]
    fn a_service_account_token_names_namespace_account_and_pod() {
        assert_eq!(
            ok("system:serviceaccount:shop:web").expect("valid"),
            ReviewedToken {
                namespace: "shop".into(),
                service_account: "web".into(),
                pod_name: Some("web-1".into())
            }
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for user in [
            "admin",
            "system:serviceaccount:shop",
            "system:serviceaccount::web",
            "system:serviceaccount:shop:web:x",
            "system:node:n1",
        ] {
            assert!(
                matches!(ok(user), Err(ReviewError::NotServiceAccount(_))),
                "{user}"
            );
        }
        let wrong_audience = interpret(
            true,
            None,
            vec!["https://kubernetes.default.svc".into()],
            Some("system:serviceaccount:shop:web".into()),
            None,
        );
        assert!(matches!(wrong_audience, Err(ReviewError::WrongAudience(_))));
        let no_audience = interpret(
            true,
            None,
            vec![],
            Some("system:serviceaccount:shop:web".into()),
            None,
        );
        assert!(matches!(no_audience, Err(ReviewError::WrongAudience(_))));
        let invalid = interpret(
            false,
            Some("token expired".into()),
            vec!["palisade".into()],
            Some("system:serviceaccount:shop:web".into()),
            None,
        );
        assert_eq!(
            invalid.expect_err("invalid").to_string(),
            "the token is not valid: token expired"
        );
    }
}
