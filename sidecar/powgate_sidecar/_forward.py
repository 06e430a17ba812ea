"""Forwarding admitted requests: a client over a pool of upstream connections.

The split is httpx's: :class:`UpstreamPool` is the transport (keep-alive
connections to one upstream, bounded, with a share kept for paid
requests), :class:`Forwarder` the client that turns a request into bytes
for the upstream and the upstream's answer into bytes for the client.
Both run on callbacks, not tasks: a request that finds an idle connection
goes out from the parser callback that completed it, and the answer is
relayed from the upstream's ``data_received``, one write per read, so small
answers leave in one write with their head and Server-Sent Events go out
event by event. Writes on both sides leave at the end of the loop's turn,
with the turn's others (``_outbox``).

Flow control lives in two places only: a client whose writes back up
pauses reading from the upstream (:meth:`Forward.writable`), an upstream
whose writes back up pauses reading from the client
(:meth:`UpstreamConnection.pause_writing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, TypeAlias, cast
from urllib.parse import urlsplit

import httptools

from . import _http
from ._carriers import SOLUTION_COOKIE, SOLUTION_HEADER, SOLVE_MS_HEADER, split_cookie
from ._connection import Exchange
from ._http import HOP_BY_HOP, Request
from ._limits import Limits
from ._metrics import Metrics
from ._outbox import Outbox
from ._trust import TrustedProxies

__all__ = ["Forwarder", "Opener", "UpstreamConnection", "UpstreamPool", "open_tcp"]

log = logging.getLogger("powgate.sidecar")

#: Bodies of known length up to this go out in one write with their head.
SMALL_BODY: Final = 64 * 1024
_FORWARDED_FOR: Final = b"x-forwarded-for"
#: Set by the sidecar unless the peer is a trusted proxy.
_CLIENT_CLAIMS: Final = frozenset(
    (_FORWARDED_FOR, b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-real-ip")
)
#: Never copied from the request: hop-by-hop fields, the solution, the
#: expectation (answered here), and the cookie (rebuilt without the solution).
_REQUEST_DROP: Final = HOP_BY_HOP | {
    SOLUTION_HEADER.lower().encode(),
    SOLVE_MS_HEADER.lower().encode(),
    b"expect",
    b"cookie",
}
_UNTRUSTED_DROP: Final = _REQUEST_DROP | _CLIENT_CLAIMS
#: From a trusted proxy its claims are kept, but X-Forwarded-For is written once,
#: combined with the peer: copying it as well would send the header twice.
_TRUSTED_DROP: Final = _REQUEST_DROP | {_FORWARDED_FOR}
_RESPONSE_DROP: Final = HOP_BY_HOP
_CLEAR_COOKIE: Final = (
    f"Set-Cookie: {SOLUTION_COOKIE}=; Max-Age=0; Path=/; SameSite=Strict\r\n".encode()
)
_CHUNKED: Final = b"Transfer-Encoding: chunked\r\n"
_CLOSE: Final = b"Connection: close\r\n"
_BODILESS: Final = frozenset((204, 304))


class UpstreamConnection:
    """One keep-alive connection to the upstream (``httptools`` response parser).

    An ``asyncio.Protocol`` by its methods: compiled (see ``_compiled``), it is
    an extension type, which cannot derive from a Python class. The fields of
    this module's classes are declared in ``_forward.pxd``; a field added here
    goes there too.
    """

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.forward: Forward | None = None
        self.closed = False
        self.used = 0
        self._reason = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._skipping = False
        self._until_close = False
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        # Request bytes held for the end of the turn (``_outbox``).
        self._out: list[bytes] = []
        self._posted = False

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio's classes, only alike.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=SMALL_BODY)

    def data_received(self, data: bytes) -> None:
        forward = self.forward
        if forward is None:
            # Nothing was asked: an upstream talking out of turn cannot be
            # trusted with the next request.
            self.close()
            return
        self._deadline = self._loop.time() + self._pool.limits.upstream_read_seconds
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.forward is forward:
                forward.upstream_failed("protocol", cause=str(exc))
            self.close()
            return
        forward.flush()

    def eof_received(self) -> bool | None:
        forward = self.forward
        if forward is not None and self._until_close and forward.relaying:
            # An answer delimited by the end of the connection ends here
            # (llhttp is never told of the end through httptools).
            forward.response_done()
            forward.flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pool.lost(self)
        forward = self.forward
        if forward is not None:
            self.forward = None
            forward.upstream_failed("reset" if forward.relaying else "protocol", cause=str(exc))

    def pause_writing(self) -> None:
        if self.forward is not None:
            self.forward.exchange.conn.pause_reading()

    def resume_writing(self) -> None:
        if self.forward is not None:
            self.forward.exchange.conn.resume_reading()

    # -- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        self._reason = b""
        self._fields = []
        self._until_close = False

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        forward = self.forward
        if forward is None:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # Interim answers (103 Early Hints) are not relayed; 101 is never asked for.
            self._skipping = status != 101
            if status == 101:
                raise _UpstreamProtocolError("101 Switching Protocols")
            return
        self._until_close = forward.response_head(
            status, self._reason, self._fields, keep_alive=self._parser.should_keep_alive()
        )
        if forward.exchange.request.method == "HEAD":
            # llhttp would wait for the body the length announces; there is none.
            forward.response_done()

    def on_body(self, data: bytes) -> None:
        if self.forward is not None:
            self.forward.response_body(data)

    def on_message_complete(self) -> None:
        if self._skipping:
            self._skipping = False
            return
        forward = self.forward
        if forward is not None:
            forward.response_done()

    # -- use ------------------------------------------------------------------

    def send(self, forward: Forward, data: bytes) -> None:
        self.forward = forward
        self.used += 1
        self._deadline = self._loop.time() + self._pool.limits.upstream_read_seconds
        self._arm(self._deadline)
        self.write(data)

    def write(self, data: bytes) -> None:
        # Held to the end of the turn with the other upstream requests of the turn.
        self._out.append(data)
        if not self._posted:
            self._posted = True
            self._pool.outbox.post(self)

    def send_out(self) -> None:
        """Write the request bytes held this turn (the outbox calls this)."""
        self._posted = False
        out = self._out
        if out:
            self._out = []
            if self.transport is not None and not self.closed:
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def detach(self) -> None:
        """The exchange is over; the connection waits for the next (the caller pools it)."""
        self.forward = None
        self._deadline = 0.0
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        self.forward = None
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()

    # -- the read timeout, lazily re-armed as on client connections -----------

    def _arm(self, when: float) -> None:
        timer = self._timer
        if timer is not None:
            if self._timer_at <= when:
                return
            timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.closed or not self._deadline:
            return
        if self._loop.time() < self._deadline:
            self._arm(self._deadline)
            return
        forward = self.forward
        self.close()
        if forward is not None:
            forward.upstream_failed("timeout", cause="upstream silent")


class _UpstreamProtocolError(Exception):
    pass


#: Opens a connection to the pool's upstream: :func:`open_tcp`, or an in-memory
#: one where a test or fuzzer plays the upstream (the transport seam).
Opener: TypeAlias = "Callable[[UpstreamPool], Awaitable[UpstreamConnection]]"


async def open_tcp(pool: UpstreamPool) -> UpstreamConnection:
    """A TCP (or TLS) connection to ``pool``'s upstream, Nagle's algorithm off."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(pool.host, pool.port, type=socket.SOCK_STREAM)
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
            _, conn = await loop.create_connection(
                cast("Callable[[], asyncio.Protocol]", lambda: UpstreamConnection(pool)),
                sock=sock,
                ssl=pool.ssl,
                server_hostname=pool.host if pool.ssl is not None else None,
            )
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return cast(UpstreamConnection, conn)
    raise error or OSError(f"cannot resolve {pool.host}")


class Borrower(Protocol):
    """What the pool lends connections to: a :class:`Forward` (in tests, stand-ins).

    Not the class itself: compiled, an argument annotated with an extension
    type is checked to be one.
    """

    paid: bool
    lent: bool
    gone: bool
    waiting: asyncio.TimerHandle | None

    def connected(self, conn: UpstreamConnection, *, reused: bool) -> None: ...

    def connect_failed(self, kind: str, *, cause: str) -> None: ...


class UpstreamPool:
    """Keep-alive connections to the upstream, at most ``connections`` lent at once.

    A quarter of them (at least one) is kept for paid requests: traffic
    that proved no work (unprotected and exempt paths) cannot take them
    all, so it cannot starve paid requests of the upstream.
    """

    def __init__(
        self,
        url: str,
        *,
        limits: Limits,
        opener: Opener | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.limits = limits
        #: Where the connections' requests wait for the end of the turn (``_outbox``).
        self.outbox = outbox if outbox is not None else Outbox()
        self._open = opener if opener is not None else open_tcp
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream {url!r} is not an http:// or https:// URL")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        #: Prepended to every request target (an upstream URL with a path).
        self.base_path = parts.path.rstrip("/").encode()
        #: ``Host`` for requests that came without one (HTTP/1.0).
        self.authority = (parts.netloc.rpartition("@")[2]).encode()
        self.reserve = max(1, limits.upstream_connections // 4)
        self._idle: list[UpstreamConnection] = []
        self._lent = 0
        self._lent_free = 0
        self._waiting: deque[Borrower] = deque()
        self._connecting: set[asyncio.Task[None]] = set()
        self._spare: asyncio.Task[None] | None = None

    @property
    def lent(self) -> int:
        return self._lent

    def _room(self, *, paid: bool) -> bool:
        limit = self.limits.upstream_connections
        if self._lent >= limit:
            return False
        return paid or self._lent_free < limit - self.reserve

    def acquire(self, forward: Borrower, *, fresh: bool = False) -> None:
        """Lend ``forward`` a connection now (:meth:`Forward.connected`), or when one frees up.

        ``fresh``: a new connection, not a kept-alive one (a retry after one went stale).
        """
        waiting = self._waiting
        ahead = waiting and (not forward.paid or any(each.paid for each in waiting))
        if ahead or not self._room(paid=forward.paid):
            self._wait(forward)
            return
        self._lend(forward, fresh=fresh)

    def _lend(self, forward: Borrower, *, fresh: bool = False) -> None:
        self._lent += 1
        if not forward.paid:
            self._lent_free += 1
        forward.lent = True
        if fresh:
            # Kept-alive connections as old as the one that went stale are suspect too.
            for conn in self._idle:
                conn.close()
            self._idle.clear()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                forward.connected(conn, reused=True)
                self.replenish()
                return
        task = asyncio.ensure_future(self._connect(forward))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        self.replenish()

    def _wait(self, forward: Borrower) -> None:
        loop = asyncio.get_running_loop()
        forward.waiting = loop.call_later(
            self.limits.upstream_connect_seconds, self._gave_up, forward
        )
        self._waiting.append(forward)

    def _gave_up(self, forward: Borrower) -> None:
        forward.waiting = None
        try:
            self._waiting.remove(forward)
        except ValueError:
            return
        forward.connect_failed("timeout", cause="no upstream connection free in time")

    def withdraw(self, forward: Borrower) -> None:
        """``forward`` no longer wants a connection (its client left)."""
        if forward.waiting is not None:
            forward.waiting.cancel()
            forward.waiting = None
            with contextlib.suppress(ValueError):
                self._waiting.remove(forward)

    async def _connect(self, forward: Borrower) -> None:
        try:
            async with asyncio.timeout(self.limits.upstream_connect_seconds):
                conn = await self._open(self)
        except TimeoutError:
            self.give_back(forward, None)
            forward.connect_failed("timeout", cause="connect timed out")
            return
        except OSError as exc:
            self.give_back(forward, None)
            forward.connect_failed("connect", cause=str(exc))
            return
        if forward.gone:
            self.give_back(forward, conn)
            return
        forward.connected(conn, reused=False)

    def give_back(self, forward: Borrower, conn: UpstreamConnection | None) -> None:
        """End ``forward``'s loan; ``conn`` (reusable, or ``None``) goes back to the pool."""
        if forward.lent:
            forward.lent = False
            self._lent -= 1
            if not forward.paid:
                self._lent_free -= 1
        if conn is not None and not conn.closed:
            conn.detach()
            if len(self._idle) < self.limits.upstream_connections:
                self._idle.append(conn)
            else:
                conn.close()
        self._serve_waiters()

    def _serve_waiters(self) -> None:
        waiting = self._waiting
        while waiting:
            # Paid requests first (they may use the reserve), then in order of arrival.
            candidate = next((f for f in waiting if f.paid), None)
            if candidate is None or not self._room(paid=True):
                candidate = waiting[0] if self._room(paid=waiting[0].paid) else None
            if candidate is None:
                return
            waiting.remove(candidate)
            if candidate.waiting is not None:
                candidate.waiting.cancel()
                candidate.waiting = None
            self._lend(candidate)

    def replenish(self) -> None:
        """Open a connection ahead of need when none is idle.

        Called when a loan leaves the pool without an idle connection, and
        when one in use is given up (a client that leaves mid-answer, an SSE
        reader closing its tab, costs its upstream connection, which cannot
        carry another request). The next request then finds one ready
        instead of paying a connect on its path: a round trip to the
        upstream, its accept, and several turns of the loop (what a stream's
        first event waits for when the stream before it was abandoned). One
        at a time, within the pool's bound; a failure is left for the next
        request to meet and report.
        """
        if self._idle or self._spare is not None:
            return
        if self._lent + len(self._idle) >= self.limits.upstream_connections:
            return
        task = self._spare = asyncio.ensure_future(self._open_spare())
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _open_spare(self) -> None:
        try:
            async with asyncio.timeout(self.limits.upstream_connect_seconds):
                conn = await self._open(self)
        except (TimeoutError, OSError):
            return
        finally:
            self._spare = None
        # Requests lent connections of their own while it connected may have
        # reached the bound meanwhile: the spare is then one too many.
        if self._lent + len(self._idle) < self.limits.upstream_connections:
            self._idle.append(conn)
        else:
            conn.close()

    def lost(self, conn: UpstreamConnection) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    async def close(self) -> None:
        for task in list(self._connecting):
            task.cancel()
        await asyncio.gather(*self._connecting, return_exceptions=True)
        for conn in self._idle:
            conn.close()
        self._idle.clear()


class Forwarder:
    """Turns admitted requests into upstream requests and relays the answers."""

    def __init__(
        self, *, pool: UpstreamPool, metrics: Metrics, trusted: TrustedProxies | None = None
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.trusted = trusted if trusted is not None else TrustedProxies()

    def forward(
        self,
        exchange: Exchange,
        *,
        route: str,
        paid: bool,
        clear_cookie: bool,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """Send ``exchange``'s request upstream; its body, if any, follows as it arrives.

        ``on_done`` runs once the upstream is done with it (answered or failed).
        """
        Forward(
            self, exchange, route=route, paid=paid, clear_cookie=clear_cookie, on_done=on_done
        ).start()

    def head(self, request: Request, *, length: int | None) -> bytes:
        """The request head for the upstream; ``length`` replaces a chunked body's framing."""
        names, fields = request.names, request.fields
        # One call into the trusted networks (False where there are none).
        trusted = request.peer in self.trusted
        drop = _TRUSTED_DROP if trusted else _UNTRUSTED_DROP
        if b"connection" in names:
            drop = drop | _connection_tokens(request.fields, names)
        pool = self.pool
        parts = [
            request.method.encode(),
            b" ",
            pool.base_path,
            request.target,
            b" HTTP/1.1\r\n",
        ]
        for index, name in enumerate(names):
            if name not in drop:
                field_name, value = fields[index]
                parts += (field_name, b": ", value, b"\r\n")
        if b"host" not in names:
            parts += (b"Host: ", pool.authority, b"\r\n")
        if b"cookie" in names:
            cookie = b"; ".join(request.headers(b"cookie"))
            if SOLUTION_COOKIE.encode() in cookie:
                _, rest = split_cookie(cookie.decode("latin-1"))
                if rest is not None:
                    parts += (b"Cookie: ", rest.encode("latin-1"), b"\r\n")
            else:
                parts += (b"Cookie: ", cookie, b"\r\n")
        peer = request.peer.encode()
        if trusted:
            prior = request.headers(_FORWARDED_FOR)
            if prior:
                parts += (b"X-Forwarded-For: ", b", ".join(prior), b", ", peer, b"\r\n")
            else:
                parts += (b"X-Forwarded-For: ", peer, b"\r\n")
            if b"x-forwarded-proto" not in names:
                parts.append(b"X-Forwarded-Proto: http\r\n")
            if b"x-forwarded-host" not in names and b"host" in names:
                parts += (b"X-Forwarded-Host: ", fields[names.index(b"host")][1], b"\r\n")
        else:
            parts += (b"X-Forwarded-For: ", peer, b"\r\nX-Forwarded-Proto: http\r\n")
            if b"host" in names:
                parts += (b"X-Forwarded-Host: ", fields[names.index(b"host")][1], b"\r\n")
        if request.chunked:
            parts.append(_CHUNKED if length is None else b"Content-Length: %d\r\n" % length)
        parts.append(b"\r\n")
        return b"".join(parts)


def _connection_tokens(fields: list[tuple[bytes, bytes]], names: list[bytes]) -> frozenset[bytes]:
    return frozenset(
        token.strip().lower()
        for index, name in enumerate(names)
        if name == b"connection"
        for token in fields[index][1].split(b",")
    )


# Forward states.
_BUFFERING: Final = 0  # reading a small body before asking for a connection
_WAITING: Final = 1  # asked for a connection
_SENT: Final = 2  # the head went out; the body streams if any
_RELAYING: Final = 3  # the answer's head was relayed
_DONE: Final = 4


class Forward:
    """One request on its way to the upstream and its answer on its way back."""

    __slots__ = (
        "_body",
        "_body_sent",
        "_chunked_out",
        "_clear_cookie",
        "_close_after",
        "_conn",
        "_forwarder",
        "_on_done",
        "_out",
        "_reused",
        "_route",
        "_sent_at",
        "_state",
        "_streaming",
        "exchange",
        "gone",
        "lent",
        "paid",
        "waiting",
    )

    def __init__(
        self,
        forwarder: Forwarder,
        exchange: Exchange,
        *,
        route: str,
        paid: bool,
        clear_cookie: bool,
        on_done: Callable[[], None] | None,
    ) -> None:
        self._forwarder = forwarder
        self._on_done = on_done
        self.exchange = exchange
        self._route = route
        self.paid = paid
        self._clear_cookie = clear_cookie
        self._state = _BUFFERING
        self._conn: UpstreamConnection | None = None
        self._body: list[bytes] = []
        #: The body's end went to the upstream (a chunked body's last chunk is sent once).
        self._body_sent = False
        #: The body streams to the upstream as it arrives (``False``: sent whole with the head).
        self._streaming = False
        self._reused = False
        self._out: list[bytes] = []
        self._chunked_out = False
        self._close_after = False
        self._sent_at = 0.0
        self.gone = False
        self.lent = False
        self.waiting: asyncio.TimerHandle | None = None

    @property
    def relaying(self) -> bool:
        return self._state >= _RELAYING

    def start(self) -> None:
        request = self.exchange.request
        self._forwarder.metrics.inflight += 1
        self._streaming = request.chunked or (request.content_length or 0) > SMALL_BODY
        # What arrived is fed at once; a body-less request ends at once and asks.
        self.exchange.consume(self)

    # -- BodyConsumer: the request body ---------------------------------------

    def feed(self, data: bytes) -> None:
        state = self._state
        if state in (_SENT, _RELAYING):
            if self._streaming:
                conn = self._conn
                assert conn is not None
                conn.write(_http.chunk(data) if self.exchange.request.chunked else data)
            return
        if state == _DONE:
            return
        self._body.append(data)
        if self._streaming:
            if state == _BUFFERING:
                # A large or chunked body: a connection is worth taking once it flows.
                self._ask()
            elif sum(map(len, self._body)) > SMALL_BODY:
                self.exchange.hold_body()

    def end(self) -> None:
        state = self._state
        if state == _BUFFERING:
            self._ask()
        elif (
            state in (_SENT, _RELAYING)
            and self._streaming
            and self.exchange.request.chunked
            and self._conn is not None
            and not self._body_sent
        ):
            self._body_sent = True
            self._conn.write(_http.CHUNKED_END)

    def cancel(self, why: str) -> None:
        if self._state == _DONE:
            return
        if why == "too_large":
            self._fail_client("body_too_large", 413, b"request body too large\n")
            return
        # The client left or stalled: the upstream request is half-sent and its
        # connection cannot carry another.
        in_use = self._conn is not None
        self._finish(reusable=False)
        if in_use:
            self._forwarder.pool.replenish()

    def writable(self, ok: bool) -> None:
        conn = self._conn
        if conn is not None and self._state == _RELAYING:
            conn.resume_reading() if ok else conn.pause_reading()

    # -- the connection ---------------------------------------------------------

    def _ask(self) -> None:
        self._state = _WAITING
        self.exchange.conn.defer(self.exchange, self._acquire)

    def _acquire(self) -> None:
        if self._state == _WAITING:
            self._forwarder.pool.acquire(self)

    def connected(self, conn: UpstreamConnection, *, reused: bool) -> None:
        if self._state != _WAITING:
            self._forwarder.pool.give_back(self, conn)
            return
        self._conn = conn
        self._reused = reused
        self._send()

    def _send(self) -> None:
        conn = self._conn
        assert conn is not None
        exchange = self.exchange
        request = exchange.request
        forwarder = self._forwarder
        self._state = _SENT
        self._sent_at = time.perf_counter()
        if not self._streaming:
            body = b"".join(self._body)
            head = forwarder.head(request, length=len(body) if request.chunked else None)
            conn.send(self, head + body if len(body) <= SMALL_BODY else head)
            if len(body) > SMALL_BODY:
                conn.write(body)
            return
        head = forwarder.head(request, length=None)
        chunked = request.chunked
        pending, self._body = self._body, []
        data = [head]
        data += [_http.chunk(each) if chunked else each for each in pending]
        if exchange.body_done and chunked:
            # Sent with the head: the end the consumer is told next is not sent again.
            self._body_sent = True
            data.append(_http.CHUNKED_END)
        conn.send(self, b"".join(data))
        exchange.release_body()

    def connect_failed(self, kind: str, *, cause: str) -> None:
        if self._state == _DONE:
            return
        self.upstream_failed(kind, cause=cause)

    # -- the answer ---------------------------------------------------------------

    def response_head(
        self, status: int, reason: bytes, fields: list[tuple[bytes, bytes]], *, keep_alive: bool
    ) -> bool:
        """Relay the answer's head; ``True`` if its body ends with the connection."""
        exchange = self.exchange
        request = exchange.request
        conn = exchange.conn
        forwarder = self._forwarder
        forwarder.metrics.observe_upstream(
            route=self._route, status=status, seconds=time.perf_counter() - self._sent_at
        )
        self._state = _RELAYING
        self._close_after = not keep_alive or request.method == "HEAD"
        parts = [_http.status_line(status, reason or None)]
        drop = _RESPONSE_DROP
        names = [name.lower() for name, _ in fields]
        if b"connection" in names:
            drop = drop | _connection_tokens(fields, names)
        for index, name in enumerate(names):
            if name not in drop:
                field_name, value = fields[index]
                parts += (field_name, b": ", value, b"\r\n")
        if self._clear_cookie:
            parts.append(_CLEAR_COOKIE)
        has_body = request.method != "HEAD" and status not in _BODILESS
        until_close = (
            has_body and b"content-length" not in names and b"transfer-encoding" not in names
        )
        if has_body and b"content-length" not in names:
            if request.version == "1.1":
                self._chunked_out = True
                parts.append(_CHUNKED)
            else:
                conn.keep_alive = False  # delimited by the end of the connection
        if not conn.keep_alive or conn.draining:
            conn.keep_alive = False
            parts.append(_CLOSE)
        parts.append(b"\r\n")
        exchange.start_response()
        self._out.append(b"".join(parts))
        return until_close

    def response_body(self, data: bytes) -> None:
        if self._state != _RELAYING:
            return
        self._out.append(_http.chunk(data) if self._chunked_out else data)

    def response_done(self) -> None:
        if self._state != _RELAYING:
            return
        if self._chunked_out:
            self._out.append(_http.CHUNKED_END)
        self.flush()
        exchange = self.exchange
        reusable = not self._close_after and (exchange.body_done or not self._streaming)
        self._finish(reusable=reusable)
        exchange.finish()

    def flush(self) -> None:
        out = self._out
        if out:
            self.exchange.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    # -- endings ----------------------------------------------------------------------

    def upstream_failed(self, kind: str, *, cause: str) -> None:
        state = self._state
        if state == _DONE:
            return
        if (
            kind in ("protocol", "reset")
            and state == _SENT
            and self._reused
            and not self._streaming
            and not self._out
        ):
            # A kept-alive connection the upstream closed as the request went
            # out: it never saw it. Once more, on a new connection.
            self._reused = False
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            pool = self._forwarder.pool
            pool.give_back(self, None)
            self._state = _WAITING
            pool.acquire(self, fresh=True)
            return
        metrics = self._forwarder.metrics
        metrics.upstream_errors_total.labels(kind).inc()
        log.debug("upstream failed", extra={"kind": kind, "cause": cause, "route": self._route})
        exchange = self.exchange
        if state == _RELAYING or exchange.response_started:
            # Headers are out: the only honest signal left is a cut connection.
            self.flush()
            self._finish(reusable=False)
            exchange.abort()
            return
        self._finish(reusable=False)
        if kind == "timeout":
            exchange.respond(_http.response(504, b"upstream timed out\n"))
        else:
            exchange.respond(_http.response(502, b"upstream unavailable\n"))

    def _fail_client(self, kind: str, status: int, text: bytes) -> None:
        self._forwarder.metrics.client_errors_total.labels(kind).inc()
        exchange = self.exchange
        started = exchange.response_started or self._state == _RELAYING
        self.flush()
        self._finish(reusable=False)
        if started:
            exchange.abort()
        else:
            exchange.respond(_http.response(status, text), close=True)

    def _finish(self, *, reusable: bool) -> None:
        if self._state == _DONE:
            return
        self._state = _DONE
        self.gone = True
        self._forwarder.metrics.inflight -= 1
        pool = self._forwarder.pool
        conn, self._conn = self._conn, None
        if conn is not None and not reusable:
            conn.close()
            conn = None
        if self.lent:
            pool.give_back(self, conn)
        else:
            pool.withdraw(self)
        if self._on_done is not None:
            self._on_done()
