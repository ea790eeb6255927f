//! Authorization bypasses, sent as an attacker would send them through running sidecars: a
//! workload holding a mesh certificate talks mTLS straight to a peer's inbound port (raw
//! HTTP/1 bytes, raw HTTP/2 frames from the `h2` crate, opaque `palisade-tcp` streams), or an
//! app sends odd requests to its own outbound. Each test checks what the app behind the
//! sidecar received, with a recording app, not only the status the attacker got.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use palisade_certs::ALPN_H2;
use palisade_certs::tls::Credentials;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::TIMEOUT;
use crate::support::apps::Recorder;
use crate::support::clients::H1Client;
use crate::support::mesh::{MESH_CONFIG, TestMesh, shop_id};
use crate::support::procs::run_palisade;
use crate::support::timed;
use crate::support::tls::{connect_inbound, sni, sni_name};

/// ALPN of an opaque stream between sidecars.
const ALPN_TCP: &[u8] = b"palisade-tcp";

/// Workloads: `client` (where attacks come from), `target` (HTTP 8080, TCP 9000, recording
/// apps bound by the test, DENY rules), `open` (the same ports, no policy: what an app that
/// trusts its sidecar looks like), `single` (one HTTP port), `down` (a declared port with no
/// app) and `ghost` (no sidecar runs).
const WORKLOADS: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  serviceAccount: client
  address: {block}.1
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: target, namespace: shop, labels: {app: target}}
spec:
  serviceAccount: target
  address: {block}.2
  ports:
  - {name: http, port: 8080, appProtocol: http}
  - {name: tcp, port: 9000, appProtocol: tcp}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: single, namespace: shop, labels: {app: single}}
spec:
  serviceAccount: single
  address: {block}.3
  ports:
  - {name: http, port: 8080, appProtocol: http}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: down, namespace: shop, labels: {app: down}}
spec:
  serviceAccount: down
  address: {block}.4
  ports:
  - {name: http, port: 8080, appProtocol: http}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: ghost, namespace: shop, labels: {app: ghost}}
spec:
  serviceAccount: ghost
  address: {block}.5
  ports:
  - {name: http, port: 8080, appProtocol: http}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: open, namespace: shop, labels: {app: open}}
spec:
  serviceAccount: open
  address: {block}.6
  ports:
  - {name: http, port: 8080, appProtocol: http}
  - {name: tcp, port: 9000, appProtocol: tcp}
";

const SERVICES: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: target, namespace: shop}
spec:
  selector: {app: target}
  ports:
  - {name: http, port: 8080, targetPort: 8080, appProtocol: http}
  - {name: tcp, port: 9000, targetPort: 9000, appProtocol: tcp}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: down, namespace: shop}
spec:
  selector: {app: down}
  ports:
  - {name: http, port: 8080, targetPort: 8080, appProtocol: http}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: open, namespace: shop}
spec:
  selector: {app: open}
  ports:
  - {name: http, port: 8080, targetPort: 8080, appProtocol: http}
  - {name: tcp, port: 9000, targetPort: 9000, appProtocol: tcp}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: ghost, namespace: shop}
spec:
  selector: {app: ghost}
  ports:
  - {name: http, port: 8080, targetPort: 8080, appProtocol: http}
";

/// DENY rules an attacker wants to walk around: `/admin` on `target`, another Host than
/// `target.shop`, and the canonical SNI of `single`'s port. (They name port 8080, so as
/// Istio reads DENY rules with HTTP fields for TCP, they leave the TCP port 9000 alone.)
const POLICIES: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: target}}
  action: DENY
  rules:
  - to: [{operation: {ports: [\"8080\"], paths: [\"/admin\", \"/admin/*\"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-other-hosts, namespace: shop}
spec:
  selector: {matchLabels: {app: target}}
  action: DENY
  rules:
  - to: [{operation: {ports: [\"8080\"], notHosts: [\"target.shop\", \"target.shop:*\", \"localhost\"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-sni, namespace: shop}
spec:
  selector: {matchLabels: {app: single}}
  action: DENY
  rules:
  - when: [{key: connection.sni, values: [\"port-8080.palisade.mesh\"]}]
";

/// The test MeshConfig with `paths` (more `spec` lines) appended.
fn mesh_config(paths: &str) -> String {
    format!("{MESH_CONFIG}{paths}")
}

/// The bypass test mesh with recording apps on `target`'s and `single`'s ports.
struct Bed {
    mesh: TestMesh,
    http: Recorder,
    open_http: Recorder,
    open_tcp: Recorder,
    single: Recorder,
    client: Credentials,
}

async fn bed(test: &'static str, paths: &str) -> Bed {
    let mesh = TestMesh::builder(test)
        .file("mesh.yaml", &mesh_config(paths))
        .file("workloads.yaml", WORKLOADS)
        .file("services.yaml", SERVICES)
        .file("policies.yaml", POLICIES)
        .without_sidecar("ghost")
        .start()
        .await;
    let http = Recorder::start(mesh.block.addr(2, 8080), mesh.shutdown.clone()).await;
    let open_http = Recorder::start(mesh.block.addr(6, 8080), mesh.shutdown.clone()).await;
    let open_tcp = Recorder::start(mesh.block.addr(6, 9000), mesh.shutdown.clone()).await;
    let single = Recorder::start(mesh.block.addr(3, 8080), mesh.shutdown.clone()).await;
    let client = mesh.issue(&mesh.identity("shop", "client"));
    Bed {
        mesh,
        http,
        open_http,
        open_tcp,
        single,
        client,
    }
}

/// An mTLS connection to `workload`'s inbound port holding the client's mesh certificate,
/// with `server_name` (an IP address sends no SNI) and `alpn`.
async fn mtls(
    bed: &Bed,
    workload: &str,
    server_name: ServerName<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let sidecar = bed.mesh.sidecar(workload);
    let bundle = bed.mesh.bundle();
    let connect = connect_inbound(
        sidecar.inbound(),
        Some(&bed.client),
        &bundle,
        &sidecar.identity,
        server_name,
        alpn,
    );
    timed("mTLS handshake", connect).await
}

/// Writes `request` and reads until the peer closes (bounded), keeping what arrived before
/// any error.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, request: &[u8]) -> String {
    let _ = stream.write_all(request).await;
    let _ = stream.flush().await;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(TIMEOUT, read).await;
    String::from_utf8_lossy(&received).into_owned()
}

/// Reads a response head, byte by byte, up to its blank line (so nothing after it is
/// consumed).
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// The status code of a raw HTTP/1 response, 0 if there is none.
fn status_of(response: &str) -> u16 {
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// One raw HTTP/1 request over a new mTLS connection to `target`'s port 8080.
async fn raw_h1(bed: &Bed, request: &str) -> String {
    let mut tls = mtls(bed, "target", sni(8080), &[])
        .await
        .expect("handshake");
    exchange(&mut tls, request.as_bytes()).await
}

async fn denials(bed: &Bed, workload: &str, policy: &str) -> f64 {
    let labels = [format!("policy=\"{policy}\"")];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    bed.mesh
        .sidecar(workload)
        .metric("palisade_proxy_authz_denials_total", &labels)
        .await
}

/// Item 1: an opaque `palisade-tcp` stream to a port declared HTTP would hand the app a
/// forged `x-forwarded-client-cert` and an unnormalised path; it is refused and counted, and
/// the outbound refuses `CONNECT` to a Service's HTTP port (403, counted). A TCP port still
/// tunnels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tunnels_reach_only_tcp_ports() {
    let bed = bed("opaque_tunnels_reach_only_tcp_ports", "").await;
    let forged = "GET /x/../admin HTTP/1.1\r\nHost: open.shop:8080\r\n\
                  x-forwarded-client-cert: By=x;URI=spiffe://cluster.local/ns/shop/sa/admin\r\n\
                  Connection: close\r\n\r\n";

    // Inbound: ALPN palisade-tcp with the SNI of the HTTP port.
    let mut tunnel = mtls(&bed, "open", sni(8080), &[ALPN_TCP])
        .await
        .expect("handshake");
    let answer = exchange(&mut tunnel, forged.as_bytes()).await;
    assert_eq!(
        bed.open_http.connections(),
        0,
        "the app got {:?}",
        bed.open_http.seen()
    );
    assert_eq!(answer, "", "the tunnel carried an answer back");
    assert_eq!(denials(&bed, "open", "tunnel-to-http-port").await, 1.0);

    // Control: the TCP port tunnels.
    let mut tunnel = mtls(&bed, "open", sni(9000), &[ALPN_TCP])
        .await
        .expect("handshake");
    let answer = exchange(
        &mut tunnel,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(bed.open_tcp.connections(), 1);

    // Outbound: CONNECT from the app to the Service's HTTP port is refused, counted.
    let outbound = bed.mesh.sidecar("client").outbound();
    let mut app = TcpStream::connect(outbound).await.unwrap();
    app.write_all(b"CONNECT open.shop:8080 HTTP/1.1\r\nHost: open.shop:8080\r\n\r\n")
        .await
        .unwrap();
    let answer = timed("CONNECT answer", read_head(&mut app)).await;
    assert_eq!(status_of(&answer), 403, "{answer}");
    assert!(
        answer.contains("x-palisade-denied-by: tunnel-to-http-port"),
        "{answer}"
    );
    assert_eq!(denials(&bed, "client", "tunnel-to-http-port").await, 1.0);
    assert_eq!(bed.open_http.connections(), 0);

    // CONNECT to the TCP port still works.
    let mut app = TcpStream::connect(outbound).await.unwrap();
    let _ = app
        .write_all(b"CONNECT open.shop:9000 HTTP/1.1\r\nHost: open.shop:9000\r\n\r\n")
        .await;
    let head = timed("CONNECT answer", read_head(&mut app)).await;
    assert_eq!(status_of(&head), 200, "{head}");
    let answer = exchange(
        &mut app,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.contains("recorded"), "{answer}");
    assert_eq!(bed.open_tcp.connections(), 2);
    bed.mesh.stop().await;
}

/// Item 2: one canonical authority per request; ambiguous ones are answered 400 before
/// anything reaches the app, and the app always gets the authorized Host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_authorities_are_refused_and_the_app_gets_the_authorized_one() {
    let bed = bed(
        "ambiguous_authorities_are_refused_and_the_app_gets_the_authorized_one",
        "",
    )
    .await;
    for (what, request) in [
        (
            "a second Host line",
            "GET /x HTTP/1.1\r\nHost: target.shop:8080\r\nHost: admin.shop\r\nConnection: close\r\n\r\n",
        ),
        (
            "a Host that differs from the absolute-form authority",
            "GET http://target.shop:8080/x HTTP/1.1\r\nHost: admin.shop\r\nConnection: close\r\n\r\n",
        ),
        (
            "userinfo",
            "GET /x HTTP/1.1\r\nHost: admin@target.shop:8080\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let answer = raw_h1(&bed, request).await;
        assert_eq!(status_of(&answer), 400, "{what}: {answer}");
    }
    assert_eq!(bed.http.seen().len(), 0, "{:?}", bed.http.seen());

    // `Connection` cannot remove Host or the identity header; the app gets the canonical
    // authority once and the verified identity.
    let answer = raw_h1(
        &bed,
        "GET /x HTTP/1.1\r\nHost: Target.Shop.:8080\r\n\
         Connection: close, host, x-forwarded-client-cert\r\n\
         x-forwarded-client-cert: By=x;URI=spiffe://cluster.local/ns/shop/sa/admin\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = bed.http.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let hosts: Vec<_> = seen[0].headers.get_all("host").iter().collect();
    assert_eq!(hosts, ["target.shop:8080"], "{seen:?}");
    assert_eq!(
        seen[0].headers["x-forwarded-client-cert"],
        format!("By={};URI={}", shop_id("target"), shop_id("client")).as_str()
    );

    // HTTP/2: `:authority` and a `host` header that differ.
    let tls = mtls(&bed, "target", sni(8080), &[ALPN_H2])
        .await
        .expect("handshake");
    let (mut send, conn) = timed("h2 handshake", h2::client::handshake(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let status = |send: &mut h2::client::SendRequest<Bytes>, request: Request<()>| {
        let mut send = send.clone();
        async move {
            let (response, _) = send.send_request(request, true).unwrap();
            timed("h2 response", response).await.unwrap().status()
        }
    };
    let mismatched = Request::get("http://target.shop:8080/x")
        .header("host", "admin.shop")
        .body(())
        .unwrap();
    assert_eq!(status(&mut send, mismatched).await, StatusCode::BAD_REQUEST);
    assert_eq!(bed.http.seen().len(), 1);
    // A non-canonical `:authority` reaches the app canonical.
    let upper = Request::get("http://TARGET.shop.:8080/y").body(()).unwrap();
    assert_eq!(status(&mut send, upper).await, StatusCode::OK);
    let seen = bed.http.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].headers["host"], "target.shop:8080", "{seen:?}");
    bed.mesh.stop().await;
}

/// Item 4: only the canonical SNI names a port; `port-08080` (which walked past a DENY on
/// `connection.sni`) and no SNI at all (which was mapped to the workload's only port) are
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_canonical_sni_names_a_port() {
    let bed = bed("only_the_canonical_sni_names_a_port", "").await;
    let request = "GET /x HTTP/1.1\r\nHost: single.shop:8080\r\nConnection: close\r\n\r\n";
    let single_ip = bed.mesh.sidecar("single").ip;
    for (what, name) in [
        ("leading zero", sni_name("port-08080.palisade.mesh")),
        ("no SNI", ServerName::IpAddress(single_ip.into())),
        ("another name", sni_name("single.shop")),
    ] {
        let answer = match mtls(&bed, "single", name, &[]).await {
            Ok(mut tls) => exchange(&mut tls, request.as_bytes()).await,
            Err(_) => String::new(),
        };
        assert_eq!(status_of(&answer), 0, "{what}: {answer}");
    }
    assert_eq!(bed.single.seen().len(), 0, "{:?}", bed.single.seen());
    // Control: the canonical name meets the DENY.
    let mut tls = mtls(&bed, "single", sni(8080), &[])
        .await
        .expect("handshake");
    let answer = exchange(&mut tls, request.as_bytes()).await;
    assert_eq!(status_of(&answer), 403, "{answer}");
    assert_eq!(bed.single.seen().len(), 0);
    bed.mesh.stop().await;
}

/// Item 5: `CONNECT` and `OPTIONS *` on an inbound HTTP port are answered 405, never
/// forwarded (HTTP/1 and HTTP/2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_options_star_are_not_forwarded_inbound() {
    let bed = bed("connect_and_options_star_are_not_forwarded_inbound", "").await;
    for request in [
        "CONNECT target.shop:8080 HTTP/1.1\r\nHost: target.shop:8080\r\nConnection: close\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: target.shop:8080\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw_h1(&bed, request).await;
        assert_eq!(status_of(&answer), 405, "{request}: {answer}");
    }
    let tls = mtls(&bed, "target", sni(8080), &[ALPN_H2])
        .await
        .expect("handshake");
    let (mut send, conn) = timed("h2 handshake", h2::client::handshake(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let connect = Request::connect("target.shop:8080").body(()).unwrap();
    let (response, _) = send.send_request(connect, true).unwrap();
    let status = timed("h2 CONNECT", response).await.map(|r| r.status());
    assert!(
        matches!(status, Ok(StatusCode::METHOD_NOT_ALLOWED) | Err(_)),
        "{status:?}"
    );
    assert_eq!(bed.http.connections(), 0, "{:?}", bed.http.seen());
    bed.mesh.stop().await;
}

/// Sends `GET <path>` for `target.shop:8080` through the client's outbound.
async fn get_target(bed: &Bed, path: &str) -> u16 {
    let outbound = bed.mesh.sidecar("client").outbound();
    H1Client::new(outbound)
        .get(&format!("http://target.shop:8080{path}"), &[])
        .await
        .unwrap()
        .status
        .as_u16()
}

/// Item 6, default (`BASE`, encoded slashes refused): `%2F`/`%5C` in any case get 400; what
/// BASE leaves alone (`//admin`) reaches the app as is, and the app gets the normalised path
/// authorization saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_are_refused_by_default() {
    let bed = bed("encoded_slashes_are_refused_by_default", "").await;
    for path in [
        "/x%2F..%2Fadmin",
        "/x%2f..%2fadmin",
        "/x%5C..%5Cadmin",
        "/a%5cb",
    ] {
        assert_eq!(get_target(&bed, path).await, 400, "{path}");
    }
    assert_eq!(bed.http.seen().len(), 0, "{:?}", bed.http.seen());
    assert_eq!(get_target(&bed, "/x/../%61dmin").await, 403);
    assert_eq!(get_target(&bed, "/x/..//admin").await, 200);
    let seen = bed.http.seen();
    let last = seen.last().unwrap();
    assert_eq!((&last.method, last.uri.as_str()), (&Method::GET, "//admin"));
    bed.mesh.stop().await;
}

/// Item 6, `MERGE_SLASHES` with encoded slashes kept: `//admin` is `/admin`; `%2F` passes
/// encoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_slashes_closes_double_slash_walks() {
    let bed = bed(
        "merge_slashes_closes_double_slash_walks",
        "  pathNormalization: {normalization: MERGE_SLASHES, rejectEscapedSlashes: false}\n",
    )
    .await;
    assert_eq!(get_target(&bed, "//admin").await, 403);
    assert_eq!(get_target(&bed, "/x/..//admin/").await, 403);
    assert_eq!(bed.http.seen().len(), 0);
    assert_eq!(get_target(&bed, "/a//b%2fc").await, 200);
    assert_eq!(bed.http.seen()[0].uri, "/a/b%2Fc");
    // `palisade authz check` normalises as the sidecar does.
    let dir = bed.mesh.dir.path().to_str().unwrap().to_owned();
    for (path, code) in [("//admin", 3), ("/a//b", 0)] {
        let out = run_palisade(&[
            "authz",
            "check",
            "--config",
            &dir,
            "--to",
            "shop/target",
            "--port",
            "8080",
            "--from",
            &shop_id("client"),
            "--path",
            path,
        ])
        .await;
        assert_eq!(out.status.code(), Some(code), "{path}: {out:?}");
    }
    bed.mesh.stop().await;
}

/// Item 6, `DECODE_AND_MERGE_SLASHES`: encoded slashes are decoded, so they cannot walk
/// around a path rule either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_and_merge_slashes_decodes_encoded_slashes() {
    let bed = bed(
        "decode_and_merge_slashes_decodes_encoded_slashes",
        "  pathNormalization: {normalization: DECODE_AND_MERGE_SLASHES}\n",
    )
    .await;
    assert_eq!(get_target(&bed, "/%2Fadmin").await, 403);
    assert_eq!(get_target(&bed, "/x%2f..%5Cadmin").await, 403);
    assert_eq!(bed.http.seen().len(), 0);
    assert_eq!(get_target(&bed, "/a%2Fb").await, 200);
    assert_eq!(bed.http.seen()[0].uri, "/a/b");
    bed.mesh.stop().await;
}

/// Item 13: a 502 says only that the upstream is unavailable; the address, identity and
/// error chain stay in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_gateway_bodies_are_generic() {
    let bed = bed("bad_gateway_bodies_are_generic", "").await;
    let outbound = bed.mesh.sidecar("client").outbound();
    let block = bed.mesh.block.prefix();
    // `down`: its sidecar answers but no app listens; `ghost`: no sidecar at all.
    for service in ["down.shop:8080", "ghost.shop:8080"] {
        let reply = H1Client::new(outbound)
            .get(&format!("http://{service}/x"), &[])
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{service}");
        let body = reply.text();
        assert_eq!(body, "502 Bad Gateway: upstream unavailable\n", "{service}");
        for secret in [block.as_str(), "spiffe://", "refused", "error", ":15006"] {
            assert!(
                !body.contains(secret),
                "{service}: {body:?} shows {secret:?}"
            );
        }
    }
    bed.mesh.stop().await;
}
