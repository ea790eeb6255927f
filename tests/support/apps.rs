//! Upstream apps behind the sidecars: the shop's own apps, and a counting app that records
//! every request it receives (an impostor must receive none).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use palisade_example_shop::FrontendConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What to run on an app port.
#[derive(Debug, Clone)]
pub enum App {
    /// One of the shop's apps by name (`search`, `payments`, `frontend`), via the same
    /// `serve_app` entry point `palisade up` uses; the frontend calls through `outbound`.
    Shop {
        /// App name.
        name: String,
        /// The local sidecar's outbound listener (used by the frontend only).
        outbound: SocketAddr,
    },
    /// Answers every request (HTTP/1.1 or h2c) with 200 and counts it.
    Counting(Arc<AtomicUsize>),
}

impl App {
    /// A shop app.
    pub fn shop(name: &str, outbound: SocketAddr) -> Self {
        App::Shop {
            name: name.to_owned(),
            outbound,
        }
    }
}

/// Binds `addr` and serves `app` until `shutdown`.
pub async fn start(addr: SocketAddr, app: App, shutdown: CancellationToken) {
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind app on {addr}: {e}"));
    match app {
        App::Shop { name, outbound } => {
            tokio::spawn(async move {
                let frontend = FrontendConfig::new(outbound);
                if let Err(e) =
                    palisade_example_shop::serve_app(&name, listener, frontend, shutdown).await
                {
                    panic!("app {name} on {addr} failed: {e}");
                }
            });
        }
        App::Counting(count) => {
            tokio::spawn(serve_counting(listener, count, shutdown));
        }
    }
}

async fn serve_counting(
    listener: TcpListener,
    count: Arc<AtomicUsize>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r { Ok(a) => a, Err(_) => continue },
        };
        let count = count.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| {
                count.fetch_add(1, Ordering::SeqCst);
                async {
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"impostor app\n")));
                    *resp.status_mut() = StatusCode::OK;
                    Ok::<_, Infallible>(resp)
                }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}
