"""Single use across every sidecar of a policy: the local cache first, then the shared store.

A claim asks the process's own :class:`powgate.MemoryReplayCache` first (a
replay at this process is refused without a round trip, and two requests of
one process with one solution never both reach the store), then stores the
solution's key with ``SET NX`` in the policy's Redis/Valkey server: only the
first sidecar in the cluster gets "new". The key lives until the challenge
expires, plus :data:`CLOCK_SKEW_SECONDS` for sidecars whose clocks lag. Its
time to live is relative (``PX``), from this sidecar's clock, the clock that
judges expiry: an absolute expiry (``EXAT``) would trust the store's clock
too, and a store clock running ahead would drop keys while they still pay.

When the store cannot answer (down, slow past the timeout, wrong
credentials, garbage) the policy's ``whenUnavailable`` decides, and both
choices are counted (``powgate_replay_store_unavailable_total{action}``):

- ``Refuse``: the claim answers :attr:`Claim.UNAVAILABLE` and the local entry
  is released, so the client may present the same solution once the store is
  back (it is refused with 503 and Retry-After, like a busy verifier);
- ``FallBackToLocal``: the local cache's answer stands: the solution is
  admitted once by this process, and perhaps once by each other one.

After a failure the store is *down*: claims no longer wait for it, except
one trial every :data:`RETRY_SECONDS`, so a dead or frozen store costs each
request nothing but the decision; the first trial or health probe that gets
an answer brings it back. ``powgate_replay_store_up{policy}`` says which state the sidecar is in;
the operator reads it into the PowPolicy's ``ReplayStoreAvailable`` condition.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Final

from powgate import Claim, MemoryReplayCache
from powgate.config import ReplayStoreSpec, StoreOutage

from ._metrics import Metrics
from ._store import SharedStore, StoreError

__all__ = ["CLOCK_SKEW_SECONDS", "SharedReplay"]

log = logging.getLogger("powgate.sidecar")

#: How far apart the clocks of a policy's sidecars may be without a solution paying twice.
CLOCK_SKEW_SECONDS: Final = 30
#: Health probes of the store: often while it is down (to notice it back without
#: traffic), rarely while it answers (to notice an outage without traffic).
PROBE_DOWN_SECONDS: Final = 1.0
PROBE_UP_SECONDS: Final = 5.0
#: While the store is down, a claim waits for it at most this often (a trial).
RETRY_SECONDS: Final = 0.5


class SharedReplay:
    """An :class:`powgate.AsyncReplayCache` over a process's cache and a shared store."""

    def __init__(
        self,
        *,
        local: MemoryReplayCache,
        store: SharedStore,
        spec: ReplayStoreSpec,
        policy: str,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local = local
        self.store = store
        self.spec = spec
        self.policy = policy
        self._prefix = f"powgate:replay:{policy}:".encode()
        self._refuse = spec.when_unavailable is StoreOutage.REFUSE
        self._metrics = metrics
        self._clock = clock
        self._up = True
        self._trial = False
        self._retry_at = 0.0
        self._last_answer = -math.inf
        self._set_up(True)

    @property
    def up(self) -> bool:
        """Whether the last attempt to reach the store got an answer."""
        return self._up

    def key(self, replay_key: bytes) -> bytes:
        """The store's key for a solution's replay key (binary, under the policy's prefix)."""
        return self._prefix + replay_key

    async def claim(self, key: bytes, *, expires_at: float, now: float) -> str:
        outcome = self.local.claim(key, expires_at=expires_at, now=now)
        if outcome != Claim.NEW:
            return outcome
        if not self._up:
            if self._trial or self._clock() < self._retry_at:
                # Down: one claim now and then finds out whether it is back; the
                # others are decided at once instead of each waiting for the timeout.
                return self._unavailable(key)
            self._trial = True
        metrics = self._metrics
        ttl_ms = int((expires_at - now + CLOCK_SKEW_SECONDS) * 1000)
        started = time.perf_counter()
        try:
            stored = await self.store.set_once(self._prefix + key, ttl_ms=ttl_ms)
        except StoreError as exc:
            metrics.replay_store_errors_total.labels(exc.kind).inc()
            self._failed(exc)
            return self._unavailable(key)
        finally:
            self._trial = False
        metrics.replay_store_seconds.observe(time.perf_counter() - started)
        self._answered()
        if stored:
            metrics.replay_store_claims_total.labels(Claim.NEW).inc()
            return Claim.NEW
        metrics.replay_store_claims_total.labels(Claim.SEEN).inc()
        return Claim.SEEN

    def _unavailable(self, key: bytes) -> str:
        if self._refuse:
            # Nothing was spent: the same solution may pay once the store answers.
            self.local.release(key)
            self._metrics.replay_store_unavailable_total.labels("refused").inc()
            return Claim.UNAVAILABLE
        self._metrics.replay_store_unavailable_total.labels("fallback").inc()
        return Claim.NEW

    async def watch(self) -> None:
        """Probe the store now and then (until cancelled), so its state is known without traffic.

        The first probe goes at once: a store unreachable from the start shows
        before the first paid request finds out.
        """
        while True:
            if not self._up or self._clock() - self._last_answer >= PROBE_UP_SECONDS:
                try:
                    await self.store.ping()
                except StoreError as exc:
                    self._metrics.replay_store_errors_total.labels(exc.kind).inc()
                    self._failed(exc)
                else:
                    self._answered()
            # Else claims have shown it answers.
            await asyncio.sleep(PROBE_UP_SECONDS if self._up else PROBE_DOWN_SECONDS)

    async def close(self) -> None:
        self._metrics.replay_store_up.clear()
        await self.store.close()

    def _answered(self) -> None:
        self._last_answer = self._clock()
        if not self._up:
            log.warning("replay store answers again", extra={"policy": self.policy})
            self._set_up(True)

    def _failed(self, exc: StoreError) -> None:
        self._retry_at = self._clock() + RETRY_SECONDS
        if self._up:
            log.error(
                "replay store unavailable (%s: %s); valid solutions are %s",
                exc.kind,
                exc,
                "refused" if self._refuse else "admitted once per sidecar process",
                extra={"policy": self.policy, "address": self.spec.address},
            )
            self._set_up(False)

    def _set_up(self, up: bool) -> None:
        self._up = up
        gauge = self._metrics.replay_store_up
        gauge.clear()
        gauge.labels(self.policy, self.spec.when_unavailable.value).set(1 if up else 0)
