"""What the fleet learns, imports and applies: the operator's reputation and trust builders."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from powgate import KeyRing
from powgate.policy import PolicySpec, ReputationImport
from powgate.pricing import API_KEYS_LABEL, api_key_digest
from powgate.reputation import ReputationEntry, ReputationList, seal_label
from powgate_operator._reputation import learn, open_rates, published, read_import
from powgate_operator._trust import api_key_hashes, api_key_secrets

NOW = 1_800_000_000


def spec(**fields: Any) -> PolicySpec:
    return PolicySpec.model_validate(
        {"selector": {"matchLabels": {"app": "llm"}}, "pricing": {"enabled": True}, **fields}
    )


def entry(key: str, factor: float, expires: int = NOW + 600) -> ReputationEntry:
    return ReputationEntry(key=key, factor=factor, expires=expires)


# -- learning ------------------------------------------------------------------------


def test_a_heavy_client_is_learnt_with_the_factor_of_its_fleet_wide_rate() -> None:
    own = learn([], {"1.2.3.0/24": 50.0, "5.6.7.0/24": 0.5}, spec=spec(), now=NOW)
    assert own == (entry("1.2.3.0/24", 50, NOW + 900),)


@pytest.mark.parametrize(
    ("previous", "rate", "expected"),
    [
        # Unchanged and young: kept as it is (no rewrite of the lists).
        (entry("10.0.0.0/24", 50, NOW + 800), 50.4, entry("10.0.0.0/24", 50, NOW + 800)),
        # Half its lifetime gone: renewed.
        (entry("10.0.0.0/24", 50, NOW + 400), 50.0, entry("10.0.0.0/24", 50, NOW + 900)),
        # Its factor moved: the new one, renewed.
        (entry("10.0.0.0/24", 50, NOW + 800), 20.0, entry("10.0.0.0/24", 20, NOW + 900)),
        # No longer heavy: kept until it expires.
        (entry("10.0.0.0/24", 50, NOW + 800), 0.1, entry("10.0.0.0/24", 50, NOW + 800)),
    ],
)
def test_entries_are_renewed_only_when_they_change_or_age(
    previous: ReputationEntry, rate: float, expected: ReputationEntry
) -> None:
    assert learn([previous], {previous.key: rate}, spec=spec(), now=NOW) == (expected,)


def test_an_entry_expires() -> None:
    own = learn([entry("1.2.3.0/24", 8, NOW + 10)], {}, spec=spec(), now=NOW + 10)
    assert own == ()


def test_the_own_list_stays_bounded_however_many_keys_are_seen() -> None:
    rates = {f"10.{i // 256}.{i % 256}.0/24": 2.0 + i for i in range(5000)}
    own = learn([], rates, spec=spec(reputation={"maxEntries": 100}), now=NOW)
    assert len(own) == 100
    assert min(e.factor for e in own) >= 63  # the costliest stay (capped at maxFactor 64)


# -- sealed labels -------------------------------------------------------------------


def test_sealed_labels_open_and_add_up_over_sidecars_and_keys() -> None:
    old = KeyRing.generate(kid="k1")
    ring = old.with_key(KeyRing.generate(kid="k2").signing_key).activated(
        "k2", retire_previous_at=NOW + 600
    )
    sealed = {
        seal_label(old, "1.2.3.0/24"): 10.0,  # a sidecar that still signs with k1
        seal_label(ring, "1.2.3.0/24"): 15.0,
        seal_label(KeyRing.generate(kid="k2"), "6.6.6.0/24"): 99.0,  # forged: other secret
        "junk": 5.0,
    }
    rates, unreadable = open_rates(sealed, ring=ring, now=NOW)
    assert rates == {"1.2.3.0/24": 25.0}
    assert unreadable == 2


# -- imports -------------------------------------------------------------------------


def exported(
    *entries: ReputationEntry, labelled: bool = True, secret: bool = False
) -> dict[str, Any]:
    text = ReputationList(source="other/ns/p", generated=NOW, entries=entries).to_json()
    labels = {"powgate.dev/reputation-source": "true"} if labelled else {}
    value = base64.b64encode(text.encode()).decode() if secret else text
    return {"metadata": {"name": "feed", "labels": labels}, "data": {"reputation.json": value}}


@pytest.mark.parametrize("secret", [False, True])
def test_an_import_is_read_capped_and_stripped_of_expired_entries(secret: bool) -> None:
    source = ReputationImport(kind="Secret" if secret else "ConfigMap", name="feed", max_factor=16)
    obj = exported(entry("1.2.3.0/24", 40), entry("4.0.0.0/8", 2, NOW - 1), secret=secret)
    imported = read_import(source, obj, spec=spec(), now=NOW)
    assert imported.problem == ""
    assert imported.entries == (entry("1.2.3.0/24", 16),)


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        (None, "does not exist"),
        (exported(entry("1.2.3.0/24", 4), labelled=False), "not labelled"),
        ({"metadata": {"labels": {"powgate.dev/reputation-source": "true"}}}, "no data key"),
        (
            {
                "metadata": {"labels": {"powgate.dev/reputation-source": "true"}},
                "data": {"reputation.json": '{"entries": [{"key": "nope"}]}'},
            },
            "entries.0",
        ),
    ],
)
def test_a_bad_import_is_a_problem_not_an_error(obj: dict[str, Any] | None, problem: str) -> None:
    imported = read_import(ReputationImport(name="feed"), obj, spec=spec(), now=NOW)
    assert imported.entries == ()
    assert problem in imported.problem


def test_what_sidecars_apply_is_own_and_imported_merged_and_bounded() -> None:
    policy = spec(reputation={"maxEntries": 2})
    imported = read_import(
        ReputationImport(name="feed"),
        exported(entry("1.2.3.0/24", 30), entry("9.9.9.0/24", 3)),
        spec=policy,
        now=NOW,
    )
    own = (entry("1.2.3.0/24", 10), entry("5.5.5.0/24", 8))
    applied = published(own, [imported], spec=policy, now=NOW)
    assert [(e.key, e.factor) for e in applied] == [("1.2.3.0/24", 30), ("5.5.5.0/24", 8)]


# -- trusted API keys ------------------------------------------------------------------


def key_secret(*keys: str, labelled: bool = True) -> dict[str, Any]:
    text = "\n".join(api_key_digest(k) for k in keys)
    return {
        "type": "Opaque",
        "metadata": {"labels": {API_KEYS_LABEL: "true"} if labelled else {}},
        "data": {"digests": base64.b64encode(text.encode()).decode()},
    }


def test_api_key_digests_are_gathered_per_caller() -> None:
    policy = spec(
        trustedCallers=[
            {"name": "partners", "apiKeys": {"secretName": "partner-keys"}, "multiplier": 0.1},
            {"name": "office", "cidrs": ["10.0.0.0/8"]},
            {"name": "batch", "apiKeys": {"secretName": "batch-keys"}},
        ]
    )
    assert api_key_secrets(policy) == ["batch-keys", "partner-keys"]
    hashes, problems = api_key_hashes(
        policy,
        {
            "partner-keys": key_secret("sk-a", "sk-b", "sk-a"),
            "batch-keys": key_secret("sk-c", labelled=False),
        },
    )
    assert hashes.callers == {
        "partners": sorted({api_key_digest("sk-a"), api_key_digest("sk-b")}),
        "batch": [],
    }
    assert problems == [
        "Secret batch-keys (trusted caller batch): is not an Opaque Secret labelled "
        "powgate.dev/api-keys=true"
    ]
