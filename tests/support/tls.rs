//! Talking TLS straight to a sidecar's inbound port (15006), as a peer sidecar would (or as
//! an attacker without a mesh certificate would).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_certs::tls::{Credentials, client_config};
use palisade_certs::{ALPN_H2, CertificateAuthority, SpiffeId, TrustBundle};
use rustls_pki_types::{CertificateDer, DnsName, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

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
