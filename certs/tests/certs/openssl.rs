//! Interop with the `openssl` CLI: a CA made by openssl is loaded and issues leaves that
//! `openssl verify -x509_strict` accepts; leaves of a generated CA pass the same check.

use palisade_certs::tls::{Usage, verify_chain};
use palisade_certs::{CaFiles, CertificateAuthority, svid};

use super::support::*;

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no

[dn]
O = Acme
CN = Acme Root CA

[v3_root]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash

[v3_intermediate]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
";

/// Builds an Istio-style CA directory with openssl: a self-signed root and an intermediate
/// signed by it. The intermediate key is left as openssl's `ecparam -genkey` writes it: an
/// `EC PARAMETERS` block followed by a SEC1 `EC PRIVATE KEY`.
fn openssl_ca(dir: &TempDir, curve: &str) {
    let d = dir.path();
    dir.write("openssl.cnf", OPENSSL_CNF);
    openssl(
        d,
        "ecparam -name prime256v1 -genkey -noout -out root-key.pem",
    );
    openssl(
        d,
        "req -x509 -new -key root-key.pem -sha256 -days 3650 -config openssl.cnf \
         -extensions v3_root -out root-cert.pem",
    );
    openssl(d, &format!("ecparam -name {curve} -genkey -out ca-key.pem"));
    openssl(
        d,
        "req -new -key ca-key.pem -sha256 -subj /O=Acme/CN=Acme-Intermediate-CA -out ca.csr",
    );
    openssl(
        d,
        "x509 -req -in ca.csr -CA root-cert.pem -CAkey root-key.pem -set_serial 4242 \
         -days 365 -sha256 -extfile openssl.cnf -extensions v3_intermediate -out ca-cert.pem",
    );
    // Istio's cert-chain.pem: the issuing CA up to and including the root.
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap(),
        std::fs::read_to_string(dir.join("root-cert.pem")).unwrap()
    );
    dir.write("cert-chain.pem", &chain);
}

#[test]
fn openssl_made_ca_is_loaded_and_its_leaves_pass_openssl_verify() {
    if !have_openssl("openssl_made_ca_is_loaded_and_its_leaves_pass_openssl_verify") {
        return;
    }
    let dir = TempDir::new("openssl-ca");
    openssl_ca(&dir, "prime256v1");
    let key_pem = std::fs::read_to_string(dir.join("ca-key.pem")).unwrap();
    assert!(key_pem.contains("EC PARAMETERS") && key_pem.contains("EC PRIVATE KEY"));

    let ca = CertificateAuthority::load(td(), &CaFiles::in_dir(dir.path()))
        .unwrap_or_else(|e| panic!("openssl-made CA refused: {e}"));
    // The root in cert-chain.pem is dropped: peers hold it in the bundle.
    assert_eq!(
        ca.chain(),
        &[der(
            &std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap()
        )]
    );

    let identity = id("shop", "payments");
    let (leaf, _) = ca.issue(&identity, HOUR).unwrap();
    assert_eq!(svid::validate_leaf(leaf.leaf.as_ref()).unwrap(), identity);
    verify_chain(&leaf.leaf, &leaf.chain, ca.bundle(), Usage::Client).unwrap();
    dir.write("leaf.pem", &leaf.leaf_pem());
    dir.write("untrusted.pem", &leaf.chain_pem().concat());

    for purpose in ["sslclient", "sslserver"] {
        let (ok, out) = openssl_verify(
            dir.path(),
            purpose,
            "root-cert.pem",
            "untrusted.pem",
            "leaf.pem",
        );
        assert!(ok && out.contains("leaf.pem: OK"), "{purpose}: {out}");
    }

    // The same leaf against a root it does not chain to: openssl must say no, which shows
    // the check above is not vacuous.
    let (_, other) = new_ca();
    dir.write("other-root.pem", &other.root_cert_pem);
    let (ok, out) = openssl_verify(
        dir.path(),
        "sslclient",
        "other-root.pem",
        "untrusted.pem",
        "leaf.pem",
    );
    assert!(!ok, "{out}");

    // openssl's own view of the leaf fields.
    let text = openssl(
        dir.path(),
        "x509 -in leaf.pem -noout -ext subjectAltName,keyUsage,basicConstraints,extendedKeyUsage",
    );
    assert!(text.contains(&format!("URI:{identity}")), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(!text.contains("DNS:"), "{text}");
}

#[test]
fn openssl_made_ca_with_pkcs8_key_is_loaded() {
    if !have_openssl("openssl_made_ca_with_pkcs8_key_is_loaded") {
        return;
    }
    let dir = TempDir::new("openssl-pkcs8");
    openssl_ca(&dir, "prime256v1");
    openssl(
        dir.path(),
        "pkcs8 -topk8 -nocrypt -in ca-key.pem -out ca-key.p8",
    );
    std::fs::rename(dir.join("ca-key.p8"), dir.join("ca-key.pem")).unwrap();
    let ca = CertificateAuthority::load(td(), &CaFiles::in_dir(dir.path())).unwrap();
    ca.issue(&id("a", "b"), HOUR).unwrap();
}

#[test]
fn openssl_made_p384_intermediate_is_loaded() {
    if !have_openssl("openssl_made_p384_intermediate_is_loaded") {
        return;
    }
    let dir = TempDir::new("openssl-p384");
    openssl_ca(&dir, "secp384r1");
    let ca = CertificateAuthority::load(td(), &CaFiles::in_dir(dir.path()))
        .unwrap_or_else(|e| panic!("P-384 intermediate refused: {e}"));
    let (leaf, _) = ca.issue(&id("a", "b"), HOUR).unwrap();
    verify_chain(&leaf.leaf, &leaf.chain, ca.bundle(), Usage::Server).unwrap();
    dir.write("leaf.pem", &leaf.leaf_pem());
    dir.write("untrusted.pem", &leaf.chain_pem().concat());
    let (ok, out) = openssl_verify(
        dir.path(),
        "sslclient",
        "root-cert.pem",
        "untrusted.pem",
        "leaf.pem",
    );
    assert!(ok, "{out}");
}

#[test]
fn generated_ca_leaves_pass_openssl_verify() {
    if !have_openssl("generated_ca_leaves_pass_openssl_verify") {
        return;
    }
    let (ca, material) = new_ca();
    let dir = TempDir::new("openssl-verify");
    material.write_to(dir.path()).unwrap();

    let (leaf, _) = ca.issue(&id("shop", "frontend"), HOUR).unwrap();
    dir.write("leaf.pem", &leaf.leaf_pem());
    for purpose in ["sslclient", "sslserver"] {
        let (ok, out) = openssl_verify(
            dir.path(),
            purpose,
            "root-cert.pem",
            "cert-chain.pem",
            "leaf.pem",
        );
        assert!(ok && out.contains("leaf.pem: OK"), "{purpose}: {out}");
    }
    // And the CA itself passes strict checks as a chain element.
    let (ok, out) = openssl_verify(
        dir.path(),
        "any",
        "root-cert.pem",
        "root-cert.pem",
        "ca-cert.pem",
    );
    assert!(ok, "{out}");
}

#[test]
fn sec1_workload_key_from_openssl_is_usable() {
    if !have_openssl("sec1_workload_key_from_openssl_is_usable") {
        return;
    }
    let (ca, _) = new_ca();
    let dir = TempDir::new("openssl-sec1");
    openssl(dir.path(), "ecparam -name prime256v1 -genkey -out k.pem");
    let pem_text = std::fs::read_to_string(dir.join("k.pem")).unwrap();
    let key = palisade_certs::WorkloadKey::from_pem(&pem_text).unwrap();
    let identity = id("a", "b");
    let issued = ca
        .sign_csr(&key.csr_pem(&identity).unwrap(), &identity, HOUR)
        .unwrap();
    palisade_certs::Credentials::new(&issued, &key).unwrap();
    // The original SEC1 text works for rustls credentials too.
    let chain = palisade_certs::ca::chain_to_pem(&issued.leaf, &issued.chain);
    palisade_certs::Credentials::from_pem(&chain, &pem_text).unwrap();
}
