//! Clients to the local app: pooled HTTP/1.1 or HTTP/2 cleartext per app port. The
//! connector always dials the app's own address, so the request keeps the authority the
//! caller used.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::http::ProxyBody;
use crate::model::Protocol;

/// Dials one fixed address whatever the URI says.
#[derive(Debug, Clone)]
pub struct FixedConnector {
    addr: SocketAddr,
}

impl tower::Service<http::Uri> for FixedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let addr = self.addr;
        Box::pin(async move {
            let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            let _ = tcp.set_nodelay(true);
            Ok(TokioIo::new(tcp))
        })
    }
}

/// A pooled client to one app port.
pub type AppClient = Client<FixedConnector, ProxyBody>;

/// Clients to the local app, one per (port, protocol), created on first use.
#[derive(Debug)]
pub struct AppClients {
    host: IpAddr,
    clients: RwLock<HashMap<(u16, bool), AppClient>>,
}

impl AppClients {
    /// Clients to the app at `host`.
    pub fn new(host: IpAddr) -> Arc<Self> {
        Arc::new(Self {
            host,
            clients: RwLock::new(HashMap::new()),
        })
    }

    /// The app's address (opaque TCP connects there directly).
    pub fn host(&self) -> IpAddr {
        self.host
    }

    /// The client for `port`, speaking what `protocol` says.
    pub fn get(&self, port: u16, protocol: Protocol) -> AppClient {
        let http2 = protocol.is_http2();
        if let Some(c) = self
            .clients
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(port, http2))
        {
            return c.clone();
        }
        let connector = FixedConnector {
            addr: SocketAddr::new(self.host, port),
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .http2_only(http2);
        let client = builder.build(connector);
        self.clients
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry((port, http2))
            .or_insert(client)
            .clone()
    }
}
