"""Client rates counted across every sidecar of a policy, through its shared store.

Each sidecar prices a client by the higher of two rates: its own sketch's
(:class:`RateSketch`, exact for what it sees, immediate) and the
cluster's, read from the policy's Redis/Valkey server once a second. The
request path only adds to an in-memory tally and looks up the last rate
read; all store traffic is one pipelined round trip per second.

The store holds, per policy and window of ``W`` seconds (the policy's
``halfLifeSeconds``, at least :data:`MIN_WINDOW_SECONDS`), one hash: field =
a keyed digest of the client key, value = requests counted in that window
by all sidecars. A flush adds this sidecar's tallies (``HINCRBY``, which
answers the new total) and reads the previous window's totals of the same
fields (``HMGET``); the cluster rate is the sliding-window estimate
``(previous * (1 - elapsed / W) + current) / W``. Windows are numbered by
wall time, so sidecars whose clocks differ by a second or two count into
the same windows but for those seconds. The hash expires two windows
after its last write.

How approximate (docs/pricing.md): a rate is one flush old when read,
windows are shared by clock and a flood's first window is estimated low
(a lower bound, as the sketch's); each sidecar sends at most
:data:`MAX_KEYS_PER_FLUSH` keys per second (its busiest), and when more
than :data:`MAX_PENDING` keys arrive within a second, new light ones are
not counted (heavy ones still are: the sketch says which). What is not
sent is counted, never silently lost.

The store unavailable (down, slow, no permission for the commands): the
flush's tallies are dropped (not resent: the server may have counted them),
the cluster rates are forgotten at once, and prices come from the local
sketch alone until a flush succeeds; both the flushes and the requests
priced so are counted (``powgate_shared_rate_flushes_total{result}``,
``powgate_shared_rate_fallback_requests_total``).
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import logging
import math
import time
from collections.abc import Callable
from operator import itemgetter
from typing import Final

from powgate import KeyRing
from powgate.pricing import PricingConfig

from ._store import SharedStore, StoreError

__all__ = ["FLUSH_SECONDS", "MAX_KEYS_PER_FLUSH", "MAX_PENDING", "SharedRates"]

log = logging.getLogger("powgate.sidecar")

#: How often tallies go to the store and totals come back.
FLUSH_SECONDS: Final = 1.0
#: The shortest window counted in: two flushes.
MIN_WINDOW_SECONDS: Final = 2.0
#: Keys sent per flush (the busiest): the work of one flush is bounded whatever the traffic.
MAX_KEYS_PER_FLUSH: Final = 512
#: New keys tallied per flush interval before only heavy ones are (memory bound).
MAX_PENDING: Final = 16_384
#: Cluster rates remembered (the highest, when more are read back).
MAX_KNOWN: Final = 16_384
#: Windows are kept this much longer than they are read, for sidecars whose clocks lag.
CLOCK_SKEW_SECONDS: Final = 30
_FIELD_INFO: Final = b"powgate client rate v1\0"
_FIELD_BYTES: Final = 12

#: The pricing in force and the key ring (whose signing key names clients in the store).
Settings = Callable[[], tuple[PricingConfig | None, KeyRing]]


class SharedRates:
    """This sidecar's tallies on their way to the store, and the cluster rates read back."""

    __slots__ = (
        "_clock",
        "_floor",
        "_known",
        "_pending",
        "_prefix",
        "fallback_requests",
        "flushes",
        "keys",
        "policy",
        "store",
        "up",
    )

    def __init__(
        self, *, store: SharedStore, policy: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.policy = policy
        self._prefix = f"powgate:rates:{policy}:".encode()
        self._clock = clock
        #: Requests per key since the last flush.
        self._pending: dict[str, int] = {}
        #: key -> (cluster rate, wall time it was read) for keys priced above the base.
        self._known: dict[str, tuple[float, float]] = {}
        #: A local rate from which a new key is tallied even when the tally is full
        #: (half the fair rate, known from the first flush on).
        self._floor = math.inf
        #: Whether the last flush got an answer.
        self.up = True
        #: Flushes by result ("ok" or a StoreErrorKind), keys by fate, and requests
        #: priced by the local sketch alone while the store did not answer.
        self.flushes: dict[str, int] = {}
        self.keys: dict[str, int] = {"sent": 0, "dropped": 0, "untallied": 0, "lost": 0}
        self.fallback_requests = 0

    def note(self, key: str, local: float) -> float:
        """Tally one request of ``key`` (whose local rate is now ``local``).

        Returns the key's cluster rate as last read (0: not above the fair
        rate, not read yet, or the store not answering).
        """
        pending = self._pending
        count = pending.get(key)
        if count is not None:
            pending[key] = count + 1
        elif len(pending) < MAX_PENDING or local >= self._floor:
            # When full, only keys the sketch already sees at half the fair rate or
            # more: a flood of new keys cannot crowd a heavy one out of the tally.
            pending[key] = 1
        else:
            self.keys["untallied"] += 1
        if not self.up:
            self.fallback_requests += 1
            return 0.0
        known = self._known.get(key)
        return 0.0 if known is None else known[0]

    async def run(self, settings: Settings) -> None:
        """Flush every :data:`FLUSH_SECONDS` until cancelled, with the pricing in force."""
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            pricing, ring = settings()
            await self.flush(pricing=pricing, secret=ring.signing_key.secret)

    async def flush(self, *, pricing: PricingConfig | None, secret: bytes) -> None:
        """Send the tallies to the store and read the cluster rates of their keys."""
        pending, self._pending = self._pending, {}
        if pricing is None:
            self._known = {}
            return
        self._floor = pricing.fair_rate / 2
        now = self._clock()
        window = max(MIN_WINDOW_SECONDS, pricing.half_life_seconds)
        # Forget what was read a window ago: its key has not been seen since.
        known = {key: read for key, read in self._known.items() if now - read[1] < window}
        if not pending:
            self._known = known
            return
        if len(pending) > MAX_KEYS_PER_FLUSH:
            chosen = heapq.nlargest(MAX_KEYS_PER_FLUSH, pending.items(), key=itemgetter(1))
            self.keys["dropped"] += len(pending) - len(chosen)
        else:
            chosen = list(pending.items())
        index = int(now // window)
        name = self._prefix + f"{window:g}:".encode()
        try:
            totals = await self.store.add_counts(
                name + str(index).encode(),
                [(_field(secret, key), count) for key, count in chosen],
                ttl_ms=int((2 * window + CLOCK_SKEW_SECONDS) * 1000),
                previous=name + str(index - 1).encode(),
            )
        except StoreError as exc:
            self._failed(exc, lost=len(chosen))
            return
        self.keys["sent"] += len(chosen)
        self._count("ok")
        if not self.up:
            log.warning("client rates are counted across sidecars again")
            self.up = True
        # Sliding window: the previous window's part still inside the last W seconds.
        weight = 1.0 - (now - index * window) / window
        for (key, _), (current, previous) in zip(chosen, totals, strict=True):
            rate = (previous * weight + current) / window
            if pricing.factor(rate) > 1.0:
                known[key] = (rate, now)
            else:
                known.pop(key, None)
        if len(known) > MAX_KNOWN:
            known = dict(heapq.nlargest(MAX_KNOWN, known.items(), key=lambda item: item[1][0]))
        self._known = known

    def _failed(self, exc: StoreError, *, lost: int) -> None:
        # Not resent: the server may have counted them before the answer was lost.
        self.keys["lost"] += lost
        self._count(exc.kind)
        self._known = {}
        if self.up:
            log.error(
                "client rates cannot be counted across sidecars (%s: %s); each prices by its "
                "own counts",
                exc.kind,
                exc,
                extra={"policy": self.policy},
            )
            self.up = False

    def _count(self, result: str) -> None:
        self.flushes[result] = self.flushes.get(result, 0) + 1


def _field(secret: bytes, key: str) -> bytes:
    """The store's name for a client key: a digest under the policy's signing key.

    Keyed, so that the store (and whoever reads it) learns no client
    networks: an unkeyed digest of an IPv4 /24 is undone by trying all 2^24.
    """
    mac = hmac.new(secret, _FIELD_INFO + key.encode(), hashlib.sha256)
    return mac.digest()[:_FIELD_BYTES]
