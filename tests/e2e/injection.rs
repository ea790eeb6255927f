//! Sidecar injection checked by tools nobody on the team wrote: every golden AdmissionReview's
//! patch applied by python `jsonpatch` (an independent RFC 6902 implementation) gives the
//! golden pod and re-injecting it changes nothing; `palisade inject` output and the injected
//! pods pass `kubernetes-validate --strict`; YAML 1.1 read and written as python `yaml` (a
//! YAML 1.1 reader) reads it; and the real `palisade injector` process answers curl over
//! HTTPS, then stops on SIGINT.

use std::path::PathBuf;
use std::time::Duration;

use palisade_injector::review::{self, Answer};
use palisade_injector::test_util::{golden_dir, review_cases};
use palisade_injector::value::{Value, from_json};
use palisade_injector::{Settings, yaml};

use crate::support::procs::{ChildGuard, palisade_bin, run_palisade};
use crate::support::tools::{self, output_text};
use crate::support::{Block, poll, skip};

const TOOL_LIMIT: Duration = Duration::from_secs(120);

fn answer(body: &[u8], require: bool) -> Value {
    match review::answer(body, require, &Settings::default()) {
        Answer::Review(v) => v,
        Answer::BadRequest(m) => panic!("not answered: {m}"),
    }
}

/// Applies each golden review's real (base64) patch with python `jsonpatch` and compares the
/// result with the golden pod; the patched pods are then injected again: no patch.
#[tokio::test]
async fn golden_patches_apply_with_python_jsonpatch() {
    const TEST: &str = "injection::golden_patches_apply_with_python_jsonpatch";
    let Some(python) = tools::python_with("jsonpatch").await else {
        skip(TEST, "no python with the jsonpatch module");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for (i, (path, require)) in review_cases().into_iter().enumerate() {
        let body = std::fs::read(&path).unwrap();
        let answer = answer(&body, require);
        if review::decoded_patch(&answer).is_none() {
            continue;
        }
        let golden_pod = PathBuf::from(path.to_string_lossy().replace(".review.json", ".pod.json"));
        assert!(golden_pod.exists(), "{} missing", golden_pod.display());
        let dir = work.path().join(i.to_string());
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(&path, dir.join("review.json")).unwrap();
        std::fs::write(dir.join("answer.json"), answer.to_json()).unwrap();
        std::fs::copy(&golden_pod, dir.join("expected.json")).unwrap();
        names.push((dir, require, path));
    }
    assert!(names.len() >= 5, "too few patching goldens");
    let script = r#"
import base64, json, sys, jsonpatch
for d in sys.argv[1:]:
    review = json.load(open(d + "/review.json"))
    answer = json.load(open(d + "/answer.json"))
    resp = answer["response"]
    assert resp["uid"] == review["request"]["uid"], d
    assert resp["allowed"] is True and resp["patchType"] == "JSONPatch", d
    ops = json.loads(base64.b64decode(resp["patch"]))
    pod = jsonpatch.apply_patch(review["request"]["object"], ops)
    expected = json.load(open(d + "/expected.json"))
    if pod != expected:
        print("MISMATCH " + d); sys.exit(1)
    review["request"]["object"] = pod
    json.dump(review, open(d + "/again.json", "w"))
print("APPLIED %d" % (len(sys.argv) - 1))
"#;
    let mut args = vec!["-c".to_owned(), script.to_owned()];
    args.extend(names.iter().map(|(d, _, _)| d.display().to_string()));
    let out = tools::run_ok(&python, &args, TOOL_LIMIT).await;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("APPLIED {}", names.len())),
        "{}",
        output_text(&out)
    );
    for (dir, require, path) in &names {
        let again = std::fs::read(dir.join("again.json")).unwrap();
        let response = answer(&again, *require);
        let response = response.get("response").unwrap();
        assert_eq!(response.get("allowed"), Some(&Value::Bool(true)));
        assert!(
            response.get("patch").is_none(),
            "{}: re-injection patched again",
            path.display()
        );
    }
}

/// `palisade inject -f` output for every supported kind, and every golden injected pod, pass
/// `kubernetes-validate --strict` (List items are validated one by one: the tool has no
/// schema for `List`).
#[tokio::test]
async fn injected_objects_pass_kubernetes_validate() {
    const TEST: &str = "injection::injected_objects_pass_kubernetes_validate";
    let Some(validate) = tools::require(TEST, "kubernetes-validate") else {
        return;
    };
    let Some(python) = tools::python_with("yaml").await else {
        skip(TEST, "no python with the yaml module");
        return;
    };
    let input = golden_dir().join("manifests/all-kinds.yaml");
    let out = run_palisade(&["inject", "-f", &input.display().to_string()]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    let work = tempfile::tempdir().unwrap();
    let injected = work.path().join("injected.yaml");
    std::fs::write(&injected, &out.stdout).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for kind in [
        "Pod",
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "Job",
        "CronJob",
        "List",
    ] {
        assert!(text.contains(&format!("kind: {kind}\n")), "{kind} missing");
    }
    // List items as documents of their own.
    let items = work.path().join("list-items.yaml");
    let split = r#"
import sys, yaml
docs = []
for d in yaml.safe_load_all(open(sys.argv[1])):
    docs.extend(d["items"] if d.get("kind") == "List" else [])
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
print(len(docs))
"#;
    let out = tools::run_ok(
        &python,
        [
            "-c",
            split,
            &injected.display().to_string(),
            &items.display().to_string(),
        ],
        TOOL_LIMIT,
    )
    .await;
    assert!(out.status.success(), "{}", output_text(&out));
    let mut files = vec![injected.clone(), items];
    for (i, (path, _)) in review_cases().into_iter().enumerate() {
        let pod = PathBuf::from(path.to_string_lossy().replace(".review.json", ".pod.json"));
        let Ok(text) = std::fs::read(&pod) else {
            continue;
        };
        // A pod being created may carry only generateName; the validator wants a name.
        let mut pod = from_json(&text).unwrap();
        if let Some(Value::Object(metadata)) =
            pod.as_object_mut().and_then(|p| p.get_mut("metadata"))
        {
            let name = metadata
                .get("generateName")
                .and_then(Value::as_str)
                .map(|g| format!("{g}x"));
            if let (None, Some(name)) = (metadata.get("name"), name) {
                metadata.insert("name".into(), name.into());
            }
        }
        let named = work.path().join(format!("pod-{i}.json"));
        std::fs::write(&named, pod.to_json()).unwrap();
        files.push(named);
    }
    let mut args = vec!["--strict".to_owned()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let out = tools::run_ok(&validate, &args, TOOL_LIMIT).await;
    let report = output_text(&out);
    assert!(out.status.success(), "{report}");
    for kind in [
        "pod/debug",
        "deployment/frontend",
        "statefulset/db",
        "daemonset/node-agent",
        "replicaset/cache",
        "job/migrate",
        "cronjob/report",
        "deployment/search",
    ] {
        assert!(
            report.contains(&format!("passed for resource {kind} ")),
            "{kind}: {report}"
        );
    }
}

/// Reading: plain YAML 1.1 scalars resolve as python `yaml.safe_load` resolves them (where
/// go-yaml, which kubectl uses, agrees). Writing: every tricky string written comes back a
/// string from python.
#[tokio::test]
async fn yaml_1_1_agrees_with_python_yaml() {
    const TEST: &str = "injection::yaml_1_1_agrees_with_python_yaml";
    let Some(python) = tools::python_with("yaml").await else {
        skip(TEST, "no python with the yaml module");
        return;
    };
    let input = "\
octal: 0644
hex: 0x1F
underscores: 1_000
negative: -12
binary: 0b101
float: 1.5
yes_: yes
No_: No
on_: ON
off_: off
true_: True
tilde: ~
empty:
null_: NULL
quoted: \"0644\"
single: 'yes'
plain: 100m
path: /var/run
list: [1, two, 3.0]
nested: {a: {b: [x, {c: Off}]}}
";
    let ours = yaml::read_documents(input).unwrap()[0].value.clone();
    let work = tempfile::tempdir().unwrap();
    let in_path = work.path().join("in.yaml");
    std::fs::write(&in_path, input).unwrap();
    let tricky = yaml::AMBIGUOUS_STRINGS;
    let mut map = palisade_injector::value::Map::new();
    for (i, s) in tricky.iter().enumerate() {
        map.insert(format!("k{i}"), Value::from(*s));
        map.insert((*s).to_owned(), Value::Int(i as i64));
    }
    let written = Value::Object(map);
    let out_path = work.path().join("out.yaml");
    std::fs::write(&out_path, yaml::to_yaml(&written)).unwrap();
    let script = r#"
import json, sys, yaml
for p in sys.argv[1:]:
    print(json.dumps(yaml.safe_load(open(p)), sort_keys=False))
"#;
    let out = tools::run_ok(
        &python,
        [
            "-c",
            script,
            &in_path.display().to_string(),
            &out_path.display().to_string(),
        ],
        TOOL_LIMIT,
    )
    .await;
    assert!(out.status.success(), "{}", output_text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let theirs_in = from_json(lines.next().unwrap().as_bytes()).unwrap();
    let theirs_out = from_json(lines.next().unwrap().as_bytes()).unwrap();
    assert_eq!(ours, theirs_in, "reading differs from python yaml");
    assert_eq!(written, theirs_out, "python reads our writing differently");
}

/// The real binary: `palisade injector` with files made here, curl POSTs a golden review,
/// and SIGINT stops it with status 0. `palisade inject` refuses a bad annotation with one
/// line naming document and field, exit 1.
#[tokio::test]
async fn injector_process_answers_curl_and_stops() {
    const TEST: &str = "injection::injector_process_answers_curl_and_stops";
    let Some(curl) = tools::require(TEST, "curl") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (work.path().join("tls.crt"), work.path().join("tls.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let block = Block::next();
    let addr = block.addr(2, 15017);
    let args: Vec<String> = [
        "injector",
        "--listen",
        &addr.to_string(),
        "--tls-cert",
        &cert.display().to_string(),
        "--tls-key",
        &key.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut child = ChildGuard::palisade("injector", &args, work.path());
    let review = golden_dir().join("inject/full-native.review.json");
    let curl_args = |path: &str| -> Vec<String> {
        vec![
            "-sS".into(),
            "--max-time".into(),
            "10".into(),
            "--cacert".into(),
            cert.display().to_string(),
            "--resolve".into(),
            format!("localhost:{}:{}", addr.port(), addr.ip()),
            "-H".into(),
            "content-type: application/json".into(),
            "--data-binary".into(),
            format!("@{}", review.display()),
            "-w".into(),
            "\n%{http_code}".into(),
            format!("https://localhost:{}{path}", addr.port()),
        ]
    };
    let body = poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "palisade injector answers",
        || {
            let args = curl_args("/inject");
            let curl = curl.clone();
            async move {
                let out = tools::run(&curl, &args, Duration::from_secs(15)).await?;
                out.status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
            }
        },
    )
    .await;
    let (json, code) = body.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{body}");
    let answer = from_json(json.as_bytes()).unwrap();
    let response = answer.get("response").unwrap();
    assert_eq!(
        response.get("uid").and_then(Value::as_str),
        Some("6f1e3a52-2f0c-4a7e-9b0d-1c2d3e4f5a61")
    );
    assert!(review::decoded_patch(&answer).is_some());
    let out = tools::run_ok(&curl, curl_args("/other"), TOOL_LIMIT).await;
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("\n404"));

    child.interrupt().await;
    let status = child.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "log:\n{}",
        child.log_text()
    );

    // inject -f: a bad annotation is one line on stderr, exit 1.
    let bad = work.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    \
         palisade.dev/proxy-cpu: lots\nspec:\n  containers: [{name: a, image: b}]\n",
    )
    .unwrap();
    let out = run_palisade(&["inject", "-f", &bad.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("document 1 (Pod p)")
            && stderr.contains("metadata.annotations[\"palisade.dev/proxy-cpu\"]"),
        "{stderr}"
    );

    // `-f -` reads stdin; the output is injected and reads back as YAML.
    let out = tools::run_with_stdin(
        palisade_bin(),
        &["inject", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: b}]\n",
        TOOL_LIMIT,
    )
    .await;
    assert!(out.status.success(), "{}", output_text(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("palisade.dev/status: injected") && text.contains("name: palisade-proxy"),
        "{text}"
    );
}
