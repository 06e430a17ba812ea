"""Client-side accounting of a load run: per class, per second, and in total.

Every logical request is counted once as ``sent`` in the second it started
and ends in exactly one outcome (``admitted``, ``unsolved``, ``rejected``,
``overloaded``, ``errors`` or ``aborted``) in the second it ended. Arrivals
the client could not even send (its own in-flight cap) are ``dropped``.
``challenges`` and ``refusals`` count HTTP answers along the way; ``hashes``
is the work spent, in the second the search ended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

__all__ = ["COUNTERS", "ENDINGS", "OUTCOMES", "ClassStats", "Counter", "percentile"]

Counter = Literal[
    "sent",
    "admitted",
    "unsolved",
    "rejected",
    "overloaded",
    "errors",
    "aborted",
    "dropped",
    "challenges",
    "refusals",
    "hashes",
]
#: How a logical request can end.
OUTCOMES: Final[tuple[Counter, ...]] = (
    "admitted",
    "unsolved",
    "rejected",
    "overloaded",
    "errors",
    "aborted",
)
#: Every way a request ends for its client: the outcomes, and never sent at all.
ENDINGS: Final[tuple[Counter, ...]] = (*OUTCOMES, "dropped")


@dataclass(slots=True)
class _Second:
    sent: int = 0
    admitted: int = 0
    unsolved: int = 0
    rejected: int = 0
    overloaded: int = 0
    errors: int = 0
    aborted: int = 0
    dropped: int = 0
    challenges: int = 0
    refusals: int = 0
    hashes: int = 0
    latencies: list[float] = field(default_factory=list)
    solve_seconds: list[float] = field(default_factory=list)


COUNTERS: Final[tuple[Counter, ...]] = get_args(Counter)


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (``None`` for no values): a value that was really observed."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class ClassStats:
    """The time series of one client class; ``at`` is seconds since the run started."""

    def __init__(self) -> None:
        self._seconds: list[_Second] = []

    def _bucket(self, at: float) -> _Second:
        index = max(0, int(at))
        while len(self._seconds) <= index:
            self._seconds.append(_Second())
        return self._seconds[index]

    def count(self, counter: Counter, *, at: float, amount: int = 1) -> None:
        bucket = self._bucket(at)
        setattr(bucket, counter, getattr(bucket, counter) + amount)

    def admitted(self, *, at: float, latency: float) -> None:
        bucket = self._bucket(at)
        bucket.admitted += 1
        bucket.latencies.append(latency)

    def solved(self, *, at: float, hashes: int, seconds: float) -> None:
        bucket = self._bucket(at)
        bucket.hashes += hashes
        bucket.solve_seconds.append(seconds)

    def series(self, *, seconds: int) -> list[dict[str, Any]]:
        """One row per second for the first ``seconds`` seconds (missing seconds are zeros)."""
        self._bucket(seconds - 1)
        return [_row(bucket) for bucket in self._seconds[:seconds]]

    def summary(self) -> dict[str, Any]:
        total = _Second()
        for bucket in self._seconds:
            for name in COUNTERS:
                setattr(total, name, getattr(total, name) + getattr(bucket, name))
            total.latencies.extend(bucket.latencies)
            total.solve_seconds.extend(bucket.solve_seconds)
        row = _row(total)
        row["success_rate"] = total.admitted / total.sent if total.sent else None
        row["hashes_per_admitted"] = total.hashes / total.admitted if total.admitted else None
        row["latency_p99"] = percentile(total.latencies, 0.99)
        row["solve_seconds_total"] = sum(total.solve_seconds)
        return row


def _row(bucket: _Second) -> dict[str, Any]:
    row: dict[str, Any] = {name: getattr(bucket, name) for name in COUNTERS}
    row["latency_p50"] = percentile(bucket.latencies, 0.50)
    row["latency_p95"] = percentile(bucket.latencies, 0.95)
    row["solve_p50"] = percentile(bucket.solve_seconds, 0.50)
    row["solve_p95"] = percentile(bucket.solve_seconds, 0.95)
    return row
