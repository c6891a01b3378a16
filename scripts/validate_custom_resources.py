"""Validates Tether's custom resources against the openAPIV3Schema of their
CRDs (what the API server would check), and the CRDs themselves for the
fields an API server requires.

usage: validate_custom_resources.py CRD_DIR EXAMPLES_DIR
"""
import pathlib
import sys

import jsonschema
import yaml


def documents(directory):
    for path in sorted(pathlib.Path(directory).glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield path, document


def without_kubernetes_extensions(schema):
    """The structural schema as JSON Schema: drop x-kubernetes-* keys and
    read `nullable` as "or null"."""
    if isinstance(schema, dict):
        cleaned = {k: without_kubernetes_extensions(v) for k, v in schema.items()
                   if not k.startswith("x-kubernetes-") and k != "nullable"}
        if schema.get("nullable") and "type" in cleaned:
            cleaned["type"] = [cleaned["type"], "null"]
        return cleaned
    if isinstance(schema, list):
        return [without_kubernetes_extensions(item) for item in schema]
    return schema


def main(crd_dir, examples_dir):
    schemas = {}
    for path, crd in documents(crd_dir):
        assert crd["kind"] == "CustomResourceDefinition", path
        spec = crd["spec"]
        names = spec["names"]
        assert crd["metadata"]["name"] == f'{names["plural"]}.{spec["group"]}', crd["metadata"]
        served = [version for version in spec["versions"] if version["served"]]
        assert sum(version["storage"] for version in spec["versions"]) == 1, names["kind"]
        for version in served:
            schema = version["schema"]["openAPIV3Schema"]
            jsonschema.Draft7Validator.check_schema(without_kubernetes_extensions(schema))
            schemas[(f'{spec["group"]}/{version["name"]}', names["kind"])] = schema
    checked = 0
    for path, resource in documents(examples_dir):
        key = (resource["apiVersion"], resource["kind"])
        if key not in schemas:
            sys.exit(f"{path}: no CRD serves {key}")
        body = {k: v for k, v in resource.items() if k not in ("apiVersion", "kind", "metadata")}
        try:
            jsonschema.validate(body, without_kubernetes_extensions(schemas[key]))
        except jsonschema.ValidationError as error:
            sys.exit(f'{path}: {resource["kind"]} {resource["metadata"]["name"]}: {error.message}')
        checked += 1
    print(f"custom resources: {len(schemas)} CRDs well-formed, {checked} example resources valid")


if __name__ == "__main__":
    main(*sys.argv[1:])
