//! `palisade init` through the real binary: the `--dry-run` batches against golden files, bad
//! flags as one-line user errors, and, as root, the real rules in throwaway network
//! namespaces: idempotent install, exact removal, both iptables back ends, drop counters in
//! `--status`, and failures (no privileges, no iptables, a refused rule) that leave the
//! namespace exactly as it was. Plus a smoke test of the node/pod namespace harness.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::netns::{self, Netns, Node, output_within};
use crate::support::procs::{palisade_bin, workspace_root};
use crate::support::skip;
use crate::support::tools::{self, is_root, output_text};

/// Bound on one `palisade init` run (each iptables call inside is bounded too).
const RUN_LIMIT: Duration = Duration::from_secs(90);
/// Bound on one iptables or helper command.
const TOOL_LIMIT: Duration = Duration::from_secs(20);

/// Resolvers given explicitly, so nothing depends on this machine's resolv.conf.
const DNS: &str = "10.96.0.10,fd00:10:96::a";

/// The flag sets of the golden dry runs (`tests/golden/init/dry-run-<name>-<family>.rules`).
const GOLDEN: &[(&str, &[&str])] = &[
    ("default", &["--dns-servers", DNS]),
    (
        "exclusions",
        &[
            "--dns-servers",
            DNS,
            "--proxy-gid",
            "1337",
            "--exclude-inbound-ports",
            "22,8081",
            "--exclude-inbound-cidrs",
            "10.244.0.0/16,fd00:244::/64",
            "--exclude-outbound-ports",
            "5432",
            "--exclude-outbound-cidrs",
            "169.254.169.254,fd00:abcd::/64",
            "--allow-udp-ports",
            "4789,123",
        ],
    ),
];

// === helpers ===

/// Leaves out variables that would change what `palisade init` does.
fn scrub(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("PALISADE_INIT_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
}

/// `palisade args...` on the host with an empty PATH: no iptables can be reached, so a bug
/// could never touch this machine's rules.
async fn palisade_offline(args: &[&str]) -> Output {
    let mut cmd = Command::new(palisade_bin());
    cmd.args(args)
        .current_dir(workspace_root())
        .env("PATH", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    scrub(&mut cmd);
    output_within(cmd, RUN_LIMIT).await
}

/// `palisade args...` inside `ns`, with `path` as PATH when given.
async fn palisade_in(ns: &Netns, args: &[&str], path: Option<&str>) -> Output {
    let mut cmd = ns.command(palisade_bin());
    cmd.args(args);
    scrub(&mut cmd);
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    output_within(cmd, RUN_LIMIT).await
}

/// Like [`palisade_in`], asserting success.
async fn palisade_ok(ns: &Netns, args: &[&str]) -> String {
    let out = palisade_in(ns, args, None).await;
    assert!(
        out.status.success(),
        "palisade {}: {}",
        args.join(" "),
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit status 1, exactly one line on stderr containing every needle, no panic.
fn assert_one_line_error(what: &str, out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{what}: {}", output_text(out));
    assert_eq!(out.status.code(), Some(1), "{what}: {}", output_text(out));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: not one line: {}", output_text(out));
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{what}: stderr does not contain {needle:?}: {}",
            lines[0]
        );
    }
}

/// Whether IPv6 exists here (a new namespace has it when the host kernel does).
fn ipv6() -> bool {
    Path::new("/proc/net/if_inet6").exists()
}

/// The families to check: ipv4, and ipv6 when the kernel has it.
fn families() -> Vec<&'static str> {
    if ipv6() {
        vec!["iptables", "ip6tables"]
    } else {
        vec!["iptables"]
    }
}

/// True if the test can run: root, `ip`, and every binary named; otherwise prints the
/// SKIPPED line and returns false.
fn can_run(test: &str, binaries: &[String]) -> bool {
    if !is_root() {
        skip(test, "needs root (network namespaces and iptables)");
        return false;
    }
    let mut needed = vec!["ip".to_owned()];
    needed.extend_from_slice(binaries);
    for binary in needed {
        if tools::find(&binary).is_none() {
            skip(test, &format!("{binary} not found on PATH"));
            return false;
        }
    }
    true
}

/// The save and restore binaries of `backend` for every family checked.
fn backend_binaries(backend: &str) -> Vec<String> {
    families()
        .iter()
        .flat_map(|f| {
            [
                format!("{f}-{backend}-save"),
                format!("{f}-{backend}-restore"),
                format!("{f}-{backend}"),
            ]
        })
        .collect()
}

/// `<family>-<backend>-save` inside `ns`, without `#` lines (they hold a date) or counters.
async fn saved(ns: &Netns, binary: &str) -> String {
    let path = tools::find(binary).unwrap();
    let out = ns.run(&path, Vec::<&str>::new(), TOOL_LIMIT).await;
    assert!(out.status.success(), "{binary}: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Every family's save for `backend`, in [`families`] order.
async fn saves(ns: &Netns, backend: &str) -> Vec<String> {
    let mut all = Vec::new();
    for family in families() {
        all.push(saved(ns, &format!("{family}-{backend}-save")).await);
    }
    all
}

/// Rules that are not Palisade's, in nat and filter of every family, so that "removes
/// nothing else" and "restores exactly" are shown on a namespace already in use.
async fn add_unrelated_rules(ns: &Netns, backend: &str) {
    for family in families() {
        let (addr, udp) = if family == "iptables" {
            ("192.0.2.1", "-p udp")
        } else {
            ("2001:db8::1", "-p udp")
        };
        let binary = tools::find(&format!("{family}-{backend}")).unwrap();
        for rule in [
            format!("-t nat -A OUTPUT -d {addr} -p tcp -j RETURN"),
            format!("-t filter -A OUTPUT -d {addr} -j ACCEPT"),
            format!("-t filter -A INPUT {udp} --dport 9 -j DROP"),
        ] {
            let mut args = vec!["-w", "10"];
            args.extend(rule.split_whitespace());
            let out = ns.run(&binary, &args, TOOL_LIMIT).await;
            assert!(
                out.status.success(),
                "{} {rule}: {}",
                binary.display(),
                output_text(&out)
            );
        }
    }
}

/// The `--dry-run` output split by family header: (ipv4 batch, ipv6 batch).
async fn dry_run_batches(flags: &[&str]) -> (String, String) {
    let mut args = vec!["init", "--dry-run", "--ipv6", "on"];
    args.extend_from_slice(flags);
    let out = palisade_offline(&args).await;
    assert!(out.status.success(), "dry run: {}", output_text(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut parts = text.split("# palisade init: ").skip(1);
    let strip = |part: Option<&str>| {
        part.and_then(|p| p.split_once('\n'))
            .map(|(_, batch)| batch.to_owned())
            .unwrap_or_default()
    };
    (strip(parts.next()), strip(parts.next()))
}

/// Every rule of the batch as `*-save` prints it: `-A` lines as they are, `-I CHAIN 1` jumps as
/// `-A CHAIN`. Shows the batch is written in the saved (canonical) form.
fn saved_form(batch: &str) -> Vec<String> {
    batch
        .lines()
        .filter_map(|l| {
            if l.starts_with("-A ") {
                Some(l.to_owned())
            } else {
                l.strip_prefix("-I ").map(|rest| {
                    let (chain, spec) = rest.split_once(" 1 ").unwrap();
                    format!("-A {chain} {spec}")
                })
            }
        })
        .collect()
}

/// A line diff (longest common subsequence), `-` for expected, `+` for actual.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        }
    }
    out
}

// === no root needed ===

/// The dry-run batches for fixed flags equal the committed golden files (one per family);
/// `PALISADE_BLESS=1` rewrites them. Runs with an empty PATH: no iptables, no root needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_matches_the_golden_files() {
    let dir = workspace_root().join("tests/golden/init");
    let bless = std::env::var("PALISADE_BLESS").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    for (name, flags) in GOLDEN {
        for family in ["ipv4", "ipv6"] {
            let mut args = vec!["init", "--dry-run", "--ipv6", "on", "--family", family];
            args.extend_from_slice(flags);
            let out = palisade_offline(&args).await;
            assert!(
                out.status.success(),
                "palisade {}: {}",
                args.join(" "),
                output_text(&out)
            );
            let actual = String::from_utf8(out.stdout).unwrap();
            let file = dir.join(format!("dry-run-{name}-{family}.rules"));
            if bless {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&file, &actual).unwrap();
                continue;
            }
            let expected = std::fs::read_to_string(&file).unwrap_or_default();
            if expected != actual {
                failures.push(format!(
                    "{} differs from `palisade {}` (- golden, + actual; PALISADE_BLESS=1 rewrites):\n{}",
                    file.display(),
                    args.join(" "),
                    diff(&expected, &actual)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `--family` picks one batch; both together are the two golden files in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_of_both_families_is_the_two_batches() {
    let (v4, v6) = dry_run_batches(&["--dns-servers", DNS]).await;
    assert!(
        v4.starts_with("*nat\n") && v4.contains("-d 127.0.0.0/8"),
        "{v4}"
    );
    assert!(
        v6.starts_with("*nat\n") && v6.contains("-d ::1/128"),
        "{v6}"
    );
    let off = palisade_offline(&["init", "--dry-run", "--ipv6", "off", "--dns-servers", DNS]).await;
    let text = String::from_utf8_lossy(&off.stdout);
    assert!(
        off.status.success() && !text.contains("ipv6 batch"),
        "{}",
        output_text(&off)
    );
    let out = palisade_offline(&["init", "--dry-run", "--ipv6", "off", "--family", "ipv6"]).await;
    assert_one_line_error("--family ipv6 with --ipv6 off", &out, &["--family"]);
}

/// Bad flag values: exit 1 and one stderr line naming the flag and the value (never clap's
/// usage exit 2). Run without --dry-run but with an empty PATH, so the real install path
/// parses them and nothing could be applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flag_values_are_one_line_naming_the_flag() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--exclude-outbound-cidrs", "10.0.0.300/8"],
            &["--exclude-outbound-cidrs", "10.0.0.300/8", "not a CIDR"],
        ),
        (
            &["--exclude-inbound-ports", "70000"],
            &["--exclude-inbound-ports", "70000", "not a port"],
        ),
        (
            &["--allow-udp-ports", "x"],
            &["--allow-udp-ports", "\"x\"", "not a port"],
        ),
        (&["--inbound-port", "0"], &["--inbound-port", "\"0\""]),
        (&["--backend", "iptables"], &["--backend", "iptables"]),
        (&["--ipv6", "maybe"], &["--ipv6", "maybe"]),
        (
            &["--dns-servers", "dns.local"],
            &["--dns-servers", "dns.local"],
        ),
        (&["--proxy-uid", "proxy"], &["--proxy-uid", "proxy"]),
    ];
    for (flags, needles) in cases {
        let mut args = vec!["init"];
        args.extend_from_slice(flags);
        let out = palisade_offline(&args).await;
        assert_one_line_error(&flags.join(" "), &out, needles);
    }
}

// === root: real iptables in throwaway namespaces ===

/// (a)-(c) for one back end: init twice gives identical saves, holding the dry run's rules
/// verbatim; `--remove` gives back exactly the pre-init saves (unrelated rules intact), and
/// again is a no-op; the other back end is never touched.
async fn install_twice_then_remove(test: &str, backend: &str, other: &str) {
    if !can_run(test, &backend_binaries(backend)) {
        return;
    }
    let ns = Netns::new().await;
    add_unrelated_rules(&ns, backend).await;
    let before = saves(&ns, backend).await;
    let flags = [
        "--dns-servers",
        DNS,
        "--exclude-outbound-cidrs",
        "169.254.169.254/32",
        "--allow-udp-ports",
        "4789",
    ];
    let mut args = vec!["init", "--backend", backend];
    args.extend_from_slice(&flags);

    let out = palisade_ok(&ns, &args).await;
    assert!(out.contains(&format!("(iptables-{backend})")), "{out}");
    let first = saves(&ns, backend).await;

    // The saved rules are the dry run's, character for character.
    let (v4, v6) = dry_run_batches(&flags).await;
    for ((save, batch), pre) in first.iter().zip([v4, v6]).zip(&before) {
        for rule in saved_form(&batch) {
            assert!(
                save.contains(&format!("{rule}\n")),
                "missing {rule}\nin\n{save}"
            );
        }
        for line in pre.lines().filter(|l| l.starts_with("-A ")) {
            assert!(save.contains(line), "unrelated rule lost: {line}");
        }
    }

    // Second run: auto-detected back end (legacy because legacy tables hold rules; nft
    // otherwise), identical result.
    let mut again = vec!["init"];
    again.extend_from_slice(&flags);
    palisade_ok(&ns, &again).await;
    let second = saves(&ns, backend).await;
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a, b, "second init changed the rules:\n{}", diff(a, b));
    }
    if tools::find(&format!("iptables-{other}-save")).is_some() {
        for other_save in saves(&ns, other).await {
            assert!(
                !other_save.contains("PALISADE"),
                "{other} touched:\n{other_save}"
            );
        }
    }
    let status = palisade_ok(&ns, &["init", "--status"]).await;
    assert!(
        status.contains(&format!("ipv4 (iptables-{backend}):")),
        "{status}"
    );

    let removed = palisade_ok(&ns, &["init", "--remove"]).await;
    assert!(removed.contains("removed the ipv4 rules"), "{removed}");
    let after = saves(&ns, backend).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            b,
            a,
            "--remove did not restore the namespace:\n{}",
            diff(b, a)
        );
    }
    let again = palisade_ok(&ns, &["init", "--remove", "--backend", backend]).await;
    assert!(again.contains("not installed"), "{again}");
    let status = palisade_ok(&ns, &["init", "--status"]).await;
    assert!(status.contains("not installed"), "{status}");
}

/// (a)-(c) with iptables-nft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nft_init_is_idempotent_and_remove_restores_the_namespace() {
    install_twice_then_remove(
        "nft_init_is_idempotent_and_remove_restores_the_namespace",
        "nft",
        "legacy",
    )
    .await;
}

/// (a)-(c) with iptables-legacy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_init_is_idempotent_and_remove_restores_the_namespace() {
    install_twice_then_remove(
        "legacy_init_is_idempotent_and_remove_restores_the_namespace",
        "legacy",
        "nft",
    )
    .await;
}

/// The packets counted by the drop summary line `<family> <direction> <protocol>`.
fn drops(status: &str, key: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no drop line {key:?} in\n{status}"));
    line.split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The packet counter of the first status rule line containing `needle`.
fn rule_packets(status: &str, needle: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no rule {needle:?} in\n{status}"));
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// Sends one UDP datagram from inside `ns` (bash's /dev/udp); a dropped one fails the write
/// (EPERM), which is the point, so the status is not checked.
async fn send_udp(ns: &Netns, addr: &str, port: u16) {
    ns.run(
        "bash",
        ["-c", &format!("echo probe > /dev/udp/{addr}/{port}")],
        TOOL_LIMIT,
    )
    .await;
}

/// (d) In a pod on a node bridge: a datagram to a non-resolver is counted as an outbound UDP
/// drop; one to the configured resolver (port 53) and one to an allowed UDP port are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_outbound_udp_drops_but_not_dns() {
    let test = "status_counts_outbound_udp_drops_but_not_dns";
    if !can_run(test, &backend_binaries("nft")) || tools::find("bash").is_none() {
        return;
    }
    let node = Node::new().await;
    let pod = node.pod(Ipv4Addr::new(10, 77, 1, 2)).await;
    let resolver = "10.77.1.53";
    palisade_ok(
        &pod,
        &[
            "init",
            "--backend",
            "nft",
            "--dns-servers",
            resolver,
            "--allow-udp-ports",
            "4789",
        ],
    )
    .await;
    let status = palisade_ok(&pod, &["init", "--status"]).await;
    assert_eq!(drops(&status, "ipv4 outbound udp"), 0, "{status}");

    send_udp(&pod, resolver, 53).await;
    send_udp(&pod, "203.0.113.7", 4789).await;
    let status = palisade_ok(&pod, &["init", "--status"]).await;
    assert_eq!(drops(&status, "ipv4 outbound udp"), 0, "{status}");
    assert!(
        rule_packets(&status, "palisade: dns to a resolver") >= 1,
        "{status}"
    );
    assert!(
        rule_packets(&status, "palisade: allowed outbound udp port") >= 1,
        "{status}"
    );

    send_udp(&pod, "203.0.113.7", 9999).await;
    let status = palisade_ok(&pod, &["init", "--status"]).await;
    assert!(drops(&status, "ipv4 outbound udp") >= 1, "{status}");
    assert_eq!(drops(&status, "ipv4 inbound udp"), 0, "{status}");
}

/// (e) Without privileges (UID 1337): exit 1, one line about permission, nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_without_privileges_fails_on_one_line_and_changes_nothing() {
    let test = "init_without_privileges_fails_on_one_line_and_changes_nothing";
    let mut needed = backend_binaries("nft");
    needed.push("setpriv".to_owned());
    if !can_run(test, &needed) {
        return;
    }
    let ns = Netns::new().await;
    add_unrelated_rules(&ns, "nft").await;
    let before = saves(&ns, "nft").await;
    // A copy UID 1337 can execute wherever the build directory is.
    let dir = world_readable_dir();
    let bin = dir.path().join("palisade");
    std::fs::copy(palisade_bin(), &bin).unwrap();
    set_mode(&bin, 0o755);
    for backend in ["auto", "nft", "legacy"] {
        let mut cmd = ns.command(tools::find("setpriv").unwrap());
        cmd.args(["--reuid=1337", "--regid=1337", "--clear-groups"])
            .arg(&bin)
            .args(["init", "--dns-servers", DNS, "--backend", backend]);
        scrub(&mut cmd);
        let out = output_within(cmd, RUN_LIMIT).await;
        assert_one_line_error(
            &format!("as uid 1337, --backend {backend}"),
            &out,
            &["permission denied"],
        );
    }
    assert_eq!(before, saves(&ns, "nft").await);
}

/// (e) No iptables on PATH: exit 1, one line naming the binary that was not found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_without_iptables_names_the_missing_binary() {
    let test = "init_without_iptables_names_the_missing_binary";
    if !can_run(test, &backend_binaries("nft")) {
        return;
    }
    let ns = Netns::new().await;
    let before = saves(&ns, "nft").await;
    let empty = world_readable_dir();
    let path = empty.path().to_str().unwrap();
    for (backend, binary) in [
        ("auto", "iptables-nft-restore"),
        ("nft", "iptables-nft-restore"),
        ("legacy", "iptables-legacy-restore"),
    ] {
        for mode in [&[][..], &["--remove"][..], &["--status"][..]] {
            let mut args = vec!["init", "--dns-servers", DNS, "--backend", backend];
            args.extend_from_slice(mode);
            let out = palisade_in(&ns, &args, Some(path)).await;
            assert_one_line_error(&args.join(" "), &out, &[binary]);
        }
    }
    assert_eq!(before, saves(&ns, "nft").await);
}

/// (e) A rule refused by `ip6tables-nft-restore` (a wrapper that fails like the real one,
/// `line N failed`, after the IPv4 batch went in): exit 1, one line naming line N and its
/// rule, and both families rolled back to their snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_rule_rolls_every_family_back() {
    let test = "a_refused_rule_rolls_every_family_back";
    if !ipv6() {
        skip(test, "the kernel has no IPv6 (/proc/net/if_inet6)");
        return;
    }
    if !can_run(test, &backend_binaries("nft")) {
        return;
    }
    let ns = Netns::new().await;
    add_unrelated_rules(&ns, "nft").await;
    let before = saves(&ns, "nft").await;

    let flags = ["--dns-servers", DNS];
    let (_, v6) = dry_run_batches(&flags).await;
    let (index, rule) = v6
        .lines()
        .enumerate()
        .find(|(_, l)| l.starts_with("-A "))
        .unwrap();
    let line = index + 1;

    let dir = world_readable_dir();
    let real = tools::find("ip6tables-nft-restore").unwrap();
    let wrapper = dir.path().join("ip6tables-nft-restore");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             # Refuses every --noflush batch as ip6tables-nft-restore does; passes the rest on.\n\
             case \" $* \" in\n\
             *\" --noflush \"*) cat >/dev/null; echo 'ip6tables-restore v1.8.9 (nf_tables): line {line} failed' >&2; exit 1 ;;\n\
             esac\n\
             exec {} \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    set_mode(&wrapper, 0o755);
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let mut args = vec!["init", "--backend", "nft", "--ipv6", "on"];
    args.extend_from_slice(&flags);
    let out = palisade_in(&ns, &args, Some(&path)).await;
    assert_one_line_error(
        "refused ipv6 rule",
        &out,
        &[
            "ip6tables-nft-restore",
            &format!("line {line}"),
            "ipv6",
            rule,
        ],
    );
    let after = saves(&ns, "nft").await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b, a, "not rolled back:\n{}", diff(b, a));
    }
}

/// A temporary directory every user can read and search (for UID 1337 and wrappers).
fn world_readable_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("palisade-e2e-init-")
        .tempdir()
        .unwrap();
    set_mode(dir.path(), 0o755);
    dir
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

// === the namespace harness ===

/// Two pods on a node bridge reach each other over TCP (the listener sees the client's pod
/// address), and after drop no namespace or link of theirs is left, in the root namespace
/// least of all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pods_reach_each_other_and_vanish_on_drop() {
    let test = "node_pods_reach_each_other_and_vanish_on_drop";
    if !can_run(test, &["bash".to_owned()]) {
        return;
    }
    let Some(python) = tools::python_with("socket").await else {
        skip(test, "python3 not found");
        return;
    };
    let node = Node::new().await;
    let a = node.pod(Ipv4Addr::new(10, 77, 1, 2)).await;
    let b = node.pod(Ipv4Addr::new(10, 77, 1, 3)).await;
    let names: Vec<String> = [node.netns().name(), a.name(), b.name()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for name in &names {
        assert!(netns::list().await.contains(name), "{name} not created");
    }

    let server = "import socket\n\
        s = socket.socket(); s.settimeout(20)\n\
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        s.bind(('0.0.0.0', 8080)); s.listen(1)\n\
        print('ready', flush=True)\n\
        c, peer = s.accept(); c.sendall(('hello ' + peer[0] + '\\n').encode()); c.close()\n";
    let mut listener = b.command(&python);
    listener.args(["-c", server]);
    let mut listener = listener.spawn().unwrap();
    let mut ready = BufReader::new(listener.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(TOOL_LIMIT, ready.next_line())
        .await
        .expect("the listener did not start")
        .unwrap();
    assert_eq!(first.as_deref(), Some("ready"));

    let out = a
        .run(
            "bash",
            ["-c", "exec 3<>/dev/tcp/10.77.1.3/8080; cat <&3"],
            TOOL_LIMIT,
        )
        .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello 10.77.1.2\n",
        "{}",
        output_text(&out)
    );
    let _ = tokio::time::timeout(TOOL_LIMIT, listener.wait()).await;

    drop((a, b, node));
    let left = netns::list().await;
    for name in &names {
        assert!(!left.contains(name), "{name} left behind");
    }
    let ip = netns::ip_binary().unwrap();
    let links = tools::run_ok(&ip, ["-o", "link"], TOOL_LIMIT).await;
    let veth = format!("v{}-", std::process::id());
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&veth),
        "a veth of this process is in the root namespace"
    );
}
