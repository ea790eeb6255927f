//! mTLS in memory: rustls client and server connections pumped into each other, no sockets.

use std::sync::Arc;

use palisade_certs::tls::{self, ClientAuth, Credentials};
use palisade_certs::{CaOptions, CertificateAuthority, SpiffeId, TrustBundle};
use rustls::{CertificateError, ClientConnection, Error, ServerConnection};

use super::support::*;

/// Credentials freshly issued by `ca` for `identity`.
fn creds(ca: &CertificateAuthority, identity: &SpiffeId) -> Credentials {
    let (leaf, key) = ca.issue(identity, HOUR).unwrap();
    Credentials::new(&leaf, &key).unwrap()
}

/// Opens a client and a server connection over the given configs and runs the handshake.
fn connect(
    client: rustls::ClientConfig,
    server: rustls::ServerConfig,
) -> (
    Result<(), (Side, Error)>,
    ClientConnection,
    ServerConnection,
) {
    let mut c = ClientConnection::new(Arc::new(client), tls::placeholder_server_name()).unwrap();
    let mut s = ServerConnection::new(Arc::new(server)).unwrap();
    let result = handshake(&mut c, &mut s);
    (result, c, s)
}

struct Mesh {
    ca: CertificateAuthority,
    client_id: SpiffeId,
    server_id: SpiffeId,
}

impl Mesh {
    fn new() -> Self {
        Self {
            ca: new_ca().0,
            client_id: id("shop", "frontend"),
            server_id: id("shop", "payments"),
        }
    }

    fn server(&self, auth: ClientAuth) -> rustls::ServerConfig {
        let c = creds(&self.ca, &self.server_id);
        tls::server_config(&c, self.ca.bundle(), auth, &[palisade_certs::ALPN_H2]).unwrap()
    }

    fn client(&self, expected: &SpiffeId) -> rustls::ClientConfig {
        let c = creds(&self.ca, &self.client_id);
        tls::client_config(
            Some(&c),
            self.ca.bundle(),
            expected.clone(),
            &[palisade_certs::ALPN_H2],
        )
        .unwrap()
    }
}

#[test]
fn mutual_tls_handshake_shows_both_identities() {
    let mesh = Mesh::new();
    let (result, c, s) = connect(
        mesh.client(&mesh.server_id),
        mesh.server(ClientAuth::Required),
    );
    result.unwrap();
    assert_eq!(
        tls::peer_identity(c.peer_certificates()),
        Some(mesh.server_id.clone())
    );
    assert_eq!(
        tls::peer_identity(s.peer_certificates()),
        Some(mesh.client_id.clone())
    );
    assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(s.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(c.alpn_protocol(), Some(palisade_certs::ALPN_H2));
    // The server sent its intermediate, not the root.
    assert_eq!(c.peer_certificates().unwrap().len(), 2);
}

#[test]
fn client_expecting_another_identity_fails() {
    let mesh = Mesh::new();
    let (result, _, _) = connect(
        mesh.client(&id("shop", "not-payments")),
        mesh.server(ClientAuth::Required),
    );
    match result {
        Err((Side::Client, Error::InvalidCertificate(CertificateError::Other(e)))) => {
            let msg = e.to_string();
            assert!(
                msg.contains("presented") && msg.contains("not-payments"),
                "{msg}"
            );
        }
        other => panic!("expected the client to refuse the server, got {other:?}"),
    }
}

#[test]
fn client_without_certificate_needs_optional_auth() {
    let mesh = Mesh::new();
    let anonymous =
        || tls::client_config(None, mesh.ca.bundle(), mesh.server_id.clone(), &[]).unwrap();

    let (result, _, _) = connect(anonymous(), mesh.server(ClientAuth::Required));
    assert!(
        matches!(result, Err((Side::Server, Error::NoCertificatesPresented))),
        "{result:?}"
    );

    let (result, c, s) = connect(anonymous(), mesh.server(ClientAuth::Optional));
    result.unwrap();
    assert_eq!(tls::peer_identity(s.peer_certificates()), None);
    assert_eq!(
        tls::peer_identity(c.peer_certificates()),
        Some(mesh.server_id.clone())
    );

    // Optional still verifies a certificate that is presented.
    let (result, _, s) = connect(
        mesh.client(&mesh.server_id),
        mesh.server(ClientAuth::Optional),
    );
    result.unwrap();
    assert_eq!(
        tls::peer_identity(s.peer_certificates()),
        Some(mesh.client_id.clone())
    );
}

#[test]
fn client_certificate_from_a_foreign_ca_is_refused() {
    let mesh = Mesh::new();
    // A CA generated the same way has the same subject names as the mesh's: webpki tries
    // the mesh root and the signature fails. A CA with other names is an unknown issuer.
    let (same_names, _) = new_ca();
    let other_names = CertificateAuthority::generate(
        td(),
        &CaOptions {
            organization: "Elsewhere".into(),
            ..CaOptions::default()
        },
    )
    .unwrap()
    .0;
    for (foreign_ca, expected) in [
        (&same_names, CertificateError::BadSignature),
        (&other_names, CertificateError::UnknownIssuer),
    ] {
        let foreign = creds(foreign_ca, &mesh.client_id);
        let client = tls::client_config(
            Some(&foreign),
            mesh.ca.bundle(),
            mesh.server_id.clone(),
            &[],
        )
        .unwrap();
        for auth in [ClientAuth::Required, ClientAuth::Optional] {
            let (result, _, _) = connect(client.clone(), mesh.server(auth));
            match result {
                Err((Side::Server, Error::InvalidCertificate(e))) => {
                    assert_eq!(e, expected, "{auth:?}")
                }
                other => panic!("{auth:?}: expected the server to refuse, got {other:?}"),
            }
        }

        // A server from the foreign CA is refused by the client the same way.
        let server_creds = creds(foreign_ca, &mesh.server_id);
        let server = tls::server_config(
            &server_creds,
            foreign_ca.bundle(),
            ClientAuth::Optional,
            &[],
        )
        .unwrap();
        let (result, _, _) = connect(mesh.client(&mesh.server_id), server);
        match result {
            Err((Side::Client, Error::InvalidCertificate(e))) => assert_eq!(e, expected),
            other => panic!("expected the client to refuse, got {other:?}"),
        }
    }
}

#[test]
fn rotation_overlap_bundle_accepts_both_cas() {
    let (old_ca, _) = new_ca();
    let (new_ca, _) = new_ca();
    let both: TrustBundle = old_ca.bundle().merged_with(new_ca.bundle()).unwrap();
    let server_creds = creds(&old_ca, &id("a", "server"));
    let client_creds = creds(&new_ca, &id("a", "client"));
    let server = tls::server_config(&server_creds, &both, ClientAuth::Required, &[]).unwrap();
    let client = tls::client_config(Some(&client_creds), &both, id("a", "server"), &[]).unwrap();
    let (result, _, s) = connect(client, server);
    result.unwrap();
    assert_eq!(
        tls::peer_identity(s.peer_certificates()),
        Some(id("a", "client"))
    );
}

#[test]
fn expired_leaf_is_refused() {
    let (ca, material) = new_ca();
    let server_id = id("shop", "payments");
    let expired = handmade_svid(
        &material,
        "spiffe://cluster.local/ns/shop/sa/frontend",
        -7200,
        -3600,
    );
    let expired = Credentials::from_pem(&expired.chain, &expired.key).unwrap();

    // Expired client certificate: the server refuses.
    let server = tls::server_config(
        &creds(&ca, &server_id),
        ca.bundle(),
        ClientAuth::Required,
        &[],
    )
    .unwrap();
    let client = tls::client_config(Some(&expired), ca.bundle(), server_id.clone(), &[]).unwrap();
    let (result, _, _) = connect(client, server);
    assert!(
        matches!(
            result,
            Err((
                Side::Server,
                Error::InvalidCertificate(CertificateError::Expired)
            ))
        ),
        "{result:?}"
    );

    // Expired server certificate: the client refuses.
    let expired_server = handmade_svid(&material, server_id.as_str(), -7200, -3600);
    let expired_server = Credentials::from_pem(&expired_server.chain, &expired_server.key).unwrap();
    let server =
        tls::server_config(&expired_server, ca.bundle(), ClientAuth::Optional, &[]).unwrap();
    let client = tls::client_config(None, ca.bundle(), server_id.clone(), &[]).unwrap();
    let (result, _, _) = connect(client, server);
    assert!(
        matches!(
            result,
            Err((
                Side::Client,
                Error::InvalidCertificate(CertificateError::Expired)
            ))
        ),
        "{result:?}"
    );

    // Control: the same hand-made path with a current validity is accepted.
    let fresh = handmade_svid(&material, server_id.as_str(), -60, 3600);
    let fresh = Credentials::from_pem(&fresh.chain, &fresh.key).unwrap();
    let server = tls::server_config(&fresh, ca.bundle(), ClientAuth::Optional, &[]).unwrap();
    let client = tls::client_config(None, ca.bundle(), server_id, &[]).unwrap();
    connect(client, server).0.unwrap();
}

#[test]
fn only_tls13_is_negotiated() {
    let mesh = Mesh::new();
    let mut roots = rustls::RootCertStore::empty();
    for root in mesh.ca.bundle().roots() {
        roots.add(root.clone()).unwrap();
    }
    let tls12_only = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (result, _, _) = connect(tls12_only, mesh.server(ClientAuth::Optional));
    assert!(
        matches!(
            result,
            Err((
                Side::Server,
                Error::PeerIncompatible(
                    rustls::PeerIncompatible::SupportedVersionsExtensionRequired
                        | rustls::PeerIncompatible::Tls12NotOfferedOrEnabled
                )
            ))
        ),
        "expected the server to refuse TLS 1.2, got {result:?}"
    );

    // Our client refuses a server that only speaks TLS 1.2.
    let (leaf, key) = mesh.ca.issue(&mesh.server_id, HOUR).unwrap();
    let chain = std::iter::once(leaf.leaf.clone())
        .chain(leaf.chain.iter().cloned())
        .collect();
    let tls12_server = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key.private_key_der())
        .unwrap();
    let (result, _, _) = connect(mesh.client(&mesh.server_id), tls12_server);
    assert!(result.is_err(), "TLS 1.2 server accepted: {result:?}");
}

#[test]
fn credentials_expose_the_leaf_and_check_the_key() {
    let (ca, _) = new_ca();
    let identity = id("a", "b");
    let (leaf, key) = ca.issue(&identity, HOUR).unwrap();
    let c = Credentials::new(&leaf, &key).unwrap();
    assert_eq!(c.identity(), &identity);
    assert_eq!(c.chain().len(), 2);
    assert_eq!(
        (c.not_before(), c.not_after()),
        (leaf.not_before, leaf.not_after)
    );
    assert_eq!(
        c.serial(),
        palisade_certs::svid::inspect(leaf.leaf.as_ref())
            .unwrap()
            .serial
    );

    // The same from PEM.
    let chain = palisade_certs::ca::chain_to_pem(&leaf.leaf, &leaf.chain);
    let from_pem = Credentials::from_pem(&chain, &key.private_key_pem()).unwrap();
    assert_eq!(from_pem.identity(), &identity);

    // A key that does not belong to the leaf is refused up front.
    let other = palisade_certs::WorkloadKey::generate().unwrap();
    let err = Credentials::new(&leaf, &other).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(Credentials::from_pem("", &key.private_key_pem()).is_err());
    assert!(Credentials::from_pem(&chain, "").is_err());
}
