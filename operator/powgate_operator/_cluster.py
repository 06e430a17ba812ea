"""The operator's one seam to the Kubernetes API: a small async interface and its error types.

Everything the operator reads or writes in the cluster goes through a
:class:`Cluster`: manifests in, manifests out (plain dicts, camelCase, as the
API server speaks them). The production implementation,
:class:`._kube_client.KubeCluster`, runs the official client; it is the only
module that knows the client's exceptions and translates them into
:class:`ClusterError` and its subclasses. Tests use an in-memory
implementation that can be told to fail (conflicts, 404, 410, timeouts).

The operations the operator needs are built here once on top of the
primitives: :func:`read` (read-or-none), :func:`create_or_replace`,
:func:`update` (read, change, write; retried on conflict) and
:func:`patch_status` (retried on conflict).
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from powgate import PowgateError
from powgate.policy import GROUP, KIND, PLURAL, VERSION

__all__ = [
    "CONFIG_MAPS",
    "MUTATING_WEBHOOK_CONFIGURATIONS",
    "NETWORK_POLICIES",
    "PODS",
    "POW_POLICIES",
    "ROLES",
    "ROLE_BINDINGS",
    "SECRETS",
    "Cluster",
    "ClusterError",
    "ConflictError",
    "ForbiddenError",
    "GoneError",
    "Manifest",
    "NotFoundError",
    "PatchType",
    "Resource",
    "UnavailableError",
    "create_or_replace",
    "patch_status",
    "read",
    "update",
]

Manifest = dict[str, Any]
#: Writes raced by another writer are retried this often before giving up.
CONFLICT_RETRIES: Final = 5


# -- errors: the one vocabulary the rest of the operator catches -------------------


class ClusterError(PowgateError):
    """The API server refused a request, or could not be reached (``status`` 0)."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class NotFoundError(ClusterError):
    """404: the object (or its namespace) does not exist."""


class ConflictError(ClusterError):
    """409: the object exists already, or changed since it was read."""


class GoneError(ClusterError):
    """410: a watch or list continuation is too old."""


class ForbiddenError(ClusterError):
    """403: RBAC does not allow the request."""


class UnavailableError(ClusterError):
    """No usable answer: timeout, refused connection, or a 5xx from the API server."""


# -- what can be addressed ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resource:
    """A kind of object and where the API server serves it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, *, namespace: str | None, name: str | None = None, subresource: str | None = None
    ) -> str:
        """The URL path of the collection, or of one object (and a subresource of it)."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
            if subresource is not None:
                base += f"/{subresource}"
        return base


SECRETS: Final = Resource("", "v1", "secrets", "Secret")
CONFIG_MAPS: Final = Resource("", "v1", "configmaps", "ConfigMap")
PODS: Final = Resource("", "v1", "pods", "Pod")
ROLES: Final = Resource("rbac.authorization.k8s.io", "v1", "roles", "Role")
ROLE_BINDINGS: Final = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")
NETWORK_POLICIES: Final = Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
MUTATING_WEBHOOK_CONFIGURATIONS: Final = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "mutatingwebhookconfigurations",
    "MutatingWebhookConfiguration",
    namespaced=False,
)
POW_POLICIES: Final = Resource(GROUP, VERSION, PLURAL, KIND)


class PatchType(enum.StrEnum):
    """The patch formats the API server takes (the value is the content type)."""

    JSON = "application/json-patch+json"  # a list of operations (RFC 6902)
    MERGE = "application/merge-patch+json"  # RFC 7386
    STRATEGIC = "application/strategic-merge-patch+json"  # built-in kinds only


class Cluster(Protocol):
    """The primitives; each raises :class:`ClusterError` (or a subclass) on failure."""

    async def get(self, resource: Resource, name: str, *, namespace: str | None) -> Manifest: ...

    async def list_objects(self, resource: Resource, *, namespace: str | None) -> list[Manifest]:
        """Every object of ``resource`` (``namespace`` None: in every namespace)."""
        ...

    async def create(self, resource: Resource, body: Manifest) -> Manifest:
        """Create ``body``; :class:`ConflictError` when the name is taken."""
        ...

    async def replace(self, resource: Resource, body: Manifest) -> Manifest:
        """Replace the object; with ``metadata.resourceVersion`` set, only if unchanged."""
        ...

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Manifest | list[Manifest],
        *,
        namespace: str | None,
        patch_type: PatchType = PatchType.MERGE,
        subresource: str | None = None,
    ) -> Manifest: ...

    async def delete(self, resource: Resource, name: str, *, namespace: str | None) -> None:
        """Delete the object; :class:`NotFoundError` when it is gone already."""
        ...

    async def server_version(self) -> tuple[str, str]:
        """The API server's ``major`` and ``minor`` version fields."""
        ...


# -- the operations, built once on the primitives ------------------------------------


def _namespace(body: Manifest) -> str | None:
    return (body.get("metadata") or {}).get("namespace")


async def read(
    cluster: Cluster, resource: Resource, name: str, *, namespace: str | None
) -> Manifest | None:
    """The object, or None when it does not exist."""
    try:
        return await cluster.get(resource, name, namespace=namespace)
    except NotFoundError:
        return None


async def update(
    cluster: Cluster,
    resource: Resource,
    name: str,
    *,
    namespace: str | None,
    change: Callable[[Manifest | None], Manifest | None],
) -> Manifest | None:
    """Read the object, let ``change`` decide what it becomes, write that; retried on conflict.

    ``change`` gets the current object (None when absent) and returns the
    whole new object, or None to leave it as it is. A write raced by another
    writer is retried from a fresh read, so ``change`` always decides on what
    is stored and no concurrent change is lost (first writer wins). Returns
    what is stored afterwards (None: absent and left so).
    """
    for _ in range(CONFLICT_RETRIES):
        current = await read(cluster, resource, name, namespace=namespace)
        wanted = change(None if current is None else copy.deepcopy(current))
        if wanted is None:
            return current
        try:
            if current is None:
                return await cluster.create(resource, wanted)
            wanted = copy.deepcopy(wanted)
            wanted["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            return await cluster.replace(resource, wanted)
        except ConflictError:
            continue
    raise ConflictError(f"{resource.kind} {namespace}/{name} kept changing; gave up", status=409)


async def create_or_replace(cluster: Cluster, resource: Resource, body: Manifest) -> Manifest:
    """Make the object exactly ``body``, whether or not it exists; retried on conflict."""
    meta = body["metadata"]
    stored = await update(
        cluster, resource, meta["name"], namespace=meta.get("namespace"), change=lambda _: body
    )
    assert stored is not None  # the change always writes
    return stored


async def patch_status(
    cluster: Cluster,
    resource: Resource,
    name: str,
    *,
    namespace: str | None,
    status: Manifest,
) -> Manifest:
    """Merge ``status`` into the object's status subresource; retried on conflict."""
    error: ConflictError | None = None
    for _ in range(CONFLICT_RETRIES):
        try:
            return await cluster.patch(
                resource, name, {"status": status}, namespace=namespace, subresource="status"
            )
        except ConflictError as exc:
            error = exc
    assert error is not None
    raise error
