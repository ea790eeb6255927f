//! Resource bounds of the data path: how many connections a listener and one peer may hold,
//! how long a connection may live (maximum age, idle time, the peer certificate's
//! `notAfter`), and the bookkeeping that enforces them.
//!
//! Every value is configurable (`palisade proxy --help` prints the defaults); the defaults
//! are sized for one sidecar in front of one app: far above what a well-behaved peer needs,
//! low enough that an outsider cannot grow the proxy's memory without bound.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::Hash;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::future::Either;
use futures_util::task::AtomicWaker;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::server::graceful::GracefulConnection;
use palisade_certs::SpiffeId;
use rustls_pki_types::CertificateDer;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Configurable bounds of the data path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open connections per listener (inbound 15006, outbound 15001); more are closed at
    /// accept.
    pub max_connections: usize,
    /// Open inbound connections per peer identity (per address for plaintext callers).
    pub max_connections_per_peer: usize,
    /// HTTP/2 streams a peer may have open at once on one connection.
    pub max_concurrent_streams: u32,
    /// How often an HTTP/2 connection with a silent peer is pinged.
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// How long a connection may carry no request before it is closed.
    pub idle_timeout: Duration,
    /// How long a connection may live; after that it is closed gracefully (GOAWAY, or
    /// after the HTTP/1 request in flight). Never longer than the peer's certificate.
    pub max_connection_age: Duration,
    /// How long a client may take to send a complete HTTP/1 request head.
    pub header_read_timeout: Duration,
    /// How long a request body may stall (no data between two frames) on its way to the
    /// app before the request is aborted.
    pub body_timeout: Duration,
    /// Connections to the app per port; further requests queue for a free one.
    pub app_max_connections: usize,
    /// HTTP/1.1 connections the outbound keeps to one peer sidecar's port; when all are
    /// busy, further requests share the HTTP/2 connection to it.
    pub peer_http1_connections: usize,
    /// How long a request may queue for an app connection before it is answered 502 (gRPC UNAVAILABLE).
    pub app_queue_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_peer: 1024,
            max_concurrent_streams: 128,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connection_age: Duration::from_secs(3600),
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            app_max_connections: 128,
            peer_http1_connections: 64,
            app_queue_timeout: Duration::from_secs(10),
        }
    }
}

// === connection counting ===

/// Who a connection counts against in the per-peer limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum PeerKey {
    /// A verified SPIFFE ID.
    Identity(SpiffeId),
    /// A caller without one (plaintext, PERMISSIVE mode): its address.
    Address(IpAddr),
}

/// Counts open connections of one listener, in total and per peer. The per-peer map only
/// holds peers with an open connection, so it is bounded by the listener's limit.
#[derive(Debug)]
pub(crate) struct ConnCounter<K: Eq + Hash> {
    max_total: usize,
    max_per_peer: usize,
    state: Mutex<CounterState<K>>,
}

#[derive(Debug)]
struct CounterState<K> {
    total: usize,
    per_peer: HashMap<K, usize>,
}

/// Why a connection was refused by a [`ConnCounter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The listener holds its maximum.
    Listener,
    /// The peer holds its maximum.
    Peer,
}

impl<K: Eq + Hash + Clone + Send + 'static> ConnCounter<K> {
    /// A counter allowing `max_total` connections, `max_per_peer` of them per peer.
    pub(crate) fn new(max_total: usize, max_per_peer: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_peer,
            state: Mutex::new(CounterState {
                total: 0,
                per_peer: HashMap::new(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CounterState<K>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one more connection on the listener, or refuses it.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<ListenerSlot<K>, Refusal> {
        let mut state = self.state();
        if state.total >= self.max_total {
            return Err(Refusal::Listener);
        }
        state.total += 1;
        Ok(ListenerSlot {
            counter: self.clone(),
            peer: None,
        })
    }

    /// Open connections on the listener.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.state().total
    }
}

/// One connection's place on a listener (and, once known, its peer's); given back on drop.
#[derive(Debug)]
pub(crate) struct ListenerSlot<K: Eq + Hash + Clone + Send + 'static> {
    counter: Arc<ConnCounter<K>>,
    peer: Option<K>,
}

impl<K: Eq + Hash + Clone + Send + 'static> ListenerSlot<K> {
    /// Counts the connection against `peer` too, or refuses it.
    pub(crate) fn assign(&mut self, peer: K) -> Result<(), Refusal> {
        let mut state = self.counter.state();
        let count = state.per_peer.entry(peer.clone()).or_insert(0);
        if *count >= self.counter.max_per_peer {
            return Err(Refusal::Peer);
        }
        *count += 1;
        self.peer = Some(peer);
        Ok(())
    }
}

impl<K: Eq + Hash + Clone + Send + 'static> Drop for ListenerSlot<K> {
    fn drop(&mut self) {
        let mut state = self.counter.state();
        state.total = state.total.saturating_sub(1);
        if let Some(peer) = self.peer.take()
            && let Some(count) = state.per_peer.get_mut(&peer)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.per_peer.remove(&peer);
            }
        }
    }
}

// === certificate expiry ===

/// The end of a presented chain's validity: the earliest `notAfter` (Unix seconds) of its
/// certificates; `None` if none can be read.
pub fn chain_not_after(chain: Option<&[CertificateDer<'_>]>) -> Option<i64> {
    chain?
        .iter()
        .filter_map(|c| palisade_certs::svid::inspect(c.as_ref()).ok())
        .map(|info| info.not_after)
        .min()
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Whether a certificate valid through `not_after` (inclusive, as RFC 5280 and webpki read
/// it: the whole second) has expired.
pub fn expired(not_after: i64) -> bool {
    unix_now().as_secs() > u64::try_from(not_after).unwrap_or(0)
}

/// The instant a certificate valid through `not_after` stops being valid, on the tokio
/// clock: the end of that second.
pub(crate) fn expiry_instant(not_after: i64) -> Instant {
    let end = Duration::from_secs(u64::try_from(not_after).unwrap_or(0).saturating_add(1));
    Instant::now() + end.saturating_sub(unix_now())
}

/// Longest head start a connection gets to wind down before a certificate it depends on
/// expires.
const RETIRE_MARGIN_CAP: Duration = Duration::from_secs(60);

/// Shortest head start, where the remaining life allows it: a tenth of a short life is too
/// little for a request in flight on a busy machine (a 6 s certificate renewed at 70 %
/// leaves its last connections 0.2 s).
const RETIRE_MARGIN_FLOOR: Duration = Duration::from_secs(1);

/// When a connection that must be gone by `hard` stops taking new requests: a tenth of its
/// remaining life before (at least a second, or half the remaining life when that is
/// shorter; at most a minute), so requests in flight finish and callers move to a new
/// connection (made with renewed certificates) before the hard close.
pub(crate) fn retire_before(hard: Instant) -> Instant {
    let now = Instant::now();
    let remaining = hard.saturating_duration_since(now);
    let margin = (remaining / 10)
        .max(RETIRE_MARGIN_FLOOR.min(remaining / 2))
        .min(RETIRE_MARGIN_CAP);
    hard.checked_sub(margin).unwrap_or(now).max(now)
}

// === connection lifetime ===

/// Requests in flight on one connection (from arrival until the response body is done),
/// so that "idle" means no request, not no bytes (keepalive pings are bytes).
///
/// Plain counters, no notification: a request costs two atomic updates and a clock read,
/// and the idle timer (see [`Activity::idle_for`]) looks at them only when it fires.
#[derive(Debug, Clone)]
pub(crate) struct Activity {
    state: Arc<ActivityState>,
}

#[derive(Debug)]
struct ActivityState {
    /// What `last_end_ms` counts from.
    base: Instant,
    in_flight: AtomicUsize,
    /// When the last request ended, in milliseconds after `base` (0: none yet, so idle
    /// counts from the connection's start).
    last_end_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            state: Arc::new(ActivityState {
                base: Instant::now(),
                in_flight: AtomicUsize::new(0),
                last_end_ms: AtomicU64::new(0),
            }),
        }
    }
}

impl Activity {
    /// Marks a request as started; it ends when the guard is dropped.
    pub(crate) fn start(&self) -> ActiveGuard {
        self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        ActiveGuard {
            state: self.state.clone(),
        }
    }

    /// When the connection becomes idle for `idle` if nothing else happens: `idle` after
    /// the last request ended, or (with one in flight) `idle` from now at the earliest.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        let state = &self.state;
        if state.in_flight.load(Ordering::Acquire) > 0 {
            return Instant::now() + idle;
        }
        let last_end = Duration::from_millis(state.last_end_ms.load(Ordering::Acquire));
        state.base + last_end + idle
    }

    /// Resolves once no request has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = self.idle_deadline(idle);
            tokio::time::sleep_until(deadline).await;
            if self.state.in_flight.load(Ordering::Acquire) == 0
                && self.idle_deadline(idle) <= Instant::now()
            {
                return;
            }
        }
    }
}

/// One request in flight (see [`Activity`]).
#[derive(Debug)]
pub(crate) struct ActiveGuard {
    state: Arc<ActivityState>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let state = &self.state;
        let ended = u64::try_from(state.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        state.last_end_ms.fetch_max(ended, Ordering::Release);
        state.in_flight.fetch_sub(1, Ordering::Release);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it is done.
    #[derive(Debug)]
    pub(crate) struct Tracked<B> {
        #[pin]
        inner: B,
        guard: Option<ActiveGuard>,
    }
}

impl<B> Tracked<B> {
    pub(crate) fn new(inner: B, guard: ActiveGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: http_body::Body> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps a connection's service so that each request counts in `activity` until its
/// response body is done.
pub(crate) fn track<S, B>(
    service: S,
    activity: Activity,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Tracked<B>>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<Tracked<B>>, Infallible>> + Send + 'static,
> + Clone
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
{
    hyper::service::service_fn(move |req| {
        let guard = activity.start();
        // Boxed: the service's future is a large state machine, and hyper spawns one task
        // per HTTP/2 stream around this future; unboxed it is copied into the task and moved
        // again as it is polled (memmove was the top symbol under load).
        let response = Box::pin(service.call(req));
        async move {
            let response = response.await?;
            Ok(response.map(|body| Tracked::new(body, guard)))
        }
    })
}

/// Why a supervised connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The peer or the protocol closed it (the result says how).
    Closed,
    /// Closed because the peer's certificate expires: gracefully shortly before its
    /// `notAfter`, at once at it.
    CertificateExpired,
    /// Closed gracefully after the maximum age.
    MaxAge,
    /// Closed gracefully after carrying no request for the idle timeout.
    Idle,
    /// Closed gracefully because the proxy is shutting down.
    Drain,
    /// Closed at once because a new NetworkPolicy no longer allows the connection.
    NetworkPolicy,
}

impl Ended {
    /// The metric label of a close the proxy decided.
    pub(crate) fn label(self) -> Option<&'static str> {
        match self {
            Ended::Closed | Ended::Drain => None,
            Ended::CertificateExpired => Some("peer-certificate-expired"),
            Ended::MaxAge => Some("max-age"),
            Ended::Idle => Some("idle"),
            Ended::NetworkPolicy => Some("network-policy"),
        }
    }
}

/// When a connection must end.
#[derive(Debug, Clone)]
pub(crate) struct Lifetime {
    /// Closed at once then (the peer's certificate expires).
    pub(crate) hard: Option<Instant>,
    /// Closed gracefully then: the maximum age, or shortly before `hard`.
    pub(crate) soft: Instant,
    /// Which of the two `soft` is.
    soft_reason: Ended,
    /// Closed gracefully after this long without a request.
    pub(crate) idle: Duration,
    /// How long a graceful close may take before the connection is dropped.
    pub(crate) grace: Duration,
    /// Starts a graceful close of every connection.
    pub(crate) shutdown: CancellationToken,
}

impl Lifetime {
    /// The lifetime of a connection accepted now under `limits`, whose peer's certificate
    /// is valid through `not_after` (if it has one).
    pub(crate) fn new(
        limits: &Limits,
        not_after: Option<i64>,
        grace: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let hard = not_after.map(expiry_instant);
        let aged = Instant::now() + limits.max_connection_age;
        let (soft, soft_reason) = match hard.map(retire_before) {
            Some(retire) if retire < aged => (retire, Ended::CertificateExpired),
            _ => (aged, Ended::MaxAge),
        };
        Self {
            hard,
            soft,
            soft_reason,
            idle: limits.idle_timeout,
            grace,
            shutdown,
        }
    }
}

impl Lifetime {
    /// Why the connection ends at `soft`.
    pub(crate) fn soft_reason(&self) -> Ended {
        self.soft_reason
    }
}

/// Runs a served connection until it ends on its own, or its lifetime says it must: a
/// graceful close (GOAWAY; HTTP/1 finishes the request in flight) at the maximum age,
/// after the idle timeout, or at shutdown, forced after the grace period; an immediate
/// close at the peer certificate's expiry, or when `revoked` resolves (a policy change no
/// longer allows the connection: no further byte may pass).
pub(crate) async fn supervise<C, R>(
    conn: C,
    life: Lifetime,
    activity: Activity,
    revoked: R,
) -> (Ended, Result<(), C::Error>)
where
    C: GracefulConnection,
    R: Future<Output = ()>,
{
    let mut revoked = std::pin::pin!(revoked);
    let mut conn = std::pin::pin!(conn);
    let hard = life.hard;
    let hard_deadline = async move {
        match hard {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    let mut hard_deadline = std::pin::pin!(hard_deadline);
    let ends = async {
        let idle = activity.idle_for(life.idle);
        tokio::select! {
            biased;
            () = &mut hard_deadline => Err(Ended::CertificateExpired),
            () = &mut revoked => Err(Ended::NetworkPolicy),
            () = life.shutdown.cancelled() => Ok(Ended::Drain),
            () = tokio::time::sleep_until(life.soft) => Ok(life.soft_reason),
            () = idle => Ok(Ended::Idle),
        }
    };
    // The connection is polled on every wake-up; what ends it only when one of its own
    // timers or signals fired (polling five timers and channels per wake-up was a visible
    // share of the data path's CPU).
    let reason = match Beside::new(conn.as_mut(), ends).await {
        Either::Left(r) => return (Ended::Closed, r),
        Either::Right(Err(immediate)) => return (immediate, Ok(())),
        Either::Right(Ok(graceful)) => graceful,
    };
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        biased;
        r = conn.as_mut() => (reason, r),
        () = &mut hard_deadline => (Ended::CertificateExpired, Ok(())),
        () = &mut revoked => (Ended::NetworkPolicy, Ok(())),
        () = tokio::time::sleep(life.grace) => (reason, Ok(())),
    }
}

pin_project_lite::pin_project! {
    /// Runs `main` and `side` together, like a two-armed `select!`, but polls `side` only
    /// after something `side` waits on has woken it: `main` (a busy connection) wakes its
    /// task thousands of times a second, and `side` (timers and signals that end it) rarely.
    pub struct Beside<M, S> {
        #[pin]
        main: M,
        #[pin]
        side: S,
        signal: Arc<SideSignal>,
        side_waker: Waker,
    }
}

impl<M, S> Beside<M, S> {
    /// `main` and `side`, the first to finish deciding the output.
    pub fn new(main: M, side: S) -> Self {
        let signal = Arc::new(SideSignal {
            // Polled once at the start, so that it registers its wake-ups.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            main,
            side,
            side_waker: Waker::from(signal.clone()),
            signal,
        }
    }
}

/// What `Beside`'s side future wakes: a flag, and the task that polls both.
#[derive(Debug)]
struct SideSignal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for SideSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<M: Future, S: Future> Future for Beside<M, S> {
    type Output = Either<M::Output, S::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Registered before either is polled, so a side wake-up in between is not lost.
        this.signal.task.register(cx.waker());
        if let Poll::Ready(out) = this.main.poll(cx) {
            return Poll::Ready(Either::Left(out));
        }
        if this.signal.woken.swap(false, Ordering::AcqRel) {
            let mut side_cx = Context::from_waker(this.side_waker);
            if let Poll::Ready(out) = this.side.poll(&mut side_cx) {
                return Poll::Ready(Either::Right(out));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_refuses_past_either_limit_and_forgets_closed_peers() {
        let counter = ConnCounter::<u8>::new(3, 2);
        let mut a = counter.admit().unwrap_or_else(|_| panic!("first"));
        a.assign(1).unwrap_or_else(|_| panic!("peer 1, first"));
        let mut b = counter.admit().unwrap_or_else(|_| panic!("second"));
        b.assign(1).unwrap_or_else(|_| panic!("peer 1, second"));
        let mut c = counter.admit().unwrap_or_else(|_| panic!("third"));
        assert_eq!(c.assign(1), Err(Refusal::Peer));
        assert_eq!(counter.admit().err(), Some(Refusal::Listener));
        drop(a);
        c.assign(1)
            .unwrap_or_else(|_| panic!("peer 1 after a close"));
        drop((b, c));
        assert_eq!(counter.open(), 0);
        assert!(counter.state().per_peer.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn connections_retire_early_enough_for_requests_in_flight() {
        let now = Instant::now();
        let margin = |life: Duration| (now + life) - retire_before(now + life);
        // A tenth of a long life, at most a minute.
        assert_eq!(margin(Duration::from_secs(100)), Duration::from_secs(10));
        assert_eq!(margin(Duration::from_secs(86_400)), Duration::from_secs(60));
        // At least a second: the last connections of a 6 s certificate renewed at 70 %.
        assert_eq!(margin(Duration::from_secs(2)), Duration::from_secs(1));
        // Half of what is left when that is less.
        assert_eq!(
            margin(Duration::from_millis(800)),
            Duration::from_millis(400)
        );
        assert_eq!(margin(Duration::ZERO), Duration::ZERO);
    }

    /// A future that counts its polls and finishes when `inner` does.
    struct Counted<F> {
        inner: Pin<Box<F>>,
        polls: Arc<AtomicUsize>,
    }

    impl<F: Future> Future for Counted<F> {
        type Output = F::Output;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.inner.as_mut().poll(cx)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_side_future_is_polled_only_when_it_was_woken() {
        let polls = Arc::new(AtomicUsize::new(0));
        let side = Counted {
            inner: Box::pin(tokio::time::sleep(Duration::from_secs(10))),
            polls: polls.clone(),
        };
        // A main future that wakes its task 1,000 times, then keeps waiting.
        let mut wakes = 0;
        let main = std::future::poll_fn(|cx| {
            if wakes < 1000 {
                wakes += 1;
                cx.waker().wake_by_ref();
            }
            Poll::<()>::Pending
        });
        match Beside::new(main, side).await {
            Either::Right(()) => {}
            Either::Left(()) => panic!("main never finishes"),
        }
        // Once at the start, once when its timer fired: not once per wake-up of main.
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_main_future_wins_when_it_finishes_first() {
        let main = tokio::time::sleep(Duration::from_secs(1));
        let side = tokio::time::sleep(Duration::from_secs(2));
        assert!(matches!(Beside::new(main, side).await, Either::Left(())));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_means_no_request_in_flight() {
        let activity = Activity::default();
        let guard = activity.start();
        let idle = activity.idle_for(Duration::from_secs(5));
        tokio::pin!(idle);
        assert!(
            tokio::time::timeout(Duration::from_secs(60), &mut idle)
                .await
                .is_err(),
            "a request in flight keeps the connection busy"
        );
        drop(guard);
        tokio::time::timeout(Duration::from_secs(6), idle)
            .await
            .unwrap_or_else(|_| panic!("idle 5 s after the last request"));
    }

    #[test]
    fn a_certificate_is_valid_through_its_not_after_second() {
        let now = i64::try_from(unix_now().as_secs()).unwrap_or(0);
        assert!(!expired(now));
        assert!(expired(now - 1));
    }
}
