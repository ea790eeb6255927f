//! The CLI's side of `/observed` and `/suggest` on a control plane's admin port.

use std::net::SocketAddr;

use super::Observations;
use super::query::ObservedQuery;
use crate::admin_client::{AdminClientError, get_json, get_text};

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
    get_text(addr, &format!("/suggest?{}", query.to_query()), MAX_BODY).await
}
