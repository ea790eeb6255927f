//! Real processes: `palisade control-plane` and `palisade proxy` as separate processes
//! (apps in this process). Killing the control plane with SIGKILL must not disturb traffic
//! or readiness; a restarted control plane (same address, same CA) serves a new proxy, and
//! the old proxies reconnect to it.

use std::net::SocketAddr;
use std::time::Duration;

use palisade_control_plane::TokenStore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::support::clients::{H1Client, try_admin_get};
use crate::support::mesh::{CLIENT_AND_SEARCH, MESH_CONFIG, SEARCH_NO_ADMIN, shop_id};
use crate::support::procs::{ChildGuard, run_palisade};
use crate::support::tools::output_text;
use crate::support::{App, Block, apps, metric, poll};

/// A DENY the sidecars must keep enforcing while the control plane is gone.
const DENY_ADMIN: &str = SEARCH_NO_ADMIN;

/// Added while the control plane is down.
const ORDERS: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: orders, namespace: shop, labels: {app: orders}}
spec:
  serviceAccount: orders
  address: {block}.3
  ports:
  - {name: http, port: 8080}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  selector: {app: orders}
  ports:
  - {name: http, port: 8080}
";

/// How long a process may take to become ready, or a proxy to reconnect (its discovery
/// backoff is capped at 15 s).
const PROCESS_READY: Duration = Duration::from_secs(40);
const POLL_EVERY: Duration = Duration::from_millis(100);

/// What [`Layout::start`] runs.
struct Running {
    cp: ChildGuard,
    client_proxy: ChildGuard,
    search_proxy: ChildGuard,
    /// Stops the apps (more can be started on it).
    stop_apps: CancellationToken,
    /// Stops them when the test ends, however it ends.
    _stop_apps: tokio_util::sync::DropGuard,
}

struct Layout {
    block: Block,
    dir: tempfile::TempDir,
}

impl Layout {
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn write(&self, name: &str, contents: &str) {
        std::fs::write(
            self.path(name),
            contents.replace("{block}", &self.block.prefix()),
        )
        .unwrap();
    }

    /// A CA made by the binary, the mesh (client and search, plus `extra` files), and a
    /// tokens file in the documented format; returns the tokens.
    async fn prepare(&self, extra: &[(&str, &str)]) -> TokenStore {
        let out = run_palisade(&["ca", "init", "--out", &self.arg("ca")]).await;
        assert!(out.status.success(), "ca init: {}", output_text(&out));
        std::fs::create_dir(self.path("config")).unwrap();
        self.write("config/mesh.yaml", MESH_CONFIG);
        self.write("config/workloads.yaml", CLIENT_AND_SEARCH);
        for (name, contents) in extra {
            self.write(name, contents);
        }
        let snapshot = palisade_control_plane::load_dir(&self.path("config")).unwrap();
        let generated = TokenStore::generate(snapshot.workloads()).unwrap();
        let token = |w: &str| generated.get("shop", w).unwrap().to_owned();
        self.write(
            "tokens",
            &format!(
                "shop/client {}\nshop/search {}\n",
                token("client"),
                token("search")
            ),
        );
        generated
    }

    /// The control plane, the search app (in this process) and the client and search
    /// sidecars as processes, all ready and the client's discovery stream open.
    async fn start(&self, client_token: &str, search_token: &str) -> Running {
        let block = self.block;
        let mut cp = self.control_plane("control-plane-1");
        await_ready(self.cp_admin(), &mut cp).await;
        let stop_apps = CancellationToken::new();
        let guard = stop_apps.clone().drop_guard();
        apps::start(
            block.addr(2, 8080),
            App::shop("search", block.addr(2, 15001)),
            stop_apps.clone(),
        )
        .await;
        let mut client_proxy = self.proxy("client", 1, client_token);
        let mut search_proxy = self.proxy("search", 2, search_token);
        await_ready(block.addr(1, 15000), &mut client_proxy).await;
        await_ready(block.addr(2, 15000), &mut search_proxy).await;
        await_discovery(block.addr(1, 15000), 1.0, "client").await;
        Running {
            cp,
            client_proxy,
            search_proxy,
            stop_apps,
            _stop_apps: guard,
        }
    }

    fn cp_grpc(&self) -> SocketAddr {
        self.block.addr(250, 15012)
    }

    fn cp_admin(&self) -> SocketAddr {
        self.block.addr(250, 15014)
    }

    fn control_plane(&self, name: &str) -> ChildGuard {
        ChildGuard::palisade(
            name,
            &[
                "control-plane".into(),
                "--config".into(),
                self.arg("config"),
                "--ca-dir".into(),
                self.arg("ca"),
                "--tokens".into(),
                self.arg("tokens"),
                "--grpc-addr".into(),
                self.cp_grpc().to_string(),
                "--admin-addr".into(),
                self.cp_admin().to_string(),
            ],
            self.dir.path(),
        )
    }

    fn proxy(&self, workload: &str, host: u8, token: &str) -> ChildGuard {
        let token_file = format!("{workload}.token");
        std::fs::write(self.path(&token_file), format!("{token}\n")).unwrap();
        let ip = self.block.ip(host);
        ChildGuard::palisade(
            &format!("proxy-{workload}"),
            &[
                "proxy".into(),
                "--workload".into(),
                workload.into(),
                "--namespace".into(),
                "shop".into(),
                "--service-account".into(),
                workload.into(),
                "--control-plane".into(),
                self.cp_grpc().to_string(),
                "--trust-anchors".into(),
                self.arg("ca/root-cert.pem"),
                "--token-file".into(),
                self.arg(&token_file),
                "--inbound".into(),
                SocketAddr::new(ip, 15006).to_string(),
                "--outbound".into(),
                SocketAddr::new(ip, 15001).to_string(),
                "--admin".into(),
                SocketAddr::new(ip, 15000).to_string(),
                "--app-host".into(),
                ip.to_string(),
                "--drain-seconds".into(),
                "1".into(),
            ],
            self.dir.path(),
        )
    }
}

/// Waits until `GET http://<admin>/ready` answers 200 (another process: polled, bounded),
/// failing early with the process's log if it exits.
async fn await_ready(admin: SocketAddr, process: &mut ChildGuard) {
    let deadline = Instant::now() + PROCESS_READY;
    loop {
        if let Some(status) = process.exited() {
            panic!(
                "{} exited ({status}) before it was ready:\n{}",
                process.name,
                process.log_text()
            );
        }
        if try_admin_get(admin, "/ready")
            .await
            .is_some_and(|r| r.status == 200)
        {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{} not ready at http://{admin}/ready within {PROCESS_READY:?}:\n{}",
                process.name,
                process.log_text()
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The value of a proxy's `palisade_proxy_discovery_connected`.
async fn discovery_connected(admin: SocketAddr) -> Option<f64> {
    let reply = try_admin_get(admin, "/metrics").await?;
    Some(metric(
        &reply.text(),
        "palisade_proxy_discovery_connected",
        &[],
    ))
}

async fn await_discovery(admin: SocketAddr, connected: f64, who: &str) {
    poll(
        PROCESS_READY,
        POLL_EVERY,
        &format!("{who}: discovery_connected == {connected}"),
        || async { (discovery_connected(admin).await == Some(connected)).then_some(()) },
    )
    .await;
}

async fn get_ok(client: &mut H1Client, url: &str) -> serde_json::Value {
    let reply = client.get(url, &[]).await.unwrap();
    assert_eq!(reply.status, 200, "GET {url}: {}", reply.text());
    reply.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_keep_serving_while_the_control_plane_is_down() {
    crate::support::init_logging();
    let layout = Layout {
        block: Block::next(),
        dir: tempfile::Builder::new()
            .prefix("palisade-e2e-procs-")
            .tempdir()
            .unwrap(),
    };
    let block = layout.block;

    let generated = layout
        .prepare(&[("config/policies.yaml", DENY_ADMIN)])
        .await;
    let token = |w: &str| generated.get("shop", w).unwrap().to_owned();

    let Running {
        mut cp,
        mut client_proxy,
        mut search_proxy,
        stop_apps,
        _stop_apps,
    } = layout.start(&token("client"), &token("search")).await;
    let outbound = |host| block.addr(host, 15001);

    let mut client = H1Client::new(outbound(1));
    let echo = get_ok(&mut client, "http://search.shop:8080/echo").await;
    assert_eq!(
        echo["headers"]["x-forwarded-client-cert"][0],
        format!("By={};URI={}", shop_id("search"), shop_id("client"))
    );

    // SIGKILL: no goodbye to the proxies.
    cp.kill9().await;
    assert!(try_admin_get(layout.cp_admin(), "/ready").await.is_none());
    await_discovery(block.addr(1, 15000), 0.0, "client notices the loss").await;

    // Traffic and readiness are unaffected: 50 requests, on kept-alive and new connections.
    for i in 0..50 {
        if i % 10 == 0 {
            client = H1Client::new(outbound(1));
        }
        let body = get_ok(
            &mut client,
            &format!("http://search.shop:8080/search?q=lamp&i={i}"),
        )
        .await;
        assert_eq!(body["results"].as_array().unwrap().len(), 3);
    }
    // The last configuration stays in force: denials are still enforced (never fail open).
    for i in 0..10 {
        let reply = client
            .get(&format!("http://search.shop:8080/admin/users?i={i}"), &[])
            .await
            .unwrap();
        assert_eq!(reply.status, 403, "denial while the control plane is down");
        assert_eq!(
            reply.header("x-palisade-denied-by"),
            Some("shop/search-no-admin")
        );
    }
    let denied = metric(
        &try_admin_get(block.addr(2, 15000), "/metrics")
            .await
            .unwrap()
            .text(),
        "palisade_proxy_authz_denials_total",
        &["policy=\"shop/search-no-admin\""],
    );
    assert!(
        denied >= 10.0,
        "denials counted while the control plane is down: {denied}"
    );
    for (who, host) in [("client", 1), ("search", 2)] {
        let ready = try_admin_get(block.addr(host, 15000), "/ready").await;
        assert_eq!(
            ready.as_ref().map(|r| r.status.as_u16()),
            Some(200),
            "{who} not ready without the control plane: {:?}",
            ready.map(|r| r.text())
        );
    }

    // A new workload appears while the control plane is down; it restarts on the same
    // address with the same CA and the updated tokens.
    layout.write("config/orders.yaml", ORDERS);
    let snapshot = palisade_control_plane::load_dir(&layout.path("config")).unwrap();
    let orders_token = TokenStore::generate(snapshot.workloads())
        .unwrap()
        .get("shop", "orders")
        .unwrap()
        .to_owned();
    layout.write(
        "tokens",
        &format!(
            "shop/client {}\nshop/search {}\nshop/orders {orders_token}\n",
            token("client"),
            token("search")
        ),
    );
    let mut cp = layout.control_plane("control-plane-2");
    await_ready(layout.cp_admin(), &mut cp).await;

    // The third proxy bootstraps from the new control plane.
    apps::start(
        block.addr(3, 8080),
        App::shop("search", outbound(3)),
        stop_apps.clone(),
    )
    .await;
    let mut orders_proxy = layout.proxy("orders", 3, &orders_token);
    await_ready(block.addr(3, 15000), &mut orders_proxy).await;

    // The old proxies reconnect (jittered backoff) and learn about orders.
    await_discovery(block.addr(1, 15000), 1.0, "client reconnects").await;
    await_discovery(block.addr(2, 15000), 1.0, "search reconnects").await;
    let search_metrics = try_admin_get(block.addr(2, 15000), "/metrics")
        .await
        .unwrap()
        .text();
    assert!(
        metric(
            &search_metrics,
            "palisade_proxy_discovery_reconnects_total",
            &[]
        ) >= 1.0,
        "the reconnection is visible in metrics:\n{search_metrics}"
    );
    // ...and the denial is still in force with the new control plane's configuration.
    let reply = H1Client::new(outbound(1))
        .get("http://search.shop:8080/admin", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 403);

    // Traffic to and from the new workload.
    let mut client = H1Client::new(outbound(1));
    let echo = poll(
        PROCESS_READY,
        POLL_EVERY,
        "client routes to orders.shop",
        || {
            let addr = outbound(1);
            async move {
                let reply = H1Client::new(addr)
                    .get("http://orders.shop:8080/echo", &[])
                    .await
                    .ok()?;
                (reply.status == 200).then(|| reply.json())
            }
        },
    )
    .await;
    assert_eq!(
        echo["headers"]["x-forwarded-client-cert"][0],
        format!("By={};URI={}", shop_id("orders"), shop_id("client"))
    );
    let mut from_orders = H1Client::new(outbound(3));
    let echo = get_ok(&mut from_orders, "http://search.shop:8080/echo").await;
    assert_eq!(
        echo["headers"]["x-forwarded-client-cert"][0],
        format!("By={};URI={}", shop_id("search"), shop_id("orders"))
    );
    get_ok(&mut client, "http://search.shop:8080/search?q=kettle").await;

    for p in [
        &mut client_proxy,
        &mut search_proxy,
        &mut orders_proxy,
        &mut cp,
    ] {
        assert!(p.exited().is_none(), "{} exited:\n{}", p.name, p.log_text());
        p.kill9().await;
    }
}

/// A control plane killed (SIGKILL) in the middle of a CA rotation comes back serving the
/// same stage from the CA directory, and `palisade ca rotate` run again resumes there and
/// finishes, with the proxies (separate processes) following throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_resumes_a_ca_rotation_at_its_stage() {
    use palisade_certs::rotation::{self, Stage};
    use palisade_certs::{CaState, TrustDomain};
    use palisade_control_plane::ca_status::{CaStatus, fetch};

    crate::support::init_logging();
    let layout = Layout {
        block: Block::next(),
        dir: tempfile::Builder::new()
            .prefix("palisade-e2e-procs-")
            .tempdir()
            .unwrap(),
    };
    let block = layout.block;
    let generated = layout.prepare(&[]).await;
    let token = |w: &str| generated.get("shop", w).unwrap().to_owned();
    let Running {
        mut cp,
        mut client_proxy,
        mut search_proxy,
        _stop_apps,
        ..
    } = layout.start(&token("client"), &token("search")).await;
    await_discovery(block.addr(2, 15000), 1.0, "search").await;
    let outbound = |host| block.addr(host, 15001);

    // Stages 1 and 2 written into the CA directory, as `palisade ca rotate` writes them.
    let out = run_palisade(&["ca", "init", "--out", &layout.arg("new-ca")]).await;
    assert!(out.status.success(), "ca init: {}", output_text(&out));
    let td = TrustDomain::new("cluster.local").unwrap();
    let ca_dir = layout.path("ca");
    let files = rotation::read_generation(&layout.path("new-ca")).unwrap();
    let (record, changes) = CaState::read_dir(&ca_dir)
        .unwrap()
        .begin(&td, &layout.path("new-ca"), &files, 1)
        .unwrap();
    rotation::apply_to_dir(&ca_dir, &changes).unwrap();
    let (_, changes) = CaState::read_dir(&ca_dir)
        .unwrap()
        .advance(Stage::IssueFromNew)
        .unwrap();
    rotation::apply_to_dir(&ca_dir, &changes).unwrap();
    let serving = |stage: u8| {
        let admin = layout.cp_admin();
        let issuer = record.new_issuer.clone();
        move || {
            let issuer = issuer.clone();
            async move {
                let status: CaStatus = fetch(admin).await.ok()?;
                let at = status.rotation.as_ref().map(|r| r.stage_number);
                let renewed = status.proxies.leaves_by_issuer.get(&issuer).copied();
                (at == Some(stage) && renewed == Some(2)).then_some(status)
            }
        }
    };
    let before = poll(
        PROCESS_READY,
        POLL_EVERY,
        "stage 2 served and both proxies renewed from the new CA",
        serving(2),
    )
    .await;
    assert_eq!(before.issuer_fingerprint, record.new_issuer);
    assert_eq!(before.roots.len(), 2, "both roots during stage 2");

    // SIGKILL mid-rotation, and a new control plane on the same directory.
    cp.kill9().await;
    let mut cp = layout.control_plane("control-plane-2");
    await_ready(layout.cp_admin(), &mut cp).await;
    let after = poll(
        PROCESS_READY,
        POLL_EVERY,
        "the restarted control plane serves stage 2 and the proxies are back",
        serving(2),
    )
    .await;
    assert_eq!(after.issuer_fingerprint, record.new_issuer);
    // The same roots (`expires_in_seconds` moves with the clock: compared by serial and end).
    let roots = |s: &CaStatus| -> Vec<(String, String)> {
        s.roots
            .iter()
            .map(|r| (r.serial.clone(), r.not_after.clone()))
            .collect()
    };
    assert_eq!(roots(&after), roots(&before), "the same trust bundle");
    assert_eq!(
        after.rotation, before.rotation,
        "the same rotation, same stage"
    );

    let out = run_palisade(&["ca", "rotate", "--dir", &layout.arg("ca"), "--status"]).await;
    let text = output_text(&out);
    assert!(out.status.success() && text.contains("stage 2/3"), "{text}");

    // The operator runs the command again, without --new: it resumes at stage 2.
    let out = run_palisade(&[
        "ca",
        "rotate",
        "--dir",
        &layout.arg("ca"),
        "--control-plane",
        &layout.cp_admin().to_string(),
        "--stage-timeout-seconds",
        "20",
    ])
    .await;
    let text = output_text(&out);
    assert!(out.status.success(), "ca rotate (resume): {text}");
    assert!(text.contains("resuming rotation: stage 2/3"), "{text}");
    assert!(
        !text.contains("stage 1/3"),
        "stage 1 is not repeated: {text}"
    );
    assert!(text.contains("rotation complete"), "{text}");
    let done = fetch(layout.cp_admin()).await.unwrap();
    assert!(done.rotation.is_none(), "{done:?}");
    assert_eq!(done.roots.len(), 1);
    assert_eq!(done.issuer_fingerprint, record.new_issuer);
    assert!(
        CaState::read_dir(&ca_dir)
            .unwrap()
            .rotation()
            .unwrap()
            .is_none()
    );

    // Traffic between the proxy processes on a new connection, with the new CA only.
    let mut client = H1Client::new(outbound(1));
    get_ok(&mut client, "http://search.shop:8080/search?q=lamp").await;
    for p in [&mut client_proxy, &mut search_proxy, &mut cp] {
        assert!(p.exited().is_none(), "{} exited:\n{}", p.name, p.log_text());
        p.kill9().await;
    }
}
