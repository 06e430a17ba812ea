"""The Helm chart rendered by the real ``helm template`` (built by ``make tools``), for tests.

``render`` caches each distinct rendering: the chart tests and the contract
tests render many variants, and helm takes a noticeable time per call.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from powgate_testbed.cluster import cache_dir

CHART = Path(__file__).resolve().parents[1] / "charts" / "powgate"
RELEASE = "pg"
NAMESPACE = "powgate-system"
#: A recent API server: the chart has no version-dependent branches, this only satisfies helm.
KUBE_VERSION = "1.35.0"
MONITORING = "monitoring.coreos.com/v1"


def binary(name: str) -> Path:
    """A tool built by ``make tools``; skipped without it, failed under CI."""
    path = cache_dir() / "bin" / name
    if not path.exists():
        message = f"{path} is missing: run `make tools`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def helm() -> Path:
    return binary("helm")


@cache
def _render(values_json: str, api_versions: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    argv = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    argv += ["--kube-version", KUBE_VERSION, "--values", "-"]
    for version in api_versions:
        argv += ["--api-versions", version]
    result = subprocess.run(
        [str(helm()), *argv],
        input=values_json,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RenderError(result.stderr)
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


class RenderError(Exception):
    pass


def render(
    values: Mapping[str, Any] | None = None, *, api_versions: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The manifests of `helm template` with these values (deep copies: tests may edit them)."""
    docs = _render(json.dumps(values or {}, sort_keys=True), tuple(api_versions))
    return json.loads(json.dumps(docs))  # type: ignore[no-any-return]


def find(docs: Sequence[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {len(matches)}"
    return matches[0]


def kubelet_environment(
    env: Sequence[Mapping[str, Any]], *, fields: Mapping[str, str]
) -> dict[str, str]:
    """A container's variables as the kubelet sets them: field references filled in from
    ``fields`` (downward-API path → value), and $(VAR) expanded from the variables
    defined earlier in the list (Kubernetes' rule)."""
    result: dict[str, str] = {}
    for entry in env:
        if "value" in entry:
            value = kubelet_expand(entry["value"], result)
        else:
            value = fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        result[entry["name"]] = value
    return result


def kubelet_expand(text: str, env: Mapping[str, str]) -> str:
    """$(VAR) in a value or an argument, expanded as the kubelet does (unknown ones kept)."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)
