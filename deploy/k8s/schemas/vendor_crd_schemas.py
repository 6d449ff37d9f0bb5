"""Write the JSON schemas of the custom resources deploy/k8s/ uses (KEDA's ScaledObject and
TriggerAuthentication, the Prometheus Operator's ServiceMonitor and PrometheusRule) into this
folder, from the models that the ``cloudcoil-models-*`` wheels on PyPI generate from those
projects' CRDs. Run it only to move to newer CRDs, in a throwaway virtual environment:

    python3 -m venv /tmp/crd && /tmp/crd/bin/pip install \\
        cloudcoil-models-keda==2.16.1.0 cloudcoil-models-prometheus-operator==0.80.1.0
    /tmp/crd/bin/python deploy/k8s/schemas/vendor_crd_schemas.py

What it changes in the models' schemas, and why:
- ``X or null`` becomes ``X``: an optional field is left out, never written as null;
- every object with named properties gets ``additionalProperties: false``. The API server
  drops (and kubectl's strict field validation refuses) fields a CRD does not declare; KEDA
  and the operator would never see a misspelt field. Refusing them here makes a typo fail CI;
- ``apiVersion`` and ``kind`` are required, ``metadata.name`` too;
- titles, defaults and descriptions go (the upstream CRDs document the fields);
- a pattern's inline flag after ``^`` (Go's ``^(?i)...``) moves to the front, where
  Python's ``re`` (which jsonschema uses) wants it.
"""

from __future__ import annotations

import json
import re
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
_DROP = ("title", "default", "description")


def _strip(node):
    """``node`` with nullable alternatives collapsed, unknown properties refused."""
    if isinstance(node, list):
        return [_strip(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: _strip(v) for k, v in node.items() if k not in _DROP}
    if isinstance(node.get("pattern"), str):
        node["pattern"] = re.sub(r"^\^\(\?([a-z]+)\)", r"(?\1)^", node["pattern"])
    options = node.get("anyOf")
    if options and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        del node["anyOf"]
        if len(rest) == 1:
            node = {**rest[0], **node}
        else:
            node["anyOf"] = rest
    if "properties" in node and "additionalProperties" not in node:
        node["additionalProperties"] = False
    return node


def schema_of(model, group_version: str, kind: str) -> dict:
    schema = _strip(model.model_json_schema(by_alias=True, mode="validation"))
    schema["properties"]["apiVersion"] = {"const": group_version}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = sorted({"apiVersion", "kind", "metadata", *schema.get("required", [])})
    meta = schema["$defs"]["ObjectMeta"]
    meta["required"] = sorted({"name", *meta.get("required", [])})
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def main() -> None:
    from cloudcoil.models.keda import v1alpha1 as keda
    from cloudcoil.models.prometheus_operator import v1 as monitoring

    wanted = [
        (keda.ScaledObject, "keda.sh/v1alpha1", "ScaledObject", "cloudcoil-models-keda"),
        (keda.TriggerAuthentication, "keda.sh/v1alpha1", "TriggerAuthentication",
         "cloudcoil-models-keda"),
        (monitoring.ServiceMonitor, "monitoring.coreos.com/v1", "ServiceMonitor",
         "cloudcoil-models-prometheus-operator"),
        (monitoring.PrometheusRule, "monitoring.coreos.com/v1", "PrometheusRule",
         "cloudcoil-models-prometheus-operator"),
    ]
    for model, group_version, kind, package in wanted:
        schema = schema_of(model, group_version, kind)
        schema["$comment"] = (f"{kind} {group_version} from {package} {version(package)} "
                              "by deploy/k8s/schemas/vendor_crd_schemas.py")
        group, api = group_version.split("/")
        path = HERE / group / f"{kind.lower()}_{api}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(f"wrote {path.relative_to(HERE.parents[2])} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
