"""The rendered config document across versions: a newer operator, an older sidecar."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from powgate.config import (
    BASE_CONTRACT,
    CONFIG_CONTRACT,
    REPLAY_STORE_CONTRACT,
    ParsedConfig,
    ReplayStoreSpec,
    SidecarConfig,
    StoreOutage,
    _parse_tolerant,
)


def newer_document(**changes: Any) -> bytes:
    """What a newer operator might write: today's fields plus some this version lacks."""
    document: dict[str, Any] = json.loads(
        SidecarConfig.from_dict(
            {
                "policy": "ai/chat",
                "difficulty": 5000,
                "routes": [{"name": "chat", "paths": ["/v1/*"]}],
                "queue": {"maxConcurrent": 4},
            }
        ).to_json()
    )
    document["clientBudgets"] = {"perMinute": 5, "onExhausted": "refuse"}
    document["routes"][0]["burst"] = 3
    document["queue"]["fairness"] = "per-client"
    document.update(changes)
    return json.dumps(document).encode()


def test_an_older_sidecar_applies_a_newer_document_and_names_what_it_ignored() -> None:
    config, ignored = SidecarConfig.parse(newer_document())
    assert (config.policy, config.difficulty, config.queue.max_concurrent) == ("ai/chat", 5000, 4)
    assert config.routes[0].paths == ["/v1/*"]
    assert ignored == ("clientBudgets", "queue.fairness", "routes[0].burst")
    assert SidecarConfig.from_json(newer_document()) == config


def test_a_newer_contract_is_refused_so_the_last_config_stays() -> None:
    with pytest.raises(ValidationError, match="upgrade the sidecar"):
        SidecarConfig.parse(newer_document(contract=CONFIG_CONTRACT + 1))


@pytest.mark.parametrize(
    "document",
    [b"not json", b"[]", b'{"difficulty": -5}', b'{"routes": [{"name": "x"}]}', b'{"queue": 3}'],
)
def test_bad_documents_still_fail_validation(document: bytes) -> None:
    with pytest.raises(ValidationError):
        SidecarConfig.parse(document)


def test_what_this_version_writes_it_reads_back_unchanged() -> None:
    config = SidecarConfig.from_dict({"policy": "ai/chat", "difficulty": 77})
    assert config.contract == BASE_CONTRACT
    assert SidecarConfig.parse(config.to_json()) == (config, ())


def test_a_document_with_a_replay_store_declares_the_contract_that_knows_it() -> None:
    """An older sidecar must refuse it rather than ignore the store (once per process)."""
    body = {"policy": "ai/chat", "replayStore": {"address": "valkey.cache.svc:6379"}}
    with pytest.raises(ValidationError, match="contract 2"):
        SidecarConfig.from_dict(body)
    config = SidecarConfig.from_dict({**body, "contract": REPLAY_STORE_CONTRACT})
    assert config.replay_store is not None
    assert (config.replay_store.host, config.replay_store.port) == ("valkey.cache.svc", 6379)
    assert config.replay_store.when_unavailable is StoreOutage.REFUSE


@pytest.mark.parametrize(
    "address", ["valkey", "valkey:0", "valkey:70000", "redis://valkey:6379", "a b:1", ":6379"]
)
def test_replay_store_addresses_are_host_and_port(address: str) -> None:
    with pytest.raises(ValidationError):
        ReplayStoreSpec(address=address)


# -- the fast parse against the tolerant one --------------------------------------
# SidecarConfig.parse validates a document straight from JSON and falls back to the
# tolerant parse (drop unknown fields, validate the rest) when that fails. Validating
# from JSON and from Python objects are two modes of pydantic: these tests hold every
# document to the same outcome through both paths.


def _rich_document() -> dict[str, Any]:
    """A valid document using every part of the model (nested models, lists, optionals)."""
    config = SidecarConfig.from_dict(
        {
            "contract": REPLAY_STORE_CONTRACT,
            "policy": "ai/chat",
            "mode": "observe",
            "difficulty": 5000,
            "minDifficulty": 10,
            "algorithm": "ARGON2ID",
            "kdf": {"cost": 1, "memoryCost": 64, "parallelism": 1},
            "routes": [
                {"name": "chat", "paths": ["/v1/*"], "difficultyMultiplier": 2.0},
                {"name": "embed", "paths": ["/v1/embed"], "methods": ["POST", "PUT"]},
            ],
            "queue": {"maxConcurrent": 4, "maxWaitSeconds": 2.5},
            "raisedAt": 1_700_000_000,
            "replayStore": {"address": "valkey.cache.svc:6379"},
            "pricing": {"enabled": True, "fairRate": 0.5, "clientKey": {"source": "Address"}},
            "trustedCallers": [{"name": "batch", "multiplier": 0.5, "cidrs": ["10.0.0.0/8"]}],
            "trustedProxies": ["192.168.0.0/16"],
        }
    )
    document: dict[str, Any] = json.loads(config.to_json())
    return document


def _assert_same_outcome(text: str | bytes) -> bool:
    """Both paths accept with equal results, or both refuse with the same error; accepted?"""

    def outcome(parse: Callable[[str | bytes], ParsedConfig]) -> ParsedConfig | str:
        try:
            return parse(text)
        except ValidationError as exc:
            return str(exc)

    expected = outcome(lambda t: _parse_tolerant(SidecarConfig, t))
    assert outcome(SidecarConfig.parse) == expected
    return not isinstance(expected, str)


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place inside a JSON value (keys of objects, indices of arrays)."""
    found = [at] if at else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*at, index))
    return found


#: JSON values that sit on the edges of pydantic's lax conversions (bool/int/float/str).
_ODD_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 2**64, 1.0, 1.5, -0.0, 1e308, "", "1", "1.0", "true",
    "enforce", "SHA-256", "10.0.0.0/8", "/v1/*", [], {}, [1], ["POST"], {"name": "x"},
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "accepted"),
    [
        (json.dumps(_rich_document()), True),
        ('{"difficulty": 7}', True),
        ('{"difficulty": "7"}', True),  # lax: a numeric string is a number in both modes
        ('{"difficulty": 7.0}', True),
        ('{"difficulty": 7.5}', False),
        ('{"difficulty": true}', True),  # lax: true is 1 in both modes
        ('{"min_difficulty": 2, "difficulty": 3}', True),  # by name (populate_by_name)
        ('{"difficulty": 3, "difficulty": 4}', True),  # duplicate keys: the last wins
        ('{"routes": [{"name": "a", "paths": ["/"], "difficultyMultiplier": NaN}]}', False),
        ('{"routes": [{"name": "a", "paths": ["/"], "difficultyMultiplier": "2"}]}', True),
        ('{"queue": {"maxWaitSeconds": Infinity}}', False),
        ('{"mode": "ENFORCE"}', False),
        ('{"difficulty": 12345678901234567890123}', False),
        ('{"policy": "a/b\\u0000"}', False),
        ('{"unknown": 1, "difficulty": 9}', True),  # a newer operator's field: ignored
        ('{"difficulty": 9', False),
        ("", False),
        ("null", False),
        (b'{"policy": "\xff/b"}', False),  # not UTF-8
    ],
)
def test_the_fast_parse_accepts_exactly_what_the_tolerant_parse_does(
    text: str | bytes, accepted: bool
) -> None:
    assert _assert_same_outcome(text) is accepted


#: Drawn afresh each time: a later change may add to or replace within a value drawn
#: earlier (a list, a dict), and a shared one would carry that into later examples.
_odd_values = st.sampled_from(_ODD_VALUES).map(copy.deepcopy)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_altered_documents_have_one_outcome_through_both_parses(data: st.DataObject) -> None:
    """A valid document with values replaced, removed, renamed or added anywhere."""
    document = _rich_document()
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="changes")):
        places = _paths(document)
        *parent_at, last = data.draw(st.sampled_from(places), label="place")
        parent: Any = document
        for step in parent_at:
            parent = parent[step]
        action = data.draw(st.sampled_from(["replace", "remove", "add", "rename"]), label="do")
        if action == "replace":
            parent[last] = data.draw(
                _odd_values | st.integers() | st.floats() | st.text(max_size=8)
            )
        elif action == "remove" and isinstance(parent, dict):
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(st.text(min_size=1, max_size=12), label="key")] = data.draw(
                _odd_values
            )
        elif action == "rename" and isinstance(parent, dict) and isinstance(last, str):
            # camelCase → snake_case: the same field by its Python name.
            snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in last)
            parent[snake] = parent.pop(last)
    accepted = _assert_same_outcome(json.dumps(document))
    event("accepted" if accepted else "refused")
