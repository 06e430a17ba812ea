"""Which policies admissions see: kopf's index, merged with a periodic direct listing.

kopf fills its index from a watch that starts only after start-up and is
paused on standby replicas (peering), yet every replica behind the webhook
Service answers admissions. The listing covers both gaps: a pod created in
the first moments, or handled by a standby, still finds its policy. The
index wins for a policy both know (it is fresher); a deleted policy may
linger in the listing for one interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from pydantic import ValidationError

from powgate.policy import LabelSelector

from . import _metrics as metrics
from ._cluster import POW_POLICIES, Cluster, ClusterError
from ._inject import PolicyRef

__all__ = ["PolicyListing", "policy_ref"]

log = logging.getLogger("powgate.operator.webhook")

#: Until kopf's index holds every listed policy, admissions use a listing this fresh.
RELIST_SECONDS: Final = 5.0


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
    """The policies of the operator's scope, listed every :data:`RELIST_SECONDS`."""

    def __init__(self, cluster: Cluster, namespaces: Sequence[str] | None) -> None:
        self._cluster = cluster
        self._namespaces = None if namespaces is None else tuple(namespaces)
        self._listing: dict[str, list[PolicyRef]] = {}
        self.listed = asyncio.Event()

    def in_namespace(self, namespace: str, indexed: Iterable[PolicyRef]) -> list[PolicyRef]:
        """The policies of ``namespace``: kopf's ``indexed`` ones, then listed ones it lacks."""
        known = list(indexed)
        names = {p.name for p in known}
        return known + [p for p in self._listing.get(namespace, []) if p.name not in names]

    async def refresh(self) -> None:
        """List once; a failure is counted and leaves the last listing in place."""
        try:
            refs = await self._list()
        except ClusterError as exc:
            metrics.POLICY_LISTING_ERRORS.inc()
            log.warning("listing PowPolicies failed (retrying): %s", exc)
            return
        grouped: dict[str, list[PolicyRef]] = {}
        for ref in refs:
            grouped.setdefault(ref.namespace, []).append(ref)
        self._listing = grouped
        self.listed.set()

    async def follow(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(RELIST_SECONDS)

    async def _list(self) -> list[PolicyRef]:
        scopes: Sequence[str | None] = (None,) if self._namespaces is None else self._namespaces
        items = [
            item
            for namespace in scopes
            for item in await self._cluster.list_objects(POW_POLICIES, namespace=namespace)
        ]
        refs = []
        for item in items:
            meta: Mapping[str, Any] = item.get("metadata") or {}
            ref = policy_ref(
                namespace=meta.get("namespace"),
                name=meta.get("name"),
                uid=meta.get("uid"),
                spec=item.get("spec") or {},
            )
            if ref is not None:
                refs.append(ref)
        return refs
