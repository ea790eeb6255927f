//! NetworkPolicy egress on the outbound side: which endpoint of a Service a connection may
//! go to, whether an address outside the mesh may be reached, and the watch that closes an
//! open stream a new policy no longer allows. Every refusal happens before any byte leaves
//! (for a mesh Service, before the peer sidecar is even dialled).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::Outbound;
use crate::http::Failure;
use crate::model::{Endpoint, MeshView, Route};
use crate::netgate::{self, NetConn};
use crate::pool::PeerKey;

/// How long resolving a name outside the mesh for a NetworkPolicy decision may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

// === impl Outbound: NetworkPolicy egress ===

impl Outbound {
    /// The peer sidecar a request or stream for `route` goes to, chosen round robin among
    /// the endpoints NetworkPolicy egress allows (by the endpoint's pod address and the
    /// Service's target port), and the key of its connection. When it allows none, the
    /// refusal is counted and logged.
    pub(super) fn pick_peer<'r>(
        &self,
        view: &MeshView,
        route: &'r Route,
    ) -> Result<(PeerKey, &'r Endpoint), Failure> {
        let policies = &view.netpol;
        let endpoint = if policies.egress_isolated() {
            let allowed = |e: &Endpoint| {
                policies
                    .egress(e.proxy_addr.ip(), route.target_port)
                    .allowed
            };
            match route.pick_allowed(allowed) {
                Some(e) => e,
                None => {
                    // Named in the log and the metric: the first endpoint's decision (they
                    // are all denials by the same isolating policies).
                    let ip = route
                        .endpoints
                        .first()
                        .map_or(IpAddr::from([0, 0, 0, 0]), |e| e.proxy_addr.ip());
                    return Err(self.netpol_refuse(view, NetConn::egress(ip, route.target_port)));
                }
            }
        } else {
            route.pick()
        };
        let key = PeerKey {
            addr: endpoint.proxy_addr,
            identity: endpoint.identity.clone(),
            target_port: route.target_port,
        };
        Ok((key, endpoint))
    }

    /// Counts and logs an egress denial and returns its failure.
    pub(super) fn netpol_refuse(&self, view: &MeshView, conn: NetConn) -> Failure {
        let decision = conn.decide(&view.netpol);
        netgate::record_denial(&self.metrics, view, &conn, &decision, false);
        netgate::failure(view, &decision)
    }

    /// Egress to `ip:port` (outside the mesh, or a peer's pod address), decided now.
    pub(super) fn netpol_address(
        &self,
        view: &MeshView,
        ip: IpAddr,
        port: u16,
    ) -> Result<(), Failure> {
        netgate::admit(&self.metrics, view, &NetConn::egress(ip, port))
            .map_err(|decision| netgate::failure(view, &decision))
    }

    /// Egress to a host outside the mesh that the HTTP client connects to by name: an IP
    /// literal, or the address the app dialled (a captured connection), is decided as it
    /// is; a name must resolve, and every address it resolves to must be allowed (the
    /// client may pick any of them).
    pub(super) async fn netpol_external(
        &self,
        view: &MeshView,
        host: &str,
        port: u16,
        dialled: Option<IpAddr>,
    ) -> Result<(), Failure> {
        if !view.netpol.egress_isolated() {
            return Ok(());
        }
        let host = super::bare_host(host);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.netpol_address(view, ip, port);
        }
        if let Some(ip) = dialled {
            self.netpol_address(view, ip, port)?;
        }
        let addrs = resolve(host, port).await;
        if addrs.is_empty() {
            return Err(Failure::PeerUnavailable {
                peer: format!("{host}:{port}"),
                reason: "the name does not resolve".into(),
            });
        }
        match addrs
            .iter()
            .find(|a| !view.netpol.egress(a.ip(), port).allowed)
        {
            Some(denied) => Err(self.netpol_refuse(view, NetConn::egress(denied.ip(), port))),
            None => Ok(()),
        }
    }

    /// With egress isolated, the address a tunnel to `host:port` outside the mesh connects
    /// to: the first of the name's addresses NetworkPolicy allows (refused, counted and
    /// logged when none is). `None` when egress is not isolated (connect by name).
    pub(super) async fn netpol_external_address(
        &self,
        view: &MeshView,
        host: &str,
        port: u16,
    ) -> Result<Option<SocketAddr>, Failure> {
        if !view.netpol.egress_isolated() {
            return Ok(None);
        }
        let addrs = resolve(host, port).await;
        if let Some(allowed) = addrs
            .iter()
            .find(|a| view.netpol.egress(a.ip(), port).allowed)
        {
            return Ok(Some(*allowed));
        }
        match addrs.first() {
            Some(first) => Err(self.netpol_refuse(view, NetConn::egress(first.ip(), port))),
            None => Err(Failure::PeerUnavailable {
                peer: format!("{host}:{port}"),
                reason: "the name does not resolve".into(),
            }),
        }
    }

    /// Resolves when a new configuration no longer allows egress to `ip:port` (counted and
    /// logged then).
    pub(super) fn netpol_revoked(
        &self,
        ip: IpAddr,
        port: u16,
    ) -> impl Future<Output = ()> + Send + 'static + use<> {
        netgate::revoked(
            self.view.clone(),
            self.metrics.clone(),
            NetConn::egress(ip, port),
        )
    }
}

/// The addresses of `host` (an IP literal is its own), bounded in time; empty on failure.
async fn resolve(host: &str, port: u16) -> Vec<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![SocketAddr::new(ip, port)];
    }
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(found)) => found.collect(),
        Ok(Err(_)) | Err(_) => Vec::new(),
    }
}
