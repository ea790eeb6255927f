//! `palisade init`'s flags come from users (and, in a cluster, from pod annotations): any
//! value must give a rule set or a one-line error naming the flag, never a panic, and a
//! rule set's batch must be lines iptables-restore reads one rule at a time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_proxy::capture::{CaptureConfig, CaptureFlags, IpFamily, rules};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('\u{1f}').map(str::to_owned);
    let mut next = |default: String| fields.next().unwrap_or(default);
    let base = CaptureFlags::default();
    let flags = CaptureFlags {
        inbound_port: next(base.inbound_port),
        outbound_port: next(base.outbound_port),
        admin_port: next(base.admin_port),
        proxy_uid: next(base.proxy_uid),
        proxy_gid: Some(next(String::new())).filter(|g| !g.is_empty()),
        exclude_inbound_ports: next(String::new()),
        exclude_inbound_cidrs: next(String::new()),
        exclude_outbound_ports: next(String::new()),
        exclude_outbound_cidrs: next(String::new()),
        // Always given, so the target never reads this machine's /etc/resolv.conf.
        dns_servers: Some(next(String::new())),
        resolv_conf: None,
        allow_udp_ports: next(String::new()),
        ipv6: next(base.ipv6),
        backend: next(base.backend),
    };
    match CaptureConfig::from_flags(&flags) {
        Ok(config) => {
            for family in [IpFamily::V4, IpFamily::V6] {
                let set = rules(&config, family);
                for table in &set.tables {
                    for rule in table.rules.iter().chain(&table.jumps) {
                        let spec = rule.spec();
                        assert!(!spec.contains('\n') && !spec.contains('\r'), "{spec:?}");
                    }
                }
                let batch = set.fresh_batch();
                assert!(batch.text().lines().all(|l| !l.contains('\r')));
            }
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
    }
});
