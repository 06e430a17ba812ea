"""Which policies an admission sees: the pod's namespace, read at the admission.

The read is the API server's consistent list (no ``resourceVersion``), so an
admission sees exactly the policies that exist when the pod is created: one
deleted before, even a moment before, is never injected, and one created
before is always found. A cache fed by a watch (kopf's index, a periodic
listing) lags both, is empty in the first moments after start-up and frozen
on a standby replica (peering pauses its watches), yet every ready replica
behind the webhook Service answers admissions. The read costs one namespaced
list of a few objects per pod creation.

A policy being deleted (its finalizer still pending) selects nothing: its
config and keys are about to go, and a pod injected with it would wait for
them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from powgate.policy import LabelSelector

from . import _metrics as metrics
from ._cluster import POW_POLICIES, Cluster, ClusterError
from ._inject import PolicyRef

__all__ = ["PolicyListing", "policy_ref"]

log = logging.getLogger("powgate.operator.webhook")


def policy_ref(
    *, namespace: str | None, name: str | None, uid: str | None, spec: Any
) -> PolicyRef | None:
    """What injection needs of a policy; ``None`` when its selector is unusable."""
    if namespace is None or name is None or uid is None:
        return None
    try:
        selector = LabelSelector.model_validate(spec.get("selector"))
    except ValidationError as exc:
        # The CRD rejects such selectors; an invalid one selects nothing.
        log.warning("PowPolicy %s/%s: unusable selector: %s", namespace, name, exc)
        return None
    return PolicyRef(namespace=namespace, name=name, uid=uid, selector=selector)


class PolicyListing:
    """The live policies of one namespace in the operator's scope, read on demand."""

    def __init__(self, cluster: Cluster, namespaces: Sequence[str] | None) -> None:
        self._cluster = cluster
        self._namespaces = None if namespaces is None else frozenset(namespaces)

    async def in_namespace(self, namespace: str) -> list[PolicyRef]:
        """The policies of ``namespace`` that exist now and are not being deleted.

        A failed read is counted and raised (:class:`ClusterError`): the caller
        decides what an admission without an answer means.
        """
        if self._namespaces is not None and namespace not in self._namespaces:
            return []
        try:
            items = await self._cluster.list_objects(POW_POLICIES, namespace=namespace)
        except ClusterError:
            metrics.POLICY_LISTING_ERRORS.inc()
            raise
        refs = []
        for item in items:
            meta: Mapping[str, Any] = item.get("metadata") or {}
            if meta.get("deletionTimestamp"):
                continue
            ref = policy_ref(
                namespace=meta.get("namespace"),
                name=meta.get("name"),
                uid=meta.get("uid"),
                spec=item.get("spec") or {},
            )
            if ref is not None:
                refs.append(ref)
        return refs
