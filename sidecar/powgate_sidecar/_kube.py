"""Watching the rendered config object through the Kubernetes API, as a pod does.

Plain aiohttp against the API server (no client library): in-cluster
credentials from the service-account mount, a LIST narrowed to one name, then
a WATCH resumed from the last resourceVersion, with bookmarks. A ``410 Gone``
means the version is too old: list again. Any other failure backs off with
full jitter and keeps the configuration in force.

One :class:`KubeClient` (one connection pool, one token cache) serves any
number of :class:`ConfigMapWatcher` tasks, so a process can watch many
objects; each watch holds one long-poll connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp

from powgate.config import CONFIG_DATA_KEY
from powgate.reputation import REPUTATION_DATA_KEY

__all__ = ["ConfigMapWatcher", "ConfigSink", "KubeClient", "KubeEndpoint"]

log = logging.getLogger("powgate.sidecar")

SERVICE_ACCOUNT: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_SOURCE: Final = "kubernetes"
_REPUTATION_SOURCE: Final = "reputation"
_MAX_OBJECT_BYTES: Final = 1024 * 1024  # the API server's own cap on a ConfigMap


class ConfigSink(Protocol):
    """Where a watcher delivers documents (the sidecar implements it)."""

    def apply_document(self, text: str | bytes | None, *, source: str) -> bool: ...

    def apply_reputation(self, text: str | bytes | None, *, source: str) -> bool:
        """The reputation list beside the document (None: there is none)."""
        ...

    def report_source_error(self, *, source: str, why: str) -> None: ...


@dataclass(frozen=True, slots=True)
class KubeEndpoint:
    """How to reach the API server; defaults are the in-cluster ones."""

    api_url: str
    token_file: Path | None
    ca_file: Path | None

    @classmethod
    def resolve(
        cls, *, api_url: str | None, token_file: str | None, ca_file: str | None
    ) -> KubeEndpoint:
        """Explicit settings win; otherwise the pod's environment and service-account mount."""
        if api_url is None:
            host, port = (
                os.environ.get("KUBERNETES_SERVICE_HOST"),
                os.environ.get("KUBERNETES_SERVICE_PORT"),
            )
            if not host or not port:
                raise ValueError(
                    "not running in a pod (KUBERNETES_SERVICE_HOST/PORT unset): pass --kube-api-url"
                )
            api_url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        default_token, default_ca = SERVICE_ACCOUNT / "token", SERVICE_ACCOUNT / "ca.crt"
        token = (
            Path(token_file) if token_file else (default_token if default_token.exists() else None)
        )
        ca = Path(ca_file) if ca_file else (default_ca if default_ca.exists() else None)
        return cls(api_url=api_url.rstrip("/"), token_file=token, ca_file=ca)


class KubeClient:
    """A shared session to the API server with a bearer token re-read when the file changes."""

    def __init__(self, endpoint: KubeEndpoint) -> None:
        self.endpoint = endpoint
        self._session: aiohttp.ClientSession | None = None
        self._token: tuple[tuple[int, int], str] | None = None

    async def __aenter__(self) -> KubeClient:
        context: ssl.SSLContext | bool = True
        if self.endpoint.ca_file is not None:
            context = ssl.create_default_context(cafile=str(self.endpoint.ca_file))
        # No connection cap: every watch keeps one connection open for minutes.
        connector = aiohttp.TCPConnector(limit=0, ssl=context)
        # A watch event is one line holding a whole object: size the line buffer for the largest.
        self._session = aiohttp.ClientSession(connector=connector, read_bufsize=_MAX_OBJECT_BYTES)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        path = self.endpoint.token_file
        if path is None:
            return headers
        # Projected tokens rotate (about hourly): re-read when the file changes.
        st = os.stat(path)
        stamp = (st.st_ino, st.st_mtime_ns)
        if self._token is None or self._token[0] != stamp:
            self._token = (stamp, path.read_text().strip())
        headers["Authorization"] = f"Bearer {self._token[1]}"
        return headers

    def get(self, path: str, *, params: dict[str, str], read_timeout: float) -> Any:
        """An ``async with`` request context for ``path`` (raises on transport errors)."""
        assert self._session is not None, "use KubeClient as an async context manager"
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=read_timeout)
        return self._session.get(
            self.endpoint.api_url + path, params=params, headers=self._headers(), timeout=timeout
        )


class _GoneError(Exception):
    """The resourceVersion we watch from is compacted away: list again."""


class ConfigMapWatcher:
    """Keeps a :class:`ConfigSink` in step with one ConfigMap's ``config.json`` and
    ``reputation.json`` (the list the operator publishes beside it)."""

    def __init__(
        self,
        *,
        client: KubeClient,
        namespace: str,
        name: str,
        sink: ConfigSink,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        watch_seconds: int = 300,
    ) -> None:
        self._client = client
        self._name = name
        self._path = f"/api/v1/namespaces/{namespace}/configmaps"
        self._sink = sink
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._watch_seconds = watch_seconds
        self._last_data: str | None = None
        self._last_reputation: str | None = None
        #: Where the next WATCH resumes: the last version seen, even by a watch that broke.
        self._version: str | None = None

    async def run(self) -> None:
        """List and watch until cancelled."""
        failures = 0
        while True:
            try:
                if self._version is None:
                    self._version = await self._list()
                await self._watch()
                failures = 0
            except _GoneError:
                log.info(
                    "config watch expired (410 Gone); listing again", extra={"source": _SOURCE}
                )
                self._version = None
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                failures += 1
                why = f"API server: {type(exc).__name__}: {exc}"
                self._sink.report_source_error(source=_SOURCE, why=why)
                # Full jitter: a restarted API server is not hit by every sidecar at once.
                delay = random.uniform(0, min(self._backoff_cap, self._backoff_base * 2**failures))
                await asyncio.sleep(delay)

    def _selector(self) -> dict[str, str]:
        return {"fieldSelector": f"metadata.name={self._name}"}

    async def _list(self) -> str:
        async with self._client.get(
            self._path, params=self._selector(), read_timeout=30
        ) as response:
            body = await self._json(response)
        items = body.get("items")
        if not isinstance(items, list):
            raise ValueError("LIST answer has no items")
        if items:
            self._deliver(items[0])
        else:
            self._deliver_missing()
        version = body.get("metadata", {}).get("resourceVersion")
        if not isinstance(version, str):
            raise ValueError("LIST answer has no resourceVersion")
        return version

    async def _watch(self) -> None:
        assert self._version is not None
        params = {
            **self._selector(),
            "watch": "1",
            "resourceVersion": self._version,
            "allowWatchBookmarks": "true",
            # Spread the API server's re-watch load over a window.
            "timeoutSeconds": str(
                random.randint(self._watch_seconds * 4 // 5, self._watch_seconds)
            ),
        }
        async with self._client.get(
            self._path, params=params, read_timeout=self._watch_seconds + 30
        ) as response:
            if response.status == 410:
                raise _GoneError
            if response.status != 200:
                raise ValueError(
                    f"WATCH answered {response.status}: {(await response.text())[:200]}"
                )
            try:
                # Events are newline-delimited JSON; one event is at most one object.
                async for line in response.content:
                    if len(line) > _MAX_OBJECT_BYTES * 2:
                        raise ValueError("watch event larger than any ConfigMap")
                    if line.strip():
                        self._version = self._event(json.loads(line), self._version)
            except asyncio.CancelledError:
                # Stopping: drop the connection at once. A graceful TLS close
                # finishes on the event loop later, and a loop that is ending
                # would leave the socket half-closed behind it.
                connection = response.connection
                if connection is not None and connection.transport is not None:
                    connection.transport.abort()
                raise

    def _event(self, event: Any, version: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _GoneError
            raise ValueError(f"watch error: {obj.get('message', obj)}")
        new_version = obj.get("metadata", {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            self._deliver(obj)
        elif kind == "DELETED":
            self._deliver_missing()
        return new_version if isinstance(new_version, str) else version

    def _deliver(self, obj: Any) -> None:
        data = obj.get("data") or {}
        text = data.get(CONFIG_DATA_KEY)
        listed = data.get(REPUTATION_DATA_KEY)
        listed = listed if isinstance(listed, str) else None
        if listed != self._last_reputation:
            # Its own change: the operator rewrites the list far more often than the document.
            self._last_reputation = listed
            self._sink.apply_reputation(listed, source=_REPUTATION_SOURCE)
        if text is not None and text == self._last_data:
            return  # a relist or resync of what is already applied
        self._last_data = text if isinstance(text, str) else None
        self._sink.apply_document(text if isinstance(text, str) else None, source=_SOURCE)

    def _deliver_missing(self) -> None:
        # Forgotten, so that the object coming back with the same document is
        # delivered again: the sink has been told it is gone.
        self._last_data = None
        self._sink.apply_document(None, source=_SOURCE)

    @staticmethod
    async def _json(response: aiohttp.ClientResponse) -> Any:
        if response.status == 410:
            raise _GoneError
        if response.status != 200:
            raise ValueError(f"LIST answered {response.status}: {(await response.text())[:200]}")
        body = await response.read()
        if len(body) > _MAX_OBJECT_BYTES * 2:
            raise ValueError("LIST answer larger than any ConfigMap")
        return json.loads(body)
