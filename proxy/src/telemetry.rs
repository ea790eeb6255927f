//! The live view's feed: a `palisade.v1.Telemetry/Report` stream to the control plane,
//! opened once the proxy has a certificate and kept open with backoff. The control plane
//! says when someone watches; only then does the proxy send a report about every half
//! second (the first with the ring's recent past), and count its traffic. It also says
//! whether to observe: then every inbound request is counted (bounded) and the counts are
//! sent every few seconds, watched or not; across a reconnect they wait in the table.

use std::sync::Arc;
use std::time::Duration;

use palisade_certs::TrustBundle;
use palisade_certs::tls::Credentials;
use palisade_proto::v1::TelemetryReport;
use palisade_proto::v1::telemetry_client::TelemetryClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::control::{Backoff, ControlPlaneTarget, StreamError};
use crate::metrics::Metrics;

/// Time between reports while watched.
pub const REPORT_EVERY: Duration = Duration::from_millis(500);
/// Time between reports of observations while nobody watches.
pub const OBSERVE_EVERY: Duration = Duration::from_millis(palisade_proto::v1::OBSERVE_EVERY_MS);

/// Keeps the telemetry stream open until `shutdown`.
pub async fn run(
    target: ControlPlaneTarget,
    mut creds: watch::Receiver<Option<Arc<Credentials>>>,
    bundle: watch::Receiver<TrustBundle>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let Some(current) = crate::control::credentials(&mut creds, &shutdown).await else {
            return;
        };
        let verify_with = bundle.borrow().clone();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = stream_once(&target, &current, &verify_with, &metrics, &mut backoff) => r,
        };
        metrics.observer().set_watched(false);
        let wait = backoff.next_delay();
        if let Err(e) = result {
            tracing::debug!(error = %e, retry_in_ms = wait.as_millis() as u64, "telemetry stream ended");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn stream_once(
    target: &ControlPlaneTarget,
    creds: &Credentials,
    bundle: &TrustBundle,
    metrics: &Metrics,
    backoff: &mut Backoff,
) -> Result<(), StreamError> {
    let channel = target.connect(bundle, Some(creds)).await?;
    let (tx, rx) = mpsc::channel::<TelemetryReport>(4);
    let mut controls = TelemetryClient::new(channel)
        .report(ReceiverStream::new(rx))
        .await?
        .into_inner();
    backoff.reset();
    let observer = metrics.observer();
    let table = observer.observed();
    let mut watched = false;
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut observe_tick = tokio::time::interval(OBSERVE_EVERY);
    observe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            control = controls.message() => {
                let Some(control) = control? else { return Ok(()) };
                table.set_on(control.observe);
                if control.active && !watched {
                    // Someone started watching: the recent past first.
                    observer.set_watched(true);
                    tx.send(with_observed(observer.report(true), table)).await.map_err(|_| StreamError::Closed)?;
                }
                watched = control.active;
                observer.set_watched(watched);
            }
            _ = tick.tick(), if watched => {
                let report = with_observed(observer.report(false), table);
                if !report.decisions.is_empty() || !report.edges.is_empty() || report.decisions_dropped > 0 || !report.observed.is_empty() || report.observed_folded > 0 {
                    tx.send(report).await.map_err(|_| StreamError::Closed)?;
                }
            }
            _ = observe_tick.tick(), if !watched && table.on() => {
                let report = with_observed(TelemetryReport::default(), table);
                if !report.observed.is_empty() || report.observed_folded > 0 {
                    tx.send(report).await.map_err(|_| StreamError::Closed)?;
                }
            }
        }
    }
}

/// `report` with the observation table's rows since the last report.
fn with_observed(
    mut report: TelemetryReport,
    table: &crate::observed::ObservedTable,
) -> TelemetryReport {
    (report.observed, report.observed_folded) = table.drain();
    report
}
