//! NetworkPolicy conformance: the reachability model of the upstream Kubernetes
//! network-policy e2e suite (namespaces x, y, z; pods a, b, c in each; TCP ports 80 and 81),
//! decided by `palisade authz check --from-workload` for every pair and port, and compared
//! with the matrix the Kubernetes API reference defines for each policy set.
//!
//! Each case states its expectation as a predicate written from the policy's meaning, not
//! from the implementation; a mismatch prints both matrices the way the upstream suite does.

use std::process::Command;

use crate::support::procs::palisade_bin;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const PORTS: [u16; 2] = [80, 81];

/// One pod of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pod {
    ns: &'static str,
    name: &'static str,
}

impl Pod {
    fn is(&self, key: &str) -> bool {
        key.split_once('/') == Some((self.ns, self.name))
    }

    fn address(&self) -> String {
        let n = NAMESPACES.iter().position(|n| *n == self.ns).unwrap() + 1;
        let p = PODS.iter().position(|p| *p == self.name).unwrap() + 1;
        format!("10.0.{n}.{p}")
    }
}

fn pods() -> Vec<Pod> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |name| Pod { ns, name }))
        .collect()
}

/// Labels added to the model, for cases about selectors and updates.
#[derive(Debug, Default, Clone)]
struct Extra {
    /// `(namespace, "key: value")`.
    namespace_labels: Vec<(&'static str, &'static str)>,
    /// `("ns/pod", "key: value")`.
    pod_labels: Vec<(&'static str, &'static str)>,
}

type Expect = fn(Pod, Pod, u16) -> bool;

struct Case {
    name: &'static str,
    policies: Vec<&'static str>,
    extra: Extra,
    expect: Expect,
}

fn case(name: &'static str, policies: Vec<&'static str>, expect: Expect) -> Case {
    Case {
        name,
        policies,
        extra: Extra::default(),
        expect,
    }
}

/// The model as mesh YAML: Namespaces with `ns: <name>`, one Workload per pod (service
/// account `default`, as pods get by default), ports 80 and 81 (TCP) and a UDP port 80.
fn model_yaml(extra: &Extra) -> String {
    let mut docs = vec![
        "apiVersion: palisade.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {defaultAuthorization: allow}\n".to_owned(),
    ];
    for ns in NAMESPACES {
        let mut labels = format!("ns: {ns}");
        for (n, l) in &extra.namespace_labels {
            if *n == ns {
                labels.push_str(", ");
                labels.push_str(l);
            }
        }
        docs.push(format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {{{labels}}}\n"
        ));
    }
    for pod in pods() {
        let mut labels = format!("pod: {}", pod.name);
        for (p, l) in &extra.pod_labels {
            if pod.is(p) {
                labels.push_str(", ");
                labels.push_str(l);
            }
        }
        docs.push(format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: {}\n  namespace: {}\n  labels: {{{labels}}}\nspec:\n  serviceAccount: default\n  address: {}\n  ports:\n  - {{name: serve-80-tcp, port: 80}}\n  - {{name: serve-81-tcp, port: 81}}\n  - {{name: serve-80-udp, port: 80, protocol: UDP}}\n",
            pod.name,
            pod.ns,
            pod.address()
        ));
    }
    docs.join("---\n")
}

fn write_config(dir: &std::path::Path, extra: &Extra, policies: &[&str]) {
    std::fs::write(dir.join("model.yaml"), model_yaml(extra)).unwrap();
    std::fs::write(dir.join("policies.yaml"), policies.join("---\n")).unwrap();
}

/// `authz check`'s answer for one connection: `Ok(allowed)` or the failure.
fn check(config: &str, from: Pod, to: Pod, port: u16) -> Result<bool, String> {
    let from_arg = format!("{}/{}", from.ns, from.name);
    let to_arg = format!("{}/{}", to.ns, to.name);
    let port_arg = port.to_string();
    let out = Command::new(palisade_bin())
        .args([
            "authz",
            "check",
            "--output",
            "json",
            "--config",
            config,
            "--from-workload",
            &from_arg,
            "--to",
            &to_arg,
            "--port",
            &port_arg,
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let value: serde_json::Value = serde_json::from_str(stdout.trim()).map_err(|e| {
        format!(
            "exit {:?}, unreadable output ({e}): {stdout}{stderr}",
            out.status.code()
        )
    })?;
    let decision = value["decision"].as_str().unwrap_or_default();
    let nested = &value["network_policy"]["ingress"]["decision"];
    match (out.status.code(), decision) {
        (Some(0), "ALLOW") if nested.is_string() => Ok(true),
        (Some(3), "DENY") if nested.is_string() => Ok(false),
        (code, _) => Err(format!("exit {code:?}: {stdout}{stderr}")),
    }
}

/// The upstream suite's truth table: rows are callers, columns destinations, `.` allowed.
fn render(matrix: &[(Pod, Pod, bool)]) -> String {
    let pods = pods();
    let mut out = String::from("      ");
    for to in &pods {
        out.push_str(&format!("{}/{} ", to.ns, to.name));
    }
    out.push('\n');
    for from in &pods {
        out.push_str(&format!("  {}/{} ", from.ns, from.name));
        for to in &pods {
            let allowed = matrix
                .iter()
                .find(|(f, t, _)| f == from && t == to)
                .is_some_and(|(_, _, a)| *a);
            out.push_str(if allowed { " .  " } else { " X  " });
        }
        out.push('\n');
    }
    out
}

/// Decides the whole matrix of one case, several `authz check` processes at a time.
fn run_case(c: &Case) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &c.extra, &c.policies);
    let config = dir.path().to_str().unwrap().to_owned();
    let pods = pods();
    let mut failures = Vec::new();
    for port in PORTS {
        let pairs: Vec<(Pod, Pod)> = pods
            .iter()
            .flat_map(|f| pods.iter().map(move |t| (*f, *t)))
            .collect();
        let results: Vec<Result<(Pod, Pod, bool), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = pairs
                .chunks(pairs.len().div_ceil(4))
                .map(|chunk| {
                    let config = &config;
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|(f, t)| check(config, *f, *t, port).map(|a| (*f, *t, a)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let mut got = Vec::new();
        for r in results {
            match r {
                Ok(cell) => got.push(cell),
                Err(e) => return Err(format!("{}: port {port}: {e}", c.name)),
            }
        }
        let want: Vec<(Pod, Pod, bool)> = pairs
            .iter()
            .map(|(f, t)| (*f, *t, (c.expect)(*f, *t, port)))
            .collect();
        if got != want {
            failures.push(format!(
                "{}: port {port}\nexpected:\n{}got:\n{}",
                c.name,
                render(&want),
                render(&got)
            ));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

const DENY_INGRESS_X: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-ingress, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n";
const DENY_EGRESS_X: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-egress, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n";

fn cases() -> Vec<Case> {
    vec![
        case(
            "no policy: everything reaches everything",
            vec![],
            |_, _, _| true,
        ),
        case(
            "default deny ingress in x",
            vec![DENY_INGRESS_X],
            |_, t, _| t.ns != "x",
        ),
        case(
            "default deny egress in x",
            vec![DENY_EGRESS_X],
            |f, _, _| f.ns != "x",
        ),
        case(
            "default deny ingress and egress in x",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n",
            ],
            |f, t, _| f.ns != "x" && t.ns != "x",
        ),
        case(
            "deny all ingress, then allow all ingress: policies add up",
            vec![
                DENY_INGRESS_X,
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-all, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - {}\n",
            ],
            |_, _, _| true,
        ),
        case(
            "deny all ingress in x, an empty rule opens x/a",
            vec![
                DENY_INGRESS_X,
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: open-a, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{}]\n",
            ],
            |_, t, _| t.ns != "x" || t.is("x/a"),
        ),
        case(
            "podSelector: x/a only from x/b",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n",
            ],
            |f, t, _| !t.is("x/a") || f.is("x/b"),
        ),
        case(
            "podSelector matchExpressions In: x/a from x/b and x/c",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-bc, namespace: x}\nspec:\n  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a]}]}\n  ingress:\n  - from:\n    - podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}\n",
            ],
            |f, t, _| !t.is("x/a") || f.is("x/b") || f.is("x/c"),
        ),
        case(
            "namespaceSelector: x/a only from namespace y",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-y, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n",
            ],
            |f, t, _| !t.is("x/a") || f.ns == "y",
        ),
        case(
            "namespaceSelector matchExpressions NotIn: x/a from every namespace but y",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-not-from-y, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [y]}]}\n",
            ],
            |f, t, _| !t.is("x/a") || f.ns != "y",
        ),
        case(
            "namespaceSelector on the automatic kubernetes.io/metadata.name label",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-z, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}\n",
            ],
            |f, t, _| !t.is("x/a") || f.ns == "z",
        ),
        Case {
            name: "namespaceSelector matchExpressions Exists",
            policies: vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-team, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: team, operator: Exists}]}\n",
            ],
            extra: Extra {
                namespace_labels: vec![("z", "team: blue")],
                ..Extra::default()
            },
            expect: |f, t, _| !t.is("x/a") || f.ns == "z",
        },
        Case {
            name: "namespaceSelector matchExpressions DoesNotExist",
            policies: vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-not-from-team, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: team, operator: DoesNotExist}]}\n",
            ],
            extra: Extra {
                namespace_labels: vec![("z", "team: blue")],
                ..Extra::default()
            },
            expect: |f, t, _| !t.is("x/a") || f.ns != "z",
        },
        case(
            "two peers are OR: pods of x but a, or any pod outside x",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-or, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a]}]}\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}\n",
            ],
            |f, t, _| !t.is("x/a") || !f.is("x/a"),
        ),
        case(
            "podSelector and namespaceSelector in one peer are AND: pod b outside x",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-and, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}\n      podSelector: {matchLabels: {pod: b}}\n",
            ],
            |f, t, _| !t.is("x/a") || (f.ns != "x" && f.name == "b"),
        ),
        case(
            "ports: x/a only on 81",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-81, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 81}]\n",
            ],
            |_, t, port| !t.is("x/a") || port == 81,
        ),
        case(
            "named port: x/a only on serve-80-tcp",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-named, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{protocol: TCP, port: serve-80-tcp}]\n",
            ],
            |_, t, port| !t.is("x/a") || port == 80,
        ),
        case(
            "a UDP port, named or numbered, opens no TCP port",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-udp, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{protocol: UDP, port: serve-80-udp}, {protocol: UDP, port: 81}]\n",
            ],
            |_, t, _| !t.is("x/a"),
        ),
        case(
            "endPort: x/a on 81 to 90",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-range, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 81, endPort: 90}]\n",
            ],
            |_, t, port| !t.is("x/a") || port == 81,
        ),
        case(
            "egress endPort: x/a may reach 75 to 80 only",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-out-range, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{protocol: TCP, port: 75, endPort: 80}]\n",
            ],
            |f, _, port| !f.is("x/a") || port == 80,
        ),
        case(
            "egress named port: x/a may reach serve-81-tcp anywhere",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-out-named, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: serve-81-tcp}]\n",
            ],
            |f, _, port| !f.is("x/a") || port == 81,
        ),
        case(
            "egress ipBlock with except: x/a reaches every pod but y/b",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-out-cidr, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.2/32]}\n",
            ],
            |f, t, _| !f.is("x/a") || !t.is("y/b"),
        ),
        case(
            "ingress ipBlock: x/a only from 10.0.3.0/24 (namespace z)",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-cidr, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.3.0/24}\n",
            ],
            |f, t, _| !t.is("x/a") || f.ns == "z",
        ),
        case(
            "egress and ingress together: both sides must allow",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-to-y, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {ns: y}}\n",
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b-from-xb, namespace: y}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: x}}\n      podSelector: {matchLabels: {pod: b}}\n",
            ],
            |f, t, _| (!f.is("x/a") || t.ns == "y") && (!t.is("y/b") || f.is("x/b")),
        ),
        case(
            "an egress section without policyTypes isolates ingress too",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-egress-only, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  egress:\n  - to:\n    - namespaceSelector: {}\n",
            ],
            |_, t, _| !t.is("x/a"),
        ),
        case(
            "an empty from list admits every source on the listed port",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-80-all, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: []\n    ports: [{port: 80}]\n",
            ],
            |_, t, port| !t.is("x/a") || port == 80,
        ),
        case(
            "an empty ingress list allows nothing",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-none, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: []\n",
            ],
            |_, t, _| !t.is("x/a"),
        ),
        case(
            "several policies add up: x/a from x/b and from y/c",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n",
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-yc, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchLabels: {pod: c}}\n",
            ],
            |f, t, _| !t.is("x/a") || f.is("x/b") || f.is("y/c"),
        ),
        case(
            "a policy selects pods of its own namespace only",
            vec![
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-a, namespace: y}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]\n",
            ],
            |_, t, _| !t.is("y/a"),
        ),
        case(
            "deny egress in x, then allow egress to namespace z",
            vec![
                DENY_EGRESS_X,
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: to-z, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {ns: z}}\n",
            ],
            |f, t, _| f.ns != "x" || t.ns == "z",
        ),
    ]
}

/// Updates: the same policies before and after a label changes.
fn updates() -> Vec<Case> {
    const FROM_TEAM_RED: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-red, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: red}}\n";
    const FROM_CLIENTS: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-clients, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {role: client}}\n";
    vec![
        case(
            "update, before: no namespace is team red",
            vec![FROM_TEAM_RED],
            |_, t, _| !t.is("x/a"),
        ),
        Case {
            name: "update, after: namespace y becomes team red",
            policies: vec![FROM_TEAM_RED],
            extra: Extra {
                namespace_labels: vec![("y", "team: red")],
                ..Extra::default()
            },
            expect: |f, t, _| !t.is("x/a") || f.ns == "y",
        },
        case(
            "update, before: no pod is a client",
            vec![FROM_CLIENTS],
            |_, t, _| !t.is("x/a"),
        ),
        Case {
            name: "update, after: x/c becomes a client",
            policies: vec![FROM_CLIENTS],
            extra: Extra {
                pod_labels: vec![("x/c", "role: client")],
                ..Extra::default()
            },
            expect: |f, t, _| !t.is("x/a") || f.is("x/c"),
        },
    ]
}

#[test]
fn reachability_matrices_match_kubernetes() {
    let cases: Vec<Case> = cases().into_iter().chain(updates()).collect();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let failures: Vec<String> = cases.iter().filter_map(|c| run_case(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The caller is a pod only with both its address and its certificate: another identity
/// from x/b's address, x/b's identity from elsewhere, and a plaintext caller at x/b's
/// address are not x/b; an ipBlock still admits a plaintext caller by address.
#[test]
fn the_source_pod_needs_its_address_and_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &Extra::default(),
        &[
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n  - from:\n    - ipBlock: {cidr: 192.0.2.0/24}\n    ports: [{port: 81}]\n",
        ],
    );
    let config = dir.path().to_str().unwrap();
    let x_default = "spiffe://cluster.local/ns/x/sa/default";
    let y_default = "spiffe://cluster.local/ns/y/sa/default";
    let cases: [(&str, Option<&str>, &str, &str, i32); 6] = [
        ("x/b itself", Some(x_default), "10.0.1.2", "80", 0),
        (
            "y's identity from x/b's address",
            Some(y_default),
            "10.0.1.2",
            "80",
            3,
        ),
        (
            "x/b's identity from x/c's address... same identity, other pod",
            Some(x_default),
            "10.0.1.3",
            "80",
            3,
        ),
        ("plaintext from x/b's address", None, "10.0.1.2", "80", 3),
        (
            "plaintext from the ipBlock on 81",
            None,
            "192.0.2.7",
            "81",
            0,
        ),
        (
            "plaintext from the ipBlock on 80",
            None,
            "192.0.2.7",
            "80",
            3,
        ),
    ];
    for (what, from, ip, port, code) in cases {
        let mut args = vec![
            "authz",
            "check",
            "--config",
            config,
            "--to",
            "x/a",
            "--port",
            port,
            "--source-ip",
            ip,
        ];
        if let Some(id) = from {
            args.extend(["--from", id]);
        }
        let out = Command::new(palisade_bin()).args(&args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The answer names the deciding policies on each side, in text and JSON.
#[test]
fn the_explanation_names_the_deciding_policies() {
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &Extra::default(),
        &[DENY_INGRESS_X, DENY_EGRESS_X],
    );
    let config = dir.path().to_str().unwrap();
    let out = Command::new(palisade_bin())
        .args([
            "authz",
            "check",
            "--config",
            config,
            "--from-workload",
            "x/a",
            "--to",
            "b",
            "--port",
            "80",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("x/deny-egress"), "{text}");
    assert!(text.contains("x/deny-ingress"), "{text}");
    let out = Command::new(palisade_bin())
        .args([
            "authz",
            "check",
            "--config",
            config,
            "--from-workload",
            "y/a",
            "--to",
            "x/b",
            "--port",
            "81",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "DENY", "{v}");
    assert_eq!(v["policy"], "x/deny-ingress", "{v}");
    assert_eq!(v["network_policy"]["egress"]["decision"], "ALLOW", "{v}");
    assert_eq!(
        v["network_policy"]["ingress"]["selected_by"][0], "x/deny-ingress",
        "{v}"
    );
}

/// Malformed NetworkPolicies are refused naming file, document and field (exit 1).
#[test]
fn malformed_network_policies_are_named() {
    let bad: [(&str, &str); 6] = [
        (
            "spec.podSelector.matchExpressions[0].operator",
            "spec:\n  podSelector: {matchExpressions: [{key: pod, operator: Near, values: [a]}]}\n",
        ),
        (
            "spec.ingress[0].ports[0].endPort",
            "spec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 81, endPort: 80}]\n",
        ),
        (
            "spec.ingress[0].ports[0].endPort",
            "spec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: serve-80-tcp, endPort: 90}]\n",
        ),
        (
            "spec.ingress[0].from[0].ipBlock.cidr",
            "spec:\n  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/33}}]\n",
        ),
        (
            "spec.ingress[0].from[0].ipBlock.except[0]",
            "spec:\n  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]\n",
        ),
        ("spec.ingres", "spec:\n  podSelector: {}\n  ingres: []\n"),
    ];
    for (field, spec) in bad {
        let dir = tempfile::tempdir().unwrap();
        let doc = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bad, namespace: x}}\n{spec}"
        );
        write_config(dir.path(), &Extra::default(), &[DENY_INGRESS_X, &doc]);
        let out = Command::new(palisade_bin())
            .args([
                "authz",
                "check",
                "--config",
                dir.path().to_str().unwrap(),
                "--from-workload",
                "x/a",
                "--to",
                "x/b",
                "--port",
                "80",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{field}: {stderr}");
        assert!(
            stderr.contains("policies.yaml")
                && stderr.contains("document 2")
                && stderr.contains(field),
            "{field}: {stderr}"
        );
    }
}

/// UDP and SCTP rules load, and `palisade check` says the sidecar does not enforce them.
#[test]
fn check_warns_that_non_tcp_rules_are_left_to_the_capture_rules() {
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &Extra::default(),
        &[
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: dns-only, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{protocol: UDP, port: 53}]\n",
        ],
    );
    let out = Command::new(palisade_bin())
        .args(["check", "--config", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("warning:"))
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    assert!(
        warning.contains("x/dns-only") && warning.contains("UDP"),
        "{warning}"
    );
}
