"""The production :class:`._cluster.Cluster`: the official ``kubernetes`` client, in threads.

This is the one place that knows the client's exceptions (and urllib3's
beneath them) and turns them into :class:`._cluster.ClusterError`: the rest
of the operator never sees an ``ApiException``. Requests go through the
client's ``ApiClient`` (its configuration, authentication and connection
pool) with manifests as plain JSON, so every kind shares one code path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from http import HTTPStatus
from typing import Any, Final

import urllib3
from kubernetes import client as k8s

from ._cluster import (
    ClusterError,
    ConflictError,
    ForbiddenError,
    GoneError,
    Manifest,
    NotFoundError,
    PatchType,
    Resource,
    UnavailableError,
)

__all__ = ["KubeCluster", "translate"]

#: The API server's own message is kept, shortened: it names the field or the conflict.
_MESSAGE_LIMIT: Final = 300
_BY_STATUS: Final[dict[int, type[ClusterError]]] = {
    HTTPStatus.NOT_FOUND: NotFoundError,
    HTTPStatus.CONFLICT: ConflictError,
    HTTPStatus.GONE: GoneError,
    HTTPStatus.FORBIDDEN: ForbiddenError,
}


def translate(*, status: int, reason: str, body: bytes | str | None, what: str) -> ClusterError:
    """The project's error for an answer of the API server with ``status``."""
    message = reason
    if body:
        with contextlib.suppress(ValueError, AttributeError):
            message = str(json.loads(body).get("message") or reason)
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = UnavailableError if status >= 500 or status == 429 else ClusterError
    return cls(f"{what}: HTTP {status}: {message[:_MESSAGE_LIMIT]}", status=status, reason=reason)


class KubeCluster:
    """Each call runs the blocking client in the loop's default executor."""

    def __init__(self, api: k8s.ApiClient, *, timeout: float = 30.0) -> None:
        self._api = api
        self._timeout = timeout

    async def get(self, resource: Resource, name: str, *, namespace: str | None) -> Manifest:
        path = resource.path(namespace=namespace, name=name)
        return await self._call("GET", path, what=f"get {resource.kind} {name}")

    async def list_objects(self, resource: Resource, *, namespace: str | None) -> list[Manifest]:
        path = resource.path(namespace=namespace)
        listing = await self._call("GET", path, what=f"list {resource.plural}")
        items = listing.get("items") or []
        for item in items:
            # A list's items carry no kind of their own; callers read manifests alike.
            item.setdefault("apiVersion", resource.api_version)
            item.setdefault("kind", resource.kind)
        return list(items)

    async def create(self, resource: Resource, body: Manifest) -> Manifest:
        meta = body["metadata"]
        path = resource.path(namespace=meta.get("namespace"))
        return await self._call("POST", path, body=body, what=f"create {resource.kind}")

    async def replace(self, resource: Resource, body: Manifest) -> Manifest:
        meta = body["metadata"]
        path = resource.path(namespace=meta.get("namespace"), name=meta["name"])
        return await self._call("PUT", path, body=body, what=f"replace {resource.kind}")

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
        path = resource.path(namespace=namespace, name=name, subresource=subresource)
        return await self._call(
            "PATCH",
            path,
            body=patch,
            content_type=patch_type.value,
            what=f"patch {resource.kind} {name}",
        )

    async def delete(self, resource: Resource, name: str, *, namespace: str | None) -> None:
        path = resource.path(namespace=namespace, name=name)
        await self._call("DELETE", path, what=f"delete {resource.kind} {name}")

    async def server_version(self) -> tuple[str, str]:
        info = await self._call("GET", "/version", what="get the server version")
        return str(info.get("major", "")), str(info.get("minor", ""))

    async def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Manifest:
        return await asyncio.to_thread(self._request, method, path, body, content_type, what)

    def _request(self, method: str, path: str, body: Any, content_type: str, what: str) -> Manifest:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            request = self._api.param_serialize(
                method=method,
                resource_path=path,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(*request, _request_timeout=self._timeout)
            data = response.read()  # type: ignore[no-untyped-call]  # the client is untyped
        except k8s.ApiException as exc:
            raise translate(
                status=int(exc.status or 0), reason=str(exc.reason), body=exc.body, what=what
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise UnavailableError(f"{what}: {exc}"[:_MESSAGE_LIMIT]) from exc
        if not HTTPStatus.OK <= response.status < HTTPStatus.MULTIPLE_CHOICES:
            raise translate(
                status=response.status, reason=str(response.reason), body=data, what=what
            )
        try:
            result = json.loads(data)
        except ValueError as exc:
            raise UnavailableError(f"{what}: the answer is not JSON") from exc
        if not isinstance(result, dict):
            raise UnavailableError(f"{what}: the answer is not an object")
        return result
