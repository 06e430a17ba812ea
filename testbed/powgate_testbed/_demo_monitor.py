"""What the service side saw during a run, second by second.

The load generator measures from the clients' side; this module samples the
other side while the run goes on: the sidecars' ``/metrics`` (outcomes by
reason, the difficulty they enforce), the stand-in's ``/metrics`` (slots in
use, queue, answers by status) and the policy's status (the difficulty the
operator decided). It scrapes the processes directly, more often than
Prometheus does, so the chart shows what happened rather than what a 2 s
scrape interval smoothed.

A scrape that fails keeps the last values seen for that process: a busy
machine delays a sample, it does not turn counters into zeros.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ._demo_scenario import Backend

__all__ = ["Monitor", "ServiceSecond"]

#: Seconds over which the backend's offered load is averaged, centred on the second
#: judged: long enough that Poisson arrivals below capacity do not look like
#: overload, short enough to see a flood start and end.
DEMAND_WINDOW: Final = 5
_STANDIN_PERIOD: Final = 0.25
_SIDECAR_PERIOD: Final = 0.5
_SCRAPE_TIMEOUT: Final = 2.0


@dataclass(frozen=True, slots=True)
class ServiceSecond:
    """The service side of one second of a run."""

    t: int
    #: The highest difficulty any sidecar issued challenges at (None before the first scrape).
    difficulty: int | None
    #: The difficulty in the policy's status: what the operator decided, and why.
    policy_difficulty: int | None
    decision: str | None
    #: Each signal's last value in the policy's status.
    signals: dict[str, float]
    #: Sidecar outcomes this second, keyed ``outcome`` or ``outcome/reason``.
    outcomes: dict[str, float]
    #: Mean fraction of the backend's slots in use.
    utilisation: float | None
    #: Mean number of requests waiting for a slot.
    queued: float | None
    #: Requests offered to the backend per second over DEMAND_WINDOW seconds
    #: around this one, as a fraction of its capacity (above 1: more than it can serve).
    demand: float | None
    #: Requests the backend refused (its queue was full).
    refused: float
    #: Challenges the sidecars handed out this second, and how many of them were
    #: priced above the route's price (per-client prices: a heavy client's factor).
    challenges: float = 0.0
    priced_above_base: float = 0.0

    @property
    def over_capacity(self) -> bool:
        return self.refused > 0 or (self.demand is not None and self.demand > 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "difficulty": self.difficulty,
            "policy_difficulty": self.policy_difficulty,
            "decision": self.decision,
            "signals": self.signals,
            "outcomes": self.outcomes,
            "utilisation": self.utilisation,
            "queued": self.queued,
            "demand": self.demand,
            "refused": self.refused,
            "over_capacity": self.over_capacity,
            "challenges": self.challenges,
            "priced_above_base": self.priced_above_base,
        }


@dataclass(frozen=True, slots=True)
class _Standin:
    at: float
    in_flight: float
    queued: float
    answers: float
    refused: float


@dataclass(frozen=True, slots=True)
class _Sidecars:
    at: float
    difficulty: int | None
    outcomes: dict[str, float]
    #: Totals since the sidecars started: challenges handed out, and those above 1x.
    challenges: float = 0.0
    above_base: float = 0.0


@dataclass(frozen=True, slots=True)
class _Policy:
    at: float
    difficulty: int | None
    decision: str | None
    signals: dict[str, float]

    @classmethod
    def of(cls, status: Mapping[str, Any], *, at: float) -> _Policy:
        decision = status.get("lastDecision") or {}
        signals = {
            str(s["name"]): float(s["value"])
            for s in status.get("signals") or []
            if isinstance(s, dict) and isinstance(s.get("value"), int | float)
        }
        difficulty = status.get("difficulty")
        return cls(
            at=at,
            difficulty=difficulty if isinstance(difficulty, int) else None,
            decision=decision.get("reason") if isinstance(decision, dict) else None,
            signals=signals,
        )


@dataclass(slots=True)
class _Samples:
    standin: list[_Standin] = field(default_factory=list)
    sidecars: list[_Sidecars] = field(default_factory=list)
    policy: list[_Policy] = field(default_factory=list)


def _families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return found


def _total(families: Mapping[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return math.fsum(value for _, value in families.get(name, []))


def _outcome_key(labels: Mapping[str, str]) -> str:
    outcome, reason = labels.get("outcome", "?"), labels.get("reason", "none")
    return outcome if reason == "none" else f"{outcome}/{reason}"


class Monitor:
    """Samples one deployment until stopped; ``seconds()`` turns the samples into rows."""

    def __init__(
        self,
        *,
        standin_urls: tuple[str, ...],
        sidecar_metrics: tuple[str, ...],
        backend: Backend,
        policy_status: Callable[[], Mapping[str, Any]],
        policy_period: float,
    ) -> None:
        #: One stand-in behind all the sidecars, or one per pod on the real node.
        self._standin_urls = standin_urls
        self._sidecar_metrics = sidecar_metrics
        self._backend = backend
        self._policy_status = policy_status
        self._policy_period = policy_period
        self._samples = _Samples()
        # Per sidecar, its last good scrape: a failed one keeps these.
        self._last: dict[str, tuple[int | None, dict[str, float], float, float]] = {}
        self._started = time.monotonic()

    def start_clock(self) -> None:
        """Second 0 starts now (call it when the load starts)."""
        self._started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    async def run(self) -> None:
        """Sample until cancelled."""
        timeout = aiohttp.ClientTimeout(total=_SCRAPE_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            loops = [
                self._every(_STANDIN_PERIOD, lambda: self._scrape_standin(session)),
                self._every(_SIDECAR_PERIOD, lambda: self._scrape_sidecars(session)),
                self._every(self._policy_period, self._read_policy),
            ]
            await asyncio.gather(*loops)

    async def _every(self, period: float, sample: Callable[[], Any]) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            await sample()
            due = max(due + period, loop.time())
            await asyncio.sleep(due - loop.time())

    async def _get(self, session: aiohttp.ClientSession, url: str) -> str | None:
        try:
            async with session.get(url) as response:
                if response.status != 200:
                    return None
                return await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _scrape_standin(self, session: aiohttp.ClientSession) -> None:
        texts = await asyncio.gather(
            *(self._get(session, f"{url}/metrics") for url in self._standin_urls)
        )
        if any(text is None for text in texts):
            return  # a partial sum would read as a drop in load
        parsed = [_families(text) for text in texts if text is not None]
        answers = [a for f in parsed for a in f.get("powgate_standin_requests_total", [])]
        self._samples.standin.append(
            _Standin(
                at=self.elapsed,
                in_flight=math.fsum(
                    _total(f, "powgate_standin_in_flight_requests") for f in parsed
                ),
                queued=math.fsum(_total(f, "powgate_standin_queued_requests") for f in parsed),
                answers=math.fsum(value for _, value in answers),
                refused=math.fsum(
                    value for labels, value in answers if labels.get("status") in ("429", "503")
                ),
            )
        )

    async def _scrape_sidecars(self, session: aiohttp.ClientSession) -> None:
        texts = await asyncio.gather(
            *(self._get(session, f"{url}/metrics") for url in self._sidecar_metrics)
        )
        for url, text in zip(self._sidecar_metrics, texts, strict=True):
            if text is None:
                continue
            families = _families(text)
            outcomes: dict[str, float] = {}
            for labels, value in families.get("powgate_requests_total", []):
                key = _outcome_key(labels)
                outcomes[key] = outcomes.get(key, 0.0) + value
            levels = [int(value) for _, value in families.get("powgate_difficulty", [])]
            # The factors of the challenges handed out (powgate_price_factor): all of
            # them, and those above the route's price (above the `le="1.0"` bucket).
            issued = _total(families, "powgate_price_factor_count")
            at_most_base = math.fsum(
                value
                for labels, value in families.get("powgate_price_factor_bucket", [])
                if labels.get("le") == "1.0"
            )
            self._last[url] = (
                max(levels) if levels else None,
                outcomes,
                issued,
                issued - at_most_base,
            )
        if not self._last:
            return
        combined: dict[str, float] = {}
        for _, outcomes, _, _ in self._last.values():
            for key, value in outcomes.items():
                combined[key] = combined.get(key, 0.0) + value
        levels = [level for level, _, _, _ in self._last.values() if level is not None]
        self._samples.sidecars.append(
            _Sidecars(
                at=self.elapsed,
                difficulty=max(levels) if levels else None,
                outcomes=combined,
                challenges=math.fsum(issued for _, _, issued, _ in self._last.values()),
                above_base=math.fsum(above for _, _, _, above in self._last.values()),
            )
        )

    async def _read_policy(self) -> None:
        # The Kubernetes client blocks: one call at a time, off the event loop. A
        # failed read (the API server busy) only leaves a gap in the samples.
        with contextlib.suppress(Exception):
            status = await asyncio.to_thread(self._policy_status)
            self._samples.policy.append(_Policy.of(status, at=self.elapsed))

    # -- rows ----------------------------------------------------------------------

    def seconds(self, start: int, stop: int) -> list[ServiceSecond]:
        """One row for each second from ``start`` up to (not including) ``stop``."""
        return [self._second(t) for t in range(start, stop)]

    def _second(self, t: int) -> ServiceSecond:
        samples = self._samples
        first = bisect.bisect_left(samples.standin, float(t), key=_taken)
        last = bisect.bisect_left(samples.standin, float(t + 1), key=_taken)
        inside = samples.standin[first:last]
        before, after = _at(samples.standin, t), _at(samples.standin, t + 1)
        side_before, side_after = _at(samples.sidecars, t), _at(samples.sidecars, t + 1)
        outcomes: dict[str, float] = {}
        challenges = priced = 0.0
        if side_after is not None:
            previous = side_before.outcomes if side_before is not None else {}
            outcomes = {
                key: max(0.0, value - previous.get(key, 0.0))
                for key, value in side_after.outcomes.items()
            }
            if side_before is not None:
                challenges = max(0.0, side_after.challenges - side_before.challenges)
                priced = max(0.0, side_after.above_base - side_before.above_base)
        policy = _at(samples.policy, t + 1)
        return ServiceSecond(
            t=t,
            difficulty=side_after.difficulty if side_after is not None else None,
            policy_difficulty=policy.difficulty if policy is not None else None,
            decision=policy.decision if policy is not None else None,
            signals=policy.signals if policy is not None else {},
            outcomes={k: v for k, v in outcomes.items() if v},
            utilisation=(
                math.fsum(s.in_flight for s in inside) / len(inside) / self._backend.concurrency
                if inside
                else None
            ),
            queued=math.fsum(s.queued for s in inside) / len(inside) if inside else None,
            demand=self._demand(t),
            refused=(after.refused - before.refused) if before and after else 0.0,
            challenges=challenges,
            priced_above_base=priced,
        )

    def _demand(self, t: int) -> float | None:
        """Offered load over the window around second ``t``, relative to capacity.

        Centred, so that a flood's start and end show where they happened; at
        the newest seconds (the live view) it is the window seen so far.
        """
        start = max(0, t - DEMAND_WINDOW // 2)
        first = _at(self._samples.standin, start)
        last = _at(self._samples.standin, start + DEMAND_WINDOW)
        if first is None or last is None or last.at <= first.at:
            return None
        # Arrivals = answers given + growth of what is generating or waiting.
        arrivals = (last.answers - first.answers) + (
            last.in_flight + last.queued - first.in_flight - first.queued
        )
        return max(0.0, arrivals) / (last.at - first.at) / self._backend.capacity


_S = TypeVar("_S", _Standin, _Sidecars, _Policy)


def _taken(sample: _Standin | _Sidecars | _Policy) -> float:
    return sample.at


def _at(samples: list[_S], moment: float) -> _S | None:
    """The last sample taken at or before ``moment``, else the first one (samples are in order)."""
    if not samples:
        return None
    index = bisect.bisect_right(samples, moment, key=_taken)
    return samples[max(0, index - 1)]
