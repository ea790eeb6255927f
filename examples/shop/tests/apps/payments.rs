//! `payments`: a real tonic client calls `payments.Payments/Charge`.

use palisade_example_shop::payments_proto::ChargeRequest;
use palisade_example_shop::payments_proto::payments_client::PaymentsClient;
use palisade_example_shop::{APP_HEADER, FrontendConfig};
use tonic::Code;

use super::support::start;

async fn client(addr: std::net::SocketAddr) -> PaymentsClient<tonic::transport::Channel> {
    PaymentsClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to payments")
}

#[tokio::test]
async fn charge_succeeds() {
    let payments = start("payments", FrontendConfig::default()).await;
    let reply = client(payments.addr)
        .await
        .charge(ChargeRequest {
            order_id: "o-9".to_owned(),
            cents: 5,
        })
        .await
        .expect("charge succeeds");
    assert_eq!(
        reply.metadata().get(APP_HEADER).map(|v| v.to_str().ok()),
        Some(Some("payments"))
    );
    let reply = reply.into_inner();
    assert_eq!(reply.status, "charged o-9");
    assert_eq!(reply.order_id, "o-9");
    assert_eq!(reply.cents, 5);
}

#[tokio::test]
async fn charge_rejects_bad_requests_with_invalid_argument() {
    let payments = start("payments", FrontendConfig::default()).await;
    let mut client = client(payments.addr).await;
    for (order_id, cents, expected) in [
        ("o-1", 0, "cents must be positive"),
        ("o-1", -5, "cents must be positive"),
        ("", 100, "order_id must not be empty"),
        ("  ", 100, "order_id must not be empty"),
    ] {
        let status = client
            .charge(ChargeRequest {
                order_id: order_id.to_owned(),
                cents,
            })
            .await
            .expect_err("the charge is rejected");
        assert_eq!(status.code(), Code::InvalidArgument, "{order_id:?} {cents}");
        assert!(
            status.message().contains(expected),
            "{order_id:?} {cents}: {}",
            status.message()
        );
    }
}

#[tokio::test]
async fn shutdown_returns_ok_with_a_connected_client() {
    let payments = start("payments", FrontendConfig::default()).await;
    let mut client = client(payments.addr).await;
    client
        .charge(ChargeRequest {
            order_id: "o-2".to_owned(),
            cents: 1,
        })
        .await
        .expect("charge succeeds");
    payments.stop().await.expect("payments stops cleanly");
}
