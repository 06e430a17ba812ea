"""What the operator writes, built without a cluster: key rotation, owned objects, status."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from powgate import KeyRing, KeyRingError
from powgate.controller import Failure, Sample, evaluate, follow_bounds
from powgate.policy import (
    ConditionStatus,
    ConditionType,
    DecisionReason,
    KeyRotationSpec,
    PolicySpec,
    PolicyStatus,
    render_config,
)
from powgate_operator._objects import (
    config_map_body,
    key_secret_body,
    next_key_ring,
    ring_from_secret,
    set_condition,
    status_after,
)
from powgate_operator._reconcile import _previous_status

NOW = datetime(2026, 1, 1, tzinfo=UTC)
T0 = 1_800_000_000
ROTATION = KeyRotationSpec(rotation_interval_seconds=3600, propagation_seconds=60)
LIFETIME = 300
POLICY = {
    "apiVersion": "powgate.dev/v1alpha1",
    "kind": "PowPolicy",
    "metadata": {"name": "chat", "namespace": "ai", "uid": "u-1"},
}


def step(ring: KeyRing | None, now: int) -> KeyRing:
    return next_key_ring(ring, keys=ROTATION, lifetime_seconds=LIFETIME, now=now)


def test_two_phase_rotation_keeps_every_issued_challenge_verifiable() -> None:
    first = step(None, T0)
    assert [k.kid for k in first.keys] == [f"k{T0}"]
    assert step(first, T0 + 3599) == first  # not due yet

    published = step(first, T0 + 3600)
    new_kid = f"k{T0 + 3600}"
    assert published.active == first.active  # phase 1: listed, not signing
    assert new_kid in published
    assert step(published, T0 + 3600 + 59) == published  # still propagating

    switched = step(published, T0 + 3660)
    assert switched.active == new_kid  # phase 2: signs now
    old = switched.verification_key(first.active, now=T0 + 3660)
    assert old is not None
    # The old key verifies for the propagation time plus a whole challenge lifetime.
    assert old.not_after == T0 + 3660 + 60 + LIFETIME
    assert step(switched, T0 + 3661) == switched

    pruned = step(switched, T0 + 3660 + 60 + LIFETIME + 1)
    assert [k.kid for k in pruned.keys] == [new_kid]  # phase 3: gone once unusable


def test_rotation_disabled() -> None:
    ring = step(None, T0)
    never = KeyRotationSpec(rotation_interval_seconds=0)
    assert next_key_ring(ring, keys=never, lifetime_seconds=LIFETIME, now=T0 + 10**8) == ring


def test_foreign_key_ids_rotate_first() -> None:
    ring = KeyRing.generate(kid="imported")
    assert len(step(ring, T0).keys) == 2


def test_ring_round_trips_through_the_secret() -> None:
    ring = step(None, T0)
    body = key_secret_body(POLICY, ring)
    assert body["metadata"]["name"] == "chat-powgate-keys"
    assert ring_from_secret(body["data"]) == ring
    assert ring_from_secret(None) is None
    assert ring_from_secret({}) is None
    with pytest.raises(KeyRingError):
        ring_from_secret({"keyring.json": base64.b64encode(b"[]").decode()})


def test_owned_objects_carry_the_owner_reference() -> None:
    spec = PolicySpec.model_validate({"selector": {"matchLabels": {"app": "chat"}}})
    config = render_config(spec=spec, namespace="ai", name="chat", difficulty=20_000)
    body = config_map_body(POLICY, config)
    (owner,) = body["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "powgate.dev/v1alpha1",
        "kind": "PowPolicy",
        "name": "chat",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert body["metadata"]["name"] == "chat-powgate-config"
    assert json.loads(body["data"]["config.json"])["version"] == config.version


def test_condition_transition_time_moves_only_with_its_status() -> None:
    first = set_condition(
        [], kind=ConditionType.READY, status=ConditionStatus.TRUE, reason="A", message="", now=NOW
    )
    later = NOW + timedelta(minutes=5)
    same = set_condition(
        first,
        kind=ConditionType.READY,
        status=ConditionStatus.TRUE,
        reason="B",
        message="",
        now=later,
    )
    assert same[0].last_transition_time == NOW
    assert same[0].reason == "B"
    flipped = set_condition(
        same,
        kind=ConditionType.READY,
        status=ConditionStatus.FALSE,
        reason="C",
        message="",
        now=later,
    )
    assert flipped[0].last_transition_time == later


def signal_spec() -> PolicySpec:
    return PolicySpec.model_validate(
        {
            "selector": {"matchLabels": {"app": "chat"}},
            "difficulty": {"min": 1000, "max": 100_000, "initial": 5000},
            "signals": [{"name": "junk", "query": "q", "target": 10}],
        }
    )


def test_status_reflects_a_failing_signal() -> None:
    spec = signal_spec()
    previous = PolicyStatus(difficulty=5000)
    decision = evaluate(
        spec=spec, status=previous, readings={"junk": Failure("Timeout", "took too long")}, now=NOW
    )
    config = render_config(spec=spec, namespace="ai", name="chat", difficulty=decision.difficulty)
    status = status_after(
        previous=previous,
        spec=spec,
        generation=7,
        decision=decision,
        config=config,
        rollout=None,
        now=NOW,
    )
    conditions = {c.type: c for c in status.conditions}
    assert conditions[ConditionType.SIGNALS_HEALTHY].status is ConditionStatus.FALSE
    assert "junk: Timeout took too long" in conditions[ConditionType.SIGNALS_HEALTHY].message
    assert conditions[ConditionType.FALLBACK_ACTIVE].status is ConditionStatus.TRUE
    assert conditions[ConditionType.READY].status is ConditionStatus.TRUE
    assert (status.observed_generation, status.difficulty, status.config_version) == (
        7,
        5000,
        config.version,
    )
    assert status.last_decision is not None
    assert status.last_decision.reason is DecisionReason.FALLBACK_HOLD


def test_a_new_policy_starts_at_initial_and_remembers_it_for_the_window() -> None:
    spec = signal_spec()
    start = follow_bounds(spec=spec, status=PolicyStatus(), now=NOW)
    assert start is not None
    assert (start.difficulty, start.reason) == (5000, DecisionReason.INITIAL)
    config = render_config(spec=spec, namespace="ai", name="chat", difficulty=start.difficulty)
    status = status_after(
        previous=PolicyStatus(),
        spec=spec,
        generation=1,
        decision=start,
        config=config,
        rollout=None,
        now=NOW,
    )
    # Nothing scraped yet reads as zero; the default decrease window still holds the start.
    quiet = evaluate(
        spec=spec, status=status, readings={"junk": Sample(0)}, now=NOW + timedelta(seconds=15)
    )
    assert (quiet.difficulty, quiet.reason) == (5000, DecisionReason.STABILIZED)
    assert follow_bounds(spec=spec, status=status, now=NOW) is None


def test_recommendations_keep_one_entry_per_run_of_equal_values() -> None:
    spec = signal_spec()
    status = PolicyStatus(difficulty=5000)
    for second in range(5):
        decision = evaluate(
            spec=spec,
            status=status,
            readings={"junk": Sample(10)},
            now=NOW + timedelta(seconds=second),
        )
        status = status.model_copy(update={"recommendations": list(decision.recommendations)})
    assert [(r.time, r.difficulty) for r in status.recommendations] == [
        (NOW + timedelta(seconds=4), 5000)
    ]


@pytest.mark.parametrize(
    ("stored", "difficulty"),
    [
        ({"difficulty": 7000, "history": "not a list"}, 7000),  # difficulty salvaged
        ({"difficulty": -3, "conditions": 5}, None),  # nothing usable: a fresh status
        ({}, None),
    ],
)
def test_unreadable_status_keeps_a_valid_difficulty(
    stored: dict[str, object], difficulty: int | None
) -> None:
    policy = {**POLICY, "status": stored}
    assert _previous_status(policy).difficulty == difficulty
