//! Protocol detection on captured connections: the app's first bytes tell HTTP/1.x, HTTP/2
//! with prior knowledge, and TLS (whose ClientHello names the server, read without
//! terminating anything) from everything else, which is opaque TCP.
//!
//! Detection reads (it cannot peek: a peek that finds too few bytes would spin), so the
//! bytes it read travel on in a [`Prefixed`] stream, replayed before the rest. A caller that
//! sends nothing within the timeout (server-speaks-first protocols: MySQL, SMTP) is opaque,
//! never dropped; ports declared as TCP skip detection altogether.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The most detection reads: a TLS record (16 KiB) and its header; an HTTP/1 request line
/// longer than that is not worth telling from opaque bytes.
const MAX_DETECT_BYTES: usize = (16 << 10) + 5;
/// A TLS handshake record (RFC 8446 section 5.1).
const TLS_HANDSHAKE: u8 = 0x16;

/// What the first bytes of a connection speak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// An HTTP/1.0 or HTTP/1.1 request line.
    Http1,
    /// The HTTP/2 prior-knowledge preface.
    Http2,
    /// A TLS ClientHello, with the server name it asks for, if any.
    Tls {
        /// The SNI, lower case.
        sni: Option<String>,
    },
    /// Anything else, including nothing at all before the timeout.
    Opaque,
}

impl Protocol {
    /// The `protocol` label value of the detection metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Tls { .. } => "tls",
            Protocol::Opaque => "opaque",
        }
    }
}

/// The outcome of detection on one connection.
#[derive(Debug)]
pub struct Detection {
    /// What the bytes speak.
    pub protocol: Protocol,
    /// Whether the caller sent too little before the timeout (then `protocol` is opaque).
    pub timed_out: bool,
    /// How long detection waited.
    pub elapsed: Duration,
}

/// Whether the bytes so far decide the protocol.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Decided(Protocol),
    NeedMore,
}

/// What the first bytes of a connection speak; `None` while they could still be the start
/// of more than one protocol (the caller reads more, up to a bound).
pub fn classify_prefix(buf: &[u8]) -> Option<Protocol> {
    match classify(buf) {
        Verdict::Decided(p) => Some(p),
        Verdict::NeedMore => None,
    }
}

/// Classifies the first bytes of a connection.
fn classify(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Verdict::Decided(Protocol::Http2)
        } else {
            Verdict::NeedMore
        };
    }
    if buf[0] == TLS_HANDSHAKE {
        return classify_tls(buf);
    }
    classify_http1(buf)
}

/// An HTTP/1.x request line, parsed by `httparse` as far as the bytes go.
fn classify_http1(buf: &[u8]) -> Verdict {
    let mut headers = [httparse::EMPTY_HEADER; 0];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        // The request line is complete once the version is known; headers may follow.
        Ok(_) if req.version.is_some() => Verdict::Decided(Protocol::Http1),
        Ok(_) => Verdict::NeedMore,
        // More headers than the empty array holds: the request line parsed.
        Err(httparse::Error::TooManyHeaders) => Verdict::Decided(Protocol::Http1),
        Err(_) => Verdict::Decided(Protocol::Opaque),
    }
}

/// A TLS ClientHello, read by rustls' server-side `Acceptor` (which parses the hello without
/// answering it).
fn classify_tls(buf: &[u8]) -> Verdict {
    // Record header: type, legacy version 3.x, length.
    if buf.len() >= 2 && buf[1] != 0x03 {
        return Verdict::Decided(Protocol::Opaque);
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut input = buf;
    while !input.is_empty() {
        match acceptor.read_tls(&mut input) {
            Ok(0) => break,
            Ok(_) => {}
            // The acceptor's buffer is full: as much as detection will read anyway.
            Err(_) => break,
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let sni = accepted
                .client_hello()
                .server_name()
                .map(str::to_ascii_lowercase);
            Verdict::Decided(Protocol::Tls { sni })
        }
        Ok(None) => Verdict::NeedMore,
        // A TLS record whose hello rustls cannot read: TLS all the same, with no name.
        Err(_) => Verdict::Decided(Protocol::Tls { sni: None }),
    }
}

/// Reads from `stream` until its protocol is known, the caller stops sending, `timeout`
/// passes, or [`MAX_DETECT_BYTES`] arrived. Returns the detection and the bytes read, which
/// must reach the destination first ([`Prefixed`]).
pub async fn detect<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> io::Result<(Detection, BytesMut)> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut buf = BytesMut::with_capacity(1024);
    let protocol = loop {
        if buf.len() >= MAX_DETECT_BYTES {
            break Some(Protocol::Opaque);
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().min(MAX_DETECT_BYTES - buf.len()).max(1024));
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => break None,
            Ok(Err(e)) => return Err(e),
            // The caller finished sending (half-close) before the bytes decided anything.
            Ok(Ok(0)) => break Some(Protocol::Opaque),
            Ok(Ok(_)) => {
                if let Verdict::Decided(p) = classify(&buf) {
                    break Some(p);
                }
            }
        }
    };
    let detection = Detection {
        timed_out: protocol.is_none(),
        protocol: protocol.unwrap_or(Protocol::Opaque),
        elapsed: start.elapsed(),
    };
    Ok((detection, buf))
}

pin_project_lite::pin_project! {
    /// A stream whose first reads return bytes already read from it.
    #[derive(Debug)]
    pub struct Prefixed<S> {
        prefix: BytesMut,
        #[pin]
        inner: S,
    }
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` read first.
    pub fn new(prefix: BytesMut, inner: S) -> Self {
        Self { prefix, inner }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// The bytes a real rustls client sends first, for `server_name`.
    fn client_hello(server_name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("{e}"))
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(server_name.to_owned())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), name).unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap_or_else(|e| panic!("{e}"));
        }
        out
    }

    #[test]
    fn http1_request_lines() {
        for line in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"POST /x?y=1 HTTP/1.0\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n",
            b"PURGE /cache HTTP/1.1\r\nHost: a\r\n",
        ] {
            assert_eq!(
                classify(line),
                Verdict::Decided(Protocol::Http1),
                "{line:?}"
            );
        }
        // Incomplete, still plausible: wait for more.
        for part in [&b"GE"[..], b"GET /long/pa", b"GET / HTTP/1."] {
            assert_eq!(classify(part), Verdict::NeedMore, "{part:?}");
        }
        // Not HTTP: binary, a banner-less protocol's first packet, HTTP/2 spelled wrong.
        for other in [
            &b"\x00\x01\x02\x03"[..],
            b"\x4a\x00\x00\x00\x0a8.0.36",
            b"GET / HTTP/2.0\r\n",
            b"HELLO WORLD\r\n",
        ] {
            assert_eq!(
                classify(other),
                Verdict::Decided(Protocol::Opaque),
                "{other:?}"
            );
        }
    }

    #[test]
    fn http2_preface_whole_and_in_parts() {
        assert_eq!(classify(H2_PREFACE), Verdict::Decided(Protocol::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), Verdict::NeedMore);
        // "PRI" alone could still be the preface.
        assert_eq!(classify(b"PRI"), Verdict::NeedMore);
        // Not the preface but a (strange) HTTP/1.1 request line.
        assert_eq!(
            classify(b"PRI * HTTP/1.1\r\n"),
            Verdict::Decided(Protocol::Http1)
        );
    }

    #[test]
    fn tls_client_hello_names_its_server() {
        let hello = client_hello("API.Partner.example");
        assert_eq!(
            classify(&hello),
            Verdict::Decided(Protocol::Tls {
                sni: Some("api.partner.example".into())
            })
        );
        // The hello cut short waits for the rest.
        assert_eq!(classify(&hello[..hello.len() / 2]), Verdict::NeedMore);
        assert_eq!(classify(&hello[..3]), Verdict::NeedMore);
        // A handshake record byte followed by something that is not TLS.
        assert_eq!(
            classify(b"\x16\x99\x00"),
            Verdict::Decided(Protocol::Opaque)
        );
        // An IP address as the server name: rustls sends no SNI.
        assert_eq!(
            classify(&client_hello("192.0.2.1")),
            Verdict::Decided(Protocol::Tls { sni: None })
        );
    }

    #[tokio::test]
    async fn detection_reads_until_decided_and_replays_what_it_read() {
        let (mut client, mut server) = tokio::io::duplex(64 << 10);
        let hello = client_hello("db.example");
        let (first, rest) = hello.split_at(40);
        client
            .write_all(first)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let writer = tokio::spawn({
            let rest = rest.to_vec();
            async move {
                tokio::task::yield_now().await;
                client
                    .write_all(&rest)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                client
                    .write_all(b"after")
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                client
            }
        });
        let (d, prefix) = detect(&mut server, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            d.protocol,
            Protocol::Tls {
                sni: Some("db.example".into())
            }
        );
        assert!(!d.timed_out);
        let _client = writer.await.unwrap_or_else(|e| panic!("{e}"));
        let mut replay = Prefixed::new(prefix, server);
        let mut got = vec![0u8; hello.len() + 5];
        replay
            .read_exact(&mut got)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&got[..hello.len()], &hello[..]);
        assert_eq!(&got[hello.len()..], b"after");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_caller_is_opaque_after_the_timeout_not_dropped() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let (d, prefix) = detect(&mut server, Duration::from_millis(500))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.protocol, Protocol::Opaque);
        assert!(d.timed_out);
        assert!(prefix.is_empty());
    }

    #[tokio::test]
    async fn a_half_closed_caller_is_opaque() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET /")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(client);
        let (d, prefix) = detect(&mut server, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.protocol, Protocol::Opaque);
        assert_eq!(&prefix[..], b"GET /");
    }
}
