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
    KeyState,
    config_map_body,
    key_secret_body,
    key_state_from_secret,
    next_keys,
    set_condition,
    status_after,
)
from powgate_operator._prometheus import SidecarKeys
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


def step(
    state: KeyState | None,
    now: int,
    seen: SidecarKeys | None = None,
    spec: KeyRotationSpec = ROTATION,
) -> KeyState:
    return next_keys(state, keys=spec, lifetime_seconds=LIFETIME, now=now, seen=seen)


def test_unobserved_rotation_keeps_every_issued_challenge_verifiable() -> None:
    """Without reports from the sidecars each phase waits the propagation bound."""
    first = step(None, T0)
    assert [k.kid for k in first.ring.keys] == [f"k{T0}"]
    assert step(first, T0 + 3599) == first  # not due yet

    published = step(first, T0 + 3600)
    new_kid = f"k{T0 + 3600}"
    assert published.ring.active == first.ring.active  # phase 1: listed, not signing
    assert new_kid in published.ring
    assert step(published, T0 + 3600 + 59) == published  # still propagating

    switched = step(published, T0 + 3660)
    assert switched.ring.active == new_kid  # phase 2: signs now
    assert switched.switched_at == T0 + 3660
    # Sidecars learn of the switch within the bound: the old key verifies meanwhile...
    assert step(switched, T0 + 3660 + 59) == switched
    old = switched.ring.verification_key(first.ring.active, now=T0 + 10**6)
    assert old is not None
    # ...then a whole challenge lifetime more (phase 3).
    retired = step(switched, T0 + 3720)
    old = retired.ring.verification_key(first.ring.active, now=T0 + 3720)
    assert old is not None
    assert old.not_after == T0 + 3720 + LIFETIME
    pruned = step(retired, T0 + 3720 + LIFETIME + 1)
    assert [k.kid for k in pruned.ring.keys] == [new_kid]  # gone once unusable


def test_observed_rotation_waits_for_every_sidecar_not_for_the_clock() -> None:
    first = step(None, T0)
    old = first.ring.active
    published = step(first, T0 + 3600)
    new = f"k{T0 + 3600}"
    lagging = SidecarKeys(held={old: 3, new: 2}, signing={old: 3})
    assert step(published, T0 + 10**5, lagging) == published  # long past the bound: waits
    holding = SidecarKeys(held={old: 3, new: 3}, signing={old: 3})
    switched = step(published, T0 + 3601, holding)  # at once: every sidecar holds it
    assert switched.ring.active == new
    still_signing = SidecarKeys(held={old: 3, new: 3}, signing={old: 1, new: 2})
    assert step(switched, T0 + 10**5, still_signing) == switched
    done = step(switched, T0 + 3700, SidecarKeys(held={old: 3, new: 3}, signing={new: 3}))
    retired = done.ring.verification_key(old, now=T0 + 3700)
    assert retired is not None
    assert retired.not_after == T0 + 3700 + LIFETIME
    # Nobody reporting is not "all of none hold it": the bound applies.
    assert step(published, T0 + 3601, SidecarKeys()) == published


def test_rotation_disabled() -> None:
    state = step(None, T0)
    never = KeyRotationSpec(rotation_interval_seconds=0)
    assert step(state, T0 + 10**8, spec=never) == state


def test_foreign_key_ids_rotate_first() -> None:
    state = KeyState(KeyRing.generate(kid="imported"))
    assert len(step(state, T0).ring.keys) == 2


def test_keys_round_trip_through_the_secret() -> None:
    state = step(step(step(None, T0), T0 + 3600), T0 + 3700)
    assert state.switched_at == T0 + 3700
    body = key_secret_body(POLICY, state)
    assert body["metadata"]["name"] == "chat-powgate-keys"
    assert key_state_from_secret(body) == state
    assert key_state_from_secret(None) is None
    assert key_state_from_secret({"data": {}}) is None
    with pytest.raises(KeyRingError):
        key_state_from_secret({"data": {"keyring.json": base64.b64encode(b"[]").decode()}})


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
