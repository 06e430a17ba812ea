"""An in-memory :class:`powgate_operator._cluster.Cluster` for unit tests, that can be made to fail.

It keeps manifests the way the API server does where the operator relies on
it: ``resourceVersion`` moves on every write and a replace with a stale one
is a conflict, a create of an existing name is a conflict, ``uid`` and
``generation`` are set, and the ``status`` subresource changes only status.
Tests script failures and races with :meth:`MemoryCluster.inject`: raise an
error (404, 409, 410, a timeout) on the next calls of a verb, or run a
concurrent write just before one.
"""

from __future__ import annotations

import copy
import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from powgate_operator._cluster import (
    ClusterError,
    ConflictError,
    Manifest,
    NotFoundError,
    PatchType,
    Resource,
)

Key = tuple[str, str | None, str]


@dataclass
class _Fault:
    verb: str
    resource: Resource | None
    error: ClusterError | None
    before: Callable[[MemoryCluster], None] | None
    times: int


@dataclass
class Call:
    verb: str
    kind: str
    name: str | None
    namespace: str | None


@dataclass
class MemoryCluster:
    """Objects by (plural, namespace, name); ``calls`` records every request."""

    version: tuple[str, str] = ("1", "31")
    objects: dict[Key, Manifest] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    _faults: list[_Fault] = field(default_factory=list)
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # -- scripting ---------------------------------------------------------------------

    def inject(
        self,
        verb: str,
        resource: Resource | None = None,
        *,
        error: ClusterError | None = None,
        before: Callable[[MemoryCluster], None] | None = None,
        times: int = 1,
    ) -> None:
        """On the next ``times`` calls of ``verb`` (on ``resource``): ``before``, then ``error``.

        ``before`` is another writer acting between the operator's read and
        its write; without ``error`` the call then proceeds normally.
        """
        self._faults.append(_Fault(verb, resource, error, before, times))

    def put(self, resource: Resource, body: Manifest) -> Manifest:
        """Store ``body`` as someone else's create or update would (no fault applies)."""
        meta = body["metadata"]
        previous = self.objects.get(self._key(resource, meta["name"], meta.get("namespace")))
        return self._store(resource, copy.deepcopy(body), create=False, previous=previous)

    def stored(self, resource: Resource, name: str, namespace: str | None = None) -> Manifest:
        return self.objects[(resource.plural, namespace if resource.namespaced else None, name)]

    def has(self, resource: Resource, name: str, namespace: str | None = None) -> bool:
        return (resource.plural, namespace if resource.namespaced else None, name) in self.objects

    def count(self, verb: str, kind: str | None = None) -> int:
        return sum(1 for c in self.calls if c.verb == verb and kind in (None, c.kind))

    # -- the Cluster protocol ----------------------------------------------------------

    async def get(self, resource: Resource, name: str, *, namespace: str | None) -> Manifest:
        self._enter("get", resource, name, namespace)
        return copy.deepcopy(self._existing(resource, name, namespace))

    async def list_objects(self, resource: Resource, *, namespace: str | None) -> list[Manifest]:
        self._enter("list", resource, None, namespace)
        return [
            copy.deepcopy(obj)
            for (plural, ns, _), obj in sorted(self.objects.items())
            if plural == resource.plural and (namespace is None or ns == namespace)
        ]

    async def create(self, resource: Resource, body: Manifest) -> Manifest:
        meta = body["metadata"]
        self._enter("create", resource, meta["name"], meta.get("namespace"))
        return copy.deepcopy(self._store(resource, copy.deepcopy(body), create=True))

    async def replace(self, resource: Resource, body: Manifest) -> Manifest:
        meta = body["metadata"]
        self._enter("replace", resource, meta["name"], meta.get("namespace"))
        current = self._existing(resource, meta["name"], meta.get("namespace"))
        wanted = meta.get("resourceVersion")
        if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
            raise ConflictError("the object has been modified", status=409, reason="Conflict")
        body = copy.deepcopy(body)
        for kept in ("uid", "creationTimestamp"):
            body["metadata"][kept] = current["metadata"].get(kept)
        if "status" in current:
            body["status"] = current["status"]
        return copy.deepcopy(self._store(resource, body, create=False, previous=current))

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Manifest | list[Manifest],
        *,
        namespace: str | None,
        patch_type: PatchType = PatchType.MERGE,
        subresource: str | None = None,
    ) -> Manifest:
        self._enter(
            "patch_status" if subresource == "status" else "patch", resource, name, namespace
        )
        current = self._existing(resource, name, namespace)
        if patch_type is PatchType.JSON:
            assert isinstance(patch, list)
            body = _json_patch(current, patch)
        else:
            assert isinstance(patch, dict)
            if subresource == "status":
                patch = {"status": patch.get("status")}
            else:
                patch = {k: v for k, v in patch.items() if k != "status"}
            body = _merge(current, patch)
        return copy.deepcopy(self._store(resource, body, create=False, previous=current))

    async def delete(self, resource: Resource, name: str, *, namespace: str | None) -> None:
        self._enter("delete", resource, name, namespace)
        self._existing(resource, name, namespace)
        del self.objects[self._key(resource, name, namespace)]

    async def server_version(self) -> tuple[str, str]:
        self._enter("version", None, None, None)
        return self.version

    # -- internals ----------------------------------------------------------------------

    def _enter(
        self, verb: str, resource: Resource | None, name: str | None, namespace: str | None
    ) -> None:
        self.calls.append(Call(verb, resource.kind if resource else "", name, namespace))
        for fault in list(self._faults):
            if fault.verb != verb or fault.resource not in (None, resource):
                continue
            fault.times -= 1
            if fault.times <= 0:
                self._faults.remove(fault)
            if fault.before is not None:
                fault.before(self)
            if fault.error is not None:
                raise fault.error
            return

    def _key(self, resource: Resource, name: str, namespace: str | None) -> Key:
        return (resource.plural, namespace if resource.namespaced else None, name)

    def _existing(self, resource: Resource, name: str, namespace: str | None) -> Manifest:
        try:
            return self.objects[self._key(resource, name, namespace)]
        except KeyError:
            raise NotFoundError(
                f"{resource.kind} {name} not found", status=404, reason="NotFound"
            ) from None

    def _store(
        self,
        resource: Resource,
        body: Manifest,
        *,
        create: bool,
        previous: Manifest | None = None,
    ) -> Manifest:
        meta = body.setdefault("metadata", {})
        key = self._key(resource, meta["name"], meta.get("namespace"))
        if create and key in self.objects:
            raise ConflictError("already exists", status=409, reason="AlreadyExists")
        meta["resourceVersion"] = str(next(self._versions))
        # An update keeps the object's identity, as the API server does.
        meta.setdefault("uid", (previous or {}).get("metadata", {}).get("uid") or str(uuid.uuid4()))
        body.setdefault("apiVersion", resource.api_version)
        body.setdefault("kind", resource.kind)
        if resource.group not in ("", "rbac.authorization.k8s.io", "admissionregistration.k8s.io"):
            generation = int((previous or {}).get("metadata", {}).get("generation", 0))
            spec_changed = previous is None or previous.get("spec") != body.get("spec")
            meta["generation"] = generation + 1 if spec_changed else generation
        self.objects[key] = body
        return body


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 merge patch (strategic merge behaves alike for what the operator patches)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _json_patch(target: Manifest, operations: list[Manifest]) -> Manifest:
    """The RFC 6902 operations the operator sends (test, add, replace)."""
    result = copy.deepcopy(target)
    for op in operations:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"][1:].split("/")
        ]
        node: Any = result
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        index: Any = int(last) if isinstance(node, list) else last
        if op["op"] == "test":
            if node[index] != op["value"]:
                raise ClusterError("JSON patch test failed", status=422, reason="Invalid")
        elif op["op"] in ("add", "replace"):
            node[index] = copy.deepcopy(op["value"])
        else:
            raise AssertionError(f"unsupported JSON patch operation {op['op']}")
    return result
