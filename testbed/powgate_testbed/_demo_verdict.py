"""The verdict of a run: did the defence adapt, and what did clients and attackers get?

Pure functions over a run's timeline (one row per second, see
:func:`timeline_row`), so every number of the verdict can be recomputed from
the JSON summary, and the definitions are tested without a cluster.

Definitions (``docs/demo.md`` explains them):

* a second is *over capacity* when the backend refused requests or was
  offered more than its capacity over the preceding few seconds;
* *time to adapt*: from the flood's first second to the first second at which
  the sidecars enforce a difficulty above the minimum and from which the
  backend stays under capacity for ``HOLD`` seconds (or to the flood's end);
* the *judged stretch*: from adaptation to the end of the flood (baselines,
  which do not adapt: the flood after its first ``settle`` seconds);
* *legit p95*: from per-second nearest-rank percentiles, exact while no
  second has more than two admitted legitimate requests, an upper bound
  while each has fewer than twenty.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from ._load_stats import COUNTERS, ENDINGS, percentile

__all__ = [
    "HOLD",
    "TARGETS",
    "Verdict",
    "check_targets",
    "judge",
    "merge_client_rows",
]

#: Seconds the backend must stay under capacity for the defence to count as adapted.
HOLD: Final = 10
#: The issue's targets for the default scenario.
TARGETS: Final = {
    "time_to_adapt": 15.0,
    "legit_success": 0.99,
    "legit_p95": 3.0,
    "back_to_min": 300.0,
    "direction_changes": 2,
}
#: Per-second percentiles are the maximum of a second with fewer samples than this.
_P95_EXACT_BELOW: Final = 20


def merge_client_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One class's second, summed over several load generators (one per sidecar).

    Counters add up; percentiles cannot, so each generator's admitted count
    and latency percentiles are kept as ``latency_parts`` for :func:`judge`.
    """
    merged: dict[str, Any] = {name: sum(int(row[name]) for row in rows) for name in COUNTERS}
    parts = [
        [int(row["admitted"]), row["latency_p50"], row["latency_p95"]]
        for row in rows
        if row["admitted"]
    ]
    merged["latency_parts"] = parts
    merged["latency_p95"] = max((part[2] for part in parts), default=None)
    solves = [row["solve_p95"] for row in rows if row["solve_p95"] is not None]
    merged["solve_p95"] = max(solves, default=None)
    return merged


def _window_p95(rows: Sequence[Mapping[str, Any]]) -> tuple[float | None, str]:
    """The p95 latency over several seconds, and how exact it is.

    Within a second of ``n`` samples, nearest-rank p50 is the ``ceil(n/2)``-th
    value and (for ``n < 20``) p95 is the largest: replacing the lower half by
    p50 and the rest by p95 only raises values, so the p95 of that multiset
    bounds the true one from above, and equals it when ``n <= 2``.
    """
    values: list[float] = []
    quality = "exact"
    for row in rows:
        for count, p50, p95 in row["latency_parts"]:
            lower = math.ceil(count / 2)
            values += [float(p50)] * lower + [float(p95)] * (count - lower)
            if count >= _P95_EXACT_BELOW:
                quality = "approximate"
            elif count > 2 and quality == "exact":
                quality = "upper bound"
    return percentile(values, 0.95), quality


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one run showed (None where there was nothing to measure)."""

    defence: str
    flood_start: int
    flood_end: int
    #: First second of the judged stretch (adaptation, or the flood after ``settle``).
    judged_from: int
    time_to_adapt: float | None
    legit_success: float | None
    legit_p95: float | None
    legit_p95_quality: str
    legit_hashes_per_admitted: float | None
    backend_utilisation: float | None
    backend_demand: float | None
    over_capacity_seconds: int
    longest_over_capacity: int
    attack_goodput: float | None
    attack_hashes_per_admitted: float | None
    attack_hashes: int
    peak_difficulty: int | None
    back_to_min: float | None
    direction_changes: int
    #: Share of the challenges handed out that were priced above the route's price
    #: (per-client prices: heavy clients); None when no challenge was handed out.
    priced_share: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return math.fsum(known) / len(known) if known else None


def _longest(flags: Sequence[bool]) -> int:
    longest = current = 0
    for flag in flags:
        current = current + 1 if flag else 0
        longest = max(longest, current)
    return longest


def _direction_changes(levels: Sequence[int]) -> int:
    changes, direction = 0, 0
    for before, after in itertools.pairwise(levels):
        step = (after > before) - (after < before)
        if step and direction and step != direction:
            changes += 1
        direction = step or direction
    return changes


def _adapted_at(
    rows: Sequence[Mapping[str, Any]], *, flood_start: int, flood_end: int, minimum: int
) -> int | None:
    for start in range(flood_start, flood_end):
        difficulty = rows[start]["service"]["difficulty"]
        if difficulty is None or difficulty <= minimum:
            continue
        held = rows[start : min(flood_end, start + HOLD)]
        if not any(row["service"]["over_capacity"] for row in held):
            return start
    return None


def _back_to_min(levels: Sequence[int | None], *, flood_end: int, minimum: int) -> float | None:
    after = levels[flood_end:]
    if not after or after[-1] != minimum:
        return None
    index = len(after)
    while index > 0 and after[index - 1] == minimum:
        index -= 1
    return float(index)


def judge(
    rows: Sequence[Mapping[str, Any]],
    *,
    defence: str,
    flood_start: int,
    flood_end: int,
    settle: int,
    minimum: int | None,
) -> Verdict:
    """The verdict of one run; ``minimum`` is the adaptive policy's floor (None: no adaptation)."""
    flood_end = min(flood_end, len(rows))
    adapted = (
        _adapted_at(rows, flood_start=flood_start, flood_end=flood_end, minimum=minimum)
        if minimum is not None
        else None
    )
    judged_from = adapted if adapted is not None else min(flood_end, flood_start + settle)
    judged = rows[judged_from:flood_end]
    legit = [row["legit"] for row in judged]
    attack = [row["attack"] for row in judged]
    ended = sum(row[name] for row in legit for name in ENDINGS)
    legit_admitted = sum(row["admitted"] for row in legit)
    attack_admitted = sum(row["admitted"] for row in attack)
    attack_hashes = sum(row["hashes"] for row in attack)
    legit_hashes = sum(row["hashes"] for row in legit)
    p95, quality = _window_p95(legit)
    flood_flags = [row["service"]["over_capacity"] for row in rows[flood_start:flood_end]]
    levels = [row["service"]["difficulty"] for row in rows]
    known = [level for level in levels if level is not None]
    # Rows written before these counters existed have neither.
    challenges = sum(row["service"].get("challenges", 0.0) for row in judged)
    priced = sum(row["service"].get("priced_above_base", 0.0) for row in judged)
    return Verdict(
        defence=defence,
        flood_start=flood_start,
        flood_end=flood_end,
        judged_from=judged_from,
        time_to_adapt=float(adapted - flood_start) if adapted is not None else None,
        legit_success=legit_admitted / ended if ended else None,
        legit_p95=p95,
        legit_p95_quality=quality,
        legit_hashes_per_admitted=legit_hashes / legit_admitted if legit_admitted else None,
        backend_utilisation=_mean([row["service"]["utilisation"] for row in judged]),
        backend_demand=_mean([row["service"]["demand"] for row in judged]),
        over_capacity_seconds=sum(flood_flags),
        longest_over_capacity=_longest(flood_flags),
        attack_goodput=attack_admitted / len(judged) if judged else None,
        attack_hashes_per_admitted=attack_hashes / attack_admitted if attack_admitted else None,
        attack_hashes=attack_hashes,
        peak_difficulty=max(known, default=None),
        back_to_min=(
            _back_to_min(levels, flood_end=flood_end, minimum=minimum)
            if minimum is not None
            else None
        ),
        direction_changes=_direction_changes(known),
        priced_share=priced / challenges if challenges else None,
    )


def check_targets(verdict: Verdict) -> dict[str, bool]:
    """Each target of the issue, met or not (a quantity that was not measured is not met)."""

    def at_most(value: float | None, limit: float) -> bool:
        return value is not None and value <= limit

    adapt = verdict.time_to_adapt
    return {
        "time_to_adapt": at_most(adapt, TARGETS["time_to_adapt"]),
        "legit_success": verdict.legit_success is not None
        and verdict.legit_success >= TARGETS["legit_success"],
        "legit_p95": at_most(verdict.legit_p95, TARGETS["legit_p95"]),
        # Over capacity only while adapting: no longer in all than the adaptation took.
        "backend_capacity": adapt is not None and verdict.over_capacity_seconds <= adapt,
        "back_to_min": at_most(verdict.back_to_min, TARGETS["back_to_min"]),
        "direction_changes": verdict.direction_changes <= TARGETS["direction_changes"],
    }
