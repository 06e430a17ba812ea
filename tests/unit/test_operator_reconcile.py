"""The reconciler against the in-memory cluster: what it writes, and how it meets failures."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from memory_cluster import MemoryCluster
from powgate import KeyRing
from powgate.config import (
    CONFIG_DATA_KEY,
    REPLAY_STORE_CONTRACT,
    Mode,
    ReplayStoreSpec,
    SidecarConfig,
    StoreOutage,
)
from powgate.contract import (
    INJECTED_ANNOTATION,
    KEYRING_SECRET_KEY,
    OPT_OUT_LABEL,
    POLICY_LABEL,
    SIDECAR_NAME,
)
from powgate.controller import Failure, Reading, Sample
from powgate.policy import (
    CREDENTIALS_LABEL,
    REPUTATION_SOURCE_LABEL,
    ConditionStatus,
    ConditionType,
    PolicyStatus,
    PrometheusSpec,
    RolloutStatus,
    SignalSpec,
    config_map_name,
    key_secret_name,
    network_policy_name,
    reputation_name,
)
from powgate.pricing import API_KEYS_DATA_KEY, API_KEYS_LABEL, ApiKeyHashes, api_key_digest
from powgate.reputation import REPUTATION_DATA_KEY, ReputationList, seal_label
from powgate_operator import _metrics as metrics
from powgate_operator._cluster import (
    CONFIG_MAPS,
    NETWORK_POLICIES,
    POW_POLICIES,
    ROLE_BINDINGS,
    ROLES,
    SECRETS,
    ClusterError,
    ConflictError,
    ForbiddenError,
    UnavailableError,
)
from powgate_operator._objects import role_body, role_name
from powgate_operator._pods import PodFacts, PodView, pod_facts
from powgate_operator._prometheus import (
    CredentialAddresses,
    Credentials,
    FailureReason,
    SidecarKeys,
    StoreReach,
)
from powgate_operator._reconcile import Reconciler, StoreAddresses

NS, NAME = "ai", "chat"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class ScriptedSignals:
    """Prometheus as the reconciler sees it: one scripted reading per signal."""

    readings: dict[str, Reading] = field(default_factory=dict)
    rollout_result: RolloutStatus | Failure = field(
        default_factory=lambda: Failure(FailureReason.UNREACHABLE, "no Prometheus")
    )
    credentials_seen: list[Credentials | None] = field(default_factory=list)
    #: What the sidecars report as their heaviest clients: sealed label -> rate.
    heavy: dict[str, float] | Failure = field(default_factory=dict)
    #: What the sidecars report of their replay store.
    store_reach: StoreReach | Failure = field(default_factory=lambda: StoreReach(0, 0))
    store_asked: list[str] = field(default_factory=list)
    #: What the sidecars report holding (powgate_key_info); asked only during rotations.
    keys: SidecarKeys | Failure = field(
        default_factory=lambda: Failure(FailureReason.UNREACHABLE, "no Prometheus")
    )
    keys_asked: int = 0

    async def read(
        self,
        *,
        prometheus: PrometheusSpec,
        credentials: Credentials | None,
        signals: Sequence[SignalSpec],
        namespace: str,
        name: str,
    ) -> dict[str, Reading]:
        self.credentials_seen.append(credentials)
        return {s.name: self.readings[s.name] for s in signals}

    async def rollout(
        self,
        *,
        prometheus: PrometheusSpec,
        credentials: Credentials | None,
        policy: str,
        version: str,
    ) -> RolloutStatus | Failure:
        return self.rollout_result

    async def heavy_clients(
        self, *, prometheus: PrometheusSpec, credentials: Credentials | None, policy: str
    ) -> dict[str, float] | Failure:
        return self.heavy

    async def replay_store(
        self, *, prometheus: PrometheusSpec, credentials: Credentials | None, policy: str
    ) -> StoreReach | Failure:
        self.store_asked.append(policy)
        return self.store_reach

    async def sidecar_keys(
        self, *, prometheus: PrometheusSpec, credentials: Credentials | None, policy: str
    ) -> SidecarKeys | Failure:
        self.keys_asked += 1
        return self.keys


@dataclass
class World:
    cluster: MemoryCluster
    signals: ScriptedSignals
    events: list[tuple[str, str, str]]
    reconciler: Reconciler

    async def reconcile(self, *, evaluate: bool = False, pods: PodView | None = None) -> None:
        await self.reconciler.reconcile(
            namespace=NS, name=NAME, evaluate_signals=evaluate, pods=pods
        )

    def status(self) -> PolicyStatus:
        return PolicyStatus.model_validate(
            self.cluster.stored(POW_POLICIES, NAME, NS).get("status") or {}
        )

    def condition(self, kind: ConditionType) -> tuple[ConditionStatus, str]:
        found = self.status().condition(kind)
        assert found is not None, f"no {kind} condition"
        return found.status, found.reason


def policy(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "powgate.dev/v1alpha1",
        "kind": "PowPolicy",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {"selector": {"matchLabels": {"app": "chat"}}, **spec},
    }


@pytest.fixture
def world() -> World:
    cluster = MemoryCluster()
    signals = ScriptedSignals()
    events: list[tuple[str, str, str]] = []
    reconciler = Reconciler(
        cluster=cluster,
        reader=signals,
        clock=lambda: NOW,
        events=lambda _policy, kind, reason, message: events.append((kind, reason, message)),
    )
    return World(cluster, signals, events, reconciler)


def reconciles(trigger: str, result: str) -> float:
    value = metrics.RECONCILES.labels(trigger, result)._value.get()
    return float(value)


async def test_a_new_policy_gets_keys_config_and_a_ready_status(world: World) -> None:
    world.cluster.put(POW_POLICIES, policy(difficulty={"min": 1000, "max": 10_000}))
    await world.reconcile()
    secret = world.cluster.stored(SECRETS, key_secret_name(NAME), NS)
    ring = json.loads(base64.b64decode(secret["data"][KEYRING_SECRET_KEY]))
    assert ring["active"]
    config = json.loads(world.cluster.stored(CONFIG_MAPS, config_map_name(NAME), NS)["data"][
        CONFIG_DATA_KEY
    ])  # fmt: skip
    assert (config["policy"], config["difficulty"]) == (f"{NS}/{NAME}", 1000)
    status = world.status()
    assert status.difficulty == 1000
    assert status.config_version == config["version"]
    assert world.condition(ConditionType.READY) == (ConditionStatus.TRUE, "ConfigPublished")
    assert [reason for _, reason, _ in world.events] == ["KeysCreated"]


async def test_a_policy_that_is_gone_is_left_alone(world: World) -> None:
    before = reconciles("spec", "gone")
    await world.reconcile()
    assert reconciles("spec", "gone") == before + 1
    assert world.cluster.count("create") == 0
    assert world.cluster.count("patch_status") == 0


async def test_a_status_write_raced_by_a_conflict_is_retried(world: World) -> None:
    world.cluster.put(POW_POLICIES, policy())
    world.cluster.inject(
        "patch_status", POW_POLICIES, error=ConflictError("modified", status=409), times=2
    )
    await world.reconcile()
    assert world.cluster.count("patch_status") == 3
    assert world.condition(ConditionType.READY)[0] is ConditionStatus.TRUE


async def test_an_api_outage_fails_the_reconcile_and_counts_it(world: World) -> None:
    world.cluster.put(POW_POLICIES, policy())
    world.cluster.inject("get", POW_POLICIES, error=UnavailableError("timed out"))
    before = reconciles("spec", "error")
    with pytest.raises(UnavailableError):
        await world.reconcile()
    assert reconciles("spec", "error") == before + 1
    assert world.cluster.count("create") == 0
    # The next reconcile (kopf retries) completes the work.
    await world.reconcile()
    assert world.cluster.has(CONFIG_MAPS, config_map_name(NAME), NS)


async def test_a_refused_write_is_counted_by_its_status(world: World) -> None:
    world.cluster.put(POW_POLICIES, policy())
    world.cluster.inject("create", CONFIG_MAPS, error=ForbiddenError("no", status=403))
    before = reconciles("spec", "HTTP403")
    with pytest.raises(ClusterError):
        await world.reconcile()
    assert reconciles("spec", "HTTP403") == before + 1


async def test_a_damaged_key_secret_is_reported_and_left_untouched(world: World) -> None:
    world.cluster.put(POW_POLICIES, policy())
    await world.reconcile()
    damaged = world.cluster.stored(SECRETS, key_secret_name(NAME), NS)
    damaged["data"] = {KEYRING_SECRET_KEY: base64.b64encode(b"{not json").decode()}
    world.cluster.put(SECRETS, damaged)
    world.reconciler.forget(namespace=NS, name=NAME)
    await world.reconcile()
    stored = world.cluster.stored(SECRETS, key_secret_name(NAME), NS)
    assert stored["data"] == damaged["data"]
    assert world.condition(ConditionType.READY) == (ConditionStatus.FALSE, "KeySecretInvalid")
    assert ("Warning", "KeySecretInvalid") in [(k, r) for k, r, _ in world.events]


async def test_a_hand_edited_config_map_is_restored(world: World) -> None:
    world.cluster.put(POW_POLICIES, policy())
    await world.reconcile()
    name = config_map_name(NAME)
    published = world.cluster.stored(CONFIG_MAPS, name, NS)["data"]
    world.cluster.objects[(CONFIG_MAPS.plural, NS, name)]["data"] = {CONFIG_DATA_KEY: "{}"}
    world.reconciler.forget(namespace=NS, name=NAME)  # as after the heartbeat
    await world.reconcile()
    assert world.cluster.stored(CONFIG_MAPS, name, NS)["data"] == published


SIGNAL = {"name": "load", "query": "up", "target": 10}


async def test_a_query_timeout_holds_difficulty_and_says_so(world: World) -> None:
    world.cluster.put(
        POW_POLICIES, policy(signals=[SIGNAL], difficulty={"min": 100, "max": 100_000})
    )
    world.signals.readings["load"] = Sample(40.0)
    await world.reconcile(evaluate=True)
    raised = world.status().difficulty
    assert raised is not None
    assert raised > 100
    world.signals.readings["load"] = Failure(FailureReason.TIMEOUT, "5 s")
    await world.reconcile(evaluate=True)
    assert world.status().difficulty == raised
    assert world.condition(ConditionType.SIGNALS_HEALTHY) == (
        ConditionStatus.FALSE,
        "QueryFailed",
    )
    assert world.condition(ConditionType.FALLBACK_ACTIVE)[0] is ConditionStatus.TRUE


PROMETHEUS = "http://prometheus.monitoring.svc:9090"


def credentials_secret(*, labelled: bool = True, kind: str = "Opaque") -> dict[str, Any]:
    labels = {CREDENTIALS_LABEL: "true"} if labelled else {}
    return {
        "metadata": {"name": "prom", "namespace": NS, "labels": labels},
        "type": kind,
        "data": {"token": base64.b64encode(b"s3cret").decode()},
    }


def with_credentials(world: World, address: str = PROMETHEUS) -> None:
    world.cluster.put(
        POW_POLICIES,
        policy(
            signals=[SIGNAL],
            prometheus={"address": address, "authSecretRef": {"name": "prom"}},
        ),
    )
    world.signals.readings["load"] = Sample(10.0)


@pytest.fixture
def allowed(world: World) -> World:
    """The operator's administrator allowed the in-cluster Prometheus."""
    world.reconciler = Reconciler(
        cluster=world.cluster,
        reader=world.signals,
        clock=lambda: NOW,
        events=lambda *_: None,
        credential_addresses=CredentialAddresses.parse(PROMETHEUS),
    )
    return world


async def test_credentials_that_cannot_be_read_fail_the_signals_not_the_reconcile(
    allowed: World,
) -> None:
    with_credentials(allowed)
    await allowed.reconcile(evaluate=True)  # the Secret does not exist
    signal = allowed.status().signals[0]
    assert (signal.reason, signal.message) == (
        "CredentialsUnavailable",
        "Secret prom does not exist",
    )
    allowed.cluster.inject("get", SECRETS, error=ForbiddenError("forbidden", status=403), times=2)
    await allowed.reconcile(evaluate=True)
    assert allowed.status().signals[0].message == "Secret prom: HTTP 403"
    assert allowed.signals.credentials_seen == []  # Prometheus was never asked without them


async def test_an_opted_in_secret_is_sent_to_an_allowed_address(allowed: World) -> None:
    with_credentials(allowed)
    allowed.cluster.put(SECRETS, credentials_secret())
    await allowed.reconcile(evaluate=True)
    (sent,) = allowed.signals.credentials_seen
    assert sent is not None
    assert sent.bearer_token == "s3cret"


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        (credentials_secret(labelled=False), "labelled"),
        # A service-account token is never Prometheus credentials, label or not.
        (credentials_secret(kind="kubernetes.io/service-account-token"), "Opaque"),
    ],
    ids=["not opted in", "service-account token"],
)
async def test_a_secret_that_did_not_opt_in_is_never_sent(
    allowed: World, secret: dict[str, Any], why: str
) -> None:
    with_credentials(allowed)
    allowed.cluster.put(SECRETS, secret)
    await allowed.reconcile(evaluate=True)
    assert allowed.signals.credentials_seen == []
    signal = allowed.status().signals[0]
    assert signal.reason == "CredentialsUnavailable"
    assert why in signal.message


@pytest.mark.parametrize(
    "address",
    [
        "http://attacker.example:9090",
        "http://prometheus.monitoring.svc:9091",
        "https://prometheus.monitoring.svc:9090",
        "http://prometheus.monitoring.svc.attacker.example:9090",
    ],
)
async def test_credentials_never_go_to_an_address_outside_the_allow_list(
    allowed: World, address: str
) -> None:
    with_credentials(allowed, address)
    allowed.cluster.put(SECRETS, credentials_secret())
    await allowed.reconcile(evaluate=True)
    assert allowed.signals.credentials_seen == []
    assert allowed.cluster.count("get", "Secret") <= 1  # the key Secret, never "prom"
    assert "credential addresses" in allowed.status().signals[0].message


async def test_without_an_allow_list_credentials_go_nowhere(world: World) -> None:
    with_credentials(world)
    world.cluster.put(SECRETS, credentials_secret())
    await world.reconcile(evaluate=True)
    assert world.signals.credentials_seen == []


def test_allow_list_entries_are_urls() -> None:
    with pytest.raises(ValueError, match="not an http"):
        CredentialAddresses.parse("prometheus:9090")
    entries = CredentialAddresses.parse(" http://a:9090/prom , https://b ")
    assert entries.allows("http://a:9090/prom/")
    assert entries.allows("https://b:443/x")
    assert not entries.allows("http://a:9090/other")


async def test_rollout_is_kept_when_prometheus_cannot_tell(world: World) -> None:
    world.cluster.put(POW_POLICIES, policy(signals=[SIGNAL]))
    world.signals.readings["load"] = Sample(10.0)
    world.signals.rollout_result = RolloutStatus(version="v", updated=2, total=3)
    await world.reconcile(evaluate=True)
    assert world.status().rollout.total == 3
    world.signals.rollout_result = Failure(FailureReason.TIMEOUT, "slow")
    await world.reconcile(evaluate=True)
    assert (world.status().rollout.updated, world.status().rollout.total) == (2, 3)


async def test_a_sidecar_role_that_grants_the_keys_loses_that_grant(world: World) -> None:
    stored = world.cluster.put(POW_POLICIES, policy())
    old = role_body(stored)
    old["rules"].append(
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [key_secret_name(NAME)],
            "verbs": ["get", "list", "watch"],
        }
    )
    world.cluster.put(ROLES, old)
    await world.reconcile(pods=Pods())
    rules = world.cluster.stored(ROLES, role_name(NAME), NS)["rules"]
    assert [r["resources"] for r in rules] == [["configmaps"]]
    # A policy whose pods were never injected gets no Role from the reconciler.
    world.cluster.objects.pop((ROLES.plural, NS, role_name(NAME)))
    world.reconciler.forget(namespace=NS, name=NAME)
    await world.reconcile(pods=Pods())
    assert not world.cluster.has(ROLES, role_name(NAME), NS)


# -- who pays: reputation and trusted API keys --------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def fleet() -> tuple[World, Clock]:
    """A world whose clock the test moves."""
    clock = Clock()
    cluster = MemoryCluster()
    signals = ScriptedSignals()
    reconciler = Reconciler(cluster=cluster, reader=signals, clock=clock, events=lambda *_: None)
    return World(cluster, signals, [], reconciler), clock


def ring_of(world: World, name: str = NAME) -> KeyRing:
    secret = world.cluster.stored(SECRETS, key_secret_name(name), NS)
    return KeyRing.from_json(base64.b64decode(secret["data"][KEYRING_SECRET_KEY]))


def applied(world: World, name: str = NAME) -> dict[str, float]:
    data = world.cluster.stored(CONFIG_MAPS, config_map_name(name), NS)["data"]
    if REPUTATION_DATA_KEY not in data:  # never written: nothing learnt or imported yet
        return {}
    listed = ReputationList.from_json(data[REPUTATION_DATA_KEY])
    return {entry.key: entry.factor for entry in listed.entries}


PRICED = {"enabled": True, "fairRate": 1, "maxFactor": 64}


async def test_a_client_flagged_by_the_sidecars_pays_more_at_every_sidecar(
    fleet: tuple[World, Clock],
) -> None:
    world, _ = fleet
    world.cluster.put(POW_POLICIES, policy(pricing=PRICED))
    await world.reconcile()
    assert applied(world) == {}
    # Two sidecars see the same /24 at 20/s each: the fleet-wide rate prices it.
    ring = ring_of(world)
    world.signals.heavy = {seal_label(ring, "203.0.113.0/24"): 40.0, "forged": 1e6}
    await world.reconcile(evaluate=True)
    assert applied(world) == {"203.0.113.0/24": 40.0}
    export = world.cluster.stored(CONFIG_MAPS, reputation_name(NAME), NS)
    assert export["metadata"]["labels"][REPUTATION_SOURCE_LABEL] == "true"
    assert ReputationList.from_json(export["data"][REPUTATION_DATA_KEY]).entries[0].factor == 40
    pricing = world.status().pricing
    assert pricing is not None
    assert (pricing.reputation_entries, pricing.learnt, pricing.imported) == (1, 1, 0)
    # The config document itself did not change: sidecars apply the list without a new version.
    config = world.cluster.stored(CONFIG_MAPS, config_map_name(NAME), NS)["data"][CONFIG_DATA_KEY]
    assert '"reputation' not in config


async def test_a_steady_heavy_hitter_does_not_rewrite_the_lists(
    fleet: tuple[World, Clock],
) -> None:
    world, clock = fleet
    world.cluster.put(POW_POLICIES, policy(pricing=PRICED))
    await world.reconcile()
    world.signals.heavy = {seal_label(ring_of(world), "203.0.113.0/24"): 40.0}
    await world.reconcile(evaluate=True)
    patches = world.cluster.count("patch", "ConfigMap")
    for _ in range(5):
        clock.now += timedelta(seconds=15)
        world.signals.heavy = {seal_label(ring_of(world), "203.0.113.0/24"): 40.3}
        await world.reconcile(evaluate=True)
    assert world.cluster.count("patch", "ConfigMap") == patches


async def test_a_learnt_entry_expires(fleet: tuple[World, Clock]) -> None:
    world, clock = fleet
    world.cluster.put(POW_POLICIES, policy(pricing=PRICED, reputation={"ttlSeconds": 60}))
    await world.reconcile()
    world.signals.heavy = {seal_label(ring_of(world), "203.0.113.0/24"): 40.0}
    await world.reconcile(evaluate=True)
    world.signals.heavy = {}
    clock.now += timedelta(seconds=59)
    await world.reconcile(evaluate=True)
    assert applied(world) == {"203.0.113.0/24": 40.0}
    clock.now += timedelta(seconds=2)
    await world.reconcile(evaluate=True)
    assert applied(world) == {}


async def test_the_list_stays_bounded_however_many_keys_are_seen(
    fleet: tuple[World, Clock],
) -> None:
    world, clock = fleet
    world.cluster.put(POW_POLICIES, policy(pricing=PRICED, reputation={"maxEntries": 50}))
    await world.reconcile()
    ring = ring_of(world)
    for wave in range(4):
        clock.now += timedelta(seconds=15)
        world.signals.heavy = {seal_label(ring, f"10.{wave}.{i}.0/24"): 2.0 + i for i in range(200)}
        await world.reconcile(evaluate=True)
        assert len(applied(world)) == 50
    export = world.cluster.stored(CONFIG_MAPS, reputation_name(NAME), NS)
    assert len(ReputationList.from_json(export["data"][REPUTATION_DATA_KEY]).entries) == 50


async def test_a_list_imported_from_another_cluster_raises_that_keys_price(
    fleet: tuple[World, Clock],
) -> None:
    world, _ = fleet
    # "Another cluster": a second policy whose export is what the administrator syncs.
    world.cluster.put(
        POW_POLICIES, policy(pricing=PRICED) | {"metadata": {"name": "eu", "namespace": NS}}
    )
    await world.reconciler.reconcile(namespace=NS, name="eu", evaluate_signals=False)
    world.signals.heavy = {seal_label(ring_of(world, "eu"), "198.51.100.0/24"): 30.0}
    await world.reconciler.reconcile(namespace=NS, name="eu", evaluate_signals=True)
    imports = [{"name": reputation_name("eu"), "maxFactor": 8}, {"name": "missing"}]
    world.cluster.put(
        POW_POLICIES, policy(pricing=PRICED, reputation={"share": False, "imports": imports})
    )
    await world.reconcile()
    assert applied(world) == {"198.51.100.0/24": 8.0}
    pricing = world.status().pricing
    assert pricing is not None
    assert (pricing.imported, pricing.learnt) == (1, 0)
    assert pricing.problems == ["ConfigMap missing: does not exist"]
    assert not world.cluster.has(CONFIG_MAPS, reputation_name(NAME), NS)


async def test_trusted_api_key_digests_reach_the_key_secret_only(world: World) -> None:
    digest = api_key_digest("sk-partner")
    world.cluster.put(
        SECRETS,
        {
            "type": "Opaque",
            "metadata": {
                "name": "partner-keys",
                "namespace": NS,
                "labels": {API_KEYS_LABEL: "true"},
            },
            "data": {"digests": base64.b64encode(digest.encode()).decode()},
        },
    )
    callers = [{"name": "partners", "apiKeys": {"secretName": "partner-keys"}, "multiplier": 0.1}]
    world.cluster.put(POW_POLICIES, policy(trustedCallers=callers))
    await world.reconcile()
    secret = world.cluster.stored(SECRETS, key_secret_name(NAME), NS)
    hashes = ApiKeyHashes.model_validate_json(base64.b64decode(secret["data"][API_KEYS_DATA_KEY]))
    assert hashes.callers == {"partners": [digest]}
    assert KEYRING_SECRET_KEY in secret["data"]
    config_map = world.cluster.stored(CONFIG_MAPS, config_map_name(NAME), NS)
    assert digest not in json.dumps(config_map)
    pricing = world.status().pricing
    assert pricing is not None
    assert (pricing.api_keys, pricing.problems) == (1, [])
    # Deleting the Secret revokes the keys: they pay the normal price again.
    del world.cluster.objects[(SECRETS.plural, NS, "partner-keys")]
    world.reconciler.forget(namespace=NS, name=NAME)
    await world.reconcile()
    secret = world.cluster.stored(SECRETS, key_secret_name(NAME), NS)
    hashes = ApiKeyHashes.model_validate_json(base64.b64decode(secret["data"][API_KEYS_DATA_KEY]))
    assert hashes.callers == {"partners": []}
    pricing = world.status().pricing
    assert pricing is not None
    assert pricing.problems == ["Secret partner-keys (trusted caller partners): does not exist"]


# -- a deleted policy stops charging; an outage never does ------------------------------


async def test_a_deleted_policy_switches_its_sidecars_off(world: World) -> None:
    world.cluster.put(POW_POLICIES, policy())
    await world.reconcile()
    name = config_map_name(NAME)
    before = SidecarConfig.from_json(world.cluster.stored(CONFIG_MAPS, name, NS)["data"][
        CONFIG_DATA_KEY
    ])  # fmt: skip
    assert before.mode is Mode.ENFORCE
    await world.reconciler.retire(namespace=NS, name=NAME)
    after = SidecarConfig.from_json(world.cluster.stored(CONFIG_MAPS, name, NS)["data"][
        CONFIG_DATA_KEY
    ])  # fmt: skip
    assert after.mode is Mode.OFF
    assert after.version != before.version  # sidecars report the switch in their rollout metric
    assert after.model_copy(update={"mode": Mode.ENFORCE, "version": ""}) == before.model_copy(
        update={"version": ""}
    )
    # Idempotent, and harmless when the ConfigMap is already gone.
    await world.reconciler.retire(namespace=NS, name=NAME)
    world.cluster.objects.pop((CONFIG_MAPS.plural, NS, name))
    await world.reconciler.retire(namespace=NS, name=NAME)
    assert not world.cluster.has(CONFIG_MAPS, name, NS)


async def test_an_outage_while_retiring_raises_for_kopf_to_retry(world: World) -> None:
    world.cluster.put(POW_POLICIES, policy())
    await world.reconcile()
    world.cluster.inject("get", CONFIG_MAPS, error=UnavailableError("timed out"))
    with pytest.raises(UnavailableError):
        await world.reconciler.retire(namespace=NS, name=NAME)


async def test_a_raise_tells_the_sidecars_when_easier_challenges_stop_paying(world: World) -> None:
    world.cluster.put(
        POW_POLICIES, policy(signals=[SIGNAL], difficulty={"min": 100, "max": 100_000})
    )
    world.signals.readings["load"] = Sample(40.0)  # four times the target: a raise
    await world.reconcile(evaluate=True)
    config = SidecarConfig.from_json(
        world.cluster.stored(CONFIG_MAPS, config_map_name(NAME), NS)["data"][CONFIG_DATA_KEY]
    )
    assert config.difficulty > 100
    assert config.raised_at == int(NOW.timestamp())
    assert config.raise_grace_seconds == 60


STORE = {"address": "valkey.cache.svc:6379"}


async def test_the_replay_store_condition_follows_what_the_sidecars_report(world: World) -> None:
    kind = ConditionType.REPLAY_STORE_AVAILABLE
    world.cluster.put(POW_POLICIES, policy(replay={"store": STORE}))
    await world.reconcile()  # no evaluation: Prometheus is not asked
    assert world.condition(kind) == (ConditionStatus.UNKNOWN, "NotObserved")
    steps: list[tuple[StoreReach | Failure, ConditionStatus, str]] = [
        (StoreReach(answering=3, unavailable=0), ConditionStatus.TRUE, "Reachable"),
        (StoreReach(answering=2, unavailable=1), ConditionStatus.FALSE, "Unreachable"),
        (Failure(FailureReason.TIMEOUT, "slow"), ConditionStatus.UNKNOWN, "MetricsUnavailable"),
        (StoreReach(answering=0, unavailable=0), ConditionStatus.UNKNOWN, "NoSidecarsReporting"),
        (StoreReach(answering=3, unavailable=0), ConditionStatus.TRUE, "Reachable"),
    ]
    for reach, status, reason in steps:
        world.signals.store_reach = reach
        await world.reconcile(evaluate=True)
        assert world.condition(kind) == (status, reason), reach
        if status is ConditionStatus.FALSE:
            message = world.status().condition(kind).message  # type: ignore[union-attr]
            assert "1 of 3 sidecar processes" in message
            assert "refused" in message
            await world.reconcile()  # between evaluations the last word stays
            assert world.condition(kind) == (status, reason)
    assert world.signals.store_asked == [f"{NS}/{NAME}"] * len(steps)
    store_events = [(k, r) for k, r, _ in world.events if r in ("Reachable", "Unreachable")]
    assert store_events == [
        ("Normal", "Reachable"),
        ("Warning", "Unreachable"),
        ("Normal", "Reachable"),
    ]
    # The store taken out of the policy: the condition goes, nothing more is asked.
    world.cluster.put(POW_POLICIES, policy())
    await world.reconcile(evaluate=True)
    assert world.status().condition(kind) is None
    assert len(world.signals.store_asked) == len(steps)


async def test_the_operators_default_store_serves_policies_that_name_none(world: World) -> None:
    default = ReplayStoreSpec(
        address="redis.shared.svc:6379", when_unavailable=StoreOutage.FALL_BACK_TO_LOCAL
    )
    reconciler = Reconciler(
        cluster=world.cluster,
        reader=world.signals,
        clock=lambda: NOW,
        events=lambda *_: None,
        default_store=default,
    )
    world.cluster.put(POW_POLICIES, policy())
    await reconciler.reconcile(namespace=NS, name=NAME, evaluate_signals=False)
    data = world.cluster.stored(CONFIG_MAPS, config_map_name(NAME), NS)["data"][CONFIG_DATA_KEY]
    config = SidecarConfig.from_json(data)
    assert config.replay_store == default
    assert config.contract == REPLAY_STORE_CONTRACT
    world.cluster.put(POW_POLICIES, policy(replay={"store": STORE}))
    await reconciler.reconcile(namespace=NS, name=NAME, evaluate_signals=False)
    data = world.cluster.stored(CONFIG_MAPS, config_map_name(NAME), NS)["data"][CONFIG_DATA_KEY]
    assert SidecarConfig.from_json(data).replay_store == ReplayStoreSpec.model_validate(STORE)


# -- key rotation gated on the sidecars ------------------------------------------------

ROTATING = {"keys": {"rotationIntervalSeconds": 600, "propagationSeconds": 120}}


async def test_a_new_key_signs_only_once_every_sidecar_holds_it(
    fleet: tuple[World, Clock],
) -> None:
    world, clock = fleet
    world.cluster.put(POW_POLICIES, policy(**ROTATING))
    await world.reconcile(evaluate=True)
    first = ring_of(world).active
    assert world.signals.keys_asked == 0  # no rotation under way: Prometheus is not asked
    world.signals.keys = SidecarKeys(held={first: 3}, signing={first: 3})

    clock.now = NOW + timedelta(seconds=600)
    await world.reconcile(evaluate=True)
    published = ring_of(world)
    (new,) = [k.kid for k in published.keys if k.kid != first]
    assert published.active == first

    # Long past the bound, but one of three sidecars lacks the key: the old one signs on.
    world.signals.keys = SidecarKeys(held={first: 3, new: 2}, signing={first: 3})
    clock.now += timedelta(seconds=3600)
    await world.reconcile(evaluate=True)
    assert ring_of(world).active == first
    keys = world.status().keys
    assert keys is not None
    assert (keys.active, keys.pending, keys.sidecars, keys.ready) == (first, new, 3, 2)
    # A spec change never advances a rotation.
    world.signals.keys = SidecarKeys(held={first: 3, new: 3}, signing={first: 3})
    await world.reconcile()
    assert ring_of(world).active == first

    await world.reconcile(evaluate=True)
    switched = ring_of(world)
    assert switched.active == new
    assert switched.verification_key(first, now=clock.now.timestamp() + 10**6) is not None

    # The old key verifies as long as any sidecar still signs with it...
    world.signals.keys = SidecarKeys(held={first: 3, new: 3}, signing={first: 1, new: 2})
    clock.now += timedelta(seconds=3600)
    await world.reconcile(evaluate=True)
    assert ring_of(world).signing_key.kid == new
    assert all(k.not_after is None for k in ring_of(world).keys)
    # ...and a challenge lifetime (300 s by default) after the last one stopped.
    world.signals.keys = SidecarKeys(held={first: 3, new: 3}, signing={new: 3})
    await world.reconcile(evaluate=True)
    retired = ring_of(world).verification_key(first, now=clock.now.timestamp())
    assert retired is not None
    assert retired.not_after == int(clock.now.timestamp()) + 300
    clock.now += timedelta(seconds=301)
    await world.reconcile(evaluate=True)
    assert first not in ring_of(world)
    assert ring_of(world).active == new


async def test_without_sidecar_reports_each_phase_waits_the_bound(
    fleet: tuple[World, Clock],
) -> None:
    world, clock = fleet
    world.cluster.put(POW_POLICIES, policy(**ROTATING))
    await world.reconcile(evaluate=True)
    first = ring_of(world).active
    clock.now = NOW + timedelta(seconds=600)
    await world.reconcile(evaluate=True)  # published; Prometheus unreachable
    clock.now += timedelta(seconds=119)
    await world.reconcile(evaluate=True)
    assert ring_of(world).active == first
    assert world.signals.keys_asked == 1
    clock.now += timedelta(seconds=1)
    await world.reconcile(evaluate=True)
    assert ring_of(world).active != first
    keys = world.status().keys
    assert keys is not None
    assert (keys.retiring, keys.sidecars) == ([first], None)
    # The switch is recorded on the Secret: the previous key retires a bound after it.
    clock.now += timedelta(seconds=119)
    await world.reconcile(evaluate=True)
    assert ring_of(world).verification_key(first, now=10**12) is not None
    clock.now += timedelta(seconds=1)
    await world.reconcile(evaluate=True)
    assert ring_of(world).verification_key(first, now=10**12) is None
    # No sidecar reporting counts as not observed, not as "all of none hold it".
    world.signals.keys = SidecarKeys()
    assert ring_of(world).verification_key(first, now=clock.now.timestamp()) is not None


async def test_a_store_address_the_administrator_did_not_allow_is_not_rendered(
    world: World,
) -> None:
    """Its sidecars would send the store's credentials there: the last config stays."""
    allowed = StoreAddresses.parse("valkey.cache.svc:6379, Redis.Shared:6380")
    default = ReplayStoreSpec(address="default.store:6379")
    reconciler = Reconciler(
        cluster=world.cluster,
        reader=world.signals,
        clock=lambda: NOW,
        events=lambda _policy, kind, reason, message: world.events.append((kind, reason, message)),
        default_store=default,
        store_addresses=allowed,
    )

    async def reconcile() -> None:
        await reconciler.reconcile(namespace=NS, name=NAME, evaluate_signals=False)

    def published() -> ReplayStoreSpec | None:
        data = world.cluster.stored(CONFIG_MAPS, config_map_name(NAME), NS)["data"]
        return SidecarConfig.from_json(data[CONFIG_DATA_KEY]).replay_store

    world.cluster.put(POW_POLICIES, policy(replay={"store": STORE}))
    await reconcile()
    assert published() == ReplayStoreSpec.model_validate(STORE)
    world.cluster.put(POW_POLICIES, policy(replay={"store": {"address": "attacker.example:6379"}}))
    await reconcile()
    assert world.condition(ConditionType.READY) == (ConditionStatus.FALSE, "ReplayStoreNotAllowed")
    assert published() == ReplayStoreSpec.model_validate(STORE)  # the last good config
    assert ("Warning", "ReplayStoreNotAllowed") in [(k, r) for k, r, _ in world.events]
    # Host names compare case-insensitively; the operator's own default is always allowed.
    for address in ("redis.shared:6380", "default.store:6379"):
        world.cluster.put(POW_POLICIES, policy(replay={"store": {"address": address}}))
        await reconcile()
        assert world.condition(ConditionType.READY)[0] is ConditionStatus.TRUE
        assert published() == ReplayStoreSpec(address=address)
    # Without a list, any address.
    assert StoreAddresses.parse("").allows("anything:1")
    with pytest.raises(ValueError, match="address"):
        StoreAddresses.parse("redis://valkey:6379")


# -- grants follow pods that exist; objects of others are never adopted ------------------


class Pods:
    """The namespace's pods as the operator's index holds them."""

    def __init__(self, *bodies: dict[str, Any]) -> None:
        self.bodies = bodies
        self.facts = [f for f in map(pod_facts, bodies) if f is not None]

    def in_namespace(self, namespace: str) -> list[PodFacts]:
        return self.facts if namespace == NS else []


def sidecar_pod(name: str, account: str, *, policy_name: str = NAME) -> dict[str, Any]:
    """A pod as the injector stores it: annotation, label and the sidecar container."""
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"app": "chat", POLICY_LABEL: policy_name},
            "annotations": {INJECTED_ANNOTATION: policy_name},
        },
        "spec": {
            "serviceAccountName": account,
            "initContainers": [{"name": SIDECAR_NAME, "restartPolicy": "Always"}],
            "containers": [{"name": "app"}],
        },
        "status": {"phase": "Running"},
    }


def bound(world: World) -> list[str]:
    binding = world.cluster.stored(ROLE_BINDINGS, role_name(NAME), NS)
    return [s["name"] for s in binding.get("subjects") or []]


async def test_pod_events_bind_the_accounts_of_existing_pods_and_prune_the_rest(
    world: World,
) -> None:
    world.cluster.put(POW_POLICIES, policy())
    pods = Pods(
        sidecar_pod("a", "model"),
        sidecar_pod("b", "web"),
        sidecar_pod("x", "x", policy_name="other"),
    )
    await world.reconciler.follow_pods(namespace=NS, name=NAME, pods=pods)
    assert bound(world) == ["model", "web"]
    writes = world.cluster.count("replace") + world.cluster.count("create")
    await world.reconciler.follow_pods(namespace=NS, name=NAME, pods=pods)  # a status update
    assert world.cluster.count("replace") + world.cluster.count("create") == writes
    assert world.cluster.count("get", "PowPolicy") == 1  # nothing changed: not even a read
    # web's only pod goes: its account is pruned.
    await world.reconciler.follow_pods(
        namespace=NS, name=NAME, pods=Pods(sidecar_pod("a", "model"))
    )
    assert bound(world) == ["model"]


async def test_each_evaluation_rechecks_the_binding_against_the_pods(world: World) -> None:
    world.cluster.put(POW_POLICIES, policy())
    pods = Pods(sidecar_pod("a", "model"))
    await world.reconcile(pods=pods)
    assert bound(world) == ["model"]
    # A hand edit adds an account; the next check after the heartbeat removes it.
    binding = world.cluster.stored(ROLE_BINDINGS, role_name(NAME), NS)
    binding["subjects"].append({"kind": "ServiceAccount", "name": "default", "namespace": NS})
    world.cluster.put(ROLE_BINDINGS, binding)
    world.reconciler.forget(namespace=NS, name=NAME)
    await world.reconcile(pods=pods, evaluate=True)
    assert bound(world) == ["model"]
    # Without the pods known (the index not ready), nothing is touched.
    await world.reconcile(pods=None)
    assert bound(world) == ["model"]


@pytest.mark.parametrize(
    ("resource", "name"),
    [(SECRETS, key_secret_name(NAME)), (CONFIG_MAPS, config_map_name(NAME))],
)
async def test_a_key_secret_or_config_the_operator_did_not_create_is_never_adopted(
    world: World, resource: Any, name: str
) -> None:
    """Someone who may create Secrets in the namespace writes the policy's key Secret
    first: adopted, its keys (theirs) would sign every challenge."""
    ring = KeyRing.generate()
    planted = {
        "metadata": {"name": name, "namespace": NS},
        "data": {
            KEYRING_SECRET_KEY: base64.b64encode(ring.to_json().encode()).decode(),
            CONFIG_DATA_KEY: "{}",
        },
    }
    world.cluster.put(resource, planted)
    before = world.cluster.stored(resource, name, NS)
    world.cluster.put(POW_POLICIES, policy())
    await world.reconcile(evaluate=True)
    assert world.cluster.stored(resource, name, NS) == before
    status, reason = world.condition(ConditionType.READY)
    assert (status, reason) == (ConditionStatus.FALSE, "ObjectNotOwned")
    found = world.status().condition(ConditionType.READY)
    assert found is not None
    assert name in found.message
    assert ("Warning", "ObjectNotOwned") in [(k, r) for k, r, _ in world.events]
    # Removed by its owner: the operator makes its own and the policy is ready.
    world.cluster.objects.pop((resource.plural, NS, name))
    await world.reconcile()
    assert world.condition(ConditionType.READY)[0] is ConditionStatus.TRUE


# -- in-cluster bypass: the NetworkPolicy, and pods running without the sidecar -----------


def app_pod(name: str, **labels: str) -> dict[str, Any]:
    """A selected pod stored as sent: the webhook was down, or the pod opted out."""
    return {
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "chat", **labels}},
        "spec": {
            "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8000}]}]
        },
        "status": {"phase": "Running"},
    }


def with_ports(body: dict[str, Any]) -> dict[str, Any]:
    """An injected pod whose app also serves gRPC and whose sidecar forwards to port 8000."""
    body["spec"]["initContainers"][0]["ports"] = [
        {"name": "http", "containerPort": 8480},
        {"name": "powgate-metrics", "containerPort": 9480},
    ]
    body["spec"]["initContainers"][0]["env"] = [
        {"name": "POWGATE_UPSTREAM", "value": "http://127.0.0.1:8000"}
    ]
    body["spec"]["containers"][0]["ports"] = [
        {"name": "http-app", "containerPort": 8000},
        {"name": "grpc", "containerPort": 9000},
    ]
    return body


def network_policy(world: World) -> dict[str, Any] | None:
    name = network_policy_name(NAME)
    return (
        world.cluster.stored(NETWORK_POLICIES, name, NS)
        if world.cluster.has(NETWORK_POLICIES, name, NS)
        else None
    )


async def test_the_network_policy_admits_the_sidecar_and_other_ports_never_the_apps(
    world: World,
) -> None:
    world.cluster.put(POW_POLICIES, policy())
    await world.reconcile(pods=Pods(with_ports(sidecar_pod("a", "model"))))
    written = network_policy(world)
    assert written is not None
    spec = written["spec"]
    assert spec["podSelector"] == {"matchLabels": {POLICY_LABEL: NAME}}
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert "from" not in rule  # any source, but only to these ports
    assert sorted(str(p["port"]) for p in rule["ports"]) == ["grpc", "http", "powgate-metrics"]
    status = world.status().protection
    assert status is not None
    assert (status.injected_pods, status.network_policy) == (1, "Applied")
    # Off removes it.
    world.cluster.put(POW_POLICIES, policy(networkPolicy={"mode": "Off"}))
    await world.reconcile(pods=Pods(with_ports(sidecar_pod("a", "model"))))
    assert network_policy(world) is None
    protection = world.status().protection
    assert protection is not None
    assert protection.network_policy == "Off"


async def test_auto_leaves_a_namespace_with_its_own_network_policies_alone(world: World) -> None:
    """Ours admits every source to the sidecar; next to theirs it would widen them."""
    world.cluster.put(
        NETWORK_POLICIES,
        {
            "metadata": {"name": "only-from-ingress", "namespace": NS},
            "spec": {"podSelector": {"matchLabels": {"app": "chat"}}, "ingress": []},
        },
    )
    world.cluster.put(POW_POLICIES, policy())
    pods = Pods(with_ports(sidecar_pod("a", "model")))
    await world.reconcile(pods=pods)
    assert network_policy(world) is None
    protection = world.status().protection
    assert protection is not None
    assert protection.network_policy.startswith("NotWritten: NetworkPolicy only-from-ingress")
    world.cluster.put(POW_POLICIES, policy(networkPolicy={"mode": "Always"}))
    await world.reconcile(pods=pods)
    assert network_policy(world) is not None


async def test_a_network_policy_the_operator_did_not_create_is_never_adopted(
    world: World,
) -> None:
    world.cluster.put(
        NETWORK_POLICIES,
        {
            "metadata": {"name": network_policy_name(NAME), "namespace": NS},
            "spec": {"podSelector": {}, "ingress": [{}]},  # admits everything
        },
    )
    world.cluster.put(POW_POLICIES, policy(networkPolicy={"mode": "Always"}))
    await world.reconcile(pods=Pods(with_ports(sidecar_pod("a", "model"))))
    assert world.condition(ConditionType.READY) == (ConditionStatus.FALSE, "ObjectNotOwned")
    stored = network_policy(world)
    assert stored is not None
    assert stored["spec"]["ingress"] == [{}]


async def test_selected_pods_without_a_sidecar_are_reported_counted_and_announced(
    world: World,
) -> None:
    world.cluster.put(POW_POLICIES, policy())
    pods = Pods(
        sidecar_pod("a", "model"),
        app_pod("while-down"),
        app_pod("opted-out", **{OPT_OUT_LABEL: "false"}),
        app_pod("other-app", app="other"),
    )
    await world.reconcile(pods=pods)
    protection = world.status().protection
    assert protection is not None
    assert (protection.injected_pods, protection.unprotected_pods) == (1, 2)
    assert [(p.name, p.reason) for p in protection.unprotected] == [
        ("opted-out", "OptedOut"),
        ("while-down", "NotInjected"),
    ]
    assert world.condition(ConditionType.PODS_PROTECTED) == (
        ConditionStatus.FALSE,
        "UnprotectedPods",
    )
    assert [r for _, r, _ in world.events].count("UnprotectedPods") == 1
    gauge = metrics.UNPROTECTED_PODS.labels(f"{NS}/{NAME}")._value.get()
    assert gauge == 2
    # Recreated through the webhook: protected again.
    await world.reconcile(pods=Pods(sidecar_pod("a", "model"), sidecar_pod("b", "model")))
    assert world.condition(ConditionType.PODS_PROTECTED) == (
        ConditionStatus.TRUE,
        "AllPodsInjected",
    )
    assert metrics.UNPROTECTED_PODS.labels(f"{NS}/{NAME}")._value.get() == 0


async def test_pod_events_rewrite_the_network_policy_only_when_the_ports_change(
    world: World,
) -> None:
    world.cluster.put(POW_POLICIES, policy())
    first = Pods(with_ports(sidecar_pod("a", "model")))
    await world.reconcile(pods=first)
    reads = world.cluster.count("get", "PowPolicy")
    # Another pod of the same shape: no read, no write.
    same = Pods(with_ports(sidecar_pod("a", "model")), with_ports(sidecar_pod("b", "model")))
    await world.reconciler.follow_pods(namespace=NS, name=NAME, pods=same)
    assert world.cluster.count("get", "PowPolicy") == reads
    # A rollout adds a port: the NetworkPolicy follows at once.
    extra = with_ports(sidecar_pod("c", "model"))
    extra["spec"]["containers"][0]["ports"].append({"name": "admin", "containerPort": 9100})
    await world.reconciler.follow_pods(namespace=NS, name=NAME, pods=Pods(*same.bodies, extra))
    written = network_policy(world)
    assert written is not None
    (rule,) = written["spec"]["ingress"]
    assert "admin" in {str(p["port"]) for p in rule["ports"]}


async def test_a_network_policy_the_operator_may_not_write_is_said_in_status(
    world: World,
) -> None:
    """RBAC withheld (an installation without it): the rest of the policy still applies."""
    world.cluster.put(POW_POLICIES, policy())
    world.cluster.inject("list", NETWORK_POLICIES, error=ForbiddenError("forbidden", status=403))
    await world.reconcile(pods=Pods(with_ports(sidecar_pod("a", "model"))))
    protection = world.status().protection
    assert protection is not None
    assert protection.network_policy.startswith("Forbidden: ")
    assert world.condition(ConditionType.READY)[0] is ConditionStatus.TRUE
    assert world.cluster.has(CONFIG_MAPS, config_map_name(NAME), NS)
