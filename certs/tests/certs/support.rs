//! Shared helpers: CAs, hand-made certificates, temporary directories, external tools and an
//! in-memory TLS pump.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_certs::{CaMaterial, CaOptions, CertificateAuthority, SpiffeId, TrustDomain};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::ClientConnectionData;
use rustls::server::ServerConnectionData;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

/// The default trust domain.
pub fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

/// `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::for_service_account(&td(), ns, sa).unwrap()
}

/// A fresh CA (root + intermediate) for `cluster.local`.
pub fn new_ca() -> (CertificateAuthority, CaMaterial) {
    CertificateAuthority::generate(td(), &CaOptions::default()).unwrap()
}

/// A fresh CA for another trust domain.
pub fn new_ca_in(trust_domain: &str) -> (CertificateAuthority, CaMaterial) {
    CertificateAuthority::generate(
        TrustDomain::new(trust_domain).unwrap(),
        &CaOptions::default(),
    )
    .unwrap()
}

/// The first certificate of a PEM text.
pub fn der(pem: &str) -> CertificateDer<'static> {
    palisade_certs::pem::decode_certs(pem).unwrap().remove(0)
}

/// The intermediate of `material` as an rcgen issuer, to sign hand-made certificates.
pub fn intermediate_issuer(material: &CaMaterial) -> Issuer<'static, KeyPair> {
    let key = KeyPair::from_pem(&material.ca_key_pem).unwrap();
    Issuer::from_ca_cert_pem(&material.ca_cert_pem, key).unwrap()
}

/// Leaf parameters following the X.509-SVID profile, valid from `from` to `until` (seconds
/// relative to now).
pub fn svid_params(identity: &str, from: i64, until: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Test");
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(identity.try_into().unwrap())];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::seconds(from);
    params.not_after = now + time::Duration::seconds(until);
    params
}

/// CA parameters valid from `from` to `until` (seconds relative to now).
pub fn ca_params(cn: &str, from: i64, until: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::seconds(from);
    params.not_after = now + time::Duration::seconds(until);
    params
}

/// A certificate chain (leaf first) and key, both PEM, for `Credentials::from_pem`.
pub struct PemCreds {
    /// Leaf then intermediates.
    pub chain: String,
    /// PKCS#8 key.
    pub key: String,
}

/// An SVID signed directly by `material`'s intermediate with the given validity.
pub fn handmade_svid(material: &CaMaterial, identity: &str, from: i64, until: i64) -> PemCreds {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = svid_params(identity, from, until)
        .signed_by(&key, &intermediate_issuer(material))
        .unwrap();
    PemCreds {
        chain: format!("{}{}", cert.pem(), material.ca_cert_pem),
        key: key.serialize_pem(),
    }
}

/// A leaf DER parsed by x509-parser; panics on failure (tests only).
pub fn parse_x509(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
    use x509_parser::prelude::FromDer;
    let (rest, cert) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty(), "trailing bytes after certificate");
    cert
}

/// Default leaf lifetime used by tests.
pub const HOUR: Duration = Duration::from_secs(3600);

// === TempDir ===

/// A directory under the system temp dir, removed on drop. Names are unique per process and
/// call, so parallel tests never share one.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/palisade-certs-<pid>-<n>-<label>`.
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("palisade-certs-{}-{n}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `contents` to `name` inside the directory.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// === external tools ===

/// Prints `SKIPPED: <why>` straight to the process's stderr. libtest captures `eprintln!` of
/// passing tests, so a skip written that way would be invisible: a silent pass.
pub fn skip(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// Whether `openssl version` runs; prints the skip line for `test` when it does not.
pub fn have_openssl(test: &str) -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(&format!("openssl not found ({test})"));
    }
    ok
}

/// Runs `openssl <command line>` in `dir` (arguments split on whitespace); panics with its
/// output on failure.
pub fn openssl(dir: &Path, command_line: &str) -> String {
    let args: Vec<&str> = command_line.split_whitespace().collect();
    let out = Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "openssl {command_line} failed: {text}"
    );
    text
}

/// Runs `openssl verify` with the flags an independent validator should need; returns
/// (success, output).
pub fn openssl_verify(
    dir: &Path,
    purpose: &str,
    root: &str,
    chain: &str,
    leaf: &str,
) -> (bool, String) {
    let out = Command::new("openssl")
        .args([
            "verify",
            "-x509_strict",
            "-purpose",
            purpose,
            "-CAfile",
            root,
            "-untrusted",
            chain,
            leaf,
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// === in-memory TLS ===

/// Which end of a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client.
    Client,
    /// The server.
    Server,
}

/// Drives a handshake by moving bytes between the two connections in memory, then sends one
/// message each way. Returns the first side that failed and its error.
pub fn handshake(
    client: &mut rustls::ClientConnection,
    server: &mut rustls::ServerConnection,
) -> Result<(), (Side, rustls::Error)> {
    use std::io::{Read, Write};
    let mut sent_app_data = false;
    for _ in 0..64 {
        let c2s = pump::<ClientConnectionData, ServerConnectionData>(client, server)
            .map_err(|e| (Side::Server, e))?;
        let s2c = pump::<ServerConnectionData, ClientConnectionData>(server, client)
            .map_err(|e| (Side::Client, e))?;
        if client.is_handshaking() || server.is_handshaking() {
            if !c2s && !s2c {
                panic!("handshake stalled");
            }
            continue;
        }
        if !sent_app_data {
            // TLS 1.3 client authentication is judged by the server after the client is done:
            // send data both ways so that a late rejection surfaces here.
            client.writer().write_all(b"ping").unwrap();
            server.writer().write_all(b"pong").unwrap();
            sent_app_data = true;
            continue;
        }
        if c2s || s2c {
            continue;
        }
        let mut got = Vec::new();
        let _ = server.reader().read_to_end(&mut got);
        assert_eq!(got, b"ping");
        got.clear();
        let _ = client.reader().read_to_end(&mut got);
        assert_eq!(got, b"pong");
        return Ok(());
    }
    panic!("handshake did not finish in 64 rounds");
}

/// Moves everything `from` wants to write into `to`; returns whether any byte moved.
fn pump<A, B>(
    from: &mut rustls::ConnectionCommon<A>,
    to: &mut rustls::ConnectionCommon<B>,
) -> Result<bool, rustls::Error> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    if buf.is_empty() {
        return Ok(false);
    }
    let mut slice = &buf[..];
    while !slice.is_empty() {
        to.read_tls(&mut slice).unwrap();
        to.process_new_packets()?;
    }
    Ok(true)
}
