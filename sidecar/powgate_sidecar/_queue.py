"""Priority by effort: a cap on concurrent upstream requests, highest difficulty first.

When the upstream is saturated, requests wait in a heap ordered by the
difficulty they paid (then arrival), the defence Tor onion services use: a
client that did more work gets in first, and a flood of cheap solutions
queues behind it. Limits come from the live configuration, so a reload can
raise, lower or lift the cap while requests are waiting.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Final

from powgate.config import QueueConfig

__all__ = ["EffortQueue", "QueueVerdict"]


class QueueVerdict:
    """Why :meth:`EffortQueue.acquire` did not grant a slot (metric label values)."""

    FULL: Final = "full"
    TIMEOUT: Final = "timeout"


class EffortQueue:
    """A counting semaphore whose waiters are served by effort, not by arrival."""

    __slots__ = ("_active", "_heap", "_limits", "_order", "_waiting")

    def __init__(self, limits: QueueConfig) -> None:
        self._limits = limits
        self._active = 0
        self._waiting = 0
        self._order = itertools.count()
        # (-difficulty, arrival, future): heapq pops the hardest-working, earliest first.
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []

    @property
    def depth(self) -> int:
        """Requests waiting now."""
        return self._waiting

    @property
    def active(self) -> int:
        return self._active

    def set_limits(self, limits: QueueConfig) -> None:
        """Apply new limits; waiters the new cap has room for go at once."""
        self._limits = limits
        self._wake()

    async def acquire(self, *, difficulty: int) -> str | None:
        """Take a slot (``None``) or say why not (a :class:`QueueVerdict`).

        Every successful acquire must be paired with :meth:`release`.
        """
        limits = self._limits
        if limits.max_concurrent == 0 or (
            self._active < limits.max_concurrent and not self._waiting
        ):
            self._active += 1
            return None
        if self._waiting >= limits.max_waiting:
            return QueueVerdict.FULL
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (-difficulty, next(self._order), future))
        self._waiting += 1
        try:
            async with asyncio.timeout(limits.max_wait_seconds):
                await future
        except TimeoutError:
            # The slot may have been granted in the same loop iteration the timer fired.
            return None if _granted(future) else QueueVerdict.TIMEOUT
        except BaseException:
            if _granted(future):
                self.release()
            raise
        finally:
            if not _granted(future):
                # Timed out or cancelled while waiting (which cancels the future
                # too): the heap entry stays as a tombstone that _wake skips.
                future.cancel()
                self._waiting -= 1
        return None

    def release(self) -> None:
        self._active -= 1
        self._wake()

    def _wake(self) -> None:
        limit = self._limits.max_concurrent
        heap = self._heap
        while heap and (limit == 0 or self._active < limit):
            _, _, future = heapq.heappop(heap)
            if future.done():
                continue
            future.set_result(None)
            self._waiting -= 1
            self._active += 1


def _granted(future: asyncio.Future[None]) -> bool:
    return future.done() and not future.cancelled()
