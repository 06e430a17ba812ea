"""The compiled modules (everything else is in pyproject.toml).

``powgate._native`` is DeepSeekHashV1 for solvers and, where OpenSSL's
headers are present (Debian's ``libssl-dev``, which ``make system-deps``
installs), the verifier's and issuer's hot path for ALTCHA v1 over SHA-256.

The sidecar's request path (each module of ``sidecar/powgate_sidecar`` with
a ``.pxd`` beside its ``.py``: the connection protocol, the forwarding to
the upstream, the admission, the challenge stock, the per-request metrics,
the routing table and the request record) is compiled by Cython from its
Python source, typed by the ``.pxd``; beside them ``_cparse.pyx``, the
request parser bound to llhttp's C API, with llhttp's C sources
(``sidecar/llhttp``, as vendored by the pinned ``httptools``).
The build writes ``powgate_sidecar/_compiled.json`` beside the extensions:
the digest of each source compiled, which ``powgate_sidecar._compiled``
compares at import, so that an extension never runs in place of a source
edited since (an editable install keeps both side by side).

Both are optional: where no C compiler is present the build goes on without
them (without OpenSSL's headers, ``_native`` without that hot path), and
powgate uses its pure-Python definitions instead (the same results, slower).
``POWGATE_PURE_PYTHON=1`` at build time skips the Cython modules too.
"""

import hashlib
import json
import os
import shutil
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_ROOT = Path(__file__).resolve().parent
_SIDECAR = _ROOT / "sidecar" / "powgate_sidecar"
_LLHTTP = _ROOT / "sidecar" / "llhttp"
_MANIFEST = "_compiled.json"


def _has_openssl() -> bool:
    roots = {sysconfig.get_config_var("INCLUDEDIR"), "/usr/include", "/usr/local/include"}
    return any(Path(root, "openssl", "sha.h").is_file() for root in roots if root)


def _has_compiler() -> bool:
    command = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(command.split()[0]) is not None


def _cython_modules() -> list[Extension]:
    """The request path's extensions, or none (no compiler, no Cython, or asked not to)."""
    if os.environ.get("POWGATE_PURE_PYTHON", "") not in ("", "0") or not _has_compiler():
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    llhttp = sorted(str(path.relative_to(_ROOT)) for path in (_LLHTTP / "src").glob("*.c"))
    modules = []
    for pxd in sorted(_SIDECAR.glob("*.pxd")):
        source = _source(pxd.stem)
        # A .pyx binds C (llhttp's parser); a .py is the Python source, typed by its .pxd.
        c_bound = source.suffix == ".pyx"
        modules.append(
            Extension(
                f"powgate_sidecar.{pxd.stem}",
                sources=[str(source.relative_to(_ROOT)), *(llhttp if c_bound else [])],
                # The compiled connection reads the parser's fields: llhttp's header too.
                include_dirs=[str(_LLHTTP / "include")],
                extra_compile_args=["-O2"] if c_bound else [],
                optional=True,
            )
        )
    return cythonize(
        modules,
        build_dir="build/cython",
        compiler_directives={"language_level": 3},
        quiet=True,
    )


def _source(stem: str) -> Path:
    """The source compiled into ``powgate_sidecar.<stem>`` (``_compiled._source`` alike)."""
    pyx = _SIDECAR / (stem + ".pyx")
    return pyx if pyx.is_file() else _SIDECAR / (stem + ".py")


class _BuildExt(build_ext):
    """build_ext that records which request-path sources the extensions were compiled from."""

    def run(self) -> None:
        super().run()
        compiled = [ext for ext in self.extensions if ext.name.startswith("powgate_sidecar.")]
        manifest = Path(self.get_ext_fullpath("powgate_sidecar._manifest")).parent / _MANIFEST
        built = [ext for ext in compiled if Path(self.get_ext_fullpath(ext.name)).is_file()]
        if not compiled or len(built) != len(compiled):
            # Nothing (or not everything) compiled: no record, so the sources serve.
            manifest.unlink(missing_ok=True)
            return
        # The digest powgate_sidecar._compiled.digest computes: SHA-256 of the source.
        digests = {
            ext.name: hashlib.sha256(_source(ext.name.split(".")[1]).read_bytes()).hexdigest()
            for ext in built
        }
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n")


_OPENSSL = _has_openssl()

setup(
    cmdclass={"build_ext": _BuildExt},
    ext_modules=[
        Extension(
            "powgate._native",
            sources=["src/powgate/_native.c"],
            extra_compile_args=["-O3"],
            define_macros=[("POWGATE_OPENSSL", "1")] if _OPENSSL else [],
            libraries=["crypto"] if _OPENSSL else [],
            optional=True,
        ),
        *_cython_modules(),
    ],
)
