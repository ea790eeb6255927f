//! Certificates renew under load without a failed request: with a 6 s certificate lifetime
//! every sidecar renews at 70 % (~4 s) while clients keep sending HTTP/1.1 and gRPC through
//! two sidecars.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use palisade_example_shop::payments_proto::ChargeRequest;
use tokio::time::Instant;

use crate::support::clients::{H1Client, payments_client};
use crate::support::mesh::{self, MESH_CONFIG};
use crate::support::{metric, within};

/// How long the load runs: long enough for two renewals of a 6 s certificate.
const LOAD: Duration = Duration::from_secs(10);
/// Upper bound on requests per client, whatever the machine's speed.
const MAX_REQUESTS_PER_CLIENT: usize = 20_000;

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    first_failure: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn record(&self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_failure.lock().unwrap().get_or_insert(e);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_under_load_without_failed_requests() {
    const TEST: &str = "certificates_renew_under_load_without_failed_requests";
    let mesh = mesh::shop(TEST)
        .file(
            "mesh.yaml",
            &MESH_CONFIG.replace("certificateLifetime: 1h", "certificateLifetime: 6s"),
        )
        .start()
        .await;
    let outbound = mesh.sidecar("client").outbound();
    let watched = ["client", "search", "payments"];
    let serial = |w: &str| {
        mesh.sidecar(w)
            .proxy
            .tls_state()
            .expect("ready sidecars have a certificate")
            .credentials()
            .serial()
            .to_owned()
    };
    let mut serials: BTreeMap<&str, BTreeSet<String>> = watched
        .iter()
        .map(|w| (*w, BTreeSet::from([serial(w)])))
        .collect();

    let tally = Arc::new(Tally::default());
    let running = Arc::new(AtomicBool::new(true));
    let deadline = Instant::now() + LOAD;
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (t, r) = (tally.clone(), running.clone());
        workers.push(tokio::spawn(async move {
            let (tally, running) = (t, r);
            let mut client = H1Client::new(outbound);
            for i in 0..MAX_REQUESTS_PER_CLIENT {
                if !running.load(Ordering::Relaxed) {
                    break;
                }
                // Mostly keep-alive, with a fresh app connection now and then.
                if i % 50 == 0 {
                    client = H1Client::new(outbound);
                }
                let result = match client
                    .get("http://search.shop:8080/search?q=lamp", &[])
                    .await
                {
                    Ok(r) if r.status == 200 => Ok(()),
                    Ok(r) => Err(format!("HTTP {}: {}", r.status, r.text())),
                    Err(e) => Err(format!("HTTP transport: {e}")),
                };
                tally.record(result);
            }
        }));
        let (t, r) = (tally.clone(), running.clone());
        workers.push(tokio::spawn(async move {
            let (tally, running) = (t, r);
            let mut payments = payments_client(outbound, "payments.shop:9090").await;
            for i in 0..MAX_REQUESTS_PER_CLIENT {
                if !running.load(Ordering::Relaxed) {
                    break;
                }
                let request = ChargeRequest {
                    order_id: format!("o-{i}"),
                    cents: 1,
                };
                let result = match payments.charge(request).await {
                    Ok(r) if r.get_ref().status == format!("charged o-{i}") => Ok(()),
                    Ok(r) => Err(format!("gRPC answer {:?}", r.get_ref())),
                    Err(status) => Err(format!("gRPC {status:?}")),
                };
                tally.record(result);
            }
        }));
    }

    // Sample the certificates while the load runs.
    while Instant::now() < deadline {
        for w in watched {
            serials.get_mut(w).unwrap().insert(serial(w));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.store(false, Ordering::Relaxed);
    within(Duration::from_secs(30), "load clients finish", async {
        for w in workers {
            w.await.unwrap();
        }
    })
    .await;

    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during renewal; first: {:?}",
        ok + failed,
        tally.first_failure.lock().unwrap()
    );
    assert!(ok >= 100, "only {ok} requests completed in {LOAD:?}");
    println!("{ok} requests, 0 failed; serials seen: {serials:?}");
    for w in watched {
        let seen = &serials[w];
        assert!(
            seen.len() >= 2,
            "{w}: certificate never renewed (serials {seen:?})"
        );
        let text = mesh.sidecar(w).proxy.metrics().encode();
        let renewals = metric(&text, "palisade_proxy_certificate_renewals_total", &[]);
        assert!(
            renewals >= 2.0,
            "{w}: certificate_renewals {renewals}\n{text}"
        );
        let failures = metric(&text, "palisade_proxy_certificate_failures_total", &[]);
        assert_eq!(failures, 0.0, "{w}: failed certificate requests\n{text}");
    }
    mesh.stop().await;
}
