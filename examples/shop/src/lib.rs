//! The e-commerce shop's demo apps: `frontend`, `search` and `payments`.
//!
//! `palisade up` runs them next to sidecars and the end-to-end tests use them as real
//! upstream apps. They know nothing about the mesh: each serves plaintext on its own
//! listener, and the frontend reaches the other two through its local sidecar's
//! outbound port, used as an explicit HTTP proxy (absolute-form HTTP/1.1 for search,
//! h2c with `:authority payments.shop:9090` for payments).
//!
//! The gRPC code under `src/gen` is generated from `proto/payments.proto` and committed,
//! so building needs no `protoc`; `tests/bootstrap.rs` regenerates it and fails on any
//! difference.

mod frontend;
mod http_server;
mod payments;
mod query;
mod search;

pub use frontend::{
    DEFAULT_OUTBOUND_PROXY, DEFAULT_PAYMENTS_AUTHORITY, DEFAULT_SEARCH_AUTHORITY, FrontendApp,
    FrontendConfig, ResolvedUpstreams, serve_frontend,
};
pub use payments::{PaymentsApp, serve_payments};
pub use search::{EchoResponse, Product, SearchApp, SearchResponse, serve_search};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Generated messages, client and server of gRPC package `payments`.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod payments_proto {
    include!("gen/payments.rs");
}

/// Names of the apps [`serve_app`] knows, in the order the shop's request flows.
pub const APP_NAMES: &[&str] = &["frontend", "search", "payments"];

/// Response header (and gRPC metadata key) naming the app that answered, so callers can
/// tell which upstream a proxied answer really came from.
pub const APP_HEADER: &str = "x-shop-app";

/// Why a shop app could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    /// `serve_app` was asked for an app that does not exist.
    #[error("unknown shop app `{0}` (expected one of: {expected})", expected = APP_NAMES.join(", "))]
    UnknownApp(String),
    /// A frontend upstream authority cannot be used as a URI authority.
    #[error("invalid {field} `{value}` in the frontend configuration")]
    InvalidAuthority {
        /// The configuration field, e.g. `search_authority`.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// The gRPC channel to the outbound proxy could not be configured.
    #[error("invalid outbound proxy endpoint `{endpoint}` for the payments channel")]
    PaymentsEndpoint {
        /// The endpoint URI built from `outbound_proxy`.
        endpoint: String,
        /// Why tonic rejected it.
        #[source]
        source: tonic::transport::Error,
    },
    /// The payments gRPC server failed while serving.
    #[error("the payments gRPC server failed")]
    GrpcServer(#[source] tonic::transport::Error),
}

/// Runs the named app (`frontend`, `search` or `payments`) on `listener` until
/// `shutdown` is cancelled; `frontend` is used only by the frontend.
pub async fn serve_app(
    name: &str,
    listener: TcpListener,
    frontend: FrontendConfig,
    shutdown: CancellationToken,
) -> Result<(), ShopError> {
    match name {
        "frontend" => serve_frontend(listener, frontend, shutdown).await,
        "search" => serve_search(listener, shutdown).await,
        "payments" => serve_payments(listener, shutdown).await,
        other => Err(ShopError::UnknownApp(other.to_owned())),
    }
}
