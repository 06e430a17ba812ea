"""A shared key-value store for the sidecars of a policy: Redis or Valkey (the protocol both speak).

The sidecar needs few operations from it, each bounded in time, and every
failure of the client library comes out as one :class:`StoreError` with a
``kind`` that is a metric label. :class:`SharedStore` is the small interface
the rest of the sidecar uses (the replay store today; per-client counts may
use the same connection later); :class:`RedisStore` runs it on ``redis-py``'s
asyncio client, so no call blocks the event loop. This module is the only one
that imports ``redis``.

Credentials come from a mounted Secret folder (``username``, ``password``;
for TLS ``ca.crt``, ``tls.crt``, ``tls.key``), read again for each new
connection so that a rotated Secret is used without a restart.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable
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

    No retries inside the client: a claim has one bounded attempt, and the
    caller decides what an unanswered claim means.
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
            client_name="powgate-sidecar",
            **options,
        )
        self._client = aioredis.Redis(connection_pool=pool)

    async def set_once(self, key: bytes, *, ttl_ms: int) -> bool:
        reply = await self._call(self._client.set(key, b"1", nx=True, px=max(1, ttl_ms)))
        # SET … NX answers OK when it stored the key, nil when the key existed.
        if reply is True:
            return True
        if reply is None:
            return False
        raise StoreError(StoreErrorKind.PROTOCOL, f"SET answered {str(reply)[:40]!r}")

    async def ping(self) -> None:
        reply = await self._call(self._client.ping())
        if reply is not True:
            raise StoreError(StoreErrorKind.PROTOCOL, f"PING answered {str(reply)[:40]!r}")

    async def close(self) -> None:
        await self._client.aclose(close_connection_pool=True)

    async def _call(self, command: Awaitable[Any]) -> Any:
        """Await one command within the timeout; every failure becomes a :class:`StoreError`."""
        try:
            async with asyncio.timeout(self.timeout):
                return await command
        except StoreError:
            raise
        except (TimeoutError, rexc.TimeoutError) as exc:
            raise StoreError(StoreErrorKind.TIMEOUT, f"no answer within {self.timeout:g}s") from exc
        except (rexc.AuthenticationError, rexc.AuthorizationError, rexc.NoPermissionError) as exc:
            raise StoreError(StoreErrorKind.AUTH, _first_line(exc)) from exc
        except rexc.AuthenticationWrongNumberOfArgsError as exc:
            raise StoreError(StoreErrorKind.AUTH, _first_line(exc)) from exc
        except rexc.ResponseError as exc:
            # NOAUTH and WRONGPASS may come as plain error answers.
            text = _first_line(exc)
            kind = StoreErrorKind.AUTH if text.startswith(("NOAUTH", "WRONGPASS")) else None
            raise StoreError(kind or StoreErrorKind.SERVER, text) from exc
        except rexc.InvalidResponse as exc:
            raise StoreError(StoreErrorKind.PROTOCOL, _first_line(exc)) from exc
        except rexc.ConnectionError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ssl.SSLError) or "SSL" in str(exc):
                raise StoreError(StoreErrorKind.TLS, _first_line(exc)) from exc
            raise StoreError(StoreErrorKind.UNREACHABLE, _first_line(exc)) from exc
        except rexc.RedisError as exc:
            raise StoreError(StoreErrorKind.PROTOCOL, _first_line(exc)) from exc
        except ssl.SSLError as exc:
            raise StoreError(StoreErrorKind.TLS, _first_line(exc)) from exc
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            # A reset mid-answer, or a garbled answer the parser could not take.
            raise StoreError(StoreErrorKind.PROTOCOL, _first_line(exc)) from exc


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
