"""The stand-in's capacity: a fixed number of generation slots and a bounded FIFO queue.

Real inference servers behave this way: a batch of requests generates at
once, later ones wait in arrival order, and once the waiting room is full the
server refuses at the door (vLLM and the OpenAI API answer 429 or 503). The
gate is plain asyncio so it can be tested without a server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["CapacityGate", "OverloadedError"]


class OverloadedError(Exception):
    """Every slot is busy and the queue is full: the request must be refused."""


class CapacityGate:
    """At most ``concurrency`` holders; up to ``max_queue`` waiters, first come first served."""

    __slots__ = ("_concurrency", "_in_flight", "_max_queue", "_waiters")

    def __init__(self, *, concurrency: int, max_queue: int) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_queue < 0:
            raise ValueError("max_queue must not be negative")
        self._concurrency = concurrency
        self._max_queue = max_queue
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def concurrency(self) -> int:
        return self._concurrency

    @property
    def max_queue(self) -> int:
        return self._max_queue

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        """Take a slot, waiting in line if needed; ``OverloadedError`` if the line is full."""
        # A free slot goes to the arrival only when nobody is waiting: a newcomer
        # must never overtake the queue.
        if self._in_flight < self._concurrency and not self._waiters:
            self._in_flight += 1
            return
        if len(self._waiters) >= self._max_queue:
            raise OverloadedError
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            else:
                # The slot was handed over just as the waiter gave up: pass it on.
                self.release()
            raise

    def release(self) -> None:
        """Give a slot back; it goes straight to the longest waiter, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                # The slot changes hands, so in_flight stays the same.
                waiter.set_result(None)
                return
        self._in_flight -= 1
