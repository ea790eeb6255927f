//! Golden files: each `tests/golden/inject*/NAME.review.json` answered by the webhook's pure
//! handler must match `NAME.response.json` (the AdmissionReview answer, its `patch` shown
//! decoded) and, when it patches, `NAME.pod.json` (the pod the patch makes). Each
//! `tests/golden/manifests/NAME.yaml` run through `inject -f` must match `NAME.injected.yaml`.
//! `PALISADE_BLESS=1` rewrites them.
//!
//! The same reviews are applied by an independent RFC 6902 implementation (python
//! `jsonpatch`) in the workspace's e2e suite (`tests/e2e/injection.rs`).

use std::path::{Path, PathBuf};

use palisade_injector::mutate::{Decision, Policy, Settings};
use palisade_injector::review::{self, Answer};
use palisade_injector::test_util::{golden_dir, review_cases};
use palisade_injector::value::{Value, from_json};
use palisade_injector::{inject_stream, patch};

fn bless() -> bool {
    std::env::var("PALISADE_BLESS").is_ok_and(|v| v == "1")
}

/// Compares `actual` with the file, or rewrites it when blessing; collects failures.
fn check(path: &Path, actual: &str, failures: &mut Vec<String>) {
    if bless() {
        std::fs::write(path, actual).unwrap();
        return;
    }
    match std::fs::read_to_string(path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => failures.push(format!(
            "{} differs (PALISADE_BLESS=1 rewrites it):\n{}",
            path.display(),
            diff(&expected, actual)
        )),
        Err(_) => failures.push(format!(
            "{} is missing (PALISADE_BLESS=1 writes it)",
            path.display()
        )),
    }
}

/// The first differing lines, enough to see what changed.
fn diff(expected: &str, actual: &str) -> String {
    let mut out = String::new();
    let (e, a): (Vec<_>, Vec<_>) = (expected.lines().collect(), actual.lines().collect());
    for i in 0..e.len().max(a.len()) {
        let (x, y) = (e.get(i), a.get(i));
        if x != y {
            out.push_str(&format!(
                "line {}:\n- {}\n+ {}\n",
                i + 1,
                x.unwrap_or(&"(none)"),
                y.unwrap_or(&"(none)")
            ));
            if out.lines().count() > 30 {
                break;
            }
        }
    }
    out
}

fn sibling(review: &Path, suffix: &str) -> PathBuf {
    let name = review.to_string_lossy();
    PathBuf::from(name.replace(".review.json", suffix))
}

#[test]
fn reviews_match_golden_answers_and_pods() {
    let settings = Settings::default();
    let mut failures = Vec::new();
    let cases = review_cases();
    assert!(cases.len() >= 10, "golden reviews not found");
    for (path, require) in cases {
        let body = std::fs::read(&path).unwrap();
        let Answer::Review(mut answer) = review::answer(&body, require, &settings) else {
            panic!("{}: not answered as a review", path.display());
        };
        let decoded = review::decoded_patch(&answer);
        // The readable form: the patch decoded in place of its base64.
        if let (Some(ops), Some(Value::Object(response))) = (
            decoded.clone(),
            answer.as_object_mut().and_then(|a| a.get_mut("response")),
        ) {
            response.insert("patch".into(), ops);
        }
        check(
            &sibling(&path, ".response.json"),
            &format!("{}\n", answer.to_json_pretty()),
            &mut failures,
        );
        let pod_path = sibling(&path, ".pod.json");
        let Some(ops) = decoded else {
            assert!(
                !pod_path.exists() || bless(),
                "{} exists but the answer has no patch",
                pod_path.display()
            );
            if bless() && pod_path.exists() {
                std::fs::remove_file(&pod_path).unwrap();
            }
            continue;
        };
        let review = from_json(&body).unwrap();
        let mut pod = review
            .get("request")
            .unwrap()
            .get("object")
            .unwrap()
            .clone();
        apply_json_patch(&mut pod, &ops);
        check(
            &pod_path,
            &format!("{}\n", pod.to_json_pretty()),
            &mut failures,
        );
        // Injecting the injected pod again changes nothing.
        match palisade_injector::mutate::decide(
            &pod,
            if require {
                Policy::RequireAnnotation
            } else {
                Policy::UnlessDisabled
            },
            &settings,
        ) {
            Ok(Decision::Skip { .. }) => {}
            other => failures.push(format!("{}: re-injection gave {other:?}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Applies a JSON Patch array (as the webhook sends it) with the crate's own applier, after
/// turning it back into operations: proves the wire form round-trips.
fn apply_json_patch(doc: &mut Value, ops: &Value) {
    let ops: Vec<patch::PatchOp> = ops
        .as_array()
        .unwrap()
        .iter()
        .map(|op| {
            let path = op.get("path").unwrap().as_str().unwrap();
            let mut pointer = patch::Pointer::root();
            for token in path.split('/').skip(1) {
                pointer = pointer.child(token.replace("~1", "/").replace("~0", "~"));
            }
            let value = op.get("value").unwrap().clone();
            match op.get("op").unwrap().as_str().unwrap() {
                "add" => patch::PatchOp::Add {
                    path: pointer,
                    value,
                },
                "replace" => patch::PatchOp::Replace {
                    path: pointer,
                    value,
                },
                other => panic!("unexpected op {other}"),
            }
        })
        .collect();
    patch::apply(doc, &ops).unwrap();
}

#[test]
fn manifests_match_golden_output() {
    let settings = Settings::default();
    let mut failures = Vec::new();
    let dir = golden_dir().join("manifests");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.to_string_lossy();
            name.ends_with(".yaml") && !name.ends_with(".injected.yaml")
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty());
    for input in inputs {
        let text = std::fs::read_to_string(&input).unwrap();
        let injected = inject_stream(&text, &settings).unwrap();
        let out = PathBuf::from(input.to_string_lossy().replace(".yaml", ".injected.yaml"));
        let mut shown = injected.yaml.clone();
        for w in &injected.warnings {
            shown = format!("# warning: {w}\n{shown}");
        }
        check(&out, &shown, &mut failures);
        // Injecting the output again changes nothing.
        let again = inject_stream(&injected.yaml, &settings).unwrap();
        assert_eq!(again.yaml, injected.yaml, "{}", input.display());
        assert_eq!(again.injected, 0);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn manifest_errors_name_document_and_field() {
    let settings = Settings::default();
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: apps/v1\n\
                kind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  template:\n    \
                metadata:\n      annotations: {palisade.dev/allow-udp-ports: \"53,dns\"}\n    \
                spec:\n      containers: [{name: web, image: nginx}]\n";
    let err = inject_stream(text, &settings).unwrap_err().to_string();
    assert_eq!(
        err,
        "document 2 (Deployment shop/web): spec.template.metadata.annotations[\"palisade.dev/allow-udp-ports\"]: \
         \"53,dns\" has \"dns\", which is not a port (1-65535)"
    );
    let err = inject_stream("a: 1\n---\nb: [\n", &settings)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("document 2: line "), "{err}");
    let err = inject_stream(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: palisade-init, image: x}]\n",
        &settings,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("spec.containers[0].name") && err.contains("palisade-init"),
        "{err}"
    );
}

#[test]
fn templates_without_spec_are_refused_by_name() {
    let settings = Settings::default();
    let err = inject_stream(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    metadata: {labels: {a: b}}\n",
        &settings,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "document 1 (Deployment d): spec.template.spec: missing"
    );
}
