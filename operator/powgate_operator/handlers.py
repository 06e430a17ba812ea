"""The kopf handlers: spec changes reconcile at once, a daemon per policy evaluates signals.

Pods of the operator's namespaces are indexed (:mod:`._pods`): kopf fills the
index before any handler runs, so a first reconcile never prunes the grant of
a pod it has not seen yet. Events of pods carrying a policy's sidecar bind
(and unbind) their service accounts at once.

Handlers live in their own :class:`kopf.OperatorRegistry` (not kopf's global
one), so the operator can be embedded and tested without import side effects.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import kopf

from powgate.contract import POLICY_LABEL
from powgate.policy import GROUP, PLURAL, VERSION

from . import _metrics as metrics
from ._cluster import ClusterError
from ._pods import PodFacts, pod_facts
from ._reconcile import Reconciler

__all__ = ["build_registry"]

log = logging.getLogger("powgate.operator")

#: Fallback when a spec cannot be read: the evaluation loop must never spin.
_DEFAULT_INTERVAL: Final = 15.0
#: A failed spec reconcile is retried after this many seconds (kopf's TemporaryError).
_RETRY_DELAY: Final = 5.0
#: Switching a deleted policy's sidecars off is tried this often (a minute) before the
#: deletion goes ahead without it.
_RETIRE_RETRIES: Final = 12
#: kopf passes an index to handlers under its function's name.
_PODS: Final = "powgate_pods"


class IndexedPods:
    """A :class:`._pods.PodView` over kopf's live index of pods (namespace → facts)."""

    def __init__(self, index: kopf.Index[str, PodFacts]) -> None:
        self._index = index

    def in_namespace(self, namespace: str) -> list[PodFacts]:
        return list(self._index.get(namespace, []))


def build_registry(reconciler: Reconciler) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same credentials as the Reconciler's client: service account or kubeconfig.
        return kopf.login_via_client(**kwargs)

    @kopf.index("", "v1", "pods", id=_PODS, registry=registry)
    def powgate_pods(*, namespace: str | None, body: kopf.Body, **_: Any) -> dict[str, PodFacts]:
        facts = pod_facts(body)
        return {} if facts is None or namespace is None else {namespace: facts}

    @kopf.on.event("", "v1", "pods", labels={POLICY_LABEL: kopf.PRESENT}, registry=registry)
    async def follow_pods(*, namespace: str | None, labels: kopf.Labels, **kwargs: Any) -> None:
        # Every event of a pod that may carry a sidecar, deletions included: the index
        # already holds the pod's new state, so the accounts are those of pods that exist.
        if namespace is not None:
            await reconciler.follow_pods(
                namespace=namespace, name=labels[POLICY_LABEL], pods=IndexedPods(kwargs[_PODS])
            )

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, field="spec")
    async def reconcile(*, namespace: str | None, name: str, **kwargs: Any) -> None:
        assert namespace is not None  # PowPolicy is namespaced
        try:
            await reconciler.reconcile(
                namespace=namespace,
                name=name,
                evaluate_signals=False,
                pods=IndexedPods(kwargs[_PODS]),
            )
        except ClusterError as exc:
            raise kopf.TemporaryError(str(exc), delay=_RETRY_DELAY) from exc

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    async def retire(*, namespace: str | None, name: str, retry: int, **_: Any) -> None:
        # Runs before the finalizer goes (the evaluation daemon keeps one on the policy).
        assert namespace is not None  # PowPolicy is namespaced
        try:
            await reconciler.retire(namespace=namespace, name=name)
        except ClusterError as exc:
            if retry >= _RETIRE_RETRIES:
                # A deletion must not hang on this forever: the sidecars keep charging.
                log.error("sidecars of %s/%s could not be switched off: %s", namespace, name, exc)
                return
            raise kopf.TemporaryError(str(exc), delay=_RETRY_DELAY) from exc

    @kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, cancellation_timeout=10.0)
    async def evaluate(
        *,
        namespace: str | None,
        name: str,
        spec: kopf.Spec,
        stopped: kopf.DaemonStopped,
        **kwargs: Any,
    ) -> None:
        assert namespace is not None  # PowPolicy is namespaced
        pods = IndexedPods(kwargs[_PODS])  # kopf's index is live: it follows the pods
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not stopped:
            started = loop.time()
            # Late against the schedule: waiting for the loop, or the previous round overran.
            metrics.EVALUATION_LAG.observe(max(0.0, started - due))
            due = max(due, started)  # after an overrun the schedule restarts from now
            try:
                await reconciler.reconcile(
                    namespace=namespace, name=name, evaluate_signals=True, pods=pods
                )
            except Exception:
                # One failed evaluation must not end the loop: the next one retries.
                log.exception("evaluation of %s/%s failed", namespace, name)
            # `spec` is kopf's live view: an edited interval applies from the next round.
            due += _interval(spec)
            await stopped.wait(max(0.0, due - loop.time()))
        reconciler.forget(namespace=namespace, name=name)

    return registry


def _interval(spec: kopf.Spec) -> float:
    try:
        value = float(spec.get("evaluationIntervalSeconds", _DEFAULT_INTERVAL))
    except (TypeError, ValueError):
        return _DEFAULT_INTERVAL
    return value if value >= 1 else _DEFAULT_INTERVAL
