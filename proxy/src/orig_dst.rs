//! The original destination of a connection that `palisade init`'s iptables rules redirected
//! to one of the proxy's ports (`SO_ORIGINAL_DST`, `IP6T_SO_ORIGINAL_DST`): the address and
//! port the caller really dialled, read from the kernel's connection tracking.

use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;

use nix::sys::socket::sockopt::{Ip6tOriginalDst, OriginalDst};
use nix::sys::socket::{SockaddrIn, SockaddrIn6, getsockopt};

/// How a connection reached a proxy listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The caller dialled the listener itself (explicit proxy, peer sidecars on 15006).
    Direct,
    /// The capture rules redirected it; the caller dialled `original`.
    Captured {
        /// The destination the caller dialled.
        original: SocketAddr,
    },
}

/// Whether `socket` was redirected by NAT, and from where. A socket that was not redirected
/// (its tracked destination is its own local address, or the kernel tracks nothing for it
/// because no capture rule is loaded) arrived directly.
pub fn arrival<S: AsFd>(socket: &S, local: SocketAddr) -> Arrival {
    match original_destination(socket, local) {
        Some(original) if !same_socket_addr(original, local) => Arrival::Captured { original },
        _ => Arrival::Direct,
    }
}

fn original_destination<S: AsFd>(socket: &S, local: SocketAddr) -> Option<SocketAddr> {
    let v4 = || {
        getsockopt(socket, OriginalDst)
            .ok()
            .map(|raw| SocketAddr::V4(SocketAddrV4::from(SockaddrIn::from(raw))))
    };
    let v6 = || {
        getsockopt(socket, Ip6tOriginalDst)
            .ok()
            .map(|raw| SocketAddr::V6(SocketAddrV6::from(SockaddrIn6::from(raw))))
    };
    match local.ip() {
        IpAddr::V4(_) => v4(),
        // A dual-stack socket carrying IPv4 is tracked as IPv4.
        IpAddr::V6(ip) if ip.to_ipv4_mapped().is_some() => v4().or_else(v6),
        IpAddr::V6(_) => v6(),
    }
}

/// Equality that sees `::ffff:a.b.c.d` and `a.b.c.d` as one address.
fn same_socket_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unredirected_loopback_connection_arrived_directly() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let _client = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
        let (server, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(arrival(&server, addr), Arrival::Direct);
    }

    #[test]
    fn mapped_addresses_compare_equal() {
        let a: SocketAddr = "[::ffff:10.0.0.1]:80"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let b: SocketAddr = "10.0.0.1:80".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(same_socket_addr(a, b));
        let c: SocketAddr = "10.0.0.1:81".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(!same_socket_addr(b, c));
    }
}
