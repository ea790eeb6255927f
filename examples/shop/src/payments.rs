//! The `payments` app: the gRPC service `payments.Payments`.

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::http_server::DRAIN_DEADLINE;
use crate::payments_proto::payments_server::{Payments, PaymentsServer};
use crate::payments_proto::{ChargeReply, ChargeRequest};
use crate::{APP_HEADER, ShopError};

/// The `payments` app: accepts every well-formed charge.
#[derive(Clone, Copy, Debug, Default)]
pub struct PaymentsApp;

// === impl PaymentsApp ===

#[tonic::async_trait]
impl Payments for PaymentsApp {
    async fn charge(
        &self,
        request: Request<ChargeRequest>,
    ) -> Result<Response<ChargeReply>, Status> {
        let ChargeRequest { order_id, cents } = request.into_inner();
        if order_id.trim().is_empty() {
            return Err(Status::invalid_argument("order_id must not be empty"));
        }
        if cents <= 0 {
            return Err(Status::invalid_argument(format!(
                "cents must be positive, got {cents} for order {order_id}"
            )));
        }
        tracing::info!(%order_id, cents, "charged");
        let mut response = Response::new(ChargeReply {
            status: format!("charged {order_id}"),
            order_id,
            cents,
        });
        response
            .metadata_mut()
            .insert(APP_HEADER, MetadataValue::from_static("payments"));
        Ok(response)
    }
}

/// Serves the `payments` app (gRPC over h2c) on `listener` until `shutdown` is
/// cancelled, then lets in-flight calls finish for a bounded time.
pub async fn serve_payments(
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ShopError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(app = "payments", %addr, "listening (gRPC, h2c)");
    }
    let server = tonic::transport::Server::builder()
        .add_service(PaymentsServer::new(PaymentsApp))
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        );
    // tonic waits for every connection to close after the signal; bound that wait so a
    // client holding a stream open cannot stall shutdown.
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_DEADLINE).await;
    };
    tokio::select! {
        served = server => served.map_err(ShopError::GrpcServer),
        () = deadline => {
            tracing::warn!(app = "payments", "drain deadline passed; closing remaining connections");
            Ok(())
        }
    }
}
