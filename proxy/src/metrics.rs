//! Prometheus metrics of the proxy, served on the admin port's `/metrics`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Traffic direction, as seen from the workload; the label value is `inbound` or `outbound`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Requests the workload receives.
    Inbound,
    /// Requests the workload sends.
    Outbound,
}

// The derive would write the variant names (`Inbound`); label values are lower case, like
// every other label value of the mesh (`ack`, `permission_denied`).
impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        })
    }
}

/// Where a plaintext caller was refused at inbound; the label value is `connection` or
/// `request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlaintextStage {
    /// A new plaintext connection while the mode is STRICT (or no configuration yet):
    /// closed before any byte reached the app.
    Connection,
    /// A request on a plaintext connection opened in PERMISSIVE mode, after the mesh
    /// switched to STRICT: answered 403 `mtls-strict`, never forwarded.
    Request,
}

impl EncodeLabelValue for PlaintextStage {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            PlaintextStage::Connection => "connection",
            PlaintextStage::Request => "request",
        })
    }
}

/// The `status` label: a registered HTTP status code as its number, any other code the app
/// made up (hyper lets through 100 to 999) as `other`, so an app cannot mint hundreds of
/// series per peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusLabel(Option<u16>);

impl StatusLabel {
    /// The label of `status`.
    pub fn of(status: u16) -> Self {
        let registered = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .is_some();
        Self(registered.then_some(status))
    }
}

impl EncodeLabelValue for StatusLabel {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        match self.0 {
            Some(code) => write!(encoder, "{code}"),
            None => encoder.write_str("other"),
        }
    }
}

/// Labels of the request counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// inbound or outbound.
    pub direction: Direction,
    /// HTTP status code returned (see [`StatusLabel`]).
    pub status: StatusLabel,
    /// The other side's SPIFFE ID: inbound, the caller's, or `unauthenticated` (a plaintext
    /// caller, as the authorization metrics' `source`); outbound, the server's, or `none`.
    pub peer: PeerLabel,
}

/// The `peer` label of a request: shared text, made once per connection or endpoint, so
/// counting a request copies no string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerLabel(std::sync::Arc<str>);

impl PeerLabel {
    /// A label with the value `text`.
    pub fn new(text: &str) -> Self {
        Self(text.into())
    }

    /// The label value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PeerLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl EncodeLabelValue for PeerLabel {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(&self.0)
    }
}

/// Labels of the authorization counters (denials, audits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AuthzLabels {
    /// inbound or outbound.
    pub direction: Direction,
    /// The deciding policy (`namespace/name`), `default-deny`, or `outbound-registry-only`.
    pub policy: String,
    /// The caller's SPIFFE ID, or `unauthenticated`.
    pub source: String,
    /// Inbound: `<workload namespace>/<workload name>:<port>` (a port the workload
    /// declares); outbound: `external` for a destination outside the mesh (the host the app
    /// named goes to the log line only, never into a label).
    pub destination: String,
}

/// Labels of the dry-run counter: every value comes from configuration, never from a caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DryRunLabels {
    /// inbound or outbound.
    pub direction: Direction,
    /// The policy that would have decided with the dry-run policies enforced
    /// (`namespace/name`, `default-deny` or `default-allow`).
    pub policy: String,
    /// `allow` or `deny`.
    pub would: &'static str,
}

/// Labels of the NetworkPolicy denial counter: both values come from configuration (or
/// are fixed), never from a caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct NetpolLabels {
    /// `ingress` or `egress`.
    pub direction: &'static str,
    /// The first policy (`namespace/name`) that selects the workload for that direction.
    pub policy: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CertLabels {
    role: &'static str,
    serial: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PlaintextLabels {
    stage: PlaintextStage,
}

/// Why a captured connection was refused before any byte reached its destination; the
/// label value is the kebab-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaptureRefusal {
    /// Inbound: the port the caller dialled is not one the workload declares.
    UndeclaredPort,
    /// Outbound: something other than HTTP sent to a mesh port declared HTTP or gRPC.
    NotHttp,
    /// Outbound: a name the traffic carried (SNI, Host) is allowed, but its DNS answers
    /// give no address to connect to.
    Unresolvable,
}

impl EncodeLabelValue for CaptureRefusal {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            CaptureRefusal::UndeclaredPort => "undeclared-port",
            CaptureRefusal::NotHttp => "not-http",
            CaptureRefusal::Unresolvable => "unresolvable",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    direction: Direction,
    reason: CaptureRefusal,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DetectionLabels {
    direction: Direction,
    protocol: &'static str,
    timed_out: &'static str,
}

/// Labels of connections the proxy refused or closed on its own; `reason` is one of a fixed
/// set (`listener-limit`, `peer-limit`, `max-age`, `idle`, `peer-certificate-expired`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConnReasonLabels {
    direction: Direction,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpdateLabels {
    type_url: &'static str,
    result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~13 s, doubling.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 18,
    ))
}

/// All metrics of one proxy.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily<DirectionLabels>,
    /// Each direction's series of `latency`, resolved on its first request.
    latency_by_direction: [std::sync::OnceLock<Histogram>; 2],
    connections: Family<DirectionLabels, Counter>,
    connections_refused: Family<ConnReasonLabels, Counter>,
    connections_closed: Family<ConnReasonLabels, Counter>,
    app_refusals: Family<ReasonLabels, Counter>,
    handshake_failures: Family<DirectionLabels, Counter>,
    plaintext_refused: Family<PlaintextLabels, Counter>,
    cert_expiry: Gauge,
    cert_expiry_left: Family<CertLabels, Gauge>,
    cert_renewals: Counter,
    cert_failures: Counter,
    discovery_connected: Gauge,
    discovery_updates: Family<UpdateLabels, Counter>,
    discovery_reconnects: Counter,
    authz_denials: Family<AuthzLabels, Counter>,
    authz_audits: Family<AuthzLabels, Counter>,
    authz_dry_run: Family<DryRunLabels, Counter>,
    netpol_denials: Family<NetpolLabels, Counter>,
    captured: Family<DirectionLabels, Counter>,
    capture_refused: Family<RefusalLabels, Counter>,
    detections: Family<DetectionLabels, Counter>,
    detection_time: HistogramFamily<DirectionLabels>,
    /// The live view's decision ring and traffic counts.
    observer: crate::observe::Observer,
}

fn detection_histogram() -> Histogram {
    // 10 µs .. ~5 s, quadrupling: detection is either immediate or waits for a timeout.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00001, 4.0, 11,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("palisade_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests handled, by direction, response status and peer identity",
            requests.clone(),
        );
        let latency: HistogramFamily<DirectionLabels> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "request_duration_seconds",
            "Time from request received to response headers sent, by direction",
            latency.clone(),
        );
        let connections = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "connections",
            "Connections accepted, by direction",
            connections.clone(),
        );
        let connections_refused = Family::<ConnReasonLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept or after the handshake because a limit was reached, \
             by direction and reason (listener-limit, peer-limit)",
            connections_refused.clone(),
        );
        let connections_closed = Family::<ConnReasonLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections the proxy closed on its own, by direction and reason (max-age, idle, \
             peer-certificate-expired, network-policy)",
            connections_closed.clone(),
        );
        let app_refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "app_refusals",
            "Requests not delivered to the app because a bound was hit, by reason \
             (queue-timeout: every app connection of the port stayed busy; body-stalled: the \
             request body sent nothing for the body timeout)",
            app_refusals.clone(),
        );
        let handshake_failures = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed (bad or missing certificate, wrong identity), by direction",
            handshake_failures.clone(),
        );
        let plaintext_refused = Family::<PlaintextLabels, Counter>::default();
        registry.register(
            "inbound_plaintext_refused",
            "Plaintext callers refused at inbound because the mesh mTLS mode is STRICT (or no \
             configuration has arrived): new connections (stage=connection), and requests on \
             connections opened in PERMISSIVE mode (stage=request)",
            plaintext_refused.clone(),
        );
        let cert_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the current workload certificate expires (Unix time)",
            cert_expiry.clone(),
        );
        let cert_expiry_left = Family::<CertLabels, Gauge>::default();
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until each certificate the proxy uses expires, at the scrape: its leaf, \
             the leaf's intermediates, and the roots it trusts; by role and serial",
            cert_expiry_left.clone(),
        );
        let cert_renewals = Counter::default();
        registry.register(
            "certificate_renewals",
            "Workload certificates obtained",
            cert_renewals.clone(),
        );
        let cert_failures = Counter::default();
        registry.register(
            "certificate_failures",
            "Failed attempts to obtain a workload certificate",
            cert_failures.clone(),
        );
        let discovery_connected = Gauge::default();
        registry.register(
            "discovery_connected",
            "1 while the discovery stream to the control plane is open",
            discovery_connected.clone(),
        );
        let discovery_updates = Family::<UpdateLabels, Counter>::default();
        registry.register(
            "discovery_updates",
            "Discovery snapshots received, by type and result (ack or nack)",
            discovery_updates.clone(),
        );
        let discovery_reconnects = Counter::default();
        registry.register(
            "discovery_reconnects",
            "Times the discovery stream was lost and retried",
            discovery_reconnects.clone(),
        );
        let authz_denials = Family::<AuthzLabels, Counter>::default();
        registry.register(
            "authz_denials",
            "Requests and connections denied by authorization or the outbound policy, by \
             direction, deciding policy, source identity and destination",
            authz_denials.clone(),
        );
        let authz_audits = Family::<AuthzLabels, Counter>::default();
        registry.register(
            "authz_audits",
            "AUDIT policy matches, by direction, policy, source identity and destination",
            authz_audits.clone(),
        );
        let authz_dry_run = Family::<DryRunLabels, Counter>::default();
        registry.register(
            "authz_dry_run",
            "Decisions of workloads that dry-run policies select, as they would have been with \
             those policies enforced, by direction, would-be deciding policy and would-be \
             decision (allow or deny)",
            authz_dry_run.clone(),
        );
        let netpol_denials = Family::<NetpolLabels, Counter>::default();
        registry.register(
            "netpol_denials",
            "TCP connections refused or closed by NetworkPolicy, by direction (ingress, \
             egress) and the first policy isolating the workload for it",
            netpol_denials.clone(),
        );
        let captured = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "captured_connections",
            "Connections that reached the proxy through the capture rules (their original \
             destination was another address), by direction",
            captured.clone(),
        );
        let capture_refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "captured_refused",
            "Captured connections closed before any byte reached their destination, by \
             direction and reason (policy denials are in authz_denials)",
            capture_refused.clone(),
        );
        let detections = Family::<DetectionLabels, Counter>::default();
        registry.register(
            "protocol_detections",
            "Protocol detection outcomes on captured connections, by direction, protocol \
             (http1, http2, tls, opaque) and whether the caller sent too little in time",
            detections.clone(),
        );
        let detection_time: HistogramFamily<DirectionLabels> =
            Family::new_with_constructor(detection_histogram as fn() -> Histogram);
        registry.register(
            "protocol_detection_seconds",
            "Time spent detecting the protocol of a captured connection, by direction",
            detection_time.clone(),
        );
        Self {
            registry,
            netpol_denials,
            captured,
            capture_refused,
            detections,
            detection_time,
            observer: Default::default(),
            requests,
            latency,
            latency_by_direction: Default::default(),
            connections,
            connections_refused,
            connections_closed,
            app_refusals,
            handshake_failures,
            plaintext_refused,
            cert_expiry,
            cert_expiry_left,
            cert_renewals,
            cert_failures,
            discovery_connected,
            discovery_updates,
            discovery_reconnects,
            authz_denials,
            authz_audits,
            authz_dry_run,
        }
    }

    /// The live view's decision ring and traffic counts.
    pub fn observer(&self) -> &crate::observe::Observer {
        &self.observer
    }

    /// Records one finished request.
    pub fn request(&self, direction: Direction, status: u16, peer: &PeerLabel, seconds: f64) {
        if direction == Direction::Inbound {
            self.observer.latency(peer.as_str(), seconds);
        }
        self.requests
            .get_or_create(&RequestLabels {
                direction,
                status: StatusLabel::of(status),
                peer: peer.clone(),
            })
            .inc();
        let index = match direction {
            Direction::Inbound => 0,
            Direction::Outbound => 1,
        };
        self.latency_by_direction[index]
            .get_or_init(|| {
                self.latency
                    .get_or_create(&DirectionLabels { direction })
                    .clone()
            })
            .observe(seconds);
    }

    /// Records an accepted connection.
    pub fn connection(&self, direction: Direction) {
        self.connections
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    /// Records a connection refused because a limit was reached (`reason` is a fixed name).
    pub fn connection_refused(&self, direction: Direction, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ConnReasonLabels { direction, reason })
            .inc();
    }

    /// Records a connection the proxy closed on its own (`reason` is a fixed name).
    pub fn connection_closed(&self, direction: Direction, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ConnReasonLabels { direction, reason })
            .inc();
    }

    /// Records a request the app pool refused (`reason` is a fixed name).
    pub fn app_refusal(&self, reason: &'static str) {
        self.app_refusals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Records a failed TLS handshake.
    pub fn handshake_failure(&self, direction: Direction) {
        self.handshake_failures
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    /// Records a plaintext caller refused at inbound.
    pub fn plaintext_refused(&self, stage: PlaintextStage) {
        self.plaintext_refused
            .get_or_create(&PlaintextLabels { stage })
            .inc();
    }

    /// Records a new workload certificate.
    pub fn certificate_renewed(&self, not_after: i64) {
        self.cert_renewals.inc();
        self.cert_expiry.set(not_after);
    }

    /// Replaces the per-certificate expiry gauges: (role, serial, seconds left) each.
    pub fn certificate_expiry(&self, certs: impl Iterator<Item = (&'static str, String, i64)>) {
        self.cert_expiry_left.clear();
        for (role, serial, left) in certs {
            self.cert_expiry_left
                .get_or_create(&CertLabels { role, serial })
                .set(left);
        }
    }

    /// Records a failed certificate request.
    pub fn certificate_failure(&self) {
        self.cert_failures.inc();
    }

    /// Records the discovery stream opening or closing.
    pub fn discovery_connected(&self, connected: bool) {
        self.discovery_connected.set(i64::from(connected));
    }

    /// Records a snapshot ACK (`accepted`) or NACK.
    pub fn discovery_update(&self, type_url: &str, accepted: bool) {
        // Only the known types get a series of their own: the label is never a value the
        // other side made up.
        let short: &'static str = palisade_proto::v1::ALL_TYPE_URLS
            .iter()
            .find(|known| **known == type_url)
            .and_then(|known| known.rsplit('.').next())
            .unwrap_or("unknown");
        self.discovery_updates
            .get_or_create(&UpdateLabels {
                type_url: short,
                result: if accepted { "ack" } else { "nack" },
            })
            .inc();
    }

    /// Records a denial.
    pub fn authz_denial(&self, labels: &AuthzLabels) {
        self.authz_denials.get_or_create(labels).inc();
    }

    /// Records an AUDIT policy match.
    pub fn authz_audit(&self, labels: &AuthzLabels) {
        self.authz_audits.get_or_create(labels).inc();
    }

    /// Records the would-be decision of dry-run policies.
    pub fn authz_dry_run(&self, labels: &DryRunLabels) {
        self.authz_dry_run.get_or_create(labels).inc();
    }

    /// Records a connection NetworkPolicy refused (or closed after a change).
    pub fn netpol_denial(&self, labels: &NetpolLabels) {
        self.netpol_denials.get_or_create(labels).inc();
    }

    /// Records a connection that arrived through the capture rules.
    pub fn captured(&self, direction: Direction) {
        self.captured
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    /// Records a captured connection refused before any byte passed.
    pub fn capture_refused(&self, direction: Direction, reason: CaptureRefusal) {
        self.capture_refused
            .get_or_create(&RefusalLabels { direction, reason })
            .inc();
    }

    /// Records one protocol detection.
    pub fn detection(&self, direction: Direction, detection: &crate::detect::Detection) {
        self.detections
            .get_or_create(&DetectionLabels {
                direction,
                protocol: detection.protocol.label(),
                timed_out: if detection.timed_out { "true" } else { "false" },
            })
            .inc();
        self.detection_time
            .get_or_create(&DirectionLabels { direction })
            .observe(detection.elapsed.as_secs_f64());
    }

    /// Records a reconnect of the discovery stream.
    pub fn discovery_reconnect(&self) {
        self.discovery_reconnects.inc();
    }

    /// The registry, for further metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition (classic format) of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        palisade_proto::exposition::to_prometheus_text(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_an_app_makes_up_share_one_series() {
        let metrics = Metrics::new();
        for status in 100..1000 {
            metrics.request(Direction::Inbound, status, &PeerLabel::new("peer"), 0.0);
        }
        let text = metrics.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("palisade_proxy_requests_total{"))
            .count();
        assert!(series < 100, "{series} series");
        assert!(text.contains("status=\"other\""));
        assert!(text.contains("status=\"200\""));
    }
}
