"""One keep-alive connection to the API server, read on an asyncio protocol with llhttp.

A config watcher LISTs, then WATCHes: one long chunked GET whose body is
newline-delimited JSON events, then WATCHes again when the server ends it.
Every config edit reaches every sidecar as one event, so the per-event cost
is paid once per pod per edit (at 10,000 pods, 10,000 times). Read through
aiohttp, each event went through a ``StreamReader``, a ``readline`` and a
task wake-up; here llhttp (through ``httptools``, as on the proxy port)
parses the answer inside the protocol and each complete line is handed to
the watcher synchronously, from the ``data_received`` that completed it.

All of a watcher's requests share its connection, one at a time, as long as
the server keeps it alive: 10,000 sidecars starting at once cost the API
server one TLS handshake each, not one per request.

The connection knows HTTP and lines, nothing of Kubernetes: the watcher
turns answers into events, and ends a watch by raising from its line handler.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

__all__ = ["KubeConnection", "connect"]

#: Of an answer other than 200, the start of the body kept for the error message.
_ERROR_BODY_BYTES: Final = 4096


class KubeConnection(asyncio.Protocol):
    """One connection; :meth:`get` sends a request and waits for the whole answer.

    A 200 answer's body is either kept whole (``body``) or split into lines
    handed to ``on_line`` as they arrive; an error's body is kept (its start)
    in ``error_body``. A request fails when the connection breaks before the
    answer ends, nothing arrives for ``read_timeout`` seconds, the answer is
    not HTTP, a line or body outgrows ``max_body``, or ``on_line`` raises; the
    connection is closed then, and after an answer that does not keep it alive.
    """

    # The request in flight (see _begin).
    _on_line: Callable[[bytes], None] | None
    _read_timeout: float
    _deadline: float
    _status: int
    _keep_alive: bool
    _complete: bool
    #: A 200 answer's body, when it is not read line by line.
    body: bytearray
    #: The start of an answer's body when it is not 200.
    error_body: bytearray
    #: The start of a line whose end has not arrived yet.
    _partial: bytes

    def __init__(self, *, host: str, max_body: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._host = host
        self._max_body = max_body
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        #: Set once the connection is gone or unusable: no further request is sent on it.
        self.closed = False
        self._finished: asyncio.Future[int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: Complete lines of the data being parsed, handed on once llhttp returns.
        self._lines: list[bytes] = []
        self._begin(on_line=None, read_timeout=0.0)

    # -- use ------------------------------------------------------------------

    async def get(
        self,
        target: str,
        *,
        headers: dict[str, str],
        read_timeout: float,
        on_line: Callable[[bytes], None] | None = None,
    ) -> int:
        """GET ``target`` (path and query); the answer's status once it has ended.

        With ``on_line`` the body goes to it line by line (a watch); without, it is
        kept in ``body``. Cancelling closes the connection.
        """
        assert self._finished is None, "one request at a time"
        if self.closed or self._transport is None:
            raise ConnectionResetError("the connection to the API server is closed")
        lines = [f"GET {target} HTTP/1.1", f"Host: {self._host}"]
        for name, value in headers.items():
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"the {name} header holds a line break")
            lines.append(f"{name}: {value}")
        finished: asyncio.Future[int] = self._loop.create_future()
        self._finished = finished
        self._begin(on_line=on_line, read_timeout=read_timeout)
        self._timer = self._loop.call_at(self._deadline, self._check_deadline)
        self._transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            return await finished
        except BaseException:
            self.close()
            raise
        finally:
            self._finished = None
            self._on_line = None
            self._cancel_timer()

    def close(self) -> None:
        """Drop the connection at once.

        Not a graceful TLS close: that finishes on the event loop later, and a
        loop that is ending would leave the socket half-closed behind it.
        """
        self.closed = True
        self._cancel_timer()
        if self._transport is not None:
            self._transport.abort()
            self._transport = None

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio's classes, only alike.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        finished = self._finished
        if finished is None or finished.done():
            # Nothing was asked: a server talking out of turn is not trusted further.
            self.close()
            return
        # The timer is re-armed only when it fires: one float store per chunk here.
        self._deadline = self._loop.time() + self._read_timeout
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # An oversized line or body is reported from its callback.
            self._fail(exc.__context__ or ValueError(f"API server answer is not HTTP: {exc}"))
            return
        on_line, lines, self._lines = self._on_line, self._lines, []
        if on_line is not None:
            try:
                for line in lines:
                    on_line(line)
            except Exception as exc:  # the watcher's own verdict on an event ends the request
                self._fail(exc)
                return
        if self._complete:
            # Only now: an event in the answer's last data (a 410 ERROR event) comes first.
            if not self._keep_alive:
                self.close()
            finished.set_result(self._status)

    def eof_received(self) -> bool | None:
        return False  # close our side too: connection_lost reports the end

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self._transport = None
        self._fail(exc or ConnectionResetError("the API server closed the connection"))

    # -- httptools callbacks ----------------------------------------------------

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        # Asked here: llhttp forgets it once the message is complete.
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, data: bytes) -> None:
        if self._status != 200:
            if len(self.error_body) < _ERROR_BODY_BYTES:
                self.error_body += data[: _ERROR_BODY_BYTES - len(self.error_body)]
            return
        if self._on_line is None:
            self.body += data
            if len(self.body) > self._max_body:
                raise ValueError("API server answer larger than any ConfigMap")
            return
        if b"\n" not in data:
            self._partial += data
        else:
            *complete, self._partial = (self._partial + data).split(b"\n")
            self._lines += complete
        if len(self._partial) > self._max_body:
            raise ValueError("watch event larger than any ConfigMap")

    def on_message_complete(self) -> None:
        self._complete = True
        if self._partial.strip():
            self._lines.append(self._partial)  # a last event without its newline
        self._partial = b""

    # -- internals ------------------------------------------------------------

    def _begin(self, *, on_line: Callable[[bytes], None] | None, read_timeout: float) -> None:
        """The state of one request, fresh."""
        self._on_line = on_line
        self._read_timeout = read_timeout
        self._deadline = self._loop.time() + read_timeout
        self._status = 0
        self._keep_alive = False
        self._complete = False
        self.body = bytearray()
        self.error_body = bytearray()
        self._partial = b""

    def _fail(self, exc: BaseException) -> None:
        finished = self._finished
        if finished is not None and not finished.done():
            finished.set_exception(exc)
        self.close()

    def _check_deadline(self) -> None:
        self._timer = None
        if self._finished is None or self._finished.done():
            return
        if self._loop.time() >= self._deadline:
            self._fail(TimeoutError(f"no answer from the API server for {self._read_timeout:g} s"))
        else:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def connect(
    url: str, *, ssl_context: ssl.SSLContext | None, connect_seconds: float, max_body: int
) -> KubeConnection:
    """A connection to the server of ``url`` (``http``, or ``https`` with ``ssl_context``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    connection = KubeConnection(host=parts.netloc, max_body=max_body)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(connect_seconds):
            await loop.create_connection(
                lambda: connection,
                parts.hostname,
                parts.port or (443 if tls else 80),
                ssl=(ssl_context or ssl.create_default_context()) if tls else None,
                server_hostname=parts.hostname if tls else None,
            )
    except TimeoutError:
        connection.close()  # it may have been made as the time ran out
        raise TimeoutError(
            f"no connection to the API server within {connect_seconds:g} s"
        ) from None
    except BaseException:
        # Cancellation may land after the connection was made.
        connection.close()
        raise
    return connection
