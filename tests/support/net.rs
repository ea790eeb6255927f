//! Loopback address blocks, one per test, and a recording TCP relay (the "tap").

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A loopback block `127.X.Y.0/24` owned by one test: X comes from the process id, Y from a
/// per-process counter, so parallel tests (and, very likely, parallel test processes) never
/// share an address, and every component can use its fixed port (15000/15001/15006/15012).
/// X is never 0 or 1: 127.0.0.x is the host's, 127.0.1.x is `palisade up`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    x: u8,
    y: u8,
}

impl Block {
    /// The next unused block of this process.
    pub fn next() -> Self {
        static NEXT: AtomicU8 = AtomicU8::new(0);
        let y = NEXT.fetch_add(1, Ordering::Relaxed);
        let x = 2 + (std::process::id() % 250) as u8;
        Self { x, y }
    }

    /// `127.X.Y.host`.
    pub fn ip(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.x, self.y, host))
    }

    /// `127.X.Y.host:port`.
    pub fn addr(&self, host: u8, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(host), port)
    }

    /// `127.X.Y`, for YAML templates (`{block}.2`).
    pub fn prefix(&self) -> String {
        format!("127.{}.{}", self.x, self.y)
    }
}

/// Bytes seen on one relayed connection, per direction.
#[derive(Debug, Default, Clone)]
pub struct TapConn {
    /// From the connecting side (the client sidecar) to the upstream.
    pub to_server: Vec<u8>,
    /// From the upstream back to the connecting side.
    pub to_client: Vec<u8>,
}

/// A TCP relay that forwards every connection to `upstream` and records every byte.
#[derive(Debug, Clone)]
pub struct Tap {
    /// Where it listens.
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<TapConn>>>,
}

impl Tap {
    /// Binds `listen` and relays to `upstream` until `shutdown`.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        shutdown: CancellationToken,
    ) -> Tap {
        let listener = TcpListener::bind(listen).await.expect("bind the tap");
        let addr = listener.local_addr().expect("tap address");
        let conns: Arc<Mutex<Vec<TapConn>>> = Arc::default();
        let tap = Tap {
            addr,
            conns: conns.clone(),
        };
        tokio::spawn(async move {
            loop {
                let (inbound, _) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = listener.accept() => match r { Ok(a) => a, Err(_) => continue },
                };
                let index = {
                    let mut all = conns.lock().unwrap();
                    all.push(TapConn::default());
                    all.len() - 1
                };
                let conns = conns.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let Ok(Ok(outbound)) =
                        tokio::time::timeout(super::TIMEOUT, TcpStream::connect(upstream)).await
                    else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    let up = pump(ri, wo, conns.clone(), index, true);
                    let down = pump(ro, wi, conns, index, false);
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = async { tokio::join!(up, down) } => {}
                    }
                });
            }
        });
        tap
    }

    /// Every connection so far (a copy).
    pub fn conns(&self) -> Vec<TapConn> {
        self.conns.lock().unwrap().clone()
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    conns: Arc<Mutex<Vec<TapConn>>>,
    index: usize,
    to_server: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut all = conns.lock().unwrap();
            let conn = &mut all[index];
            let side = if to_server {
                &mut conn.to_server
            } else {
                &mut conn.to_client
            };
            side.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// One TLS record header as read off the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Content type (0x14 change_cipher_spec, 0x15 alert, 0x16 handshake, 0x17 application data).
    pub content_type: u8,
    /// `legacy_record_version`.
    pub version: u16,
    /// Payload length.
    pub len: usize,
    /// First payload byte (the handshake type for handshake records).
    pub first: Option<u8>,
}

/// Splits a byte stream into TLS records. Fails on anything that is not a TLS record
/// header; a record cut short at the very end (still in flight) is allowed.
pub fn tls_records(bytes: &[u8]) -> Result<Vec<Record>, String> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes.len() - at < 5 {
            break;
        }
        let content_type = bytes[at];
        let version = u16::from_be_bytes([bytes[at + 1], bytes[at + 2]]);
        let len = usize::from(u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]));
        if !(0x14..=0x17).contains(&content_type) {
            return Err(format!(
                "byte {at}: content type {content_type:#04x} is not a TLS record type"
            ));
        }
        // TLS 1.3 (RFC 8446 section 5.1): 0x0303, except 0x0301 allowed on the first ClientHello.
        if version != 0x0303 && !(version == 0x0301 && records.is_empty()) {
            return Err(format!(
                "byte {at}: record version {version:#06x} is not TLS 1.2/1.3's 0x0303"
            ));
        }
        if len > (1 << 14) + 256 {
            return Err(format!(
                "byte {at}: record length {len} exceeds the TLS maximum"
            ));
        }
        records.push(Record {
            content_type,
            version,
            len,
            first: bytes.get(at + 5).copied(),
        });
        at += 5 + len;
    }
    Ok(records)
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
