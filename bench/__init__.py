"""Reproducible benchmarks: ``python -m bench [name ...]`` (``make bench`` runs them all).

Each ``bench_<name>.py`` module exposes ``main() -> None``, which prints a
table whose reference is measured in the same run, so ratios stay
meaningful on a loaded or unfamiliar machine. Shared measuring helpers live
here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence

__all__ = ["best_seconds", "openssl_sha256_rate", "table"]


def openssl_sha256_rate(*, seconds: int = 3) -> float | None:
    """SHA-256 hashes/s of 64-byte messages by ``openssl speed`` (``None`` without openssl)."""
    if shutil.which("openssl") is None:
        return None
    cmd = ["openssl", "speed", "-seconds", str(seconds), "-bytes", "64", "sha256"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    # The result row: "sha256   123456.78k" (thousands of bytes per second).
    match = re.search(r"^sha256\s+([\d.]+)k\s*$", out, re.MULTILINE)
    return None if match is None else float(match.group(1)) * 1000 / 64


def best_seconds(run: Callable[[], object], *, repeat: int = 7) -> float:
    """The fastest of ``repeat`` runs: the least disturbed by other load."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    """A plain text table, first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
