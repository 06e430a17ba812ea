"""Each client's recent request rate, in memory fixed whatever the number of clients.

A space-saving sketch (Metwally, Agrawal, El Abbadi 2005) with forward
exponential decay (Cormode, Shkapenyuk, Srivastava, Xu 2009). It monitors
at most ``capacity`` keys; a key not monitored takes the place of the one
with the smallest count and inherits that count as its *error*. Every count
is a sum of weights ``2^((t - landmark) / half_life)``, so scaling them all
by one number at read time is the decay, and the order of counts never
changes with time.

For pricing, a client's rate is read as ``count - error``: a *lower* bound
of its decayed request count (times the decay rate). A client is never
priced for requests it did not send, whatever others do. The classical
guarantee then holds with decayed counts: a client whose decayed count
exceeds the decayed total divided by ``capacity`` is always monitored, so
flooding the sketch with new keys evicts a heavy hitter only once the
flood's own rate exceeds ``capacity`` times the heavy hitter's.
"""

from __future__ import annotations

import heapq
import math
from typing import Final

__all__ = ["RateSketch"]

#: Rescale the stored counts before the weights grow past this exponent of 2
#: (doubles hold 2^1023; adding weights this far apart would lose the small ones).
_RESCALE_EXPONENT: Final = 40.0


class RateSketch:
    """Decaying request rates of at most ``capacity`` keys; ``add`` is O(1) amortised."""

    __slots__ = (
        "_counts",
        "_decay",
        "_heap",
        "_landmark",
        "_total",
        "capacity",
        "evictions",
        "half_life",
    )

    def __init__(self, *, capacity: int, half_life: float, now: float) -> None:
        if capacity < 1 or not half_life > 0:
            raise ValueError("capacity must be positive and half_life above zero")
        self.capacity = capacity
        self.half_life = half_life
        #: Requests per second of a steady client are ``decay * its decayed count``.
        self._decay = math.log(2) / half_life
        self._landmark = now
        #: key → [count, error], both in weights relative to the landmark.
        self._counts: dict[str, list[float]] = {}
        #: (count when pushed, key): one entry per monitored key, its count stale when
        #: the key was counted since; only ever too low, so the true minimum is found
        #: by refreshing stale entries at the top.
        self._heap: list[tuple[float, str]] = []
        self._total = 0.0
        #: Keys that lost their place to another (a flood of new keys shows here).
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._counts)

    def __contains__(self, key: object) -> bool:
        return key in self._counts

    def _weight(self, now: float) -> float:
        exponent = (now - self._landmark) / self.half_life
        if exponent > _RESCALE_EXPONENT:
            self._rescale(now)
            exponent = 0.0
        # A clock that stepped back far before the landmark weighs little, never zero.
        return math.exp2(max(exponent, -_RESCALE_EXPONENT))

    def _rescale(self, now: float) -> None:
        scale = math.exp2(-(now - self._landmark) / self.half_life)
        for entry in self._counts.values():
            entry[0] *= scale
            entry[1] *= scale
        self._heap = [(count * scale, key) for count, key in self._heap]
        heapq.heapify(self._heap)
        self._total *= scale
        self._landmark = now

    def add(self, key: str, *, now: float) -> float:
        """Count one request of ``key`` at ``now``; returns its rate afterwards (requests/s)."""
        weight = self._weight(now)
        self._total += weight
        counts = self._counts
        entry = counts.get(key)
        if entry is not None:
            entry[0] += weight
        elif len(counts) < self.capacity:
            entry = counts[key] = [weight, 0.0]
            heapq.heappush(self._heap, (weight, key))
        else:
            floor = self._evict()
            entry = counts[key] = [floor + weight, floor]
            heapq.heappush(self._heap, (floor + weight, key))
        return (entry[0] - entry[1]) * self._scale(now)

    def _evict(self) -> float:
        """Drop the key with the smallest count; returns that count."""
        heap, counts = self._heap, self._counts
        while True:
            pushed, key = heap[0]
            current = counts[key][0]
            if current == pushed:
                heapq.heappop(heap)
                del counts[key]
                self.evictions += 1
                return current
            heapq.heapreplace(heap, (current, key))

    def _scale(self, now: float) -> float:
        """From stored counts to requests per second at ``now``."""
        return self._decay * math.exp2(-(now - self._landmark) / self.half_life)

    def rate(self, key: str, *, now: float) -> float:
        """The rate of ``key`` at ``now`` (a lower bound; 0 when not monitored)."""
        entry = self._counts.get(key)
        if entry is None:
            return 0.0
        return (entry[0] - entry[1]) * self._scale(now)

    def total_rate(self, *, now: float) -> float:
        """The rate of every request counted, monitored or not."""
        return self._total * self._scale(now)

    def top(self, count: int, *, now: float) -> list[tuple[str, float]]:
        """The ``count`` heaviest keys by their lower-bound rate, heaviest first."""
        scale = self._scale(now)
        best = heapq.nlargest(count, self._counts.items(), key=lambda item: item[1][0] - item[1][1])
        return [(key, (entry[0] - entry[1]) * scale) for key, entry in best]

    def clear(self) -> None:
        self._counts.clear()
        self._heap.clear()
        self._total = 0.0
