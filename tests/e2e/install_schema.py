"""Validates Palisade resources against the CRD schemas printed by `palisade install`, with
the `jsonschema` package: an implementation independent of both Kubernetes and Palisade.

usage: python install_schema.py INSTALL_YAML FILE...

Prints one JSON object per line for every AuthorizationPolicy, EgressPolicy and MeshConfig
document of the files: {"file", "index", "kind", "name", "valid", "errors"}. Documents of
Istio's security.istio.io API are checked as palisade.dev/v1alpha1 (same spec, field for
field). Exit status 2 if the install output has no CRD for one of the three kinds.

The CRD's openAPIV3Schema is turned into JSON Schema the way the API server reads it:
- `x-kubernetes-int-or-string: true` is the type integer-or-string;
- an object schema with `properties` and without `x-kubernetes-preserve-unknown-fields`
  refuses other fields (the API server's strict field validation, kubectl's default);
- `metadata` is ObjectMeta: its own fields stay allowed, only the CRD's constraints on
  `name` are added;
- descriptions and other `x-kubernetes-*` annotations carry no validation.
"""

import json
import sys

import jsonschema
import yaml

KINDS = ("AuthorizationPolicy", "EgressPolicy", "MeshConfig")
GROUP_VERSION = "palisade.dev/v1alpha1"
ISTIO_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")


def to_json_schema(node, is_metadata=False):
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("description", "nullable"):
            continue
        if key == "properties":
            out[key] = {
                name: to_json_schema(sub, is_metadata=False) for name, sub in value.items()
            }
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [to_json_schema(branch) for branch in value]
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable"):
        kinds = out.get("type")
        if isinstance(kinds, str):
            out["type"] = [kinds, "null"]
    strict = (
        node.get("type") == "object"
        and "properties" in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
        and not is_metadata
    )
    if strict:
        out["additionalProperties"] = False
    return out


def crd_schemas(install_yaml):
    schemas = {}
    with open(install_yaml) as f:
        for doc in yaml.safe_load_all(f):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            if spec["group"] != "palisade.dev":
                continue
            for version in spec["versions"]:
                if version["name"] != "v1alpha1":
                    continue
                raw = version["schema"]["openAPIV3Schema"]
                schema = to_json_schema(raw)
                meta = raw.get("properties", {}).get("metadata")
                if meta is not None:
                    schema["properties"]["metadata"] = to_json_schema(meta, is_metadata=True)
                jsonschema.Draft7Validator.check_schema(schema)
                schemas[spec["names"]["kind"]] = jsonschema.Draft7Validator(schema)
    return schemas


def main(argv):
    schemas = crd_schemas(argv[1])
    missing = [k for k in KINDS if k not in schemas]
    if missing:
        print(f"no CRD for {', '.join(missing)} in {argv[1]}", file=sys.stderr)
        return 2
    for path in argv[2:]:
        with open(path) as f:
            docs = list(yaml.safe_load_all(f))
        for index, doc in enumerate(docs, start=1):
            if not isinstance(doc, dict) or doc.get("kind") not in KINDS:
                continue
            api_version = doc.get("apiVersion")
            if api_version in ISTIO_VERSIONS:
                doc = dict(doc, apiVersion=GROUP_VERSION)
            elif api_version != GROUP_VERSION:
                continue
            validator = schemas[doc["kind"]]
            errors = [
                f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
                for e in validator.iter_errors(doc)
            ]
            print(
                json.dumps(
                    {
                        "file": path,
                        "index": index,
                        "kind": doc["kind"],
                        "apiVersion": api_version,
                        "name": (doc.get("metadata") or {}).get("name"),
                        "valid": not errors,
                        "errors": errors,
                    }
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
