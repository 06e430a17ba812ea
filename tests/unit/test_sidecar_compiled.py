"""The compiled request path: the code that ships is the code tested.

Where the build compiled the request path (a C compiler was present, as on
every machine ``make system-deps`` prepared), the sidecar tests run on the
extensions; the Python sources stay the fallback, run here too. An
extension never serves in place of a source edited since it was compiled.
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import powgate_sidecar
from powgate_sidecar import (
    _admission,
    _challenges,
    _compiled,
    _connection,
    _forward,
    _http,
    _metrics,
    _routes,
)
from powgate_sidecar._compiled import MODULES, Choice, choose, digest

PACKAGE = Path(powgate_sidecar.__file__).resolve().parent
ROOT = PACKAGE.parents[1]
BUILT = (PACKAGE / _compiled.MANIFEST).is_file()
_SOURCES = {name: b"source of " + name.encode() for name in MODULES}
_MATCHING = {name: digest(source) for name, source in _SOURCES.items()}
_REBUILD = "rebuild with `make venv` or `pip install -e .`"


@pytest.mark.parametrize(
    ("manifest", "extensions", "pure_python", "expected"),
    [
        pytest.param(_MATCHING, MODULES, False, Choice(compiled=True), id="built-and-current"),
        pytest.param(None, (), False, Choice(compiled=False), id="never-compiled"),
        pytest.param(_MATCHING, MODULES, True, Choice(compiled=False), id="asked-for-sources"),
        pytest.param(
            {**_MATCHING, MODULES[0]: digest(b"an older source")},
            MODULES,
            False,
            Choice(
                compiled=False,
                warning=f"{MODULES[0]} changed since compiled: serving the Python sources; "
                + _REBUILD,
            ),
            id="source-edited-since",
        ),
        pytest.param(
            _MATCHING,
            MODULES[:1],
            False,
            Choice(
                compiled=False,
                warning=f"compiled request path incomplete (missing {', '.join(MODULES[1:])}): "
                "serving the Python sources; " + _REBUILD,
            ),
            id="an-extension-missing",
        ),
        pytest.param(
            {},
            MODULES,
            False,
            Choice(
                compiled=False,
                warning=f"compiled request path incomplete (missing {', '.join(MODULES)}): "
                "serving the Python sources; " + _REBUILD,
            ),
            id="unreadable-manifest",
        ),
    ],
)
def test_extensions_serve_only_when_built_from_the_sources_present(
    manifest: dict[str, str] | None,
    extensions: tuple[str, ...],
    pure_python: bool,
    expected: Choice,
) -> None:
    choice = choose(
        manifest=manifest, sources=_SOURCES, extensions=extensions, pure_python=pure_python
    )
    assert choice == expected


def test_the_modules_compiled_are_those_with_type_declarations() -> None:
    # setup.py compiles each module with a .pxd (from its .py, or the .pyx that binds
    # llhttp); _compiled checks MODULES.
    declared = {f"powgate_sidecar.{pxd.stem}" for pxd in PACKAGE.glob("*.pxd")}
    assert declared == set(MODULES)


@pytest.mark.skipif(not BUILT, reason="this install has no compiled request path (no C compiler)")
def test_the_tests_run_on_the_compiled_request_path() -> None:
    assert _compiled.COMPILED
    for module in (_admission, _challenges, _connection, _forward, _http, _metrics, _routes):
        assert module.__file__ is not None
        assert module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    # The compiled connection parses with llhttp bound in C, not through httptools.
    assert _connection.RequestParser.__module__ == "powgate_sidecar._cparse"


def _python(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def _run(code: str, *, env: dict[str, str]) -> str:
    result = _python("-W", "always", "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


_REPORT = (
    "from powgate_sidecar import _compiled, _connection, _http\n"
    "print('compiled', _compiled.COMPILED, _connection.__file__, _http.__file__)\n"
)


@pytest.mark.skipif(not BUILT, reason="this install has no compiled request path (no C compiler)")
def test_a_source_edited_after_compiling_is_served_from_source(tmp_path: Path) -> None:
    copy = tmp_path / "powgate_sidecar"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = _run(_REPORT, env={"PYTHONPATH": str(tmp_path)})
    assert f"compiled True {copy}/_connection.cpython" in before
    with (copy / "_http.py").open("a") as source:
        source.write("\n# edited after the build\n")
    after = _run(_REPORT, env={"PYTHONPATH": str(tmp_path)})
    assert "RuntimeWarning: powgate_sidecar._http changed since compiled" in after
    assert f"compiled False {copy}/_connection.py {copy}/_http.py" in after


@pytest.mark.skipif(not BUILT, reason="without a compiled build the suite runs on the sources")
@pytest.mark.timeout(900)  # a pytest run of its own, on busy shared cores
def test_the_sidecar_tests_pass_on_the_python_sources_too() -> None:
    # The fallback for machines without a compiler, and what POWGATE_PURE_PYTHON=1 serves:
    # the request path's own tests, and the framing table, on the sources.
    pure = {"POWGATE_PURE_PYTHON": "1"}
    assert f"compiled False {PACKAGE}/_connection.py" in _run(_REPORT, env=pure)
    result = _python(
        "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "tests/unit/test_sidecar_hotpath.py",
        "tests/unit/test_sidecar_smuggling.py",
        "tests/unit/test_sidecar_abuse.py",
        env=pure,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout
