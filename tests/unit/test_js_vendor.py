"""The hash-wasm files shipped in ``powgate/static/hash-wasm`` are the pinned npm package's.

``make vendor-js`` copies them from ``tests/js/node_modules`` (installed by
``make js-deps`` from ``tests/js/package-lock.json``); this test fails when
the copies and the pin drift apart.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parents[1] / "js"
PACKAGE = JS / "node_modules" / "hash-wasm"
VENDORED = resources.files("powgate") / "static" / "hash-wasm"


@pytest.fixture(scope="module")
def package() -> Path:
    if not PACKAGE.is_dir():
        if os.environ.get("CI"):
            pytest.fail("tests/js/node_modules is missing in CI (make js-deps installs it)")
        pytest.skip("tests/js/node_modules is missing (make js-deps installs it)")
    return PACKAGE


def test_the_pin_is_exact() -> None:
    pinned = json.loads((JS / "package.json").read_text())["dependencies"]["hash-wasm"]
    assert pinned[0].isdigit(), "pin hash-wasm to an exact version"


@pytest.mark.parametrize("name", ["argon2.umd.min.js", "scrypt.umd.min.js"])
def test_vendored_files_are_the_pinned_packages(package: Path, name: str) -> None:
    assert (VENDORED / name).read_bytes() == (package / "dist" / name).read_bytes()


def test_its_license_ships_with_it(package: Path) -> None:
    assert (VENDORED / "LICENSE").read_bytes() == (package / "LICENSE").read_bytes()
    pinned = json.loads((JS / "package.json").read_text())["dependencies"]["hash-wasm"]
    assert json.loads((package / "package.json").read_text())["version"] == pinned
