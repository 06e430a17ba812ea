"""Granting an injected pod's service account read access to its policy's config.

Each policy has one Role (read its ConfigMap and key Secret) and one
RoleBinding whose subjects are the service accounts of its injected pods.
Every operator replica answers admissions, so two may add a subject to the
same RoleBinding at once: the binding is rewritten with the version read,
and a conflict starts over from a fresh read, so no subject is lost.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ._cluster import ROLE_BINDINGS, ROLES, Cluster, Manifest, create_or_replace, update
from ._inject import PolicyRef
from ._objects import role_binding_body, role_body, role_name

__all__ = ["Grants"]


class Grants:
    """Adds service accounts to policies' RoleBindings; remembers what it granted."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        #: (policy uid, service account) pairs already granted: admission stays one lookup.
        self._granted: set[tuple[str, str]] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    async def grant(self, policy: PolicyRef, account: str) -> None:
        """Let ``account`` read the policy's ConfigMap and key Secret (Role + RoleBinding)."""
        if (policy.uid, account) in self._granted:
            return
        async with self._locks.setdefault(policy.uid, asyncio.Lock()):
            owner = policy.metadata()
            await create_or_replace(self._cluster, ROLES, role_body(owner))

            def with_account(current: Manifest | None) -> Manifest | None:
                accounts = _accounts(current)
                if account in accounts:
                    return None
                return role_binding_body(owner, {*accounts, account})

            await update(
                self._cluster,
                ROLE_BINDINGS,
                role_name(policy.name),
                namespace=policy.namespace,
                change=with_account,
            )
        self._granted.add((policy.uid, account))


def _accounts(binding: dict[str, Any] | None) -> set[str]:
    subjects = (binding or {}).get("subjects") or []
    return {s["name"] for s in subjects if s.get("kind") == "ServiceAccount"}
