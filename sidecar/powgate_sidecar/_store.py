"""A shared key-value store for the sidecars of a policy: Redis or Valkey (the protocol both speak).

The sidecar needs few operations from it, each bounded in time, and every
failure of the client library comes out as one :class:`StoreError` with a
``kind`` that is a metric label. :class:`SharedStore` is the small interface
the rest of the sidecar uses (the replay store, and per-client request
counts over one connection pool); :class:`RedisStore` runs it on ``redis-py``'s
asyncio client, so no call blocks the event loop. This module is the only one
that imports ``redis``.

Credentials come from a mounted Secret folder (``username``, ``password``;
for TLS ``ca.crt``, ``tls.crt``, ``tls.key``), read again for each new
connection so that a rotated Secret is used without a restart.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.credentials import CredentialProvider

from powgate.config import ReplayStoreSpec

__all__ = ["RedisStore", "SharedStore", "StoreError", "StoreErrorKind"]

#: Connections one sidecar process keeps to the store: claims of concurrent requests
#: share them; past this a claim waits for one (within its timeout).
MAX_CONNECTIONS: Final = 8
USERNAME_FILE: Final = "username"
PASSWORD_FILE: Final = "password"  # noqa: S105 - a file name
CA_FILE: Final = "ca.crt"
CERT_FILE: Final = "tls.crt"
KEY_FILE: Final = "tls.key"


class StoreErrorKind:
    """Why the store could not answer (values of the ``kind`` label)."""

    TIMEOUT: Final = "timeout"  # no answer within the bound
    UNREACHABLE: Final = "unreachable"  # refused, reset, name not resolved
    AUTH: Final = "auth"  # wrong or missing credentials, or no permission for the command
    TLS: Final = "tls"  # handshake or certificate check failed
    PROTOCOL: Final = "protocol"  # an answer that is not the protocol, or not what SET answers
    SERVER: Final = "server"  # an error answer: read-only replica, out of memory, loading
    CREDENTIALS: Final = "credentials"  # the mounted credential files cannot be read


class StoreError(Exception):
    """The store could not answer; ``kind`` is one of :class:`StoreErrorKind`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class SharedStore(Protocol):
    """What the sidecar asks of a shared store. Every method raises :class:`StoreError` only."""

    async def set_once(self, key: bytes, *, ttl_ms: int) -> bool:
        """Store ``key`` for ``ttl_ms`` unless it exists; ``True`` when this call stored it."""
        ...

    async def add_counts(
        self, key: bytes, counts: Sequence[tuple[bytes, int]], *, ttl_ms: int, previous: bytes
    ) -> list[tuple[int, int]]:
        """Add each ``(field, count)`` to the hash ``key``, which then lives ``ttl_ms``.

        Returns, for each field in order, its total in ``key`` after the
        addition and its total in the hash ``previous`` (0 where absent).
        """
        ...

    async def ping(self) -> None:
        """Ask the store whether it answers."""
        ...

    async def close(self) -> None: ...


class _FileCredentials(CredentialProvider):
    """Username and password from the mounted Secret, read at each new connection."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        try:
            password = _read(self._folder / PASSWORD_FILE)
            username = _read(self._folder / USERNAME_FILE)
        except OSError as exc:
            raise StoreError(StoreErrorKind.CREDENTIALS, f"credentials: {exc}") from exc
        if password is None:
            # No password in the Secret: connect as the default user without AUTH.
            return ("",) if username is None else (username, "")
        return (password,) if username is None else (username, password)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return await asyncio.to_thread(self.get_credentials)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


class RedisStore:
    """:class:`SharedStore` on a Redis/Valkey server, through ``redis.asyncio``.

    Claims made in one turn of the event loop leave together, as one
    pipeline on one connection (``SET … NX PX`` each, answers in order): under
    load the client's work per round trip (a connection from the pool,
    packing, the socket write, waking up for the answer) is shared by the
    batch instead of paid by each request. At most :data:`MAX_CONNECTIONS`
    batches are in flight; claims arriving meanwhile form the next one.

    Each batch has one timer, started by its first claim: a claim waits at
    most ``timeout`` for its answer, whether the batch waited for a
    connection or for the server. There are no retries inside the client: a
    claim has one bounded attempt, and the caller decides what an unanswered
    claim means. (A claim that timed out may still have been stored: the
    server may have received it.)
    """

    def __init__(self, spec: ReplayStoreSpec, *, credentials: Path | None) -> None:
        timeout = spec.timeout_milliseconds / 1000
        self.timeout = timeout
        options: dict[str, Any] = {}
        if credentials is not None and credentials.is_dir():
            options["credential_provider"] = _FileCredentials(credentials)
        if spec.tls:
            options.update(_tls_options(spec, credentials))
        pool = aioredis.BlockingConnectionPool(
            host=spec.host,
            port=spec.port,
            db=spec.database,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            **options,
        )
        self._client = aioredis.Redis(connection_pool=pool)
        #: The batch being gathered: (key, ttl in ms, the claim's future).
        self._batch: list[tuple[bytes, int, asyncio.Future[bool]]] = []
        self._flushing = False
        self._in_flight = 0
        self._sending: set[asyncio.Task[None]] = set()

    async def set_once(self, key: bytes, *, ttl_ms: int) -> bool:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bool] = loop.create_future()
        if not self._batch:
            # The batch's one timer: whatever holds it up, its claims end in time.
            loop.call_later(self.timeout, _expire, self._batch, self.timeout)
        self._batch.append((key, max(1, ttl_ms), answer))
        if not self._flushing and self._in_flight < MAX_CONNECTIONS:
            self._flushing = True
            loop.call_soon(self._flush)
        return await answer

    def _flush(self) -> None:
        """Send the batch gathered in this turn (called soon after its first claim)."""
        self._flushing = False
        batch = [claim for claim in self._batch if not claim[2].done()]
        self._batch = []
        if not batch:
            return
        self._in_flight += 1
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[bytes, int, asyncio.Future[bool]]]) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, ttl_ms, _ in batch:
                pipe.set(key, b"1", nx=True, px=ttl_ms)
            replies: list[Any] = await self._call(pipe.execute(raise_on_error=False))
        except StoreError as exc:
            replies = [exc] * len(batch)
        finally:
            self._in_flight -= 1
            if self._batch and not self._flushing:
                # Claims that waited for a connection: their batch goes now.
                self._flushing = True
                asyncio.get_running_loop().call_soon(self._flush)
        for (_, _, answer), reply in zip(batch, replies, strict=True):
            if answer.done():
                continue  # timed out meanwhile
            if isinstance(reply, StoreError):
                # One exception object per claim: each is raised in its own request.
                answer.set_exception(StoreError(reply.kind, str(reply)))
            elif isinstance(reply, Exception):
                answer.set_exception(_translate(reply))
            elif reply is True or reply is None:
                # SET … NX answers OK when it stored the key, nil when the key existed.
                answer.set_result(reply is True)
            else:
                answer.set_exception(
                    StoreError(StoreErrorKind.PROTOCOL, f"SET answered {str(reply)[:40]!r}")
                )

    async def add_counts(
        self, key: bytes, counts: Sequence[tuple[bytes, int]], *, ttl_ms: int, previous: bytes
    ) -> list[tuple[int, int]]:
        # One pipeline, one round trip: HINCRBY answers each field's new total.
        pipe = self._client.pipeline(transaction=False)
        for field, count in counts:
            pipe.hincrby(key, field, count)
        pipe.pexpire(key, max(1, ttl_ms))
        pipe.hmget(previous, [field for field, _ in counts])
        replies: list[Any] = await self._call(pipe.execute(raise_on_error=True))
        if len(replies) != len(counts) + 2:
            raise StoreError(StoreErrorKind.PROTOCOL, f"{len(replies)} answers to a pipeline")
        totals, before = replies[: len(counts)], replies[-1]
        if not isinstance(before, list) or len(before) != len(counts):
            raise StoreError(StoreErrorKind.PROTOCOL, "HMGET answered no list of the fields")
        try:
            return [
                (_count(total), 0 if old is None else _count(int(old)))
                for total, old in zip(totals, before, strict=True)
            ]
        except (TypeError, ValueError) as exc:
            raise StoreError(StoreErrorKind.PROTOCOL, f"not a count: {exc}") from exc

    async def ping(self) -> None:
        reply = await self._call(self._client.ping())
        if reply is not True:
            raise StoreError(StoreErrorKind.PROTOCOL, f"PING answered {str(reply)[:40]!r}")

    async def close(self) -> None:
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        await self._client.aclose(close_connection_pool=True)

    async def _call(self, command: Awaitable[Any]) -> Any:
        """Await one command within the timeout; every failure becomes a :class:`StoreError`."""
        try:
            async with asyncio.timeout(self.timeout):
                return await command
        except (TimeoutError, rexc.TimeoutError) as exc:
            raise StoreError(StoreErrorKind.TIMEOUT, f"no answer within {self.timeout:g}s") from exc
        except StoreError:
            raise
        except Exception as exc:  # every failure of the client is translated, here only
            raise _translate(exc) from exc


def _expire(batch: list[tuple[bytes, int, asyncio.Future[bool]]], timeout: float) -> None:
    """The batch's timer: every claim of ``batch`` still unanswered fails."""
    for _, _, claim in batch:
        if not claim.done():
            claim.set_exception(
                StoreError(StoreErrorKind.TIMEOUT, f"no answer within {timeout:g}s")
            )


def _count(value: object) -> int:
    """A count as the store answered it; ``ValueError`` for anything else."""
    if type(value) is not int or value < 0:
        raise ValueError(repr(value)[:40])
    return value


def _translate(exc: BaseException) -> StoreError:
    """The :class:`StoreError` for a failure of ``redis-py`` (or of the socket under it)."""
    text = _first_line(exc)
    if isinstance(exc, rexc.TimeoutError):
        return StoreError(StoreErrorKind.TIMEOUT, text)
    if isinstance(
        exc,
        rexc.AuthenticationError
        | rexc.AuthorizationError
        | rexc.NoPermissionError
        | rexc.AuthenticationWrongNumberOfArgsError,
    ):
        return StoreError(StoreErrorKind.AUTH, text)
    if isinstance(exc, rexc.ResponseError):
        # NOAUTH and WRONGPASS may come as plain error answers.
        if text.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
            return StoreError(StoreErrorKind.AUTH, text)
        return StoreError(StoreErrorKind.SERVER, text)
    if isinstance(exc, rexc.ConnectionError):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLError) or "SSL" in str(exc):
            return StoreError(StoreErrorKind.TLS, text)
        return StoreError(StoreErrorKind.UNREACHABLE, text)
    if isinstance(exc, ssl.SSLError):
        return StoreError(StoreErrorKind.TLS, text)
    if isinstance(exc, StoreError):
        return exc
    # InvalidResponse, other client errors, a reset mid-answer, a garbled answer.
    return StoreError(StoreErrorKind.PROTOCOL, text)


def _tls_options(spec: ReplayStoreSpec, credentials: Path | None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "connection_class": aioredis.SSLConnection,
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_min_version": ssl.TLSVersion.TLSv1_2,
    }
    if credentials is not None:
        for option, name in (
            ("ssl_ca_certs", CA_FILE),
            ("ssl_certfile", CERT_FILE),
            ("ssl_keyfile", KEY_FILE),
        ):
            if (credentials / name).is_file():
                options[option] = str(credentials / name)
    return options


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200] if text else type(exc).__name__
