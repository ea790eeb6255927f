//! One AuthorizationPolicy or EgressPolicy document, its `spec` made of arbitrary text,
//! loaded after a fixed valid mesh, so the fuzzer's time goes into the policy checks
//! rather than into getting past the other kinds: never panics, only the policy can be
//! wrong, and a policy that is accepted reaches every workload's snapshots.
//!
//! The first byte picks the document's header (Palisade's or Istio's AuthorizationPolicy,
//! in the workloads' namespace or the root one, or an EgressPolicy); the rest is indented
//! under `spec:`, so whatever it holds it cannot end the document or start another.

#![cfg_attr(not(test), no_main)]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use palisade_control_plane::config::load_files;
use palisade_control_plane::{authorization_for, egress_for};

/// Workloads and Services the policies can select and name; valid on its own.
const MESH: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh, namespace: palisade-system}
spec:
  defaultAuthorization: deny
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: frontend, namespace: shop, labels: {app: frontend}}
spec:
  serviceAccount: frontend
  address: 127.0.1.1
  ports:
  - {name: http, port: 8080, appProtocol: http}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: payments, namespace: shop, labels: {app: payments, tier: backend}}
spec:
  serviceAccount: payments
  address: 127.0.1.3
  ports:
  - {name: grpc, port: 9090, appProtocol: grpc}
  - {name: tcp, port: 5432}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: frontend, namespace: shop}
spec:
  selector: {app: frontend}
  ports:
  - {name: http, port: 8080, targetPort: 8080}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: payments, namespace: shop}
spec:
  selector: {app: payments}
  ports:
  - {name: grpc, port: 9090, targetPort: 9090}
";

/// `(namespace, header)`: every header ends with `spec:` and a line break.
const HEADERS: [(&str, &str); 4] = [
    (
        "shop",
        "apiVersion: palisade.dev/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {name: fuzz, namespace: shop}\nspec:\n",
    ),
    (
        "shop",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: fuzz, namespace: shop}\nspec:\n",
    ),
    (
        "palisade-system",
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n\
         metadata: {name: fuzz, namespace: palisade-system}\nspec:\n",
    ),
    (
        "shop",
        "apiVersion: palisade.dev/v1alpha1\nkind: EgressPolicy\n\
         metadata: {name: fuzz, namespace: shop}\nspec:\n",
    ),
];

const MESH_FILE: &str = "mesh.yaml";
const POLICY_FILE: &str = "policy.yaml";

fuzz_target!(|data: &[u8]| check(data));

/// The policy document `data` stands for: its namespace, whether it is an EgressPolicy,
/// and its text.
fn document(data: &[u8]) -> Option<(&'static str, bool, String)> {
    let (&pick, spec) = data.split_first()?;
    let spec = std::str::from_utf8(spec).ok()?;
    let (namespace, header) = HEADERS[usize::from(pick) % HEADERS.len()];
    let mut text = String::with_capacity(header.len() + spec.len() * 2);
    text.push_str(header);
    // Every line break YAML (1.1, as libyaml reads it) knows, not only `\n`: one left
    // unindented would let the input start a document of its own.
    for line in spec.split(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']) {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    Some((namespace, header.contains("kind: EgressPolicy"), text))
}

fn check(data: &[u8]) {
    let Some((namespace, egress, policy)) = document(data) else {
        return;
    };
    match load_files(&[(MESH_FILE, MESH), (POLICY_FILE, policy.as_str())]) {
        Ok(mesh) => {
            if egress {
                assert!(mesh.egress_policies().any(|p| p.name == "fuzz"));
            } else {
                assert!(mesh.authorization_policy(namespace, "fuzz").is_some());
            }
            for w in mesh.workloads() {
                assert!(authorization_for(&mesh, &w.namespace, &w.name).is_ok());
                assert!(egress_for(&mesh, &w.namespace, &w.name).is_ok());
            }
        }
        Err(errors) => {
            for e in &errors {
                assert_eq!(e.file, Path::new(POLICY_FILE), "{e}");
                assert!(!e.message.contains('\n'), "{e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mesh_and_an_empty_policy_are_valid() {
        assert!(load_files(&[(MESH_FILE, MESH)]).is_ok());
        for (i, (namespace, header)) in HEADERS.iter().enumerate() {
            if header.contains("kind: EgressPolicy") {
                continue;
            }
            let mesh = load_files(&[(MESH_FILE, MESH), (POLICY_FILE, header)]);
            assert!(
                mesh.is_ok_and(|m| m.authorization_policy(namespace, "fuzz").is_some()),
                "header {i}"
            );
        }
    }

    #[test]
    fn runs_on_sample_inputs() {
        for input in [
            &b""[..],
            b"\x00",
            b"\x00\xff",
            b"\x00action: DENY\nrules:\n- from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]\n",
            b"\x01selector: {matchLabels: {app: payments}}\nrules:\n- to: [{operation: {paths: [\"/a{**}\"], ports: [\"9090\"]}}]\n  when: [{key: request.headers[x-id], values: [\"*\"]}]\n",
            b"\x02action: CUSTOM\nprovider: {name: ext}\n",
            b"\x02rules: [{from: [{source: {ipBlocks: [10.0.0.0/33, \"::1/128\"]}}]}]\n",
            b"\x03hosts: [API.Stripe.com, \"*.paypal.com\", 192.0.2.10]\nports: [443]\n",
            b"\x03hosts: []\n",
            b"\x03hosts: [a]\n---\nkind: Workload\n",
            b"\x01&a [*a]\n",
            b"\x00rules: []\r---\rapiVersion: palisade.dev/v1alpha1\rkind: Workload\r",
            "\u{3}hosts: [a]\u{2028}...\u{2029}---\u{85}kind: Service\n".as_bytes(),
        ] {
            check(input);
        }
    }

    #[test]
    fn valid_policies_are_accepted() {
        for input in [
            &b"\x00action: DENY\nrules:\n- from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]\n"[..],
            b"\x02selector: {matchLabels: {tier: backend}}\nrules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]\n",
            b"\x03hosts: [API.Stripe.com, \"*.paypal.com\", 192.0.2.10]\nports: [443]\n",
        ] {
            let (_, _, policy) = document(input).expect("UTF-8");
            let loaded = load_files(&[(MESH_FILE, MESH), (POLICY_FILE, policy.as_str())]);
            assert!(loaded.is_ok(), "{policy}\n{loaded:?}");
            check(input);
        }
    }
}
