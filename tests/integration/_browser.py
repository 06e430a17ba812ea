"""What the headless-Chromium tests share: how the browser is started and how a test waits on it.

The fixtures themselves (`chromium`, `open_page`) live in ``conftest.py``;
a page tells the test it is done through the test's own server (a report
request, or the request under test arriving), never through the browser's
output, so a test learns exactly what the page saw.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

__all__ = ["WAIT_SECONDS", "OpenPage", "wait_for_page"]

#: Only guards against a hung browser; the solves here take well under a second.
WAIT_SECONDS = 120
#: Opens a URL in a fresh headless Chromium; returns the path of its log.
OpenPage = Callable[[str], Path]


def wait_for_page(wait: Callable[[float], bool], *, log: Path, what: str) -> None:
    """Block until ``wait(timeout)`` is true; on a timeout, fail with the browser's console.

    ``wait`` is an ``Event.wait`` or a ``Condition.wait_for`` bound to its predicate.
    """
    if not wait(WAIT_SECONDS):
        console = [
            line for line in log.read_text(errors="replace").splitlines() if "CONSOLE" in line
        ]
        pytest.fail(f"{what} never happened; browser console:\n" + "\n".join(console[-20:]))
