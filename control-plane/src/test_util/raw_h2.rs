//! A frame-level HTTP/2 client for attack tests: it writes the frames a hostile client
//! would (floods of resets, protocol errors, streams it never finishes), which a
//! well-behaved client library refuses to send, and reads back what the server answers.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types used here (RFC 9113 §6).
pub mod kind {
    /// DATA.
    pub const DATA: u8 = 0x0;
    /// HEADERS.
    pub const HEADERS: u8 = 0x1;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 0x3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 0x4;
    /// PING.
    pub const PING: u8 = 0x6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 0x7;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u8 = 0x8;
}

/// END_STREAM flag.
pub const END_STREAM: u8 = 0x1;
/// END_HEADERS flag.
pub const END_HEADERS: u8 = 0x4;
/// ACK flag (SETTINGS, PING).
pub const ACK: u8 = 0x1;
/// Error code CANCEL.
pub const CANCEL: u32 = 0x8;
/// Error code ENHANCE_YOUR_CALM.
pub const ENHANCE_YOUR_CALM: u32 = 0xb;
/// SETTINGS_MAX_CONCURRENT_STREAMS.
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// One frame read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Frame type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream identifier.
    pub stream: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// For GOAWAY: (last stream id, error code).
    pub fn goaway(&self) -> Option<(u32, u32)> {
        if self.kind != kind::GOAWAY || self.payload.len() < 8 {
            return None;
        }
        let last = u32::from_be_bytes([
            self.payload[0],
            self.payload[1],
            self.payload[2],
            self.payload[3],
        ]) & 0x7fff_ffff;
        let code = u32::from_be_bytes([
            self.payload[4],
            self.payload[5],
            self.payload[6],
            self.payload[7],
        ]);
        Some((last, code))
    }

    /// For SETTINGS: the (identifier, value) pairs.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        if self.kind != kind::SETTINGS {
            return Vec::new();
        }
        self.payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }
}

/// Appends one frame to `out`.
pub fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK header block for a gRPC POST to `path`, with `extra` headers, using only the
/// static table and literals without indexing (names and values under 127 bytes).
pub fn grpc_request_block(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    // Static table: 3 = :method POST, 7 = :scheme https.
    let mut block = vec![0x83, 0x87];
    let mut literal = |name: &str, value: &str| {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    };
    literal(":path", path);
    literal(":authority", "palisade-control-plane");
    literal("content-type", "application/grpc");
    literal("te", "trailers");
    for (n, v) in extra {
        literal(n, v);
    }
    block
}

/// The client preface followed by an empty SETTINGS frame.
pub fn preface() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    frame(&mut out, kind::SETTINGS, 0, 0, &[]);
    out
}

/// Reads one frame; `None` at end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 9];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    }))
}

/// Reads frames until the connection ends, acknowledging the server's SETTINGS and PINGs
/// through `ack` (frames to write back), and returns the first GOAWAY seen with every
/// RST_STREAM counted before it.
pub async fn read_until_goaway<R: AsyncRead + Unpin>(
    r: &mut R,
    ack: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
) -> (Option<(u32, u32)>, usize) {
    let mut resets = 0;
    loop {
        let Ok(Some(f)) = read_frame(r).await else {
            return (None, resets);
        };
        match f.kind {
            kind::GOAWAY => return (f.goaway(), resets),
            kind::RST_STREAM => resets += 1,
            kind::SETTINGS if f.flags & ACK == 0 => {
                let mut out = Vec::new();
                frame(&mut out, kind::SETTINGS, ACK, 0, &[]);
                let _ = ack.send(out);
            }
            kind::PING if f.flags & ACK == 0 => {
                let mut out = Vec::new();
                frame(&mut out, kind::PING, ACK, 0, &f.payload);
                let _ = ack.send(out);
            }
            _ => {}
        }
    }
}

/// Writes `bytes` and flushes.
pub async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}
