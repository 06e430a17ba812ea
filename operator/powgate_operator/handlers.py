"""The kopf handlers: spec changes reconcile at once, a daemon per policy evaluates signals.

Handlers live in their own :class:`kopf.OperatorRegistry` (not kopf's global
one), so the operator can be embedded and tested without import side effects.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import kopf

from powgate.policy import GROUP, PLURAL, VERSION

from . import _metrics as metrics
from ._cluster import ClusterError
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


def build_registry(reconciler: Reconciler) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same credentials as the Reconciler's client: service account or kubeconfig.
        return kopf.login_via_client(**kwargs)

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, field="spec")
    async def reconcile(*, namespace: str | None, name: str, **_: Any) -> None:
        assert namespace is not None  # PowPolicy is namespaced
        try:
            await reconciler.reconcile(namespace=namespace, name=name, evaluate_signals=False)
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
        *, namespace: str | None, name: str, spec: kopf.Spec, stopped: kopf.DaemonStopped, **_: Any
    ) -> None:
        assert namespace is not None  # PowPolicy is namespaced
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not stopped:
            started = loop.time()
            # Late against the schedule: waiting for the loop, or the previous round overran.
            metrics.EVALUATION_LAG.observe(max(0.0, started - due))
            due = max(due, started)  # after an overrun the schedule restarts from now
            try:
                await reconciler.reconcile(namespace=namespace, name=name, evaluate_signals=True)
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
