//! The least work an mTLS sidecar pair can do: a bench floor, not a product.
//!
//! `out` accepts plain TCP and opens one mTLS connection to `in` per accepted connection;
//! `in` terminates mTLS (client certificate required) and opens one plain connection to the
//! upstream. Bytes are copied both ways; nothing is parsed, authorized, pooled or counted.
//! Both sides use Palisade's own TLS set-up (`palisade_certs::tls`: TLS 1.3, SPIFFE
//! verification both ways) on a current-thread runtime, as one `palisade proxy` worker.
//! Like a sidecar it bounds what a caller can hold: connections at once, and the time a
//! connection may spend before its handshake is done.
//!
//! Whatever this pair reaches under `bench/peers-floor.sh` bounds what any HTTP-aware pair
//! doing the same mTLS hop can reach on the same machine: the TCP segments, the TLS records
//! and the processes woken are the same, and only the HTTP and policy work is missing.
//!
//!   mtls_floor out LISTEN PEER TRUST_DOMAIN CA_PEM CERT_PEM KEY_PEM EXPECTED_SPIFFE_ID
//!   mtls_floor in LISTEN UPSTREAM TRUST_DOMAIN CA_PEM CERT_PEM KEY_PEM

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use palisade_certs::bundle::TrustBundle;
use palisade_certs::spiffe::{SpiffeId, TrustDomain};
use palisade_certs::tls::{self, ClientAuth, Credentials};
use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How one side of the pair was asked to run.
enum Side {
    /// Plain TCP in, mTLS out to `peer`, which must present `expected`.
    Out {
        peer: SocketAddr,
        connector: TlsConnector,
    },
    /// mTLS in, plain TCP out to `upstream`.
    In {
        upstream: SocketAddr,
        acceptor: TlsAcceptor,
    },
}

impl Side {
    /// The outbound side: presents `creds` and accepts only a peer that chains to `bundle`
    /// and presents `expected`.
    fn outbound(
        peer: SocketAddr,
        creds: &Credentials,
        bundle: &TrustBundle,
        expected: SpiffeId,
    ) -> Result<Self, String> {
        let config = tls::client_config(Some(creds), bundle, expected, &[])
            .map_err(|e| format!("client TLS: {e}"))?;
        Ok(Side::Out {
            peer,
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// The inbound side: presents `creds` and requires a client certificate that chains to
    /// `bundle`.
    fn inbound(
        upstream: SocketAddr,
        creds: &Credentials,
        bundle: &TrustBundle,
    ) -> Result<Self, String> {
        let config = tls::server_config(creds, bundle, ClientAuth::Required, &[])
            .map_err(|e| format!("server TLS: {e}"))?;
        Ok(Side::In {
            upstream,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

fn usage() -> String {
    "usage: mtls_floor out LISTEN PEER TRUST_DOMAIN CA_PEM CERT_PEM KEY_PEM EXPECTED_SPIFFE_ID\n       \
     mtls_floor in LISTEN UPSTREAM TRUST_DOMAIN CA_PEM CERT_PEM KEY_PEM"
        .to_owned()
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(Path::new(path)).map_err(|e| format!("{path}: {e}"))
}

fn addr(what: &str, text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|e| format!("{what} {text:?} is not an address: {e}"))
}

/// Parses the command line into the listen address and the side to run.
fn parse(args: &[String]) -> Result<(SocketAddr, Side), String> {
    let (mode, rest) = args.split_first().ok_or_else(usage)?;
    let want = match mode.as_str() {
        "out" => 7,
        "in" => 6,
        other => return Err(format!("unknown side {other:?}\n{}", usage())),
    };
    if rest.len() != want {
        return Err(usage());
    }
    let listen = addr("LISTEN", &rest[0])?;
    let next = addr(if mode == "out" { "PEER" } else { "UPSTREAM" }, &rest[1])?;
    let domain: TrustDomain = rest[2]
        .parse()
        .map_err(|e| format!("TRUST_DOMAIN {:?}: {e}", rest[2]))?;
    let bundle =
        TrustBundle::from_pem(domain, &read(&rest[3])?).map_err(|e| format!("{}: {e}", rest[3]))?;
    let creds = Credentials::from_pem(&read(&rest[4])?, &read(&rest[5])?)
        .map_err(|e| format!("{} / {}: {e}", rest[4], rest[5]))?;
    let side = if mode == "out" {
        let expected: SpiffeId = rest[6]
            .parse()
            .map_err(|e| format!("EXPECTED_SPIFFE_ID {:?}: {e}", rest[6]))?;
        Side::outbound(next, &creds, &bundle, expected)?
    } else {
        Side::inbound(next, &creds, &bundle)?
    };
    Ok((listen, side))
}

/// Copies both ways until either side closes; errors only end the connection.
async fn splice<A, B>(mut a: A, mut b: B)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let _ = copy_bidirectional(&mut a, &mut b).await;
}

async fn connect(to: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(to).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connections served at once; further clients wait in the listen backlog.
const MAX_CONNECTIONS: usize = 1024;
/// How long the connect and mTLS handshake of one connection may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects onward and completes the mTLS handshake for one client, then copies.
async fn relay(side: &Side, client: TcpStream) {
    match side {
        Side::Out { peer, connector } => {
            let handshake = async {
                let tcp = connect(*peer).await.ok()?;
                let name = tls::placeholder_server_name();
                connector.connect(name, tcp).await.ok()
            };
            if let Ok(Some(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                splice(client, tls).await;
            }
        }
        Side::In { upstream, acceptor } => {
            let handshake = async {
                let tls = acceptor.accept(client).await.ok()?;
                let up = connect(*upstream).await.ok()?;
                Some((tls, up))
            };
            if let Ok(Some((tls, up))) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                splice(tls, up).await;
            }
        }
    }
}

async fn serve(listener: TcpListener, side: Arc<Side>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((client, _)) = listener.accept().await else {
            // Typically EMFILE: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = client.set_nodelay(true);
        let side = side.clone();
        tokio::spawn(async move {
            relay(&side, client).await;
            drop(slot);
        });
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, side) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("mtls_floor: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mtls_floor: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("mtls_floor: listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::select! {
            _ = serve(listener, Arc::new(side)) => ExitCode::SUCCESS,
            _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
        }
    })
}

/// The floor is a bench reference only if it does the hop's real work: these check that it
/// carries bytes, and that it verifies both ends as a Palisade hop does.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use palisade_certs::ca::{CaOptions, CertificateAuthority};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    struct Pki {
        ca: CertificateAuthority,
    }

    impl Pki {
        fn new() -> Self {
            let domain: TrustDomain = "cluster.local".parse().unwrap();
            let (ca, _) = CertificateAuthority::generate(domain, &CaOptions::default()).unwrap();
            Self { ca }
        }

        fn creds(&self, service_account: &str) -> Credentials {
            let (leaf, key) = self
                .ca
                .issue(&id(service_account), Duration::from_secs(3600))
                .unwrap();
            Credentials::new(&leaf, &key).unwrap()
        }
    }

    fn id(service_account: &str) -> SpiffeId {
        format!("spiffe://cluster.local/ns/shop/sa/{service_account}")
            .parse()
            .unwrap()
    }

    async fn start(side: Side) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(side)));
        at
    }

    /// An upstream that echoes what it reads; the receiver counts connections it accepted.
    async fn echo_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let (accepted, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let _ = accepted.send(());
                tokio::spawn(async move {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (at, rx)
    }

    /// Sends `ping` to `to` and returns what comes back before the connection closes.
    async fn exchange(to: SocketAddr) -> Vec<u8> {
        let mut conn = TcpStream::connect(to).await.unwrap();
        conn.write_all(b"ping").await.unwrap();
        let mut got = vec![0; 4];
        match tokio::time::timeout(WAIT, conn.read_exact(&mut got)).await {
            Ok(Ok(_)) => got,
            Ok(Err(_)) => Vec::new(),
            Err(_) => panic!("no answer and no close within {WAIT:?}"),
        }
    }

    /// An inbound of `pki` presenting `presented`, in front of an echo upstream: its address,
    /// and the upstream's accept count.
    async fn inbound_of(
        pki: &Pki,
        presented: &str,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let (upstream, accepted) = echo_upstream().await;
        let inbound = Side::inbound(upstream, &pki.creds(presented), pki.ca.bundle()).unwrap();
        (start(inbound).await, accepted)
    }

    /// An outbound expecting `server`, in front of [`inbound_of`] presenting `presented`.
    async fn pair(presented: &str) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let pki = Pki::new();
        let (inbound, accepted) = inbound_of(&pki, presented).await;
        let outbound = Side::outbound(inbound, &pki.creds("client"), pki.ca.bundle(), id("server"));
        (start(outbound.unwrap()).await, accepted)
    }

    #[tokio::test]
    async fn carries_bytes_both_ways_over_mtls() {
        let (outbound, mut accepted) = pair("server").await;
        assert_eq!(exchange(outbound).await, b"ping");
        assert!(
            accepted.try_recv().is_ok(),
            "the upstream saw no connection"
        );
    }

    #[tokio::test]
    async fn outbound_refuses_a_peer_presenting_another_identity() {
        let (outbound, mut accepted) = pair("other").await;
        assert!(
            exchange(outbound).await.is_empty(),
            "bytes crossed to the wrong peer"
        );
        assert!(
            accepted.try_recv().is_err(),
            "the impostor reached its upstream"
        );
    }

    #[tokio::test]
    async fn inbound_refuses_a_client_without_a_certificate() {
        let pki = Pki::new();
        let (inbound, mut accepted) = inbound_of(&pki, "server").await;
        let anonymous = tls::client_config(None, pki.ca.bundle(), id("server"), &[]).unwrap();
        let tcp = TcpStream::connect(inbound).await.unwrap();
        let name = tls::placeholder_server_name();
        // TLS 1.3: the client's side of the handshake can finish before the server has
        // judged the (missing) certificate, so the refusal shows on the first read.
        if let Ok(mut conn) = TlsConnector::from(Arc::new(anonymous))
            .connect(name, tcp)
            .await
        {
            let _ = conn.write_all(b"ping").await;
            let mut got = Vec::new();
            let read = tokio::time::timeout(WAIT, conn.read_to_end(&mut got)).await;
            assert!(read.is_ok(), "no answer and no close within {WAIT:?}");
            assert!(got.is_empty(), "an anonymous client got bytes back");
        }
        assert!(
            accepted.try_recv().is_err(),
            "an anonymous client reached the upstream"
        );
    }

    #[tokio::test]
    async fn inbound_drops_a_client_that_never_handshakes() {
        let (inbound, mut accepted) = inbound_of(&Pki::new(), "server").await;
        let mut silent = TcpStream::connect(inbound).await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(HANDSHAKE_TIMEOUT * 2, silent.read_to_end(&mut got)).await;
        assert!(
            read.is_ok(),
            "a silent client was held past {HANDSHAKE_TIMEOUT:?}"
        );
        assert!(
            accepted.try_recv().is_err(),
            "a silent client reached the upstream"
        );
    }
}
