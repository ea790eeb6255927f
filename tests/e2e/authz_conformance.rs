//! Authorization conformance: a table of requests against policies, each decided by the real
//! `palisade authz check` binary, which composes the control plane's compiler, the proto a
//! sidecar receives and the sidecar's evaluator. Covers every field and its negation, the
//! DENY > ALLOW > default order, AUDIT, empty rules, selectors and the root namespace, path
//! normalisation, header conditions, gRPC paths, fail-closed handling of callers without an
//! identity, Istio and Palisade documents mixed, and documents that must be rejected.

use std::process::Command;

use crate::support::procs::palisade_bin;

/// The mesh every case runs against: `api` (HTTP 8080, gRPC 9090) and `web` in `prod`,
/// `db` in `data`. Callers are named by service account.
fn base_mesh(default: &str) -> String {
    format!(
        r#"apiVersion: palisade.dev/v1alpha1
kind: MeshConfig
metadata: {{name: mesh}}
spec: {{rootNamespace: palisade-system, defaultAuthorization: {default}}}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {{name: api, namespace: prod, labels: {{app: api, tier: backend}}}}
spec:
  serviceAccount: api
  address: 127.0.9.1
  ports:
  - {{name: http, port: 8080}}
  - {{name: grpc, port: 9090}}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {{name: web, namespace: prod, labels: {{app: web}}}}
spec: {{serviceAccount: web, address: 127.0.9.2, ports: [{{name: http, port: 8080}}]}}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {{name: db, namespace: data, labels: {{app: db, tier: backend}}}}
spec: {{serviceAccount: db, address: 127.0.9.3, ports: [{{name: tcp-pg, port: 5432}}]}}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {{name: api, namespace: prod}}
spec: {{selector: {{app: api}}, ports: [{{name: http, port: 8080}}, {{name: grpc, port: 9090}}]}}
"#
    )
}

const WEB: &str = "spiffe://cluster.local/ns/prod/sa/web";
const API: &str = "spiffe://cluster.local/ns/prod/sa/api";
const DB: &str = "spiffe://cluster.local/ns/data/sa/db";
const OTHER: &str = "spiffe://cluster.local/ns/staging/sa/web";

/// An Istio AuthorizationPolicy document.
fn istio(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

/// The same in Palisade's own API group.
fn palisade(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

/// `ALLOW` on `api` for one rule (YAML of the rule's body, indented for `rules: - `).
fn allow_api(name: &str, rule: &str) -> String {
    istio(
        "prod",
        name,
        &format!(
            "  selector: {{matchLabels: {{app: api}}}}\n  action: ALLOW\n  rules:\n  - {rule}"
        ),
    )
}

fn deny_api(name: &str, rule: &str) -> String {
    istio(
        "prod",
        name,
        &format!("  selector: {{matchLabels: {{app: api}}}}\n  action: DENY\n  rules:\n  - {rule}"),
    )
}

#[derive(Debug)]
enum Expect {
    /// Allowed; decided by this label (`ns/name` or `default-allow`) and rule.
    Allow(&'static str, Option<usize>),
    /// Denied; decided by this label (`ns/name` or `default-deny`) and rule.
    Deny(&'static str, Option<usize>),
    /// The configuration is rejected (exit 1); stderr names this.
    Invalid(&'static str),
}

struct Case {
    name: &'static str,
    default: &'static str,
    policies: Vec<String>,
    args: Vec<&'static str>,
    expect: Expect,
    /// Policies that must be listed as AUDIT matches.
    audits: Vec<&'static str>,
}

fn case(name: &'static str, policies: Vec<String>, args: &[&'static str], expect: Expect) -> Case {
    Case {
        name,
        default: "deny",
        policies,
        args: args.to_vec(),
        expect,
        audits: Vec::new(),
    }
}

fn cases() -> Vec<Case> {
    use Expect::{Allow, Deny, Invalid};
    let from_web = "from: [{source: {principals: [\"cluster.local/ns/prod/sa/web\"]}}]";
    let mut c = vec![
        // --- Order: DENY > ALLOW > default ------------------------------------------------
        case(
            "no policy, default deny",
            vec![],
            &["--from", WEB],
            Deny("default-deny", None),
        ),
        Case {
            default: "allow",
            ..case(
                "no policy, default allow",
                vec![],
                &["--from", WEB],
                Allow("default-allow", None),
            )
        },
        case(
            "matching ALLOW",
            vec![allow_api("allow-web", from_web)],
            &["--from", WEB],
            Allow("prod/allow-web", Some(0)),
        ),
        case(
            "ALLOW exists, none matches",
            vec![allow_api("allow-web", from_web)],
            &["--from", API],
            Deny("default-deny", None),
        ),
        Case {
            default: "allow",
            ..case(
                "ALLOW exists, none matches, default allow does not help",
                vec![allow_api("allow-web", from_web)],
                &["--from", API],
                Deny("default-deny", None),
            )
        },
        case(
            "DENY beats a matching ALLOW",
            vec![
                allow_api("allow-web", from_web),
                deny_api("deny-web", from_web),
            ],
            &["--from", WEB],
            Deny("prod/deny-web", Some(0)),
        ),
        case(
            "non-matching DENY, matching ALLOW",
            vec![
                allow_api("allow-web", from_web),
                deny_api(
                    "deny-db",
                    "from: [{source: {principals: [\"cluster.local/ns/data/sa/db\"]}}]",
                ),
            ],
            &["--from", WEB],
            Allow("prod/allow-web", Some(0)),
        ),
        Case {
            default: "allow",
            ..case(
                "DENY beats default allow",
                vec![deny_api("deny-web", from_web)],
                &["--from", WEB],
                Deny("prod/deny-web", Some(0)),
            )
        },
        case(
            "second rule decides",
            vec![istio(
                "prod",
                "two-rules",
                "  selector: {matchLabels: {app: api}}\n  rules:\n  - from: [{source: {principals: [\"cluster.local/ns/data/sa/db\"]}}]\n  - from: [{source: {principals: [\"cluster.local/ns/prod/sa/web\"]}}]",
            )],
            &["--from", WEB],
            Allow("prod/two-rules", Some(1)),
        ),
        case(
            "second of two ALLOW policies decides",
            vec![
                allow_api(
                    "a-db",
                    "from: [{source: {principals: [\"cluster.local/ns/data/sa/db\"]}}]",
                ),
                allow_api("b-web", from_web),
            ],
            &["--from", WEB],
            Allow("prod/b-web", Some(0)),
        ),
        // --- AUDIT --------------------------------------------------------------------------
        Case {
            audits: vec!["prod/audit-all"],
            ..case(
                "AUDIT match does not allow",
                vec![istio(
                    "prod",
                    "audit-all",
                    "  action: AUDIT\n  rules:\n  - {}",
                )],
                &["--from", WEB],
                Deny("default-deny", None),
            )
        },
        Case {
            audits: vec!["prod/audit-all"],
            ..case(
                "AUDIT alongside ALLOW",
                vec![
                    allow_api("allow-web", from_web),
                    istio("prod", "audit-all", "  action: AUDIT\n  rules:\n  - {}"),
                ],
                &["--from", WEB],
                Allow("prod/allow-web", Some(0)),
            )
        },
        Case {
            audits: vec!["prod/audit-all"],
            ..case(
                "AUDIT alongside DENY",
                vec![
                    deny_api("deny-web", from_web),
                    istio("prod", "audit-all", "  action: AUDIT\n  rules:\n  - {}"),
                ],
                &["--from", WEB],
                Deny("prod/deny-web", Some(0)),
            )
        },
        case(
            "AUDIT that does not match is not listed",
            vec![
                istio(
                    "prod",
                    "audit-db",
                    "  action: AUDIT\n  rules:\n  - from: [{source: {principals: [\"cluster.local/ns/data/sa/db\"]}}]",
                ),
                allow_api("allow-web", from_web),
            ],
            &["--from", WEB],
            Allow("prod/allow-web", Some(0)),
        ),
        // --- Empty rules ----------------------------------------------------------------------
        Case {
            default: "allow",
            ..case(
                "ALLOW without rules denies everything it selects",
                vec![istio(
                    "prod",
                    "allow-nothing",
                    "  selector: {matchLabels: {app: api}}\n  action: ALLOW",
                )],
                &["--from", WEB],
                Deny("default-deny", None),
            )
        },
        Case {
            default: "allow",
            ..case(
                "empty spec is ALLOW-nothing for the namespace",
                vec![istio("prod", "deny-all", "  {}")],
                &["--from", WEB],
                Deny("default-deny", None),
            )
        },
        case(
            "ALLOW with one empty rule allows everything",
            vec![istio(
                "prod",
                "allow-all",
                "  action: ALLOW\n  rules:\n  - {}",
            )],
            &[],
            Allow("prod/allow-all", Some(0)),
        ),
        Case {
            default: "allow",
            ..case(
                "DENY with one empty rule denies everything",
                vec![istio(
                    "prod",
                    "deny-everything",
                    "  action: DENY\n  rules:\n  - {}",
                )],
                &["--from", WEB],
                Deny("prod/deny-everything", Some(0)),
            )
        },
        case(
            "DENY without rules is rejected, as Istio does",
            vec![istio("prod", "deny-none", "  action: DENY")],
            &["--from", WEB],
            Invalid("spec.rules"),
        ),
        // --- Selectors and scope --------------------------------------------------------------
        Case {
            default: "allow",
            ..case(
                "selector not matching the workload",
                vec![istio(
                    "prod",
                    "deny-web-app",
                    &format!(
                        "  selector: {{matchLabels: {{app: web}}}}\n  action: DENY\n  rules:\n  - {from_web}"
                    ),
                )],
                &["--from", WEB],
                Allow("default-allow", None),
            )
        },
        case(
            "no selector: whole namespace",
            vec![istio(
                "prod",
                "ns-wide",
                &format!("  rules:\n  - {from_web}"),
            )],
            &["--from", WEB],
            Allow("prod/ns-wide", Some(0)),
        ),
        case(
            "policy of another namespace does not apply",
            vec![istio(
                "data",
                "data-allow",
                &format!("  rules:\n  - {from_web}"),
            )],
            &["--from", WEB],
            Deny("default-deny", None),
        ),
        case(
            "root namespace policy applies mesh-wide",
            vec![istio(
                "palisade-system",
                "mesh-allow-web",
                &format!("  rules:\n  - {from_web}"),
            )],
            &["--from", WEB],
            Allow("palisade-system/mesh-allow-web", Some(0)),
        ),
        case(
            "root namespace selector matches in any namespace",
            vec![istio(
                "palisade-system",
                "backends",
                &format!(
                    "  selector: {{matchLabels: {{tier: backend}}}}\n  rules:\n  - {from_web}"
                ),
            )],
            &["--to", "data/db", "--from", WEB],
            Allow("palisade-system/backends", Some(0)),
        ),
        case(
            "root namespace selector not matching",
            vec![istio(
                "palisade-system",
                "backends",
                &format!(
                    "  selector: {{matchLabels: {{tier: frontend}}}}\n  rules:\n  - {from_web}"
                ),
            )],
            &["--from", WEB],
            Deny("default-deny", None),
        ),
        // --- from: principals -----------------------------------------------------------------
        case(
            "principal prefix",
            vec![allow_api(
                "prod-callers",
                "from: [{source: {principals: [\"cluster.local/ns/prod/*\"]}}]",
            )],
            &["--from", WEB],
            Allow("prod/prod-callers", Some(0)),
        ),
        case(
            "principal prefix excludes other namespaces",
            vec![allow_api(
                "prod-callers",
                "from: [{source: {principals: [\"cluster.local/ns/prod/*\"]}}]",
            )],
            &["--from", OTHER],
            Deny("default-deny", None),
        ),
        case(
            "principal suffix",
            vec![allow_api(
                "any-web",
                "from: [{source: {principals: [\"*/sa/web\"]}}]",
            )],
            &["--from", OTHER],
            Allow("prod/any-web", Some(0)),
        ),
        case(
            "principal * admits any verified caller",
            vec![allow_api(
                "any-verified",
                "from: [{source: {principals: [\"*\"]}}]",
            )],
            &["--from", DB],
            Allow("prod/any-verified", Some(0)),
        ),
        case(
            "principal * never admits a plaintext caller",
            vec![allow_api(
                "any-verified",
                "from: [{source: {principals: [\"*\"]}}]",
            )],
            &[],
            Deny("default-deny", None),
        ),
        case(
            "principal written as spiffe:// URI",
            vec![allow_api(
                "uri-form",
                "from: [{source: {principals: [\"spiffe://cluster.local/ns/prod/sa/web\"]}}]",
            )],
            &["--from", WEB],
            Allow("prod/uri-form", Some(0)),
        ),
        case(
            "notPrincipals admits others",
            vec![allow_api(
                "not-db",
                "from: [{source: {notPrincipals: [\"cluster.local/ns/data/sa/db\"]}}]",
            )],
            &["--from", WEB],
            Allow("prod/not-db", Some(0)),
        ),
        case(
            "notPrincipals excludes the named",
            vec![allow_api(
                "not-db",
                "from: [{source: {notPrincipals: [\"cluster.local/ns/data/sa/db\"]}}]",
            )],
            &["--from", DB],
            Deny("default-deny", None),
        ),
        case(
            "ipBlocks admit a plaintext caller by its address (identity fields only fail closed)",
            vec![allow_api(
                "from-lb",
                "from: [{source: {ipBlocks: [\"10.1.0.0/16\"]}}]",
            )],
            &["--source-ip", "10.1.2.3"],
            Allow("prod/from-lb", Some(0)),
        ),
        case(
            "ipBlocks with principals never admit a plaintext caller",
            vec![allow_api(
                "from-lb-verified",
                "from: [{source: {principals: [\"*\"], ipBlocks: [\"10.1.0.0/16\"]}}]",
            )],
            &["--source-ip", "10.1.2.3"],
            Deny("default-deny", None),
        ),
        case(
            "ALLOW notPrincipals never admits plaintext (fail closed)",
            vec![allow_api(
                "not-db",
                "from: [{source: {notPrincipals: [\"cluster.local/ns/data/sa/db\"]}}]",
            )],
            &[],
            Deny("default-deny", None),
        ),
        Case {
            default: "allow",
            ..case(
                "DENY notPrincipals * denies plaintext",
                vec![deny_api(
                    "require-mtls",
                    "from: [{source: {notPrincipals: [\"*\"]}}]",
                )],
                &[],
                Deny("prod/require-mtls", Some(0)),
            )
        },
        Case {
            default: "allow",
            ..case(
                "DENY notPrincipals * lets verified callers through",
                vec![deny_api(
                    "require-mtls",
                    "from: [{source: {notPrincipals: [\"*\"]}}]",
                )],
                &["--from", WEB],
                Allow("default-allow", None),
            )
        },
        // --- from: namespaces, ipBlocks ----------------------------------------------------------
        case(
            "namespaces match",
            vec![allow_api(
                "from-data",
                "from: [{source: {namespaces: [\"data\"]}}]",
            )],
            &["--from", DB],
            Allow("prod/from-data", Some(0)),
        ),
        case(
            "namespaces mismatch",
            vec![allow_api(
                "from-data",
                "from: [{source: {namespaces: [\"data\"]}}]",
            )],
            &["--from", WEB],
            Deny("default-deny", None),
        ),
        case(
            "notNamespaces",
            vec![allow_api(
                "not-staging",
                "from: [{source: {notNamespaces: [\"staging\"]}}]",
            )],
            &["--from", OTHER],
            Deny("default-deny", None),
        ),
        case(
            "ALLOW namespaces never admit plaintext",
            vec![allow_api(
                "from-prod",
                "from: [{source: {namespaces: [\"prod\"]}}]",
            )],
            &[],
            Deny("default-deny", None),
        ),
        case(
            "ipBlocks match",
            vec![allow_api(
                "lan",
                "from: [{source: {ipBlocks: [\"10.1.0.0/16\"]}}]",
            )],
            &["--from", WEB, "--source-ip", "10.1.2.3"],
            Allow("prod/lan", Some(0)),
        ),
        case(
            "notIpBlocks",
            vec![allow_api(
                "not-lan",
                "from: [{source: {notIpBlocks: [\"10.1.0.0/16\"]}}]",
            )],
            &["--from", WEB, "--source-ip", "10.1.2.3"],
            Deny("default-deny", None),
        ),
        case(
            "source fields AND within a source",
            vec![allow_api(
                "web-in-prod",
                "from: [{source: {principals: [\"*/sa/web\"], namespaces: [\"prod\"]}}]",
            )],
            &["--from", OTHER],
            Deny("default-deny", None),
        ),
        case(
            "sources OR within from",
            vec![allow_api(
                "web-or-db",
                "from: [{source: {principals: [\"cluster.local/ns/data/sa/db\"]}}, {source: {namespaces: [\"prod\"]}}]",
            )],
            &["--from", WEB],
            Allow("prod/web-or-db", Some(0)),
        ),
        // --- to: methods, paths ----------------------------------------------------------------
        case(
            "methods match",
            vec![allow_api("gets", "to: [{operation: {methods: [\"GET\"]}}]")],
            &["--from", WEB, "--method", "GET"],
            Allow("prod/gets", Some(0)),
        ),
        case(
            "methods mismatch",
            vec![allow_api("gets", "to: [{operation: {methods: [\"GET\"]}}]")],
            &["--from", WEB, "--method", "DELETE"],
            Deny("default-deny", None),
        ),
        case(
            "notMethods",
            vec![allow_api(
                "no-delete",
                "to: [{operation: {notMethods: [\"DELETE\"]}}]",
            )],
            &["--from", WEB, "--method", "DELETE"],
            Deny("default-deny", None),
        ),
        case(
            "paths exact",
            vec![allow_api(
                "health",
                "to: [{operation: {paths: [\"/healthz\"]}}]",
            )],
            &["--path", "/healthz"],
            Allow("prod/health", Some(0)),
        ),
        case(
            "paths exact is exact",
            vec![allow_api(
                "health",
                "to: [{operation: {paths: [\"/healthz\"]}}]",
            )],
            &["--path", "/healthz/x"],
            Deny("default-deny", None),
        ),
        case(
            "paths prefix",
            vec![allow_api(
                "public",
                "to: [{operation: {paths: [\"/public/*\"]}}]",
            )],
            &["--path", "/public/a/b"],
            Allow("prod/public", Some(0)),
        ),
        case(
            "paths suffix",
            vec![allow_api(
                "json",
                "to: [{operation: {paths: [\"*.json\"]}}]",
            )],
            &["--path", "/data/x.json"],
            Allow("prod/json", Some(0)),
        ),
        case(
            "notPaths",
            vec![allow_api(
                "not-admin",
                "to: [{operation: {notPaths: [\"/admin*\"]}}]",
            )],
            &["--from", WEB, "--path", "/admin/users"],
            Deny("default-deny", None),
        ),
        case(
            "query string is ignored",
            vec![allow_api(
                "search",
                "to: [{operation: {paths: [\"/search\"]}}]",
            )],
            &["--path", "/search?q=lamp&x=/admin"],
            Allow("prod/search", Some(0)),
        ),
        case(
            "dot segments are resolved before matching",
            vec![allow_api(
                "public",
                "to: [{operation: {paths: [\"/public/*\"]}}]",
            )],
            &["--path", "/admin/../public/x"],
            Allow("prod/public", Some(0)),
        ),
        Case {
            default: "allow",
            ..case(
                "dot segments cannot bypass a DENY",
                vec![deny_api(
                    "no-admin",
                    "to: [{operation: {paths: [\"/admin*\"]}}]",
                )],
                &["--path", "/public/../admin/x"],
                Deny("prod/no-admin", Some(0)),
            )
        },
        Case {
            default: "allow",
            ..case(
                "percent-encoded unreserved chars are decoded",
                vec![deny_api(
                    "no-admin",
                    "to: [{operation: {paths: [\"/admin*\"]}}]",
                )],
                &["--path", "/%61dmin"],
                Deny("prod/no-admin", Some(0)),
            )
        },
        Case {
            default: "allow",
            ..case(
                "backslash reads as slash",
                vec![deny_api(
                    "no-admin",
                    "to: [{operation: {paths: [\"/admin*\"]}}]",
                )],
                &["--path", "\\admin"],
                Deny("prod/no-admin", Some(0)),
            )
        },
        case(
            "encoded slash is refused before authorization (pathNormalization default)",
            vec![allow_api("a-b", "to: [{operation: {paths: [\"/a/b\"]}}]")],
            &["--path", "/a%2Fb"],
            Deny("path-refused", None),
        ),
        case(
            "double slash is not merged",
            vec![allow_api("a-b", "to: [{operation: {paths: [\"/a/b\"]}}]")],
            &["--path", "/a//b"],
            Deny("default-deny", None),
        ),
        // --- to: ports, hosts ----------------------------------------------------------------------
        case(
            "ports match (Istio writes strings)",
            vec![allow_api(
                "http-port",
                "to: [{operation: {ports: [\"8080\"]}}]",
            )],
            &["--port", "8080"],
            Allow("prod/http-port", Some(0)),
        ),
        case(
            "ports mismatch",
            vec![allow_api(
                "http-port",
                "to: [{operation: {ports: [\"8080\"]}}]",
            )],
            &["--port", "9090", "--method", "GET"],
            Deny("default-deny", None),
        ),
        case(
            "notPorts",
            vec![allow_api(
                "not-grpc",
                "to: [{operation: {notPorts: [\"9090\"]}}]",
            )],
            &["--port", "9090"],
            Deny("default-deny", None),
        ),
        case(
            "hosts without port match any port",
            vec![allow_api(
                "api-host",
                "to: [{operation: {hosts: [\"api.prod\"]}}]",
            )],
            &["--header", "host=api.prod:8080"],
            Allow("prod/api-host", Some(0)),
        ),
        case(
            "hosts are case-insensitive",
            vec![allow_api(
                "api-host",
                "to: [{operation: {hosts: [\"API.Prod\"]}}]",
            )],
            &["--header", "host=api.PROD"],
            Allow("prod/api-host", Some(0)),
        ),
        case(
            "hosts suffix",
            vec![allow_api(
                "internal",
                "to: [{operation: {hosts: [\"*.internal\"]}}]",
            )],
            &["--header", "host=api.internal"],
            Allow("prod/internal", Some(0)),
        ),
        case(
            "notHosts",
            vec![allow_api(
                "not-legacy",
                "to: [{operation: {notHosts: [\"legacy.prod\"]}}]",
            )],
            &["--header", "host=legacy.prod:8080"],
            Deny("default-deny", None),
        ),
        case(
            "from AND to",
            vec![allow_api(
                "web-gets",
                "from: [{source: {namespaces: [\"prod\"]}}]\n    to: [{operation: {methods: [\"GET\"]}}]",
            )],
            &["--from", WEB, "--method", "POST"],
            Deny("default-deny", None),
        ),
        // --- when --------------------------------------------------------------------------------
        case(
            "header condition matches",
            vec![allow_api(
                "env-prod",
                "when: [{key: \"request.headers[x-env]\", values: [\"prod\"]}]",
            )],
            &["--header", "x-env=prod"],
            Allow("prod/env-prod", Some(0)),
        ),
        case(
            "header condition mismatch",
            vec![allow_api(
                "env-prod",
                "when: [{key: \"request.headers[x-env]\", values: [\"prod\"]}]",
            )],
            &["--header", "x-env=dev"],
            Deny("default-deny", None),
        ),
        case(
            "absent header does not match values",
            vec![allow_api(
                "env-prod",
                "when: [{key: \"request.headers[x-env]\", values: [\"prod\"]}]",
            )],
            &[],
            Deny("default-deny", None),
        ),
        case(
            "absent header matches notValues",
            vec![allow_api(
                "not-dev",
                "when: [{key: \"request.headers[x-env]\", notValues: [\"dev\"]}]",
            )],
            &[],
            Allow("prod/not-dev", Some(0)),
        ),
        case(
            "header prefix",
            vec![allow_api(
                "bearer",
                "when: [{key: \"request.headers[authorization]\", values: [\"Bearer *\"]}]",
            )],
            &["--header", "authorization=Bearer abc"],
            Allow("prod/bearer", Some(0)),
        ),
        case(
            "header presence",
            vec![allow_api(
                "has-trace",
                "when: [{key: \"request.headers[x-trace]\", values: [\"*\"]}]",
            )],
            &["--header", "x-trace="],
            Allow("prod/has-trace", Some(0)),
        ),
        case(
            "header names are case-insensitive",
            vec![allow_api(
                "env-prod",
                "when: [{key: \"request.headers[X-Env]\", values: [\"prod\"]}]",
            )],
            &["--header", "X-ENV=prod"],
            Allow("prod/env-prod", Some(0)),
        ),
        case(
            "source.namespace condition",
            vec![allow_api(
                "ns-cond",
                "when: [{key: source.namespace, values: [\"data\"]}]",
            )],
            &["--from", DB],
            Allow("prod/ns-cond", Some(0)),
        ),
        case(
            "source.principal condition",
            vec![allow_api(
                "p-cond",
                "when: [{key: source.principal, values: [\"cluster.local/ns/prod/sa/web\"]}]",
            )],
            &["--from", WEB],
            Allow("prod/p-cond", Some(0)),
        ),
        case(
            "source.principal condition never admits plaintext",
            vec![allow_api(
                "p-cond",
                "when: [{key: source.principal, notValues: [\"cluster.local/ns/data/sa/db\"]}]",
            )],
            &[],
            Deny("default-deny", None),
        ),
        case(
            "destination.port condition",
            vec![allow_api(
                "port-cond",
                "when: [{key: destination.port, values: [\"9090\"]}]",
            )],
            &["--port", "9090"],
            Allow("prod/port-cond", Some(0)),
        ),
        case(
            "conditions AND",
            vec![allow_api(
                "both",
                "when: [{key: \"request.headers[x-env]\", values: [\"prod\"]}, {key: source.namespace, values: [\"prod\"]}]",
            )],
            &["--from", DB, "--header", "x-env=prod"],
            Deny("default-deny", None),
        ),
        // --- gRPC ------------------------------------------------------------------------------------
        case(
            "gRPC method path",
            vec![allow_api(
                "charge",
                "to: [{operation: {paths: [\"/payments.Payments/Charge\"]}}]",
            )],
            &["--port", "9090", "--path", "/payments.Payments/Charge"],
            Allow("prod/charge", Some(0)),
        ),
        case(
            "gRPC service prefix",
            vec![allow_api(
                "payments-svc",
                "to: [{operation: {paths: [\"/payments.Payments/*\"]}}]",
            )],
            &["--port", "9090", "--path", "/payments.Payments/Refund"],
            Allow("prod/payments-svc", Some(0)),
        ),
        case(
            "gRPC other method is denied",
            vec![allow_api(
                "charge",
                "to: [{operation: {paths: [\"/payments.Payments/Charge\"]}}]",
            )],
            &["--port", "9090", "--path", "/payments.Payments/Refund"],
            Deny("default-deny", None),
        ),
        case(
            "gRPC calls are POST",
            vec![allow_api(
                "charge-post",
                "to: [{operation: {methods: [\"POST\"], paths: [\"/payments.Payments/Charge\"]}}]",
            )],
            &["--port", "9090", "--path", "/payments.Payments/Charge"],
            Allow("prod/charge-post", Some(0)),
        ),
        // --- Istio and Palisade documents mixed ------------------------------------------------------
        case(
            "v1beta1 ALLOW with a Palisade DENY",
            vec![
                format!(
                    "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {{name: legacy-allow, namespace: prod}}\nspec:\n  rules:\n  - {from_web}\n"
                ),
                palisade(
                    "prod",
                    "native-deny",
                    "  action: DENY\n  rules:\n  - to: [{operation: {methods: [\"DELETE\"]}}]",
                ),
            ],
            &["--from", WEB, "--method", "DELETE"],
            Deny("prod/native-deny", Some(0)),
        ),
        Case {
            audits: vec!["prod/istio-audit"],
            ..case(
                "Palisade ALLOW with an Istio AUDIT",
                vec![
                    palisade("prod", "native-allow", &format!("  rules:\n  - {from_web}")),
                    istio(
                        "prod",
                        "istio-audit",
                        "  action: AUDIT\n  rules:\n  - to: [{operation: {methods: [\"GET\"]}}]",
                    ),
                ],
                &["--from", WEB],
                Allow("prod/native-allow", Some(0)),
            )
        },
        // --- Rejected documents (exit 1, file + field named) -----------------------------------------
        case(
            "requestPrincipals is rejected",
            vec![allow_api(
                "jwt",
                "from: [{source: {requestPrincipals: [\"*\"]}}]",
            )],
            &[],
            Invalid("requestPrincipals"),
        ),
        case(
            "CUSTOM action is rejected",
            vec![istio(
                "prod",
                "ext",
                "  action: CUSTOM\n  provider: {name: opa}\n  rules:\n  - {}",
            )],
            &[],
            Invalid("spec."),
        ),
        case(
            "match with * in the middle is rejected",
            vec![allow_api(
                "bad-glob",
                "to: [{operation: {paths: [\"/a*b\"]}}]",
            )],
            &[],
            Invalid("paths"),
        ),
        case(
            "unknown field is rejected",
            vec![allow_api("typo", "to: [{operation: {method: [\"GET\"]}}]")],
            &[],
            Invalid("method"),
        ),
        case(
            "request.auth condition is rejected",
            vec![allow_api(
                "claims",
                "when: [{key: \"request.auth.claims[iss]\", values: [\"x\"]}]",
            )],
            &[],
            Invalid("request.auth"),
        ),
    ];
    // AUDIT alongside a plaintext DENY: recorded for a caller without identity too.
    c.push(Case {
        default: "allow",
        audits: vec!["prod/audit-unverified"],
        ..case(
            "AUDIT notPrincipals * records plaintext callers",
            vec![istio(
                "prod",
                "audit-unverified",
                "  action: AUDIT\n  rules:\n  - from: [{source: {notPrincipals: [\"*\"]}}]",
            )],
            &[],
            Allow("default-allow", None),
        )
    });
    c
}

#[test]
fn authorization_conformance() {
    let cases = cases();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), base_mesh(c.default)).unwrap();
        std::fs::write(dir.path().join("policies.yaml"), c.policies.join("---\n")).unwrap();
        let mut args = vec!["authz", "check", "--output", "json", "--config"];
        let config = dir.path().to_str().unwrap().to_owned();
        args.push(&config);
        if !c.args.contains(&"--to") {
            args.extend(["--to", "prod/api"]);
        }
        args.extend(c.args.iter().copied());
        let out = Command::new(palisade_bin()).args(&args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        if stderr.contains("panicked") {
            failures.push(format!("{}: panicked: {stderr}", c.name));
            continue;
        }
        let problem = match &c.expect {
            Expect::Invalid(field) => {
                if code != Some(1) || !stderr.contains(field) || stderr.trim().lines().count() != 1
                {
                    Some(format!(
                        "expected exit 1 naming {field:?}, got {code:?}: {stderr}{stdout}"
                    ))
                } else {
                    None
                }
            }
            Expect::Allow(label, rule) | Expect::Deny(label, rule) => {
                let allow = matches!(c.expect, Expect::Allow(..));
                let want_code = if allow { 0 } else { 3 };
                match serde_json::from_str::<serde_json::Value>(stdout.trim()) {
                    Err(e) => Some(format!(
                        "exit {code:?}, unreadable output ({e}): {stdout}{stderr}"
                    )),
                    Ok(v) => {
                        let got_rule = v["rule"].as_u64().map(|r| r as usize);
                        let audits: Vec<&str> = v["audits"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|x| x["policy"].as_str()).collect())
                            .unwrap_or_default();
                        if code != Some(want_code)
                            || v["decision"] != if allow { "ALLOW" } else { "DENY" }
                            || v["policy"] != *label
                            || got_rule != *rule
                            || audits != c.audits
                        {
                            Some(format!(
                                "expected {:?} audits {:?}, got exit {code:?}: {}",
                                c.expect,
                                c.audits,
                                stdout.trim()
                            ))
                        } else {
                            None
                        }
                    }
                }
            }
        };
        if let Some(p) = problem {
            failures.push(format!("{}: {p}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!("authorization conformance: {} cases passed", cases.len());
}
