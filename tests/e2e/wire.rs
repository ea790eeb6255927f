//! What crosses the wire between two sidecars is TLS, never the app's plaintext.
//!
//! Topology: the `search` Workload's address (`.2`) is a recording TCP relay, which forwards
//! to the real `search` sidecar on `.12`; so every byte the client sidecar sends to the
//! server sidecar passes through the relay (and, for the capture test, over `lo`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::support::clients::H1Client;
use crate::support::mesh::{self, TestMesh};
use crate::support::net::{Tap, contains, tls_records};
use crate::support::procs::ChildGuard;
use crate::support::tools::{self, output_text};
use crate::support::{skip, within};

/// Host octet the search sidecar and app really run on.
const REAL_SEARCH: u8 = 12;

/// The shop with a relay in front of the search sidecar.
async fn tapped_shop(test: &'static str) -> (TestMesh, Tap, DropGuard) {
    let builder = mesh::shop(test).sidecar_on("search", REAL_SEARCH);
    let block = builder.block();
    let stop = CancellationToken::new();
    let tap = Tap::start(
        block.addr(2, 15006),
        block.addr(REAL_SEARCH, 15006),
        stop.clone(),
    )
    .await;
    let mesh = builder.start().await;
    assert_eq!(
        mesh.sidecar("search").inbound(),
        block.addr(REAL_SEARCH, 15006)
    );
    (mesh, tap, stop.drop_guard())
}

/// Plaintext that must never appear between the sidecars: a path and a header value unique
/// to this run, and bodies the app answered with.
struct Markers {
    path: String,
    header: String,
    response: Vec<String>,
}

/// Sends a few requests from the client app through its sidecar and checks the plaintext
/// answers carry the markers (so their absence on the wire means something).
async fn send_marked_traffic(outbound: SocketAddr, tag: &str) -> Markers {
    let nonce = format!("{}-{}", std::process::id(), tag);
    let path_marker = format!("path-marker-{nonce}");
    let header_marker = format!("header-marker-{nonce}");
    let mut client = H1Client::new(outbound);
    let reply = client
        .get(
            &format!("http://search.shop:8080/echo?{path_marker}=1"),
            &[("x-e2e-secret", &header_marker)],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let text = reply.text();
    assert!(
        text.contains(&path_marker) && text.contains(&header_marker),
        "{text}"
    );
    let reply = client
        .get("http://search.shop:8080/search?q=lamp", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("Clip-on reading lamp"));
    Markers {
        path: path_marker,
        header: header_marker,
        response: vec![
            "Clip-on reading lamp".into(),
            "x-forwarded-client-cert".into(),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_between_sidecars_are_tls_records() {
    const TEST: &str = "bytes_between_sidecars_are_tls_records";
    let (mesh, tap, _stop_tap) = tapped_shop(TEST).await;
    let markers = send_marked_traffic(mesh.sidecar("client").outbound(), "tap").await;

    let conns = tap.conns();
    assert!(!conns.is_empty(), "no connection went through the relay");
    let mut app_data = 0;
    for (i, conn) in conns.iter().enumerate() {
        for (side, bytes, hello) in [
            ("client->server", &conn.to_server, 0x01u8),
            ("server->client", &conn.to_client, 0x02u8),
        ] {
            assert!(!bytes.is_empty(), "conn {i} {side}: nothing recorded");
            let records =
                tls_records(bytes).unwrap_or_else(|e| panic!("conn {i} {side}: not TLS: {e}"));
            // The first record is the handshake opening: ClientHello one way, ServerHello back.
            assert_eq!(
                records[0].content_type, 0x16,
                "conn {i} {side}: {records:?}"
            );
            assert_eq!(
                records[0].first,
                Some(hello),
                "conn {i} {side}: {records:?}"
            );
            // After the hellos TLS 1.3 uses 0x0303 and application_data records only.
            assert!(
                records[1..].iter().all(|r| r.version == 0x0303),
                "conn {i} {side}: {records:?}"
            );
            app_data += records.iter().filter(|r| r.content_type == 0x17).count();
            for needle in [&markers.path, &markers.header]
                .into_iter()
                .chain(markers.response.iter())
                .map(String::as_str)
                .chain([
                    "/echo",
                    "/search",
                    "search.shop",
                    "HTTP/1.1",
                    "PRI * HTTP/2.0",
                ])
            {
                assert!(
                    !contains(bytes, needle.as_bytes()),
                    "conn {i} {side}: plaintext {needle:?} on the wire"
                );
            }
        }
    }
    assert!(app_data >= 4, "only {app_data} application_data records");
    mesh.stop().await;
}

/// tcpdump on `lo` with `filter`, writing `file`; returns once it is capturing.
async fn start_capture(file: &Path, filter: &str, tcpdump: &Path) -> ChildGuard {
    let mut child = Command::new(tcpdump)
        // Immediate mode: packets reach tcpdump as they arrive (not in ring-buffer blocks),
        // and -U writes each one out at once, so the file can be watched while it grows.
        .args(["-i", "lo", "-n", "--immediate-mode", "-U", "-w"])
        .arg(file)
        .arg(filter)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tcpdump");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    // "listening on lo, link-type EN10MB ..." is printed once the capture is live.
    within(Duration::from_secs(20), "tcpdump starts capturing", async {
        while let Some(line) = lines.next_line().await.expect("tcpdump stderr") {
            if line.contains("listening on") {
                return;
            }
        }
        panic!("tcpdump exited before capturing");
    })
    .await;
    // Keep draining stderr so tcpdump never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    ChildGuard::from_child("tcpdump", child, file.with_extension("log"))
}

async fn stop_capture(mut capture: ChildGuard) {
    capture.interrupt().await;
    assert!(
        capture.wait_exit(Duration::from_secs(10)).await.is_some(),
        "tcpdump did not stop"
    );
}

/// Arguments of `tshark -r file -Y filter extra...`. Port 15006 is not a well-known port:
/// it is decoded as TLS unless `extra` says otherwise with its own `-d`.
fn tshark_args(file: &Path, filter: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["-r".to_owned(), file.display().to_string()];
    if !extra.contains(&"-d") {
        args.extend(["-d".to_owned(), "tcp.port==15006,tls".to_owned()]);
    }
    args.extend(["-Y".to_owned(), filter.to_owned()]);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

fn lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Matching packets of a capture that may still be written (tshark may then complain
/// about a packet cut short): whatever it printed.
async fn try_tshark(tshark: &Path, file: &Path, filter: &str) -> Vec<String> {
    tools::run(
        tshark,
        tshark_args(file, filter, &[]),
        Duration::from_secs(60),
    )
    .await
    .map(|out| lines(&out))
    .unwrap_or_default()
}

/// Matching packets of a finished capture, one line each.
async fn tshark(tshark: &Path, file: &Path, filter: &str, extra: &[&str]) -> Vec<String> {
    let args = tshark_args(file, filter, extra);
    let out = tools::run_ok(tshark, &args, Duration::from_secs(60)).await;
    assert!(
        out.status.success(),
        "tshark {args:?}: {}",
        output_text(&out)
    );
    lines(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_capture_shows_tls_between_sidecars_and_http_only_to_the_app() {
    const TEST: &str = "packet_capture_shows_tls_between_sidecars_and_http_only_to_the_app";
    if !tools::is_root() {
        skip(TEST, "packet capture on lo needs root");
        return;
    }
    let (Some(tcpdump), Some(tshark_bin)) = (
        tools::require(TEST, "tcpdump"),
        tools::require(TEST, "tshark"),
    ) else {
        return;
    };
    let (mesh, _tap, _stop_tap) = tapped_shop(TEST).await;
    let block = mesh.block;
    let dir = mesh.dir.path().to_owned();
    let between = dir.join("between-sidecars.pcap");
    let to_app = dir.join("sidecar-to-app.pcap");
    // The sidecar-to-sidecar hops (client -> relay -> search sidecar), all on port 15006.
    let mesh_filter = format!(
        "tcp port 15006 and (host {} or host {})",
        block.ip(2),
        block.ip(REAL_SEARCH)
    );
    // The control: the search sidecar's plaintext hop to its app.
    let app_filter = format!("tcp port 8080 and host {}", block.ip(REAL_SEARCH));
    let mesh_capture = start_capture(&between, &mesh_filter, &tcpdump).await;
    let app_capture = start_capture(&to_app, &app_filter, &tcpdump).await;

    let markers = send_marked_traffic(mesh.sidecar("client").outbound(), "pcap").await;
    // The last packets may still be on their way to tcpdump: stop once both captures hold
    // what the traffic must have produced (bounded; a missing packet fails below).
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let hello = try_tshark(&tshark_bin, &between, "tls.handshake.type==1").await;
            let request = try_tshark(&tshark_bin, &to_app, "http.response").await;
            if !hello.is_empty() && request.len() >= 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    stop_capture(mesh_capture).await;
    stop_capture(app_capture).await;

    let hellos = tshark(
        &tshark_bin,
        &between,
        "tls.handshake.type==1",
        &["-T", "fields", "-e", "ip.src", "-e", "ip.dst"],
    )
    .await;
    if hellos.is_empty() {
        let all = tshark(&tshark_bin, &between, "frame", &[]).await;
        panic!("no ClientHello captured between the sidecars; the capture:\n{all:#?}");
    }
    // One to the search Workload's address (the relay) and the relayed one to its sidecar.
    for ip in [block.ip(2), block.ip(REAL_SEARCH)] {
        assert!(
            hellos.iter().any(|l| l.ends_with(&format!("\t{ip}"))),
            "no ClientHello to {ip}: {hellos:?}"
        );
    }
    // The client sidecar dials from its workload's address, as from a pod IP.
    let from_client = format!("{}\t{}", block.ip(1), block.ip(2));
    assert!(
        hellos.contains(&from_client),
        "no ClientHello from the client workload's address: {hellos:?}"
    );
    let http = tshark(&tshark_bin, &between, "http || http2", &[]).await;
    assert!(
        http.is_empty(),
        "HTTP visible between the sidecars: {http:?}"
    );
    // Even told to read port 15006 as HTTP, tshark finds no request in it.
    let forced = tshark(
        &tshark_bin,
        &between,
        "http.request || http.response",
        &["-d", "tcp.port==15006,http"],
    )
    .await;
    assert!(forced.is_empty(), "HTTP between the sidecars: {forced:?}");
    let appdata = tshark(&tshark_bin, &between, "tls.app_data", &[]).await;
    assert!(!appdata.is_empty(), "no TLS application data captured");

    // Control: the same tools do see plaintext where there is plaintext.
    let requests = tshark(
        &tshark_bin,
        &to_app,
        "http.request",
        &[
            "-T",
            "fields",
            "-e",
            "http.request.method",
            "-e",
            "http.request.uri",
        ],
    )
    .await;
    assert!(
        requests
            .iter()
            .any(|l| l.starts_with("GET") && l.contains(&markers.path)),
        "the app-side capture should show the plaintext request: {requests:?}"
    );
    mesh.stop().await;
}
