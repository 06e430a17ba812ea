"""One reconcile of one PowPolicy: read it, decide, publish keys and config, write status.

Everything durable lives in the API server (difficulty, recommendations,
history, keys), so any replica can pick up where another stopped. Spec
events and the evaluation loop both run :meth:`Reconciler.reconcile`, one at
a time per policy, and it always starts from a fresh read of the object.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, cast

import kopf
from pydantic import ValidationError

from powgate import KeyRingError
from powgate.config import CONFIG_DATA_KEY, Mode, ReplayStoreSpec, SidecarConfig
from powgate.contract import POLICY_LABEL
from powgate.controller import Decision, Empty, Failure, Reading, Sample, evaluate, follow_bounds
from powgate.policy import (
    CREDENTIALS_LABEL,
    ConditionStatus,
    ConditionType,
    KeyStatus,
    LabelSelector,
    NetworkPolicyMode,
    PolicySpec,
    PolicyStatus,
    PricingStatus,
    ProtectionStatus,
    ReputationImport,
    ReputationSourceKind,
    RolloutStatus,
    UnprotectedPod,
    config_map_name,
    key_secret_name,
    last_raise,
    network_policy_name,
    render_config,
    reputation_name,
)
from powgate.pricing import API_KEYS_DATA_KEY, ApiKeyHashes
from powgate.reputation import (
    REPUTATION_DATA_KEY,
    ReputationEntry,
    ReputationList,
)

from . import _metrics as metrics
from ._cluster import (
    CONFIG_MAPS,
    NETWORK_POLICIES,
    POW_POLICIES,
    SECRETS,
    Cluster,
    ClusterError,
    ForbiddenError,
    Manifest,
    NotFoundError,
    PatchType,
    patch_status,
    read,
    update,
)
from ._grants import write_grants
from ._inject import selector_matches
from ._objects import (
    MANAGED_BY,
    ForeignObjectError,
    KeyState,
    config_map_body,
    key_secret_body,
    key_state_from_secret,
    network_policy_body,
    next_keys,
    owned_by,
    replay_store_conditions,
    reputation_export_body,
    set_condition,
    status_after,
)
from ._pods import PodFacts, PodView, injected_accounts
from ._prometheus import (
    NO_CREDENTIAL_ADDRESSES,
    CredentialAddresses,
    Credentials,
    FailureReason,
    SidecarKeys,
    Signals,
    StoreReach,
)
from ._reputation import learn, list_from_object, open_rates, published, read_import
from ._trust import api_key_hashes, api_key_secrets

__all__ = ["EventSink", "Reconciler", "StoreAddresses", "kopf_events"]

log = logging.getLogger("powgate.operator")

#: Posts a Kubernetes event about a policy: (policy, "Normal" or "Warning", reason, message).
EventSink = Callable[[Manifest, str, str, str], None]


def kopf_events(policy: Manifest, kind: str, reason: str, message: str) -> None:
    """Post an event about ``policy`` through kopf (it reads only the policy's identity)."""
    post = kopf.warn if kind == "Warning" else kopf.info
    post(kopf.Body(cast(kopf.RawBody, policy)), reason=reason, message=message)


#: Status is rewritten at least this often even when only timestamps moved, so the
#: "last seen" times of recommendations stay accurate across operator restarts; and
#: the owned objects are re-read at least this often, so a hand edit or deletion of
#: them is repaired within it. In between, what the operator last wrote is trusted:
#: with many policies, a read of each object on every evaluation would dominate.
STATUS_HEARTBEAT_SECONDS: Final = 60.0


@dataclass(frozen=True, slots=True)
class _Key:
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class _Network:
    """The NetworkPolicy as last decided: for which mode and pod ports, and its status."""

    mode: NetworkPolicyMode
    ports: str
    state: str


_NO_API_KEYS: Final = ApiKeyHashes().model_dump_json(by_alias=True)


@dataclass(frozen=True, slots=True)
class _Lists:
    """The reputation lists last written for a policy: its own, and what its sidecars apply."""

    own: tuple[ReputationEntry, ...] = ()
    applied: tuple[ReputationEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class StoreAddresses:
    """The replay-store addresses a policy may name (set by the operator's administrator).

    A policy's sidecars send the credentials of its store Secret to the
    address it names. Empty: any address (the chart's default store is always
    allowed); addresses compare as written, host case-insensitively.
    """

    entries: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str | None) -> StoreAddresses:
        """From a comma-separated list of ``HOST:PORT``; ``ValueError`` names a bad one."""
        entries = [e.strip() for e in (text or "").split(",") if e.strip()]
        for entry in entries:
            ReplayStoreSpec(address=entry)  # raises for anything but HOST:PORT
        return cls(frozenset(e.lower() for e in entries))

    def allows(self, address: str) -> bool:
        return not self.entries or address.lower() in self.entries

    def including(self, store: ReplayStoreSpec | None) -> StoreAddresses:
        """These and the address of ``store`` (the operator's default, always allowed)."""
        if store is None or not self.entries:
            return self
        return StoreAddresses(self.entries | {store.address.lower()})


class Reconciler:
    """Reconciles PowPolicies through a :class:`._cluster.Cluster` and a Prometheus reader."""

    def __init__(
        self,
        *,
        cluster: Cluster,
        reader: Signals,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        events: EventSink = kopf_events,
        credential_addresses: CredentialAddresses = NO_CREDENTIAL_ADDRESSES,
        default_store: ReplayStoreSpec | None = None,
        store_addresses: StoreAddresses | None = None,
    ) -> None:
        """``default_store``: the replay store of policies that name none (chart value);
        ``store_addresses``: the only ones a policy may name (None: any)."""
        self._cluster = cluster
        self._default_store = default_store
        self._store_addresses = (store_addresses or StoreAddresses()).including(default_store)
        self._reader = reader
        self._credential_addresses = credential_addresses
        self._event = events
        self._clock = clock
        self._locks: dict[_Key, asyncio.Lock] = {}
        self._last_write: dict[_Key, float] = {}
        self._rings: dict[_Key, tuple[KeyState, float]] = {}
        self._configs: dict[_Key, tuple[str, float]] = {}
        #: Service accounts last bound per policy (pod events compare against it).
        self._grants: dict[_Key, tuple[frozenset[str], float]] = {}
        self._grant_locks: dict[_Key, asyncio.Lock] = {}
        #: The NetworkPolicy last decided: for which mode and ports, and what status says.
        self._network: dict[_Key, tuple[_Network, float]] = {}
        self._reputation: dict[_Key, tuple[_Lists, float]] = {}
        self._api_keys: dict[_Key, tuple[str, float]] = {}

    def forget(self, *, namespace: str, name: str) -> None:
        """Drop what is kept in memory for a policy that is gone."""
        key = _Key(namespace, name)
        self._locks.pop(key, None)
        self._last_write.pop(key, None)
        self._rings.pop(key, None)
        self._configs.pop(key, None)
        self._grants.pop(key, None)
        self._grant_locks.pop(key, None)
        self._network.pop(key, None)
        with contextlib.suppress(KeyError):
            metrics.UNPROTECTED_PODS.remove(f"{namespace}/{name}")
        self._reputation.pop(key, None)
        self._api_keys.pop(key, None)

    async def retire(self, *, namespace: str, name: str) -> None:
        """A policy is being deleted: its sidecars stop charging (``mode: off``).

        The last document its sidecars receive says so before the ConfigMap is
        collected with the policy: a sidecar keeps the last config it had when
        its object disappears (as during an API-server outage, when it must keep
        charging), so the deletion has to be told, not inferred.
        """
        key = _Key(namespace, name)
        config_name = config_map_name(name)

        def switched_off(current: Manifest | None) -> Manifest | None:
            if current is None or not _owned_by_policy(current, name):
                return None
            try:
                config = SidecarConfig.from_json((current.get("data") or {})[CONFIG_DATA_KEY])
            except (KeyError, ValidationError):
                return None  # nothing a sidecar could apply: it keeps what it has
            if config.mode is Mode.OFF:
                return None
            off = config.model_copy(update={"mode": Mode.OFF})
            off = off.model_copy(update={"version": off.content_version()})
            return {**current, "data": {**current["data"], CONFIG_DATA_KEY: off.to_json()}}

        async with self._locks.setdefault(key, asyncio.Lock()):
            await update(
                self._cluster, CONFIG_MAPS, config_name, namespace=namespace, change=switched_off
            )
        self.forget(namespace=namespace, name=name)

    async def reconcile(
        self,
        *,
        namespace: str,
        name: str,
        evaluate_signals: bool,
        pods: PodView | None = None,
    ) -> None:
        """Bring one policy's objects and status up to date; with signals, also decide.

        ``pods``: the namespace's pods as the operator knows them (None: not
        known yet; what depends on them is left as it is).
        """
        key = _Key(namespace, name)
        trigger = "evaluation" if evaluate_signals else "spec"
        started = time.perf_counter()
        async with self._locks.setdefault(key, asyncio.Lock()):
            try:
                result = await self._reconcile(key, evaluate_signals=evaluate_signals, pods=pods)
            except ClusterError as exc:
                metrics.RECONCILES.labels(
                    trigger, f"HTTP{exc.status}" if exc.status else "error"
                ).inc()
                raise
            except Exception:
                metrics.RECONCILES.labels(trigger, "error").inc()
                raise
            metrics.RECONCILES.labels(trigger, result).inc()
        metrics.RECONCILE_SECONDS.labels(trigger).observe(time.perf_counter() - started)

    async def follow_pods(self, *, namespace: str, name: str, pods: PodView) -> None:
        """Bring the binding and the NetworkPolicy up to the policy's pods, if they changed.

        Called on every event of a pod carrying the policy's sidecar: cheap
        when nothing changed (no API call); when an account appears or its
        last pod goes, or the pods declare other ports, one read of the policy
        and the writes that follow.
        """
        key = _Key(namespace, name)
        here = pods.in_namespace(namespace)
        accounts = frozenset(injected_accounts(here, name))
        network = _fresh(self._network.get(key))
        ports = _ports_signature(here, name)
        same_ports = network is None or network.ports == ports
        if _fresh(self._grants.get(key)) == accounts and same_ports:
            return
        async with self._grant_locks.setdefault(key, asyncio.Lock()):
            policy = await self._get_policy(key)
            if policy is None or policy["metadata"].get("deletionTimestamp"):
                return
            try:
                if _fresh(self._grants.get(key)) != accounts:
                    await write_grants(self._cluster, policy, accounts)
                    self._grants[key] = (accounts, time.monotonic())
                if network is not None and network.ports != ports:
                    spec = PolicySpec.model_validate(policy.get("spec") or {})
                    await self._ensure_network_policy(key, policy, spec, here)
            except (ForeignObjectError, ValidationError) as exc:
                # Reported in the policy's status by its next reconcile.
                log.error("%s/%s: %s", namespace, name, exc)
            except ClusterError as exc:
                metrics.GRANT_ERRORS.inc()
                log.error("%s/%s: following its pods failed: %s", namespace, name, exc)

    async def _reconcile(self, key: _Key, *, evaluate_signals: bool, pods: PodView | None) -> str:
        """One reconcile; returns its result for the metric ("ok" or what was wrong)."""
        policy = await self._get_policy(key)
        if policy is None or policy["metadata"].get("deletionTimestamp"):
            return "gone"
        try:
            return await self._reconcile_policy(
                key, policy, evaluate_signals=evaluate_signals, pods=pods
            )
        except ForeignObjectError as exc:
            metrics.FOREIGN_OBJECTS.inc()
            await self._report_unusable(
                key,
                policy,
                generation=int(policy["metadata"].get("generation", 0)),
                reason="ObjectNotOwned",
                message=str(exc),
                now=self._clock(),
            )
            return "ObjectNotOwned"

    async def _reconcile_policy(
        self, key: _Key, policy: Manifest, *, evaluate_signals: bool, pods: PodView | None
    ) -> str:
        now = self._clock()
        generation = int(policy["metadata"].get("generation", 0))
        try:
            spec = PolicySpec.model_validate(policy.get("spec") or {})
        except ValidationError as exc:
            # The CRD rejects such specs; this guards against a CRD older than the operator.
            message = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            await self._report_unusable(
                key, policy, generation=generation, reason="InvalidSpec", message=message, now=now
            )
            return "InvalidSpec"
        store = spec.replay.store
        if store is not None and not self._store_addresses.allows(store.address):
            # Its sidecars would send the store's credentials there: the last config stays.
            message = (
                f"replay.store.address {store.address} is not among the operator's replay "
                "store addresses (--replay-store-addresses); the last published config stays"
            )
            await self._report_unusable(
                key,
                policy,
                generation=generation,
                reason="ReplayStoreNotAllowed",
                message=message,
                now=now,
            )
            return "ReplayStoreNotAllowed"
        previous = _previous_status(policy)

        decision: Decision | None
        rollout: RolloutStatus | None = None
        if evaluate_signals:
            credentials = await self._credentials(key, spec)
            readings = await self._read_signals(key, spec, credentials)
            decision = evaluate(spec=spec, status=previous, readings=readings, now=now)
        else:
            credentials = None
            decision = follow_bounds(spec=spec, status=previous, now=now)
        difficulty = (
            decision.difficulty
            if decision is not None
            else spec.difficulty.clamp(previous.difficulty or spec.difficulty.start)
        )
        observe: Callable[[], Awaitable[SidecarKeys | None]] | None = None
        if evaluate_signals:

            async def observe() -> SidecarKeys | None:
                if isinstance(credentials, Failure):
                    return None  # Prometheus is not asked without usable credentials
                return await self._sidecar_keys(key, spec, credentials)

        keys_problem, key_status = await self._ensure_keys(
            key, policy, spec, now=now, observe=observe
        )
        history = decision.history if decision is not None else previous.history
        config = render_config(
            spec=spec,
            namespace=key.namespace,
            name=key.name,
            difficulty=difficulty,
            raised_at=last_raise(history),
            default_store=self._default_store,
        )
        await self._ensure_config(key, policy, config)
        protection: ProtectionStatus | None = None
        if pods is not None:
            await self._ensure_grants(key, policy, pods)
            protection = await self._ensure_protection(key, policy, spec, pods)
        # Prometheus is asked only on evaluations, and only with usable credentials.
        reachable = evaluate_signals and not isinstance(credentials, Failure)
        usable = None if isinstance(credentials, Failure) else credentials
        reach: StoreReach | Failure | None = None
        if reachable:
            rollout = await self._rollout(key, spec, usable, config.version)
            if config.replay_store is not None:
                reach = await self._reader.replay_store(
                    prometheus=spec.prometheus,
                    credentials=usable,
                    policy=f"{key.namespace}/{key.name}",
                )
        pricing = await self._ensure_pricing(
            key, policy, spec, credentials=usable, gather=reachable and not keys_problem, now=now
        )

        status = status_after(
            previous=previous,
            spec=spec,
            generation=generation,
            decision=decision,
            config=config,
            rollout=rollout,
            now=now,
        )
        status = status.model_copy(
            update={
                "pricing": pricing,
                "conditions": replay_store_conditions(
                    status.conditions, store=config.replay_store, reach=reach, now=now
                ),
            }
        )
        self._announce_store(policy, previous, status)
        if key_status is not None:
            status = status.model_copy(update={"keys": key_status})
        if protection is not None:
            status = self._protected(policy, previous, status, protection, now=now)
        if keys_problem:
            status = status.model_copy(
                update={
                    "conditions": set_condition(
                        status.conditions,
                        kind=ConditionType.READY,
                        status=ConditionStatus.FALSE,
                        reason="KeySecretInvalid",
                        message=keys_problem,
                        now=now,
                    )
                }
            )
        await self._write_status(key, previous=previous, status=status)
        if decision is not None:
            self._announce(policy, decision)
        return "KeySecretInvalid" if keys_problem else "ok"

    def _announce_store(
        self, policy: Manifest, previous: PolicyStatus, status: PolicyStatus
    ) -> None:
        """An event when the sidecars are seen to lose, or to reach, the replay store."""
        kind = ConditionType.REPLAY_STORE_AVAILABLE
        before, now = previous.condition(kind), status.condition(kind)
        if now is None or now.status is ConditionStatus.UNKNOWN:
            return
        if before is not None and before.status is now.status:
            return
        severity = "Warning" if now.status is ConditionStatus.FALSE else "Normal"
        self._event(policy, severity, now.reason, now.message)

    # -- reads ------------------------------------------------------------------

    async def _get_policy(self, key: _Key) -> Manifest | None:
        return await read(self._cluster, POW_POLICIES, key.name, namespace=key.namespace)

    async def _read_secret(self, key: _Key, name: str) -> Manifest | None:
        return await read(self._cluster, SECRETS, name, namespace=key.namespace)

    async def _credentials(self, key: _Key, spec: PolicySpec) -> Credentials | Failure | None:
        ref = spec.prometheus.auth_secret_ref
        if ref is None:
            return None
        # A policy author chooses both the Secret and the address: without these checks a
        # policy could send any Secret of its namespace (a service-account token) anywhere.
        if not self._credential_addresses.allows(spec.prometheus.address):
            return Failure(
                FailureReason.CREDENTIALS,
                "prometheus.address is not among the operator's credential addresses "
                "(--prometheus-credential-addresses): credentials are not sent there",
            )
        try:
            secret = await self._read_secret(key, ref.name)
        except ClusterError as exc:
            return Failure(FailureReason.CREDENTIALS, f"Secret {ref.name}: HTTP {exc.status}")
        if secret is None:
            return Failure(FailureReason.CREDENTIALS, f"Secret {ref.name} does not exist")
        kind = secret.get("type") or "Opaque"
        labels = (secret.get("metadata") or {}).get("labels") or {}
        if kind != "Opaque" or labels.get(CREDENTIALS_LABEL) != "true":
            return Failure(
                FailureReason.CREDENTIALS,
                f"Secret {ref.name} is not an Opaque Secret labelled {CREDENTIALS_LABEL}=true",
            )
        try:
            data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
            return Credentials.from_secret_data(data)
        except (ValueError, UnicodeDecodeError) as exc:
            return Failure(FailureReason.CREDENTIALS, f"Secret {ref.name}: {exc}")

    async def _read_signals(
        self, key: _Key, spec: PolicySpec, credentials: Credentials | Failure | None
    ) -> dict[str, Reading]:
        if not spec.signals:
            return {}
        if isinstance(credentials, Failure):
            readings: dict[str, Reading] = {s.name: credentials for s in spec.signals}
        else:
            started = time.perf_counter()
            readings = await self._reader.read(
                prometheus=spec.prometheus,
                credentials=credentials,
                signals=spec.signals,
                namespace=key.namespace,
                name=key.name,
            )
            metrics.QUERY_SECONDS.observe(time.perf_counter() - started)
        for reading in readings.values():
            metrics.QUERIES.labels(_outcome(reading)).inc()
        return readings

    async def _rollout(
        self, key: _Key, spec: PolicySpec, credentials: Credentials | None, version: str
    ) -> RolloutStatus | None:
        result = await self._reader.rollout(
            prometheus=spec.prometheus,
            credentials=credentials,
            policy=f"{key.namespace}/{key.name}",
            version=version,
        )
        if isinstance(result, Failure):
            # Rollout is informational: keep the last known numbers rather than report zero.
            log.debug("rollout of %s/%s unknown: %s", key.namespace, key.name, result.message)
            return None
        return result

    # -- writes -----------------------------------------------------------------

    async def _ensure_keys(
        self,
        key: _Key,
        policy: dict[str, Any],
        spec: PolicySpec,
        *,
        now: datetime,
        observe: Callable[[], Awaitable[SidecarKeys | None]] | None,
    ) -> tuple[str, KeyStatus | None]:
        """Create or rotate the key Secret: (a message when it cannot be used, key status).

        A missing ring is created on any reconcile; rotation advances only on
        evaluations (``observe`` given), since each phase may wait for the
        sidecars, which are asked only while a rotation is under way.
        """
        name = key_secret_name(key.name)
        stored = _fresh(self._rings.get(key))
        exists = stored is not None
        if stored is None:
            secret = await self._read_secret(key, name)
            if secret is not None and not owned_by(secret, policy):
                raise ForeignObjectError("Secret", name, "not created by the operator")
            try:
                stored = key_state_from_secret(secret)
            except (KeyRingError, ValueError) as exc:
                message = f"Secret {name} holds no valid key ring ({exc}); delete it to regenerate"
                self._event(policy, "Warning", "KeySecretInvalid", message)
                return message, None
            exists = secret is not None
        seen: SidecarKeys | None = None
        if stored is not None and observe is None:
            wanted = stored
        else:
            if stored is not None and stored.rotating and observe is not None:
                seen = await observe()
            wanted = next_keys(
                stored,
                keys=spec.keys,
                lifetime_seconds=spec.challenge.lifetime_seconds,
                now=int(now.timestamp()),
                seen=seen,
            )
        if wanted != stored:
            body = key_secret_body(policy, wanted)
            if not exists:
                await self._cluster.create(SECRETS, body)
                self._event(policy, "Normal", "KeysCreated", f"key {wanted.ring.active} signs")
            else:
                await self._cluster.patch(
                    SECRETS, name, body, namespace=key.namespace, patch_type=PatchType.STRATEGIC
                )
                if stored is not None and wanted.ring.active != stored.ring.active:
                    self._event(
                        policy, "Normal", "KeyRotated", f"key {wanted.ring.active} signs now"
                    )
        self._rings[key] = (wanted, time.monotonic())
        return "", None if observe is None else _key_status(wanted, seen)

    async def _sidecar_keys(
        self, key: _Key, spec: PolicySpec, credentials: Credentials | None
    ) -> SidecarKeys | None:
        result = await self._reader.sidecar_keys(
            prometheus=spec.prometheus,
            credentials=credentials,
            policy=f"{key.namespace}/{key.name}",
        )
        if isinstance(result, Failure):
            # Not observable now: the rotation's phases wait keys.propagationSeconds instead.
            log.info("keys of %s/%s unknown: %s", key.namespace, key.name, result.message)
            return None
        return result

    async def _ensure_config(
        self, key: _Key, policy: dict[str, Any], config: SidecarConfig
    ) -> None:
        if _fresh(self._configs.get(key)) == config.version:
            return
        name = config_map_name(key.name)
        body = config_map_body(policy, config)
        current = await read(self._cluster, CONFIG_MAPS, name, namespace=key.namespace)
        if current is not None and not owned_by(current, policy):
            raise ForeignObjectError("ConfigMap", name, "not created by the operator")
        if current is None:
            await self._cluster.create(CONFIG_MAPS, body)
        elif (current.get("data") or {}).get(CONFIG_DATA_KEY) != body["data"][CONFIG_DATA_KEY]:
            # Only the document: the reputation list beside it is written on its own.
            await self._cluster.patch(
                CONFIG_MAPS, name, body, namespace=key.namespace, patch_type=PatchType.STRATEGIC
            )
        self._configs[key] = (config.version, time.monotonic())

    async def _ensure_pricing(
        self,
        key: _Key,
        policy: Manifest,
        spec: PolicySpec,
        *,
        credentials: Credentials | None,
        gather: bool,
        now: datetime,
    ) -> PricingStatus | None:
        """Trusted API keys, the policy's own reputation list and the list its sidecars apply."""
        api_keys, problems = await self._ensure_api_keys(key, policy, spec)
        if not spec.pricing.enabled:
            return (
                PricingStatus(api_keys=api_keys, problems=problems[:8])
                if spec.trusted_callers
                else None
            )
        unix_now = int(now.timestamp())
        state = await self._reputation_state(key)
        own: tuple[ReputationEntry, ...] = ()
        if spec.reputation.share:
            rates = await self._heavy_clients(key, spec, credentials) if gather else {}
            own = learn(state.own, rates, spec=spec, now=unix_now)
        imports = [
            read_import(source, await self._import_object(key, source), spec=spec, now=unix_now)
            for source in spec.reputation.imports
        ]
        applied = published(own, imports, spec=spec, now=unix_now)
        source = f"{key.namespace}/{key.name}"
        if spec.reputation.share and own != state.own:
            await self._write_list(
                key, policy, reputation_name(key.name), own, source=source, now=unix_now
            )
        if applied != state.applied:
            await self._write_list(
                key, policy, config_map_name(key.name), applied, source=source, now=unix_now
            )
        self._reputation[key] = (_Lists(own, applied), time.monotonic())
        problems += [imported.problem for imported in imports if imported.problem]
        return PricingStatus(
            reputation_entries=len(applied),
            learnt=len(own),
            imported=sum(len(imported.entries) for imported in imports),
            api_keys=api_keys,
            problems=problems[:8],
        )

    async def _ensure_api_keys(
        self, key: _Key, policy: Manifest, spec: PolicySpec
    ) -> tuple[int, list[str]]:
        """Copy the trusted API-key digests into the key Secret; (how many, problems).

        Sidecars apply digests only for the API-key callers their config
        names, so a policy without any never needs the document: it is
        emptied once when the last such caller goes, and not read after.
        """
        names = api_key_secrets(spec)
        if not names and _fresh(self._api_keys.get(key)) in (None, _NO_API_KEYS):
            return 0, []
        secrets: dict[str, Manifest | None] = {}
        for name in names:
            try:
                secrets[name] = await self._read_secret(key, name)
            except ClusterError as exc:
                # Unreadable for now (not absent): the sidecars keep the digests they hold.
                return 0, [f"Secret {name}: HTTP {exc.status}; trusted API keys unchanged"]
        hashes, problems = api_key_hashes(spec, secrets)
        text = hashes.model_dump_json(by_alias=True)
        if _fresh(self._api_keys.get(key)) != text:
            secret = await self._read_secret(key, key_secret_name(key.name))
            encoded = base64.b64encode(text.encode()).decode()
            stored = ((secret or {}).get("data") or {}).get(API_KEYS_DATA_KEY)
            if secret is not None and stored != encoded and (names or stored is not None):
                await self._cluster.patch(
                    SECRETS,
                    key_secret_name(key.name),
                    {"data": {API_KEYS_DATA_KEY: encoded}},
                    namespace=key.namespace,
                    patch_type=PatchType.STRATEGIC,
                )
            if secret is not None:
                self._api_keys[key] = (text, time.monotonic())
        for problem in problems:
            log.warning("%s/%s: %s", key.namespace, key.name, problem)
        return sum(len(digests) for digests in hashes.callers.values()), problems

    async def _reputation_state(self, key: _Key) -> _Lists:
        """What was last written: from memory, or read back (a new or restarted operator)."""
        known = _fresh(self._reputation.get(key))
        if known is not None:
            return known
        lists = []
        for name in (reputation_name(key.name), config_map_name(key.name)):
            stored = await read(self._cluster, CONFIG_MAPS, name, namespace=key.namespace)
            try:
                entries = list_from_object(stored, key=REPUTATION_DATA_KEY, secret=False).entries
            except ValueError:
                entries = ()
            lists.append(entries)
        return _Lists(*lists)

    async def _heavy_clients(
        self, key: _Key, spec: PolicySpec, credentials: Credentials | None
    ) -> dict[str, float]:
        """Client key → fleet-wide rate of the clients the sidecars report as their heaviest."""
        state = _fresh(self._rings.get(key))
        if state is None:
            return {}
        ring = state.ring
        sealed = await self._reader.heavy_clients(
            prometheus=spec.prometheus,
            credentials=credentials,
            policy=f"{key.namespace}/{key.name}",
        )
        if isinstance(sealed, Failure):
            log.debug("heavy clients of %s/%s unknown: %s", key.namespace, key.name, sealed.message)
            return {}
        rates, unreadable = open_rates(sealed, ring=ring, now=self._clock().timestamp())
        if unreadable:
            metrics.REPUTATION_LABELS.labels("unreadable").inc(unreadable)
        metrics.REPUTATION_LABELS.labels("opened").inc(len(sealed) - unreadable)
        return rates

    async def _import_object(self, key: _Key, source: ReputationImport) -> Manifest | None:
        resource = SECRETS if source.kind is ReputationSourceKind.SECRET else CONFIG_MAPS
        try:
            return await read(self._cluster, resource, source.name, namespace=key.namespace)
        except ClusterError as exc:
            log.warning(
                "import %s of %s/%s: HTTP %s", source.name, key.namespace, key.name, exc.status
            )
            return None

    async def _write_list(
        self,
        key: _Key,
        policy: Manifest,
        name: str,
        entries: tuple[ReputationEntry, ...],
        *,
        source: str,
        now: int,
    ) -> None:
        """Write a list under ``reputation.json`` of a ConfigMap, creating the export if absent."""
        text = ReputationList(source=source, generated=now, entries=entries).to_json()
        current = await read(self._cluster, CONFIG_MAPS, name, namespace=key.namespace)
        if current is None:
            await self._cluster.create(CONFIG_MAPS, reputation_export_body(policy, text))
            return
        if not owned_by(current, policy):
            raise ForeignObjectError("ConfigMap", name, "not created by the operator")
        await self._cluster.patch(
            CONFIG_MAPS,
            name,
            {"data": {REPUTATION_DATA_KEY: text}},
            namespace=key.namespace,
            patch_type=PatchType.STRATEGIC,
        )

    async def _ensure_grants(self, key: _Key, policy: Manifest, pods: PodView) -> None:
        """The Role's rules and the RoleBinding's accounts, re-read each heartbeat.

        Pod events keep the binding current (:meth:`grant`); this catches
        what they cannot: a policy created after its pods (re-created under
        the same name), a hand edit, a Role an older operator wrote.
        """
        accounts = frozenset(injected_accounts(pods.in_namespace(key.namespace), key.name))
        if _fresh(self._grants.get(key)) == accounts:
            return
        async with self._grant_locks.setdefault(key, asyncio.Lock()):
            await write_grants(self._cluster, policy, accounts)
            self._grants[key] = (accounts, time.monotonic())

    async def _ensure_protection(
        self, key: _Key, policy: Manifest, spec: PolicySpec, pods: PodView
    ) -> ProtectionStatus:
        """The NetworkPolicy, and which selected pods run without the sidecar."""
        here = pods.in_namespace(key.namespace)
        injected = [p for p in here if p.sidecar_of == key.name and not p.finished]
        bare = sorted(
            (p.name, str(reason))
            for p in here
            if (reason := p.unprotected(key.name, spec.selector)) is not None
        )
        metrics.UNPROTECTED_PODS.labels(f"{key.namespace}/{key.name}").set(len(bare))
        return ProtectionStatus(
            injected_pods=len(injected),
            unprotected_pods=len(bare),
            unprotected=[UnprotectedPod(name=n, reason=r) for n, r in bare[:10]],
            # Status holds 256 characters; a long name in the reason must not break it.
            network_policy=(await self._ensure_network_policy(key, policy, spec, here))[:256],
        )

    async def _ensure_network_policy(
        self, key: _Key, policy: Manifest, spec: PolicySpec, pods: Sequence[PodFacts]
    ) -> str:
        """Write, keep or remove the policy's NetworkPolicy; what status says of it."""
        mode = spec.network_policy.mode
        ports = _ports_signature(pods, key.name)
        known = _fresh(self._network.get(key))
        if known is not None and (known.mode, known.ports) == (mode, ports):
            return known.state
        try:
            state = await self._write_network_policy(key, policy, mode, pods)
        except ForbiddenError as exc:
            # Not the policy's fault: the chart (or whoever installed the operator)
            # withheld NetworkPolicies. Said in status, tried again after the heartbeat.
            log.warning("%s/%s: NetworkPolicy not managed: %s", key.namespace, key.name, exc)
            state = f"Forbidden: the operator may not manage NetworkPolicies here ({exc})"
        self._network[key] = (_Network(mode, ports, state), time.monotonic())
        return state

    async def _write_network_policy(
        self, key: _Key, policy: Manifest, mode: NetworkPolicyMode, pods: Sequence[PodFacts]
    ) -> str:
        name = network_policy_name(key.name)
        if mode is NetworkPolicyMode.OFF:
            await self._remove_network_policy(key, policy, name)
            return "Off"
        if mode is NetworkPolicyMode.AUTO:
            others = sorted(
                other["metadata"]["name"]
                for other in await self._cluster.list_objects(
                    NETWORK_POLICIES, namespace=key.namespace
                )
                if not owned_by(other, policy) and _isolates_any(other, pods, key.name)
            )
            if others:
                # Ours admits every source to the sidecar: next to theirs it would widen them.
                await self._remove_network_policy(key, policy, name)
                return (
                    f"NotWritten: NetworkPolicy {others[0]} also selects the pods (let it admit "
                    "the sidecar's ports, or set networkPolicy.mode Always)"
                )
        wanted = network_policy_body(policy, pods)

        def to_wanted(current: Manifest | None) -> Manifest | None:
            if current is None:
                return wanted
            if not owned_by(current, policy):
                raise ForeignObjectError("NetworkPolicy", name, "not created by the operator")
            if current.get("spec") == wanted["spec"]:
                return None
            return {**current, "spec": wanted["spec"]}

        namespace = key.namespace
        await update(self._cluster, NETWORK_POLICIES, name, namespace=namespace, change=to_wanted)
        return "Applied"

    async def _remove_network_policy(self, key: _Key, policy: Manifest, name: str) -> None:
        current = await read(self._cluster, NETWORK_POLICIES, name, namespace=key.namespace)
        if current is not None and owned_by(current, policy):
            with contextlib.suppress(NotFoundError):
                await self._cluster.delete(NETWORK_POLICIES, name, namespace=key.namespace)

    def _protected(
        self,
        policy: Manifest,
        previous: PolicyStatus,
        status: PolicyStatus,
        protection: ProtectionStatus,
        *,
        now: datetime,
    ) -> PolicyStatus:
        """``status`` with the protection and its condition; an event when pods lose it."""
        if protection.unprotected_pods:
            names = ", ".join(f"{p.name} ({p.reason})" for p in protection.unprotected)
            condition = (
                ConditionStatus.FALSE,
                "UnprotectedPods",
                f"{protection.unprotected_pods} selected pod(s) run without the sidecar: {names}; "
                "recreate them (kubectl rollout restart) once the webhook answers",
            )
            before = previous.protection.unprotected_pods if previous.protection else 0
            if before == 0:
                self._event(policy, "Warning", "UnprotectedPods", condition[2])
        else:
            condition = (ConditionStatus.TRUE, "AllPodsInjected", "")
        return status.model_copy(
            update={
                "protection": protection,
                "conditions": set_condition(
                    status.conditions,
                    kind=ConditionType.PODS_PROTECTED,
                    status=condition[0],
                    reason=condition[1],
                    message=condition[2],
                    now=now,
                ),
            }
        )

    async def _write_status(
        self, key: _Key, *, previous: PolicyStatus, status: PolicyStatus
    ) -> None:
        heartbeat_due = (
            time.monotonic() - self._last_write.get(key, float("-inf")) >= STATUS_HEARTBEAT_SECONDS
        )
        if _essence(status) == _essence(previous) and not heartbeat_due:
            return
        await patch_status(
            self._cluster,
            POW_POLICIES,
            key.name,
            namespace=key.namespace,
            status=status.model_dump(mode="json", by_alias=True, exclude_none=True),
        )
        self._last_write[key] = time.monotonic()

    async def _report_unusable(
        self,
        key: _Key,
        policy: dict[str, Any],
        *,
        generation: int,
        reason: str,
        message: str,
        now: datetime,
    ) -> None:
        """A spec the operator will not render: ``Ready=False`` and an event, nothing else."""
        message = message[:1024]
        self._event(policy, "Warning", reason, message)
        previous = _previous_status(policy)
        status = previous.model_copy(
            update={
                "observed_generation": generation,
                "conditions": set_condition(
                    previous.conditions,
                    kind=ConditionType.READY,
                    status=ConditionStatus.FALSE,
                    reason=reason,
                    message=message,
                    now=now,
                ),
            }
        )
        await self._write_status(key, previous=previous, status=status)

    def _announce(self, policy: dict[str, Any], decision: Decision) -> None:
        name = f"{policy['metadata']['namespace']}/{policy['metadata']['name']}"
        metrics.DECISIONS.labels(decision.reason.value, str(decision.changed).lower()).inc()
        metrics.DIFFICULTY.labels(name).set(decision.difficulty)
        if decision.changed:
            self._event(
                policy,
                "Normal",
                "DifficultyChanged",
                f"{decision.previous} → {decision.difficulty} ({decision.reason}): "
                f"{decision.message}",
            )


T = TypeVar("T")


def _fresh(entry: tuple[T, float] | None) -> T | None:
    """A remembered value, if it was written or read within the heartbeat."""
    if entry is None or time.monotonic() - entry[1] >= STATUS_HEARTBEAT_SECONDS:
        return None
    return entry[0]


def _ports_signature(pods: Sequence[PodFacts], policy: str) -> str:
    """The ports the policy's injected pods declare: the NetworkPolicy follows them."""
    return json.dumps(
        sorted(
            {
                (port.protocol, port.name, port.number)
                for pod in pods
                if pod.sidecar_of == policy
                for port in (*pod.sidecar_ports, *pod.other_ports)
            }
        )
    )


def _isolates_any(other: Manifest, pods: Sequence[PodFacts], policy: str) -> bool:
    """Whether a NetworkPolicy restricts ingress to any pod carrying the policy's sidecar."""
    spec = other.get("spec") or {}
    # Without policyTypes a NetworkPolicy restricts ingress (and egress too with rules).
    types = spec.get("policyTypes") or ["Ingress"]
    if "Ingress" not in types:
        return False
    try:
        selector = LabelSelector.model_validate(spec.get("podSelector") or {})
    except ValidationError:
        return True  # unreadable: assume it does, and write nothing that could widen it
    return any(p.sidecar_of == policy and selector_matches(selector, p.labels) for p in pods)


def _owned_by_policy(obj: Manifest, policy: str) -> bool:
    """Made by the operator for a policy of this name (its uid is not known any more)."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    return (
        labels.get("app.kubernetes.io/managed-by") == MANAGED_BY
        and labels.get(POLICY_LABEL) == policy
    )


def _key_status(state: KeyState, seen: SidecarKeys | None) -> KeyStatus:
    pending = state.pending()
    retiring = state.retiring()
    sidecars = seen.sidecars if seen is not None and seen.sidecars else None
    ready = None
    if sidecars is not None and seen is not None:
        if retiring:
            ready = seen.signing.get(state.ring.active, 0)
        elif pending is not None:
            ready = seen.held.get(pending.kid, 0)
    return KeyStatus(
        active=state.ring.active,
        pending="" if pending is None else pending.kid,
        retiring=[k.kid for k in retiring],
        sidecars=sidecars,
        ready=ready,
    )


def _previous_status(policy: dict[str, Any]) -> PolicyStatus:
    try:
        return PolicyStatus.model_validate(policy.get("status") or {})
    except ValidationError as exc:
        # Only the operator writes status; an unreadable one (a hand edit) restarts the
        # history but never the difficulty, which is salvaged when it is a valid number.
        log.warning(
            "status of %s is unreadable, rebuilding it: %s", policy["metadata"]["name"], exc
        )
        raw = (policy.get("status") or {}).get("difficulty")
        try:
            return PolicyStatus(difficulty=raw)
        except ValidationError:
            return PolicyStatus()


def _essence(status: PolicyStatus) -> dict[str, Any]:
    """The status without the timestamps that move on every evaluation."""
    return status.model_dump(
        mode="json",
        exclude={
            "last_decision": {"time"},
            "recommendations": True,
            "signals": {"__all__": {"last_success_time"}},
        },
    )


def _outcome(reading: Reading) -> str:
    match reading:
        case Sample():
            return "OK"
        case Empty():
            return "Empty"
        case Failure(reason=reason):
            return reason
