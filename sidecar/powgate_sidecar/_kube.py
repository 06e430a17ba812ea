"""Watching the rendered config object through the Kubernetes API, as a pod does.

Plain HTTP against the API server (no client library): in-cluster
credentials from the service-account mount, a LIST narrowed to one name, then
a WATCH resumed from the last resourceVersion, with bookmarks, both on one
keep-alive connection read with llhttp on an asyncio protocol
(:mod:`._kube_connection`: every edit is one event per sidecar, the hot part).
A ``410 Gone`` means the version is too old: list again. Any other failure
backs off with full jitter and keeps the configuration in force.

One :class:`KubeClient` (one TLS context, one token cache) serves any number
of :class:`ConfigMapWatcher` tasks, so a process can watch many objects; each
watcher holds one long-poll connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlencode, urlsplit

from pydantic_core import from_json

from powgate.config import CONFIG_DATA_KEY
from powgate.reputation import REPUTATION_DATA_KEY

from ._kube_connection import KubeConnection, connect

__all__ = ["ConfigMapWatcher", "ConfigSink", "KubeClient", "KubeEndpoint"]

log = logging.getLogger("powgate.sidecar")

SERVICE_ACCOUNT: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_SOURCE: Final = "kubernetes"
_REPUTATION_SOURCE: Final = "reputation"
_MAX_OBJECT_BYTES: Final = 1024 * 1024  # the API server's own cap on a ConfigMap
#: A watch event is one line holding one object; JSON escaping can grow it.
_MAX_EVENT_BYTES: Final = _MAX_OBJECT_BYTES * 2
_CONNECT_SECONDS: Final = 10


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
    """The API server's address, TLS context and bearer token (re-read when the file
    changes), shared by any number of watchers; each holds a connection of its own."""

    def __init__(self, endpoint: KubeEndpoint) -> None:
        self.endpoint = endpoint
        self._ssl: ssl.SSLContext | None = None
        self._token: tuple[tuple[int, int], str] | None = None
        self._prefix = urlsplit(endpoint.api_url).path.rstrip("/")
        self._connections: weakref.WeakSet[KubeConnection] = weakref.WeakSet()

    async def __aenter__(self) -> KubeClient:
        # One context for every connection: building one loads the CA file.
        self._ssl = ssl.create_default_context(
            cafile=None if self.endpoint.ca_file is None else str(self.endpoint.ca_file)
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        for connection in list(self._connections):
            connection.close()

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

    async def connect(self) -> KubeConnection:
        """A new connection to the API server (raises on transport errors)."""
        assert self._ssl is not None, "use KubeClient as an async context manager"
        connection = await connect(
            self.endpoint.api_url,
            ssl_context=self._ssl,
            connect_seconds=_CONNECT_SECONDS,
            max_body=_MAX_EVENT_BYTES,
        )
        self._connections.add(connection)
        return connection

    async def get(
        self,
        connection: KubeConnection,
        path: str,
        *,
        params: dict[str, str],
        read_timeout: float,
        on_line: Callable[[bytes], None] | None = None,
    ) -> int:
        """GET ``path`` on ``connection``: the answer's status once it has ended (see
        :meth:`KubeConnection.get`); raises on transport errors."""
        return await connection.get(
            f"{self._prefix}{path}?{urlencode(params)}",
            headers=self._headers(),
            read_timeout=read_timeout,
            on_line=on_line,
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
        #: The LIST and every WATCH after it share one connection while it lives.
        self._connection: KubeConnection | None = None

    async def run(self) -> None:
        """List and watch until cancelled."""
        failures = 0
        try:
            while True:
                try:
                    if self._version is None:
                        self._version = await self._list()
                    await self._watch()
                    failures = 0
                except _GoneError:
                    log.info(
                        "config watch expired (410 Gone); listing again",
                        extra={"source": _SOURCE},
                    )
                    self._version = None
                except (TimeoutError, OSError, ValueError) as exc:
                    failures += 1
                    why = f"API server: {type(exc).__name__}: {exc}"
                    self._sink.report_source_error(source=_SOURCE, why=why)
                    # Full jitter: a restarted API server is not hit by every sidecar at once.
                    cap = min(self._backoff_cap, self._backoff_base * 2**failures)
                    await asyncio.sleep(random.uniform(0, cap))
        finally:
            if self._connection is not None:
                self._connection.close()

    async def _get(
        self,
        params: dict[str, str],
        *,
        read_timeout: float,
        on_line: Callable[[bytes], None] | None = None,
    ) -> KubeConnection:
        """The connection, once it has the whole answer to a GET of the ConfigMaps."""
        connection = self._connection
        if connection is None or connection.closed:
            connection = self._connection = await self._client.connect()
        status = await self._client.get(
            connection, self._path, params=params, read_timeout=read_timeout, on_line=on_line
        )
        if status == 410:
            raise _GoneError
        if status != 200:
            verb = "LIST" if on_line is None else "WATCH"
            body = connection.error_body.decode(errors="replace")
            raise ValueError(f"{verb} answered {status}: {body[:200]}")
        return connection

    def _selector(self) -> dict[str, str]:
        return {"fieldSelector": f"metadata.name={self._name}"}

    async def _list(self) -> str:
        connection = await self._get(self._selector(), read_timeout=30)
        body = from_json(connection.body)
        if not isinstance(body, dict):
            raise ValueError("LIST answer is not an object")
        items = body.get("items")
        if not isinstance(items, list):
            raise ValueError("LIST answer has no items")
        metadata = body.get("metadata")
        version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        if not isinstance(version, str):
            raise ValueError("LIST answer has no resourceVersion")
        if items and not isinstance(items[0], dict):
            raise ValueError("LIST answer's item is not an object")
        if items:
            self._deliver(items[0])
        else:
            self._deliver_missing()
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
        # Events are handed to _line as they arrive; this returns at the answer's end
        # (the server's timeoutSeconds). Cancelled, the connection is dropped at once.
        await self._get(params, read_timeout=self._watch_seconds + 30, on_line=self._line)

    def _line(self, line: bytes) -> None:
        """One line of the watch: newline-delimited JSON, one event (at most one object)."""
        if line.strip():
            assert self._version is not None
            # pydantic-core's JSON parser (jiter): half of json.loads' time per event, and
            # too deep a nesting is a ValueError like any other bad event, not a RecursionError.
            self._version = self._event(from_json(line), self._version)

    def _event(self, event: Any, version: str) -> str:
        if not isinstance(event, dict):
            raise ValueError("watch event is not an object")
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata", {}), dict):
            raise ValueError(f"watch event {kind!r} holds no object")
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
        if not isinstance(data, dict):
            raise ValueError("the ConfigMap's data is not an object")
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
