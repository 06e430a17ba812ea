"""Pure builders of what the operator writes: key rotation, owned objects, status.

No I/O here: :mod:`._reconcile` reads the cluster, calls these, and writes
the results, so every rule is unit-tested without a cluster.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

from powgate import HmacKey, KeyRing
from powgate._keys import new_secret
from powgate.config import CONFIG_DATA_KEY, ReplayStoreSpec, SidecarConfig, StoreOutage
from powgate.contract import (
    KEYRING_SECRET_KEY,
    METRICS_PORT_NAME,
    NAMESPACE_LABEL,
    NAMESPACE_LABEL_REQUIRED,
    NAMESPACE_LABEL_VALUE,
    OPT_OUT_LABEL,
    POLICY_LABEL,
    REPLAY_STORE_UP_METRIC,
)
from powgate.controller import Decision, Failure
from powgate.policy import (
    API_VERSION,
    KIND,
    REPUTATION_SOURCE_LABEL,
    Condition,
    ConditionStatus,
    ConditionType,
    KeyRotationSpec,
    LastDecision,
    PolicySpec,
    PolicyStatus,
    RolloutStatus,
    SignalHealth,
    SignalStatus,
    config_map_name,
    key_secret_name,
    network_policy_name,
    reputation_name,
)
from powgate.reputation import REPUTATION_DATA_KEY

from ._pods import PodFacts
from ._prometheus import SidecarKeys, StoreReach

__all__ = [
    "HANDLER_ID",
    "HOOKS",
    "MANAGED_BY",
    "SWITCHED_AT_ANNOTATION",
    "WEBHOOK_NAME",
    "ForeignObjectError",
    "Hook",
    "KeyState",
    "config_map_body",
    "key_secret_body",
    "key_state_from_secret",
    "network_policy_body",
    "next_keys",
    "owned_by",
    "owner_reference",
    "replay_store_conditions",
    "reputation_export_body",
    "ring_from_secret",
    "role_binding_body",
    "role_body",
    "role_name",
    "set_condition",
    "status_after",
    "webhook_configuration_body",
]

MANAGED_BY: Final = "powgate-operator"


@dataclass(frozen=True, slots=True)
class Hook:
    """One webhook of the configuration: which namespaces it serves, and how strictly."""

    #: The webhook's name in the configuration.
    name: str
    #: kopf routes ``<server>/<handler id>`` to the handler: the path in the client config.
    handler: str
    #: The value of the namespace label ``powgate.dev/injection`` it serves.
    label_value: str
    #: Fail: the API server refuses pods while the webhook cannot answer, and the handler
    #: refuses a selected pod it cannot inject. None: the configured failure policy.
    failure_policy: str | None


#: Namespaces labelled ``enabled``: pods are never blocked by powgate (the chart's
#: failurePolicy, Ignore by default); ``required``: no selected pod runs without the sidecar.
HOOKS: Final = (
    Hook("inject.powgate.dev", "inject", NAMESPACE_LABEL_VALUE, None),
    Hook("inject-required.powgate.dev", "inject-required", NAMESPACE_LABEL_REQUIRED, "Fail"),
)
HANDLER_ID: Final = HOOKS[0].handler
WEBHOOK_NAME: Final = HOOKS[0].name
_KID = re.compile(r"^k(\d{1,12})$")


# -- keys ---------------------------------------------------------------------


def _kid(now: int) -> str:
    # The id records when the key was made: rotation needs no other state.
    return f"k{now}"


def _created(key: HmacKey) -> int:
    match = _KID.match(key.kid)
    # A key with a foreign id (imported by hand) counts as old: it is the first to rotate.
    return int(match.group(1)) if match else 0


#: On the key Secret: unix time of the last switch of the signing key (the bound's start
#: when the sidecars' keys cannot be observed).
SWITCHED_AT_ANNOTATION: Final = "powgate.dev/keys-switched-at"


@dataclass(frozen=True, slots=True)
class KeyState:
    """What the key Secret holds: the ring, and when its signing key last changed."""

    ring: KeyRing
    switched_at: int = 0

    def pending(self) -> HmacKey | None:
        """The newest key published after the signing key and not signing yet."""
        signing = _created(self.ring.signing_key)
        newer = [
            k
            for k in self.ring.keys
            if k.kid != self.ring.active and k.not_after is None and _created(k) > signing
        ]
        return max(newer, key=_created) if newer else None

    def retiring(self) -> list[HmacKey]:
        """Keys that signed before the current one and verify until none signs with them."""
        signing = _created(self.ring.signing_key)
        return [
            k
            for k in self.ring.keys
            if k.kid != self.ring.active and k.not_after is None and _created(k) <= signing
        ]

    @property
    def rotating(self) -> bool:
        """Whether the next step waits for the sidecars (a key to switch to, or to retire)."""
        return self.pending() is not None or bool(self.retiring())


def next_keys(
    state: KeyState | None,
    *,
    keys: KeyRotationSpec,
    lifetime_seconds: int,
    now: int,
    seen: SidecarKeys | None,
) -> KeyState:
    """The key state to store now: created, rotated one phase further, or unchanged.

    Three phases, each taken only once every sidecar is ready for it, so that
    no challenge valid when issued is ever refused by another sidecar:

    1. publish a new key (listed, not signing);
    2. switch signing to it once every sidecar holds it;
    3. retire the previous key (``notAfter`` = now + a challenge lifetime)
       once no sidecar signs with it any more; it is dropped after that.

    ``seen`` is what the sidecars report (``powgate_key_info``); ``None``
    (or no sidecar reporting) means it cannot be observed, and then each of
    phases 2 and 3 waits ``keys.propagationSeconds``, a bound longer than
    the kubelet's sync period, after the one before.
    """
    if state is None:
        return KeyState(KeyRing(active=_kid(now), keys=(HmacKey(_kid(now), new_secret()),)))
    state = replace(state, ring=state.ring.pruned(now=now))
    observed = seen if seen is not None and seen.sidecars > 0 else None
    retiring = state.retiring()
    if retiring:
        if observed is not None:
            done = observed.all_sign(state.ring.active)
        else:
            done = now - state.switched_at >= keys.propagation_seconds
        if not done:
            return state
        ring = state.ring
        for key in retiring:
            ring = ring.retired(key.kid, at=now + lifetime_seconds)
        state = replace(state, ring=ring)
    pending = state.pending()
    if pending is not None:
        if observed is not None:
            ready = observed.all_hold(pending.kid)
        else:
            ready = now - _created(pending) >= keys.propagation_seconds
        if not ready:
            return state
        return KeyState(state.ring.activated(pending.kid, retire_previous_at=None), now)
    interval = keys.rotation_interval_seconds
    ring = state.ring
    if interval and now - _created(ring.signing_key) >= interval and _kid(now) not in ring:
        return replace(state, ring=ring.with_key(HmacKey(_kid(now), new_secret())))
    return state


def key_state_from_secret(secret: Mapping[str, Any] | None) -> KeyState | None:
    """The key state stored in a Secret; None when it holds no ring.

    Raises :class:`powgate.KeyRingError` when the ring is malformed: the
    operator then keeps the Secret as it is (sidecars keep their last good
    ring) and reports it, rather than replacing keys that may be in use.
    """
    if secret is None:
        return None
    ring = ring_from_secret(secret.get("data"))
    if ring is None:
        return None
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    try:
        switched_at = int(annotations.get(SWITCHED_AT_ANNOTATION, 0))
    except ValueError:
        switched_at = 0  # unreadable: the bound counts from the epoch, i.e. has passed
    return KeyState(ring, switched_at)


def ring_from_secret(secret_data: Mapping[str, str | bytes] | None) -> KeyRing | None:
    """The ring stored in a Secret's ``data`` (base64 values); None when absent.

    Raises :class:`powgate.KeyRingError` when the document is malformed: the
    operator then keeps the Secret as it is (sidecars keep their last good
    ring) and reports it, rather than replacing keys that may be in use.
    """
    if not secret_data or KEYRING_SECRET_KEY not in secret_data:
        return None
    return KeyRing.from_json(base64.b64decode(secret_data[KEYRING_SECRET_KEY]))


# -- owned objects ------------------------------------------------------------


def owner_reference(policy: Mapping[str, Any]) -> dict[str, Any]:
    """Makes the policy the controller of an object: deleting it collects the object."""
    meta = policy["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


class ForeignObjectError(Exception):
    """An object the operator would write exists, but the operator did not create it.

    Such an object is never adopted: a key Secret someone else wrote would
    sign with keys they know, a Role or RoleBinding of theirs could grant
    anything. The policy reports it until the object is removed or renamed.
    """

    def __init__(self, kind: str, name: str, why: str) -> None:
        super().__init__(
            f"{kind} {name} exists and is not the operator's ({why}): delete or rename it"
        )
        self.kind = kind
        self.name = name


def owned_by(obj: Mapping[str, Any], policy: Mapping[str, Any]) -> bool:
    """Whether the operator made ``obj`` for ``policy``: its label, and the policy as owner."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    uid = policy["metadata"]["uid"]
    return labels.get("app.kubernetes.io/managed-by") == MANAGED_BY and any(
        ref.get("uid") == uid and ref.get("kind") == KIND
        for ref in meta.get("ownerReferences") or []
    )


def _metadata(policy: Mapping[str, Any], name: str) -> dict[str, Any]:
    meta = policy["metadata"]
    return {
        "name": name,
        "namespace": meta["namespace"],
        "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, POLICY_LABEL: meta["name"]},
        "ownerReferences": [owner_reference(policy)],
    }


def config_map_body(policy: Mapping[str, Any], config: SidecarConfig) -> dict[str, Any]:
    metadata = _metadata(policy, config_map_name(policy["metadata"]["name"]))
    metadata["annotations"] = {"powgate.dev/config-version": config.version}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {CONFIG_DATA_KEY: config.to_json()},
    }


def reputation_export_body(policy: Mapping[str, Any], text: str) -> dict[str, Any]:
    """The ConfigMap exporting the list a policy's sidecars learnt (``reputation.json``)."""
    metadata = _metadata(policy, reputation_name(policy["metadata"]["name"]))
    # Importable as it is: by another policy here, or wherever it is synced to.
    metadata["labels"][REPUTATION_SOURCE_LABEL] = "true"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {REPUTATION_DATA_KEY: text},
    }


def key_secret_body(policy: Mapping[str, Any], state: KeyState) -> dict[str, Any]:
    metadata = _metadata(policy, key_secret_name(policy["metadata"]["name"]))
    metadata["annotations"] = {SWITCHED_AT_ANNOTATION: str(state.switched_at)}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata,
        "data": {KEYRING_SECRET_KEY: base64.b64encode(state.ring.to_json().encode()).decode()},
    }


# -- least privilege for injected sidecars ------------------------------------


def role_name(policy: str) -> str:
    """The Role (and RoleBinding) that lets a policy's sidecars read their config and keys."""
    return f"{policy}-powgate-sidecar"


def role_body(policy: Mapping[str, Any]) -> dict[str, Any]:
    """Read access to exactly the policy's ConfigMap, nothing else.

    Not the key Secret: whoever reads a key can mint solutions, and every
    container of a pod shares its service account. The keys reach only the
    sidecar container, as a mounted volume (the kubelet reads the Secret with
    the node's credentials). ``list`` and ``watch`` honour ``resourceNames``
    when the request narrows itself with ``fieldSelector=metadata.name=…``,
    which is how the sidecar asks.
    """
    name = policy["metadata"]["name"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(policy, role_name(name)),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [config_map_name(name)],
                "verbs": ["get", "list", "watch"],
            },
        ],
    }


def role_binding_body(policy: Mapping[str, Any], service_accounts: Iterable[str]) -> dict[str, Any]:
    """Binds the Role to the service accounts of the policy's injected pods (sorted, unique)."""
    meta = policy["metadata"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(policy, role_name(meta["name"])),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role_name(meta["name"]),
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": account, "namespace": meta["namespace"]}
            for account in sorted(set(service_accounts))
        ],
    }


# -- the sidecar as the only way in ----------------------------------------------------


def network_policy_body(policy: Mapping[str, Any], pods: Iterable[PodFacts]) -> dict[str, Any]:
    """A NetworkPolicy admitting ingress to the policy's pods only where it may enter.

    It selects the pods that carry the policy's sidecar and admits every
    source to the sidecar's ports and to the other ports the pods declare,
    by name where they have one (resolved per pod), else by number: all but
    the app's port the sidecar took over, which would otherwise be a way
    around it (``podIP:port``). The kubelet's probes are not subject to it.
    """
    name = policy["metadata"]["name"]
    ports: set[tuple[str, str | int]] = {("TCP", METRICS_PORT_NAME)}
    for pod in pods:
        if pod.sidecar_of != name:
            continue
        for port in (*pod.sidecar_ports, *pod.other_ports):
            ports.add((port.protocol, port.name or port.number))
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(policy, network_policy_name(name)),
        "spec": {
            "podSelector": {"matchLabels": {POLICY_LABEL: name}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "ports": [
                        {"protocol": protocol, "port": port}
                        for protocol, port in sorted(ports, key=lambda p: (p[0], str(p[1])))
                    ]
                }
            ],
        },
    }


# -- the injector's registration --------------------------------------------------


def webhook_configuration_body(
    *,
    name: str,
    client_config: Callable[[Hook], Mapping[str, Any]],
    excluded_namespaces: Iterable[str],
    failure_policy: str,
    timeout_seconds: int,
) -> dict[str, Any]:
    """The MutatingWebhookConfiguration: Pod CREATE in opted-in namespaces, opt-out by label."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": MANAGED_BY}},
        "webhooks": [
            {
                "name": hook.name,
                "clientConfig": dict(client_config(hook)),
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {
                    "matchLabels": {NAMESPACE_LABEL: hook.label_value},
                    # Belt and braces: these are never injected even if labelled.
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "NotIn",
                            "values": sorted(excluded_namespaces),
                        }
                    ],
                },
                "objectSelector": {
                    "matchExpressions": [
                        {"key": OPT_OUT_LABEL, "operator": "NotIn", "values": ["false"]}
                    ]
                },
                "failurePolicy": hook.failure_policy or failure_policy,
                "timeoutSeconds": timeout_seconds,
                # Admission writes nothing: grants follow the pods once they exist.
                "sideEffects": "None",
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": "Never",
                "admissionReviewVersions": ["v1"],
            }
            for hook in HOOKS
        ],
    }


# -- status -------------------------------------------------------------------


def set_condition(
    conditions: Sequence[Condition],
    *,
    kind: ConditionType,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
) -> list[Condition]:
    """``conditions`` with ``kind`` set; its transition time moves only when its status does."""
    previous = next((c for c in conditions if c.type is kind), None)
    since = previous.last_transition_time if previous and previous.status is status else now
    updated = Condition(
        type=kind, status=status, reason=reason, message=message[:1024], last_transition_time=since
    )
    others = [c for c in conditions if c.type is not kind]
    return sorted([*others, updated], key=lambda c: list(ConditionType).index(c.type))


def replay_store_conditions(
    conditions: Sequence[Condition],
    *,
    store: ReplayStoreSpec | None,
    reach: StoreReach | Failure | None,
    now: datetime,
) -> list[Condition]:
    """``conditions`` with ``ReplayStoreAvailable`` from what the sidecars report.

    ``reach`` is ``None`` when Prometheus was not asked this time: the last
    condition stays. Without a store the condition goes away.
    """
    kind = ConditionType.REPLAY_STORE_AVAILABLE
    if store is None:
        return [c for c in conditions if c.type is not kind]
    if reach is None:
        if any(c.type is kind for c in conditions):
            return list(conditions)
        status, reason, message = ConditionStatus.UNKNOWN, "NotObserved", "not yet asked"
    elif isinstance(reach, Failure):
        status, reason = ConditionStatus.UNKNOWN, "MetricsUnavailable"
        message = f"the sidecars' {REPLAY_STORE_UP_METRIC} could not be read: {reach.message}"
    elif reach.total == 0:
        status, reason = ConditionStatus.UNKNOWN, "NoSidecarsReporting"
        message = (
            f"no sidecar of the policy reports {REPLAY_STORE_UP_METRIC} (none scraped yet, "
            "or all too old for config contract 2: they keep their last config)"
        )
    elif reach.unavailable:
        status, reason = ConditionStatus.FALSE, "Unreachable"
        consequence = (
            "their valid solutions are refused (503, replay_store_unavailable)"
            if store.when_unavailable is StoreOutage.REFUSE
            else "they admit each solution once per sidecar process"
        )
        message = (
            f"{reach.unavailable} of {reach.total} sidecar processes cannot reach the replay "
            f"store at {store.address}: {consequence} (whenUnavailable "
            f"{store.when_unavailable.value}); see powgate_replay_store_errors_total"
        )
    else:
        status, reason = ConditionStatus.TRUE, "Reachable"
        message = f"all {reach.total} sidecar processes reach the replay store at {store.address}"
    return set_condition(
        conditions, kind=kind, status=status, reason=reason, message=message, now=now
    )


def status_after(
    *,
    previous: PolicyStatus,
    spec: PolicySpec,
    generation: int,
    decision: Decision | None,
    config: SidecarConfig,
    rollout: RolloutStatus | None,
    now: datetime,
) -> PolicyStatus:
    """The status once ``config`` is published (``decision`` None: difficulty unchanged)."""
    status = previous
    conditions = list(previous.conditions)
    if decision is not None:
        failing = [s for s in decision.signals if s.health is SignalHealth.FAILING]
        status = status.model_copy(
            update={
                "signals": list(decision.signals),
                "history": list(decision.history),
                "recommendations": list(decision.recommendations),
                "last_decision": LastDecision(
                    time=now,
                    difficulty=decision.difficulty,
                    reason=decision.reason,
                    message=decision.message[:1024],
                    signal=decision.signal,
                    recommended=decision.recommended,
                ),
            }
        )
        conditions = _signal_conditions(
            conditions, spec=spec, decision=decision, failing=failing, now=now
        )
    conditions = set_condition(
        conditions,
        kind=ConditionType.READY,
        status=ConditionStatus.TRUE,
        reason="ConfigPublished",
        message=f"config {config.version} at difficulty {config.difficulty}",
        now=now,
    )
    return status.model_copy(
        update={
            "observed_generation": generation,
            "difficulty": config.difficulty,
            "mode": spec.mode,
            "config_version": config.version,
            "conditions": conditions,
            "rollout": previous.rollout if rollout is None else rollout,
        }
    )


def _signal_conditions(
    conditions: list[Condition],
    *,
    spec: PolicySpec,
    decision: Decision,
    failing: Sequence[SignalStatus],
    now: datetime,
) -> list[Condition]:
    if not spec.signals:
        healthy = (ConditionStatus.TRUE, "NoSignals", "the policy has no signals")
    elif failing:
        detail = "; ".join(f"{s.name}: {s.reason} {s.message}".strip() for s in failing)
        healthy = (ConditionStatus.FALSE, "QueryFailed", detail)
    else:
        healthy = (ConditionStatus.TRUE, "QueriesSucceeded", "every signal returned a value")
    conditions = set_condition(
        conditions,
        kind=ConditionType.SIGNALS_HEALTHY,
        status=healthy[0],
        reason=healthy[1],
        message=healthy[2],
        now=now,
    )
    fallback = (
        (
            ConditionStatus.TRUE,
            spec.fallback.action.value,
            "a signal fails: difficulty is not lowered",
        )
        if decision.fallback_active
        else (ConditionStatus.FALSE, "SignalsHealthy", "")
    )
    conditions = set_condition(
        conditions,
        kind=ConditionType.FALLBACK_ACTIVE,
        status=fallback[0],
        reason=fallback[1],
        message=fallback[2],
        now=now,
    )
    limited = (
        (
            ConditionStatus.TRUE,
            "BoundOrStepPolicy",
            f"signals recommend {decision.recommended}, difficulty is {decision.difficulty}",
        )
        if decision.limited
        else (ConditionStatus.FALSE, "FollowingSignals", "")
    )
    return set_condition(
        conditions,
        kind=ConditionType.LIMITED,
        status=limited[0],
        reason=limited[1],
        message=limited[2],
        now=now,
    )
