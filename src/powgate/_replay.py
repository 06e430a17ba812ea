"""Single use of solutions: the replay cache.

A solution is admitted once per cache. Entries live until their challenge
expires (after that the verifier rejects the solution as expired anyway), so
memory is bounded by the rate of *valid* solutions times the challenge
lifetime, and each entry cost its sender a solved puzzle.

Policy when full: after purging expired entries, a cache at its cap refuses
new claims (reason ``replay_cache_full``): it fails closed, so no replay is
ever admitted, and the client gets a fresh challenge. Size the cap above
``admitted rate * challenge lifetime``; the sidecar exports the fill level.

A cache of one process gives single use per process. A shared store
(Redis/Valkey ``SET key 1 NX PX …``, the sidecar's ``_replay_store``) gives it
cluster-wide; it implements :class:`AsyncReplayCache`, with this cache in
front as the first check, and may answer :attr:`Claim.UNAVAILABLE` when the
store cannot be asked and its policy is to refuse.
"""

from __future__ import annotations

import heapq
from typing import Final, Protocol

__all__ = ["AsyncReplayCache", "Claim", "MemoryReplayCache", "ReplayCache"]

DEFAULT_MAX_ENTRIES: Final = 500_000


class Claim:
    """Outcomes of a claim, as plain strings so they double as metric labels."""

    NEW: Final = "new"
    SEEN: Final = "seen"
    FULL: Final = "full"
    #: A shared store could not be asked and refuses rather than guess (nothing was spent).
    UNAVAILABLE: Final = "unavailable"


class ReplayCache(Protocol):
    def claim(self, key: bytes, *, expires_at: float, now: float) -> str:
        """Record ``key`` until ``expires_at``; returns a :class:`Claim` outcome."""
        ...


class AsyncReplayCache(Protocol):
    async def claim(self, key: bytes, *, expires_at: float, now: float) -> str: ...


class MemoryReplayCache:
    """A process-local cache: a dict for lookups, a heap ordered by expiry for purging."""

    __slots__ = ("_entries", "_heap", "max_entries")

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self._entries: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def claim(self, key: bytes, *, expires_at: float, now: float) -> str:
        heap = self._heap
        if heap and heap[0][0] < now:
            self._purge(now)
        if key in self._entries:
            return Claim.SEEN
        if len(self._entries) >= self.max_entries:
            return Claim.FULL
        self._entries[key] = expires_at
        heapq.heappush(self._heap, (expires_at, key))
        return Claim.NEW

    def release(self, key: bytes) -> None:
        """Forget ``key`` (a claim the caller could not complete): it may be claimed again.

        Its heap entry stays until it expires; a new claim of the same key has the
        same expiry (the key is a digest of the challenge), so purging it removes
        the right entry.
        """
        self._entries.pop(key, None)

    def _purge(self, now: float) -> None:
        heap, entries = self._heap, self._entries
        # Amortised O(log n) per claim: each entry is pushed and popped once.
        while heap and heap[0][0] < now:
            _, key = heapq.heappop(heap)
            entries.pop(key, None)
