"""Real proof of work for simulated clients, kept off the event loop and within bounds.

Searches run in a worker process (one per client class), so the event loop
that times requests stays responsive and a class's hashing uses at most one
core. Pacing happens on the asyncio side: a legitimate client solves at
native speed and then waits until the search has taken as long as it would
at the capped (browser-like) hash rate; attackers draw from a shared budget
of hashes per second before each search.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.pool
from dataclasses import dataclass
from typing import Any

from powgate import AnyChallenge, parse_challenge, solve_challenge

__all__ = ["HashBudget", "SolverPool", "Work"]


@dataclass(frozen=True, slots=True)
class Work:
    """A solved challenge: the header and payload to send, and what it cost.

    ``hashes`` counts the scheme's unit of work: hashes (ALTCHA v1,
    DeepSeek) or key derivations (ALTCHA PoW v2).
    """

    header: str
    payload: str
    hashes: int


def _solve_in_worker(document: dict[str, Any]) -> tuple[str, str, int]:
    # Runs in the worker process; plain types cross the process boundary.
    solved = solve_challenge(parse_challenge(document))
    return solved.header, solved.payload, solved.work


class SolverPool:
    """One worker process that searches challenges in the order they are submitted."""

    def __init__(self) -> None:
        self._pool: multiprocessing.pool.Pool | None = None

    def start(self) -> None:
        """Start the worker now, so its start-up does not count as solving time."""
        if self._pool is None:
            # spawn: forking a process that runs an event loop and threads is unsafe.
            self._pool = multiprocessing.get_context("spawn").Pool(processes=1)

    async def solve(self, challenge: AnyChallenge) -> Work:
        """Search ``challenge`` at native speed (``SolveError`` if it has no solution)."""
        self.start()
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[str, str, int]] = loop.create_future()

        def deliver(result: tuple[str, str, int]) -> None:
            loop.call_soon_threadsafe(_settle, done, result, None)

        def fail(error: BaseException) -> None:
            loop.call_soon_threadsafe(_settle, done, None, error)

        self._pool.apply_async(
            _solve_in_worker, (challenge.to_dict(),), callback=deliver, error_callback=fail
        )
        header, payload, hashes = await done
        return Work(header=header, payload=payload, hashes=hashes)

    def close(self) -> None:
        """Stop the worker at once, abandoning any search in progress (runs are bounded in time)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def _settle(
    future: asyncio.Future[tuple[str, str, int]],
    result: tuple[str, str, int] | None,
    error: BaseException | None,
) -> None:
    # The requester may have been cancelled (end of run) while the worker searched.
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)


class HashBudget:
    """A token bucket of hashes: the attackers' shared compute, ``rate`` hashes per second.

    A search starts once the bucket is out of debt and reserves its expected
    cost at once, so bots waiting together do not all start together; the
    difference to the real cost is settled when the search ends (nobody
    knows a search's length in advance). Over time the hashes spent cannot
    exceed ``rate * elapsed + burst``, so as difficulty rises the
    attackers' solved requests per second fall.
    """

    def __init__(self, *, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._burst = rate if burst is None else burst
        self._tokens = self._burst
        self._updated: float | None = None

    def _refill(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._updated is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    async def reserve(self, expected: int) -> None:
        """Wait until the bucket is out of debt, then take ``expected`` hashes from it."""
        self._refill()
        while self._tokens < 0:
            await asyncio.sleep(-self._tokens / self.rate)
            self._refill()
        self._tokens -= expected

    def settle(self, *, expected: int, spent: int) -> None:
        """Correct a reservation by what the search really cost (or 0 if it never ran)."""
        self._refill()
        self._tokens += expected - spent
