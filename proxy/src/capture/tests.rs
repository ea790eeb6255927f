//! Pure tests of the capture rules: flags → config, config → rules → batch, save output →
//! state, restore errors → batch lines.

use super::save::{self, FamilyStatus};
use super::*;

fn config_with(edit: impl FnOnce(&mut CaptureFlags)) -> CaptureConfig {
    let mut flags = CaptureFlags {
        dns_servers: Some(String::new()),
        ..CaptureFlags::default()
    };
    edit(&mut flags);
    CaptureConfig::from_flags(&flags).unwrap()
}

fn lines(config: &CaptureConfig, family: IpFamily) -> Vec<String> {
    rules(config, family)
        .fresh_batch()
        .text()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The `-A`/`-I` lines of `chain`, in order.
fn chain_lines(all: &[String], chain: &str) -> Vec<String> {
    all.iter()
        .filter(|l| l.starts_with(&format!("-A {chain} ")))
        .cloned()
        .collect()
}

fn position(all: &[String], needle: &str) -> usize {
    all.iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line contains {needle:?} in\n{}", all.join("\n")))
}

// === flags ===

#[test]
fn defaults_are_the_contract_ports_and_uid() {
    let config = config_with(|_| {});
    assert_eq!(config.inbound_port, 15006);
    assert_eq!(config.outbound_port, 15001);
    assert_eq!(config.admin_port, 15000);
    assert_eq!(config.proxy_uid, 1337);
    assert_eq!(config.proxy_gid, None);
    assert_eq!(config.ipv6, Ipv6Mode::Auto);
    assert_eq!(config.backend, None);
    assert_eq!(
        CaptureConfig {
            dns_servers: Vec::new(),
            ..CaptureConfig::default()
        },
        config
    );
}

#[test]
fn lists_are_parsed_trimmed_deduplicated_and_masked() {
    let config = config_with(|f| {
        f.exclude_inbound_ports = " 22, 8080,22,".to_owned();
        f.exclude_outbound_cidrs = "10.1.2.3/8, 192.168.0.7, fd00::1/64".to_owned();
        f.dns_servers = Some("10.96.0.10,fd00::a,10.96.0.10".to_owned());
        f.proxy_gid = Some("1338".to_owned());
        f.backend = "legacy".to_owned();
        f.ipv6 = "off".to_owned();
    });
    assert_eq!(config.exclude_inbound_ports, vec![22, 8080]);
    let nets: Vec<String> = config
        .exclude_outbound_cidrs
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.168.0.7/32", "fd00::/64"]);
    assert_eq!(config.dns_servers.len(), 2);
    assert_eq!(config.proxy_gid, Some(1338));
    assert_eq!(config.backend, Some(Backend::Legacy));
    assert_eq!(config.ipv6, Ipv6Mode::Off);
}

/// A change to the default flags.
type Edit = Box<dyn Fn(&mut CaptureFlags)>;

#[test]
fn bad_values_name_the_flag_and_the_value() {
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|f| f.exclude_outbound_cidrs = "10.0.0.0/8,10.0.0.300/8".to_owned()),
            r#"--exclude-outbound-cidrs: "10.0.0.300/8" is not a CIDR"#,
        ),
        (
            Box::new(|f| f.exclude_inbound_cidrs = "10.0.0.0/33".to_owned()),
            r#"--exclude-inbound-cidrs: "10.0.0.0/33" is not a CIDR"#,
        ),
        (
            Box::new(|f| f.exclude_inbound_ports = "22,70000".to_owned()),
            r#"--exclude-inbound-ports: "70000" is not a port (1-65535)"#,
        ),
        (
            Box::new(|f| f.exclude_outbound_ports = "0".to_owned()),
            r#"--exclude-outbound-ports: "0" is not a port (1-65535)"#,
        ),
        (
            Box::new(|f| f.allow_udp_ports = "x".to_owned()),
            r#"--allow-udp-ports: "x" is not a port (1-65535)"#,
        ),
        (
            Box::new(|f| f.inbound_port = "65536".to_owned()),
            r#"--inbound-port: "65536" is not a port (1-65535)"#,
        ),
        (
            Box::new(|f| f.proxy_uid = "-1".to_owned()),
            r#"--proxy-uid: "-1" is not a numeric id"#,
        ),
        (
            Box::new(|f| f.dns_servers = Some("10.96.0.10,dns.local".to_owned())),
            r#"--dns-servers: "dns.local" is not an IP address"#,
        ),
        (
            Box::new(|f| f.backend = "iptables".to_owned()),
            r#"--backend: "iptables" is not a backend (auto, nft or legacy)"#,
        ),
        (
            Box::new(|f| f.ipv6 = "yes".to_owned()),
            r#"--ipv6: "yes" is not auto, on or off"#,
        ),
        (
            Box::new(|f| {
                f.dns_servers = None;
                f.resolv_conf = Some("/nonexistent/resolv.conf".into());
            }),
            r#"--resolv-conf: "/nonexistent/resolv.conf" cannot be read"#,
        ),
    ];
    for (edit, want) in cases {
        let mut flags = CaptureFlags {
            dns_servers: Some(String::new()),
            ..CaptureFlags::default()
        };
        edit(&mut flags);
        let err = CaptureConfig::from_flags(&flags).unwrap_err().to_string();
        assert!(
            err.starts_with(want),
            "{err:?} does not start with {want:?}"
        );
        assert!(!err.contains('\n'));
    }
    assert_eq!(
        FamilySelection::parse("ip4").unwrap_err().to_string(),
        r#"--family: "ip4" is not a family (ipv4, ipv6 or both)"#
    );
}

#[test]
fn a_control_character_in_a_value_stays_on_one_line() {
    let err = CaptureConfig::from_flags(&CaptureFlags {
        allow_udp_ports: "53\nx".to_owned(),
        dns_servers: Some(String::new()),
        ..CaptureFlags::default()
    })
    .unwrap_err()
    .to_string();
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn resolv_conf_gives_the_nameserver_addresses() {
    let text = "\
# generated
search shop.svc.cluster.local svc.cluster.local
nameserver 10.96.0.10
nameserver   fd00:10:96::a
nameserver fe80::1%eth0
nameserver not-an-address
nameserver 10.96.0.10
options ndots:5
nameserver
 nameserver 10.0.0.53
";
    let servers: Vec<String> = parse_resolv_conf(text)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        servers,
        ["10.96.0.10", "fd00:10:96::a", "fe80::1", "10.0.0.53"]
    );
    assert!(parse_resolv_conf("").is_empty());
}

#[test]
fn ipv6_mode_decides_the_families() {
    assert_eq!(
        families(Ipv6Mode::Auto, true),
        Ok(vec![IpFamily::V4, IpFamily::V6])
    );
    assert_eq!(families(Ipv6Mode::Auto, false), Ok(vec![IpFamily::V4]));
    assert_eq!(families(Ipv6Mode::Off, true), Ok(vec![IpFamily::V4]));
    assert_eq!(
        families(Ipv6Mode::On, true),
        Ok(vec![IpFamily::V4, IpFamily::V6])
    );
    assert_eq!(families(Ipv6Mode::On, false), Err(Ipv6Unavailable));
}

// === rules ===

#[test]
fn default_rules_capture_tcp_with_the_proxy_and_loopback_returned_first() {
    let all = lines(&config_with(|_| {}), IpFamily::V4);
    let inbound = chain_lines(&all, NAT_INBOUND);
    assert_eq!(
        inbound,
        [
            "-A PALISADE_INBOUND -p tcp -m tcp --dport 15006 -m comment --comment \"palisade: proxy inbound port\" -j RETURN",
            "-A PALISADE_INBOUND -p tcp -m tcp --dport 15001 -m comment --comment \"palisade: proxy outbound port\" -j RETURN",
            "-A PALISADE_INBOUND -p tcp -m tcp --dport 15000 -m comment --comment \"palisade: proxy admin port\" -j RETURN",
            "-A PALISADE_INBOUND -p tcp -m comment --comment \"palisade: capture inbound tcp\" -j REDIRECT --to-ports 15006",
        ]
    );
    let outbound = chain_lines(&all, NAT_OUTBOUND);
    assert_eq!(
        outbound,
        [
            "-A PALISADE_OUTBOUND -m owner --uid-owner 1337 -m comment --comment \"palisade: proxy uid\" -j RETURN",
            "-A PALISADE_OUTBOUND -o lo -m comment --comment \"palisade: loopback interface\" -j RETURN",
            "-A PALISADE_OUTBOUND -d 127.0.0.0/8 -m comment --comment \"palisade: loopback address\" -j RETURN",
            "-A PALISADE_OUTBOUND -p tcp -m comment --comment \"palisade: capture outbound tcp\" -j REDIRECT --to-ports 15001",
        ]
    );
    // One jump per built-in chain, inserted first, only for TCP in nat.
    assert!(all.contains(
        &"-I PREROUTING 1 -p tcp -m comment --comment \"palisade: inbound tcp capture\" -j PALISADE_INBOUND".to_owned()
    ));
    assert!(all.contains(
        &"-I OUTPUT 1 -p tcp -m comment --comment \"palisade: outbound tcp capture\" -j PALISADE_OUTBOUND".to_owned()
    ));
    // Every rule is tagged.
    for line in all.iter().filter(|l| l.starts_with('-')) {
        assert!(line.contains("--comment \"palisade: "), "{line}");
    }
}

#[test]
fn default_filter_denies_non_tcp_with_one_drop_per_direction_and_protocol() {
    let all = lines(&config_with(|_| {}), IpFamily::V4);
    for (chain, direction, iface) in [
        (FILTER_INBOUND, "inbound", "-i lo"),
        (FILTER_OUTBOUND, "outbound", "-o lo"),
    ] {
        let rules = chain_lines(&all, chain);
        let comments: Vec<&str> = rules.iter().map(|l| l.split('"').nth(1).unwrap()).collect();
        assert_eq!(
            comments,
            [
                "palisade: tcp passes (captured in nat)".to_owned(),
                "palisade: loopback".to_owned(),
                "palisade: replies and related errors".to_owned(),
                "palisade: icmp fragmentation needed".to_owned(),
                format!("palisade: drop {direction} udp"),
                format!("palisade: drop {direction} icmp"),
                format!("palisade: drop {direction} other"),
            ]
        );
        assert!(rules[1].contains(iface), "{}", rules[1]);
        assert!(rules[3].contains("-p icmp -m icmp --icmp-type 3/4"));
        assert!(rules[4].contains("-p udp -m comment") && rules[4].ends_with("-j DROP"));
        assert!(rules[6].starts_with(&format!("-A {chain} -m comment")));
    }
    assert!(
        all.contains(
            &"-I INPUT 1 -m comment --comment \"palisade: inbound default deny\" -j PALISADE_INPUT"
                .to_owned()
        )
    );
}

#[test]
fn exclusions_gid_resolvers_and_udp_ports_land_in_their_family_only() {
    let config = config_with(|f| {
        f.proxy_gid = Some("1337".to_owned());
        f.exclude_inbound_ports = "22,15000".to_owned();
        f.exclude_inbound_cidrs = "10.244.0.0/16,fd00:244::/64".to_owned();
        f.exclude_outbound_ports = "5432".to_owned();
        f.exclude_outbound_cidrs = "169.254.169.254,fd00:abcd::/64".to_owned();
        f.dns_servers = Some("10.96.0.10,fd00:10:96::a".to_owned());
        f.allow_udp_ports = "4789,123".to_owned();
    });
    let v4 = lines(&config, IpFamily::V4);
    let v6 = lines(&config, IpFamily::V6);

    // gid right after uid, both before loopback.
    let outbound = chain_lines(&v4, NAT_OUTBOUND);
    assert!(
        outbound[1].contains("-m owner --gid-owner 1337"),
        "{}",
        outbound[1]
    );
    assert!(outbound[2].contains("-o lo"));
    // The REDIRECT is last in each nat chain.
    assert!(
        outbound
            .last()
            .unwrap()
            .contains("REDIRECT --to-ports 15001")
    );
    assert!(
        chain_lines(&v4, NAT_INBOUND)
            .last()
            .unwrap()
            .contains("REDIRECT --to-ports 15006")
    );
    // 15000 is already a proxy port: one rule, not two.
    assert_eq!(v4.iter().filter(|l| l.contains("--dport 15000")).count(), 1);
    assert!(v4.iter().any(|l| {
        l.contains("--dport 22 -m comment --comment \"palisade: excluded inbound port\"")
    }));
    assert!(v4.iter().any(|l| l.contains("-s 10.244.0.0/16 -m comment")));
    assert!(
        v4.iter()
            .any(|l| l.contains("-d 169.254.169.254/32 -m comment"))
    );
    assert!(v4.iter().any(|l| l.contains("-p tcp -m tcp --dport 5432")));
    assert!(!v4.iter().any(|l| l.contains("fd00")));
    assert!(v6.iter().any(|l| l.contains("-s fd00:244::/64")));
    assert!(v6.iter().any(|l| l.contains("-d fd00:abcd::/64")));
    assert!(
        !v6.iter()
            .any(|l| l.contains("10.244") || l.contains("169.254"))
    );

    // DNS: TCP not captured, UDP passes the deny, per family.
    assert!(
        v4.iter()
            .any(|l| l
                .starts_with("-A PALISADE_OUTBOUND -d 10.96.0.10/32 -p tcp -m tcp --dport 53 "))
    );
    assert!(v4.iter().any(|l| l.starts_with(
        "-A PALISADE_OUTPUT -d 10.96.0.10/32 -p udp -m udp --dport 53 "
    )));
    assert!(
        v4.iter()
            .any(|l| l.starts_with("-A PALISADE_INPUT -s 10.96.0.10/32 -p udp -m udp --sport 53 "))
    );
    assert!(v6.iter().any(|l| {
        l.starts_with("-A PALISADE_OUTPUT -d fd00:10:96::a/128 -p udp -m udp --dport 53 ")
    }));
    // Allowed UDP ports: destination port, both directions, before the drops.
    for chain in [FILTER_INBOUND, FILTER_OUTBOUND] {
        for port in [4789, 123] {
            let at = position(&v4, &format!("-A {chain} -p udp -m udp --dport {port} "));
            let drop = position(&v4, &format!("-A {chain} -p udp -m comment"));
            assert!(at < drop);
        }
    }
    // Exemptions come before the captures and drops they exempt from.
    assert!(position(&v4, "excluded outbound destination") < position(&v4, "capture outbound tcp"));
}

#[test]
fn ipv6_rules_allow_packet_too_big_and_neighbour_discovery() {
    let v6 = lines(&config_with(|_| {}), IpFamily::V6);
    for chain in [FILTER_INBOUND, FILTER_OUTBOUND] {
        for kind in ["2", "133", "134", "135", "136", "137"] {
            let rule = format!("-A {chain} -p ipv6-icmp -m icmp6 --icmpv6-type {kind} -m comment");
            assert!(v6.iter().any(|l| l.starts_with(&rule)), "missing {rule}");
        }
    }
    assert!(
        v6.iter()
            .any(|l| l.contains("-d ::1/128 -m comment --comment \"palisade: loopback address\""))
    );
    assert!(v6.iter().any(|l| {
        l.contains("-p ipv6-icmp -m comment --comment \"palisade: drop outbound icmpv6\" -j DROP")
    }));
    assert!(
        !v6.iter()
            .any(|l| l.contains("--icmp-type") || l.contains("127.0.0.0"))
    );
}

#[test]
fn the_fresh_batch_declares_chains_then_rules_then_jumps_per_table() {
    let batch = rules(&config_with(|_| {}), IpFamily::V4).fresh_batch();
    let text = batch.text();
    let all: Vec<&str> = text.lines().collect();
    assert_eq!(all[0], "*nat");
    assert_eq!(all[1], ":PALISADE_INBOUND - [0:0]");
    assert_eq!(all[2], ":PALISADE_OUTBOUND - [0:0]");
    assert_eq!(batch.line(1), Some("*nat"));
    assert_eq!(batch.line(0), None);
    assert_eq!(batch.line(batch.len()), Some("COMMIT"));
    assert_eq!(all.iter().filter(|l| **l == "COMMIT").count(), 2);
    let filter = all.iter().position(|l| *l == "*filter").unwrap();
    assert_eq!(all[filter - 1], "COMMIT");
    assert!(all[filter - 3].starts_with("-I PREROUTING 1 "));
    assert!(all[filter - 2].starts_with("-I OUTPUT 1 "));
    assert!(!text.contains("-D "));
}

#[test]
fn a_second_batch_deletes_the_existing_jumps_before_inserting_them_again() {
    let set = rules(&config_with(|_| {}), IpFamily::V4);
    let installed = save::parse(&saved_after(&set)).unwrap();
    let text = set.batch(&installed).text();
    let deletes: Vec<&str> = text.lines().filter(|l| l.starts_with("-D ")).collect();
    assert_eq!(deletes.len(), 4, "{text}");
    assert!(deletes.contains(
        &"-D OUTPUT -p tcp -m comment --comment \"palisade: outbound tcp capture\" -j PALISADE_OUTBOUND"
    ));
    // Deletes come before the inserts of the same table.
    let first_insert = text.lines().position(|l| l.starts_with("-I ")).unwrap();
    let first_delete = text.lines().position(|l| l.starts_with("-D ")).unwrap();
    assert!(first_delete < first_insert);
}

/// What `*-save -c` shows once `set` is installed next to an unrelated rule per table.
fn saved_after(set: &RuleSet) -> String {
    let mut text = String::from("# Generated by iptables-nft-save v1.8.9 (nf_tables)\n");
    for table in &set.tables {
        text.push_str(&format!("*{}\n", table.table.name()));
        text.push_str(":INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [5:300]\n:PREROUTING ACCEPT [0:0]\n");
        for chain in &table.chains {
            text.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for jump in &table.jumps {
            text.push_str(&format!("[7:420] -A {} {}\n", jump.chain, jump.spec()));
        }
        text.push_str("[1:60] -A OUTPUT -d 192.0.2.1/32 -j ACCEPT\n");
        for (i, rule) in table.rules.iter().enumerate() {
            text.push_str(&format!(
                "[{i}:{}] -A {} {}\n",
                i * 100,
                rule.chain,
                rule.spec()
            ));
        }
        text.push_str("COMMIT\n# Completed\n");
    }
    text
}

#[test]
fn removal_takes_out_jumps_then_flushes_then_deletes_and_leaves_the_rest() {
    let set = rules(&config_with(|_| {}), IpFamily::V4);
    let installed = save::parse(&saved_after(&set)).unwrap();
    assert!(installed.has_palisade());
    let text = removal_batch(&installed).unwrap().text();
    assert_eq!(
        text,
        "\
*nat
-D PREROUTING -p tcp -m comment --comment \"palisade: inbound tcp capture\" -j PALISADE_INBOUND
-D OUTPUT -p tcp -m comment --comment \"palisade: outbound tcp capture\" -j PALISADE_OUTBOUND
-F PALISADE_INBOUND
-F PALISADE_OUTBOUND
-X PALISADE_INBOUND
-X PALISADE_OUTBOUND
COMMIT
*filter
-D INPUT -m comment --comment \"palisade: inbound default deny\" -j PALISADE_INPUT
-D OUTPUT -m comment --comment \"palisade: outbound default deny\" -j PALISADE_OUTPUT
-F PALISADE_INPUT
-F PALISADE_OUTPUT
-X PALISADE_INPUT
-X PALISADE_OUTPUT
COMMIT
"
    );
    let untouched =
        save::parse("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n").unwrap();
    assert!(!untouched.has_palisade());
    assert_eq!(removal_batch(&untouched), None);
    assert_eq!(removal_batch(&save::Dump::default()), None);
}

// === save output, status, restore errors ===

#[test]
fn save_output_is_parsed_with_counters_comments_and_targets() {
    let set = rules(&config_with(|_| {}), IpFamily::V4);
    let dump = save::parse(&saved_after(&set)).unwrap();
    let nat = dump.table("nat").unwrap();
    assert_eq!(nat.palisade_chains(), [NAT_INBOUND, NAT_OUTBOUND]);
    let jumps = nat.jumps_into_palisade();
    assert_eq!(jumps.len(), 2);
    assert_eq!(
        jumps[0].counters,
        Some(save::Counters {
            packets: 7,
            bytes: 420
        })
    );
    assert_eq!(jumps[0].target.as_deref(), Some(NAT_INBOUND));
    let redirect = nat.rules_of(NAT_OUTBOUND).last().unwrap();
    assert_eq!(
        redirect.comment.as_deref(),
        Some("palisade: capture outbound tcp")
    );
    assert_eq!(redirect.target.as_deref(), Some("REDIRECT"));
    // The rollback text is the table without the comment lines.
    assert!(nat.text.starts_with("*nat\n:INPUT ACCEPT [0:0]\n"));
    assert!(nat.text.ends_with("COMMIT\n"));
    assert!(!nat.text.contains('#'));
    assert!(
        dump.restore_text(&[Table::Nat, Table::Filter])
            .contains("*filter\n")
    );
}

#[test]
fn save_output_without_commit_or_with_garbage_is_an_error() {
    let err = save::parse("*nat\n:OUTPUT ACCEPT [0:0]\n").unwrap_err();
    assert!(err.to_string().contains("before COMMIT"), "{err}");
    let err = save::parse("*nat\nhello\nCOMMIT\n").unwrap_err();
    assert_eq!(err.line, 2);
    assert!(save::parse("").unwrap().tables.is_empty());
}

#[test]
fn comments_with_escaped_quotes_are_read_whole() {
    let dump = save::parse(
        "*filter\n-A INPUT -m comment --comment \"a \\\"quoted\\\" word\" -j ACCEPT\nCOMMIT\n",
    )
    .unwrap();
    let rule = &dump.tables[0].rules[0];
    assert_eq!(rule.comment.as_deref(), Some("a \"quoted\" word"));
    assert_eq!(rule.target.as_deref(), Some("ACCEPT"));
}

#[test]
fn status_sums_drops_per_family_direction_and_protocol() {
    let text = "\
*filter
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:PALISADE_INPUT - [0:0]
:PALISADE_OUTPUT - [0:0]
[9:900] -A INPUT -m comment --comment \"palisade: inbound default deny\" -j PALISADE_INPUT
[4:400] -A OUTPUT -m comment --comment \"palisade: outbound default deny\" -j PALISADE_OUTPUT
[2:56] -A PALISADE_INPUT -p udp -m comment --comment \"palisade: drop inbound udp\" -j DROP
[0:0] -A PALISADE_INPUT -m comment --comment \"palisade: drop inbound other\" -j DROP
[3:87] -A PALISADE_OUTPUT -p udp -m comment --comment \"palisade: drop outbound udp\" -j DROP
[1:84] -A PALISADE_OUTPUT -p icmp -m comment --comment \"palisade: drop outbound icmp\" -j DROP
COMMIT
";
    let statuses = vec![FamilyStatus {
        family: IpFamily::V4,
        backend: "nft",
        dump: save::parse(text).unwrap(),
    }];
    let drops = save::drops(&statuses);
    assert_eq!(
        drops[&(IpFamily::V4, Direction::Outbound, "udp".to_owned())],
        save::Counters {
            packets: 3,
            bytes: 87
        }
    );
    assert_eq!(
        drops[&(IpFamily::V4, Direction::Inbound, "udp".to_owned())],
        save::Counters {
            packets: 2,
            bytes: 56
        }
    );
    let report = save::status_report(&statuses);
    assert!(
        report.starts_with(
            "ipv4 (iptables-nft):\n       packets        bytes  rule\n  table filter:\n"
        ),
        "{report}"
    );
    assert!(
        report.contains("  ipv4 outbound udp: 3 packets, 87 bytes\n"),
        "{report}"
    );
    assert!(
        report.contains("  ipv4 outbound icmp: 1 packets, 84 bytes\n"),
        "{report}"
    );
    assert!(
        report.contains("  ipv4 inbound other: 0 packets, 0 bytes\n"),
        "{report}"
    );
    assert!(
        report.contains("         9          900  -A INPUT -m comment"),
        "{report}"
    );
    assert_eq!(
        save::status_report(&[]),
        "palisade capture: not installed\n"
    );
}

#[test]
fn restore_errors_name_their_line_in_every_format() {
    assert_eq!(
        save::failed_line("iptables-restore: line 5 failed\n"),
        Some(5)
    );
    assert_eq!(
        save::failed_line(
            "iptables-nft-restore v1.8.9 (nf_tables): \nline 4: RULE_APPEND failed (Invalid argument): rule in chain X\n"
        ),
        Some(4)
    );
    assert_eq!(
        save::failed_line(
            "iptables-restore v1.8.9 (legacy): Couldn't load match `foo':No such file or directory\n\nError occurred at line: 12\nTry `iptables-restore -h' or 'iptables-restore --help' for more information.\n"
        ),
        Some(12)
    );
    assert_eq!(
        save::failed_line("Another app is currently holding the xtables lock"),
        None
    );
    assert_eq!(save::failed_line("multiline text"), None);
}

#[test]
fn dry_run_prints_a_header_and_the_fresh_batch_per_family() {
    let config = config_with(|_| {});
    let text = dry_run(&config, &[IpFamily::V4, IpFamily::V6]);
    let v4 = rules(&config, IpFamily::V4);
    assert!(text.starts_with(&format!(
        "# palisade init: ipv4 batch for iptables-restore --noflush ({} rules)\n*nat\n",
        v4.rule_count()
    )));
    assert!(text.contains(&v4.fresh_batch().text()));
    assert!(text.contains("# palisade init: ipv6 batch for ip6tables-restore --noflush"));
}
