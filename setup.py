"""The one C extension (everything else is in pyproject.toml).

``powgate._native`` is DeepSeekHashV1 for solvers and, where OpenSSL's
headers are present (Debian's ``libssl-dev``, which ``make system-deps``
installs), the verifier's and issuer's hot path for ALTCHA v1 over SHA-256.
It is optional: where no C compiler is present the build goes on without it,
and without OpenSSL's headers it is built without that hot path; powgate
then uses its pure-Python definitions instead (the same results, slower).
"""

import sysconfig
from pathlib import Path

from setuptools import Extension, setup


def _has_openssl() -> bool:
    roots = {sysconfig.get_config_var("INCLUDEDIR"), "/usr/include", "/usr/local/include"}
    return any(Path(root, "openssl", "sha.h").is_file() for root in roots if root)


_OPENSSL = _has_openssl()

setup(
    ext_modules=[
        Extension(
            "powgate._native",
            sources=["src/powgate/_native.c"],
            extra_compile_args=["-O3"],
            define_macros=[("POWGATE_OPENSSL", "1")] if _OPENSSL else [],
            libraries=["crypto"] if _OPENSSL else [],
            optional=True,
        )
    ]
)
