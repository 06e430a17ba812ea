"""The rendered config document across versions: a newer operator, an older sidecar."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from powgate.config import (
    BASE_CONTRACT,
    CONFIG_CONTRACT,
    REPLAY_STORE_CONTRACT,
    ReplayStoreSpec,
    SidecarConfig,
    StoreOutage,
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
