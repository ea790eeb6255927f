//! Unit tests of the rendered manifests: structure, Kubernetes' structural-schema rules for
//! the CRDs, the webhook's selectors and failure policies, RBAC without wildcards, and the
//! refusal of bad inputs. Schema behaviour on real documents and kubernetes-validate are in
//! the end-to-end suite (`tests/e2e/install.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

use crate::test_util::{find, install_documents as documents};

use super::*;

fn fake_pem(label: &str, body: &str) -> String {
    format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
}

fn options() -> InstallOptions {
    InstallOptions {
        image: "ghcr.io/palisade-mesh/palisade:test".into(),
        trust_domain: "cluster.local".into(),
        mesh_ca: MeshCaPem {
            root_cert: fake_pem("CERTIFICATE", "cm9vdA=="),
            ca_cert: fake_pem("CERTIFICATE", "Y2E="),
            ca_key: fake_pem("PRIVATE KEY", "a2V5"),
            cert_chain: fake_pem("CERTIFICATE", "Y2hhaW4="),
        },
        webhook_tls: WebhookTlsPem {
            ca_cert: fake_pem("CERTIFICATE", "d2ViaG9vay1jYQ=="),
            cert: fake_pem("CERTIFICATE", "c2VydmluZw=="),
            key: fake_pem("PRIVATE KEY", "c2VydmluZy1rZXk="),
        },
    }
}

fn b64_decode(v: &Value) -> String {
    let text = v.as_str().unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn renders_every_object_in_apply_order() {
    let yaml = render(&options()).unwrap();
    assert!(!yaml.contains("{{"), "a placeholder was left");
    let docs = documents(&yaml);
    let kinds: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace/palisade-system",
            "CustomResourceDefinition/authorizationpolicies.palisade.dev",
            "CustomResourceDefinition/egresspolicies.palisade.dev",
            "CustomResourceDefinition/meshconfigs.palisade.dev",
            "ServiceAccount/palisade-control-plane",
            "ServiceAccount/palisade-injector",
            "ClusterRole/palisade-control-plane",
            "ClusterRoleBinding/palisade-control-plane",
            "Role/palisade-control-plane",
            "RoleBinding/palisade-control-plane",
            "Secret/palisade-ca",
            "ConfigMap/palisade-trust-anchors",
            "Service/palisade-control-plane",
            "Deployment/palisade-control-plane",
            "PodDisruptionBudget/palisade-control-plane",
            "Secret/palisade-injector-tls",
            "Service/palisade-injector",
            "Deployment/palisade-injector",
            "PodDisruptionBudget/palisade-injector",
            "MutatingWebhookConfiguration/palisade-injector",
        ]
    );
    // Namespaced objects all live in palisade-system.
    for d in &docs {
        if let Some(ns) = d["metadata"].get("namespace") {
            assert_eq!(ns, NAMESPACE, "{}", d["metadata"]["name"]);
        }
    }
    // Same options, same bytes.
    assert_eq!(yaml, render(&options()).unwrap());
}

#[test]
fn namespace_is_never_labelled_for_injection() {
    let docs = documents(&render(&options()).unwrap());
    let ns = find(&docs, "Namespace", NAMESPACE);
    let labels = ns["metadata"]["labels"].as_object().unwrap();
    assert!(
        labels.keys().all(|k| !k.starts_with("palisade.dev/")),
        "{labels:?}"
    );
}

#[test]
fn workloads_run_the_binary_locked_down() {
    let docs = documents(&render(&options()).unwrap());
    let cp = find(&docs, "Deployment", "palisade-control-plane");
    let pod = &cp["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(cp["spec"]["replicas"], 2);
    assert_eq!(c["image"], "ghcr.io/palisade-mesh/palisade:test");
    assert_eq!(
        c["args"],
        serde_json::json!(["control-plane", "--kubernetes"])
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/live");
    let ports: Vec<i64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [15012, 15014]);
    assert_eq!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
            ["topologyKey"],
        "kubernetes.io/hostname"
    );

    let inj = find(&docs, "Deployment", "palisade-injector");
    let ipod = &inj["spec"]["template"]["spec"];
    let ic = &ipod["containers"][0];
    assert_eq!(inj["spec"]["replicas"], 2);
    assert_eq!(
        ic["args"],
        serde_json::json!([
            "injector",
            "--tls-cert",
            "/var/run/palisade/tls/tls.crt",
            "--tls-key",
            "/var/run/palisade/tls/tls.key"
        ])
    );
    assert_eq!(ic["ports"][0]["containerPort"], 15017);
    assert_eq!(ipod["automountServiceAccountToken"], false);

    for pod in [pod, ipod] {
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let sc = &pod["containers"][0]["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert!(pod["containers"][0]["resources"]["requests"]["memory"].is_string());
    }

    let svc = find(&docs, "Service", "palisade-injector");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    let svc = find(&docs, "Service", "palisade-control-plane");
    let names: Vec<&str> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["grpc-tls", "admin"]);
    assert_eq!(
        find(&docs, "PodDisruptionBudget", "palisade-control-plane")["spec"]["minAvailable"],
        1
    );
}

#[test]
fn secrets_carry_the_given_material() {
    let opts = options();
    let docs = documents(&render(&opts).unwrap());
    let ca = find(&docs, "Secret", "palisade-ca");
    assert_eq!(
        b64_decode(&ca["data"]["root-cert.pem"]),
        opts.mesh_ca.root_cert
    );
    assert_eq!(b64_decode(&ca["data"]["ca-cert.pem"]), opts.mesh_ca.ca_cert);
    assert_eq!(b64_decode(&ca["data"]["ca-key.pem"]), opts.mesh_ca.ca_key);
    assert_eq!(
        b64_decode(&ca["data"]["cert-chain.pem"]),
        opts.mesh_ca.cert_chain
    );
    assert!(
        ca["data"].get("root-key.pem").is_none(),
        "the root key stays offline"
    );
    let anchors = find(&docs, "ConfigMap", "palisade-trust-anchors");
    assert_eq!(anchors["data"]["ca.crt"], opts.mesh_ca.root_cert.as_str());
    let tls = find(&docs, "Secret", "palisade-injector-tls");
    assert_eq!(tls["type"], "kubernetes.io/tls");
    assert_eq!(b64_decode(&tls["data"]["tls.crt"]), opts.webhook_tls.cert);
    assert_eq!(b64_decode(&tls["data"]["tls.key"]), opts.webhook_tls.key);
}

#[test]
fn webhooks_select_and_fail_as_designed() {
    let opts = options();
    let docs = documents(&render(&opts).unwrap());
    let cfg = find(&docs, "MutatingWebhookConfiguration", "palisade-injector");
    let hooks = cfg["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2);
    for h in hooks {
        assert_eq!(h["sideEffects"], "None");
        assert_eq!(h["admissionReviewVersions"], serde_json::json!(["v1"]));
        assert_eq!(h["timeoutSeconds"], 10);
        assert_eq!(h["reinvocationPolicy"], "Never");
        assert_eq!(
            h["rules"],
            serde_json::json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}])
        );
        assert_eq!(
            b64_decode(&h["clientConfig"]["caBundle"]),
            opts.webhook_tls.ca_cert
        );
        let svc = &h["clientConfig"]["service"];
        assert_eq!(svc["name"], "palisade-injector");
        assert_eq!(svc["namespace"], NAMESPACE);
        assert_eq!(svc["port"], 443);
        // The API server's rule for webhook service paths: every segment a DNS-1123
        // subdomain (so no query string).
        let path = svc["path"].as_str().unwrap();
        let body = path.strip_prefix('/').unwrap();
        for segment in body.split('/') {
            assert!(
                !segment.is_empty()
                    && segment.split('.').all(|l| !l.is_empty()
                        && l.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')),
                "{path}"
            );
        }
    }
    let expr = |h: &Value| h["namespaceSelector"]["matchExpressions"].clone();
    assert_eq!(hooks[0]["name"], "namespace.inject.palisade.dev");
    assert_eq!(hooks[0]["failurePolicy"], "Fail");
    assert_eq!(hooks[0]["clientConfig"]["service"]["path"], INJECT_PATH);
    assert_eq!(
        expr(&hooks[0]),
        serde_json::json!([
            {"key": "palisade.dev/inject", "operator": "In", "values": ["enabled"]},
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["palisade-system", "kube-system"]},
        ])
    );
    assert_eq!(hooks[1]["name"], "pod.inject.palisade.dev");
    assert_eq!(hooks[1]["failurePolicy"], "Ignore");
    assert_eq!(
        hooks[1]["clientConfig"]["service"]["path"],
        REQUIRE_ANNOTATION_PATH
    );
    assert_eq!(
        expr(&hooks[1]),
        serde_json::json!([
            {"key": "palisade.dev/inject", "operator": "NotIn", "values": ["enabled"]},
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["palisade-system", "kube-system", "kube-public", "kube-node-lease"]},
        ])
    );
}

#[test]
fn rbac_is_least_privilege() {
    let docs = documents(&render(&options()).unwrap());
    for d in &docs {
        let kind = d["kind"].as_str().unwrap();
        if kind == "ClusterRole" || kind == "Role" {
            for rule in d["rules"].as_array().unwrap() {
                for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                    for v in rule[field].as_array().into_iter().flatten() {
                        assert!(
                            !v.as_str().unwrap().contains('*'),
                            "wildcard in {kind}: {rule}"
                        );
                    }
                }
            }
        }
        // Nothing grants the injector anything.
        if kind.ends_with("Binding") {
            assert_ne!(d["subjects"][0]["name"], "palisade-injector");
        }
    }
    let sa = find(&docs, "ServiceAccount", "palisade-injector");
    assert_eq!(sa["automountServiceAccountToken"], false);
    let rules = |kind: &str| -> Vec<(String, String, String)> {
        let role = find(&docs, kind, "palisade-control-plane");
        let mut out = Vec::new();
        for r in role["rules"].as_array().unwrap() {
            for g in r["apiGroups"].as_array().unwrap() {
                for res in r["resources"].as_array().unwrap() {
                    for v in r["verbs"].as_array().unwrap() {
                        out.push((
                            g.as_str().unwrap().to_owned(),
                            res.as_str().unwrap().to_owned(),
                            v.as_str().unwrap().to_owned(),
                        ));
                    }
                }
            }
        }
        out
    };
    let cluster = rules("ClusterRole");
    let has = |set: &[(String, String, String)], g: &str, r: &str, v: &str| {
        set.iter().any(|(a, b, c)| a == g && b == r && c == v)
    };
    for (g, r) in [
        ("", "pods"),
        ("", "services"),
        ("", "namespaces"),
        ("discovery.k8s.io", "endpointslices"),
        ("networking.k8s.io", "networkpolicies"),
        ("palisade.dev", "authorizationpolicies"),
        ("palisade.dev", "egresspolicies"),
        ("palisade.dev", "meshconfigs"),
    ] {
        for v in ["get", "list", "watch"] {
            assert!(has(&cluster, g, r, v), "{g} {r} {v}");
        }
        assert!(!has(&cluster, g, r, "update") && !has(&cluster, g, r, "delete"));
    }
    assert!(has(
        &cluster,
        "authentication.k8s.io",
        "tokenreviews",
        "create"
    ));
    for v in ["get", "list", "watch", "create", "update", "patch"] {
        assert!(has(&cluster, "", "configmaps", v), "configmaps {v}");
    }
    assert!(
        !cluster.iter().any(|(_, r, _)| r == "secrets"),
        "no cluster-wide secrets"
    );
    let ns = rules("Role");
    assert!(has(&ns, "", "secrets", "get") && has(&ns, "", "secrets", "update"));
    assert!(!has(&ns, "", "secrets", "list"));
    assert!(has(&ns, "coordination.k8s.io", "leases", "create"));
}

/// Kubernetes' structural-schema rules (apiextensions v1), checked on every CRD: each node
/// has a type (or is int-or-string / preserves unknown fields); `properties` and
/// `additionalProperties` never together; junctors (`anyOf`, `allOf`, `oneOf`, `not`) hold
/// value validations only and name no field the outer node does not declare; `metadata`
/// only constrains `name`.
#[test]
fn crd_schemas_are_structural() {
    let docs = documents(&render(&options()).unwrap());
    let crds: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    assert_eq!(crds.len(), 3);
    for crd in crds {
        let spec = &crd["spec"];
        assert_eq!(spec["group"], "palisade.dev");
        assert_eq!(spec["scope"], "Namespaced");
        assert_eq!(spec["versions"][0]["name"], "v1alpha1");
        let schema = &spec["versions"][0]["schema"]["openAPIV3Schema"];
        let name = crd["metadata"]["name"].as_str().unwrap();
        structural(name, schema, true);
        // The API server allows only a type and constraints on name/generateName here.
        let meta = &schema["properties"]["metadata"];
        let keys: Vec<&String> = meta.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["properties", "type"], "{name}: metadata");
        let keys: Vec<&String> = meta["properties"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["name"], "{name}: metadata may only constrain name");
        assert!(schema["properties"]["spec"]["properties"].is_object());
    }
}

fn structural(at: &str, node: &Value, typed: bool) {
    let obj = node
        .as_object()
        .unwrap_or_else(|| panic!("{at}: not an object"));
    let special = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if typed && !special {
        assert!(obj.contains_key("type"), "{at}: no type");
    }
    assert!(
        !(obj.contains_key("properties") && obj.contains_key("additionalProperties")),
        "{at}: properties and additionalProperties together"
    );
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            structural(&format!("{at}.{k}"), v, typed);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(v) = obj.get(key).filter(|v| v.is_object()) {
            structural(&format!("{at}.{key}"), v, typed);
        }
    }
    for junctor in ["anyOf", "allOf", "oneOf", "not"] {
        let Some(j) = obj.get(junctor) else { continue };
        let branches: Vec<&Value> = match j {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for (i, b) in branches.iter().enumerate() {
            let at = format!("{at}.{junctor}[{i}]");
            junction(&at, b, obj.get("properties"));
        }
    }
}

fn junction(at: &str, node: &Value, outer: Option<&Value>) {
    let obj = node.as_object().unwrap();
    for forbidden in [
        "type",
        "description",
        "default",
        "additionalProperties",
        "nullable",
    ] {
        assert!(
            !obj.contains_key(forbidden),
            "{at}: {forbidden} in a junctor"
        );
    }
    assert!(obj.keys().all(|k| !k.starts_with("x-kubernetes-")), "{at}");
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            let declared = outer.and_then(|o| o.get(k));
            assert!(
                declared.is_some(),
                "{at}: {k} is not declared outside the junctor"
            );
            junction(
                &format!("{at}.{k}"),
                v,
                declared.and_then(|d| d.get("properties")),
            );
        }
    }
    for r in obj
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let k = r.as_str().unwrap();
        assert!(
            outer.and_then(|o| o.get(k)).is_some(),
            "{at}: requires undeclared {k}"
        );
    }
}

#[test]
fn crd_enums_match_the_control_plane() {
    let docs = documents(&render(&options()).unwrap());
    let schema = |name: &str| {
        find(&docs, "CustomResourceDefinition", name)["spec"]["versions"][0]["schema"]
            ["openAPIV3Schema"]["properties"]["spec"]["properties"]
            .clone()
    };
    let ap = schema("authorizationpolicies.palisade.dev");
    assert_eq!(
        ap["action"]["enum"],
        serde_json::json!(["ALLOW", "DENY", "AUDIT"])
    );
    let mc = schema("meshconfigs.palisade.dev");
    assert_eq!(
        mc["defaultAuthorization"]["enum"],
        serde_json::json!(["deny", "allow"])
    );
    assert_eq!(
        mc["mtls"]["properties"]["mode"]["enum"],
        serde_json::json!(["STRICT", "PERMISSIVE"])
    );
    assert_eq!(
        mc["outboundTrafficPolicy"]["properties"]["mode"]["enum"],
        serde_json::json!(["REGISTRY_ONLY", "ALLOW_ANY"])
    );
    assert_eq!(
        mc["pathNormalization"]["properties"]["normalization"]["enum"],
        serde_json::json!([
            "DEFAULT",
            "BASE",
            "MERGE_SLASHES",
            "DECODE_AND_MERGE_SLASHES"
        ])
    );
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    // Field lists of the control plane's serde types (control-plane/src/config/resources.rs),
    // sorted.
    assert_eq!(
        keys(&mc),
        [
            "certificateLifetime",
            "defaultAuthorization",
            "hideDenialReasons",
            "mtls",
            "outboundTrafficPolicy",
            "pathNormalization",
            "rootNamespace",
            "trustDomain"
        ]
    );
    assert_eq!(
        keys(&ap),
        [
            "action",
            "provider",
            "rules",
            "selector",
            "targetRef",
            "targetRefs"
        ]
    );
    let rule = &ap["rules"]["items"]["properties"];
    assert_eq!(keys(rule), ["from", "to", "when"]);
    assert_eq!(
        keys(&rule["from"]["items"]["properties"]["source"]["properties"]),
        [
            "ipBlocks",
            "namespaces",
            "notIpBlocks",
            "notNamespaces",
            "notPrincipals",
            "notRemoteIpBlocks",
            "notRequestPrincipals",
            "notServiceAccounts",
            "principals",
            "remoteIpBlocks",
            "requestPrincipals",
            "serviceAccounts"
        ]
    );
    assert_eq!(
        keys(&rule["to"]["items"]["properties"]["operation"]["properties"]),
        [
            "hosts",
            "methods",
            "notHosts",
            "notMethods",
            "notPaths",
            "notPorts",
            "paths",
            "ports"
        ]
    );
    assert_eq!(
        keys(&rule["when"]["items"]["properties"]),
        ["key", "notValues", "values"]
    );
    let ep = schema("egresspolicies.palisade.dev");
    assert_eq!(keys(&ep), ["hosts", "ipBlocks", "ports", "selector"]);
}

#[test]
fn bad_inputs_are_refused_by_name() {
    let mut o = options();
    o.image = "ghcr.io/x:1\n  evil: true".into();
    assert!(matches!(render(&o), Err(InstallError::Image(_))));
    o.image = String::new();
    assert!(matches!(render(&o), Err(InstallError::Image(_))));

    let mut o = options();
    o.trust_domain = "Cluster.Local".into();
    assert!(matches!(render(&o), Err(InstallError::TrustDomain(_))));
    o.trust_domain = "\"quoted\"".into();
    assert!(matches!(render(&o), Err(InstallError::TrustDomain(_))));

    let mut o = options();
    o.mesh_ca.ca_key = fake_pem("CERTIFICATE", "eA==");
    assert_eq!(
        render(&o),
        Err(InstallError::Pem {
            what: "mesh CA ca-key.pem",
            kind: "PRIVATE KEY"
        })
    );
    let mut o = options();
    o.webhook_tls.cert = "not pem".into();
    assert!(matches!(render(&o), Err(InstallError::Pem { .. })));
    let mut o = options();
    o.mesh_ca.root_cert = fake_pem("CERTIFICATE", "a\u{7}b");
    assert!(matches!(render(&o), Err(InstallError::Pem { .. })));
}

#[test]
fn pem_is_normalised_and_several_roots_stay_a_block() {
    let mut o = options();
    let two = format!(
        "\r\n{}\n{}\n\n",
        fake_pem("CERTIFICATE", "b25l").replace('\n', "\r\n"),
        fake_pem("CERTIFICATE", "dHdv")
    );
    o.mesh_ca.root_cert = two;
    let docs = documents(&render(&o).unwrap());
    let anchors = find(&docs, "ConfigMap", "palisade-trust-anchors");
    assert_eq!(
        anchors["data"]["ca.crt"],
        format!(
            "{}\n{}",
            fake_pem("CERTIFICATE", "b25l"),
            fake_pem("CERTIFICATE", "dHdv")
        )
    );
}

#[test]
fn debug_never_shows_keys() {
    let text = format!("{:?}", options());
    assert!(
        !text.contains("a2V5") && !text.contains("c2VydmluZy1rZXk="),
        "{text}"
    );
    assert!(text.contains("<redacted>"));
}

#[test]
fn unknown_placeholders_are_errors() {
    assert_eq!(
        fill("t.yaml", "a: {{nope}}\n", &[]),
        Err(InstallError::Template {
            template: "t.yaml",
            placeholder: "nope".into()
        })
    );
    assert_eq!(
        fill("t.yaml", "a: {{x}}\n", &[("x", "\"1\"".into())]).unwrap(),
        "a: \"1\"\n"
    );
}
