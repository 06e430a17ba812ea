"""Generate the PowPolicy CustomResourceDefinition from the pydantic models.

``python -m powgate_operator.crd > crds/powpolicy.yaml`` (or ``make crds``).
Pydantic emits JSON Schema 2020-12; the API server wants a *structural*
OpenAPI v3.0 schema, so the conversion inlines ``$ref``s, turns optional
fields (``anyOf`` with null) into plain optional properties, rewrites numeric
``exclusiveMinimum``/``exclusiveMaximum`` into the v3.0 boolean form, fills in
the defaults of nested objects (so the API server defaults them exactly as
the models do) and drops what structural schemas forbid.
"""

from __future__ import annotations

import sys
from typing import Any, Final

import yaml
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from powgate import policy

__all__ = ["crd_manifest", "openapi_schema", "render_yaml"]

#: Keys of JSON Schema that structural OpenAPI v3.0 schemas do not accept.
_DROPPED: Final = frozenset({"title", "$defs", "additionalProperties", "const", "examples"})

#: Owned objects are named after the policy with a suffix; this keeps them valid names.
MAX_NAME_LENGTH: Final = 63

PRINTER_COLUMNS: Final = [
    {"name": "Difficulty", "type": "integer", "jsonPath": ".status.difficulty"},
    {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {"name": "Rollout", "type": "string", "jsonPath": ".status.rollout.updated", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class _WithFactoryDefaults(GenerateJsonSchema):
    """Emit ``default_factory`` results as defaults: the API server must default like pydantic."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return factory()  # type: ignore[call-arg]
        return schema.get("default", NoDefault)


def openapi_schema(model: type[policy.PolicySpec] | type[policy.PolicyStatus]) -> dict[str, Any]:
    """The structural OpenAPI v3.0 schema of ``model``."""
    raw = model.model_json_schema(by_alias=True, schema_generator=_WithFactoryDefaults)
    definitions = raw.get("$defs", {})
    converted = _convert(raw, definitions)
    assert isinstance(converted, dict)
    return converted


def _convert(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_convert(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = definitions[node["$ref"].rsplit("/", 1)[-1]]
        # Keys beside a $ref (description, default) refine the referenced schema.
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _convert(merged, definitions)
    if "anyOf" in node:
        choices = [c for c in node["anyOf"] if c.get("type") != "null"]
        if len(choices) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {node['anyOf']}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return _convert({**choices[0], **rest}, definitions)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED or (key == "default" and value is None):
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: _convert(sub, definitions) for name, sub in value.items()}
        elif key == "default":
            out[key] = _without_nulls(value)
        else:
            out[key] = _convert(value, definitions)
    if isinstance(node.get("additionalProperties"), dict):
        # A map (dict[str, X]); `false` is dropped: pruning removes unknown fields.
        out["additionalProperties"] = _convert(node["additionalProperties"], definitions)
    return out


def _without_nulls(value: Any) -> Any:
    """Defaults never carry nulls: an absent field is how Kubernetes says "unset"."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def crd_manifest() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    spec_schema = openapi_schema(policy.PolicySpec)
    status_schema = openapi_schema(policy.PolicyStatus)
    status_schema["description"] = "Observed state, written by the operator."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{policy.PLURAL}.{policy.GROUP}",
            "annotations": {"powgate.dev/generated-by": "python -m powgate_operator.crd"},
        },
        "spec": {
            "group": policy.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": policy.KIND,
                "listKind": f"{policy.KIND}List",
                "plural": policy.PLURAL,
                "singular": policy.KIND.lower(),
                "shortNames": [policy.SHORT_NAME],
                "categories": ["powgate"],
            },
            "versions": [
                {
                    "name": policy.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "PowPolicy makes requests to the selected pods pay a proof-of-work "
                                "toll whose difficulty follows Prometheus signals."
                            ),
                            "required": ["spec"],
                            "x-kubernetes-validations": [
                                {
                                    "rule": f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
                                    "message": (
                                        f"a PowPolicy name has at most {MAX_NAME_LENGTH} characters"
                                        " (it names the policy's ConfigMap and Secret)"
                                    ),
                                }
                            ],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_yaml() -> str:
    """The manifest as YAML, byte-for-byte reproducible (the drift test compares bytes)."""
    header = "# Generated by `python -m powgate_operator.crd` from powgate.policy. Do not edit.\n"
    body = yaml.safe_dump(crd_manifest(), sort_keys=False, width=100, allow_unicode=True)
    return header + body


if __name__ == "__main__":
    sys.stdout.write(render_yaml())
