"""A bounded pool for key derivations, so that they never run on the event loop.

An ALTCHA v2 verification derives one key: milliseconds of CPU and up to
hundreds of MiB of memory (Argon2id, scrypt). The C code behind them
(OpenSSL's PBKDF2 and scrypt, libargon2) releases the GIL, so threads run
them in parallel. The pool bounds both the threads and the derivations
admitted at once (running or waiting); past that, :meth:`DerivationPool.reserve`
says no at once and the verifier answers ``verifier_busy`` without spending
the solution. A place stays taken until its derivation has finished, even if
the request that asked for it was cancelled meanwhile, so the bound holds.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final, TypeVar

from ._errors import PoolFullError

__all__ = ["DerivationPool", "Ticket"]

T = TypeVar("T")
_WAITING_PER_WORKER: Final = 8


class Ticket:
    """One place in the pool, held from :meth:`DerivationPool.reserve` until released."""

    __slots__ = ("_pool", "_used")

    def __init__(self, pool: DerivationPool) -> None:
        self._pool = pool
        self._used = False

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a pool thread; the place is released when it finishes."""
        if self._used:
            raise RuntimeError("a ticket runs one derivation")
        self._used = True
        future: Future[T] = self._pool._executor.submit(fn)
        future.add_done_callback(lambda _: self._pool._release())
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Give the place back if it was never used (idempotent)."""
        if not self._used:
            self._used = True
            self._pool._release()


class DerivationPool:
    """``workers`` threads and at most ``max_pending`` derivations admitted at once."""

    def __init__(self, *, workers: int | None = None, max_pending: int | None = None) -> None:
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.max_pending = max_pending or self.workers * _WAITING_PER_WORKER
        if self.workers < 1 or self.max_pending < self.workers:
            raise ValueError("need workers >= 1 and max_pending >= workers")
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="powgate-derive")
        self._lock = threading.Lock()
        #: Places taken (reserved, waiting or running); read by metrics.
        self.pending = 0
        #: Reservations refused because the pool was full, since start.
        self.refused = 0

    def reserve(self) -> Ticket | None:
        """A place for one derivation, or ``None`` at once when the pool is full."""
        with self._lock:
            if self.pending >= self.max_pending:
                self.refused += 1
                return None
            self.pending += 1
        return Ticket(self)

    async def run(self, fn: Callable[[], T]) -> T:
        """Reserve and run in one step; :class:`powgate.PoolFullError` when full."""
        ticket = self.reserve()
        if ticket is None:
            raise PoolFullError("the derivation pool is full")
        try:
            return await ticket.run(fn)
        finally:
            ticket.close()

    def _release(self) -> None:
        # Called from pool threads too (a finished future's callback).
        with self._lock:
            self.pending -= 1

    def close(self) -> None:
        """Stop the threads after the derivations already submitted."""
        self._executor.shutdown(wait=True, cancel_futures=True)
