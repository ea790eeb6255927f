//! Transparent capture in the pod test bed (`support::bed`): unmodified apps (curl,
//! grpcurl, plain sockets) in pod namespaces reach each other only through their sidecars,
//! callers that skip the mesh are refused, egress is matched by SNI, Host or address, and
//! non-TCP traffic is dropped and counted. Root only; everything runs inside namespaces the
//! tests create and remove.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::bed::{Bed, PodSpec, connect_in, udp_in};
use crate::support::netns::{Netns, output_within};
use crate::support::procs::{ChildGuard, workspace_root};
use crate::support::tools::{self, output_text};
use crate::support::{metric, poll, within};

/// Bound on one tool run inside a pod.
const TOOL_LIMIT: Duration = Duration::from_secs(30);
/// How long a configuration push may take to reach the sidecars.
const PUSH_LIMIT: Duration = Duration::from_secs(20);

/// The bed's mesh: `client` may call everything of `server`; `server` has HTTP, gRPC, an
/// echo and a banner (server-speaks-first) port, and its Service a cluster IP.
const MESH: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec:
  mtls: {mode: MODE}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  serviceAccount: client
  address: {pod:client}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: server, namespace: shop, labels: {app: server}}
spec:
  serviceAccount: server
  address: {pod:server}
  ports:
  - {name: http, port: 8080, appProtocol: http}
  - {name: grpc, port: 9090, appProtocol: grpc}
  - {name: echo, port: 7000, appProtocol: tcp}
  - {name: banner, port: 7001, appProtocol: tcp}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: server, namespace: shop}
spec:
  selector: {app: server}
  clusterIP: 10.96.0.20
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
  - {name: grpc, port: 9090, appProtocol: grpc}
  - {name: echo, port: 7000, appProtocol: tcp}
  - {name: banner, port: 7001, appProtocol: tcp}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server-from-client, namespace: shop}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server-from-outsider-address, namespace: shop}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from: [{source: {ipBlocks: [10.77.1.9]}}]
    to: [{operation: {methods: [GET]}}]
";

/// What the client may reach outside the mesh: the partner's API by name (TLS), and one
/// address block on one port for plain TCP.
const EGRESS: &str = "\
---
apiVersion: palisade.dev/v1alpha1
kind: EgressPolicy
metadata: {name: partner-api, namespace: shop}
spec:
  selector: {matchLabels: {app: client}}
  hosts: [api.partner.test]
  ports: [443]
---
apiVersion: palisade.dev/v1alpha1
kind: EgressPolicy
metadata: {name: partner-ledger, namespace: shop}
spec:
  selector: {matchLabels: {app: client}}
  ipBlocks: [10.77.1.50/32]
  ports: [6000]
---
apiVersion: palisade.dev/v1alpha1
kind: EgressPolicy
metadata: {name: partner-http, namespace: shop}
spec:
  selector: {matchLabels: {app: client}}
  hosts: [api.partner.test]
  ports: [8081]
";

const CLIENT: PodSpec = PodSpec::meshed("client", 2);
const SERVER: PodSpec = PodSpec::meshed("server", 3);
/// A namespace on the bridge with neither sidecar nor capture rules.
const OUTSIDER: PodSpec = PodSpec::plain("outsider", 9);
/// Outside the mesh: stands in for an external partner.
const PARTNER: PodSpec = PodSpec::plain("partner", 50);

fn mesh(mode: &str) -> String {
    MESH.replace("MODE", mode)
}

/// The server pod's apps: shop search (HTTP) and payments (gRPC), an echo, a banner, and a
/// listener on a port the workload does not declare.
fn start_server_apps(bed: &Bed, stop: &CancellationToken) {
    let server = bed.pod("server");
    for (app, port) in [("search", 8080), ("payments", 9090)] {
        let listener = server.listen(port);
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = palisade_example_shop::serve_app(app, listener, Default::default(), stop).await;
        });
    }
    tokio::spawn(echo(server.listen(7000), None, stop.clone()));
    tokio::spawn(echo(
        server.listen(7001),
        Some(b"220 banner ready\r\n"),
        stop.clone(),
    ));
    tokio::spawn(echo(server.listen(7999), None, stop.clone()));
}

/// Echoes every connection, after sending `banner` first if given (server speaks first).
async fn echo(listener: TcpListener, banner: Option<&'static [u8]>, stop: CancellationToken) {
    loop {
        let (mut stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => return },
        };
        tokio::spawn(async move {
            if let Some(banner) = banner
                && stream.write_all(banner).await.is_err()
            {
                return;
            }
            let (mut r, mut w) = stream.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// Runs `program args...` inside the pod (as root: an ordinary app, captured).
async fn run_in(ns: &Netns, program: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = ns.command(program);
    cmd.args(args).current_dir(workspace_root());
    output_within(cmd, TOOL_LIMIT).await
}

async fn curl(ns: &Netns, args: &[&str]) -> std::process::Output {
    let curl = tools::find("curl").expect("curl");
    let mut all = vec!["-sS", "--max-time", "10"];
    all.extend_from_slice(args);
    run_in(ns, &curl, &all).await
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends `line` on a connection made inside `ns` and reads until `want` arrives (bounded);
/// `Err` with what arrived if the connection fails or closes first.
async fn exchange(ns: &str, addr: SocketAddr, line: &[u8], want: &[u8]) -> Result<(), String> {
    let mut stream = connect_in(ns, addr).await.map_err(|e| e.to_string())?;
    stream.write_all(line).await.map_err(|e| e.to_string())?;
    read_until(&mut stream, want).await
}

async fn read_until(stream: &mut tokio::net::TcpStream, want: &[u8]) -> Result<(), String> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 512];
        loop {
            if got.windows(want.len()).any(|w| w == want) {
                return Ok(());
            }
            match stream.read(&mut buf).await {
                Ok(0) => return Err("closed".to_owned()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()))
        .map_err(|e| format!("{e} after {:?}", String::from_utf8_lossy(&got)))
}

/// tcpdump on the node's bridge into `file`; returns once it is capturing.
async fn capture_bridge(node: &Netns, file: &Path) -> ChildGuard {
    let tcpdump = tools::find("tcpdump").expect("tcpdump");
    let mut cmd = node.command(tcpdump);
    cmd.args(["-i", "pal-br0", "-n", "--immediate-mode", "-U", "-w"])
        .arg(file)
        .arg("tcp")
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn tcpdump");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    within(Duration::from_secs(20), "tcpdump starts capturing", async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("listening on") {
                return;
            }
        }
        panic!("tcpdump exited before capturing");
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    ChildGuard::from_child("tcpdump", child, file.with_extension("log"))
}

async fn tshark_fields(file: &Path, filter: &str, fields: &[&str]) -> Vec<String> {
    let tshark = tools::find("tshark").expect("tshark");
    let mut args = vec![
        "-r".to_owned(),
        file.display().to_string(),
        "-d".to_owned(),
        "tcp.port==15006,tls".to_owned(),
        "-Y".to_owned(),
        filter.to_owned(),
    ];
    if !fields.is_empty() {
        args.extend(["-T".to_owned(), "fields".to_owned()]);
        for f in fields {
            args.extend(["-e".to_owned(), (*f).to_owned()]);
        }
    }
    let out = tools::run_ok(&tshark, &args, Duration::from_secs(60)).await;
    assert!(
        out.status.success(),
        "tshark {args:?}: {}",
        output_text(&out)
    );
    stdout(&out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

// === 1. unmodified apps, both sidecars, TLS on the wire ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmodified_apps_reach_each_other_through_both_sidecars_and_only_tls_crosses() {
    const TEST: &str =
        "unmodified_apps_reach_each_other_through_both_sidecars_and_only_tls_crosses";
    if !Bed::can_run(TEST)
        || ["curl", "tcpdump", "tshark", "grpcurl"]
            .iter()
            .any(|t| tools::require(TEST, t).is_none())
    {
        return;
    }
    let bed = Bed::start(TEST, &mesh("STRICT"), &[CLIENT, SERVER]).await;
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    start_server_apps(&bed, &stop);
    let client = bed.pod("client");
    let server = bed.pod("server");
    let pcap = bed.dir.path().join("bridge.pcap");
    let mut tcpdump = capture_bridge(bed.node.netns(), &pcap).await;

    // HTTP/1.1 to the pod address, and to the Service's cluster IP (port 80 → 8080).
    for url in [
        format!("http://{}/search?q=lamp", server.addr(8080)),
        "http://10.96.0.20/search?q=lamp".to_owned(),
    ] {
        let out = curl(&client.pod, &["-i", &url]).await;
        let text = stdout(&out);
        assert!(
            text.starts_with("HTTP/1.1 200") && text.contains("reading lamp"),
            "GET {url}: {}\n{}",
            output_text(&out),
            bed.logs()
        );
    }
    // HTTP/2 with prior knowledge, and its own answer is HTTP/2.
    let url = format!("http://{}/search?q=lamp", server.addr(8080));
    let out = curl(&client.pod, &["-i", "--http2-prior-knowledge", &url]).await;
    assert!(
        stdout(&out).starts_with("HTTP/2 200"),
        "h2c: {}\n{}",
        output_text(&out),
        bed.logs()
    );
    // gRPC with a third-party client.
    let grpcurl = tools::find("grpcurl").expect("grpcurl");
    let target = server.addr(9090).to_string();
    let out = run_in(
        &client.pod,
        &grpcurl,
        &[
            "-plaintext",
            "-import-path",
            "examples/shop/proto",
            "-proto",
            "payments.proto",
            "-d",
            r#"{"order_id":"o-1","cents":5}"#,
            &target,
            "payments.Payments/Charge",
        ],
    )
    .await;
    assert!(
        out.status.success() && stdout(&out).contains("charged o-1"),
        "grpcurl: {}\n{}",
        output_text(&out),
        bed.logs()
    );

    // Both sidecars handled it: captured at the client, mTLS-verified at the server.
    let client_metrics = client.metrics().await;
    assert!(
        metric(
            &client_metrics,
            "palisade_proxy_captured_connections_total",
            &["direction=\"outbound\""]
        ) >= 4.0,
        "{client_metrics}"
    );
    let server_metrics = server.metrics().await;
    assert!(
        metric(
            &server_metrics,
            "palisade_proxy_requests_total",
            &[
                "direction=\"inbound\"",
                "peer=\"spiffe://cluster.local/ns/shop/sa/client\""
            ]
        ) >= 4.0,
        "{server_metrics}"
    );
    // The proxy's own connections (control plane, peers) left through the UID exemption,
    // never captured again (they would loop back into 15001 and hang).
    let status = client.init_status().await;
    let uid_line = status
        .lines()
        .find(|l| l.contains("--uid-owner 1337"))
        .unwrap_or_else(|| panic!("no uid rule in\n{status}"));
    let uid_packets: u64 = uid_line
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {uid_line:?}"));
    assert!(uid_packets > 0, "{status}");

    tcpdump.interrupt().await;
    assert!(tcpdump.wait_exit(Duration::from_secs(10)).await.is_some());
    let hellos = tshark_fields(
        &pcap,
        "tls.handshake.type==1",
        &["ip.src", "ip.dst", "tcp.dstport"],
    )
    .await;
    let wanted = format!("{}\t{}\t15006", client.ip(), server.ip());
    assert!(
        hellos.contains(&wanted),
        "no ClientHello {wanted}: {hellos:?}"
    );
    // Between the pods, nothing but TLS: no HTTP either way, and no connection to an app port.
    let http = tshark_fields(&pcap, "http || http2", &[]).await;
    assert!(http.is_empty(), "plaintext HTTP on the bridge: {http:?}");
    let to_apps = tshark_fields(
        &pcap,
        "tcp.dstport != 15006 && tcp.dstport != 15012 && tcp.flags.syn==1 && tcp.flags.ack==0",
        &["ip.src", "ip.dst", "tcp.dstport"],
    )
    .await;
    assert!(
        to_apps.is_empty(),
        "connections that skipped the sidecars: {to_apps:?}"
    );
    let app_data = tshark_fields(&pcap, "tls.app_data && ip.dst == 10.77.1.3", &[]).await;
    assert!(!app_data.is_empty(), "no TLS application data captured");
}

// === 2. callers that skip the mesh ===

/// What a caller without a sidecar gets from `server`'s app port: the HTTP status, or
/// `None` when the connection is refused or closed without an answer.
async fn outsider_get(bed: &Bed, port: u16) -> Option<u16> {
    let out = curl(
        &bed.pod("outsider").pod,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{}/search?q=lamp", bed.pod("server").addr(port)),
        ],
    )
    .await;
    let code: u16 = stdout(&out).trim().parse().unwrap_or(0);
    (out.status.success() && code != 0).then_some(code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_sidecar_are_refused_in_strict_and_served_in_permissive() {
    const TEST: &str = "callers_without_a_sidecar_are_refused_in_strict_and_served_in_permissive";
    if !Bed::can_run(TEST) || tools::require(TEST, "curl").is_none() {
        return;
    }
    let bed = Bed::start(TEST, &mesh("STRICT"), &[CLIENT, SERVER, OUTSIDER]).await;
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    start_server_apps(&bed, &stop);
    let server = bed.pod("server");
    let outsider = bed.pod("outsider");

    // STRICT: the app's own port, the sidecar's inbound port in plaintext, and a port the
    // workload does not declare (an app listens there all the same): nothing answers.
    assert_eq!(outsider_get(&bed, 8080).await, None, "{}", bed.logs());
    assert_eq!(outsider_get(&bed, 15006).await, None);
    assert_eq!(outsider_get(&bed, 7999).await, None);
    let refused = |m: &str, stage: &str| {
        metric(
            m,
            "palisade_proxy_inbound_plaintext_refused_total",
            &[&format!("stage=\"{stage}\"")],
        )
    };
    let m = server.metrics().await;
    assert!(refused(&m, "connection") >= 2.0, "{m}");
    assert!(
        metric(
            &m,
            "palisade_proxy_captured_refused_total",
            &["reason=\"undeclared-port\""]
        ) >= 1.0,
        "{m}"
    );
    // A raw TCP caller gets no byte from the echo port either.
    assert!(
        exchange(outsider.ns(), server.addr(7000), b"hi\n", b"hi\n")
            .await
            .is_err()
    );
    // A meshed caller cannot reach the undeclared port: it is no mesh destination, and the
    // outbound policy (REGISTRY_ONLY) refuses it at the caller's own sidecar.
    let client = bed.pod("client");
    assert!(
        exchange(client.ns(), server.addr(7999), b"hi\n", b"hi\n")
            .await
            .is_err()
    );
    let m = client.metrics().await;
    assert!(
        metric(
            &m,
            "palisade_proxy_authz_denials_total",
            &[
                "policy=\"outbound-registry-only\"",
                "destination=\"external\""
            ]
        ) >= 1.0,
        "{m}"
    );

    // PERMISSIVE: the outsider's GET is served (the policy allows its address), without an
    // identity; anything but GET is still denied, and the undeclared port stays closed.
    bed.write_config(&mesh("PERMISSIVE"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = curl(
        &outsider.pod,
        &["-i", &format!("http://{}/search?q=lamp", server.addr(8080))],
    )
    .await;
    eprintln!("DEBUG {}\n{}", output_text(&out), bed.logs());
    poll(
        PUSH_LIMIT,
        Duration::from_millis(200),
        "PERMISSIVE reaches the server's sidecar",
        || async { (outsider_get(&bed, 8080).await == Some(200)).then_some(()) },
    )
    .await;
    let out = curl(
        &outsider.pod,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            &format!("http://{}/search", server.addr(8080)),
        ],
    )
    .await;
    assert_eq!(stdout(&out).trim(), "403", "{}", output_text(&out));
    assert_eq!(outsider_get(&bed, 7999).await, None);
    // Opaque TCP from a plaintext caller is authorized at connection level: no identity
    // and no policy for it (the address rule allows GET only), so it is closed.
    assert!(
        exchange(outsider.ns(), server.addr(7000), b"hi\n", b"hi\n")
            .await
            .is_err()
    );
}

// === 3. opaque TCP ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_and_server_first_protocols_cross_the_mesh() {
    const TEST: &str = "opaque_tcp_and_server_first_protocols_cross_the_mesh";
    if !Bed::can_run(TEST) {
        return;
    }
    let bed = Bed::start(TEST, &mesh("STRICT"), &[CLIENT, SERVER]).await;
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    start_server_apps(&bed, &stop);
    let client = bed.pod("client");
    let server = bed.pod("server");
    for addr in [server.addr(7000), "10.96.0.20:7000".parse().unwrap()] {
        exchange(
            client.ns(),
            addr,
            b"ping through the mesh\n",
            b"ping through the mesh\n",
        )
        .await
        .unwrap_or_else(|e| panic!("echo via {addr}: {e}\n{}", bed.logs()));
    }
    // Server speaks first: the banner arrives though the client sends nothing (a port
    // declared `tcp` is never held for detection), then the stream echoes.
    for addr in [server.addr(7001), "10.96.0.20:7001".parse().unwrap()] {
        let mut stream = connect_in(client.ns(), addr).await.unwrap();
        read_until(&mut stream, b"220 banner ready\r\n")
            .await
            .unwrap_or_else(|e| panic!("banner via {addr}: {e}\n{}", bed.logs()));
        stream.write_all(b"QUIT\r\n").await.unwrap();
        read_until(&mut stream, b"QUIT\r\n").await.unwrap();
    }
    // Both crossed as mTLS streams authorized at connection level by the server's sidecar
    // (logged per connection: it runs with --log-decisions), and no detection held them.
    let log = server.proxy_log();
    assert!(log.matches("connection allowed").count() >= 4, "{log}");
    let m = client.metrics().await;
    assert_eq!(
        metric(
            &m,
            "palisade_proxy_protocol_detections_total",
            &["direction=\"outbound\""]
        ),
        0.0,
        "{m}"
    );
    // A tunnel to an HTTP port is refused: opaque bytes reach only ports declared TCP, so a
    // client cannot carry a forged header or an unnormalised path past the server's L7
    // policy inside a raw stream.
    let attempt = exchange(
        client.ns(),
        server.addr(8080),
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"SSH",
    )
    .await;
    assert!(attempt.is_err(), "raw bytes reached the HTTP port");
    let m = client.metrics().await;
    assert!(
        metric(
            &m,
            "palisade_proxy_captured_refused_total",
            &["reason=\"not-http\""]
        ) >= 1.0,
        "{m}"
    );
}

// === 4. egress through capture ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_is_matched_by_sni_and_address_with_the_apps_tls_untouched() {
    const TEST: &str = "egress_is_matched_by_sni_and_address_with_the_apps_tls_untouched";
    if !Bed::can_run(TEST)
        || ["curl", "openssl"]
            .iter()
            .any(|t| tools::require(TEST, t).is_none())
    {
        return;
    }
    let partner_ip = std::net::Ipv4Addr::new(10, 77, 1, 50);
    let hosts = [
        ("api.partner.test", partner_ip),
        ("other.partner.test", partner_ip),
    ];
    let config = format!("{}{EGRESS}", mesh("STRICT"));
    let bed = Bed::start_with_hosts(TEST, &config, &[CLIENT, SERVER, PARTNER], &hosts).await;
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let client = bed.pod("client");
    let partner = bed.pod("partner");

    // The partner: a real TLS server (openssl s_server) whose certificate names both hosts,
    // so only the mesh's policy can tell them apart; and two plain TCP echo ports.
    let dir = bed.dir.path();
    let (cert, key) = (dir.join("partner.pem"), dir.join("partner.key"));
    let openssl = tools::find("openssl").unwrap();
    let out = tools::run_ok(
        &openssl,
        [
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=api.partner.test",
            "-addext",
            "subjectAltName=DNS:api.partner.test,DNS:other.partner.test",
            "-keyout",
            &key.display().to_string(),
            "-out",
            &cert.display().to_string(),
        ],
        TOOL_LIMIT,
    )
    .await;
    assert!(out.status.success(), "{}", output_text(&out));
    let mut server_cmd = partner.pod.command(&openssl);
    server_cmd
        .args(["s_server", "-quiet", "-www", "-accept", "443", "-cert"])
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _s_server = ChildGuard::from_child(
        "s_server",
        server_cmd.spawn().unwrap(),
        dir.join("s_server.log"),
    );
    tokio::spawn(echo(
        partner.listen(6000),
        Some(b"ledger ready\n"),
        stop.clone(),
    ));
    tokio::spawn(echo(partner.listen(6001), None, stop.clone()));
    {
        let listener = partner.listen(8081);
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = palisade_example_shop::serve_app("search", listener, Default::default(), stop)
                .await;
        });
    }
    poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "s_server listens",
        || async {
            connect_in(partner.ns(), partner.addr(443))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;

    // Allowed by name: the app's own TLS, verified end to end against the partner's
    // certificate (the sidecar never terminates it).
    let cacert = cert.display().to_string();
    let out = curl(
        &client.pod,
        &["-i", "--cacert", &cacert, "https://api.partner.test/"],
    )
    .await;
    assert!(
        out.status.success() && stdout(&out).starts_with("HTTP/1.0 200"),
        "allowed SNI: {}\n{}",
        output_text(&out),
        bed.logs()
    );
    // The same server under a name no EgressPolicy lists: refused before a byte leaves.
    let out = curl(
        &client.pod,
        &["--cacert", &cacert, "https://other.partner.test/"],
    )
    .await;
    assert!(
        !out.status.success(),
        "unlisted SNI passed: {}",
        output_text(&out)
    );
    // A forged SNI naming the allowed host, sent to an address that is not the host's:
    // the bytes go only to the allowed name's own address.
    let out = curl(
        &client.pod,
        &[
            "--cacert",
            &cacert,
            "--resolve",
            &format!("api.partner.test:443:{}", bed.pod("server").ip()),
            "https://api.partner.test/",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "a dialled address that is not the name's is replaced by the name's: {}",
        output_text(&out)
    );
    // Plain HTTP is matched by its Host, per request: the allowed name passes, another name
    // on the same connection target is refused with the mesh's 403.
    let out = curl(
        &client.pod,
        &["-i", "http://api.partner.test:8081/search?q=lamp"],
    )
    .await;
    assert!(
        stdout(&out).starts_with("HTTP/1.1 200") && stdout(&out).contains("reading lamp"),
        "allowed Host: {}\n{}",
        output_text(&out),
        bed.logs()
    );
    let out = curl(
        &client.pod,
        &["-i", "http://other.partner.test:8081/search?q=lamp"],
    )
    .await;
    let text = stdout(&out);
    assert!(
        text.starts_with("HTTP/1.1 403")
            && text.contains("x-palisade-denied-by: outbound-registry-only"),
        "unlisted Host: {}",
        output_text(&out)
    );
    // A forged Host naming the allowed host, sent to another address (the server pod, which
    // has nothing on 8081): the request goes to the allowed name's own address.
    let out = curl(
        &client.pod,
        &[
            "-i",
            "-H",
            "Host: api.partner.test:8081",
            &format!("http://{}:8081/search?q=lamp", bed.pod("server").ip()),
        ],
    )
    .await;
    assert!(
        stdout(&out).starts_with("HTTP/1.1 200") && stdout(&out).contains("reading lamp"),
        "forged Host: {}",
        output_text(&out)
    );
    // Plain TCP by address: the allowed block and port pass (even server-speaks-first),
    // another port of the same address does not.
    let mut ledger = connect_in(client.ns(), partner.addr(6000)).await.unwrap();
    read_until(&mut ledger, b"ledger ready\n").await.unwrap();
    ledger.write_all(b"balance\n").await.unwrap();
    read_until(&mut ledger, b"balance\n").await.unwrap();
    assert!(
        exchange(client.ns(), partner.addr(6001), b"hi\n", b"hi\n")
            .await
            .is_err()
    );

    let m = client.metrics().await;
    let denied = |destination: &str| {
        metric(
            &m,
            "palisade_proxy_authz_denials_total",
            &[
                "policy=\"outbound-registry-only\"",
                &format!("destination=\"{destination}\""),
            ],
        )
    };
    // Each refusal counts under the bounded `external` (hosts go to the log only).
    assert!(denied("external") >= 3.0, "{m}");
    assert!(
        metric(
            &m,
            "palisade_proxy_protocol_detections_total",
            &["protocol=\"tls\""]
        ) >= 3.0,
        "{m}"
    );
}

// === 5. non-TCP default deny ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_is_dropped_and_counted_except_dns_to_the_resolver() {
    const TEST: &str = "udp_is_dropped_and_counted_except_dns_to_the_resolver";
    if !Bed::can_run(TEST) {
        return;
    }
    let bed = Bed::start(TEST, &mesh("STRICT"), &[CLIENT, SERVER, OUTSIDER]).await;
    let client = bed.pod("client");
    let server = bed.pod("server");
    let outsider = bed.pod("outsider");
    let drops = |status: &str, key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{key}:")))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in\n{status}"))
    };
    let before = client.init_status().await;

    // A resolver on the node answers DNS-port datagrams (echo stands in for an answer).
    let resolver = udp_in(bed.node.netns().name(), "10.77.1.1:53".parse().unwrap()).unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = resolver.recv_from(&mut buf).await {
            let _ = resolver.send_to(&buf[..n], from).await;
        }
    });
    let socket = udp_in(client.ns(), "0.0.0.0:0".parse().unwrap()).unwrap();
    socket.send_to(b"dns query", "10.77.1.1:53").await.unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = within(
        Duration::from_secs(5),
        "the resolver's answer",
        socket.recv_from(&mut buf),
    )
    .await
    .unwrap();
    assert_eq!(&buf[..n], b"dns query");

    // To another pod and to an address outside the mesh: dropped at the sender (the
    // kernel refuses the send), and counted.
    let _ = socket.send_to(b"to a pod", server.addr(9999)).await;
    let _ = socket.send_to(b"to the world", "203.0.113.9:9999").await;
    let after = client.init_status().await;
    assert!(
        drops(&after, "ipv4 outbound udp") >= drops(&before, "ipv4 outbound udp") + 2,
        "before:\n{before}\nafter:\n{after}"
    );
    // Arriving at a meshed pod from a namespace without rules: dropped at the receiver.
    let server_before = server.init_status().await;
    let listener = udp_in(server.ns(), "0.0.0.0:9999".parse().unwrap()).unwrap();
    let sender = udp_in(outsider.ns(), "0.0.0.0:0".parse().unwrap()).unwrap();
    sender.send_to(b"knock", server.addr(9999)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(1), listener.recv_from(&mut buf)).await;
    assert!(got.is_err(), "the datagram reached the app: {got:?}");
    let server_after = server.init_status().await;
    assert!(
        drops(&server_after, "ipv4 inbound udp") > drops(&server_before, "ipv4 inbound udp"),
        "before:\n{server_before}\nafter:\n{server_after}"
    );
    // ICMP echo is not let through either.
    let ping = tools::find("ping");
    if let Some(ping) = ping {
        let out = run_in(
            &client.pod,
            &ping,
            &["-c", "1", "-W", "1", &server.ip().to_string()],
        )
        .await;
        assert!(!out.status.success(), "ping passed: {}", output_text(&out));
        let status = client.init_status().await;
        assert!(drops(&status, "ipv4 outbound icmp") >= 1, "{status}");
    }
}
