//! `config::load_files` on arbitrary text, as one YAML file of any number of documents:
//! never panics, every displayed error stays on one line, and a mesh it accepts can be
//! turned into the snapshots each of its workloads' proxies would receive.

#![cfg_attr(not(test), no_main)]

use libfuzzer_sys::fuzz_target;
use palisade_control_plane::config::load_files;
use palisade_control_plane::{authorization_for, egress_for, network_policy_for};

fuzz_target!(|data: &[u8]| check(data));

fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match load_files(&[("fuzz.yaml", text)]) {
        Ok(mesh) => {
            for w in mesh.workloads() {
                assert!(authorization_for(&mesh, &w.namespace, &w.name).is_ok());
                assert!(egress_for(&mesh, &w.namespace, &w.name).is_ok());
                assert!(network_policy_for(&mesh, &w.namespace, &w.name).is_ok());
            }
            for warning in mesh.warnings() {
                let line = warning.to_string();
                assert_eq!(line.lines().count(), 1, "{line:?}");
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in &errors {
                // The whole displayed error stays one line, whatever names the input holds.
                let line = e.to_string();
                assert_eq!(line.lines().count(), 1, "{line:?}");
                assert!(!line.contains('\r') && !line.contains('\u{85}'), "{line:?}");
            }
            let _ = errors.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = "\
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: search, namespace: shop, labels: {app: search}}
spec:
  serviceAccount: search
  address: 127.0.1.2
  ports:
  - {name: http, port: 8080, appProtocol: http}
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: search, namespace: shop}
spec:
  selector: {app: search}
  ports:
  - {name: http, port: 8080, targetPort: 8080}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: search, namespace: shop}
spec:
  selector: {matchLabels: {app: search}}
  rules:
  - to: [{operation: {methods: [GET], paths: [/search*]}}]
";

    #[test]
    fn a_valid_mesh_is_accepted() {
        let mesh = load_files(&[("fuzz.yaml", MESH)]);
        assert!(mesh.is_ok_and(|m| m.workloads().len() == 1), "{MESH}");
        check(MESH.as_bytes());
    }

    #[test]
    fn runs_on_sample_inputs() {
        for input in [
            &b""[..],
            b"---\n---\n# only comments\n",
            b"\xff\xfe not UTF-8",
            b"[unclosed",
            b"- a list\n- not a mapping\n",
            b"apiVersion: palisade.dev/v1alpha1\nkind: Nope\n",
            b"apiVersion: palisade.dev/v1alpha1\nkind: Workload\nmetadata: {name: \"a\\nb\"}\n",
            b"a: &x [*x]\n",
            b"<<: 3\n",
            b"apiVersion: palisade.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {}\n",
            b"apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: a}}\n",
            b"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\n\
              spec: {ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}], \
              ports: [{protocol: UDP, port: dns}, {port: 80, endPort: 90}]}]}\n",
        ] {
            check(input);
        }
    }
}
