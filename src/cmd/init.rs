//! `palisade init`: installs the traffic-capture iptables rules in the pod's network
//! namespace (`--dry-run` prints them, `--remove` undoes them, `--status` shows them with
//! counters). Wiring only: flag strings → `CaptureConfig` → `palisade_proxy::capture`.
//!
//! Every value flag is taken as a string and parsed by the library, so a bad value is a user
//! error (exit 1, one line naming the flag and the value) rather than a usage error (exit 2).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use palisade_proxy::capture::{
    self, CaptureConfig, CaptureFlags, FamilySelection, Ipv6Mode, apply, save,
};

/// Flags of `palisade init`. Each is also read from `PALISADE_INIT_<FLAG>` (e.g.
/// `PALISADE_INIT_EXCLUDE_OUTBOUND_CIDRS`), for init containers configured by environment.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Print the exact `*-restore --noflush` batches that would be applied to a namespace
    /// without Palisade's rules, one per family; changes nothing, needs neither root nor
    /// iptables.
    #[arg(long, conflicts_with_all = ["remove", "status"])]
    pub dry_run: bool,
    /// Take out every rule and chain `palisade init` added, and nothing else (nothing
    /// installed: a no-op success).
    #[arg(long, conflicts_with = "status")]
    pub remove: bool,
    /// Show the installed rules per family and table with packet/byte counters, and the
    /// drops of the non-TCP default deny per direction and protocol.
    #[arg(long)]
    pub status: bool,
    /// With --dry-run: which family's batch to print: ipv4, ipv6 or both.
    #[arg(
        long,
        value_name = "FAMILY",
        default_value = "both",
        requires = "dry_run"
    )]
    pub family: String,
    /// Port inbound TCP is redirected to (the proxy's inbound listener).
    #[arg(long, value_name = "PORT", env = "PALISADE_INIT_INBOUND_PORT",
          default_value_t = palisade_proxy::INBOUND_PORT.to_string())]
    pub inbound_port: String,
    /// Port outbound TCP is redirected to (the proxy's outbound listener).
    #[arg(long, value_name = "PORT", env = "PALISADE_INIT_OUTBOUND_PORT",
          default_value_t = palisade_proxy::OUTBOUND_PORT.to_string())]
    pub outbound_port: String,
    /// The proxy's admin port: never captured inbound, so kubelet probes reach it.
    #[arg(long, value_name = "PORT", env = "PALISADE_INIT_ADMIN_PORT",
          default_value_t = palisade_proxy::ADMIN_PORT.to_string())]
    pub admin_port: String,
    /// UID the proxy runs as; its traffic is never captured.
    #[arg(long, value_name = "UID", env = "PALISADE_INIT_PROXY_UID",
          default_value_t = capture::DEFAULT_PROXY_UID.to_string())]
    pub proxy_uid: String,
    /// GID the proxy runs as; when given, traffic of this group is not captured either.
    #[arg(long, value_name = "GID", env = "PALISADE_INIT_PROXY_GID")]
    pub proxy_gid: Option<String>,
    /// Comma-separated inbound destination ports that are not captured.
    #[arg(
        long,
        value_name = "PORTS",
        env = "PALISADE_INIT_EXCLUDE_INBOUND_PORTS",
        default_value = ""
    )]
    pub exclude_inbound_ports: String,
    /// Comma-separated source CIDRs whose inbound connections are not captured.
    #[arg(
        long,
        value_name = "CIDRS",
        env = "PALISADE_INIT_EXCLUDE_INBOUND_CIDRS",
        default_value = ""
    )]
    pub exclude_inbound_cidrs: String,
    /// Comma-separated outbound destination ports that are not captured.
    #[arg(
        long,
        value_name = "PORTS",
        env = "PALISADE_INIT_EXCLUDE_OUTBOUND_PORTS",
        default_value = ""
    )]
    pub exclude_outbound_ports: String,
    /// Comma-separated destination CIDRs whose outbound connections are not captured.
    #[arg(
        long,
        value_name = "CIDRS",
        env = "PALISADE_INIT_EXCLUDE_OUTBOUND_CIDRS",
        default_value = ""
    )]
    pub exclude_outbound_cidrs: String,
    /// Comma-separated resolver addresses: DNS to them (UDP and TCP 53) passes uncaptured.
    /// [default: the nameserver lines of --resolv-conf]
    #[arg(long, value_name = "IPS", env = "PALISADE_INIT_DNS_SERVERS")]
    pub dns_servers: Option<String>,
    /// File the resolvers are read from when --dns-servers is not given (a missing
    /// /etc/resolv.conf means no resolvers; a missing file given here is an error).
    /// [default: /etc/resolv.conf]
    #[arg(long, value_name = "PATH", env = "PALISADE_INIT_RESOLV_CONF")]
    pub resolv_conf: Option<PathBuf>,
    /// Comma-separated UDP ports let through the non-TCP default deny (destination port,
    /// inbound and outbound).
    #[arg(
        long,
        value_name = "PORTS",
        env = "PALISADE_INIT_ALLOW_UDP_PORTS",
        default_value = ""
    )]
    pub allow_udp_ports: String,
    /// IPv6 rules: auto (when the namespace has IPv6), on (an error without it) or off.
    #[arg(
        long,
        value_name = "MODE",
        env = "PALISADE_INIT_IPV6",
        default_value = "auto"
    )]
    pub ipv6: String,
    /// iptables back end: auto (legacy if legacy tables already hold rules here, else nft if
    /// installed, else legacy), nft or legacy.
    #[arg(
        long,
        value_name = "BACKEND",
        env = "PALISADE_INIT_BACKEND",
        default_value = "auto"
    )]
    pub backend: String,
}

impl InitArgs {
    fn flags(&self) -> CaptureFlags {
        CaptureFlags {
            inbound_port: self.inbound_port.clone(),
            outbound_port: self.outbound_port.clone(),
            admin_port: self.admin_port.clone(),
            proxy_uid: self.proxy_uid.clone(),
            proxy_gid: self.proxy_gid.clone(),
            exclude_inbound_ports: self.exclude_inbound_ports.clone(),
            exclude_inbound_cidrs: self.exclude_inbound_cidrs.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.clone(),
            exclude_outbound_cidrs: self.exclude_outbound_cidrs.clone(),
            dns_servers: self.dns_servers.clone(),
            resolv_conf: self.resolv_conf.clone(),
            allow_udp_ports: self.allow_udp_ports.clone(),
            ipv6: self.ipv6.clone(),
            backend: self.backend.clone(),
        }
    }
}

/// Parses the flags, then prints, installs, removes or reports the capture rules.
pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let config = CaptureConfig::from_flags(&args.flags())?;
    let selection = FamilySelection::parse(&args.family)?;
    let system = apply::System::new(std::env::var_os("PATH"));

    if args.dry_run {
        // `--ipv6 on` prints IPv6 even where this machine has none: the output describes the
        // pod, not the machine it is printed on.
        let available = config.ipv6 == Ipv6Mode::On || system.ipv6_available();
        let families: Vec<_> = capture::families(config.ipv6, available)?
            .into_iter()
            .filter(|f| selection.includes(*f))
            .collect();
        if families.is_empty() {
            anyhow::bail!(
                "--family {}: not applied with --ipv6 {}",
                args.family,
                args.ipv6
            );
        }
        print!("{}", capture::dry_run(&config, &families));
        return Ok(ExitCode::SUCCESS);
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        if args.status {
            let statuses = apply::status(&config, &system).await?;
            print!("{}", save::status_report(&statuses));
        } else if args.remove {
            let removed = apply::remove(&config, &system).await?;
            if removed.from.is_empty() {
                println!("palisade init: nothing to remove (not installed)");
            }
            for (backend, family) in removed.from {
                println!(
                    "palisade init: removed the {family} rules ({} back end)",
                    backend.name()
                );
            }
        } else {
            let installed = apply::install(&config, &system).await?;
            for (family, count) in installed.rules {
                println!(
                    "palisade init: installed {count} {family} rules ({}tables-{})",
                    if family == capture::IpFamily::V4 {
                        "ip"
                    } else {
                        "ip6"
                    },
                    installed.backend.name()
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
