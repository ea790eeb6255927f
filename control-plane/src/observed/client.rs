//! The CLI's side of `/observed` and `/suggest` on a control plane's admin port.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Limited};

use super::Observations;
use super::query::ObservedQuery;
use crate::admin_client::{AdminClientError, get, get_json};

/// Largest table or suggestion read (the table's own bound is far below).
const MAX_BODY: usize = 256 * 1024 * 1024;

/// The observations `query` asks for.
pub async fn observations(
    addr: SocketAddr,
    query: &ObservedQuery,
) -> Result<Observations, AdminClientError> {
    get_json(addr, &format!("/observed?{}", query.to_query()), MAX_BODY).await
}

/// The suggested policies (YAML) for the observations `query` asks for.
pub async fn suggestion(
    addr: SocketAddr,
    query: &ObservedQuery,
) -> Result<String, AdminClientError> {
    let response = get(addr, &format!("/suggest?{}", query.to_query())).await?;
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| AdminClientError::Http {
            addr,
            reason: e.to_string(),
        })?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}
