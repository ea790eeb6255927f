//! `palisade install` through the real binary: the output is schema-valid Kubernetes
//! (kubernetes-validate --strict), the CRD schemas accept what the control plane's parser
//! accepts and refuse what it refuses (checked with Python's jsonschema, independent of both),
//! the webhook's caBundle verifies the injector's serving certificate (openssl, Python
//! cryptography, and x509-parser in-process), `--ca-dir` is carried over exactly, and the
//! output equals a golden file once generated key material is masked (`PALISADE_BLESS=1`
//! rewrites it).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use base64::Engine as _;
use palisade_injector::test_util::{find, install_documents as documents};
use serde_json::Value;

use crate::support::procs::{run_palisade, workspace_root};
use crate::support::tools::{self, output_text};

/// Bound on one external tool run.
const TOOL_LIMIT: Duration = Duration::from_secs(120);
/// The image given in tests, so the golden file does not change with the crate version.
const GOLDEN_IMAGE: &str = "ghcr.io/palisade-mesh/palisade:golden";
/// The injector's name as the API server dials it.
const INJECTOR_HOST: &str = "palisade-injector.palisade-system.svc";

// === helpers ===

/// `palisade install args...`, asserting success and a silent stderr; returns stdout.
async fn install(args: &[&str]) -> String {
    let mut all = vec!["install"];
    all.extend_from_slice(args);
    let out = run_palisade(&all).await;
    assert!(
        out.status.success(),
        "palisade {}: {}",
        all.join(" "),
        output_text(&out)
    );
    assert!(
        out.stderr.is_empty(),
        "palisade {}: {}",
        all.join(" "),
        output_text(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or_else(|| panic!("{v} is not a string")))
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Exit status 1, one line on stderr holding `needle`, no panic.
fn assert_one_line_error(what: &str, out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {}", output_text(out));
    assert!(!stderr.contains("panicked"), "{what}: {}", output_text(out));
    assert_eq!(stderr.lines().count(), 1, "{what}: {}", output_text(out));
    assert!(
        stderr.contains(needle),
        "{what}: no {needle:?}: {}",
        output_text(out)
    );
    assert!(
        out.stdout.is_empty(),
        "{what}: printed manifests: {}",
        output_text(out)
    );
}

/// The output with generated key material masked: base64 values of Secrets and caBundle,
/// and PEM blocks. Everything else must be byte-for-byte stable.
fn mask(yaml: &str) -> String {
    let mut out = String::new();
    let mut in_pem = false;
    for line in yaml.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with("-----BEGIN ") {
            in_pem = true;
            out.push_str(&format!("{indent}<generated PEM>\n"));
        }
        if in_pem {
            in_pem = !trimmed.starts_with("-----END ");
            continue;
        }
        let generated = trimmed.split_once(": \"").is_some_and(|(_, v)| {
            let v = v.trim_end_matches('"');
            v.len() >= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        });
        match trimmed.split_once(": ") {
            Some((key, _)) if generated => {
                out.push_str(&format!("{indent}{key}: \"<generated base64>\"\n"))
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Where two texts first differ, with a little context.
fn first_difference(expected: &str, actual: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let at = a
        .iter()
        .zip(&b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let show = |lines: &[&str]| {
        lines[at.saturating_sub(2)..(at + 3).min(lines.len())]
            .iter()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "first difference at line {} (golden {} lines, actual {}):\n  golden:\n{}  actual:\n{}",
        at + 1,
        a.len(),
        b.len(),
        show(&a),
        show(&b)
    )
}

// === tests ===

/// Every object passes kubernetes-validate --strict (Kubernetes' own OpenAPI schemas, of the
/// tool's newest version, 1.30 and 1.27; the CRDs are validated as apiextensions.k8s.io/v1
/// objects), and a typo in a field name makes the same run fail (so --strict really looks at
/// these documents).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_passes_kubernetes_validate_strict() {
    let test = "install::output_passes_kubernetes_validate_strict";
    let Some(validate) = tools::require(test, "kubernetes-validate") else {
        return;
    };
    let yaml = install(&[]).await;
    let count = documents(&yaml).len();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "install.yaml", &yaml);
    // The tool's default (newest) Kubernetes, and older clusters still in wide use.
    for version in [None, Some("1.30.0"), Some("1.27.0")] {
        let mut args = vec!["--strict".to_owned()];
        if let Some(v) = version {
            args.extend(["-k".to_owned(), v.to_owned()]);
        }
        args.push(file.to_str().unwrap().to_owned());
        let out = tools::run_ok(&validate, &args, TOOL_LIMIT).await;
        let what = format!("kubernetes-validate {}", args.join(" "));
        assert!(out.status.success(), "{what}: {}", output_text(&out));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let passed = text
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        assert_eq!(passed, count, "{what}: every document checked: {text}");
        assert!(
            !text.contains("WARN") && !text.contains("ERROR"),
            "{what}: {text}"
        );
    }

    // Control: a misspelt field in the control plane's Deployment.
    let broken = yaml.replacen("readOnlyRootFilesystem:", "readOnlyRootFilesytem:", 1);
    let file = write(dir.path(), "broken.yaml", &broken);
    let out = tools::run_ok(&validate, [Path::new("--strict"), &file], TOOL_LIMIT).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "the control passed: {}",
        output_text(&out)
    );
}

/// The CRD schemas against the control plane's parser (`palisade check`), both ways:
/// every policy document under examples/ and in tests/fixtures/install/valid is accepted by
/// both; each file of tests/fixtures/install/invalid (wrong enum, wrong type, unknown field,
/// missing required field, bad pattern, unsupported Istio feature) is refused by both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_schemas_agree_with_the_control_plane() {
    let test = "install::crd_schemas_agree_with_the_control_plane";
    let Some(python) = tools::python_with("jsonschema, yaml").await else {
        crate::support::skip(test, "python with jsonschema and pyyaml not found");
        return;
    };
    let root = workspace_root();
    let dir = tempfile::tempdir().unwrap();
    let install_file = write(dir.path(), "install.yaml", &install(&[]).await);
    let script = root.join("tests/e2e/install_schema.py");
    let schema_check = |files: Vec<PathBuf>| {
        let (python, script, install_file) = (python.clone(), script.clone(), install_file.clone());
        async move {
            let mut args: Vec<PathBuf> = vec![script, install_file];
            args.extend(files);
            let out = tools::run_ok(&python, &args, TOOL_LIMIT).await;
            assert!(
                out.status.success(),
                "install_schema.py: {}",
                output_text(&out)
            );
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<Value>>()
        }
    };
    let yaml_files = |dir: &Path| -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        files
    };

    // Accepted by both: every directory of examples/ holding YAML, and the valid fixtures.
    let mut accepted_dirs: Vec<PathBuf> = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && !yaml_files(p).is_empty())
        .collect();
    accepted_dirs.sort();
    accepted_dirs.push(root.join("tests/fixtures/install/valid"));
    let mut kinds = std::collections::BTreeSet::new();
    let mut problems = Vec::new();
    for d in &accepted_dirs {
        let shown = d.strip_prefix(root).unwrap().display().to_string();
        let out = run_palisade(&["check", "--config", &shown]).await;
        assert!(
            out.status.success(),
            "palisade check --config {shown}: {}",
            output_text(&out)
        );
        let results = schema_check(yaml_files(d)).await;
        assert!(!results.is_empty(), "{shown}: no policy documents");
        for r in results {
            kinds.insert(r["kind"].as_str().unwrap().to_owned());
            if r["valid"] != true {
                problems.push(format!(
                    "{} #{} ({} {}): the parser accepts it, the schema refuses it: {}",
                    r["file"], r["index"], r["kind"], r["name"], r["errors"]
                ));
            }
        }
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["AuthorizationPolicy", "EgressPolicy", "MeshConfig"],
        "every kind is exercised"
    );

    // Refused by both: each invalid fixture alone in a directory.
    let invalid = yaml_files(&root.join("tests/fixtures/install/invalid"));
    assert!(invalid.len() >= 30, "{} invalid fixtures", invalid.len());
    let results = schema_check(invalid.clone()).await;
    assert_eq!(
        results.len(),
        invalid.len(),
        "one resource document per invalid fixture"
    );
    for (file, r) in invalid.iter().zip(&results) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if r["valid"] != false {
            problems.push(format!("{name}: the schema accepts it"));
        }
        let alone = tempfile::tempdir().unwrap();
        std::fs::copy(file, alone.path().join(&name)).unwrap();
        let out = run_palisade(&["check", "--config", alone.path().to_str().unwrap()]).await;
        if out.status.code() != Some(1) {
            problems.push(format!(
                "{name}: palisade check accepts it: {}",
                output_text(&out)
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "schema and parser disagree:\n{}",
        problems.join("\n")
    );
}

/// The webhook configuration: its caBundle is a CA that verifies the injector's serving
/// certificate for palisade-injector.palisade-system.svc (openssl with hostname and purpose
/// checks, Python cryptography's RFC 5280 server verifier, and the signature in-process),
/// and not for another name; both webhooks select and fail as designed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_ca_verifies_the_injector_certificate() {
    let test = "install::webhook_ca_verifies_the_injector_certificate";
    let docs = documents(&install(&[]).await);
    let cfg = find(&docs, "MutatingWebhookConfiguration", "palisade-injector");
    let hooks = cfg["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2);
    let ca_pem = b64(&hooks[0]["clientConfig"]["caBundle"]);
    assert_eq!(ca_pem, b64(&hooks[1]["clientConfig"]["caBundle"]));
    let secret = find(&docs, "Secret", "palisade-injector-tls");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let cert_pem = b64(&secret["data"]["tls.crt"]);
    assert!(
        String::from_utf8(b64(&secret["data"]["tls.key"]))
            .unwrap()
            .contains("PRIVATE KEY")
    );
    // The Deployment mounts that Secret where its flags point.
    let pod = &find(&docs, "Deployment", "palisade-injector")["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"],
        "palisade-injector-tls"
    );
    assert_eq!(
        pod["containers"][0]["volumeMounts"][0]["mountPath"],
        "/var/run/palisade/tls"
    );

    // In-process: the leaf is signed by the caBundle's key and names the service.
    let (_, ca) = x509_parser::pem::parse_x509_pem(&ca_pem).unwrap();
    let (_, leaf) = x509_parser::pem::parse_x509_pem(&cert_pem).unwrap();
    let ca = ca.parse_x509().unwrap();
    let leaf = leaf.parse_x509().unwrap();
    assert!(ca.is_ca());
    assert!(!leaf.is_ca());
    leaf.verify_signature(Some(ca.public_key())).unwrap();
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert!(
        sans.iter()
            .any(|n| n == &format!("DNSName({INJECTOR_HOST})")),
        "{sans:?}"
    );

    // Failure policies and selectors are checked on the rendered output by the unit tests
    // (`injector-webhook/src/install/tests.rs`); here, the certificates.
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    let leaf_file = dir.path().join("tls.crt");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    std::fs::write(&leaf_file, &cert_pem).unwrap();

    // openssl: a full path validation for a TLS server with that host name.
    if let Some(openssl) = tools::require(test, "openssl") {
        let verify = |host: &str| {
            let args: Vec<String> = [
                "verify",
                "-x509_strict",
                "-purpose",
                "sslserver",
                "-verify_hostname",
                host,
                "-CAfile",
                ca_file.to_str().unwrap(),
                leaf_file.to_str().unwrap(),
            ]
            .map(str::to_owned)
            .to_vec();
            let openssl = openssl.clone();
            async move { tools::run_ok(&openssl, &args, TOOL_LIMIT).await }
        };
        let out = verify(INJECTOR_HOST).await;
        assert!(
            out.status.success(),
            "openssl verify: {}",
            output_text(&out)
        );
        // Control: another service's name does not verify.
        let out = verify("evil.palisade-system.svc").await;
        assert!(
            !out.status.success(),
            "openssl verify accepted another name"
        );
    }

    // Python cryptography: RFC 5280 path validation as a TLS client would do it, stricter
    // than openssl on certificate profiles.
    match tools::python_with("cryptography.x509.verification").await {
        Some(python) => {
            let script = write(dir.path(), "verify_server.py", VERIFY_SERVER_PY);
            for (host, want) in [(INJECTOR_HOST, true), ("evil.palisade-system.svc", false)] {
                let args = [&script, &ca_file, &leaf_file, Path::new(host)];
                let out = tools::run_ok(&python, args, TOOL_LIMIT).await;
                assert_eq!(
                    out.status.success(),
                    want,
                    "cryptography verifier for {host}: {}",
                    output_text(&out)
                );
            }
        }
        None => crate::support::skip(test, "python with cryptography not found"),
    }
}

/// Verifies argv[2] as a TLS server certificate for the name argv[3], trusting argv[1] only.
const VERIFY_SERVER_PY: &str = r#"
import sys
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

ca = x509.load_pem_x509_certificate(open(sys.argv[1], "rb").read())
leaf = x509.load_pem_x509_certificate(open(sys.argv[2], "rb").read())
verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName(sys.argv[3]))
verifier.verify(leaf, [])
print("verified")
"#;

/// `--ca-dir` puts that CA (as `palisade ca init` wrote it) into the Secret and its roots
/// into the trust anchors ConfigMap, unchanged; bad flags are one-line errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_dir_is_carried_over_and_bad_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let out = run_palisade(&["ca", "init", "--out", ca_dir.to_str().unwrap()]).await;
    assert!(
        out.status.success(),
        "palisade ca init: {}",
        output_text(&out)
    );
    let docs = documents(&install(&["--ca-dir", ca_dir.to_str().unwrap()]).await);
    let secret = find(&docs, "Secret", "palisade-ca");
    for name in [
        "root-cert.pem",
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
    ] {
        let file = std::fs::read(ca_dir.join(name)).unwrap();
        assert_eq!(b64(&secret["data"][name]), file, "{name}");
    }
    assert!(
        secret["data"].get("root-key.pem").is_none(),
        "the root key stays offline"
    );
    let anchors = find(&docs, "ConfigMap", "palisade-trust-anchors");
    let root = std::fs::read_to_string(ca_dir.join("root-cert.pem")).unwrap();
    assert_eq!(anchors["data"]["ca.crt"], root.as_str());
    assert_eq!(
        anchors["metadata"]["annotations"]["palisade.dev/trust-domain"],
        "cluster.local"
    );

    // Without --ca-dir a new CA is made for each install; the default image is this version.
    let yaml = install(&["--trust-domain", "prod.example.org"]).await;
    let docs = documents(&yaml);
    let generated = find(&docs, "Secret", "palisade-ca");
    assert_ne!(
        generated["data"]["root-cert.pem"],
        secret["data"]["root-cert.pem"]
    );
    assert_eq!(
        generated["metadata"]["annotations"]["palisade.dev/trust-domain"],
        "prod.example.org"
    );
    let image = format!(
        "ghcr.io/palisade-mesh/palisade:{}",
        env!("CARGO_PKG_VERSION")
    );
    let cp = find(&docs, "Deployment", "palisade-control-plane");
    assert_eq!(
        cp["spec"]["template"]["spec"]["containers"][0]["image"],
        image.as_str()
    );

    // Without cert-chain.pem the chain is the issuing CA alone, as the control plane reads it.
    std::fs::remove_file(ca_dir.join("cert-chain.pem")).unwrap();
    let docs = documents(&install(&["--ca-dir", ca_dir.to_str().unwrap()]).await);
    let secret = find(&docs, "Secret", "palisade-ca");
    let ca_cert = std::fs::read(ca_dir.join("ca-cert.pem")).unwrap();
    assert_eq!(b64(&secret["data"]["cert-chain.pem"]), ca_cert);

    // A CA the control plane would refuse (a key of another CA) is refused here, by file.
    let other = dir.path().join("other");
    let out = run_palisade(&["ca", "init", "--out", other.to_str().unwrap()]).await;
    assert!(
        out.status.success(),
        "palisade ca init: {}",
        output_text(&out)
    );
    std::fs::copy(other.join("ca-key.pem"), ca_dir.join("ca-key.pem")).unwrap();
    let out = run_palisade(&["install", "--ca-dir", ca_dir.to_str().unwrap()]).await;
    assert_one_line_error("--ca-dir with a foreign key", &out, "ca-key.pem");

    let missing = dir.path().join("nothing-here");
    let out = run_palisade(&["install", "--ca-dir", missing.to_str().unwrap()]).await;
    assert_one_line_error("--ca-dir missing", &out, "does not exist");
    let out = run_palisade(&["install", "--trust-domain", "Bad_Domain"]).await;
    assert_one_line_error("--trust-domain", &out, "--trust-domain");
    let out = run_palisade(&["install", "--image", "registry/x:1 evil: true"]).await;
    assert_one_line_error("--image", &out, "is not an image reference");
}

/// The output for fixed flags equals tests/golden/install/install.yaml once generated key
/// material is masked, and two runs differ only in that material. `PALISADE_BLESS=1`
/// rewrites the golden file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_matches_the_golden_file() {
    let args = ["--image", GOLDEN_IMAGE, "--trust-domain", "cluster.local"];
    let first = install(&args).await;
    let second = install(&args).await;
    assert_ne!(first, second, "key material is generated per install");
    let masked = mask(&first);
    assert_eq!(
        masked,
        mask(&second),
        "only generated material differs between installs"
    );
    assert!(!masked.contains("PRIVATE KEY"), "a key escaped the mask");

    let file = workspace_root().join("tests/golden/install/install.yaml");
    if std::env::var("PALISADE_BLESS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, &masked).unwrap();
        return;
    }
    let golden = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        golden == masked,
        "{} differs from `palisade install {}` (PALISADE_BLESS=1 rewrites it); {}",
        file.display(),
        args.join(" "),
        first_difference(&golden, &masked)
    );
}

// === value by value ===

/// Values the schema accepts and the control plane refuses, on purpose: what a pattern
/// cannot say (the path structure of a SPIFFE ID, the operator rules of path templates) is
/// left to the control plane, which names the problem.
const SCHEMA_LOOSER: &[(&str, &str)] = &[
    ("principals", "cluster.local"),
    ("principals", "cluster.local/ns/a/sa/b/"),
    ("principals", "CLUSTER.local/x"),
    ("principals", "cluster.local/ns/./sa"),
    ("principals", "cluster.local/.."),
    ("paths", "/{x}"),
    ("paths", "/a/{*}x"),
    ("paths", "/{**}/{*}"),
    ("paths", "/a/{*}/b*"),
    ("certificateLifetime", "4s"),
    ("certificateLifetime", "2161h"),
];

/// One probe: a field, a value, and the whole document that carries it.
struct Probe {
    field: &'static str,
    value: Value,
    doc: Value,
}

fn policy(kind: &str, name: &str, spec: Value) -> Value {
    serde_json::json!({
        "apiVersion": "palisade.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    })
}

/// Edge cases of every pattern-checked field, each in a document of its own. (Not
/// rustfmt-formatted: one value per line would make the table ten times longer.)
#[rustfmt::skip]
fn probes() -> Vec<Probe> {
    use serde_json::json;
    let long = |n: usize| "a".repeat(n);
    let mut out = Vec::new();
    let mut add = |field: &'static str, value: Value, doc: Value| {
        out.push(Probe { field, value, doc })
    };
    let strings = |values: &[&str]| values.iter().map(|v| json!(v)).collect::<Vec<Value>>();
    let source: &[(&'static str, Vec<Value>)] = &[
        ("principals", strings(&[
            "cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/a/sa/b", "*", "spiffe://*",
            "*/sa/b", "cluster.local/*", "td_x.y/ns/a/sa/b", "cluster.local/ns/a/sa/B",
            "a*b", "", "spiffe://", "cluster.local", "cluster.local/ns/a/sa/b/",
            "cluster.local/ns/%41", "example.com:8080/x", "CLUSTER.local/x",
            "cluster.local/ns/./sa", "cluster.local/..", "*.local/x", "**",
        ])),
        ("namespaces", strings(&[
            "shop", "shop*", "*shop", "*", "-shop", "shop-", "Shop", &long(63), &long(64),
            "sh_op", "*-", "-*", "s.hop",
        ])),
        ("ipBlocks", strings(&[
            "10.0.0.0/8", "10.0.0.1", "::1", "::ffff:10.0.0.1", "fd00::/8", "10.0.0.0/33",
            "10.0.0.0/+8", "10.0.0.0/008", "1.2.3", "fe80::1%eth0", "[::1]", "0.0.0.0/0",
            "10.0.0.0/", "::/128", "::/129", "office",
        ])),
        ("serviceAccounts", strings(&[
            "shop/frontend", "shop/sa.v2", "frontend", "shop/*", "*/x", "shop/", "/x",
            "Shop/a", "a/b/c", "shop/A", "shop/a_b", &format!("{}/x", long(64)),
            &format!("shop/{}", long(64)), "shop/a..b",
        ])),
    ];
    for (field, values) in source {
        for v in values {
            let spec = json!({"rules": [{"from": [{"source": {*field: [v]}}]}]});
            add(field, v.clone(), policy("AuthorizationPolicy", "p", spec));
        }
    }
    let operation: &[(&'static str, Vec<Value>)] = &[
        ("hosts", strings(&[
            "example.com", "Example.COM", "*", "*.example.com", "example.*", "example.com:8080",
            "[::1]:8080", "a_b.com", "a b", "ex*ample", "", "a/b",
        ])),
        ("methods", strings(&[
            "GET", "get", "*", "G*", "*T", "GE T", "M-SEARCH", "G'E", "G`E", "G\"E", "G,E", "G(E",
        ])),
        ("paths", strings(&[
            "/", "/a", "/a/*", "*", "*.html", "/a/{*}", "/a/{**}", "/{*}/b/{**}", "/a?b",
            "/a#b", "a", "/a*b", "/a/%2F", "/{x}", "//", "/a b", "*a?", "/a/{*}x",
            "/{**}/{*}", "/a/{*}/", "/a/{*}/b*",
        ])),
        ("ports", vec![
            json!("80"), json!(80), json!("+80"), json!("0080"), json!("0"), json!(0),
            json!(70000), json!("http"), json!("-1"), json!(" 80"), json!("65535"),
            json!(65535), json!("65536"), json!(1.5), json!(true),
        ]),
    ];
    for (field, values) in operation {
        for v in values {
            let spec = json!({"rules": [{"to": [{"operation": {*field: [v]}}]}]});
            add(field, v.clone(), policy("AuthorizationPolicy", "p", spec));
        }
    }
    for key in [
        "request.headers[x-a]", "request.headers[]", "request.headers[:authority]",
        "source.namespace", "remote.ip", "request.auth.claims[x]", "source.user",
        "request.headers[X_A]", "request.headers[a b]", "destination.port", "request.headers",
    ] {
        let spec = json!({"rules": [{"when": [{"key": key, "values": ["1"]}]}]});
        add("when.key", json!(key), policy("AuthorizationPolicy", "p", spec));
    }
    for name in ["a", "a-b", "A", "a.b", &long(63), &long(64), "-a", "1a"] {
        let mut doc = policy("AuthorizationPolicy", "p", json!({}));
        doc["metadata"]["name"] = json!(name);
        add("metadata.name", json!(name), doc);
    }
    let labels = format!("{}.com", (0..4).map(|_| long(60)).collect::<Vec<_>>().join("."));
    for h in [
        "api.stripe.com", "*.x.com", "192.0.2.1", "::1", "*", "a.*.com", "-a.com", "a-.com",
        "API.com", "a..com", "10.0.0.0/8", "a_b.com", "xn--bcher-kva.example",
        &format!("{}.com", long(63)), &format!("{}.com", long(64)), &labels, "*.", "*.*.com",
    ] {
        add("egress.hosts", json!(h), policy("EgressPolicy", "e", json!({"hosts": [h]})));
    }
    for b in [
        "10.0.0.0/8", "10.0.0.0/0", "10.0.0.1", "::/0", "::/1", "10.0.0.0/01", "10.0.0.0/00",
        "10.0.0.0/33", "x",
    ] {
        add("egress.ipBlocks", json!(b), policy("EgressPolicy", "e", json!({"ipBlocks": [b]})));
    }
    for p in [json!(1), json!(65535), json!(0), json!(65536), json!("443"), json!(-1)] {
        let spec = json!({"hosts": ["a.com"], "ports": [p]});
        add("egress.ports", p, policy("EgressPolicy", "e", spec));
    }
    let mesh: &[(&'static str, &[&str])] = &[
        ("certificateLifetime", &["24h", "1h30m", "5s", "4s", "2160h", "2161h", "24H", "1d", "", "90m0s"]),
        ("trustDomain", &["cluster.local", "a_b", "Cluster", "a:b", "", "a.b-c"]),
        ("rootNamespace", &["istio-system", "Istio", "-a", "a.b"]),
        ("defaultAuthorization", &["deny", "allow", "Deny", "none"]),
    ];
    for (field, values) in mesh {
        for v in *values {
            let mut doc = policy("MeshConfig", "mesh", json!({*field: v}));
            doc["metadata"].as_object_mut().unwrap().remove("namespace");
            add(field, json!(v), doc);
        }
    }
    out
}

/// Every probe above goes through `palisade check` and the CRD schema. The schema never
/// refuses a value the control plane accepts, and it accepts one the control plane refuses
/// only where SCHEMA_LOOSER says so: a pattern or enum drifting from the parser, either way,
/// fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_schemas_agree_with_the_control_plane_value_by_value() {
    let test = "install::crd_schemas_agree_with_the_control_plane_value_by_value";
    let Some(python) = tools::python_with("jsonschema, yaml").await else {
        crate::support::skip(test, "python with jsonschema and pyyaml not found");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let install_file = write(dir.path(), "install.yaml", &install(&[]).await);
    let script = workspace_root().join("tests/e2e/install_schema.py");
    let probes = probes();
    // One directory per probe: each is checked alone (a mesh has one MeshConfig).
    let mut files = Vec::new();
    for (i, p) in probes.iter().enumerate() {
        let sub = dir.path().join(format!("probe-{i:03}"));
        std::fs::create_dir(&sub).unwrap();
        files.push(write(
            &sub,
            "doc.yaml",
            &serde_yaml_ng::to_string(&p.doc).unwrap(),
        ));
    }
    let mut args = vec![script, install_file];
    args.extend(files.iter().cloned());
    let out = tools::run_ok(&python, &args, TOOL_LIMIT).await;
    assert!(
        out.status.success(),
        "install_schema.py: {}",
        output_text(&out)
    );
    let schema: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(schema.len(), probes.len());

    let mut problems = Vec::new();
    let (mut both_accept, mut both_refuse) = (0, 0);
    for ((p, file), s) in probes.iter().zip(&files).zip(&schema) {
        let out = run_palisade(&[
            "check",
            "--config",
            file.parent().unwrap().to_str().unwrap(),
        ])
        .await;
        let parser = out.status.success();
        let by_schema = s["valid"] == true;
        let looser = SCHEMA_LOOSER
            .iter()
            .any(|(f, v)| *f == p.field && p.value.as_str() == Some(*v));
        match (parser, by_schema) {
            (true, true) => both_accept += 1,
            (false, false) => both_refuse += 1,
            (true, false) => problems.push(format!(
                "{} {}: the control plane accepts it, the schema refuses it: {}",
                p.field, p.value, s["errors"]
            )),
            (false, true) if !looser => problems.push(format!(
                "{} {}: the schema accepts it, the control plane refuses it: {}",
                p.field,
                p.value,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            (false, true) => {}
        }
        if looser && (parser || !by_schema) {
            problems.push(format!(
                "{} {}: listed in SCHEMA_LOOSER but no longer looser",
                p.field, p.value
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "schema and parser disagree:\n{}",
        problems.join("\n")
    );
    // Both outcomes are well represented, so the probes test something.
    assert!(
        both_accept >= 50 && both_refuse >= 80,
        "{both_accept} accepted, {both_refuse} refused by both"
    );
}
