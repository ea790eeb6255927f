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
    /// The dry-run outcome `authz check` must report: (would-be decision, policy), or none.
    dry_run: Option<(&'static str, &'static str)>,
}

fn case(name: &'static str, policies: Vec<String>, args: &[&'static str], expect: Expect) -> Case {
    Case {
        name,
        default: "deny",
        policies,
        args: args.to_vec(),
        expect,
        audits: Vec::new(),
        dry_run: None,
    }
}

/// `doc` with one annotation added to its metadata (the documents here name their
/// namespace last in a flow mapping).
fn annotated(doc: String, key: &str, value: &str) -> String {
    doc.replacen(
        "}\nspec:",
        &format!(", annotations: {{{key}: \"{value}\"}}}}\nspec:"),
        1,
    )
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
            "hosts without port match a request without port",
            vec![allow_api(
                "api-host",
                "to: [{operation: {hosts: [\"api.prod\"]}}]",
            )],
            &["--header", "host=api.prod"],
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
            &["--header", "host=legacy.prod"],
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
    c.extend(istio_compat_cases());
    c
}

/// Issue 11, items 14 to 19 (Istio policies as Istio reads them). Every case here is also
/// sent as a real request through a running sidecar (`sidecar_agrees_with_authz_check`),
/// except rejected documents and calls to other workloads. Callers' addresses are loopback:
/// the `--source-ip` given to `authz check` and the sidecar's view of a real client share
/// `127.0.0.0/8`, which is all the address rules here distinguish.
fn istio_compat_cases() -> Vec<Case> {
    use Expect::{Allow, Deny};
    let from_web = "from: [{source: {principals: [\"cluster.local/ns/prod/sa/web\"]}}]";
    vec![
        // --- 15: hosts as Istio reads them ---------------------------------------------------
        case(
            "15: exact hosts do not match the host:port form",
            vec![allow_api(
                "api-host",
                "to: [{operation: {hosts: [\"api.prod\"]}}]",
            )],
            &["--from", WEB, "--header", "host=api.prod:8080"],
            Deny("default-deny", None),
        ),
        case(
            "15: host:* matches any port, case-insensitively",
            vec![allow_api(
                "api-any-port",
                "to: [{operation: {hosts: [\"api.prod:*\"]}}]",
            )],
            &["--from", WEB, "--header", "host=API.Prod:8080"],
            Allow("prod/api-any-port", Some(0)),
        ),
        case(
            "15: host with its port, trailing dot dropped",
            vec![allow_api(
                "api-8080",
                "to: [{operation: {hosts: [\"api.prod:8080\"]}}]",
            )],
            &["--from", WEB, "--header", "host=api.prod.:8080"],
            Allow("prod/api-8080", Some(0)),
        ),
        Case {
            default: "allow",
            ..case(
                "15: DENY on host:* covers every port",
                vec![deny_api(
                    "no-api-host",
                    "to: [{operation: {hosts: [\"API.prod:*\"]}}]",
                )],
                &["--from", WEB, "--header", "host=api.prod:8080"],
                Deny("prod/no-api-host", Some(0)),
            )
        },
        Case {
            default: "allow",
            ..case(
                "15: notHosts exact leaves host:port outside it",
                vec![deny_api(
                    "only-bare-host",
                    "to: [{operation: {notHosts: [\"api.prod\"]}}]",
                )],
                &["--from", WEB, "--header", "host=api.prod:8080"],
                Deny("prod/only-bare-host", Some(0)),
            )
        },
        // --- 16: a header sent several times ------------------------------------------------------
        Case {
            default: "allow",
            ..case(
                "16: DENY notValues sees the joined value (prod + dev is not prod)",
                vec![deny_api(
                    "prod-only",
                    "when: [{key: \"request.headers[x-env]\", notValues: [\"prod\"]}]",
                )],
                &[
                    "--from",
                    WEB,
                    "--header",
                    "x-env=prod",
                    "--header",
                    "x-env=dev",
                ],
                Deny("prod/prod-only", Some(0)),
            )
        },
        Case {
            default: "allow",
            ..case(
                "16: DENY values match any single value",
                vec![deny_api(
                    "no-dev",
                    "when: [{key: \"request.headers[x-env]\", values: [\"dev\"]}]",
                )],
                &[
                    "--from",
                    WEB,
                    "--header",
                    "x-env=prod",
                    "--header",
                    "x-env=dev",
                ],
                Deny("prod/no-dev", Some(0)),
            )
        },
        case(
            "16: ALLOW values see only the joined value",
            vec![allow_api(
                "env-prod",
                "when: [{key: \"request.headers[x-env]\", values: [\"prod\"]}]",
            )],
            &[
                "--from",
                WEB,
                "--header",
                "x-env=prod",
                "--header",
                "x-env=dev",
            ],
            Deny("default-deny", None),
        ),
        case(
            "16: ALLOW values match the joined value",
            vec![allow_api(
                "env-joined",
                "when: [{key: \"request.headers[x-env]\", values: [\"prod,dev\"]}]",
            )],
            &[
                "--from",
                WEB,
                "--header",
                "x-env=prod",
                "--header",
                "x-env=dev",
            ],
            Allow("prod/env-joined", Some(0)),
        ),
        // --- 17: path templates ------------------------------------------------------------------
        case(
            "17: {*} matches one segment",
            vec![allow_api(
                "orders",
                "to: [{operation: {paths: [\"/users/{*}/orders\"]}}]",
            )],
            &["--from", WEB, "--path", "/users/7/orders?page=2"],
            Allow("prod/orders", Some(0)),
        ),
        case(
            "17: {*} does not match two segments",
            vec![allow_api(
                "orders",
                "to: [{operation: {paths: [\"/users/{*}/orders\"]}}]",
            )],
            &["--from", WEB, "--path", "/users/7/x/orders"],
            Deny("default-deny", None),
        ),
        case(
            "17: {**} followed by a literal segment",
            vec![allow_api(
                "meta",
                "to: [{operation: {paths: [\"/files/{**}/meta\"]}}]",
            )],
            &["--from", WEB, "--path", "/files/a/b/meta"],
            Allow("prod/meta", Some(0)),
        ),
        Case {
            default: "allow",
            ..case(
                "17: DENY {**} sees the normalised path",
                vec![deny_api(
                    "no-admin-tree",
                    "to: [{operation: {paths: [\"/admin/{**}\"]}}]",
                )],
                &["--from", WEB, "--path", "/public/../%61dmin/users"],
                Deny("prod/no-admin-tree", Some(0)),
            )
        },
        Case {
            default: "allow",
            ..case(
                "17: DENY notPaths template",
                vec![deny_api(
                    "public-only",
                    "to: [{operation: {notPaths: [\"/public/{**}\"]}}]",
                )],
                &["--from", WEB, "--path", "/private/x"],
                Deny("prod/public-only", Some(0)),
            )
        },
        case(
            "17: {**} not last is rejected",
            vec![allow_api(
                "bad-template",
                "to: [{operation: {paths: [\"/{**}/x/{*}\"]}}]",
            )],
            &[],
            Expect::Invalid("paths[0]"),
        ),
        case(
            "17: {*} beside other characters is rejected",
            vec![allow_api(
                "bad-template",
                "to: [{operation: {notPaths: [\"/files/{*}.txt\"]}}]",
            )],
            &[],
            Expect::Invalid("notPaths[0]"),
        ),
        // --- 18: serviceAccounts -------------------------------------------------------------------
        case(
            "18: serviceAccounts admit the account",
            vec![allow_api(
                "sa-web",
                "from: [{source: {serviceAccounts: [\"prod/web\"]}}]",
            )],
            &["--from", WEB],
            Allow("prod/sa-web", Some(0)),
        ),
        case(
            "18: serviceAccounts are principals of the mesh's trust domain",
            vec![allow_api(
                "sa-web",
                "from: [{source: {serviceAccounts: [\"prod/web\"]}}]",
            )],
            &["--from", "spiffe://partner.example/ns/prod/sa/web"],
            Deny("default-deny", None),
        ),
        case(
            "18: serviceAccounts AND principals in one source",
            vec![allow_api(
                "sa-and-principal",
                "from: [{source: {serviceAccounts: [\"prod/web\"], principals: [\"*/sa/api\"]}}]",
            )],
            &["--from", WEB],
            Deny("default-deny", None),
        ),
        case(
            "18: notServiceAccounts exclude the account",
            vec![allow_api(
                "not-sa-web",
                "from: [{source: {notServiceAccounts: [\"prod/web\"]}}]",
            )],
            &["--from", WEB],
            Deny("default-deny", None),
        ),
        case(
            "18: notServiceAccounts admit another account",
            vec![allow_api(
                "not-sa-web",
                "from: [{source: {notServiceAccounts: [\"prod/web\"]}}]",
            )],
            &["--from", API],
            Allow("prod/not-sa-web", Some(0)),
        ),
        case(
            "18: ALLOW serviceAccounts never admit plaintext",
            vec![allow_api(
                "sa-web",
                "from: [{source: {serviceAccounts: [\"prod/web\"]}}]",
            )],
            &["--source-ip", "127.0.0.1"],
            Deny("default-deny", None),
        ),
        case(
            "18: ALLOW notServiceAccounts never admit plaintext (fail closed)",
            vec![allow_api(
                "not-sa-db",
                "from: [{source: {notServiceAccounts: [\"data/db\"]}}]",
            )],
            &["--source-ip", "127.0.0.1"],
            Deny("default-deny", None),
        ),
        Case {
            default: "allow",
            ..case(
                "18: DENY notServiceAccounts deny plaintext",
                vec![deny_api(
                    "only-web",
                    "from: [{source: {notServiceAccounts: [\"prod/web\"]}}]",
                )],
                &["--source-ip", "127.0.0.1"],
                Deny("prod/only-web", Some(0)),
            )
        },
        case(
            "18: a service account without its namespace is rejected",
            vec![allow_api(
                "sa-bare",
                "from: [{source: {serviceAccounts: [\"web\"]}}]",
            )],
            &[],
            Expect::Invalid("serviceAccounts[0]"),
        ),
        case(
            "18: a wildcard service account is rejected",
            vec![allow_api(
                "sa-glob",
                "from: [{source: {notServiceAccounts: [\"prod/*\"]}}]",
            )],
            &[],
            Expect::Invalid("notServiceAccounts[0]"),
        ),
        case(
            "18: source.serviceAccount condition",
            vec![allow_api(
                "sa-cond",
                "when: [{key: source.serviceAccount, values: [\"prod/web\"]}]",
            )],
            &["--from", WEB],
            Allow("prod/sa-cond", Some(0)),
        ),
        case(
            "18: source.serviceAccount notValues never admit plaintext",
            vec![allow_api(
                "sa-cond",
                "when: [{key: source.serviceAccount, notValues: [\"data/db\"]}]",
            )],
            &["--source-ip", "127.0.0.1"],
            Deny("default-deny", None),
        ),
        // --- 19: address fields match plaintext callers; identity fields fail closed ---------------
        case(
            "19: ipBlocks admit a plaintext caller",
            vec![allow_api(
                "loopback",
                "from: [{source: {ipBlocks: [\"127.0.0.0/8\"]}}]",
            )],
            &["--source-ip", "127.0.0.1"],
            Allow("prod/loopback", Some(0)),
        ),
        case(
            "19: notIpBlocks admit a plaintext caller outside them",
            vec![allow_api(
                "not-lan",
                "from: [{source: {notIpBlocks: [\"10.0.0.0/8\"]}}]",
            )],
            &["--source-ip", "127.0.0.1"],
            Allow("prod/not-lan", Some(0)),
        ),
        case(
            "19: notIpBlocks exclude a plaintext caller inside them",
            vec![allow_api(
                "not-loopback",
                "from: [{source: {notIpBlocks: [\"127.0.0.0/8\"]}}]",
            )],
            &["--source-ip", "127.0.0.1"],
            Deny("default-deny", None),
        ),
        Case {
            default: "allow",
            ..case(
                "19: DENY ipBlocks deny a plaintext caller",
                vec![deny_api(
                    "no-loopback",
                    "from: [{source: {ipBlocks: [\"127.0.0.0/8\"]}}]",
                )],
                &["--source-ip", "127.0.0.1"],
                Deny("prod/no-loopback", Some(0)),
            )
        },
        case(
            "19: ipBlocks with namespaces never admit plaintext",
            vec![allow_api(
                "loopback-prod",
                "from: [{source: {ipBlocks: [\"127.0.0.0/8\"], namespaces: [\"prod\"]}}]",
            )],
            &["--source-ip", "127.0.0.1"],
            Deny("default-deny", None),
        ),
        case(
            "19: ipBlocks with notNamespaces never admit plaintext",
            vec![allow_api(
                "loopback-not-data",
                "from: [{source: {ipBlocks: [\"127.0.0.0/8\"], notNamespaces: [\"data\"]}}]",
            )],
            &["--source-ip", "127.0.0.1"],
            Deny("default-deny", None),
        ),
        case(
            "19: ipBlocks with notPrincipals never admit plaintext",
            vec![allow_api(
                "loopback-not-db",
                "from: [{source: {ipBlocks: [\"127.0.0.0/8\"], notPrincipals: [\"cluster.local/ns/data/sa/db\"]}}]",
            )],
            &["--source-ip", "127.0.0.1"],
            Deny("default-deny", None),
        ),
        case(
            "19: ipBlocks admit a verified caller too",
            vec![allow_api(
                "loopback",
                "from: [{source: {ipBlocks: [\"127.0.0.0/8\"]}}]",
            )],
            &["--from", DB, "--source-ip", "127.0.0.1"],
            Allow("prod/loopback", Some(0)),
        ),
        // --- 14: dry-run policies ----------------------------------------------------------------
        Case {
            dry_run: Some(("DENY", "prod/dry-no-admin")),
            ..case(
                "14: a dry-run DENY is reported, never enforced",
                vec![
                    allow_api("allow-web", from_web),
                    annotated(
                        deny_api("dry-no-admin", "to: [{operation: {paths: [\"/admin/*\"]}}]"),
                        "istio.io/dry-run",
                        "true",
                    ),
                ],
                &["--from", WEB, "--path", "/admin/users"],
                Allow("prod/allow-web", Some(0)),
            )
        },
        Case {
            dry_run: Some(("ALLOW", "prod/allow-web")),
            ..case(
                "14: a dry-run DENY that does not match agrees with the decision",
                vec![
                    allow_api("allow-web", from_web),
                    annotated(
                        deny_api("dry-no-admin", "to: [{operation: {paths: [\"/admin/*\"]}}]"),
                        "istio.io/dry-run",
                        "true",
                    ),
                ],
                &["--from", WEB, "--path", "/public"],
                Allow("prod/allow-web", Some(0)),
            )
        },
        Case {
            dry_run: Some(("ALLOW", "prod/dry-allow-web")),
            ..case(
                "14: a dry-run ALLOW (palisade.dev) never allows",
                vec![annotated(
                    allow_api("dry-allow-web", from_web),
                    "palisade.dev/dry-run",
                    "true",
                )],
                &["--from", WEB],
                Deny("default-deny", None),
            )
        },
        Case {
            default: "allow",
            dry_run: Some(("DENY", "default-deny")),
            ..case(
                "14: a dry-run ALLOW reports what it would refuse",
                vec![annotated(
                    allow_api("dry-allow-web", from_web),
                    "istio.io/dry-run",
                    "true",
                )],
                &["--from", API],
                Allow("default-allow", None),
            )
        },
        case(
            "14: dry-run \"false\" is enforced",
            vec![annotated(
                deny_api("no-admin", "to: [{operation: {paths: [\"/admin/*\"]}}]"),
                "istio.io/dry-run",
                "false",
            )],
            &["--from", WEB, "--path", "/admin/users"],
            Deny("prod/no-admin", Some(0)),
        ),
        case(
            "14: a dry-run value other than true/false is rejected",
            vec![annotated(
                deny_api("no-admin", "to: [{operation: {paths: [\"/admin/*\"]}}]"),
                "istio.io/dry-run",
                "yes",
            )],
            &[],
            Expect::Invalid("metadata.annotations[istio.io/dry-run]"),
        ),
    ]
}

/// Every case asks about a request: `authz check` without method and path answers the
/// connection question only, so a case that names neither asks for `GET /`.
fn request_described(args: &[&str]) -> &'static [&'static str] {
    if args.contains(&"--path") || args.contains(&"--method") {
        &[]
    } else {
        &["--path", "/"]
    }
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
        args.extend(request_described(&c.args));
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
                        let dry_run = v["dry_run"].as_object().map(|d| {
                            (
                                d["decision"].as_str().unwrap_or_default(),
                                d["policy"].as_str().unwrap_or_default(),
                            )
                        });
                        if code != Some(want_code)
                            || v["decision"] != if allow { "ALLOW" } else { "DENY" }
                            || v["policy"] != *label
                            || got_rule != *rule
                            || audits != c.audits
                            || dry_run != c.dry_run
                        {
                            Some(format!(
                                "expected {:?} audits {:?} dry run {:?}, got exit {code:?}: {}",
                                c.expect,
                                c.audits,
                                c.dry_run,
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

// === the same cases through a running sidecar ===

/// What one case sends: caller identity, method, path, authority and headers, read from
/// the `authz check` arguments it is decided with.
struct LiveRequest {
    from: Option<String>,
    method: String,
    path: String,
    authority: String,
    headers: Vec<(String, String)>,
}

impl LiveRequest {
    /// `None` for a case that cannot be sent as a real request: another workload, another
    /// port, or a caller of a foreign trust domain (the sidecar refuses its handshake first).
    fn from_args(args: &[&str]) -> Option<Self> {
        let mut req = LiveRequest {
            from: None,
            method: "GET".into(),
            path: "/".into(),
            authority: "api.prod:8080".into(),
            headers: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = (*it.next()?).to_owned();
            match *flag {
                "--from" if value.starts_with("spiffe://cluster.local/") => req.from = Some(value),
                "--method" => req.method = value,
                "--path" => req.path = value,
                "--source-ip" if value.starts_with("127.") => {}
                "--header" => {
                    let (k, v) = value.split_once('=')?;
                    if k.eq_ignore_ascii_case("host") {
                        req.authority = v.to_owned();
                    } else {
                        req.headers.push((k.to_owned(), v.to_owned()));
                    }
                }
                _ => return None,
            }
        }
        Some(req)
    }
}

/// Sends `req` to the sidecar's inbound port: over mTLS with a certificate for its caller
/// (HTTP/2, SNI for app port 8080), or as plaintext HTTP/1.1 for a caller without one (the
/// mesh is PERMISSIVE). Returns the HTTP status.
async fn send_live(
    inbound: std::net::SocketAddr,
    ca: &palisade_certs::CertificateAuthority,
    server: &palisade_certs::SpiffeId,
    req: &LiveRequest,
) -> Result<u16, String> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let mut builder = http::Request::builder().method(req.method.as_str());
    for (k, v) in &req.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let io = tokio::net::TcpStream::connect(inbound)
        .await
        .map_err(|e| format!("connect {inbound}: {e}"))?;
    let status = match &req.from {
        Some(from) => {
            let id = palisade_certs::SpiffeId::parse(from).map_err(|e| e.to_string())?;
            let creds = crate::support::tls::issue(ca, &id);
            let config = palisade_certs::tls::client_config(
                Some(&creds),
                ca.bundle(),
                server.clone(),
                &[palisade_certs::ALPN_H2],
            )
            .map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                .connect(crate::support::tls::sni(8080), io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let request = builder
                .uri(format!("http://{}{}", req.authority, req.path))
                .body(Empty::<bytes::Bytes>::new())
                .map_err(|e| e.to_string())?;
            let resp = send
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            status
        }
        None => {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let request = builder
                .uri(req.path.as_str())
                .header("host", req.authority.as_str())
                .body(Empty::<bytes::Bytes>::new())
                .map_err(|e| e.to_string())?;
            let resp = send
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            status
        }
    };
    Ok(status)
}

/// Issue 11: `palisade authz check` and a running sidecar agree on every new case. Each
/// case's configuration (PERMISSIVE, so plaintext callers reach the sidecar) is decided by
/// `authz check` and loaded by a real `palisade proxy --static-config` for `prod/api`; the
/// case's request is then sent through that sidecar to an app that answers 200, over mTLS
/// with a certificate for the case's caller, or as plaintext for a caller without one.
/// Dry-run cases must also show up in the sidecar's `palisade_proxy_authz_dry_run_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_agrees_with_authz_check() {
    use crate::support::apps::{self, App};
    use crate::support::clients::try_admin_get;
    use crate::support::procs::ChildGuard;
    use crate::support::{Block, READY_TIMEOUT, metric, poll, timed};
    use palisade_certs::{CaOptions, CertificateAuthority, SpiffeId, TrustDomain};

    let block = Block::next();
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("cluster.local").unwrap();
    let (ca, material) = CertificateAuthority::generate(td, &CaOptions::default()).unwrap();
    let anchors = dir.path().join("roots.pem");
    std::fs::write(&anchors, &material.root_cert_pem).unwrap();
    let api = SpiffeId::parse(API).unwrap();
    let (leaf, key) = ca
        .issue(&api, std::time::Duration::from_secs(3600))
        .unwrap();
    let (cert, key_file) = (dir.path().join("api.crt"), dir.path().join("api.key"));
    std::fs::write(
        &cert,
        palisade_certs::ca::chain_to_pem(&leaf.leaf, &leaf.chain),
    )
    .unwrap();
    std::fs::write(&key_file, key.private_key_pem()).unwrap();

    let shutdown = tokio_util::sync::CancellationToken::new();
    let app_hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    apps::start(
        block.addr(1, 8080),
        App::Counting(app_hits.clone()),
        shutdown.clone(),
    )
    .await;

    let cases: Vec<Case> = istio_compat_cases()
        .into_iter()
        .filter(|c| !matches!(c.expect, Expect::Invalid(_)))
        .collect();
    let mut failures = Vec::new();
    let mut sent = 0;
    for (i, c) in cases.iter().enumerate() {
        let Some(req) = LiveRequest::from_args(&c.args) else {
            eprintln!(
                "not sent through the sidecar (not a loopback request to prod/api): {}",
                c.name
            );
            continue;
        };
        let host = u8::try_from(10 + i).expect("fewer than 245 cases");
        let config = dir.path().join(format!("case-{i}"));
        std::fs::create_dir(&config).unwrap();
        let mesh = base_mesh(c.default).replacen(
            "defaultAuthorization:",
            "mtls: {mode: PERMISSIVE}, defaultAuthorization:",
            1,
        );
        std::fs::write(config.join("mesh.yaml"), mesh).unwrap();
        std::fs::write(config.join("policies.yaml"), c.policies.join("---\n")).unwrap();

        // What `authz check` says about this very configuration.
        let config_arg = config.to_str().unwrap().to_owned();
        let mut args = vec![
            "authz",
            "check",
            "--output",
            "json",
            "--config",
            &config_arg,
        ];
        args.extend(["--to", "prod/api"]);
        args.extend(c.args.iter().copied());
        args.extend(request_described(&c.args));
        let out = Command::new(palisade_bin()).args(&args).output().unwrap();
        let checked = match out.status.code() {
            Some(0) => true,
            Some(3) => false,
            other => panic!(
                "{}: authz check exit {other:?}: {}",
                c.name,
                String::from_utf8_lossy(&out.stderr)
            ),
        };

        let (inbound, admin) = (block.addr(host, 15006), block.addr(host, 15000));
        let flags: Vec<String> = [
            "proxy",
            "--workload",
            "api",
            "--namespace",
            "prod",
            "--service-account",
            "api",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "--trust-anchors".into(),
            anchors.display().to_string(),
            "--static-config".into(),
            config_arg.clone(),
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key_file.display().to_string(),
            "--inbound".into(),
            inbound.to_string(),
            "--outbound".into(),
            block.addr(host, 15001).to_string(),
            "--admin".into(),
            admin.to_string(),
            "--app-host".into(),
            block.ip(1).to_string(),
            "--worker-threads".into(),
            "1".into(),
        ])
        .collect();
        let proxy = ChildGuard::palisade(&format!("api-{i}"), &flags, dir.path());
        poll(
            READY_TIMEOUT,
            std::time::Duration::from_millis(50),
            "sidecar ready",
            || async {
                try_admin_get(admin, "/ready")
                    .await
                    .filter(|r| r.status == 200)
                    .map(|_| ())
            },
        )
        .await;

        let status = timed("the case's request", send_live(inbound, &ca, &api, &req)).await;
        sent += 1;
        let live = match status {
            Ok(200) => Some(true),
            Ok(403) => Some(false),
            _ => None,
        };
        let want = matches!(c.expect, Expect::Allow(..));
        if live != Some(checked) || checked != want {
            failures.push(format!(
                "{}: sidecar answered {status:?}, authz check {}, expected {}\n{}",
                c.name,
                if checked { "ALLOW" } else { "DENY" },
                if want { "ALLOW" } else { "DENY" },
                proxy.log_text()
            ));
        }
        if let Some((would, policy)) = c.dry_run {
            let metrics = try_admin_get(admin, "/metrics")
                .await
                .map(|r| r.text())
                .unwrap_or_default();
            let would = would.to_ascii_lowercase();
            let count = metric(
                &metrics,
                "palisade_proxy_authz_dry_run_total",
                &[
                    &format!("policy=\"{policy}\""),
                    &format!("would=\"{would}\""),
                ],
            );
            if count < 1.0 {
                failures.push(format!(
                    "{}: no dry-run sample policy={policy} would={would} in\n{metrics}",
                    c.name
                ));
            }
            // A would-be decision that differs from the enforced one is logged as such.
            let differs = (would == "allow") != want;
            if differs
                && !proxy
                    .log_text()
                    .contains("by dry-run policies (not enforced)")
            {
                failures.push(format!(
                    "{}: no dry-run log line in\n{}",
                    c.name,
                    proxy.log_text()
                ));
            }
        }
        drop(proxy);
    }
    shutdown.cancel();
    assert!(
        sent >= 30,
        "only {sent} cases were sent through the sidecar"
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} cases disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("sidecar agrees with authz check on {sent} cases");
}
