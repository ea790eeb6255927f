//! Interop with the `openssl` CLI: a CA made by openssl is loaded and issues leaves that
//! `openssl verify -x509_strict` accepts; leaves of a generated CA pass the same check; and
//! openssl-made CA material that cannot sign (not a CA, expired, wrong key, no keyCertSign)
//! is refused with an error naming the file and the problem.

use palisade_certs::ca::fmt_unix;
use palisade_certs::tls::{Usage, verify_chain};
use palisade_certs::{CaError, CaFiles, CaRole, CertificateAuthority, UnfitReason, svid};
use time::OffsetDateTime;

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

[v3_middle]
basicConstraints = critical,CA:TRUE,pathlen:1
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[v3_not_ca]
basicConstraints = critical,CA:FALSE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[v3_no_basic_constraints]
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[v3_root_sign_only]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature
subjectKeyIdentifier = hash

[v3_intermediate_sign_only]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[v3_middle_sign_only]
basicConstraints = critical,CA:TRUE,pathlen:1
keyUsage = critical,digitalSignature
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

// === CA material openssl made wrong ===

/// Settings for `openssl ca`: sign whatever it is given, keep the request's subject order,
/// take exact dates. `openssl ca` is used because `-startdate`/`-enddate` may lie in the
/// past, and OpenSSL 3.0 has neither a negative `-days` nor `x509 -not_after`.
const OPENSSL_CA_CNF: &str = "\
[ca]
default_ca = test_ca

[test_ca]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = any
preserve = yes
unique_subject = no
email_in_dn = no

[any]
organizationName = optional
commonName = supplied
";

/// One certificate of a CA made by [`openssl_ca_chain`]: the extension section of
/// `OPENSSL_CNF` it gets, and its validity in seconds from now.
#[derive(Debug, Clone, Copy)]
struct Made {
    extensions: &'static str,
    from: i64,
    until: i64,
}

impl Made {
    /// Valid from a day ago for a year.
    fn valid(extensions: &'static str) -> Self {
        Self {
            extensions,
            from: -DAY,
            until: 365 * DAY,
        }
    }

    /// The same certificate, valid between `from` and `until` (seconds from now).
    fn between(self, from: i64, until: i64) -> Self {
        Self {
            from,
            until,
            ..self
        }
    }
}

const DAY: i64 = 86_400;

/// Seconds from now as the `YYMMDDHHMMSSZ` that `openssl ca -startdate/-enddate` reads,
/// with the Unix time it stands for.
fn asn1_time(from_now: i64) -> (String, i64) {
    let t = OffsetDateTime::now_utc() + time::Duration::seconds(from_now);
    let text = format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}Z",
        t.year() % 100,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    (text, t.unix_timestamp())
}

/// Subject of the certificate at `level` (0 is the root).
fn cn(level: usize, levels: usize) -> String {
    match level {
        0 => "Acme-Root-CA".into(),
        l if l + 1 == levels => "Acme-Issuing-CA".into(),
        l => format!("Acme-Middle-CA-{l}"),
    }
}

/// Builds an Istio-style CA directory with `openssl ca`: `made[0]` is a self-signed root,
/// each next certificate is signed by the one before, the last is the issuing CA. Writes
/// root-cert.pem, ca-cert.pem, ca-key.pem and cert-chain.pem (issuing CA up to and
/// including the root); returns the Unix `notAfter` of each certificate.
fn openssl_ca_chain(dir: &TempDir, made: &[Made]) -> Vec<i64> {
    let d = dir.path();
    dir.write("openssl.cnf", OPENSSL_CNF);
    dir.write("ca.cnf", OPENSSL_CA_CNF);
    dir.write("index.txt", "");
    dir.write("serial", "1000\n");
    let mut not_after = Vec::new();
    for (level, m) in made.iter().enumerate() {
        openssl(
            d,
            &format!("ecparam -name prime256v1 -genkey -noout -out key-{level}.pem"),
        );
        openssl(
            d,
            &format!(
                "req -new -key key-{level}.pem -sha256 -subj /O=Acme/CN={} -out {level}.csr",
                cn(level, made.len())
            ),
        );
        let signer = match level {
            0 => "-selfsign -keyfile key-0.pem".to_owned(),
            l => format!("-cert cert-{}.pem -keyfile key-{}.pem", l - 1, l - 1),
        };
        let (start, _) = asn1_time(m.from);
        let (end, end_unix) = asn1_time(m.until);
        openssl(
            d,
            &format!(
                "ca -batch -notext -config ca.cnf {signer} -in {level}.csr -out cert-{level}.pem \
                 -startdate {start} -enddate {end} -extfile openssl.cnf -extensions {}",
                m.extensions
            ),
        );
        not_after.push(end_unix);
    }
    let cert =
        |level: usize| std::fs::read_to_string(dir.join(&format!("cert-{level}.pem"))).unwrap();
    let issuing = made.len() - 1;
    dir.write("root-cert.pem", &cert(0));
    dir.write("ca-cert.pem", &cert(issuing));
    std::fs::copy(
        dir.join(&format!("key-{issuing}.pem")),
        dir.join("ca-key.pem"),
    )
    .unwrap();
    let chain: String = (0..made.len()).rev().map(cert).collect();
    dir.write("cert-chain.pem", &chain);
    not_after
}

/// The PEM files of the CA directory, as `from_pem` takes them.
fn from_pem(dir: &TempDir) -> Result<CertificateAuthority, CaError> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    CertificateAuthority::from_pem(
        td(),
        &read("ca-cert.pem"),
        &read("ca-key.pem"),
        Some(&read("cert-chain.pem")),
        &read("root-cert.pem"),
    )
}

/// Loads the CA in `dir` from its files and through `from_pem`: both must fail naming
/// `file` (its path from `load`, its conventional name from `from_pem`) and saying the same
/// thing. Returns the error of `load`.
fn refused_naming(dir: &TempDir, file: &str) -> CaError {
    let err = match CertificateAuthority::load(td(), &CaFiles::in_dir(dir.path())) {
        Ok(_) => panic!(
            "CA in {} loaded; expected a refusal naming {file}",
            dir.path().display()
        ),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{}:", dir.join(file).display())),
        "{msg}"
    );
    let pem_err = match from_pem(dir) {
        Ok(_) => panic!("from_pem accepted what load refused: {msg}"),
        Err(e) => e,
    };
    let dir_prefix = format!("{}/", dir.path().display());
    assert_eq!(
        pem_err.to_string(),
        msg.replace(&dir_prefix, ""),
        "load and from_pem disagree"
    );
    err
}

/// Whether `err` is about the certificate in `role` and says `reason`.
fn unfit(err: &CaError, role: CaRole, reason: &UnfitReason) -> bool {
    matches!(err, CaError::UnfitCa { role: r, reason: why, .. } if *r == role && why == reason)
}

/// Loading the CA in `dir` is refused naming `file`, as `role` expired at `not_after`, with
/// `subject` in the message.
fn assert_refused_expired(dir: &TempDir, file: &str, role: CaRole, not_after: i64, subject: &str) {
    let err = refused_naming(dir, file);
    assert!(
        unfit(&err, role, &UnfitReason::Expired { not_after }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(subject), "{msg}");
    assert!(
        msg.contains(&format!("expired at {}", fmt_unix(not_after))),
        "{msg}"
    );
}

/// Loading the CA in `dir` is refused naming `file`, as the certificate in `role` lacks
/// keyCertSign, with each of `said` in the message.
fn assert_refused_without_key_cert_sign(dir: &TempDir, file: &str, role: CaRole, said: &[&str]) {
    let err = refused_naming(dir, file);
    assert!(unfit(&err, role, &UnfitReason::NoKeyCertSign), "{err:?}");
    let msg = err.to_string();
    for s in said.iter().chain(&["keyCertSign"]) {
        assert!(msg.contains(s), "{msg}");
    }
}

#[test]
fn openssl_ca_made_with_exact_dates_is_loaded() {
    // The control for the refusals below: the same builder with sound extensions and dates
    // makes a CA that loads, with two levels and with three.
    if !have_openssl("openssl_ca_made_with_exact_dates_is_loaded") {
        return;
    }
    for made in [
        &[Made::valid("v3_root"), Made::valid("v3_intermediate")][..],
        &[
            Made::valid("v3_root"),
            Made::valid("v3_middle"),
            Made::valid("v3_intermediate"),
        ][..],
    ] {
        let dir = TempDir::new("openssl-ca-dates");
        let not_after = openssl_ca_chain(&dir, made);
        let ca = CertificateAuthority::load(td(), &CaFiles::in_dir(dir.path()))
            .unwrap_or_else(|e| panic!("{} levels: {e}", made.len()));
        assert_eq!(ca.not_after(), *not_after.last().unwrap());
        assert_eq!(ca.chain().len(), made.len() - 1);
        from_pem(&dir).unwrap();
        let (leaf, _) = ca.issue(&id("shop", "payments"), HOUR).unwrap();
        dir.write("leaf.pem", &leaf.leaf_pem());
        dir.write("untrusted.pem", &leaf.chain_pem().concat());
        let (ok, out) = openssl_verify(
            dir.path(),
            "sslclient",
            "root-cert.pem",
            "untrusted.pem",
            "leaf.pem",
        );
        assert!(ok, "{} levels: {out}", made.len());
    }
}

#[test]
fn openssl_issuing_cert_that_is_not_a_ca_is_refused() {
    if !have_openssl("openssl_issuing_cert_that_is_not_a_ca_is_refused") {
        return;
    }
    for (extensions, reason, says) in [
        ("v3_not_ca", UnfitReason::NotCa, "basicConstraints cA=false"),
        (
            "v3_no_basic_constraints",
            UnfitReason::NoBasicConstraints,
            "no basicConstraints extension",
        ),
    ] {
        let dir = TempDir::new("openssl-not-ca");
        openssl_ca_chain(&dir, &[Made::valid("v3_root"), Made::valid(extensions)]);
        let err = refused_naming(&dir, "ca-cert.pem");
        assert!(unfit(&err, CaRole::Issuing, &reason), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("CN=Acme-Issuing-CA"), "{extensions}: {msg}");
        assert!(msg.contains("not a CA certificate"), "{extensions}: {msg}");
        assert!(msg.contains(says), "{extensions}: {msg}");
    }
}

#[test]
fn openssl_expired_intermediate_is_refused() {
    if !have_openssl("openssl_expired_intermediate_is_refused") {
        return;
    }
    let dir = TempDir::new("openssl-expired-issuing");
    let not_after = openssl_ca_chain(
        &dir,
        &[
            Made::valid("v3_root"),
            Made::valid("v3_intermediate").between(-10 * DAY, -DAY),
        ],
    );
    assert_refused_expired(
        &dir,
        "ca-cert.pem",
        CaRole::Issuing,
        not_after[1],
        "CN=Acme-Issuing-CA",
    );
}

#[test]
fn openssl_expired_root_is_refused() {
    // webpki never looks at a trust anchor's dates, so a leaf of this CA would verify in
    // every sidecar; openssl, Go and browsers would refuse it. Loading must refuse first.
    if !have_openssl("openssl_expired_root_is_refused") {
        return;
    }
    let dir = TempDir::new("openssl-expired-root");
    let not_after = openssl_ca_chain(
        &dir,
        &[
            Made::valid("v3_root").between(-30 * DAY, -DAY),
            Made::valid("v3_intermediate"),
        ],
    );
    let (ok, out) = openssl_verify(
        dir.path(),
        "any",
        "root-cert.pem",
        "root-cert.pem",
        "ca-cert.pem",
    );
    assert!(!ok && out.contains("expired"), "openssl: {out}");
    assert_refused_expired(
        &dir,
        "root-cert.pem",
        CaRole::Root(0),
        not_after[0],
        "CN=Acme-Root-CA",
    );
    assert!(
        refused_naming(&dir, "root-cert.pem")
            .to_string()
            .contains("root 0")
    );
}

#[test]
fn openssl_expired_middle_intermediate_is_refused_naming_the_chain_file() {
    if !have_openssl("openssl_expired_middle_intermediate_is_refused_naming_the_chain_file") {
        return;
    }
    let dir = TempDir::new("openssl-expired-middle");
    let not_after = openssl_ca_chain(
        &dir,
        &[
            Made::valid("v3_root"),
            Made::valid("v3_middle").between(-10 * DAY, -DAY),
            Made::valid("v3_intermediate"),
        ],
    );
    // Before, this was refused only by the self-test, as "ca-cert.pem ... does not chain".
    assert_refused_expired(
        &dir,
        "cert-chain.pem",
        CaRole::Intermediate,
        not_after[1],
        "CN=Acme-Middle-CA-1",
    );
}

#[test]
fn openssl_ca_key_of_another_key_pair_is_refused() {
    if !have_openssl("openssl_ca_key_of_another_key_pair_is_refused") {
        return;
    }
    let dir = TempDir::new("openssl-other-key");
    openssl_ca_chain(
        &dir,
        &[Made::valid("v3_root"), Made::valid("v3_intermediate")],
    );
    // A key as `ecparam -genkey` writes it (EC PARAMETERS, then SEC1), so the refusal is
    // about whose key it is, not about its format.
    openssl(
        dir.path(),
        "ecparam -name prime256v1 -genkey -out ca-key.pem",
    );
    let err = refused_naming(&dir, "ca-key.pem");
    let msg = err.to_string();
    assert!(
        msg.contains("private key does not match the certificate in"),
        "{msg}"
    );
    assert!(msg.contains("ca-cert.pem"), "{msg}");

    // The root's key is another key too, however closely related.
    std::fs::copy(dir.join("key-0.pem"), dir.join("ca-key.pem")).unwrap();
    let msg = refused_naming(&dir, "ca-key.pem").to_string();
    assert!(msg.contains("does not match"), "{msg}");
}

#[test]
fn openssl_intermediate_without_key_cert_sign_is_refused() {
    if !have_openssl("openssl_intermediate_without_key_cert_sign_is_refused") {
        return;
    }
    let dir = TempDir::new("openssl-issuing-sign-only");
    openssl_ca_chain(
        &dir,
        &[
            Made::valid("v3_root"),
            Made::valid("v3_intermediate_sign_only"),
        ],
    );
    assert_refused_without_key_cert_sign(
        &dir,
        "ca-cert.pem",
        CaRole::Issuing,
        &["CN=Acme-Issuing-CA"],
    );

    // The same one level up, in cert-chain.pem: webpki ignores key usage, so only this
    // check keeps such a chain from reaching peers that do not.
    let dir = TempDir::new("openssl-middle-sign-only");
    openssl_ca_chain(
        &dir,
        &[
            Made::valid("v3_root"),
            Made::valid("v3_middle_sign_only"),
            Made::valid("v3_intermediate"),
        ],
    );
    assert_refused_without_key_cert_sign(
        &dir,
        "cert-chain.pem",
        CaRole::Intermediate,
        &["CN=Acme-Middle-CA-1"],
    );
}

#[test]
fn openssl_root_without_key_cert_sign_is_refused() {
    if !have_openssl("openssl_root_without_key_cert_sign_is_refused") {
        return;
    }
    let dir = TempDir::new("openssl-root-sign-only");
    openssl_ca_chain(
        &dir,
        &[
            Made::valid("v3_root_sign_only"),
            Made::valid("v3_intermediate"),
        ],
    );
    // openssl refuses the chain (webpki, which ignores a trust anchor's key usage, would not).
    let (ok, out) = openssl_verify(
        dir.path(),
        "any",
        "root-cert.pem",
        "root-cert.pem",
        "ca-cert.pem",
    );
    assert!(
        !ok && out.contains("key usage does not include certificate signing"),
        "openssl: {out}"
    );
    assert_refused_without_key_cert_sign(
        &dir,
        "root-cert.pem",
        CaRole::Root(0),
        &["root 0", "CN=Acme-Root-CA"],
    );
}

/// `palisade ca rotate --new` takes a CA made by openssl (Istio's file names, cert-chain.pem
/// ending in the root); an openssl CA whose key does not match is refused before anything in
/// the CA directory changes.
#[test]
fn openssl_made_ca_can_be_rotated_to_and_an_unfit_one_changes_nothing() {
    use palisade_certs::CaState;
    use palisade_certs::rotation::{self, Stage};
    if !have_openssl("openssl_made_ca_can_be_rotated_to_and_an_unfit_one_changes_nothing") {
        return;
    }
    let current = TempDir::new("openssl-rotate-current");
    new_ca().1.replace_in(current.path()).unwrap();
    let before = CaState::read_dir(current.path()).unwrap().files().clone();

    // Unfit: the intermediate's key replaced by another openssl key.
    let unfit = TempDir::new("openssl-rotate-unfit");
    openssl_ca(&unfit, "prime256v1");
    openssl(
        unfit.path(),
        "ecparam -name prime256v1 -genkey -out ca-key.pem",
    );
    let files = rotation::read_generation(unfit.path()).unwrap();
    let err = CaState::read_dir(current.path())
        .unwrap()
        .begin(&td(), unfit.path(), &files, 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&unfit.join("ca-key.pem").display().to_string())
            && err.contains("does not match"),
        "{err}"
    );
    assert_eq!(CaState::read_dir(current.path()).unwrap().files(), &before);

    let good = TempDir::new("openssl-rotate-good");
    openssl_ca(&good, "prime256v1");
    let files = rotation::read_generation(good.path()).unwrap();
    let (record, changes) = CaState::read_dir(current.path())
        .unwrap()
        .begin(&td(), good.path(), &files, 1)
        .unwrap();
    rotation::apply_to_dir(current.path(), &changes).unwrap();
    let one = CaState::read_dir(current.path())
        .unwrap()
        .active(&td())
        .unwrap();
    assert_eq!(one.rotation.unwrap().stage, Stage::TrustNewRoot);
    assert_eq!(one.ca.bundle().roots().len(), 2);
    let (_, changes) = CaState::read_dir(current.path())
        .unwrap()
        .advance(Stage::IssueFromNew)
        .unwrap();
    rotation::apply_to_dir(current.path(), &changes).unwrap();
    let two = CaState::read_dir(current.path())
        .unwrap()
        .active(&td())
        .unwrap();
    assert_eq!(two.ca.issuer_fingerprint(), record.new_issuer);
    let (leaf, _) = two.ca.issue(&id("shop", "web"), HOUR).unwrap();
    dir_verify(&good, &leaf);
}

/// `openssl verify` accepts `leaf` against the root of the openssl CA in `dir`.
fn dir_verify(dir: &TempDir, leaf: &palisade_certs::IssuedLeaf) {
    dir.write("rotated-leaf.pem", &leaf.leaf_pem());
    dir.write("rotated-untrusted.pem", &leaf.chain_pem().concat());
    let (ok, out) = openssl_verify(
        dir.path(),
        "sslserver",
        "root-cert.pem",
        "rotated-untrusted.pem",
        "rotated-leaf.pem",
    );
    assert!(ok, "openssl verify: {out}");
}
