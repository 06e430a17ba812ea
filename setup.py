"""The one C extension (everything else is in pyproject.toml).

``powgate._native`` is DeepSeekHashV1 for solvers. It is optional: where no
C compiler is present the build goes on without it and powgate uses the
pure-Python definition instead (correct, just slower to solve with).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "powgate._native",
            sources=["src/powgate/_native.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
