//! Loading a CA from Istio-style files (ca-cert.pem, ca-key.pem, cert-chain.pem,
//! root-cert.pem), and everything that must make loading fail with a message naming the file.

use palisade_certs::tls::{Usage, verify_chain};
use palisade_certs::{CaError, CaFiles, CertificateAuthority};
use rcgen::KeyPair;

use super::support::*;

fn load(dir: &TempDir) -> Result<CertificateAuthority, CaError> {
    CertificateAuthority::load(td(), &CaFiles::in_dir(dir.path()))
}

#[test]
fn generated_ca_written_and_loaded_issues_working_leaves() {
    let (generated, material) = new_ca();
    let dir = TempDir::new("roundtrip");
    let files = material.write_to(dir.path()).unwrap();
    assert_eq!(files, CaFiles::in_dir(dir.path()));
    assert!(files.cert_chain.is_some());

    let loaded = CertificateAuthority::load(td(), &files).unwrap();
    assert_eq!(loaded.bundle(), generated.bundle());
    assert_eq!(loaded.chain(), generated.chain());
    assert_eq!(loaded.not_after(), generated.not_after());

    let (leaf, _) = loaded.issue(&id("a", "b"), HOUR).unwrap();
    // A leaf from the loaded CA verifies against the generated CA's bundle and vice versa.
    verify_chain(&leaf.leaf, &leaf.chain, generated.bundle(), Usage::Server).unwrap();
    let (leaf, _) = generated.issue(&id("a", "b"), HOUR).unwrap();
    verify_chain(&leaf.leaf, &leaf.chain, loaded.bundle(), Usage::Client).unwrap();

    // Without cert-chain.pem the chain is just the issuing certificate.
    std::fs::remove_file(dir.join("cert-chain.pem")).unwrap();
    let files = CaFiles::in_dir(dir.path());
    assert_eq!(files.cert_chain, None);
    let loaded = CertificateAuthority::load(td(), &files).unwrap();
    assert_eq!(loaded.chain(), generated.chain());
}

/// Every file `CaMaterial::write_to` creates.
const WRITTEN: [&str; 5] = [
    "ca-key.pem",
    "root-key.pem",
    "ca-cert.pem",
    "root-cert.pem",
    "cert-chain.pem",
];

#[cfg(unix)]
#[test]
fn key_files_are_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let (_, material) = new_ca();
    let dir = TempDir::new("modes");
    material.write_to(dir.path()).unwrap();
    for name in ["ca-key.pem", "root-key.pem"] {
        let got = std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(got, 0o600, "{name}: {got:o}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("ca-key.pem")).unwrap(),
        material.ca_key_pem
    );
}

#[test]
fn an_existing_file_is_never_overwritten() {
    let (_, material) = new_ca();
    for name in WRITTEN {
        let dir = TempDir::new("exists");
        let path = dir.write(name, "old");
        let err = material.write_to(dir.path()).unwrap_err();
        assert!(
            matches!(&err, CaError::Exists { path: p } if *p == path),
            "{name}: {err:?}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old", "{name}");
        // Nothing else was written either: no half-written CA.
        let entries = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(entries, 1, "{name}");
    }
}

#[cfg(unix)]
#[test]
fn a_symlink_planted_at_a_file_path_is_not_followed() {
    let (_, material) = new_ca();
    for name in WRITTEN {
        let dir = TempDir::new("symlink");
        let elsewhere = TempDir::new("symlink-target");
        // A link to an existing file, and a dangling one that would create a file elsewhere.
        let target = elsewhere.write("victim", "precious");
        let dangling = elsewhere.join("created-through-link");
        for link_to in [&target, &dangling] {
            let link = dir.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(link_to, &link).unwrap();
            let err = material.write_to(dir.path()).unwrap_err();
            assert!(
                matches!(&err, CaError::Exists { path } if *path == link),
                "{name}: {err:?}"
            );
            assert!(
                err.to_string().contains(&link.display().to_string()),
                "{err}"
            );
            assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
            assert!(!dangling.exists(), "{name}: written through the link");
        }
    }
}

#[test]
fn replace_in_swaps_an_existing_ca_without_following_links() {
    let (_, old) = new_ca();
    let (_, new) = new_ca();
    let dir = TempDir::new("replace");
    old.write_to(dir.path()).unwrap();
    #[cfg(unix)]
    let elsewhere = TempDir::new("replace-target");
    #[cfg(unix)]
    let target = {
        let target = elsewhere.write("victim", "precious");
        std::fs::remove_file(dir.join("ca-key.pem")).unwrap();
        std::os::unix::fs::symlink(&target, dir.join("ca-key.pem")).unwrap();
        target
    };
    new.replace_in(dir.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("ca-key.pem")).unwrap(),
        new.ca_key_pem
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("root-cert.pem")).unwrap(),
        new.root_cert_pem
    );
    #[cfg(unix)]
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
}

#[test]
fn missing_file_error_names_the_file() {
    let (_, material) = new_ca();
    for name in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        let dir = TempDir::new("missing");
        let mut files = material.write_to(dir.path()).unwrap();
        let path = dir.join(name);
        std::fs::remove_file(&path).unwrap();
        // cert-chain.pem is optional when absent from the directory, but required if named.
        files.cert_chain = Some(dir.join("cert-chain.pem"));
        let err = CertificateAuthority::load(td(), &files).unwrap_err();
        assert!(matches!(err, CaError::Read { .. }), "{name}: {err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{name}: {msg}");
    }
}

#[test]
fn key_of_another_certificate_is_refused_naming_ca_key() {
    let (_, material) = new_ca();
    let (_, other) = new_ca();
    let dir = TempDir::new("wrong-key");
    material.write_to(dir.path()).unwrap();
    dir.write("ca-key.pem", &other.ca_key_pem);
    let err = load(&dir).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, CaError::Invalid { path, .. } if path.ends_with("ca-key.pem")),
        "{err:?}"
    );
    assert!(
        msg.contains(&dir.join("ca-key.pem").display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("does not match"), "{msg}");

    // Same through from_pem, which names the conventional file.
    let err = CertificateAuthority::from_pem(
        td(),
        &material.ca_cert_pem,
        &other.ca_key_pem,
        None,
        &material.root_cert_pem,
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("ca-key.pem:"), "{err}");

    // Not a key at all.
    dir.write("ca-key.pem", &material.ca_cert_pem);
    let err = load(&dir).unwrap_err();
    assert!(err.to_string().contains("ca-key.pem"), "{err}");
}

#[test]
fn leaf_as_ca_cert_is_refused() {
    let (ca, material) = new_ca();
    let (leaf, key) = ca.issue(&id("a", "b"), HOUR).unwrap();
    let dir = TempDir::new("leaf-as-ca");
    material.write_to(dir.path()).unwrap();
    dir.write("ca-cert.pem", &leaf.leaf_pem());
    dir.write("ca-key.pem", &key.private_key_pem());
    let err = load(&dir).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ca-cert.pem"), "{msg}");
    assert!(msg.contains("not a CA"), "{msg}");
}

#[test]
fn expired_ca_is_refused_mentioning_expiry() {
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let root_params = ca_params("Test root", -86_400 * 10, 86_400 * 365);
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(root_params, &root_key);
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let expired = ca_params("Test expired intermediate", -86_400 * 2, -86_400)
        .signed_by(&ca_key, &root_issuer)
        .unwrap();

    let dir = TempDir::new("expired");
    dir.write("root-cert.pem", &root.pem());
    dir.write("ca-cert.pem", &expired.pem());
    dir.write("ca-key.pem", &ca_key.serialize_pem());
    let err = load(&dir).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ca-cert.pem"), "{msg}");
    assert!(msg.contains("expired"), "{msg}");

    // Not yet valid is refused too.
    let future = ca_params("Test future intermediate", 86_400, 86_400 * 2)
        .signed_by(&ca_key, &root_issuer)
        .unwrap();
    dir.write("ca-cert.pem", &future.pem());
    let msg = load(&dir).unwrap_err().to_string();
    assert!(msg.contains("not valid before"), "{msg}");
}

#[test]
fn intermediate_not_chaining_to_the_root_file_is_refused() {
    let (_, material) = new_ca();
    let (_, other) = new_ca();
    let dir = TempDir::new("wrong-root");
    material.write_to(dir.path()).unwrap();
    dir.write("root-cert.pem", &other.root_cert_pem);
    let err = load(&dir).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ca-cert.pem"), "{msg}");
    assert!(msg.contains("does not chain"), "{msg}");
    assert!(msg.contains("root-cert.pem"), "{msg}");

    // With both roots in the file (a rotation in progress) it loads.
    dir.write(
        "root-cert.pem",
        &format!("{}{}", other.root_cert_pem, material.root_cert_pem),
    );
    let ca = load(&dir).unwrap();
    assert_eq!(ca.bundle().roots().len(), 2);
}

#[test]
fn root_file_must_hold_ca_certificates() {
    let (ca, material) = new_ca();
    let (leaf, _) = ca.issue(&id("a", "b"), HOUR).unwrap();
    let dir = TempDir::new("bad-root");
    material.write_to(dir.path()).unwrap();
    dir.write("root-cert.pem", &leaf.leaf_pem());
    let err = load(&dir).unwrap_err();
    assert!(matches!(err, CaError::Bundle { .. }), "{err:?}");
    assert!(err.to_string().contains("root-cert.pem"), "{err}");

    dir.write("root-cert.pem", "no PEM here");
    let err = load(&dir).unwrap_err();
    assert!(err.to_string().contains("root-cert.pem"), "{err}");

    material.replace_in(dir.path()).unwrap();
    dir.write("ca-cert.pem", "no PEM here");
    let err = load(&dir).unwrap_err();
    assert!(matches!(err, CaError::Pem { .. }), "{err:?}");
    assert!(err.to_string().contains("ca-cert.pem"), "{err}");
}

#[test]
fn root_acting_as_issuer_is_accepted_with_an_empty_chain() {
    let (_, material) = new_ca();
    let ca = CertificateAuthority::from_pem(
        td(),
        &material.root_cert_pem,
        &material.root_key_pem,
        None,
        &material.root_cert_pem,
    )
    .unwrap();
    assert!(ca.chain().is_empty());
    let (leaf, _) = ca.issue(&id("a", "b"), HOUR).unwrap();
    assert!(leaf.chain.is_empty());
    verify_chain(&leaf.leaf, &[], ca.bundle(), Usage::Server).unwrap();
}

/// Rewrites a PKCS#8 P-256 key PEM as openssl's `ecparam -genkey` prints it: an
/// `EC PARAMETERS` block, then the SEC1 `EC PRIVATE KEY` (PKCS#8's inner OCTET STRING).
fn as_openssl_sec1(pkcs8_pem: &str) -> String {
    let pkcs8 = pem::parse(pkcs8_pem).unwrap().into_contents();
    let (_, info) = x509_parser::der_parser::parse_der(&pkcs8).unwrap();
    let sec1 = info.as_sequence().unwrap()[2].as_slice().unwrap();
    let prime256v1 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    format!(
        "{}{}",
        palisade_certs::pem::encode("EC PARAMETERS", &prime256v1),
        palisade_certs::pem::encode("EC PRIVATE KEY", sec1)
    )
}

#[test]
fn sec1_ca_key_after_an_ec_parameters_block_is_accepted() {
    // Regression: ca-key.pem was read with rcgen's `KeyPair::from_pem`, which looks only at the
    // first PEM block and, with ring, only understands PKCS#8.
    let (_, material) = new_ca();
    let sec1 = as_openssl_sec1(&material.ca_key_pem);
    assert!(sec1.starts_with("-----BEGIN EC PARAMETERS-----"));
    let ca = CertificateAuthority::from_pem(
        td(),
        &material.ca_cert_pem,
        &sec1,
        Some(&material.cert_chain_pem),
        &material.root_cert_pem,
    )
    .unwrap();
    let (leaf, _) = ca.issue(&id("a", "b"), HOUR).unwrap();
    verify_chain(&leaf.leaf, &leaf.chain, ca.bundle(), Usage::Client).unwrap();

    // The same for a workload's own key.
    let key = palisade_certs::WorkloadKey::generate().unwrap();
    let reloaded =
        palisade_certs::WorkloadKey::from_pem(&as_openssl_sec1(&key.private_key_pem())).unwrap();
    assert_eq!(
        reloaded.key_pair().public_key_raw(),
        key.key_pair().public_key_raw()
    );
}
