"""Read access to a policy's config for the service accounts of the pods carrying its sidecar.

Each policy has one Role (read its ConfigMap) and one RoleBinding whose
subjects are the service accounts of its *existing*, running injected pods:
granted when such a pod appears, pruned when the last one of an account goes.
Nothing is granted at admission, so an admission review (forged or real)
grants nothing by itself; a pod must exist first. The operator reads pods
from its index of them, so the binding follows pod events within moments.

The Role and binding are the operator's own: an object of the same name it
did not create (no ``app.kubernetes.io/managed-by: powgate-operator`` label
and owner reference to the policy) is never adopted, since its rules or
``roleRef`` could grant anything.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any

from ._cluster import ROLE_BINDINGS, ROLES, Cluster, Manifest, update
from ._objects import ForeignObjectError, owned_by, role_binding_body, role_body, role_name

__all__ = ["accounts_of", "write_grants"]


def accounts_of(binding: Manifest | None) -> set[str]:
    """The service accounts a RoleBinding names."""
    subjects = (binding or {}).get("subjects") or []
    return {s["name"] for s in subjects if s.get("kind") == "ServiceAccount"}


async def write_grants(cluster: Cluster, policy: Manifest, accounts: Set[str]) -> None:
    """Make the policy's Role today's rules and its RoleBinding name exactly ``accounts``.

    Raises :class:`ForeignObjectError` when either name is taken by an object
    the operator did not create for this policy (it is left untouched).
    """
    meta = policy["metadata"]
    name, namespace = role_name(meta["name"]), meta["namespace"]
    wanted_role = role_body(policy)

    def role(current: Manifest | None) -> Manifest | None:
        if current is None:
            return wanted_role if accounts else None
        _check_owned(current, policy, "Role")
        if current.get("rules") == wanted_role["rules"]:
            return None
        return {**current, "rules": wanted_role["rules"]}

    await update(cluster, ROLES, name, namespace=namespace, change=role)

    def binding(current: Manifest | None) -> Manifest | None:
        wanted = role_binding_body(policy, accounts)
        if current is None:
            return wanted if accounts else None
        _check_owned(current, policy, "RoleBinding")
        if current.get("roleRef") != wanted["roleRef"]:
            raise ForeignObjectError("RoleBinding", name, "it binds another role")
        if accounts_of(current) == set(accounts) and len(current.get("subjects") or []) == len(
            accounts
        ):
            return None
        return {**current, "subjects": wanted["subjects"]}

    await update(cluster, ROLE_BINDINGS, name, namespace=namespace, change=binding)


def _check_owned(current: dict[str, Any], policy: Manifest, kind: str) -> None:
    if not owned_by(current, policy):
        raise ForeignObjectError(kind, current["metadata"]["name"], "not created by the operator")
