//! Certificates renew under load without a failed request: with a 6 s certificate lifetime
//! every sidecar renews at 70 % (~4 s) while clients keep sending HTTP/1.1 and gRPC through
//! two sidecars.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::support::load::{Load, Protocol};
use crate::support::mesh::{self, MESH_CONFIG};
use crate::support::metric;

/// How long the load runs: long enough for two renewals of a 6 s certificate.
const LOAD: Duration = Duration::from_secs(10);

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

    let deadline = Instant::now() + LOAD;
    let load = Load::start(
        outbound,
        &[
            Protocol::Http1,
            Protocol::Grpc,
            Protocol::Http1,
            Protocol::Grpc,
        ],
    );

    // Sample the certificates while the load runs.
    while Instant::now() < deadline {
        for w in watched {
            serials.get_mut(w).unwrap().insert(serial(w));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tally = load.stop().await;
    let (ok, failed) = tally.counts();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during renewal; first: {:?}",
        ok + failed,
        tally.first()
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
