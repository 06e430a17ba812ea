"""The PowPolicy models: validation and rendering of the sidecar config."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from powgate import algorithm_names
from powgate._verify import MAX_DIFFICULTY
from powgate.config import (
    BASE_CONTRACT,
    REPLAY_STORE_CONTRACT,
    Mode,
    ReplayStoreSpec,
    RouteConfig,
    SidecarConfig,
)
from powgate.policy import (
    ChallengeSpec,
    DecisionReason,
    DifficultyChange,
    DifficultyRange,
    PolicySpec,
    PolicyStatus,
    SignalSpec,
    last_raise,
    render_config,
    replay_store_secret_name,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def spec(**fields: Any) -> PolicySpec:
    return PolicySpec.model_validate({"selector": {"matchLabels": {"app": "llm"}}, **fields})


def test_defaults_are_complete_and_sane() -> None:
    policy = spec()
    assert policy.mode is Mode.ENFORCE
    assert policy.difficulty.start == policy.difficulty.min
    assert policy.fallback.action == "Hold"
    assert policy.behavior.decrease.stabilization_window_seconds == 300


BAD = [
    ("empty selector", {"selector": {}}, "selector must not be empty"),
    ("min above max", {"difficulty": {"min": 10, "max": 5}}, "min must not exceed"),
    ("initial outside", {"difficulty": {"min": 10, "max": 50, "initial": 60}}, "initial must lie"),
    ("unknown mode", {"mode": "panic"}, "mode"),
    ("zero interval", {"evaluationIntervalSeconds": 0}, "evaluationIntervalSeconds"),
    ("zero target", {"signals": [{"name": "a", "query": "q", "target": 0}]}, "target"),
    (
        "duplicate signals",
        {"signals": [{"name": "a", "query": "q", "target": 1}] * 2},
        "signals names must be unique",
    ),
    (
        "fixed fallback without difficulty",
        {"fallback": {"action": "Fixed"}},
        "fallback.difficulty is required",
    ),
    (
        "fixed fallback out of range",
        {"difficulty": {"min": 10, "max": 50}, "fallback": {"action": "Fixed", "difficulty": 99}},
        "fallback.difficulty must lie",
    ),
    (
        "rotation shorter than a challenge lifetime",
        {"keys": {"rotationIntervalSeconds": 60}, "challenge": {"lifetimeSeconds": 300}},
        "rotationIntervalSeconds must be 0 or at least",
    ),
    ("unknown field", {"difficulty": {"minimum": 3}}, "minimum"),
    (
        "In without values",
        {"selector": {"matchExpressions": [{"key": "app", "operator": "In"}]}},
        "values must be non-empty",
    ),
]


@pytest.mark.parametrize(("fields", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid_specs_are_rejected_with_a_clear_message(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**fields)


def test_query_placeholders() -> None:
    signal = SignalSpec(
        name="junk",
        query='sum(rate(x{namespace="$namespace",policy="$policy"}[1m])) / $unknown',
        target=1,
    )
    assert signal.render_query(namespace="ai", name="chat") == (
        'sum(rate(x{namespace="ai",policy="ai/chat"}[1m])) / $unknown'
    )


def test_render_config_carries_the_policy_and_a_content_version() -> None:
    policy = spec(
        mode="observe",
        difficulty={"min": 1000, "max": 9000},
        challenge={"lifetimeSeconds": 60},
        routes=[{"name": "chat", "paths": ["/v1/chat/*"], "difficultyMultiplier": 2}],
    )
    config = render_config(spec=policy, namespace="ai", name="chat", difficulty=5000)
    assert config.policy == "ai/chat"
    assert (config.mode, config.difficulty, config.min_difficulty) == (Mode.OBSERVE, 5000, 1000)
    assert config.challenge_ttl_seconds == 60
    assert config.routes == policy.routes
    assert config.version == config.content_version()
    assert SidecarConfig.from_json(config.to_json()) == config
    # The rendered difficulty never leaves the policy's bounds.
    assert render_config(spec=policy, namespace="ai", name="chat", difficulty=1).difficulty == 1000
    other = render_config(spec=policy, namespace="ai", name="chat", difficulty=6000)
    assert other.version != config.version


def test_status_round_trips_through_json() -> None:
    status = PolicyStatus.model_validate(
        {
            "observedGeneration": 3,
            "difficulty": 5000,
            "history": [
                {
                    "time": "2026-01-01T00:00:00Z",
                    "previous": 1000,
                    "difficulty": 5000,
                    "reason": "AboveTarget",
                }
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Rendered",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        }
    )
    again = PolicyStatus.model_validate_json(status.model_dump_json(by_alias=True))
    assert again == status


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid_policies(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    policies = [d for d in documents if d.get("kind") == "PowPolicy"]
    assert policies, f"{path.name} holds no PowPolicy"
    for document in policies:
        assert document["apiVersion"] == "powgate.dev/v1alpha1"
        PolicySpec.model_validate(document["spec"])


# -- configuration that cannot turn into a 500 or a stockpile --------------------------


def test_an_unregistered_algorithm_is_refused_and_the_schema_lists_the_registry() -> None:
    with pytest.raises(ValidationError, match="unknown algorithm 'SHA-265'"):
        PolicySpec.model_validate(
            {"selector": {"matchLabels": {"a": "b"}}, "challenge": {"algorithm": "SHA-265"}}
        )
    with pytest.raises(ValidationError, match="unknown algorithm 'SHA-265'"):
        SidecarConfig(algorithm="SHA-265")
    enum = ChallengeSpec.model_json_schema(by_alias=True)["properties"]["algorithm"]["enum"]
    assert "SHA-265" not in enum
    assert set(enum) <= set(algorithm_names())
    assert {"SHA-256", "SHA-512"} <= set(enum)


def test_difficulty_times_multiplier_never_exceeds_the_verifier() -> None:
    steep = [RouteConfig(name="r", paths=["/*"], difficulty_multiplier=2)]
    with pytest.raises(ValidationError, match="difficultyMultiplier must not exceed"):
        PolicySpec.model_validate(
            {"selector": {"matchLabels": {"a": "b"}}, "difficulty": {"max": 2**40}, "routes": steep}
        )
    with pytest.raises(ValidationError, match="difficulty above 1099511627776"):
        SidecarConfig(difficulty=2**40, routes=steep)
    # A stored spec from before the rule is clamped when rendered.
    spec = PolicySpec.model_construct(
        **{
            **PolicySpec.model_validate({"selector": {"matchLabels": {"a": "b"}}}).__dict__,
            "difficulty": DifficultyRange.model_construct(min=1, max=2**40, initial=None),
            "routes": steep,
        }
    )
    config = render_config(spec=spec, namespace="ai", name="p", difficulty=2**40)
    assert config.difficulty * 2 <= MAX_DIFFICULTY


def test_challenge_lifetime_is_capped_at_an_hour() -> None:
    assert ChallengeSpec(lifetime_seconds=3600).lifetime_seconds == 3600
    with pytest.raises(ValidationError):
        ChallengeSpec(lifetime_seconds=3601)
    with pytest.raises(ValidationError):
        SidecarConfig(challenge_ttl_seconds=86_400)


def test_the_replay_cache_is_sized_from_rate_and_lifetime_or_given() -> None:
    base = {"selector": {"matchLabels": {"a": "b"}}, "challenge": {"lifetimeSeconds": 600}}
    rendered = render_config(
        spec=PolicySpec.model_validate({**base, "replay": {"expectedAdmissionsPerSecond": 50}}),
        namespace="ai",
        name="p",
        difficulty=100,
    )
    assert rendered.replay_cache_entries == 2 * 50 * 600
    given = PolicySpec.model_validate({**base, "replay": {"maxEntries": 12_345}})
    config = render_config(spec=given, namespace="ai", name="p", difficulty=100)
    assert config.replay_cache_entries == 12_345
    with pytest.raises(ValidationError):
        PolicySpec.model_validate({**base, "replay": {"maxEntries": 10}})


def test_the_last_raise_is_rendered_for_the_sidecars_with_the_grace() -> None:
    spec = PolicySpec.model_validate(
        {"selector": {"matchLabels": {"a": "b"}}, "challenge": {"graceSecondsAfterRaise": 30}}
    )
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    history = [
        DifficultyChange(time=t0, previous=100, difficulty=400, reason=DecisionReason.ABOVE_TARGET),
        DifficultyChange(
            time=t0 + timedelta(minutes=5),
            previous=400,
            difficulty=200,
            reason=DecisionReason.BELOW_TARGET,
        ),
    ]
    assert last_raise(history) == int(t0.timestamp())  # a decrease is no raise
    assert last_raise([]) == 0
    config = render_config(
        spec=spec, namespace="ai", name="p", difficulty=200, raised_at=last_raise(history)
    )
    assert (config.raised_at, config.raise_grace_seconds) == (int(t0.timestamp()), 30)


def test_a_replay_store_is_rendered_under_the_contract_that_knows_it() -> None:
    """Without one, documents keep the base contract (older sidecars apply them)."""
    plain = render_config(spec=spec(), namespace="ai", name="chat", difficulty=10_000)
    assert (plain.contract, plain.replay_store) == (BASE_CONTRACT, None)
    store = {"address": "valkey.cache.svc:6379", "whenUnavailable": "FallBackToLocal"}
    own = render_config(
        spec=spec(replay={"store": store}), namespace="ai", name="chat", difficulty=10_000
    )
    assert own.contract == REPLAY_STORE_CONTRACT
    assert own.replay_store == ReplayStoreSpec.model_validate(store)
    assert SidecarConfig.parse(own.to_json()) == (own, ())
    # The operator's default applies to policies that name no store of their own.
    default = ReplayStoreSpec(address="redis.shared.svc:6379")
    assert (
        render_config(
            spec=spec(), namespace="ai", name="chat", difficulty=10_000, default_store=default
        ).replay_store
        == default
    )
    assert (
        render_config(
            spec=spec(replay={"store": store}),
            namespace="ai",
            name="chat",
            difficulty=10_000,
            default_store=default,
        ).replay_store
        == own.replay_store
    )
    assert replay_store_secret_name("chat") == "chat-powgate-replay-store"
