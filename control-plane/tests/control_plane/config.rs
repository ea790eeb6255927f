//! The directory loader: one table of invalid configurations, each error checked for its
//! file, document and field in the one-line message; and a valid multi-file mesh.

use std::net::IpAddr;
use std::time::Duration;

use palisade_control_plane::load_dir;
use palisade_control_plane::model::Protocol;
use palisade_control_plane::policy::{Action, StringMatch};
use palisade_control_plane::test_util::write_config_dir;

use super::support::{MESH, POLICIES, SERVICES, WORKLOADS, shop};

const HEAD: &str = "apiVersion: palisade.dev/v1alpha1\n";

fn workload(name: &str, address: &str, ports: &str) -> String {
    format!(
        "{HEAD}kind: Workload\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {name}}}}}\n\
         spec:\n  address: {address}\n  ports: {ports}\n"
    )
}

fn service(name: &str, ports: &str) -> String {
    format!(
        "{HEAD}kind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  selector: {{app: {name}}}\n  ports: {ports}\n"
    )
}

const ISTIO: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n";

/// An Istio AuthorizationPolicy `shop/p` in p.yaml with `spec` written in flow style.
fn authz(spec: &str) -> Vec<(&'static str, String)> {
    vec![(
        "p.yaml",
        format!("{ISTIO}metadata: {{name: p, namespace: shop}}\nspec: {spec}\n"),
    )]
}

/// An AuthorizationPolicy with one rule whose `from[0].source` is `source`.
fn authz_source(source: &str) -> Vec<(&'static str, String)> {
    authz(&format!("{{rules: [{{from: [{{source: {source}}}]}}]}}"))
}

/// An AuthorizationPolicy with one rule whose `to[0].operation` is `operation`.
fn authz_operation(operation: &str) -> Vec<(&'static str, String)> {
    authz(&format!(
        "{{rules: [{{to: [{{operation: {operation}}}]}}]}}"
    ))
}

/// An AuthorizationPolicy with one rule whose `when[0]` is `condition`.
fn authz_when(condition: &str) -> Vec<(&'static str, String)> {
    authz(&format!("{{rules: [{{when: [{condition}]}}]}}"))
}

/// An EgressPolicy `shop/e` in e.yaml.
fn egress(spec: &str) -> Vec<(&'static str, String)> {
    vec![(
        "e.yaml",
        format!("{HEAD}kind: EgressPolicy\nmetadata: {{name: e, namespace: shop}}\nspec: {spec}\n"),
    )]
}

const AP: &str = "p.yaml: document 1 (AuthorizationPolicy shop/p): ";
const REJECTED: &str = "a policy using it is rejected rather than enforced partially";

struct Case {
    name: &'static str,
    files: Vec<(&'static str, String)>,
    /// Substrings the first error's one-line message must contain.
    expect: Vec<&'static str>,
}

fn case(name: &'static str, files: Vec<(&'static str, String)>, expect: Vec<&'static str>) -> Case {
    Case {
        name,
        files,
        expect,
    }
}

fn search_workload() -> (&'static str, String) {
    (
        "w.yaml",
        workload("search", "127.0.1.2", "[{name: http, port: 8080}]"),
    )
}

#[test]
fn invalid_configurations_are_reported_with_file_document_and_field() {
    let cases = vec![
        case(
            "malformed YAML",
            vec![("bad.yaml", format!("{HEAD}kind: Workload\nmetadata: {{name: a\nspec: {{}}\n"))],
            vec!["bad.yaml:", "document 1", "invalid YAML"],
        ),
        case(
            "unknown field",
            vec![("w.yaml", workload("search", "127.0.1.2", "[{name: http, port: 8080, targetPort: 80}]"))],
            vec!["w.yaml: document 1 (Workload shop/search): spec.ports[0]", "targetPort"],
        ),
        case(
            "unknown field in spec",
            vec![(
                "w.yaml",
                format!("{HEAD}kind: Workload\nmetadata: {{name: a}}\nspec: {{address: 127.0.0.2, adress: x}}\n"),
            )],
            vec!["w.yaml: document 1 (Workload default/a): spec", "unknown field `adress`"],
        ),
        case(
            "unknown kind",
            vec![("k.yaml", format!("{HEAD}kind: Pod\nmetadata: {{name: a}}\n"))],
            vec!["k.yaml: document 1 (Pod default/a): kind: unknown kind \"Pod\""],
        ),
        case(
            "missing kind",
            vec![("k.yaml", format!("{HEAD}metadata: {{name: a}}\n"))],
            vec!["k.yaml: document 1", ": kind: is required"],
        ),
        case(
            "bad apiVersion",
            vec![("s.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {}\n".to_owned())],
            vec!["s.yaml: document 1 (Service default/a): apiVersion: unsupported apiVersion \"v1\""],
        ),
        case(
            "Service selecting nothing",
            vec![search_workload(), ("s.yaml", service("payments", "[{port: 9090}]"))],
            vec!["s.yaml: document 1 (Service shop/payments): spec.selector: selects no Workload"],
        ),
        case(
            "Service without selector",
            vec![(
                "s.yaml",
                format!("{HEAD}kind: Service\nmetadata: {{name: a}}\nspec: {{ports: [{{port: 80}}]}}\n"),
            )],
            vec!["s.yaml: document 1 (Service default/a): spec.selector: is required"],
        ),
        case(
            "wrong targetPort",
            vec![search_workload(), (
                "svc.yaml",
                format!("---\n{}---\n{}", service("search", "[{port: 80, targetPort: 8080}]"),
                    service("search2", "[{port: 80, targetPort: 9999}]").replace("app: search2", "app: search")),
            )],
            vec!["svc.yaml: document 2 (Service shop/search2): spec.ports[0].targetPort: port 9999 is not exposed by Workload shop/search (it exposes 8080)"],
        ),
        case(
            "port 0",
            vec![("w.yaml", workload("search", "127.0.1.2", "[{port: 0}]"))],
            vec!["w.yaml: document 1 (Workload shop/search): spec.ports[0].port: port 0 is out of range"],
        ),
        case(
            "port 70000",
            vec![search_workload(), ("s.yaml", service("search", "[{port: 80}, {port: 70000}]"))],
            vec!["s.yaml: document 1 (Service shop/search): spec.ports[1].port: port 70000 is out of range"],
        ),
        case(
            "duplicate port",
            vec![("w.yaml", workload("search", "127.0.1.2", "[{port: 80}, {port: 80}]"))],
            vec!["spec.ports[1].port: port 80 is listed twice"],
        ),
        case(
            "duplicate names across files",
            vec![search_workload(), ("x.yaml", workload("search", "127.0.1.9", "[]"))],
            vec!["x.yaml: document 1 (Workload shop/search): metadata.name: Workload shop/search is already defined in ", "w.yaml document 1"],
        ),
        case(
            "duplicate address",
            vec![search_workload(), ("x.yaml", workload("payments", "127.0.1.2", "[]"))],
            vec!["x.yaml: document 1 (Workload shop/payments): spec.address: address 127.0.1.2 is already used by Workload shop/search", "w.yaml document 1"],
        ),
        case(
            "bad address",
            vec![("w.yaml", workload("search", "search.local", "[]"))],
            vec!["spec.address: \"search.local\" is not an IP address"],
        ),
        case(
            "bad appProtocol",
            vec![("w.yaml", workload("search", "127.0.1.2", "[{port: 80, appProtocol: quic}]"))],
            vec!["w.yaml: document 1 (Workload shop/search): spec.ports[0].appProtocol: unknown appProtocol \"quic\""],
        ),
        case(
            "UDP protocol",
            vec![search_workload(), ("s.yaml", service("search", "[{port: 8080, protocol: UDP}]"))],
            vec!["s.yaml: document 1 (Service shop/search): spec.ports[0].protocol: \"UDP\" is not supported"],
        ),
        case(
            "protocol conflict",
            vec![search_workload(), ("s.yaml", service("search", "[{port: 8080, appProtocol: grpc}]"))],
            vec!["s.yaml: document 1 (Service shop/search): spec.ports[0].appProtocol: protocol grpc conflicts with port 8080 of Workload shop/search, which speaks http"],
        ),
        case(
            "bad certificateLifetime",
            vec![("m.yaml", format!("{HEAD}kind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{certificateLifetime: 1y}}\n"))],
            vec!["m.yaml: document 1 (MeshConfig default/mesh): spec.certificateLifetime: invalid duration \"1y\""],
        ),
        case(
            "certificateLifetime below minimum",
            vec![("m.yaml", format!("{HEAD}kind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{certificateLifetime: 2s}}\n"))],
            vec!["spec.certificateLifetime: 2s is shorter than the minimum of 5s"],
        ),
        case(
            "bad mTLS mode",
            vec![("m.yaml", format!("{HEAD}kind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{mtls: {{mode: strict}}}}\n"))],
            vec!["spec.mtls.mode: \"strict\" is not valid (expected STRICT or PERMISSIVE)"],
        ),
        case(
            "path normalisation NONE",
            vec![("m.yaml", format!("{HEAD}kind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{pathNormalization: {{normalization: NONE}}}}\n"))],
            vec!["spec.pathNormalization.normalization: NONE is not supported"],
        ),
        case(
            "unknown path normalisation",
            vec![("m.yaml", format!("{HEAD}kind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{pathNormalization: {{normalization: merge_slashes}}}}\n"))],
            vec!["spec.pathNormalization.normalization: \"merge_slashes\" is not valid"],
        ),
        case(
            "two MeshConfigs",
            vec![
                ("a.yaml", format!("{HEAD}kind: MeshConfig\nmetadata: {{name: one}}\n")),
                ("b.yaml", format!("{HEAD}kind: MeshConfig\nmetadata: {{name: two}}\n")),
            ],
            vec!["b.yaml: document 1 (MeshConfig default/two): a mesh has one MeshConfig", "a.yaml document 1"],
        ),
        case(
            "name not a DNS label",
            vec![("w.yaml", workload("Search", "127.0.1.2", "[]"))],
            vec!["w.yaml: document 1 (Workload shop/Search): metadata.name: \"Search\" is not a DNS-1123 label"],
        ),
        case(
            "wrong type",
            vec![("w.yaml", workload("search", "127.0.1.2", "[{port: http}]"))],
            vec!["w.yaml: document 1 (Workload shop/search): spec.ports[0].port: invalid type: string \"http\", expected a port number"],
        ),
        case(
            "policy with bad metadata still checked",
            vec![("p.yaml", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, uid: x}\nspec: {}\n".to_owned())],
            vec!["p.yaml: document 1 (AuthorizationPolicy default/a): metadata", "unknown field `uid`"],
        ),
        case(
            "cluster IP that is not an IP",
            vec![
                search_workload(),
                (
                    "s.yaml",
                    format!("{HEAD}kind: Service\nmetadata: {{name: search, namespace: shop}}\nspec:\n  selector: {{app: search}}\n  clusterIP: 10.0.0.300\n  ports: [{{port: 8080}}]\n"),
                ),
            ],
            vec!["s.yaml: document 1 (Service shop/search): spec.clusterIP"],
        ),
        case(
            "inbound-port annotation that is not a port",
            vec![(
                "w.yaml",
                format!("{HEAD}kind: Workload\nmetadata: {{name: search, namespace: shop, labels: {{app: search}}, annotations: {{palisade.dev/inbound-port: \"0\"}}}}\nspec:\n  address: 127.0.1.2\n"),
            )],
            vec!["w.yaml: document 1 (Workload shop/search): metadata.annotations[palisade.dev/inbound-port]"],
        ),
        case(
            "Istio kind other than AuthorizationPolicy",
            vec![("p.yaml", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\n".to_owned())],
            vec!["p.yaml: document 1 (PeerAuthentication default/a): kind: kind \"PeerAuthentication\""],
        ),
        // AuthorizationPolicy: every unsupported field is rejected by name, never ignored.
        case(
            "requestPrincipals",
            authz_source("{principals: [cluster.local/ns/shop/sa/a], requestPrincipals: [\"*\"]}"),
            vec![AP, "spec.rules[0].from[0].source.requestPrincipals: not supported by Palisade (JWT request authentication is not implemented); a policy using it is rejected rather than enforced partially"],
        ),
        case(
            "notRequestPrincipals",
            authz_source("{notRequestPrincipals: [\"*\"]}"),
            vec![AP, "spec.rules[0].from[0].source.notRequestPrincipals: not supported", "JWT", REJECTED],
        ),
        case(
            "remoteIpBlocks",
            authz_source("{remoteIpBlocks: [10.0.0.0/8]}"),
            vec![AP, "spec.rules[0].from[0].source.remoteIpBlocks: not supported", "X-Forwarded-For", REJECTED],
        ),
        case(
            "notRemoteIpBlocks",
            authz_source("{namespaces: [shop], notRemoteIpBlocks: [10.0.0.0/8]}"),
            vec![AP, "spec.rules[0].from[0].source.notRemoteIpBlocks: not supported", "X-Forwarded-For"],
        ),
        case(
            "serviceAccounts without a namespace",
            authz_source("{serviceAccounts: [shop/frontend, frontend]}"),
            vec![AP, "spec.rules[0].from[0].source.serviceAccounts[1]: \"frontend\": expected <namespace>/<service account>"],
        ),
        case(
            "provider",
            authz("{provider: {name: opa}, rules: [{}]}"),
            vec![AP, "spec.provider: not supported by Palisade (there is no external authorizer", REJECTED],
        ),
        case(
            "CUSTOM action",
            authz("{action: CUSTOM, rules: [{}]}"),
            vec![AP, "spec.action: CUSTOM is not supported by Palisade (there is no external authorizer)", REJECTED],
        ),
        case(
            "targetRef",
            authz("{targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}}"),
            vec![AP, "spec.targetRef: not supported by Palisade", "spec.selector"],
        ),
        case(
            "targetRefs",
            authz("{targetRefs: [{kind: Service, group: \"\", name: search}]}"),
            vec![AP, "spec.targetRefs: not supported by Palisade"],
        ),
        case(
            "unknown action",
            authz("{action: allow}"),
            vec![AP, "spec.action: \"allow\" is not valid (expected ALLOW, DENY or AUDIT)"],
        ),
        case(
            "unknown field in a source",
            authz_source("{principal: [cluster.local/ns/shop/sa/a]}"),
            vec![AP, "spec.rules[0].from[0].source.principal: unknown field `principal`"],
        ),
        case(
            "unknown field in spec",
            authz("{selectors: {matchLabels: {app: search}}}"),
            vec![AP, "spec.selectors: unknown field `selectors`"],
        ),
        case(
            "matchExpressions in the selector",
            authz("{selector: {matchExpressions: []}}"),
            vec![AP, "spec.selector.matchExpressions: unknown field `matchExpressions`"],
        ),
        case(
            "when key request.auth.claims",
            authz_when("{key: \"request.auth.claims[iss]\", values: [x]}"),
            vec![AP, "spec.rules[0].when[0].key: \"request.auth.claims[iss]\" is not supported by Palisade (JWT", REJECTED],
        ),
        case(
            "when key remote.ip",
            authz_when("{key: remote.ip, values: [10.0.0.1]}"),
            vec![AP, "spec.rules[0].when[0].key: \"remote.ip\" is not supported by Palisade (remote addresses from X-Forwarded-For"],
        ),
        case(
            "when key experimental",
            authz_when("{key: \"experimental.envoy.filters.network.mysql_proxy[db.table]\", values: [x]}"),
            vec![AP, "spec.rules[0].when[0].key: \"experimental.envoy", "not supported"],
        ),
        case(
            "unknown when key",
            authz_when("{key: source.user, values: [x]}"),
            vec![AP, "spec.rules[0].when[0].key: unknown key \"source.user\" (supported keys:"],
        ),
        case(
            "bad header name in a when key",
            authz_when("{key: \"request.headers[x tenant]\", values: [a]}"),
            vec![AP, "spec.rules[0].when[0].key:", "is not a valid header name"],
        ),
        case(
            "when without values",
            authz_when("{key: source.namespace, values: [], notValues: []}"),
            vec![AP, "spec.rules[0].when[0]: at least one of values or notValues must be set and non-empty"],
        ),
        case(
            "when port value not a port",
            authz_when("{key: destination.port, values: [\"8080\", http]}"),
            vec![AP, "spec.rules[0].when[0].values[1]: \"http\" is not a port number"],
        ),
        case(
            "when source.ip value not an address",
            authz_when("{key: source.ip, notValues: [10.0.0.1/40]}"),
            vec![AP, "spec.rules[0].when[0].notValues[0]: \"10.0.0.1/40\": prefix length must be a number from 0 to 32"],
        ),
        case(
            "* inside a value",
            authz_operation("{hosts: [\"a*b.example.com\"]}"),
            vec![AP, "spec.rules[0].to[0].operation.hosts[0]: \"a*b.example.com\": '*' is only allowed alone, at the start or at the end"],
        ),
        case(
            "** as a value",
            authz_operation("{methods: [GET, \"**\"]}"),
            vec![AP, "spec.rules[0].to[0].operation.methods[1]: \"**\": '*' is only allowed"],
        ),
        case(
            "empty value",
            authz_operation("{paths: [\"\"]}"),
            vec![AP, "spec.rules[0].to[0].operation.paths[0]: an empty value is not allowed"],
        ),
        case(
            "malformed Istio path template",
            authz_operation("{paths: [\"/api/{**}/items/{*}\"]}"),
            vec![AP, "spec.rules[0].to[0].operation.paths[0]:", "not a valid path template", "{**} must be the last operator"],
        ),
        case(
            "path without a leading slash",
            authz_operation("{notPaths: [admin]}"),
            vec![AP, "spec.rules[0].to[0].operation.notPaths[0]: \"admin\" can never match"],
        ),
        case(
            "port that is not a number",
            authz_operation("{ports: [\"8080\", \"http\"]}"),
            vec![AP, "spec.rules[0].to[0].operation.ports[1]: \"http\" is not a port number (1 to 65535)"],
        ),
        case(
            "port 0",
            authz_operation("{notPorts: [\"0\"]}"),
            vec![AP, "spec.rules[0].to[0].operation.notPorts[0]: port 0 is out of range (1 to 65535)"],
        ),
        case(
            "port 70000 as an integer",
            authz_operation("{ports: [70000]}"),
            vec![AP, "spec.rules[0].to[0].operation.ports[0]: port 70000 is out of range"],
        ),
        case(
            "bad CIDR",
            authz_source("{ipBlocks: [10.0.0.0/8, 10.0.0.300/24]}"),
            vec![AP, "spec.rules[0].from[0].source.ipBlocks[1]: \"10.0.0.300/24\" is not an IP address or CIDR"],
        ),
        case(
            "bad principal",
            authz_source("{principals: [cluster.local/ns/shop/sa/a, frontend]}"),
            vec![AP, "spec.rules[0].from[0].source.principals[1]: \"frontend\" is not a valid SPIFFE ID"],
        ),
        case(
            "bad notPrincipal with scheme",
            authz_source("{notPrincipals: [\"spiffe://cluster.local/ns/shop/sa/\"]}"),
            vec![AP, "spec.rules[0].from[0].source.notPrincipals[0]:", "is not a valid SPIFFE ID"],
        ),
        case(
            "namespace that cannot exist",
            authz_source("{namespaces: [Shop]}"),
            vec![AP, "spec.rules[0].from[0].source.namespaces[0]: \"Shop\" is not a DNS-1123 label"],
        ),
        case(
            "empty source",
            authz_source("{}"),
            vec![AP, "spec.rules[0].from[0].source: must set at least one field"],
        ),
        case(
            "from without source",
            authz("{rules: [{from: [{}]}]}"),
            vec![AP, "spec.rules[0].from[0].source: is required"],
        ),
        case(
            "empty from",
            authz("{rules: [{}, {from: []}]}"),
            vec![AP, "spec.rules[1].from: must not be empty"],
        ),
        case(
            "empty operation",
            authz_operation("{hosts: []}"),
            vec![AP, "spec.rules[0].to[0].operation: must set at least one field"],
        ),
        case(
            "DENY without rules",
            authz("{action: DENY, selector: {matchLabels: {app: search}}}"),
            vec![AP, "spec.rules: a DENY policy without rules never matches"],
        ),
        case(
            "wildcard in a selector",
            authz("{selector: {matchLabels: {app: \"*\"}}}"),
            vec![AP, "spec.selector.matchLabels[app]: wildcards are not allowed"],
        ),
        case(
            "duplicate AuthorizationPolicy",
            vec![
                ("a.yaml", format!("{ISTIO}metadata: {{name: p, namespace: shop}}\nspec: {{}}\n")),
                ("b.yaml", format!("{HEAD}kind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\nspec: {{}}\n")),
            ],
            vec!["b.yaml: document 1 (AuthorizationPolicy shop/p): metadata.name: AuthorizationPolicy shop/p is already defined in ", "a.yaml document 1"],
        ),
        // EgressPolicy.
        case(
            "EgressPolicy without hosts",
            egress("{ports: [443]}"),
            vec!["e.yaml: document 1 (EgressPolicy shop/e): spec.hosts: spec.hosts or spec.ipBlocks is required and must not be empty"],
        ),
        case(
            "EgressPolicy with an empty host list",
            egress("{hosts: []}"),
            vec!["e.yaml: document 1 (EgressPolicy shop/e): spec.hosts: spec.hosts or spec.ipBlocks is required"],
        ),
        case(
            "EgressPolicy with a bad address block",
            egress("{ipBlocks: [192.0.2.0/24, 10.0.0.300/8]}"),
            vec!["e.yaml: document 1 (EgressPolicy shop/e): spec.ipBlocks[1]: \"10.0.0.300/8\" is not an IP address or CIDR"],
        ),
        case(
            "EgressPolicy allowing every address",
            egress("{ipBlocks: [\"::/0\"]}"),
            vec!["e.yaml: document 1 (EgressPolicy shop/e): spec.ipBlocks[0]: \"::/0\" would allow every address", "ALLOW_ANY"],
        ),
        case(
            "EgressPolicy with a wildcard in the middle",
            egress("{hosts: [api.stripe.com, \"a.*.example.com\"]}"),
            vec!["e.yaml: document 1 (EgressPolicy shop/e): spec.hosts[1]: \"a.*.example.com\" is not a host name"],
        ),
        case(
            "EgressPolicy allowing every host",
            egress("{hosts: [\"*\"]}"),
            vec!["e.yaml: document 1 (EgressPolicy shop/e): spec.hosts[0]:", "ALLOW_ANY"],
        ),
        case(
            "EgressPolicy port out of range",
            egress("{hosts: [api.stripe.com], ports: [443, 0]}"),
            vec!["e.yaml: document 1 (EgressPolicy shop/e): spec.ports[1]: port 0 is out of range"],
        ),
        case(
            "EgressPolicy unknown field",
            egress("{hosts: [api.stripe.com], protocol: TLS}"),
            vec!["e.yaml: document 1 (EgressPolicy shop/e): spec.protocol: unknown field `protocol`"],
        ),
        case(
            "EgressPolicy with Istio's apiVersion",
            vec![("e.yaml", "apiVersion: security.istio.io/v1\nkind: EgressPolicy\nmetadata: {name: e}\nspec: {hosts: [a.com]}\n".to_owned())],
            vec!["e.yaml: document 1 (EgressPolicy default/e): kind: kind \"EgressPolicy\" of security.istio.io/v1 is not supported"],
        ),
    ];
    let mut failures = Vec::new();
    for c in cases {
        let files: Vec<(&str, &str)> = c.files.iter().map(|(n, s)| (*n, s.as_str())).collect();
        let dir = write_config_dir(&files).unwrap();
        let err = match load_dir(dir.path()) {
            Ok(_) => {
                failures.push(format!("{}: loaded, expected an error", c.name));
                continue;
            }
            Err(e) => e,
        };
        let line = err.to_string();
        if std::env::var_os("PRINT_ERRORS").is_some() {
            println!("{}: {line}", c.name);
        }
        assert!(
            !line.contains('\n'),
            "{}: message is not one line: {line}",
            c.name
        );
        for want in &c.expect {
            if !line.contains(want) {
                failures.push(format!("{}: {line:?} lacks {want:?}", c.name));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn syntax_errors_name_line_and_column() {
    let dir = write_config_dir(&[(
        "bad.yaml",
        "apiVersion: palisade.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: [a\n",
    )])
    .unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    let first = err.first();
    assert!(first.file.ends_with("bad.yaml"));
    let loc = first.location.expect("a syntax error has a location");
    assert!(loc.line >= 4, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("bad.yaml:{}:{}: ", loc.line, loc.column)),
        "{err}"
    );
}

#[test]
fn all_errors_are_collected() {
    let dir = write_config_dir(
        &[
            ("a.yaml", workload("a", "127.0.1.2", "[{port: 0}]")),
            ("b.yaml", workload("b", "nope", "[]")),
        ]
        .iter()
        .map(|(n, s)| (*n, s.as_str()))
        .collect::<Vec<_>>(),
    )
    .unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    assert_eq!(err.len(), 2, "{err:?}");
    assert!(err.to_string().ends_with(" (and 1 more)"), "{err}");
    assert!(err.iter().nth(1).unwrap().to_string().contains("b.yaml"));
}

#[test]
fn empty_or_missing_directory_is_an_error() {
    let dir = write_config_dir(&[("README.md", "not yaml"), (".hidden.yaml", "x: [")]).unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("no *.yaml or *.yml file"), "{err}");
    assert!(
        err.to_string()
            .starts_with(&dir.path().display().to_string()),
        "{err}"
    );
    let missing = dir.path().join("missing");
    let err = load_dir(&missing).unwrap_err();
    assert!(
        err.to_string().starts_with(&missing.display().to_string()),
        "{err}"
    );
}

#[test]
fn valid_directory_loads_with_endpoints_and_hostnames() {
    let mut files = shop();
    files.push(("notes.txt", "ignored"));
    files.push((".editor.yaml", "ignored: ["));
    let dir = write_config_dir(&files).unwrap();
    let snapshot = load_dir(dir.path()).unwrap();

    let settings = snapshot.settings();
    assert_eq!(settings.trust_domain.as_str(), "cluster.local");
    assert_eq!(settings.root_namespace, "palisade-system");
    assert_eq!(settings.certificate_lifetime, Duration::from_secs(3600));

    assert_eq!(snapshot.workloads().len(), 3);
    let search = snapshot.workload("shop", "search").unwrap();
    assert_eq!(
        search.identity.as_str(),
        "spiffe://cluster.local/ns/shop/sa/search"
    );
    assert_eq!(search.address, "127.0.1.2".parse::<IpAddr>().unwrap());
    assert_eq!(
        search
            .annotations
            .get("palisade.dev/app")
            .map(String::as_str),
        Some("search")
    );
    let payments = snapshot.workload("shop", "payments").unwrap();
    assert_eq!(
        payments.ports[0].protocol,
        Protocol::Grpc,
        "from the port name"
    );

    let svc = snapshot.service("shop", "search").unwrap();
    assert_eq!(
        svc.hostnames,
        [
            "search",
            "search.shop",
            "search.shop.svc",
            "search.shop.svc.cluster.local"
        ]
    );
    assert_eq!(svc.ports[0].target_port, 8080, "defaults to port");
    assert_eq!(svc.endpoints.len(), 1);
    assert_eq!(svc.endpoints[0].workload, "search");
    assert_eq!(svc.endpoints[0].identity, search.identity);
    let frontend = snapshot.service("shop", "frontend").unwrap();
    assert_eq!(
        (frontend.ports[0].port, frontend.ports[0].target_port),
        (80, 8080)
    );
    assert_eq!(
        snapshot.service("shop", "payments").unwrap().ports[0].protocol,
        Protocol::Grpc
    );

    assert_eq!(snapshot.authorization_policies().len(), 1);
    let policy = snapshot
        .authorization_policy("shop", "search-from-frontend")
        .unwrap();
    assert_eq!(policy.action, Action::Allow);
    assert_eq!(
        policy.rules[0].from[0].principals,
        [StringMatch::Exact(
            "cluster.local/ns/shop/sa/frontend".into()
        )]
    );
    assert!(policy.source.file.ends_with("policies.yaml"));
}

#[test]
fn defaults_apply_without_mesh_config() {
    let dir = write_config_dir(&[("w.yaml", WORKLOADS), ("s.yaml", SERVICES)]).unwrap();
    let snapshot = load_dir(dir.path()).unwrap();
    assert_eq!(snapshot.settings(), &Default::default());
    assert!(snapshot.settings_source().is_none());
    let _ = (MESH, POLICIES);
}

#[test]
fn path_normalization_is_read_from_mesh_config() {
    use palisade_control_plane::model::PathNormalization;
    let defaults = palisade_control_plane::model::MeshSettings::default();
    assert_eq!(defaults.path_normalization, PathNormalization::Base);
    assert!(defaults.reject_escaped_slashes);
    for (spec, normalization, reject) in [
        ("{normalization: DEFAULT}", PathNormalization::Base, true),
        (
            "{normalization: BASE, rejectEscapedSlashes: false}",
            PathNormalization::Base,
            false,
        ),
        (
            "{normalization: MERGE_SLASHES}",
            PathNormalization::MergeSlashes,
            true,
        ),
        (
            "{normalization: DECODE_AND_MERGE_SLASHES}",
            PathNormalization::DecodeAndMergeSlashes,
            true,
        ),
    ] {
        let mesh = format!(
            "{HEAD}kind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{pathNormalization: {spec}}}\n"
        );
        let dir = write_config_dir(&[("m.yaml", &mesh)]).unwrap();
        let snapshot = load_dir(dir.path()).unwrap();
        assert_eq!(
            snapshot.settings().path_normalization,
            normalization,
            "{spec}"
        );
        assert_eq!(snapshot.settings().reject_escaped_slashes, reject, "{spec}");
    }
}

#[test]
fn service_protocol_is_inherited_from_workloads_when_unspecified() {
    let files = [
        (
            "w.yaml",
            workload("db", "127.0.1.9", "[{name: tcp-pg, port: 5432}]"),
        ),
        ("s.yaml", service("db", "[{name: pg, port: 5432}]")),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, s)| (*n, s.as_str())).collect();
    let dir = write_config_dir(&files).unwrap();
    let snapshot = load_dir(dir.path()).unwrap();
    assert_eq!(
        snapshot.service("shop", "db").unwrap().ports[0].protocol,
        Protocol::Tcp
    );
}

#[test]
fn syntax_error_in_a_later_document_names_it() {
    let text = format!(
        "{}---\n{HEAD}kind: Workload\nmetadata: {{name: b\n",
        workload("a", "127.0.1.2", "[]")
    );
    let dir = write_config_dir(&[("multi.yaml", text.as_str())]).unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    let first = err.first();
    assert_eq!(first.document.as_ref().map(|d| d.index), Some(2), "{err}");
    assert!(first.location.unwrap().line >= 9, "{err}");
}

#[test]
fn duplicate_keys_are_rejected() {
    let text = format!(
        "{HEAD}kind: Workload\nmetadata: {{name: a}}\nspec: {{address: 127.0.1.2, address: 127.0.1.3}}\n"
    );
    let dir = write_config_dir(&[("dup.yaml", text.as_str())]).unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("dup.yaml"), "{err}");
    assert!(err.to_string().contains("duplicate"), "{err}");
}

#[test]
fn cluster_ip_routes_like_a_name_and_inbound_port_moves_endpoints() {
    let dir = write_config_dir(&[
        (
            "w.yaml",
            &format!("{HEAD}kind: Workload\nmetadata: {{name: search, namespace: shop, labels: {{app: search}}, annotations: {{palisade.dev/inbound-port: \"19042\"}}}}\nspec:\n  address: 127.0.0.1\n  ports: [{{port: 8080}}]\n"),
        ),
        (
            "s.yaml",
            &format!("{HEAD}kind: Service\nmetadata: {{name: search, namespace: shop}}\nspec:\n  selector: {{app: search}}\n  clusterIP: 10.96.0.10\n  ports: [{{port: 80, targetPort: 8080}}]\n"),
        ),
    ])
    .unwrap();
    let snapshot = load_dir(dir.path()).unwrap();
    let svc = snapshot.service("shop", "search").unwrap();
    assert_eq!(
        svc.cluster_ip,
        Some("10.96.0.10".parse::<IpAddr>().unwrap())
    );
    assert!(
        svc.hostnames.iter().any(|h| h == "10.96.0.10"),
        "{:?}",
        svc.hostnames
    );
    assert_eq!(svc.endpoints[0].proxy_port, 19042);
    assert_eq!(
        snapshot.workload("shop", "search").unwrap().proxy_port,
        19042
    );
}

#[test]
fn assigned_addresses_replace_spec_address_everywhere() {
    use palisade_control_plane::model::NamespacedName;
    let workloads = format!(
        "{}---\n{}",
        workload("search", "127.0.1.2", "[{port: 8080}]"),
        workload("payments", "127.0.1.3", "[{port: 9090}]")
    );
    let services = service("search", "[{port: 8080}]");
    let dir = write_config_dir(&[("w.yaml", &workloads), ("s.yaml", &services)]).unwrap();
    let pod: IpAddr = "10.77.0.2".parse().unwrap();
    let mut assigned = palisade_control_plane::AddressAssignments::new();
    assigned.insert(NamespacedName::new("shop", "search"), pod);
    // A workload that is not in the directory is ignored.
    assigned.insert(
        NamespacedName::new("shop", "gone"),
        "10.77.0.9".parse().unwrap(),
    );
    let snapshot = palisade_control_plane::load_dir_assigned(dir.path(), &assigned).unwrap();
    assert_eq!(snapshot.workload("shop", "search").unwrap().address, pod);
    assert_eq!(
        snapshot.workload("shop", "payments").unwrap().address,
        "127.0.1.3".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        snapshot.service("shop", "search").unwrap().endpoints[0].address,
        pod
    );
    // Assigned addresses are checked like written ones: two workloads cannot share one.
    assigned.insert(NamespacedName::new("shop", "payments"), pod);
    let err = palisade_control_plane::load_dir_assigned(dir.path(), &assigned).unwrap_err();
    assert!(err.to_string().contains("already used"), "{err}");
}
