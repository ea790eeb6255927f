//! The gRPC listener under attack (issue 11 item 8): a client without a certificate writes
//! raw HTTP/2 frames over real TLS, as an attacker would, and the server must answer with
//! GOAWAY, refused streams and closed connections instead of growing without bound.

use std::time::Duration;

use palisade_control_plane::GrpcLimits;
use palisade_control_plane::test_util::raw_h2::{
    self, CANCEL, END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM, SETTINGS_MAX_CONCURRENT_STREAMS, kind,
};
use palisade_control_plane::test_util::{TestControlPlane, TestOptions, csr_for, identity};
use palisade_proto::v1::identity_client::IdentityClient;
use palisade_proto::v1::{CertifyRequest, DiscoveryRequest};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tonic::Code;

use super::support::{ProxyStream, SERVICES, shop, subscribe, timed};

const CERTIFY: &str = "/palisade.v1.Identity/Certify";
/// Attack loops stop here whatever happens: the bound the server must beat.
const ATTACK_ROUNDS: u32 = 10_000;
/// Frames written per batch.
const BATCH: u32 = 50;

async fn start(limits: GrpcLimits) -> TestControlPlane {
    let options = TestOptions {
        limits,
        ..TestOptions::default()
    };
    timed("start", TestControlPlane::start_with(&shop(), options))
        .await
        .unwrap()
}

/// Writes `per_stream(id)` for streams 1, 3, 5, ... in batches until the server sends
/// GOAWAY or closes, or `ATTACK_ROUNDS` streams were written. Returns the GOAWAY (if
/// any), the streams written, and the RST_STREAM frames the server sent first.
async fn flood(
    cp: &TestControlPlane,
    per_stream: impl Fn(u32) -> Vec<u8>,
) -> (Option<(u32, u32)>, u32, usize) {
    let tls = cp.tls(None).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move { raw_h2::read_until_goaway(&mut rd, ack_tx).await });
    raw_h2::write_all(&mut wr, &raw_h2::preface())
        .await
        .unwrap();
    let mut written = 0;
    'attack: while written < ATTACK_ROUNDS {
        while let Ok(ack) = ack_rx.try_recv() {
            if raw_h2::write_all(&mut wr, &ack).await.is_err() {
                break 'attack;
            }
        }
        if reader.is_finished() {
            break;
        }
        let mut batch = Vec::new();
        for _ in 0..BATCH {
            batch.extend(per_stream(2 * written + 1));
            written += 1;
        }
        if raw_h2::write_all(&mut wr, &batch).await.is_err() {
            break;
        }
        // Let the server read and answer, as a real flood over a network would.
        tokio::task::yield_now().await;
    }
    let (goaway, resets) = timed("the server's answer", reader).await.unwrap();
    (goaway, written, resets)
}

#[tokio::test]
async fn rapid_reset_flood_gets_goaway() {
    let cp = start(GrpcLimits::default()).await;
    let block = raw_h2::grpc_request_block(CERTIFY, &[]);
    // CVE-2023-44487: open a stream and cancel it at once, again and again.
    let (goaway, written, _) = flood(&cp, |id| {
        let mut out = Vec::new();
        raw_h2::frame(&mut out, kind::HEADERS, END_HEADERS, id, &block);
        raw_h2::frame(&mut out, kind::RST_STREAM, 0, id, &CANCEL.to_be_bytes());
        out
    })
    .await;
    let (_, code) = goaway.unwrap_or_else(|| panic!("no GOAWAY after {written} reset streams"));
    assert_eq!(code, ENHANCE_YOUR_CALM, "after {written} reset streams");
    assert!(written < ATTACK_ROUNDS, "{written}");
    // Legitimate clients are not affected.
    cp.certify("shop", "search").await.unwrap();
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn provoked_resets_get_goaway() {
    let cp = start(GrpcLimits::default()).await;
    // CVE-2025-8671 ("MadeYouReset"): frames that are valid on their own but make the server
    // reset the stream; here a DATA frame longer than the declared content-length, which
    // h2 answers with RST_STREAM(PROTOCOL_ERROR) and keeps the connection.
    let block = raw_h2::grpc_request_block(CERTIFY, &[("content-length", "0")]);
    let (goaway, written, resets) = flood(&cp, |id| {
        let mut out = Vec::new();
        raw_h2::frame(&mut out, kind::HEADERS, END_HEADERS, id, &block);
        raw_h2::frame(&mut out, kind::DATA, END_STREAM, id, &[0, 0, 0, 0, 0]);
        out
    })
    .await;
    let (_, code) = goaway.unwrap_or_else(|| {
        panic!("no GOAWAY after {written} provoked resets ({resets} RST_STREAM seen)")
    });
    assert_eq!(code, ENHANCE_YOUR_CALM, "after {written} streams");
    let limit = GrpcLimits::default().max_local_error_resets;
    assert!(
        resets <= limit,
        "{resets} resets before GOAWAY, limit {limit}"
    );
    cp.certify("shop", "search").await.unwrap();
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_certify_is_refused_before_it_is_read() {
    let cp = start(GrpcLimits::default()).await;
    let id = identity("cluster.local", "shop", "search").unwrap();
    let (_, csr) = csr_for(&id).unwrap();
    let mut client = IdentityClient::new(cp.channel(None).await.unwrap());
    // A real CSR padded to 64 KiB: four times the limit, far under tonic's 4 MiB default.
    let padded = format!("{csr}{}", " ".repeat(64 * 1024));
    let status = timed(
        "certify",
        client.certify(CertifyRequest {
            csr_pem: padded,
            workload: "search".into(),
            namespace: "shop".into(),
            token: cp.token("shop", "search").unwrap().to_owned(),
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("the limit is: 16384 bytes"),
        "{status:?}"
    );
    drop(client);
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn streams_over_the_cap_are_refused() {
    let cp = start(GrpcLimits::default()).await;
    let max = GrpcLimits::default().max_concurrent_streams;
    let tls = cp.tls(None).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    raw_h2::write_all(&mut wr, &raw_h2::preface())
        .await
        .unwrap();
    // Streams that never send their body: each holds a Certify call open.
    let block = raw_h2::grpc_request_block(CERTIFY, &[]);
    let mut out = Vec::new();
    for i in 0..=max {
        raw_h2::frame(&mut out, kind::HEADERS, END_HEADERS, 2 * i + 1, &block);
    }
    raw_h2::write_all(&mut wr, &out).await.unwrap();
    let mut advertised = None;
    let refused = loop {
        let frame = timed("a frame", raw_h2::read_frame(&mut rd))
            .await
            .unwrap()
            .expect("the server closed the connection");
        for (k, v) in frame.settings() {
            if k == SETTINGS_MAX_CONCURRENT_STREAMS {
                advertised = Some(v);
            }
        }
        if frame.kind == kind::RST_STREAM {
            break frame;
        }
        assert_ne!(frame.kind, kind::GOAWAY, "{frame:?}");
    };
    assert_eq!(advertised, Some(max));
    // The stream past the cap is refused (REFUSED_STREAM), the others stay open.
    assert_eq!(refused.stream, 2 * max + 1, "{refused:?}");
    assert_eq!(refused.payload, 7u32.to_be_bytes(), "{refused:?}");
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn unary_calls_time_out_but_discovery_streams_live_on() {
    let cp = start(GrpcLimits {
        request_timeout: Duration::from_secs(1),
        ..GrpcLimits::default()
    })
    .await;
    let (creds, _) = cp.certify("shop", "search").await.unwrap();
    let mut discovery = palisade_proto::v1::discovery_client::DiscoveryClient::new(
        cp.channel(Some(&creds)).await.unwrap(),
    );
    let first: DiscoveryRequest = subscribe(
        palisade_proto::v1::SERVICES_TYPE_URL,
        Some(("shop", "search")),
    );
    let mut stream = ProxyStream::open(&mut discovery, first).await.unwrap();
    let _ = stream.recv().await;

    // A Certify whose body never comes is answered (ended) by the deadline.
    let tls = cp.tls(None).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let mut out = raw_h2::preface();
    let block = raw_h2::grpc_request_block(CERTIFY, &[]);
    raw_h2::frame(&mut out, kind::HEADERS, END_HEADERS, 1, &block);
    raw_h2::write_all(&mut wr, &out).await.unwrap();
    loop {
        let frame = timed("the deadline's answer", raw_h2::read_frame(&mut rd))
            .await
            .unwrap()
            .expect("the server closed the connection");
        if frame.stream == 1 && (frame.flags & END_STREAM != 0 || frame.kind == kind::RST_STREAM) {
            break;
        }
    }

    // The discovery stream opened before is past the deadline and still receives pushes.
    cp.write_file(
        "services.yml",
        &format!(
            "{SERVICES}---\napiVersion: palisade.dev/v1alpha1\nkind: Service\nmetadata: {{name: extra, namespace: shop}}\nspec:\n  selector: {{app: search}}\n  ports:\n  - {{name: http, port: 81, targetPort: 8080}}\n"
        ),
    )
    .unwrap();
    cp.control_plane.reload().unwrap();
    let pushed = stream.recv().await;
    assert_eq!(pushed.type_url, palisade_proto::v1::SERVICES_TYPE_URL);
    drop(stream);
    drop(discovery);
    cp.stop().await.unwrap();
}

/// Retries `attempt` until it succeeds: a closed connection gives its slot back a moment
/// after the client sees it closed. Bounded in count.
async fn eventually<T, E: std::fmt::Debug, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let mut last = None;
    for _ in 0..100 {
        match attempt().await {
            Ok(v) => return v,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: still failing: {last:?}");
}

/// Whether the server closes `tls` without sending anything.
async fn closed_at_once<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        timed("the connection's end", s.read(&mut buf)).await,
        Ok(0) | Err(_)
    )
}

#[tokio::test]
async fn connections_without_a_certificate_have_their_own_cap() {
    let cp = start(GrpcLimits {
        max_anonymous_connections: 2,
        ..GrpcLimits::default()
    })
    .await;
    let (creds, _) = cp.certify("shop", "search").await.unwrap();
    // Two connections without a certificate fill their share (once the bootstrap's own
    // connection has given its place back).
    let mut held = vec![eventually("first anonymous", || cp.tls(None)).await];
    held.push(
        eventually("second anonymous", || async {
            let mut s = cp.tls(None).await.map_err(|e| e.to_string())?;
            // A refused one is closed at once; an accepted one sends its SETTINGS.
            if closed_at_once(&mut s).await {
                Err("closed".to_owned())
            } else {
                Ok(s)
            }
        })
        .await,
    );
    // The third completes TLS, then is closed before any HTTP/2.
    let mut third = cp.tls(None).await.unwrap();
    assert!(
        closed_at_once(&mut third).await,
        "a third anonymous connection was served"
    );
    // A proxy with a mesh certificate still gets in and renews.
    let mut client = IdentityClient::new(cp.channel(Some(&creds)).await.unwrap());
    let (_, csr) = csr_for(&identity("cluster.local", "shop", "search").unwrap()).unwrap();
    timed(
        "renewal",
        client.certify(CertifyRequest {
            csr_pem: csr,
            workload: "search".into(),
            namespace: "shop".into(),
            token: String::new(),
        }),
    )
    .await
    .unwrap();
    assert!(
        cp.control_plane
            .metrics_text()
            .contains("palisade_grpc_connections_refused_total{reason=\"anonymous_limit\"}")
    );
    drop((held, client));
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn connections_over_the_total_cap_are_closed() {
    let cp = start(GrpcLimits {
        max_connections: 2,
        ..GrpcLimits::default()
    })
    .await;
    // Two clients that connect and never start TLS hold both places.
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(
            timed("connect", tokio::net::TcpStream::connect(cp.addr()))
                .await
                .unwrap(),
        );
    }
    // The next one is closed before its handshake completes.
    let mut third = timed("connect", tokio::net::TcpStream::connect(cp.addr()))
        .await
        .unwrap();
    assert!(closed_at_once(&mut third).await);
    assert!(
        cp.tls(None).await.is_err(),
        "a connection past the cap was served"
    );
    // Once one leaves, a client gets in again.
    drop(idle.pop());
    let _ok = eventually("a connection after one left", || cp.tls(None)).await;
    assert!(
        cp.control_plane
            .metrics_text()
            .contains("palisade_grpc_connections_refused_total{reason=\"connection_limit\"}")
    );
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn clients_that_never_finish_the_handshake_are_dropped() {
    let cp = start(GrpcLimits {
        handshake_timeout: Duration::from_secs(1),
        ..GrpcLimits::default()
    })
    .await;
    let mut tcp = timed("connect", tokio::net::TcpStream::connect(cp.addr()))
        .await
        .unwrap();
    assert!(closed_at_once(&mut tcp).await);
    assert!(
        cp.control_plane
            .metrics_text()
            .contains("palisade_grpc_connections_refused_total{reason=\"handshake_timeout\"} 1")
    );
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn connections_get_goaway_at_their_maximum_age() {
    let cp = start(GrpcLimits {
        max_connection_age: Duration::from_secs(1),
        ..GrpcLimits::default()
    })
    .await;
    // A client that connects and then just stays.
    let tls = cp.tls(None).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    raw_h2::write_all(&mut wr, &raw_h2::preface())
        .await
        .unwrap();
    let reader = tokio::spawn(async move { raw_h2::read_until_goaway(&mut rd, ack_tx).await });
    let writer = tokio::spawn(async move {
        while let Some(ack) = ack_rx.recv().await {
            if raw_h2::write_all(&mut wr, &ack).await.is_err() {
                return;
            }
        }
    });
    let (goaway, _) = timed("GOAWAY at the connection's maximum age", reader)
        .await
        .unwrap();
    assert!(goaway.is_some(), "the connection ended without GOAWAY");
    writer.abort();

    // A discovery stream, which never ends by itself, is ended at that age too.
    let (creds, _) = cp.certify("shop", "search").await.unwrap();
    let mut client = palisade_proto::v1::discovery_client::DiscoveryClient::new(
        cp.channel(Some(&creds)).await.unwrap(),
    );
    let first = subscribe(
        palisade_proto::v1::SERVICES_TYPE_URL,
        Some(("shop", "search")),
    );
    let mut stream = ProxyStream::open(&mut client, first).await.unwrap();
    let status = stream.end().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("maximum age"), "{status:?}");
    drop((stream, client));
    cp.stop().await.unwrap();
}

#[tokio::test]
async fn handshakes_over_the_cap_wait_for_a_free_place() {
    let cp = start(GrpcLimits {
        max_handshakes: 1,
        ..GrpcLimits::default()
    })
    .await;
    // A client that connects and never starts TLS takes the only handshake place...
    let idle = timed("connect", tokio::net::TcpStream::connect(cp.addr()))
        .await
        .unwrap();
    // ...so the next handshake is not served meanwhile (it waits in the listen backlog, the
    // server holds nothing for it)...
    let waiting = tokio::spawn({
        let addr = cp.addr();
        let bundle = cp.bundle();
        let id = palisade_control_plane::control_plane_identity(cp.ca.trust_domain());
        async move { palisade_control_plane::test_util::tls_connect(addr, &bundle, id, None).await }
    });
    for _ in 0..20 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(25)).await;
        assert!(
            !waiting.is_finished(),
            "a handshake past the cap was served"
        );
    }
    // ...and is served once the place is free.
    drop(idle);
    timed("the waiting handshake", waiting)
        .await
        .unwrap()
        .unwrap();
    cp.stop().await.unwrap();
}

/// One workload certificate opening telemetry report streams over and over: past
/// `MAX_STREAMS_PER_IDENTITY` each new one is refused (RESOURCE_EXHAUSTED, naming the
/// identity), while another workload still reports; a closed stream frees its place.
#[tokio::test]
async fn telemetry_streams_per_identity_are_capped() {
    use palisade_control_plane::telemetry::MAX_STREAMS_PER_IDENTITY;
    use palisade_proto::v1::TelemetryReport;
    use palisade_proto::v1::telemetry_client::TelemetryClient;

    let cp = start(GrpcLimits::default()).await;
    let open = |workload: &'static str| {
        let cp = &cp;
        async move {
            let token = cp.token("shop", workload).unwrap().to_owned();
            let (creds, _) = cp
                .certify_with_token("shop", workload, &token)
                .await
                .unwrap();
            TelemetryClient::new(cp.channel(Some(&creds)).await.unwrap())
        }
    };
    // Each stream keeps its sender: the stream stays open while it lives.
    let report = |client: &mut TelemetryClient<tonic::transport::Channel>| {
        let mut client = client.clone();
        async move {
            let (tx, rx) = mpsc::channel::<TelemetryReport>(1);
            let result = client
                .report(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            (tx, result)
        }
    };
    let mut client = open("frontend").await;
    let mut held = Vec::new();
    for i in 0..MAX_STREAMS_PER_IDENTITY {
        let (tx, result) = timed("a report stream", report(&mut client)).await;
        let mut stream = result
            .unwrap_or_else(|e| panic!("stream {i}: {e}"))
            .into_inner();
        // The first control message says whether anyone watches.
        timed("the first control message", stream.message())
            .await
            .unwrap()
            .unwrap();
        held.push((tx, stream));
    }
    let (_tx, refused) = timed("one stream too many", report(&mut client)).await;
    let status = refused.expect_err("a stream past the cap is refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("ns/shop/sa/frontend")
            && status.message().contains("telemetry streams open"),
        "{status:?}"
    );
    // Another identity is not affected.
    let mut search = open("search").await;
    let (_search_tx, other) = timed("another workload's stream", report(&mut search)).await;
    other.expect("another identity still reports");
    // Closing one stream frees one place.
    drop(held.pop());
    eventually("a freed place", || {
        let mut client = client.clone();
        async move {
            let (tx, result) = report(&mut client).await;
            result.map(|r| (tx, r))
        }
    })
    .await;
    cp.stop().await.unwrap();
}
