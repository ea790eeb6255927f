//! Independent path validation with Python's `cryptography` (strict RFC 5280 client
//! verifier), when it is installed.

use std::process::Command;

use super::support::*;

/// argv: root, intermediate, leaf, expected SPIFFE ID. Prints `OK` or raises.
const VERIFY_PY: &str = r#"
import sys
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

def load(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())

root, intermediate, leaf = (load(p) for p in sys.argv[1:4])
expected = sys.argv[4]
verified = PolicyBuilder().store(Store([root])).build_client_verifier().verify(leaf, [intermediate])
assert verified.chain[0] == leaf and verified.chain[-1] == root, verified.chain
san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
uris = san.get_values_for_type(x509.UniformResourceIdentifier)
assert uris == [expected], uris
assert san.get_values_for_type(x509.DNSName) == [], "DNS SAN present"
bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
assert bc.ca is False, bc
ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign, ku
print("OK")
"#;

/// Whether `python3` can import the verification API; prints the skip line when not.
fn have_cryptography(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import cryptography.x509.verification"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(&format!("python cryptography not installed ({test})"));
    }
    ok
}

fn run(dir: &TempDir, root: &str, expected: &str) -> (bool, String) {
    let script = dir.write("verify.py", VERIFY_PY);
    let out = Command::new("python3")
        .arg(&script)
        .args([
            dir.join(root),
            dir.join("intermediate.pem"),
            dir.join("leaf.pem"),
        ])
        .arg(expected)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success() && text.trim_end().ends_with("OK"),
        text,
    )
}

#[test]
fn python_cryptography_verifies_issued_leaves() {
    if !have_cryptography("python_cryptography_verifies_issued_leaves") {
        return;
    }
    let (ca, material) = new_ca();
    let identity = id("shop", "payments");
    let (leaf, _) = ca.issue(&identity, HOUR).unwrap();
    let dir = TempDir::new("python");
    dir.write("root.pem", &material.root_cert_pem);
    dir.write("intermediate.pem", &material.ca_cert_pem);
    dir.write("leaf.pem", &leaf.leaf_pem());

    let (ok, out) = run(&dir, "root.pem", identity.as_str());
    assert!(ok, "cryptography refused the leaf: {out}");

    // Leaves signed from a CSR take the same path.
    let key = palisade_certs::WorkloadKey::generate().unwrap();
    let signed = ca
        .sign_csr(&key.csr_pem(&identity).unwrap(), &identity, HOUR)
        .unwrap();
    dir.write("leaf.pem", &signed.leaf_pem());
    let (ok, out) = run(&dir, "root.pem", identity.as_str());
    assert!(ok, "cryptography refused the CSR leaf: {out}");

    // Negative controls: another root, another expected identity.
    let (_, other) = new_ca();
    dir.write("other-root.pem", &other.root_cert_pem);
    let (ok, out) = run(&dir, "other-root.pem", identity.as_str());
    assert!(!ok, "verified against a foreign root: {out}");
    let (ok, out) = run(&dir, "root.pem", id("shop", "other").as_str());
    assert!(!ok, "wrong identity accepted: {out}");
}
