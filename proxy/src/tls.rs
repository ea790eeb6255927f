//! The proxy's TLS material: one immutable [`TlsState`] per (certificate, trust bundle) pair,
//! swapped whole through a `watch` channel when either changes. New connections pick up the
//! new state; established ones keep the one they were verified with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use palisade_certs::tls::{self, ClientAuth, Credentials, TlsError};
use palisade_certs::{ALPN_H2, ALPN_HTTP11, SpiffeId, TrustBundle};
use rustls::{ClientConfig, ServerConfig};

/// ALPN id for opaque TCP carried between sidecars.
pub const ALPN_TCP: &[u8] = b"palisade-tcp";

/// Certificates and derived rustls configurations, valid together.
#[derive(Debug)]
pub struct TlsState {
    creds: Arc<Credentials>,
    bundle: TrustBundle,
    inbound: Arc<ServerConfig>,
    /// One client config per (identity a server must present, ALPN), built on first use.
    clients: Mutex<HashMap<(SpiffeId, Alpn), Arc<ClientConfig>>>,
}

/// What a client connection to a peer sidecar carries: the one ALPN protocol it offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// The shared HTTP/2 connection.
    H2,
    /// Pooled HTTP/1.1.
    Http1,
    /// One opaque TCP stream.
    Tcp,
}

impl Alpn {
    /// The protocol id on the wire.
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => ALPN_H2,
            Alpn::Http1 => ALPN_HTTP11,
            Alpn::Tcp => ALPN_TCP,
        }
    }
}

impl TlsState {
    /// Builds the inbound server configuration for `creds`, verifying clients against `bundle`.
    pub fn new(creds: Arc<Credentials>, bundle: TrustBundle) -> Result<Self, TlsError> {
        let inbound = tls::server_config(
            &creds,
            &bundle,
            ClientAuth::Required,
            &[ALPN_H2, ALPN_HTTP11, ALPN_TCP],
        )?;
        Ok(Self {
            creds,
            bundle,
            inbound: Arc::new(inbound),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The server configuration of the inbound listener.
    pub fn inbound(&self) -> Arc<ServerConfig> {
        self.inbound.clone()
    }

    /// The client configuration offering `alpn` that accepts only a server presenting
    /// `peer`.
    pub fn client(&self, peer: &SpiffeId, alpn: Alpn) -> Result<Arc<ClientConfig>, TlsError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let key = (peer.clone(), alpn);
        if let Some(config) = clients.get(&key) {
            return Ok(config.clone());
        }
        let config = Arc::new(tls::client_config(
            Some(&self.creds),
            &self.bundle,
            peer.clone(),
            &[alpn.id()],
        )?);
        clients.insert(key, config.clone());
        Ok(config)
    }

    /// The workload's current credentials.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.creds
    }

    /// The roots peers are verified against.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }
}
