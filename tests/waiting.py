"""Waiting in tests: for a state to appear, and for a free port. One home for both.

Wait for a positive signal, never for a fixed time: a test that sleeps and
then checks that something did *not* happen passes when the thing is merely
slow. Every wait is bounded; the bound is a guard against hangs on a loaded
machine, never a speed measurement (speed belongs in ``make bench``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
import pytest

from powgate_testbed._process import free_ports

__all__ = ["WAIT", "eventually", "eventually_async", "free_port", "until_ready"]

T = TypeVar("T")
#: Bounds a hang on a loaded 2-core machine; never a speed measurement.
WAIT = 90.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def _settled(value: object) -> bool:
    return value is not None and value is not False


def eventually(
    probe: Callable[[], T | None],
    *,
    what: str,
    timeout: float = WAIT,
    interval: float = 0.2,
    context: Callable[[], str] | None = None,
) -> T:
    """The first value of ``probe`` that is neither None nor False; fails after ``timeout``.

    ``context`` adds what the test last saw to the failure message.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if _settled(value):
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            seen = f"; {context()}" if context else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{seen}")
        time.sleep(interval)


async def eventually_async(
    probe: Callable[[], Awaitable[T | None] | T | None],
    *,
    what: str,
    timeout: float = WAIT,  # noqa: ASYNC109 - fails the test with `what`, unlike a cancellation
    interval: float = 0.01,
) -> T:
    """:func:`eventually` inside an event loop; ``probe`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        if _settled(value):
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


async def until_ready(url: str, *, timeout: float = WAIT) -> None:  # noqa: ASYNC109 - as above
    """Wait until ``url`` answers 200 (a readiness probe); refused connections mean "not yet"."""
    async with aiohttp.ClientSession() as session:

        async def answers() -> bool:
            try:
                async with session.get(url) as response:
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await eventually_async(answers, what=f"{url} ready", timeout=timeout)
