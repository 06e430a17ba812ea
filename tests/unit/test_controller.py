"""The difficulty controller: table-driven cases and properties."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powgate.controller import Empty, Failure, Reading, Sample, evaluate
from powgate.policy import (
    DecisionReason,
    DifficultyChange,
    PolicySpec,
    PolicyStatus,
    Recommendation,
    SignalHealth,
    SignalStatus,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def spec(**overrides: Any) -> PolicySpec:
    """A policy with one signal (target 100) and no step limits or windows unless overridden."""
    data: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "llm"}},
        "difficulty": {"min": 1000, "max": 1_000_000, "initial": 10_000},
        "signals": [{"name": "junk", "query": "q", "target": 100}],
        "behavior": {
            "tolerance": 0.1,
            "increase": {"stabilizationWindowSeconds": 0, "policies": []},
            "decrease": {"stabilizationWindowSeconds": 0, "policies": []},
        },
    }
    data.update(overrides)
    return PolicySpec.model_validate(data)


def status(difficulty: int | None = 10_000, **fields: Any) -> PolicyStatus:
    return PolicyStatus.model_validate({"difficulty": difficulty, **fields})


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


# -- table: one evaluation ------------------------------------------------------------

CASES: list[tuple[str, dict[str, Any], int | None, Reading, int, DecisionReason]] = [
    ("proportional increase", {}, 10_000, Sample(200), 20_000, DecisionReason.ABOVE_TARGET),
    ("proportional decrease", {}, 10_000, Sample(50), 5_000, DecisionReason.BELOW_TARGET),
    ("inside tolerance above", {}, 10_000, Sample(109), 10_000, DecisionReason.WITHIN_TOLERANCE),
    ("inside tolerance below", {}, 10_000, Sample(91), 10_000, DecisionReason.WITHIN_TOLERANCE),
    ("just outside tolerance", {}, 10_000, Sample(111), 11_100, DecisionReason.ABOVE_TARGET),
    ("clamped to max", {}, 900_000, Sample(1000), 1_000_000, DecisionReason.ABOVE_TARGET),
    ("clamped to min", {}, 2000, Sample(1), 1000, DecisionReason.BELOW_TARGET),
    ("already at max", {}, 1_000_000, Sample(500), 1_000_000, DecisionReason.AT_BOUND),
    ("empty reads as zero", {}, 10_000, Empty(), 1000, DecisionReason.BELOW_TARGET),
    (
        "new policy starts at initial",
        {},
        None,
        Sample(100),
        10_000,
        DecisionReason.WITHIN_TOLERANCE,
    ),
    (
        "empty as failure holds",
        {"signals": [{"name": "junk", "query": "q", "target": 100, "onEmpty": "Failure"}]},
        10_000,
        Empty(),
        10_000,
        DecisionReason.FALLBACK_HOLD,
    ),
    ("failure holds", {}, 10_000, Failure("Timeout"), 10_000, DecisionReason.FALLBACK_HOLD),
    ("NaN is a failure", {}, 10_000, Sample(math.nan), 10_000, DecisionReason.FALLBACK_HOLD),
    ("+Inf is a failure", {}, 10_000, Sample(math.inf), 10_000, DecisionReason.FALLBACK_HOLD),
    (
        "half weight moves half as far",
        {"signals": [{"name": "junk", "query": "q", "target": 100, "weight": 0.5}]},
        10_000,
        Sample(300),
        20_000,
        DecisionReason.ABOVE_TARGET,
    ),
    (
        "no signals keeps difficulty",
        {"signals": []},
        12_345,
        Sample(0),
        12_345,
        DecisionReason.NO_SIGNALS,
    ),
    (
        "raised minimum applies at once",
        {"difficulty": {"min": 50_000, "max": 1_000_000}},
        10_000,
        Sample(1),
        50_000,
        DecisionReason.BOUNDS_CHANGED,
    ),
    (
        "lowered maximum applies at once",
        {"difficulty": {"min": 1000, "max": 5000}},
        10_000,
        Sample(1000),
        5000,
        DecisionReason.BOUNDS_CHANGED,
    ),
    (
        "increase step policy (percent)",
        {
            "behavior": {
                "increase": {"policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}]},
                "decrease": {"policies": []},
            }
        },
        10_000,
        Sample(400),
        15_000,
        DecisionReason.ABOVE_TARGET,
    ),
    (
        "increase disabled",
        {"behavior": {"increase": {"selectPolicy": "Disabled"}, "decrease": {"policies": []}}},
        10_000,
        Sample(400),
        10_000,
        DecisionReason.RATE_LIMITED,
    ),
    (
        "decrease step policy (absolute)",
        {
            "behavior": {
                "increase": {"policies": []},
                "decrease": {
                    "policies": [{"type": "Absolute", "value": 1000, "periodSeconds": 60}]
                },
            }
        },
        10_000,
        Sample(10),
        9000,
        DecisionReason.BELOW_TARGET,
    ),
]


@pytest.mark.parametrize(
    ("overrides", "current", "reading", "expected", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_single_evaluation(
    overrides: dict[str, Any],
    current: int | None,
    reading: Reading,
    expected: int,
    reason: DecisionReason,
) -> None:
    decision = evaluate(
        spec=spec(**overrides), status=status(current), readings={"junk": reading}, now=NOW
    )
    assert (decision.difficulty, decision.reason) == (expected, reason)
    assert decision.changed == (expected != decision.previous)


def test_most_demanding_signal_wins() -> None:
    policy = spec(
        signals=[
            {"name": "queue", "query": "q1", "target": 10},
            {"name": "junk", "query": "q2", "target": 100},
        ]
    )
    decision = evaluate(
        spec=policy,
        status=status(),
        readings={"queue": Sample(30), "junk": Sample(50)},
        now=NOW,
    )
    assert (decision.difficulty, decision.signal) == (30_000, "queue")


def test_failing_signal_lets_healthy_ones_raise_but_never_lower() -> None:
    policy = spec(
        signals=[
            {"name": "queue", "query": "q1", "target": 10},
            {"name": "junk", "query": "q2", "target": 100},
        ]
    )
    up = evaluate(
        spec=policy,
        status=status(),
        readings={"queue": Sample(20), "junk": Failure("HTTPError", "503")},
        now=NOW,
    )
    assert (up.difficulty, up.reason, up.fallback_active) == (
        20_000,
        DecisionReason.ABOVE_TARGET,
        True,
    )
    down = evaluate(
        spec=policy,
        status=status(),
        readings={"queue": Sample(1), "junk": Failure("HTTPError", "503")},
        now=NOW,
    )
    assert (down.difficulty, down.reason) == (10_000, DecisionReason.FALLBACK_HOLD)


def test_signal_missing_from_readings_counts_as_failure() -> None:
    decision = evaluate(spec=spec(), status=status(), readings={}, now=NOW)
    assert decision.signals[0].health is SignalHealth.FAILING
    assert decision.signals[0].reason == "NotEvaluated"


def test_failures_accumulate_and_keep_the_last_good_value() -> None:
    previous = status(
        signals=[
            {
                "name": "junk",
                "health": "Failing",
                "value": 42.0,
                "lastSuccessTime": ago(60),
                "consecutiveFailures": 2,
            }
        ]
    )
    decision = evaluate(
        spec=spec(), status=previous, readings={"junk": Failure("AuthFailed", "401")}, now=NOW
    )
    (signal,) = decision.signals
    assert signal == SignalStatus(
        name="junk",
        health=SignalHealth.FAILING,
        value=42.0,
        last_success_time=ago(60),
        consecutive_failures=3,
        reason="AuthFailed",
        message="401",
    )
    recovered = evaluate(spec=spec(), status=previous, readings={"junk": Sample(100)}, now=NOW)
    assert recovered.signals[0].consecutive_failures == 0
    assert recovered.signals[0].last_success_time == NOW
    assert not recovered.fallback_active


@pytest.mark.parametrize(("failures", "expected"), [(1, 10_000), (2, 10_000), (3, 5000)])
def test_fixed_fallback_after_n_failures(failures: int, expected: int) -> None:
    policy = spec(fallback={"action": "Fixed", "afterFailures": 3, "difficulty": 5000})
    previous = status(signals=[{"name": "junk", "consecutiveFailures": failures - 1}])
    decision = evaluate(
        spec=policy, status=previous, readings={"junk": Failure("Timeout")}, now=NOW
    )
    assert decision.difficulty == expected


# -- stabilization windows and step periods (history-dependent) ------------------------


def windows(increase: int, decrease: int) -> dict[str, Any]:
    return {
        "behavior": {
            "increase": {"stabilizationWindowSeconds": increase, "policies": []},
            "decrease": {"stabilizationWindowSeconds": decrease, "policies": []},
        }
    }


def test_decrease_waits_for_the_whole_window() -> None:
    policy = spec(**windows(0, 300))
    # Pressure 4 minutes ago recommended 40000; now the signal is back to half the target.
    previous = status(recommendations=[{"time": ago(240), "difficulty": 40_000}])
    held = evaluate(spec=policy, status=previous, readings={"junk": Sample(50)}, now=NOW)
    assert (held.difficulty, held.reason) == (10_000, DecisionReason.STABILIZED)
    later = status(recommendations=[{"time": ago(301), "difficulty": 40_000}])
    relaxed = evaluate(spec=policy, status=later, readings={"junk": Sample(50)}, now=NOW)
    assert relaxed.difficulty == 5000


def test_decrease_falls_to_the_window_maximum() -> None:
    policy = spec(**windows(0, 300))
    previous = status(difficulty=40_000, recommendations=[{"time": ago(120), "difficulty": 20_000}])
    decision = evaluate(spec=policy, status=previous, readings={"junk": Sample(10)}, now=NOW)
    assert decision.difficulty == 20_000


def test_increase_window_needs_sustained_pressure() -> None:
    policy = spec(**windows(60, 0))
    spike = status(recommendations=[{"time": ago(30), "difficulty": 10_000}])
    held = evaluate(spec=policy, status=spike, readings={"junk": Sample(300)}, now=NOW)
    assert (held.difficulty, held.reason) == (10_000, DecisionReason.STABILIZED)
    sustained = status(
        recommendations=[
            {"time": ago(50), "difficulty": 25_000},
            {"time": ago(20), "difficulty": 28_000},
        ]
    )
    raised = evaluate(spec=policy, status=sustained, readings={"junk": Sample(300)}, now=NOW)
    assert raised.difficulty == 25_000


def test_step_policy_counts_changes_already_made_in_the_period() -> None:
    policy = spec(
        behavior={
            "increase": {"policies": [{"type": "Percent", "value": 100, "periodSeconds": 60}]},
            "decrease": {"policies": []},
        }
    )
    # Already doubled 5000 → 10000 within the period: no more room until it ends.
    recent = status(
        history=[{"time": ago(30), "previous": 5000, "difficulty": 10_000, "reason": "AboveTarget"}]
    )
    held = evaluate(spec=policy, status=recent, readings={"junk": Sample(400)}, now=NOW)
    assert (held.difficulty, held.reason, held.limited) == (
        10_000,
        DecisionReason.RATE_LIMITED,
        True,
    )
    old = status(
        history=[{"time": ago(61), "previous": 5000, "difficulty": 10_000, "reason": "AboveTarget"}]
    )
    raised = evaluate(spec=policy, status=old, readings={"junk": Sample(400)}, now=NOW)
    assert (raised.difficulty, raised.limited) == (20_000, True)


@pytest.mark.parametrize(("select", "expected"), [("Max", 30_000), ("Min", 12_000)])
def test_select_policy_picks_largest_or_smallest_change(select: str, expected: int) -> None:
    policy = spec(
        behavior={
            "increase": {
                "selectPolicy": select,
                "policies": [
                    {"type": "Percent", "value": 200, "periodSeconds": 60},
                    {"type": "Absolute", "value": 2000, "periodSeconds": 60},
                ],
            },
            "decrease": {"policies": []},
        }
    )
    decision = evaluate(spec=policy, status=status(), readings={"junk": Sample(1000)}, now=NOW)
    assert decision.difficulty == expected


def test_history_and_recommendations_are_bounded_and_pruned() -> None:
    policy = spec(**windows(0, 60))
    previous = status(
        recommendations=[
            {"time": ago(600), "difficulty": 99_000},
            {"time": ago(30), "difficulty": 10_000},
        ],
        history=[
            {
                "time": ago(1000 - i),
                "previous": 10_000,
                "difficulty": 10_000 + i,
                "reason": "AboveTarget",
            }
            for i in range(1, 21)
        ],
    )
    decision = evaluate(spec=policy, status=previous, readings={"junk": Sample(300)}, now=NOW)
    assert [r.time for r in decision.recommendations] == [ago(30), NOW]
    assert len(decision.history) == 20
    assert decision.history[-1] == DifficultyChange(
        time=NOW, previous=decision.previous, difficulty=decision.difficulty, reason=decision.reason
    )


def test_an_unchanged_decision_records_no_change() -> None:
    decision = evaluate(spec=spec(), status=status(), readings={"junk": Sample(100)}, now=NOW)
    assert not decision.changed
    assert decision.history == ()
    assert decision.recommendations == (Recommendation(time=NOW, difficulty=10_000),)


# -- properties ----------------------------------------------------------------------

readings_st = st.one_of(
    st.builds(Sample, st.floats(allow_nan=True, allow_infinity=True)),
    st.just(Empty()),
    st.builds(Failure, st.sampled_from(["Timeout", "HTTPError", "AuthFailed"])),
)
bounds_st = st.tuples(st.integers(1, 10**7), st.integers(1, 10**7)).map(sorted)
rules_st = st.fixed_dictionaries(
    {
        "stabilizationWindowSeconds": st.integers(0, 600),
        "selectPolicy": st.sampled_from(["Max", "Min", "Disabled"]),
        "policies": st.lists(
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["Percent", "Absolute"]),
                    "value": st.integers(1, 1000),
                    "periodSeconds": st.integers(1, 600),
                }
            ),
            max_size=3,
        ),
    }
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[PolicySpec, PolicyStatus, dict[str, Reading]]:
    low, high = draw(bounds_st)
    policy = spec(
        difficulty={"min": low, "max": high},
        signals=[
            {
                "name": "a",
                "query": "q",
                "target": draw(st.floats(0.001, 1e6)),
                "weight": draw(st.floats(0.01, 10)),
            },
            {"name": "b", "query": "q", "target": draw(st.floats(0.001, 1e6))},
        ],
        behavior={
            "tolerance": draw(st.floats(0, 1)),
            "increase": draw(rules_st),
            "decrease": draw(rules_st),
        },
    )
    current = draw(st.integers(low, high))
    history = [
        {
            "time": ago(age),
            "previous": draw(st.integers(low, high)),
            "difficulty": draw(st.integers(low, high)),
            "reason": "AboveTarget",
        }
        for age in sorted(draw(st.lists(st.integers(0, 900), max_size=5)), reverse=True)
    ]
    recs = [
        {"time": ago(age), "difficulty": draw(st.integers(low, high))}
        for age in sorted(draw(st.lists(st.integers(0, 900), max_size=10)), reverse=True)
    ]
    previous = status(current, history=history, recommendations=recs)
    return policy, previous, {"a": draw(readings_st), "b": draw(readings_st)}


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_never_outside_bounds(
    scenario: tuple[PolicySpec, PolicyStatus, dict[str, Reading]],
) -> None:
    policy, previous, readings = scenario
    decision = evaluate(spec=policy, status=previous, readings=readings, now=NOW)
    assert policy.difficulty.min <= decision.difficulty <= policy.difficulty.max


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_failing_query_never_lowers_under_hold(
    scenario: tuple[PolicySpec, PolicyStatus, dict[str, Reading]],
) -> None:
    policy, previous, readings = scenario
    readings["b"] = Failure("Timeout")
    decision = evaluate(spec=policy, status=previous, readings=readings, now=NOW)
    assert decision.difficulty >= decision.previous
    assert decision.fallback_active


@settings(max_examples=400, deadline=None)
@given(scenarios(), st.floats(0.05, 0.95))
def test_no_change_inside_tolerance(
    scenario: tuple[PolicySpec, PolicyStatus, dict[str, Reading]], position: float
) -> None:
    policy, previous, _ = scenario
    tolerance = policy.behavior.tolerance
    # Every signal reads strictly inside the tolerance band, clear of float rounding at its edge.
    readings: dict[str, Reading] = {
        s.name: Sample(s.target * (1 + tolerance * (2 * position - 1))) for s in policy.signals
    }
    decision = evaluate(spec=policy, status=previous, readings=readings, now=NOW)
    assert decision.difficulty == decision.previous
