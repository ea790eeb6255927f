//! Observations (issue 17): what a sidecar reports over the telemetry stream lands in the
//! control plane's table, is served on `/observed`, and in directory mode survives a restart
//! of the control plane; a saved table that does not parse is set aside, never an outage.

use std::time::Duration;

use palisade_control_plane::Observe;
use palisade_control_plane::observed::client;
use palisade_control_plane::observed::query::ObservedQuery;
use palisade_control_plane::test_util::{TestControlPlane, TestOptions};
use palisade_proto::v1::telemetry_client::TelemetryClient;
use palisade_proto::v1::{ObservedRequest, TelemetryReport};
use tokio::sync::mpsc;

use super::support::{shop, timed};

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

fn seen(method: &str, path: &str, allowed: u64, denied: u64) -> ObservedRequest {
    ObservedRequest {
        source: FRONTEND.to_owned(),
        port: 8080,
        method: method.to_owned(),
        path: path.to_owned(),
        allowed,
        denied,
        policy: "default-allow".to_owned(),
        rule: -1,
        last_allowed: denied == 0,
    }
}

async fn start(file: &std::path::Path) -> TestControlPlane {
    let options = TestOptions {
        observe: Observe::Saved(file.to_owned()),
        ..TestOptions::default()
    };
    timed("start", TestControlPlane::start_with(&shop(), options))
        .await
        .unwrap()
}

/// Sends one report as the search sidecar, and returns once the stream said to observe.
async fn report_as_search(cp: &TestControlPlane, rows: Vec<ObservedRequest>) {
    let token = cp.token("shop", "search").unwrap().to_owned();
    let (creds, _) = cp
        .certify_with_token("shop", "search", &token)
        .await
        .unwrap();
    let mut client = TelemetryClient::new(cp.channel(Some(&creds)).await.unwrap());
    let (tx, rx) = mpsc::channel(1);
    let mut controls = timed(
        "the report stream",
        client.report(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .unwrap()
    .into_inner();
    let first = timed("the first control message", controls.message())
        .await
        .unwrap()
        .unwrap();
    assert!(first.observe, "a workload's sidecar is asked to observe");
    tx.send(TelemetryReport {
        observed: rows,
        observed_folded: 1,
        ..TelemetryReport::default()
    })
    .await
    .unwrap();
    // The stream stays open until the rows are in.
    let admin = cp.control_plane.admin_addr().unwrap();
    for _ in 0..100 {
        let o = client::observations(admin, &ObservedQuery::default())
            .await
            .unwrap();
        if !o.rows.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the report never reached the table");
}

#[tokio::test]
async fn observations_survive_a_restart_in_directory_mode() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("observed.json");
    let cp = start(&file).await;
    report_as_search(
        &cp,
        vec![
            seen("GET", "/items/1", 3, 0),
            seen("GET", "/items/2", 1, 0),
            seen("DELETE", "/items/1", 0, 2),
        ],
    )
    .await;
    let admin = cp.control_plane.admin_addr().unwrap();
    let before = client::observations(admin, &ObservedQuery::default())
        .await
        .unwrap();
    let rows: Vec<(String, String, String, u64, u64)> = before
        .rows
        .iter()
        .map(|r| {
            (
                r.key.source_workload.clone(),
                r.key.method.clone(),
                r.path.clone(),
                r.leaf.allowed,
                r.leaf.denied,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "shop/frontend".into(),
                "DELETE".into(),
                "/items/{*}".into(),
                0,
                2
            ),
            (
                "shop/frontend".into(),
                "GET".into(),
                "/items/{*}".into(),
                4,
                0
            ),
        ]
    );
    assert!(
        before
            .rows
            .iter()
            .all(|r| r.key.destination == "shop/search")
    );
    assert_eq!(before.folded, 1);
    // A filter on another workload sees nothing.
    let other = client::observations(
        admin,
        &ObservedQuery {
            workload: Some("payments".into()),
            ..ObservedQuery::default()
        },
    )
    .await
    .unwrap();
    assert!(other.rows.is_empty());

    cp.stop().await.unwrap();
    assert!(file.exists(), "saved at shutdown");
    let again = start(&file).await;
    let after = client::observations(
        again.control_plane.admin_addr().unwrap(),
        &ObservedQuery::default(),
    )
    .await
    .unwrap();
    assert_eq!(after, before, "the same table after the restart");
    again.stop().await.unwrap();
}

#[tokio::test]
async fn a_saved_table_that_does_not_parse_is_set_aside_and_the_control_plane_starts() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("observed.json");
    std::fs::write(&file, "{\"rows\": [oops").unwrap();
    let cp = start(&file).await;
    let o = client::observations(
        cp.control_plane.admin_addr().unwrap(),
        &ObservedQuery::default(),
    )
    .await
    .unwrap();
    assert!(o.rows.is_empty());
    assert_eq!(
        std::fs::read_to_string(state.path().join("observed.bad")).unwrap(),
        "{\"rows\": [oops",
        "the bad file is kept aside, not overwritten"
    );
    cp.stop().await.unwrap();
}
