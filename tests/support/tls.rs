//! Talking TLS straight to a sidecar's inbound port (15006), as a peer sidecar would (or as
//! an attacker without a mesh certificate would), and standing in for a peer sidecar that
//! presents whatever certificate a test gives it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use palisade_certs::tls::{ClientAuth, Credentials, client_config, server_config};
use palisade_certs::{ALPN_H2, ALPN_HTTP11, CertificateAuthority, SpiffeId, TrustBundle};
use rustls_pki_types::{CertificateDer, DnsName, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use super::{Reply, TIMEOUT};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Credentials for `identity` issued by `ca` (the mesh's, or a foreign one).
pub fn issue(ca: &CertificateAuthority, identity: &SpiffeId) -> Credentials {
    let (leaf, key) = ca
        .issue(identity, std::time::Duration::from_secs(3600))
        .expect("issue a leaf");
    Credentials::new(&leaf, &key).expect("credentials")
}

/// The SNI a sidecar sends to reach app port `port` on the peer.
pub fn sni(port: u16) -> ServerName<'static> {
    sni_name(&format!("port-{port}.palisade.mesh"))
}

/// Any DNS name as SNI (for names a sidecar would not send).
pub fn sni_name(name: &str) -> ServerName<'static> {
    ServerName::DnsName(DnsName::try_from(name.to_owned()).expect("dns name"))
}

/// A TLS connection to the inbound listener `inbound`, presenting `creds` (or nothing),
/// expecting the server to be `server` under `bundle`, sending `server_name` (an IP address
/// sends no SNI) and offering `alpn`. Not bounded: callers bound it.
pub async fn connect_inbound(
    inbound: SocketAddr,
    creds: Option<&Credentials>,
    bundle: &TrustBundle,
    server: &SpiffeId,
    server_name: ServerName<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let config = client_config(creds, bundle, server.clone(), alpn).expect("client config");
    let tcp = TcpStream::connect(inbound).await?;
    TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
}

/// What happened on one connection to an inbound port.
#[derive(Debug)]
pub struct InboundAttempt {
    /// The handshake result as the client saw it.
    pub handshake: Result<(), String>,
    /// The server's certificate chain, if the handshake got that far.
    pub server_chain: Vec<CertificateDer<'static>>,
    /// The answer to `GET http://<authority><path>` over HTTP/2, if any.
    pub reply: Result<Reply, String>,
}

/// Connects to `inbound` presenting `creds` (or nothing), expecting the server to be
/// `server` under `bundle`, asks for app port `port`, then sends one HTTP/2 GET of
/// `path` with `:authority` `authority`.
pub async fn attempt_inbound(
    inbound: SocketAddr,
    creds: Option<&Credentials>,
    bundle: &TrustBundle,
    server: &SpiffeId,
    port: u16,
    authority: &str,
    path: &str,
) -> InboundAttempt {
    let connect = connect_inbound(inbound, creds, bundle, server, sni(port), &[ALPN_H2]);
    let tls = match tokio::time::timeout(TIMEOUT, connect).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            return InboundAttempt {
                handshake: Err(e.to_string()),
                server_chain: Vec::new(),
                reply: Err("no connection".into()),
            };
        }
        Err(_) => panic!("TLS handshake with {inbound} timed out"),
    };
    let server_chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let request = async {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let req = Request::get(format!("http://{authority}{path}"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok::<_, Error>(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    };
    let reply = match tokio::time::timeout(TIMEOUT, request).await {
        Ok(r) => r.map_err(|e| error_chain(e.as_ref())),
        Err(_) => Err("timed out".into()),
    };
    InboundAttempt {
        handshake: Ok(()),
        server_chain,
        reply,
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What a [`stand_in_peer`] answers to every request.
pub const STAND_IN_BODY: &str = "stand-in peer\n";

/// Stands in for a peer sidecar's inbound port on `addr` until `shutdown`: terminates mTLS
/// presenting `creds` as they are (a test may hand it a forged chain), requires a client
/// certificate that verifies against `bundle`, and answers every HTTP/2 or HTTP/1.1 request
/// with 200 [`STAND_IN_BODY`]. Returns the count of requests answered.
pub async fn stand_in_peer(
    addr: SocketAddr,
    creds: &Credentials,
    bundle: &TrustBundle,
    shutdown: CancellationToken,
) -> Arc<AtomicUsize> {
    let config = server_config(creds, bundle, ClientAuth::Required, &[ALPN_H2, ALPN_HTTP11])
        .expect("stand-in server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind the stand-in peer on {addr}: {e}"));
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r { Ok(a) => a, Err(_) => continue },
            };
            let acceptor = acceptor.clone();
            let count = count.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the connection here.
                let Ok(Ok(tls)) = tokio::time::timeout(TIMEOUT, acceptor.accept(tcp)).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_: Request<_>| {
                    count.fetch_add(1, Ordering::SeqCst);
                    let body = Full::new(Bytes::from_static(STAND_IN_BODY.as_bytes()));
                    async move { Ok::<_, Infallible>(Response::new(body)) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(tls), service);
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = conn => {}
                }
            });
        }
    });
    answered
}
