"""Debian's headless Chromium, started the one way the tests and benchmarks use it.

A page reports back to the server that served it (a request to that server),
never through the browser's output; the browser's log stays in a file for
when something goes wrong.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Final

from ._process import ManagedProcess

__all__ = ["CHROMIUM_FLAGS", "chromium_binary", "open_headless"]

CHROMIUM_FLAGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
)


def chromium_binary() -> str | None:
    """Debian's ``chromium`` (``make system-deps``), or ``None`` when it is not installed."""
    return shutil.which("chromium")


def open_headless(binary: str, url: str, *, log: Path, profile: Path) -> ManagedProcess:
    """A fresh headless Chromium (its own profile) on ``url``; stop it with ``stop_all``."""
    return ManagedProcess(
        name="chromium",
        argv=[binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url],
        log_path=log,
        die_with_parent=True,
    )
