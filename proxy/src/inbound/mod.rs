//! Inbound (15006): terminates mTLS from peer sidecars (a client certificate chaining to the
//! trust bundle is required), learns the target app port from the SNI, authorizes each
//! request, and forwards it to the app on the workload's own address, speaking what the
//! port speaks.
//!
//! This module accepts and classifies a connection and builds its `ConnContext`; the two
//! kinds of traffic it then carries have a module each: `http` (per-request authorization
//! and the request the app gets) and `tcp` (opaque streams, ALPN `palisade-tcp`).
//!
//! **Plaintext (MeshConfig `mtls.mode: PERMISSIVE` only).** The first byte of every accepted
//! connection is peeked (within the handshake timeout): `0x16`, a TLS handshake record, takes
//! the mTLS path above. Anything else is plaintext:
//! - if the current view's mode is PERMISSIVE, it is served as HTTP/1.1 or h2c (prior
//!   knowledge) with no verified identity (see `http` for what that means per request).
//!   Opaque (non-HTTP) plaintext is not supported: such a caller gets an HTTP parse error
//!   and a closed connection.
//! - otherwise (STRICT, or no configuration yet) the connection is closed before any byte
//!   reaches the app, counted in `palisade_proxy_inbound_plaintext_refused_total{stage=
//!   "connection"}` and logged at INFO with the caller's address.
//!
//! A switch back to STRICT applies to new connections at once, and to plaintext connections
//! opened earlier from their next request on (see `http`). STRICT is never weakened by a
//! connection opened before it.

mod http;
mod tcp;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

// `::http` is the crate: inside this module, `http` names the submodule.
use ::http::HeaderValue;
use hyper_util::server::graceful::Watcher;
use palisade_certs::{ALPN_H2, SpiffeId};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::app::AppClients;
use crate::authz::{Decision, HttpAttrs, RequestAttrs};
use crate::enforce::{self, Subject, UNAUTHENTICATED};
use crate::http::Failure;
use crate::limits::{self, ConnCounter, Ended, Lifetime, Limits, ListenerSlot, PeerKey, Refusal};
use crate::metrics::{CaptureRefusal, Direction, Metrics, PeerLabel, PlaintextStage};
use crate::model::{LocalWorkload, MeshView, MtlsMode, Protocol};
use crate::netgate::{self, NetConn};
use crate::orig_dst::{self, Arrival};
use crate::pool::port_from_sni;
use crate::tls::{ALPN_TCP, TlsState};
use futures_util::future::Either;

use self::http::Codec;

/// How long a client may take to send its first byte and complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS connection: a handshake record (RFC 8446 section 5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Shared state of the inbound listener.
#[derive(Debug)]
pub struct Inbound {
    /// Current mesh view.
    pub view: watch::Receiver<Option<Arc<MeshView>>>,
    /// Current TLS material.
    pub tls: watch::Receiver<Option<Arc<TlsState>>>,
    /// Clients to the local app.
    pub apps: Arc<AppClients>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Whether responses carry `x-palisade-mtls`.
    pub debug_headers: bool,
    /// Whether every ALLOW decision is logged too (denials and audits always are).
    pub log_decisions: bool,
    /// Open connections, in total and per peer.
    pub(crate) conns: Arc<ConnCounter<PeerKey>>,
    /// Connection, stream and timeout bounds.
    pub limits: Limits,
    /// How long a connection the proxy closes gracefully may take to finish.
    pub grace: Duration,
    /// Cancelled at shutdown: every connection closes gracefully.
    pub shutdown: CancellationToken,
}

/// How a connection reached the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// mTLS from a peer sidecar. `target_port` comes from the canonical SNI
    /// `port-<n>.palisade.mesh`; a connection without one is refused.
    Mtls { target_port: u16 },
    /// Plaintext, accepted in PERMISSIVE mode. `dialled_port` is the app port a captured
    /// connection was for; without it (a caller that dialled 15006 itself) the target port
    /// is chosen per request.
    Plaintext { dialled_port: Option<u16> },
}

/// What is known about one accepted connection.
#[derive(Debug)]
struct ConnContext {
    transport: Transport,
    /// The caller's verified identity; `None` for a plaintext caller.
    peer_identity: Option<SpiffeId>,
    /// The `peer` label of request metrics and logs: the identity, or `unauthenticated`.
    peer_label: PeerLabel,
    /// The caller's address.
    peer_addr: SocketAddr,
    /// The address the caller connected to.
    local_ip: Option<IpAddr>,
    /// The TLS server name the caller sent.
    sni: Option<String>,
    /// The `x-forwarded-client-cert` the app gets; only a verified caller has one.
    xfcc: Option<HeaderValue>,
    /// `x-palisade-mtls` value, when debug headers are on.
    debug: Option<HeaderValue>,
    /// When the caller's certificate chain stops being valid (Unix seconds); requests are
    /// refused and the connection closed from then on.
    not_after: Option<i64>,
}

impl ConnContext {
    /// The app port, when the connection names it (mTLS SNI, or a captured connection's
    /// dialled port).
    fn port(&self) -> Option<u16> {
        match self.transport {
            Transport::Mtls { target_port } => Some(target_port),
            Transport::Plaintext { dialled_port } => dialled_port,
        }
    }
}

// === impl Inbound: accept and classify ===

impl Inbound {
    /// Serves one accepted connection: by its first byte, mTLS (handshake, then HTTP or an
    /// opaque stream) or, in PERMISSIVE mode only, plaintext HTTP.
    pub async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        watcher: Watcher,
    ) {
        self.metrics.connection(Direction::Inbound);
        let mut slot = match self.conns.admit() {
            Ok(slot) => slot,
            Err(refusal) => {
                self.refused(peer, refusal);
                return;
            }
        };
        if let Ok(local) = stream.local_addr()
            && let Arrival::Captured { original } = orig_dst::arrival(&stream, local)
        {
            self.serve_captured(stream, peer, original, &mut slot, watcher)
                .await;
            return;
        }
        // One deadline for the first byte and the whole TLS handshake.
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
            Ok(Ok(0)) => {
                tracing::debug!(%peer, "inbound connection closed before its first byte");
            }
            Ok(Ok(_)) if first[0] == TLS_HANDSHAKE_RECORD => {
                self.serve_mtls(stream, peer, deadline, &mut slot, watcher)
                    .await;
            }
            Ok(Ok(_)) => self.serve_plaintext(stream, peer, &mut slot, watcher).await,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "inbound connection failed before its first byte");
            }
            Err(_) => {
                // Nothing arrived: as before plaintext existed, a handshake that timed out.
                self.metrics.handshake_failure(Direction::Inbound);
                tracing::info!(%peer, "inbound mTLS handshake timed out");
            }
        }
    }

    /// mTLS handshake (by `deadline`), then HTTP or an opaque TCP stream by ALPN.
    async fn serve_mtls(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        deadline: Instant,
        slot: &mut ListenerSlot<PeerKey>,
        watcher: Watcher,
    ) {
        let local_ip = stream.local_addr().ok().map(|a| a.ip());
        let Some(tls) = self.tls.borrow().clone() else {
            tracing::debug!(%peer, "inbound connection refused: no certificate yet");
            return;
        };
        let accept = TlsAcceptor::from(tls.inbound()).accept(stream);
        let stream = match tokio::time::timeout_at(deadline, accept).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.metrics.handshake_failure(Direction::Inbound);
                tracing::info!(%peer, error = %e, "inbound mTLS handshake refused");
                return;
            }
            Err(_) => {
                self.metrics.handshake_failure(Direction::Inbound);
                tracing::info!(%peer, "inbound mTLS handshake timed out");
                return;
            }
        };
        let (_, session) = stream.get_ref();
        let peer_identity = palisade_certs::tls::peer_identity(session.peer_certificates());
        // Only the canonical SNI names a port: a missing or odd one is refused, never
        // guessed (a policy on `connection.sni` must see the one name of the port).
        let Some(target_port) = session.server_name().and_then(port_from_sni) else {
            self.metrics.handshake_failure(Direction::Inbound);
            tracing::info!(%peer, sni = ?session.server_name(), "inbound mTLS connection refused: SNI is not port-<n>.palisade.mesh");
            return;
        };
        let not_after = limits::chain_not_after(session.peer_certificates());
        let key = peer_identity
            .clone()
            .map_or(PeerKey::Address(peer.ip()), PeerKey::Identity);
        if let Err(refusal) = slot.assign(key) {
            self.refused(peer, refusal);
            return;
        }
        let h2 = session.alpn_protocol() == Some(ALPN_H2);
        let tcp = session.alpn_protocol() == Some(ALPN_TCP);
        let sni = session.server_name().map(str::to_owned);
        let debug = self.debug_headers.then(|| {
            let version = session
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
                .replace("TLSv1_3", "TLSv1.3")
                .replace("TLSv1_2", "TLSv1.2");
            let cipher = session
                .negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str())
                .unwrap_or("unknown");
            let peer = peer_identity
                .as_ref()
                .map_or("none".to_owned(), |p| p.to_string());
            HeaderValue::try_from(format!("{version} {cipher} peer={peer}")).ok()
        });
        // Computed once per connection; the app never sees a caller-supplied value.
        let own_identity = tls.credentials().identity();
        let xfcc = peer_identity
            .as_ref()
            .and_then(|peer| HeaderValue::try_from(format!("By={own_identity};URI={peer}")).ok());
        let ctx = Arc::new(ConnContext {
            transport: Transport::Mtls { target_port },
            peer_label: PeerLabel::new(
                peer_identity
                    .as_ref()
                    .map_or(UNAUTHENTICATED, |id| id.as_str()),
            ),
            peer_identity,
            peer_addr: peer,
            local_ip,
            sni,
            xfcc,
            debug: debug.flatten(),
            not_after,
        });
        if !self.netpol_admits(&ctx) {
            // Closed before any byte reached the app; the caller sees the TLS stream end.
            return;
        }
        if tcp {
            // The watcher is held for the stream's life: a drain waits for it, up to the
            // deadline.
            let _drain = watcher;
            self.serve_tcp_bounded(stream, &ctx, Some(target_port))
                .await;
            return;
        }
        let codec = if h2 { Codec::Http2 } else { Codec::Http1 };
        self.serve_http(stream, ctx, codec, watcher).await;
    }

    /// A plaintext connection: served as HTTP/1.1 or h2c if the current view is PERMISSIVE,
    /// else closed before any byte reaches the app.
    async fn serve_plaintext(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        slot: &mut ListenerSlot<PeerKey>,
        watcher: Watcher,
    ) {
        if let Err(refusal) = slot.assign(PeerKey::Address(peer.ip())) {
            self.refused(peer, refusal);
            return;
        }
        let mode = self
            .view
            .borrow()
            .as_ref()
            .map(|view| view.settings.mtls_mode);
        if mode != Some(MtlsMode::Permissive) {
            let reason = match mode {
                None => "no configuration yet",
                Some(_) => "the mesh mTLS mode is STRICT",
            };
            self.metrics.plaintext_refused(PlaintextStage::Connection);
            tracing::info!(%peer, reason, "inbound plaintext connection refused");
            // Dropping the socket with the caller's bytes unread closes it (RST on Linux).
            return;
        }
        let debug = self
            .debug_headers
            .then(|| HeaderValue::from_static("plaintext peer=unauthenticated"));
        let ctx = Arc::new(ConnContext {
            transport: Transport::Plaintext { dialled_port: None },
            peer_identity: None,
            peer_label: PeerLabel::new(UNAUTHENTICATED),
            peer_addr: peer,
            local_ip: stream.local_addr().ok().map(|a| a.ip()),
            sni: None,
            xfcc: None,
            debug,
            not_after: None,
        });
        self.serve_http(stream, ctx, Codec::Auto, watcher).await;
    }
}

// === impl Inbound: captured connections ===

impl Inbound {
    /// A connection the capture rules redirected here: the caller dialled the app's port
    /// itself, so it is not a peer sidecar (those dial 15006). A port the workload does not
    /// declare is refused; in STRICT mode every such caller is refused; in PERMISSIVE mode it
    /// is served as plaintext for the port it dialled: TCP ports spliced at once (no wait, so
    /// server-speaks-first protocols work), HTTP ports as HTTP.
    async fn serve_captured(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        original: SocketAddr,
        slot: &mut ListenerSlot<PeerKey>,
        watcher: Watcher,
    ) {
        self.metrics.captured(Direction::Inbound);
        if let Err(refusal) = slot.assign(PeerKey::Address(peer.ip())) {
            self.refused(peer, refusal);
            return;
        }
        let Some(view) = self.view.borrow().clone() else {
            self.metrics.plaintext_refused(PlaintextStage::Connection);
            tracing::info!(%peer, dialled = %original, reason = "no configuration yet", "inbound captured connection refused");
            return;
        };
        let port = original.port();
        let Some(protocol) = view.workload.ports.get(&port).copied() else {
            self.metrics
                .capture_refused(Direction::Inbound, CaptureRefusal::UndeclaredPort);
            tracing::info!(%peer, dialled = %original, "inbound captured connection refused: the workload does not declare this port");
            return;
        };
        if view.settings.mtls_mode != MtlsMode::Permissive {
            self.metrics.plaintext_refused(PlaintextStage::Connection);
            tracing::info!(%peer, dialled = %original, reason = "the mesh mTLS mode is STRICT", "inbound plaintext connection refused");
            return;
        }
        let debug = self
            .debug_headers
            .then(|| HeaderValue::from_static("plaintext peer=unauthenticated"));
        let ctx = Arc::new(ConnContext {
            transport: Transport::Plaintext {
                dialled_port: Some(port),
            },
            peer_identity: None,
            peer_label: PeerLabel::new(UNAUTHENTICATED),
            peer_addr: peer,
            local_ip: Some(original.ip()),
            sni: None,
            xfcc: None,
            debug,
            not_after: None,
        });
        if !self.netpol_admits(&ctx) {
            return;
        }
        if protocol == Protocol::Tcp {
            let _drain = watcher;
            self.serve_tcp_bounded(stream, &ctx, Some(port)).await;
            return;
        }
        self.serve_http(stream, ctx, Codec::Auto, watcher).await;
    }
}

// === impl Inbound: connection bounds ===

impl Inbound {
    /// Counts and logs a connection refused by a limit.
    fn refused(&self, peer: SocketAddr, refusal: Refusal) {
        let (reason, limit) = match refusal {
            Refusal::Listener => ("listener-limit", self.limits.max_connections),
            Refusal::Peer => ("peer-limit", self.limits.max_connections_per_peer),
        };
        self.metrics.connection_refused(Direction::Inbound, reason);
        tracing::info!(%peer, reason, limit, "inbound connection refused");
    }

    /// How long a connection may live: the maximum age, never past the caller's
    /// certificate.
    fn lifetime(&self, not_after: Option<i64>) -> Lifetime {
        Lifetime::new(&self.limits, not_after, self.grace, self.shutdown.clone())
    }

    /// An opaque stream, cut shortly before the caller's certificate expires or at its maximum age (a
    /// byte stream has no graceful close to offer).
    async fn serve_tcp_bounded<S>(&self, stream: S, ctx: &ConnContext, target_port: Option<u16>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let life = self.lifetime(ctx.not_after);
        let ended = tokio::select! {
            () = self.serve_tcp(stream, ctx, target_port) => Ended::Closed,
            () = tokio::time::sleep_until(life.soft) => life.soft_reason(),
        };
        self.ended(ctx, ended);
    }

    /// Counts and logs a connection the proxy closed on its own.
    fn ended(&self, conn: &ConnContext, ended: Ended) {
        if let Some(reason) = ended.label() {
            self.metrics.connection_closed(Direction::Inbound, reason);
            tracing::debug!(peer = %conn.peer_addr, identity = %conn.peer_label, reason, "inbound connection closed");
        }
    }
}

// === impl Inbound: decisions (shared by HTTP and TCP) ===

impl Inbound {
    /// NetworkPolicy ingress for a connection whose app port is known at accept (mTLS by
    /// SNI, captured plaintext by the dialled port): a denial is counted and logged, and
    /// the caller closes the connection before any byte reaches the app. Without a
    /// configuration nothing reaches the app anyway (later stages refuse).
    fn netpol_admits(&self, ctx: &ConnContext) -> bool {
        let Some(port) = ctx.port() else {
            return true;
        };
        let Some(view) = self.view.borrow().clone() else {
            return true;
        };
        netgate::admit(
            &self.metrics,
            &view,
            &NetConn::ingress(ctx.peer_addr.ip(), ctx.peer_identity.clone(), port),
        )
        .is_ok()
    }

    /// Resolves when a configuration change means NetworkPolicy no longer allows the
    /// connection (counted and logged then); pending for a connection whose port is only
    /// known per request (those are decided per request).
    fn netpol_revoked(&self, ctx: &ConnContext) -> impl Future<Output = ()> + use<> {
        match ctx.port() {
            Some(port) => Either::Left(netgate::revoked(
                self.view.clone(),
                self.metrics.clone(),
                NetConn::ingress(ctx.peer_addr.ip(), ctx.peer_identity.clone(), port),
            )),
            None => Either::Right(std::future::pending()),
        }
    }

    /// Counts and logs a decision, building labels only when something is recorded.
    fn observe(
        &self,
        view: &MeshView,
        conn: &ConnContext,
        port: u16,
        http: Option<(&str, &str)>,
        decision: &Decision<&str>,
    ) {
        enforce::count_observed(
            &self.metrics,
            conn.peer_identity.as_ref(),
            port,
            http,
            decision,
        );
        // Allowed requests cost nothing more here unless logged or watched (the live view).
        if decision.allowed
            && decision.audits.is_empty()
            && !self.log_decisions
            && !self.metrics.observer().watched()
        {
            return;
        }
        let destination = destination_label(view, port);
        let subject = Subject {
            direction: Direction::Inbound,
            source: conn.peer_identity.as_ref(),
            destination: &destination,
            method: http.map(|(m, _)| m),
            path: http.map(|(_, p)| p),
        };
        enforce::record(&self.metrics, self.log_decisions, &subject, decision);
    }
}

/// The app port an mTLS connection is for (from SNI, or the workload's only port) and its
/// protocol.
fn target(workload: &LocalWorkload, from_sni: Option<u16>) -> Result<(u16, Protocol), Failure> {
    let port = match from_sni {
        Some(p) => p,
        None if workload.ports.len() == 1 => workload
            .ports
            .keys()
            .next()
            .copied()
            .ok_or(Failure::UnknownPort(0))?,
        None => return Err(Failure::UnknownPort(0)),
    };
    let protocol = *workload
        .ports
        .get(&port)
        .ok_or(Failure::UnknownPort(port))?;
    Ok((port, protocol))
}

/// What the authorizer sees of a connection (and, for HTTP, of one request on it).
fn attrs<'a>(conn: &'a ConnContext, port: u16, http: Option<HttpAttrs<'a>>) -> RequestAttrs<'a> {
    RequestAttrs {
        source: conn.peer_identity.as_ref(),
        source_ip: Some(conn.peer_addr.ip()),
        destination_ip: conn.local_ip,
        destination_port: port,
        sni: conn.sni.as_deref(),
        http,
    }
}

/// `<workload namespace>/<workload name>:<port>`, the metric and log `destination`.
fn destination_label(view: &MeshView, port: u16) -> String {
    format!("{}/{}:{port}", view.workload.namespace, view.workload.name)
}
