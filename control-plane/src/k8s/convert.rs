//! Kubernetes objects → the documents of the mesh's own configuration format, which the same
//! loader as directory mode validates: a Pod that runs a sidecar becomes a `Workload`, a
//! Service a palisade `Service`; Namespaces, NetworkPolicies and Palisade's custom resources
//! keep their own shape. Pure functions over the objects' JSON, no I/O.
//!
//! Only what the mesh reads is kept: `metadata` is cut down to name, namespace, labels and
//! annotations (the server's `uid`, `resourceVersion`, `managedFields`… mean nothing to the
//! mesh), `status` is dropped except a Pod's IP.

use serde_json::{Map, Value, json};

/// API version of Palisade's documents.
const PALISADE_API_VERSION: &str = "palisade.dev/v1alpha1";
/// The sidecar container's name (CONTRACT: Kubernetes names).
pub const PROXY_CONTAINER: &str = "palisade-proxy";
/// Pod annotation listing ports whose traffic is opaque TCP, never parsed as HTTP.
pub const OPAQUE_PORTS_ANNOTATION: &str = "palisade.dev/opaque-ports";
/// Pod annotation and namespace label that opt in to (or out of) injection.
pub const INJECT: &str = "palisade.dev/inject";
/// Kind of the marker [`endpoint_slice`] returns; never handed to the loader.
pub const ENDPOINT_SLICE: &str = "EndpointSliceMarker";
/// Service annotation set from the EndpointSlices (see the loader's constant); whatever a
/// user wrote there is replaced.
pub use crate::config::NOT_READY_ANNOTATION;
/// Label naming an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Kind of the marker [`pod_document`] returns for a running Pod without a sidecar; never
/// handed to the loader.
pub const UNMESHED_POD: &str = "UnmeshedPod";

/// `metadata` reduced to what the mesh reads.
fn metadata(object: &Value, namespaced: bool) -> Value {
    let meta = &object["metadata"];
    let mut out = Map::new();
    out.insert("name".into(), meta["name"].clone());
    if namespaced {
        out.insert("namespace".into(), meta["namespace"].clone());
    }
    for key in ["labels", "annotations"] {
        if let Some(map) = meta.get(key).filter(|v| v.is_object()) {
            out.insert(key.into(), map.clone());
        }
    }
    Value::Object(out)
}

/// Whether `pod` runs Palisade's sidecar (in `containers`, or as a native sidecar in
/// `initContainers`).
pub fn has_sidecar(pod: &Value) -> bool {
    ["containers", "initContainers"].iter().any(|list| {
        pod["spec"][list]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == PROXY_CONTAINER))
    })
}

/// What the source keeps of a Pod: its `Workload` when meshed; for a running Pod without a
/// sidecar, an [`UNMESHED_POD`] marker (name, namespace, its `palisade.dev/inject`
/// annotation) so opted-in Pods that escaped injection can be reported; else nothing.
pub fn pod_document(pod: &Value) -> Option<Value> {
    match pod_skip_reason(pod) {
        None => pod_to_workload(pod),
        Some("no sidecar") => {
            let mut annotations = Map::new();
            if let Some(value) = pod["metadata"]["annotations"][INJECT].as_str() {
                annotations.insert(INJECT.into(), value.into());
            }
            Some(json!({
                "kind": UNMESHED_POD,
                "metadata": {
                    "name": pod["metadata"]["name"],
                    "namespace": pod["metadata"]["namespace"],
                    "annotations": annotations,
                },
            }))
        }
        Some(_) => None,
    }
}

/// Why a Pod is not a Workload of the mesh (`None`: it is one).
pub fn pod_skip_reason(pod: &Value) -> Option<&'static str> {
    if pod["spec"]["hostNetwork"] == Value::Bool(true) {
        Some("host network")
    } else if matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    ) {
        Some("finished")
    } else if !has_sidecar(pod) {
        Some("no sidecar")
    } else if pod["status"]["podIP"].as_str().is_none_or(str::is_empty) {
        Some("no IP yet")
    } else {
        None
    }
}

/// The `Workload` a meshed Pod is: its name, service account, IP, and the ports its
/// containers declare (ports listed in `palisade.dev/opaque-ports` are TCP).
pub fn pod_to_workload(pod: &Value) -> Option<Value> {
    if pod_skip_reason(pod).is_some() {
        return None;
    }
    let opaque: Vec<u64> = pod["metadata"]["annotations"][OPAQUE_PORTS_ANNOTATION]
        .as_str()
        .map(|list| {
            list.split(',')
                .filter_map(|p| p.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut ports: Vec<Value> = Vec::new();
    for container in pod["spec"]["containers"].as_array().into_iter().flatten() {
        if container["name"] == PROXY_CONTAINER {
            continue;
        }
        for port in container["ports"].as_array().into_iter().flatten() {
            let Some(number) = port["containerPort"].as_u64() else {
                continue;
            };
            // Two containers cannot listen on one port of the pod's network namespace.
            if ports.iter().any(|p| p["port"].as_u64() == Some(number)) {
                continue;
            }
            let mut out = Map::new();
            if let Some(name) = port["name"].as_str() {
                out.insert("name".into(), name.into());
            }
            out.insert("port".into(), number.into());
            if let Some(protocol) = port["protocol"].as_str() {
                out.insert("protocol".into(), protocol.into());
            }
            if opaque.contains(&number) {
                out.insert("appProtocol".into(), "tcp".into());
            }
            ports.push(Value::Object(out));
        }
    }
    let service_account = pod["spec"]["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    Some(json!({
        "apiVersion": PALISADE_API_VERSION,
        "kind": "Workload",
        "metadata": metadata(pod, true),
        "spec": {
            "serviceAccount": service_account,
            "address": pod["status"]["podIP"],
            "ports": ports,
        },
    }))
}

/// The mesh `Service` of a Kubernetes Service, with its TCP ports: the mesh routes TCP only.
/// Left out, as the mesh cannot route them: ExternalName Services, Services without a
/// selector (their endpoints are managed by hand, like `default/kubernetes`), and Services
/// without a TCP port (like a DNS Service's UDP ports alone). A headless Service has no
/// cluster IP.
pub fn service_to_service(service: &Value) -> Option<Value> {
    let spec = &service["spec"];
    if spec["type"] == "ExternalName" {
        return None;
    }
    let selector = spec
        .get("selector")
        .filter(|v| v.as_object().is_some_and(|m| !m.is_empty()))?;
    let mut out = Map::new();
    out.insert("selector".into(), selector.clone());
    if let Some(ip) = spec["clusterIP"]
        .as_str()
        .filter(|ip| *ip != "None" && !ip.is_empty())
    {
        out.insert("clusterIP".into(), ip.into());
    }
    let ports: Vec<Value> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|port| port["protocol"].as_str().is_none_or(|p| p == "TCP"))
        .map(|port| {
            let mut p = Map::new();
            for key in ["name", "port", "targetPort", "appProtocol", "protocol"] {
                if let Some(v) = port.get(key).filter(|v| !v.is_null()) {
                    p.insert(key.into(), v.clone());
                }
            }
            Value::Object(p)
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    out.insert("ports".into(), ports.into());
    Some(json!({
        "apiVersion": PALISADE_API_VERSION,
        "kind": "Service",
        "metadata": metadata(service, true),
        "spec": out,
    }))
}

/// What the source keeps of an EndpointSlice: its Service, and the addresses it reports
/// ready and not ready (`ready` absent counts as ready, as the API defines).
pub fn endpoint_slice(slice: &Value) -> Option<Value> {
    let service = slice["metadata"]["labels"][SERVICE_NAME_LABEL].as_str()?;
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
        let is_ready = endpoint["conditions"]["ready"].as_bool().unwrap_or(true);
        for address in endpoint["addresses"].as_array().into_iter().flatten() {
            if let Some(address) = address.as_str() {
                if is_ready {
                    ready.push(address.to_owned());
                } else {
                    not_ready.push(address.to_owned());
                }
            }
        }
    }
    Some(json!({
        "kind": ENDPOINT_SLICE,
        "metadata": {"namespace": slice["metadata"]["namespace"], "name": slice["metadata"]["name"]},
        "service": service,
        "ready": ready,
        "notReady": not_ready,
    }))
}

/// Sets [`NOT_READY_ANNOTATION`] on a mesh Service document from the EndpointSlice markers
/// of its Service: the addresses some slice reports not ready and none reports ready.
pub fn mark_not_ready(service: &mut Value, slices: &[Value]) {
    let namespace = &service["metadata"]["namespace"];
    let name = &service["metadata"]["name"];
    let mine: Vec<&Value> = slices
        .iter()
        .filter(|s| s["metadata"]["namespace"] == *namespace && s["service"] == *name)
        .collect();
    let listed = |key: &str| -> std::collections::BTreeSet<String> {
        mine.iter()
            .flat_map(|s| s[key].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect()
    };
    let ready = listed("ready");
    let not_ready: Vec<String> = listed("notReady").difference(&ready).cloned().collect();
    let Some(metadata) = service["metadata"].as_object_mut() else {
        return;
    };
    let annotations = metadata
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(annotations) = annotations.as_object_mut() {
        annotations.remove(NOT_READY_ANNOTATION);
        if !not_ready.is_empty() {
            annotations.insert(NOT_READY_ANNOTATION.into(), not_ready.join(",").into());
        }
    }
}

/// Replaces each named `targetPort` of a mesh Service document by the number the Workloads it
/// selects give that name (the first that declares it, in order); a port whose name no
/// selected Workload declares is dropped, as Kubernetes routes it nowhere.
pub fn resolve_target_ports(service: &mut Value, workloads: &[Value]) {
    let namespace = service["metadata"]["namespace"].clone();
    let selector = service["spec"]["selector"].as_object().cloned();
    let selects = |w: &Value| {
        w["metadata"]["namespace"] == namespace
            && selector.as_ref().is_some_and(|sel| {
                !sel.is_empty()
                    && sel
                        .iter()
                        .all(|(k, v)| &w["metadata"]["labels"][k.as_str()] == v)
            })
    };
    let selected: Vec<&Value> = workloads.iter().filter(|w| selects(w)).collect();
    let Some(ports) = service["spec"]["ports"].as_array_mut() else {
        return;
    };
    ports.retain_mut(|port| {
        let Some(name) = port["targetPort"].as_str().map(str::to_owned) else {
            return true;
        };
        // Kubernetes also accepts a number written as a string.
        if let Ok(number) = name.parse::<u64>() {
            port["targetPort"] = number.into();
            return true;
        }
        let number = selected.iter().find_map(|w| {
            w["spec"]["ports"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == name.as_str())?["port"]
                .as_u64()
        });
        match number {
            Some(number) => {
                port["targetPort"] = number.into();
                true
            }
            None => false,
        }
    });
}

/// A Namespace, for its labels (NetworkPolicy namespace selectors).
pub fn namespace(object: &Value) -> Option<Value> {
    Some(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": metadata(object, false),
    }))
}

/// An object whose `spec` the loader reads as it is (NetworkPolicy, Palisade's custom
/// resources), under `api_version` and `kind`.
pub fn with_spec(object: &Value, api_version: &str, kind: &str) -> Option<Value> {
    let mut out = Map::new();
    out.insert("apiVersion".into(), api_version.into());
    out.insert("kind".into(), kind.into());
    out.insert("metadata".into(), metadata(object, true));
    if let Some(spec) = object.get("spec").filter(|v| !v.is_null()) {
        out.insert("spec".into(), spec.clone());
    }
    Some(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(extra: Value) -> Value {
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1", "resourceVersion": "7",
                         "labels": {"app": "web"}, "annotations": {"palisade.dev/opaque-ports": "5432"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"serviceAccountName": "web",
                     "initContainers": [{"name": "palisade-init"}, {"name": "palisade-proxy", "restartPolicy": "Always"}],
                     "containers": [
                        {"name": "app", "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                                                  {"containerPort": 5432}]},
                        {"name": "metrics", "ports": [{"containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
            "status": {"phase": "Running", "podIP": "10.1.0.7"}
        });
        if let (Some(base), Some(extra)) = (pod.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                base.insert(k.clone(), v.clone());
            }
        }
        pod
    }

    #[test]
    fn a_meshed_pod_is_a_workload_with_its_ports() {
        let workload = pod_to_workload(&pod(json!({}))).expect("meshed");
        assert_eq!(
            workload,
            json!({
                "apiVersion": "palisade.dev/v1alpha1", "kind": "Workload",
                "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"},
                             "annotations": {"palisade.dev/opaque-ports": "5432"}},
                "spec": {"serviceAccount": "web", "address": "10.1.0.7", "ports": [
                    {"name": "http", "port": 8080, "protocol": "TCP"},
                    {"port": 5432, "appProtocol": "tcp"},
                    {"name": "dns", "port": 53, "protocol": "UDP"}]}
            })
        );
    }

    #[test]
    fn pods_outside_the_mesh_are_no_workloads() {
        for (extra, reason) in [
            (
                json!({"spec": {"hostNetwork": true, "containers": [{"name": "palisade-proxy"}]}}),
                "host network",
            ),
            (
                json!({"spec": {"containers": [{"name": "app"}]}}),
                "no sidecar",
            ),
            (
                json!({"status": {"phase": "Succeeded", "podIP": "10.1.0.7"}}),
                "finished",
            ),
            (json!({"status": {"phase": "Pending"}}), "no IP yet"),
        ] {
            let p = pod(extra);
            assert_eq!(pod_skip_reason(&p), Some(reason), "{p}");
            assert!(pod_to_workload(&p).is_none());
        }
        // The classic sidecar form is meshed too; the default service account applies.
        let classic =
            pod(json!({"spec": {"containers": [{"name": "palisade-proxy"}, {"name": "app"}]}}));
        let w = pod_to_workload(&classic).expect("classic sidecar");
        assert_eq!(w["spec"]["serviceAccount"], "default");
        // A running Pod without a sidecar is kept as a marker, with its opt-in annotation.
        let mut escaped = pod(json!({"spec": {"containers": [{"name": "app"}]}}));
        escaped["metadata"]["annotations"] =
            json!({"palisade.dev/inject": "enabled", "other": "x"});
        assert_eq!(
            pod_document(&escaped),
            Some(
                json!({"kind": "UnmeshedPod", "metadata": {"name": "web-1", "namespace": "shop",
                "annotations": {"palisade.dev/inject": "enabled"}}})
            )
        );
        assert!(
            pod_document(&pod(
                json!({"spec": {"hostNetwork": true, "containers": []}})
            ))
            .is_none()
        );
    }

    #[test]
    fn services_keep_their_routing_fields() {
        let svc = json!({"metadata": {"name": "web", "namespace": "shop", "uid": "x"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"], "selector": {"app": "web"},
                     "sessionAffinity": "None",
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}]}});
        assert_eq!(
            service_to_service(&svc).expect("service"),
            json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "Service",
                   "metadata": {"name": "web", "namespace": "shop"},
                   "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.9",
                            "ports": [{"name": "http", "port": 80, "targetPort": "http", "appProtocol": "http", "protocol": "TCP"}]}})
        );
        let headless = json!({"metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"port": 5432}]}});
        assert!(
            service_to_service(&headless).expect("headless")["spec"]
                .get("clusterIP")
                .is_none()
        );
        // What the mesh cannot route is left out rather than failing the whole cluster's view.
        for (what, svc) in [
            (
                "external name",
                json!({"metadata": {"name": "ext", "namespace": "shop"}, "spec": {"type": "ExternalName"}}),
            ),
            (
                "no selector",
                json!({"metadata": {"name": "kubernetes", "namespace": "default"},
                "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "targetPort": 6443}]}}),
            ),
            (
                "empty selector",
                json!({"metadata": {"name": "x", "namespace": "shop"}, "spec": {"selector": {}, "ports": [{"port": 80}]}}),
            ),
            (
                "UDP only",
                json!({"metadata": {"name": "dns", "namespace": "kube-system"},
                "spec": {"selector": {"k8s-app": "kube-dns"}, "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}),
            ),
        ] {
            assert!(service_to_service(&svc).is_none(), "{what}");
        }
        let dns = json!({"metadata": {"name": "dns", "namespace": "kube-system"},
            "spec": {"selector": {"k8s-app": "kube-dns"}, "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}});
        assert_eq!(
            service_to_service(&dns).expect("TCP port kept")["spec"]["ports"],
            json!([{"name": "dns-tcp", "port": 53, "protocol": "TCP"}])
        );
    }

    #[test]
    fn not_ready_addresses_come_from_the_services_slices() {
        let slice = |name: &str, service: &str, endpoints: Value| {
            endpoint_slice(&json!({"metadata": {"name": name, "namespace": "shop",
                "labels": {"kubernetes.io/service-name": service}}, "endpoints": endpoints}))
            .expect("slice of a service")
        };
        let slices = [
            slice(
                "web-a",
                "web",
                json!([
                {"addresses": ["10.1.0.7"], "conditions": {"ready": false}},
                {"addresses": ["10.1.0.8"], "conditions": {"ready": true}},
                {"addresses": ["10.1.0.9"]},
                {"addresses": ["10.1.0.10"], "conditions": {"ready": false, "terminating": true}}]),
            ),
            // An address another slice of the same Service reports ready is ready.
            slice(
                "web-b",
                "web",
                json!([{"addresses": ["10.1.0.10"], "conditions": {"ready": true}}]),
            ),
            slice(
                "other",
                "other",
                json!([{"addresses": ["10.1.0.8"], "conditions": {"ready": false}}]),
            ),
        ];
        let mut svc = json!({"kind": "Service", "metadata": {"name": "web", "namespace": "shop",
            "annotations": {"palisade.dev/not-ready-addresses": "10.1.0.8"}}, "spec": {}});
        mark_not_ready(&mut svc, &slices);
        assert_eq!(
            svc["metadata"]["annotations"]["palisade.dev/not-ready-addresses"],
            "10.1.0.7"
        );
        let mut quiet =
            json!({"kind": "Service", "metadata": {"name": "db", "namespace": "shop"}, "spec": {}});
        mark_not_ready(&mut quiet, &slices);
        assert!(
            quiet["metadata"]["annotations"]
                .get("palisade.dev/not-ready-addresses")
                .is_none()
        );
        assert!(endpoint_slice(&json!({"metadata": {"name": "x", "namespace": "shop"}})).is_none());
    }

    #[test]
    fn named_target_ports_take_the_selected_pods_numbers() {
        let web = pod_to_workload(&pod(json!({}))).expect("meshed");
        let mut other = web.clone();
        other["metadata"]["labels"] = json!({"app": "other"});
        other["spec"]["ports"] = json!([{"name": "http", "port": 9999}]);
        let mut svc = json!({"kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"app": "web"}, "ports": [
                {"name": "a", "port": 80, "targetPort": "http"},
                {"name": "b", "port": 81, "targetPort": "8081"},
                {"name": "c", "port": 82, "targetPort": "missing"},
                {"name": "d", "port": 83}]}});
        resolve_target_ports(&mut svc, &[other, web]);
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"name": "a", "port": 80, "targetPort": 8080},
                   {"name": "b", "port": 81, "targetPort": 8081},
                   {"name": "d", "port": 83}])
        );
    }
}
