"""Which code serves requests: the modules compiled by Cython, or their Python sources.

The modules of :data:`MODULES` are the request path's innermost loop (the
connection protocol, the forwarding to the upstream, the admission of
requests to protected routes, the stock of challenges, the per-request
metrics, the routing table, the request record and the request parser).
The ``.py`` files of all but the parser are their only source: where a C
compiler is present the build compiles them with Cython (typed by the
``.pxd`` beside each) into extension modules, which Python imports instead
of the ``.py``.
The parser, ``_cparse.pyx``, binds llhttp's C API and has no ``.py``: the
sources' connection uses ``_parse`` (the same contract on ``httptools``)
instead. The build records a digest of each source it compiled
(:data:`MANIFEST`); this module, imported before any other of the package,
keeps the extensions only when every digest still matches its source. An
edited source in an editable install (where the extension sits next to it
and would shadow the edit) is served from the source, with a warning to
rebuild; ``POWGATE_PURE_PYTHON=1`` asks for the sources outright.

All compiled or none: the compiled connection is built against the compiled
request record and parser, the compiled forward against the compiled
exchange, the compiled admission against the compiled record, stock and
metrics, so they cannot be mixed.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["COMPILED", "MANIFEST", "MODULES", "PURE_PYTHON_ENV", "Choice", "choose", "digest"]

#: The modules the build compiles, in import order.
MODULES: Final = (
    "powgate_sidecar._http",
    "powgate_sidecar._cparse",
    "powgate_sidecar._connection",
    "powgate_sidecar._forward",
    "powgate_sidecar._metrics",
    "powgate_sidecar._routes",
    "powgate_sidecar._challenges",
    "powgate_sidecar._admission",
)
#: Written by the build beside the extensions: ``{module: digest of its .py}``.
MANIFEST: Final = "_compiled.json"
#: Set to ``1`` to serve the Python sources even where compiled modules exist.
PURE_PYTHON_ENV: Final = "POWGATE_PURE_PYTHON"

_HERE: Final = Path(__file__).resolve().parent


def digest(source: bytes) -> str:
    """What the build records for a source file (setup.py computes the same)."""
    return hashlib.sha256(source).hexdigest()


@dataclass(frozen=True, slots=True)
class Choice:
    """The outcome: compiled or not, and why not (``""`` when there is nothing to say)."""

    compiled: bool
    warning: str = ""


def choose(
    *,
    manifest: Mapping[str, str] | None,
    sources: Mapping[str, bytes],
    extensions: Sequence[str],
    pure_python: bool,
) -> Choice:
    """Decide between the extensions and the sources.

    ``manifest`` is the build's record (``None``: nothing was compiled),
    ``sources`` each module's ``.py`` bytes, ``extensions`` the modules whose
    extension file is present.
    """
    if manifest is None or pure_python:
        return Choice(compiled=False)
    missing = [name for name in MODULES if name not in extensions or name not in manifest]
    if missing:
        return Choice(
            compiled=False,
            warning=f"compiled request path incomplete (missing {', '.join(missing)}): "
            "serving the Python sources; rebuild with `make venv` or `pip install -e .`",
        )
    stale = [name for name in MODULES if manifest[name] != digest(sources[name])]
    if stale:
        return Choice(
            compiled=False,
            warning=f"{', '.join(stale)} changed since compiled: serving the Python sources; "
            "rebuild with `make venv` or `pip install -e .`",
        )
    return Choice(compiled=True)


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the compiled modules' ``.py`` files ahead of their extensions."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: object = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES or _source(fullname).suffix != ".py":
            return None
        return importlib.util.spec_from_file_location(fullname, _source(fullname))


def _source(module: str) -> Path:
    """The source of a compiled module: its ``.py``, or a ``.pyx`` that binds C."""
    stem = module.rpartition(".")[2]
    pyx = _HERE / (stem + ".pyx")
    return pyx if pyx.is_file() else _HERE / (stem + ".py")


def _has_extension(module: str) -> bool:
    stem = module.rpartition(".")[2]
    return any(
        (_HERE / (stem + suffix)).is_file() for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


def _read_manifest() -> dict[str, str] | None:
    try:
        loaded = json.loads((_HERE / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}  # unreadable: as if it named nothing, which warns
    return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def _decide() -> bool:
    choice = choose(
        manifest=_read_manifest(),
        sources={name: _source(name).read_bytes() for name in MODULES},
        extensions=[name for name in MODULES if _has_extension(name)],
        pure_python=os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"),
    )
    if choice.warning:
        warnings.warn(choice.warning, RuntimeWarning, stacklevel=2)
    if not choice.compiled:
        sys.meta_path.insert(0, _SourceFinder())
    return choice.compiled


#: Whether the request path runs compiled (decided once, at the package's import).
COMPILED: Final = _decide()
