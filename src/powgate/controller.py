"""The difficulty controller: (signals, spec, history, now) → decision.

Pure functions, no I/O: the operator queries Prometheus, calls
:func:`evaluate` with what it read and the policy's status, and writes the
decision back. Everything the controller remembers (recommendations for the
stabilization windows, recent changes for the step policies, each signal's
failure count) lives in the status, so an operator restart changes nothing.

The algorithm is the HorizontalPodAutoscaler's, for difficulty instead of
replicas:

1. each healthy signal proposes ``current * (1 + weight * (value/target - 1))``,
   or ``current`` while ``|value/target - 1| <= tolerance``; the most demanding
   proposal wins, clamped to ``[min, max]``;
2. stabilization: the new value is at least the *minimum* recommendation of
   the increase window and at most the *maximum* of the decrease window, so
   difficulty rises only on sustained pressure and relaxes only after the
   pressure has been gone for the whole decrease window;
3. step policies bound the change per period (``Percent`` of the value at the
   start of the period, or an ``Absolute`` amount; ``selectPolicy`` picks the
   largest or smallest allowed change, or disables the direction);
4. while a signal fails, difficulty never falls: the remaining signals may
   still raise it (``Hold``, the default), or after ``afterFailures``
   consecutive failures it is set to the fallback difficulty (``Fixed``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ._verify import MAX_DIFFICULTY
from .policy import (
    MAX_HISTORY,
    MAX_RECOMMENDATIONS,
    DecisionReason,
    DifficultyChange,
    FallbackAction,
    OnEmpty,
    PolicySpec,
    PolicyStatus,
    Recommendation,
    SelectPolicy,
    SignalHealth,
    SignalSpec,
    SignalStatus,
    StepPolicyType,
    StepRules,
)

__all__ = ["Decision", "Empty", "Failure", "Reading", "Sample", "evaluate", "follow_bounds"]


@dataclass(frozen=True, slots=True)
class Sample:
    """A signal's query returned one finite value."""

    value: float


@dataclass(frozen=True, slots=True)
class Empty:
    """A signal's query returned no series."""


@dataclass(frozen=True, slots=True)
class Failure:
    """A signal's query failed; ``reason`` is a short CamelCase cause for status and metrics."""

    reason: str
    message: str = ""


Reading = Sample | Empty | Failure


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one evaluation: the new difficulty and the status it leaves behind."""

    difficulty: int
    previous: int
    reason: DecisionReason
    message: str
    #: The signal whose proposal won ("" when none did), and the clamped recommendation.
    signal: str
    recommended: int
    #: True when the bounds or a step policy kept difficulty from where the signals wanted it.
    limited: bool
    #: True while at least one signal fails (its result is not trusted to lower difficulty).
    fallback_active: bool
    signals: tuple[SignalStatus, ...]
    recommendations: tuple[Recommendation, ...]
    history: tuple[DifficultyChange, ...]

    @property
    def changed(self) -> bool:
        return self.difficulty != self.previous


@dataclass(frozen=True, slots=True)
class _Proposal:
    signal: str
    difficulty: int
    ratio: float


def evaluate(
    *, spec: PolicySpec, status: PolicyStatus, readings: Mapping[str, Reading], now: datetime
) -> Decision:
    """Decide the difficulty for the next interval.

    ``readings`` maps signal names to what their query returned; a signal
    missing from it counts as failed (it was not evaluated).
    """
    current = _current(spec=spec, status=status)
    signals = tuple(
        _signal_status(
            signal=signal,
            reading=readings.get(signal.name, Failure("NotEvaluated")),
            previous=_find(status.signals, signal.name),
            now=now,
        )
        for signal in spec.signals
    )
    failing = [s for s in signals if s.health is SignalHealth.FAILING]
    outcome = _Outcome(spec=spec, status=status, current=current, signals=signals, now=now)
    bounds = spec.difficulty

    if bounds.clamp(current) != current:
        return _follow_bounds(outcome)
    if not spec.signals:
        return outcome.decide(
            difficulty=current,
            reason=DecisionReason.NO_SIGNALS,
            message="no signals: difficulty stays where it is",
        )
    fallback = spec.fallback
    worst = max((s.consecutive_failures for s in failing), default=0)
    if failing and fallback.action is FallbackAction.FIXED and worst >= fallback.after_failures:
        assert fallback.difficulty is not None  # the spec's validator guarantees it
        return outcome.decide(
            difficulty=fallback.difficulty,
            reason=DecisionReason.FALLBACK_FIXED,
            message=f"{_names(failing)} failed {worst} times in a row: fallback difficulty",
        )

    proposals = [
        _propose(
            signal=spec_signal, value=s.value, current=current, tolerance=spec.behavior.tolerance
        )
        for spec_signal, s in zip(spec.signals, signals, strict=True)
        if s.health is not SignalHealth.FAILING and s.value is not None
    ]
    winner = max(proposals, key=lambda p: p.difficulty, default=None)
    raw = current if winner is None else winner.difficulty
    if failing and raw < current:
        # Part of the picture is missing: never relax on it (Hold).
        raw = current
    recommended = bounds.clamp(raw)
    recommendations = _recommendations(status=status, spec=spec, recommended=recommended, now=now)
    stabilized = _stabilize(current=current, recommendations=recommendations, spec=spec, now=now)
    limited_to = _limit(current=current, stabilized=stabilized, status=status, spec=spec, now=now)
    final = bounds.clamp(limited_to)
    limited = recommended != raw or final != stabilized

    reason, message = _explain(
        current=current,
        final=final,
        recommended=recommended,
        stabilized=stabilized,
        winner=winner,
        failing=failing,
        at_bound=recommended != raw,
    )
    return outcome.decide(
        difficulty=final,
        reason=reason,
        message=message,
        signal="" if winner is None else winner.signal,
        recommended=recommended,
        limited=limited,
        recommendations=recommendations,
    )


def follow_bounds(*, spec: PolicySpec, status: PolicyStatus, now: datetime) -> Decision | None:
    """Apply a spec edit without querying signals; None when difficulty needs no change.

    A new policy starts at ``initial``; a policy whose bounds moved past its
    difficulty follows them at once, whatever the behavior says.
    """
    current = _current(spec=spec, status=status)
    signals = tuple(s for s in status.signals if any(s.name == t.name for t in spec.signals))
    outcome = _Outcome(spec=spec, status=status, current=current, signals=signals, now=now)
    if status.difficulty is None:
        return outcome.decide(
            difficulty=current,
            reason=DecisionReason.INITIAL,
            message=f"new policy starts at {current}",
            # The start counts as a recommendation: a quiet first minute (or a metric
            # not scraped yet) relaxes it only after the decrease window, as any other.
            recommendations=(Recommendation(time=now, difficulty=current),),
        )
    if spec.difficulty.clamp(current) != current:
        return _follow_bounds(outcome)
    return None


def _current(*, spec: PolicySpec, status: PolicyStatus) -> int:
    return spec.difficulty.start if status.difficulty is None else status.difficulty


def _follow_bounds(outcome: _Outcome) -> Decision:
    bounds = outcome.spec.difficulty
    return outcome.decide(
        difficulty=bounds.clamp(outcome.current),
        reason=DecisionReason.BOUNDS_CHANGED,
        message=f"difficulty bounds are now [{bounds.min}, {bounds.max}]",
    )


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What every decision shares: the inputs it is built from."""

    spec: PolicySpec
    status: PolicyStatus
    current: int
    signals: tuple[SignalStatus, ...]
    now: datetime

    def decide(
        self,
        *,
        difficulty: int,
        reason: DecisionReason,
        message: str,
        signal: str = "",
        recommended: int | None = None,
        limited: bool = False,
        recommendations: tuple[Recommendation, ...] | None = None,
    ) -> Decision:
        history = tuple(self.status.history)
        if difficulty != self.current:
            change = DifficultyChange(
                time=self.now, previous=self.current, difficulty=difficulty, reason=reason
            )
            history = (*history, change)[-MAX_HISTORY:]
        return Decision(
            difficulty=difficulty,
            previous=self.current,
            reason=reason,
            message=message,
            signal=signal,
            recommended=difficulty if recommended is None else recommended,
            limited=limited,
            fallback_active=any(s.health is SignalHealth.FAILING for s in self.signals),
            signals=self.signals,
            recommendations=(
                tuple(self.status.recommendations) if recommendations is None else recommendations
            ),
            history=history,
        )


def _find(statuses: Sequence[SignalStatus], name: str) -> SignalStatus | None:
    return next((s for s in statuses if s.name == name), None)


def _names(statuses: Sequence[SignalStatus]) -> str:
    return ", ".join(repr(s.name) for s in statuses)


def _signal_status(
    *, signal: SignalSpec, reading: Reading, previous: SignalStatus | None, now: datetime
) -> SignalStatus:
    if isinstance(reading, Sample) and not math.isfinite(reading.value):
        reading = Failure("NotANumber", f"query returned {reading.value}")
    if isinstance(reading, Empty) and signal.on_empty is OnEmpty.FAILURE:
        reading = Failure("EmptyResult", "query returned no series (onEmpty: Failure)")
    match reading:
        case Sample(value=value):
            return SignalStatus(
                name=signal.name, health=SignalHealth.OK, value=value, last_success_time=now
            )
        case Empty():
            return SignalStatus(
                name=signal.name,
                health=SignalHealth.EMPTY,
                value=0.0,
                last_success_time=now,
                message="query returned no series: read as 0",
            )
        case Failure(reason=reason, message=message):
            return SignalStatus(
                name=signal.name,
                health=SignalHealth.FAILING,
                # The last good value stays visible; it is not used while failing.
                value=None if previous is None else previous.value,
                last_success_time=None if previous is None else previous.last_success_time,
                consecutive_failures=(0 if previous is None else previous.consecutive_failures) + 1,
                reason=reason,
                message=message[:1024],
            )


def _propose(*, signal: SignalSpec, value: float, current: int, tolerance: float) -> _Proposal:
    ratio = value / signal.target
    if abs(ratio - 1) <= tolerance:
        return _Proposal(signal.name, current, ratio)
    # A huge value (a counter read as a rate) must not overflow: the bounds clamp it anyway.
    scaled = current * (1 + signal.weight * (ratio - 1))
    return _Proposal(signal.name, round(max(1.0, min(scaled, float(MAX_DIFFICULTY)))), ratio)


def _recommendations(
    *, status: PolicyStatus, spec: PolicySpec, recommended: int, now: datetime
) -> tuple[Recommendation, ...]:
    keep = timedelta(seconds=_longest_window(spec))
    recent = [r for r in status.recommendations if now - r.time <= keep]
    if recent and recent[-1].difficulty == recommended:
        # Each entry means "this value was last recommended at `time`": a run of equal
        # values is one entry, and a value is inside a window iff it was seen inside it.
        recent.pop()
    return (*recent, Recommendation(time=now, difficulty=recommended))[-MAX_RECOMMENDATIONS:]


def _longest_window(spec: PolicySpec) -> int:
    behavior = spec.behavior
    return max(
        behavior.increase.stabilization_window_seconds,
        behavior.decrease.stabilization_window_seconds,
    )


def _stabilize(
    *,
    current: int,
    recommendations: Sequence[Recommendation],
    spec: PolicySpec,
    now: datetime,
) -> int:
    """HPA's stabilization: rise to the window's minimum, fall to the window's maximum."""

    def within(seconds: int) -> list[int]:
        # The newest recommendation (``now``) is always inside its window.
        return [r.difficulty for r in recommendations if now - r.time <= timedelta(seconds=seconds)]

    behavior = spec.behavior
    up = min(within(behavior.increase.stabilization_window_seconds))
    down = max(within(behavior.decrease.stabilization_window_seconds))
    if current < up:
        return up
    if current > down:
        return down
    return current


def _limit(
    *, current: int, stabilized: int, status: PolicyStatus, spec: PolicySpec, now: datetime
) -> int:
    """Apply the step policies of the direction ``stabilized`` lies in.

    A period already used up yields a bound on the wrong side of ``current``;
    it means "no further change yet", never a move the other way (as in the HPA).
    """
    behavior = spec.behavior
    if stabilized > current:
        bound = _step_bound(
            rules=behavior.increase, current=current, status=status, now=now, up=True
        )
        return stabilized if bound is None else min(stabilized, max(bound, current))
    if stabilized < current:
        bound = _step_bound(
            rules=behavior.decrease, current=current, status=status, now=now, up=False
        )
        return stabilized if bound is None else max(stabilized, min(bound, current))
    return current


def _step_bound(
    *, rules: StepRules, current: int, status: PolicyStatus, now: datetime, up: bool
) -> int | None:
    """How far one direction may go now, or None when no policy limits it."""
    if rules.select_policy is SelectPolicy.DISABLED:
        return current
    if not rules.policies:
        return None
    bounds: list[int] = []
    for policy in rules.policies:
        since = now - timedelta(seconds=policy.period_seconds)
        direction = 1 if up else -1
        # How far this direction already moved within the period (HPA's scale events).
        moved = sum(
            (c.difficulty - c.previous) * direction
            for c in status.history
            if c.time > since and (c.difficulty - c.previous) * direction > 0
        )
        if up:
            start = max(1, current - moved)
            allowed = (
                math.ceil(start * (1 + policy.value / 100))
                if policy.type is StepPolicyType.PERCENT
                else start + policy.value
            )
        else:
            start = current + moved
            allowed = (
                math.floor(start * (1 - policy.value / 100))
                if policy.type is StepPolicyType.PERCENT
                else start - policy.value
            )
        bounds.append(allowed)
    # "Max" picks the policy allowing the largest change, in either direction.
    largest = rules.select_policy is SelectPolicy.MAX
    pick = max if largest == up else min
    return pick(bounds)


def _explain(
    *,
    current: int,
    final: int,
    recommended: int,
    stabilized: int,
    winner: _Proposal | None,
    failing: Sequence[SignalStatus],
    at_bound: bool,
) -> tuple[DecisionReason, str]:
    driver = "" if winner is None else f"signal {winner.signal!r} at {winner.ratio:.2f}x target"
    if final > current:
        return DecisionReason.ABOVE_TARGET, f"{driver}: {current} → {final}"
    if final < current:
        return DecisionReason.BELOW_TARGET, f"{driver}: {current} → {final}"
    if failing:
        return (
            DecisionReason.FALLBACK_HOLD,
            f"{_names(failing)} failing: holding {current} (never lowered on missing data)",
        )
    if stabilized != current:
        return (
            DecisionReason.RATE_LIMITED,
            f"{driver}: wants {stabilized}, step policies allow no change yet",
        )
    if recommended != current:
        window = "increase" if recommended > current else "decrease"
        return (
            DecisionReason.STABILIZED,
            f"{driver}: recommends {recommended}, held by the {window} stabilization window",
        )
    if at_bound:
        return DecisionReason.AT_BOUND, f"{driver}: already at the bound {current}"
    return DecisionReason.WITHIN_TOLERANCE, f"{driver}: within tolerance, {current} unchanged"
