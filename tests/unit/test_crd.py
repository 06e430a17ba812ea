"""The CRD in crds/ is generated from the policy model and is a structural schema."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from powgate.policy import PolicySpec, PolicyStatus
from powgate_operator.crd import crd_manifest, openapi_schema

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "powpolicy.yaml"
REFERENCE_FILE = ROOT / "docs" / "policy-reference.md"


def generated(module: str) -> str:
    """What `make crds` writes: a fresh process, whose algorithm registry holds the
    built-in algorithms only (tests register their own in this one)."""
    return subprocess.run(
        [sys.executable, "-m", module], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_crds_folder_matches_the_model() -> None:
    assert CRD_FILE.read_text() == generated("powgate_operator.crd"), (
        "crds/powpolicy.yaml is out of date: run `make crds`"
    )


def test_reference_doc_matches_the_model() -> None:
    assert REFERENCE_FILE.read_text() == generated("powgate_operator.reference"), (
        "docs/policy-reference.md is out of date: run `make crds`"
    )


def nodes(schema: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path."""
    if not isinstance(schema, dict):
        return
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("model", [PolicySpec, PolicyStatus])
def test_schema_is_structural(model: type[PolicySpec] | type[PolicyStatus]) -> None:
    for path, node in nodes(openapi_schema(model)):
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, (
            path
        )
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "$defs", "const", "uniqueItems"):
            assert forbidden not in node, f"{path}: {forbidden}"
        assert not ("properties" in node and "additionalProperties" in node), path
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound, True) is True, f"{path}: {bound} must be the v3.0 boolean"
        if "default" in node:
            assert "null" not in yaml.safe_dump(node["default"]), path


def test_defaults_match_the_model() -> None:
    """The API server must default a policy exactly as pydantic does."""
    schema = openapi_schema(PolicySpec)
    model_defaults = PolicySpec.model_validate(
        {"selector": {"matchLabels": {"a": "b"}}}
    ).model_dump(mode="json", by_alias=True, exclude_none=True)
    for name, sub in schema["properties"].items():
        if "default" in sub:
            assert sub["default"] == model_defaults[name], name
    # Every optional top-level field is defaulted by the API server, so stored objects are complete.
    assert set(schema["required"]) == {"selector"}
    assert {name for name, sub in schema["properties"].items() if "default" in sub} == (
        set(schema["properties"]) - {"selector"}
    )


def test_cel_rules_and_list_maps_are_present() -> None:
    spec = openapi_schema(PolicySpec)
    props = spec["properties"]
    rules = [r["rule"] for r in props["difficulty"]["x-kubernetes-validations"]]
    assert "self.min <= self.max" in rules
    assert props["signals"]["x-kubernetes-list-type"] == "map"
    assert props["signals"]["x-kubernetes-list-map-keys"] == ["name"]
    assert props["routes"]["x-kubernetes-list-map-keys"] == ["name"]
    assert props["mode"]["enum"] == ["enforce", "observe", "off"]


def test_manifest_shape() -> None:
    manifest = crd_manifest()
    version = manifest["spec"]["versions"][0]
    assert manifest["metadata"]["name"] == "powpolicies.powgate.dev"
    assert manifest["spec"]["names"]["shortNames"] == ["pow"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Difficulty",
        "Mode",
        "Ready",
        "Rollout",
        "Age",
    ]
