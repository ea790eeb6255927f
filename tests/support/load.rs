//! Bounded, continuous load through a sidecar's outbound port (HTTP/1.1, HTTP/2 and gRPC to
//! the shop), counting every failure: for tests that change certificates or CAs under
//! traffic and must show that no request failed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use palisade_example_shop::payments_proto::ChargeRequest;
use tokio::task::JoinHandle;

use super::clients::{H1Client, H2Client, payments_client};
use super::within;

/// Upper bound on requests per client, whatever the machine's speed.
pub const MAX_REQUESTS_PER_CLIENT: usize = 20_000;

/// Successes and failures, with the first failure's description.
#[derive(Default)]
pub struct Tally {
    /// Requests answered as expected.
    pub ok: AtomicUsize,
    /// Requests that failed in any way.
    pub failed: AtomicUsize,
    /// What the first failure was.
    pub first_failure: std::sync::Mutex<Option<String>>,
}

impl Tally {
    /// Counts one request.
    pub fn record(&self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get_or_insert(e);
            }
        }
    }

    /// (ok, failed) so far.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// The first failure, if any.
    pub fn first(&self) -> Option<String> {
        self.first_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Which protocol a load client speaks to its sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 keep-alive GETs to search, a new connection every 50 requests.
    Http1,
    /// HTTP/2 (prior knowledge) GETs to search's HTTP/2 port on one connection.
    Http2,
    /// gRPC `Charge` calls to payments.
    Grpc,
}

/// Clients sending through `outbound` until stopped, each bounded by
/// [`MAX_REQUESTS_PER_CLIENT`].
pub struct Load {
    /// What they counted.
    pub tally: Arc<Tally>,
    running: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts one client per entry of `protocols`.
    pub fn start(outbound: SocketAddr, protocols: &[Protocol]) -> Self {
        let tally = Arc::new(Tally::default());
        let running = Arc::new(AtomicBool::new(true));
        let workers = protocols
            .iter()
            .map(|p| {
                tokio::spawn(client(
                    *p,
                    outbound,
                    Arc::clone(&tally),
                    Arc::clone(&running),
                ))
            })
            .collect();
        Self {
            tally,
            running,
            workers,
        }
    }

    /// Stops the clients and waits for them (bounded).
    pub async fn stop(self) -> Arc<Tally> {
        self.running.store(false, Ordering::Relaxed);
        within(Duration::from_secs(30), "load clients finish", async {
            for w in self.workers {
                w.await.expect("load client panicked");
            }
        })
        .await;
        self.tally
    }
}

async fn client(
    protocol: Protocol,
    outbound: SocketAddr,
    tally: Arc<Tally>,
    running: Arc<AtomicBool>,
) {
    const SEARCH_AUTHORITY: &str = "search.shop:8080";
    let check = |r: Result<super::Reply, super::clients::Error>, what: &str| match r {
        Ok(r) if r.status == 200 => Ok(()),
        Ok(r) => Err(format!("{what} HTTP {}: {}", r.status, r.text())),
        Err(e) => Err(format!("{what} transport: {e}")),
    };
    match protocol {
        Protocol::Http1 => {
            let mut client = H1Client::new(outbound);
            for i in 0..MAX_REQUESTS_PER_CLIENT {
                if !running.load(Ordering::Relaxed) {
                    break;
                }
                if i % 50 == 0 {
                    client = H1Client::new(outbound);
                }
                let r = client
                    .get(&format!("http://{SEARCH_AUTHORITY}/search?q=lamp"), &[])
                    .await;
                tally.record(check(r, "HTTP/1.1"));
            }
        }
        Protocol::Http2 => {
            let mut client = match H2Client::connect(outbound).await {
                Ok(c) => c,
                Err(e) => return tally.record(Err(format!("HTTP/2 connect: {e}"))),
            };
            for _ in 0..MAX_REQUESTS_PER_CLIENT {
                if !running.load(Ordering::Relaxed) {
                    break;
                }
                let r = client.get("search-h2.shop:8081", "/echo?via=h2", &[]).await;
                tally.record(check(r, "HTTP/2"));
            }
        }
        Protocol::Grpc => {
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
        }
    }
}
