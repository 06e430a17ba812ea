"""Client connections: llhttp parsing, one exchange at a time, timeouts, flow control.

Every byte an attacker sends arrives here. The protocol parses with
llhttp (strict: no lenient flags; see ``_parse``), refuses what a proxy must
not pass on (request smuggling's ingredients, targets that are not a path,
versions other than 1.0 and 1.1), and hands each request head to the
dispatcher the moment it is complete: a refusal is made inside the
parser's callback, with no task, future or timer created for it, and leaves
with the turn's other writes at its end (``_outbox``).

Requests on one connection are answered in order. Requests pipelined
behind one still in progress wait parsed, with reading paused; a
connection that pipelines more than :data:`MAX_PIPELINED` is cut.

A read holding several requests (a pipelining client, a flood's backlog)
or a large body is not parsed in the turn it arrives: it joins the
listener's backlog, which the loop works through round-robin, a slice per
connection at a time, for at most :data:`TURN_BUDGET` seconds a turn. A
read of one request (a paid client's among them) is answered in the turn
it arrives, so it waits for one budget at most, however large the flood.
While the loop lags (see ``_overload``), the refusals of requests that
carry no solution join the same budget: the dispatcher hands them back
(:meth:`Exchange.wait_turn`) and they are answered in a later turn.

Timeouts use one lazily re-armed timer per connection: the hot path only
moves a deadline (a float), and the timer, when it fires early, re-arms
itself for the deadline in force. Phases: waiting for a request or its
head (``header_seconds``), receiving a body (idle ``body_idle_seconds``
and a minimum average rate after it), and a client that stops reading
what it asked for (``write_seconds``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol, cast

import httptools

from . import _http
from ._compiled import COMPILED
from ._http import Request
from ._limits import Limits
from ._outbox import Outbox
from ._overload import Overload
from ._parse import HeadError

if COMPILED:
    from ._cparse import RequestParser
else:
    from ._parse import RequestParser  # type: ignore[assignment]

__all__ = [
    "MAX_PIPELINED",
    "BodyConsumer",
    "ClientConnection",
    "Exchange",
    "Listener",
]

log = logging.getLogger("powgate.sidecar")

#: Requests parsed but not yet answered, per connection, before it is cut.
MAX_PIPELINED: Final = 32
#: A whole request head; also the bound on a head still arriving.
MAX_HEAD_BYTES: Final = 64 * 1024
#: Bytes of one read parsed in one turn of the event loop: of a body in flight,
MAX_SLICE: Final = 64 * 1024
#: and of requests one after another (a handful of small ones), so that the
#: backlogs of many connections are worked through round-robin.
PIPELINE_SLICE: Final = 256
#: Seconds of backlog work per turn of the event loop, all connections
#: together: the longest a read that arrives (a paid request, an upstream's
#: answer) waits behind a flood's backlog. At least one slice runs a turn.
TURN_BUDGET: Final = 0.001
#: After a refusal that closes the connection, how long the client's
#: remaining request bytes are read and dropped so that it sees the answer
#: (closing with unread bytes makes the kernel send a reset that can
#: destroy the answer in flight).
LINGER_SECONDS: Final = 2.0
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE_FIELD: Final = b"Connection: close\r\n"
_ALLOW: Final = b"Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n"
_WRITE_HIGH: Final = 256 * 1024
_TOO_MANY_CONNECTIONS: Final = _http.response(
    503, b"too many connections from your address\n", fields=b"Retry-After: 1\r\n", close=True
)


class BodyConsumer(Protocol):
    """Where a dispatched request's body goes (the forwarder, a form reader)."""

    def feed(self, data: bytes) -> None: ...

    def end(self) -> None:
        """The whole body arrived."""

    def cancel(self, why: str) -> None:
        """The exchange is over before the body was (timeout, limit, hang-up)."""

    def writable(self, ok: bool) -> None:
        """The client's side stopped (``False``) or resumed (``True``) taking our writes."""


class _Discard:
    """The body of a request already answered: counted, dropped."""

    __slots__ = ()

    def feed(self, data: bytes) -> None:
        pass

    def end(self) -> None:
        pass

    def cancel(self, why: str) -> None:
        pass

    def writable(self, ok: bool) -> None:
        pass


_DISCARD: Final = _Discard()


class Exchange:
    """One request on a client connection and the state of its answer.

    Compiled, its fields are typed by ``_connection.pxd`` (see ``_compiled``).
    """

    __slots__ = (
        "_buffered",
        "_consumer",
        "body_done",
        "body_limit",
        "conn",
        "received",
        "request",
        "response_done",
        "response_started",
    )

    def __init__(self, conn: ClientConnection, request: Request, body_limit: int) -> None:
        self.conn = conn
        self.request = request
        self.body_done = not request.has_body
        self.received = 0
        #: Bytes of body accepted before :meth:`BodyConsumer.cancel` (``"too_large"``).
        self.body_limit = body_limit
        self.response_started = False
        self.response_done = False
        self._consumer: BodyConsumer | None = None
        self._buffered: list[bytes] | None = None

    # -- the request body ---------------------------------------------------

    def consume(self, consumer: BodyConsumer) -> None:
        """Send the body (what arrived so far, then the rest) to ``consumer``."""
        request = self.request
        if (
            request.expect_continue
            and not self.body_done
            and not self.received
            and not self.response_started
        ):
            self.conn.write(_CONTINUE)
        self._consumer = consumer
        buffered, self._buffered = self._buffered, None
        if buffered:
            for data in buffered:
                consumer.feed(data)
        if self.body_done:
            consumer.end()
        elif buffered:
            self.conn.resume_reading(_PAUSE_BUFFER)

    def unread(self, chunks: list[bytes]) -> None:
        """Give back body bytes a consumer read: the next consumer gets them first."""
        self._consumer = None
        self._buffered = chunks or None

    @property
    def alive(self) -> bool:
        """Whether the client is still there to answer."""
        return not self.conn.closed

    def _feed(self, data: bytes) -> None:
        self.received += len(data)
        consumer = self._consumer
        if consumer is not None:
            consumer.feed(data)
        else:
            buffered = self._buffered
            if buffered is None:
                self._buffered = [data]
            else:
                buffered.append(data)
            if self.received > _BUFFER_PAUSE:
                # Nobody takes the body yet (a queued request, a connect in
                # progress): stop reading until someone does.
                self.conn.pause_reading(_PAUSE_BUFFER)

    def _end(self) -> None:
        self.body_done = True
        consumer = self._consumer
        if consumer is not None:
            consumer.end()
        if self.response_done:
            self.conn._exchange_done(self)

    # -- the answer ----------------------------------------------------------

    def respond(self, data: bytes, *, close: bool = False) -> None:
        """Answer with a whole response of the sidecar's own (prebuilt bytes)."""
        request = self.request
        if not self.body_done:
            if self._consumer is None and request.expect_continue and not self.received:
                # The client waits for a 100 before sending its body: it will
                # not come, and the connection cannot be reused.
                close = True
            self._consumer = _DISCARD
            self._buffered = None
            self.conn.resume_reading(_PAUSE_BUFFER | _PAUSE_UPSTREAM)
        if close or self.conn.draining:
            close = True
            end = data.index(b"\r\n") + 2
            data = data[:end] + _CLOSE_FIELD + data[end:]
        if request.method == "HEAD":
            data = data[: data.index(b"\r\n\r\n") + 4]
        self.response_started = True
        self.conn.write(data)
        self.finish(close=close)

    def hold_body(self) -> None:
        """Stop reading the client until :meth:`release_body`: its body has nowhere to go yet."""
        self.conn.pause_reading(_PAUSE_BUFFER)

    def release_body(self) -> None:
        self.conn.resume_reading(_PAUSE_BUFFER)

    def start_response(self) -> None:
        self.response_started = True

    def write(self, data: bytes) -> None:
        self.conn.write(data)

    def finish(self, *, close: bool = False) -> None:
        """The answer is complete; the connection goes on once the request body is in too."""
        self.response_done = True
        conn = self.conn
        if close:
            conn.keep_alive = False
        if self.body_done:
            conn._exchange_done(self)
        elif not conn.keep_alive:
            # The rest of the body is not worth waiting for.
            conn._linger()

    def abort(self) -> None:
        """Cut the connection: the only honest end of an answer that cannot be completed."""
        self.response_done = True
        self.conn.abort()

    def cancel_body(self, why: str) -> None:
        consumer = self._consumer
        self._consumer = _DISCARD
        if consumer is not None:
            consumer.cancel(why)

    # -- overload ------------------------------------------------------------

    def can_wait(self) -> bool:
        """Whether the loop lags and this request is not being answered from the backlog."""
        listener = self.conn._listener
        return bool(listener.overload.lagging) and not listener.working

    def wait_turn(self) -> None:
        """Be dispatched again within the listener's backlog budget (see ``_overload``).

        The connection reads nothing more meanwhile: requests behind this one
        wait, parsed or in the kernel's buffers.
        """
        self.conn._listener.hold(self)


_BUFFER_PAUSE: Final = 64 * 1024
# Reasons to stop reading from a client, one bit each.
_PAUSE_PIPELINE: Final = 1
_PAUSE_BUFFER: Final = 2
_PAUSE_UPSTREAM: Final = 4
_PAUSE_SLICE: Final = 8
# Connection phases, as the timer reads them.
_IDLE: Final = 0
_HEAD: Final = 1
_BODY: Final = 2
_BUSY: Final = 3
_LINGER: Final = 4


class Dispatcher(Protocol):
    def dispatch(self, exchange: Exchange) -> None: ...

    def refused(self, kind: str) -> None:
        """Count a request refused before dispatch (``client_errors_total``)."""


class Listener:
    """The set of client connections of one listening socket, and how they are made."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        limits: Limits,
        header_seconds: float,
        overload: Overload | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.limits = limits
        #: Where the connections' answers wait for the end of the turn (``_outbox``).
        self.outbox = outbox if outbox is not None else Outbox()
        #: Connection caps and the loop's lateness (shared with the dispatcher's config).
        self.overload = overload if overload is not None else Overload()
        #: Time to send a whole request head, and to idle between requests.
        self.header_seconds = header_seconds
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self._drained: asyncio.Event | None = None
        # Connections with bytes read and not parsed yet, in turn order.
        self._backlog: deque[ClientConnection] = deque()
        # Requests whose refusal waits for the budget (the loop lags).
        self._held: deque[Exchange] = deque()
        #: Whether the backlog is being worked (nothing is held from inside it).
        self.working = False
        self._scheduled = False

    def __call__(self) -> ClientConnection:
        return ClientConnection(self)

    def defer_slices(self, conn: ClientConnection) -> None:
        """Parse ``conn``'s backlog in later turns, after the reads that come first."""
        self._backlog.append(conn)
        self._schedule()

    def hold(self, exchange: Exchange) -> None:
        """Dispatch ``exchange`` again in a later turn, within the budget."""
        self._held.append(exchange)
        overload = self.overload
        overload.deferred += 1
        overload.backlog(empty=False)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._work_backlog)

    def _work_backlog(self) -> None:
        backlog = self._backlog
        held = self._held
        deadline = time.monotonic() + TURN_BUDGET
        self.working = True
        try:
            # Held refusals and pipelined slices take turns within one budget.
            while backlog or held:
                if held:
                    exchange = held.popleft()
                    if exchange.alive:
                        exchange.conn._start(exchange)
                if backlog:
                    conn = backlog.popleft()
                    if conn._next_slice():
                        backlog.append(conn)
                if time.monotonic() >= deadline:
                    break
        finally:
            self.working = False
        self.overload.backlog(empty=not held)
        if backlog or held:
            asyncio.get_running_loop().call_soon(self._work_backlog)
        else:
            self._scheduled = False

    def forget(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if self._drained is not None and not self.connections:
            self._drained.set()

    async def drain(self, grace: float) -> None:
        """Close idle connections, let busy ones finish, cut the rest after ``grace`` seconds."""
        self.draining = True
        self._drained = asyncio.Event()
        self.overload.stop()
        for conn in list(self.connections):
            conn.drain()
        if self.connections:
            try:
                async with asyncio.timeout(grace):
                    await self._drained.wait()
            except TimeoutError:
                log.warning(
                    "shutdown timeout: cutting connections",
                    extra={"connections": len(self.connections)},
                )
        for conn in list(self.connections):
            conn.abort()


class ClientConnection:
    """One client's TCP connection (llhttp request parser: ``_parse``).

    An ``asyncio.Protocol`` by its methods: compiled (see ``_compiled``), it is
    an extension type, which cannot derive from a Python class. Its fields
    are declared in ``_connection.pxd``; a field added here goes there too.
    """

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._limits = listener.limits
        self._parser = RequestParser(self)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self.peer = ""
        # What the connection is counted under for its client's cap ("": not counted).
        self._client_key: str | bytes | None = ""
        self.keep_alive = True
        self._paused = 0
        self._writable = True
        self.closed = False
        self._feeding = False
        # Answers held for the end of the turn (posted: the outbox will send them).
        self._out: list[bytes] = []
        self._posted = False
        self._rest: memoryview | None = None
        self._rest_at = 0
        self._deferred: list[tuple[Exchange, Callable[[], None]]] = []
        # The request being parsed.
        self._head_bytes = 0
        self._in_head = False
        self._reading: Exchange | None = None
        # The request being answered, and those parsed behind it.
        self._current: Exchange | None = None
        self._pending: deque[Exchange] = deque()
        # One timer; see the module's docstring.
        self._phase = _IDLE
        self._deadline = 0.0
        self._write_deadline = 0.0
        self._body_start = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    @property
    def draining(self) -> bool:
        return self._listener.draining

    @property
    def backlog(self) -> int:
        """Bytes read from the client and not parsed yet (waiting for their turn)."""
        rest = self._rest
        return 0 if rest is None else len(rest) - self._rest_at

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio's classes, only alike.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        overload = self._listener.overload
        overload.watch(self._loop)
        key = self._client_key = overload.open(self.peer)
        if key is None:
            # Over its client's cap: answered and closed before anything is read.
            self.closed = True
            transport.write(_TOO_MANY_CONNECTIONS)
            transport.close()
            return
        self._listener.connections.add(self)
        # No TCP_NODELAY here: uvloop and asyncio set it on every TCP transport
        # they accept, and asking for the socket to set it again cost system calls.
        transport.set_write_buffer_limits(high=_WRITE_HIGH)
        self._set_deadline(_IDLE, self._loop.time() + self._listener.header_seconds)

    def data_received(self, data: bytes) -> None:
        if self._phase == _LINGER or self.closed:
            return
        rest = self._rest
        if rest is not None:
            # Read while a slice was pending (reading was being paused): after it.
            self._rest = memoryview(bytes(rest[self._rest_at :]) + data)
            self._rest_at = 0
            return
        if len(data) > PIPELINE_SLICE and data.count(b"\r\n\r\n", 0, MAX_SLICE) > 1:
            # Several requests in one read: a client pipelining, a flood's
            # backlog. They wait for the loop's next turn and go a slice a
            # turn, so that the reads of other clients (one request each, a
            # paid one among them) are answered first, in the turn they come.
            self._rest = memoryview(data)
            self._rest_at = 0
            self._pause(_PAUSE_SLICE)
            self._listener.defer_slices(self)
            return
        if len(data) > MAX_SLICE:
            # A large body: a slice now, the rest after the other connections.
            self._rest = memoryview(data)
            self._rest_at = 0
            self._pause(_PAUSE_SLICE)
            if self._next_slice():
                self._listener.defer_slices(self)
            return
        self._feed(data)

    def _next_slice(self) -> bool:
        """Parse the next slice of the backlog; whether some of it is left."""
        rest = self._rest
        if rest is None:
            return False
        if self.closed or self._phase == _LINGER:
            self._rest = None
            return False
        at = self._rest_at
        reading = self._reading
        # A body streams in large slices; requests one after another in small
        # ones, so a connection pipelining a flood gets a handful answered a turn.
        size = MAX_SLICE if reading is not None and not reading.body_done else PIPELINE_SLICE
        end = at + size
        if end >= len(rest):
            self._rest = None
            self._feed(rest[at:])
            self.resume_reading(_PAUSE_SLICE)
            return False
        self._rest_at = end
        self._feed(rest[at:end])
        # Parsing may have ended the connection or dropped the rest (a refusal).
        return self._rest is not None and not self.closed

    def _feed(self, data: bytes | memoryview) -> None:
        self._feeding = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # CONNECT, or "Connection: upgrade" with no body: the head was
            # handled (CONNECT is refused); nothing after it is read.
            self.keep_alive = False
            self._pause(_PAUSE_PIPELINE)
            self._rest = None
        except httptools.HttpParserError as exc:
            self._feeding = False
            self._rest = None
            self._run_deferred(failed=True)
            self._bad_request(exc)
            return
        self._feeding = False
        if self._deferred:
            self._run_deferred(failed=False)
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, "request head too large\n")
                return
        if self._phase <= _HEAD and not self._deadline and not self.closed:
            # Idle, or a head begun in this read: the time allowed counts from now.
            self._set_deadline(self._phase, self._loop.time() + self._listener.header_seconds)

    def send_out(self) -> None:
        """Write the answers held this turn, in one write (the outbox calls this)."""
        self._posted = False
        out = self._out
        if out:
            self._out = []
            transport = self._transport
            if transport is not None and not self.closed:
                transport.write(out[0] if len(out) == 1 else b"".join(out))

    def eof_received(self) -> bool | None:
        # A client half-closing after its request still gets the answer.
        self.keep_alive = False
        if self._current is None or self._reading is not None:
            self.abort()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._listener.forget(self)
        key = self._client_key
        if key:
            self._client_key = ""
            self._listener.overload.close(key)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        current = self._current
        if current is not None:
            self._current = None
            current.cancel_body("client gone")
        for pending in self._pending:
            pending.cancel_body("client gone")
        self._pending.clear()

    def pause_writing(self) -> None:
        self._writable = False
        self._write_deadline = self._loop.time() + self._limits.write_seconds
        self._arm(self._write_deadline)
        if self._current is not None:
            consumer = self._current._consumer
            if consumer is not None:
                consumer.writable(False)

    def resume_writing(self) -> None:
        self._writable = True
        self._write_deadline = 0.0
        if self._current is not None:
            consumer = self._current._consumer
            if consumer is not None:
                consumer.writable(True)

    # -- parser callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        if self.closed or not self.keep_alive:
            raise _StopParsingError
        if len(self._pending) >= MAX_PIPELINED:
            raise _TooManyPipelinedError
        self._head_bytes = 0
        self._in_head = True
        self._reading = None
        if self._phase == _IDLE:
            # The head's time starts now; its deadline is set once the read is
            # parsed (a head that completes in its read never needs one).
            self._phase = _HEAD
            self._deadline = 0.0

    def on_headers_complete(self) -> None:
        self._in_head = False
        request = self._request()
        exchange = Exchange(self, request, self._limits.max_body_bytes)
        self._reading = exchange
        if request.has_body:
            now = self._loop.time()
            self._body_start = now
            self._set_deadline(_BODY, now + self._limits.body_read_seconds)
        elif self._phase != _IDLE:
            self._phase = _BUSY
            self._deadline = 0.0
        if self._current is None:
            self._start(exchange)
        else:
            self._pending.append(exchange)
            self._pause(_PAUSE_PIPELINE)

    def on_body(self, data: bytes) -> None:
        exchange = self._reading
        assert exchange is not None
        exchange._feed(data)
        if exchange.received > exchange.body_limit and exchange._consumer is not None:
            exchange.cancel_body("too_large")
            return
        limits = self._limits
        now = self._loop.time()
        # Idle time, and an average rate once the grace of the idle time is over.
        by_rate = (
            self._body_start + limits.body_read_seconds + exchange.received / limits.body_min_rate
        )
        self._deadline = min(now + limits.body_read_seconds, by_rate)

    def on_message_complete(self) -> None:
        exchange = self._reading
        assert exchange is not None
        self._reading = None
        if self._phase == _BODY:
            self._set_deadline(_BUSY, 0.0)
        if not exchange.body_done:
            exchange._end()
        elif self._current is None and self._phase != _LINGER and not self.closed:
            # Answered while its head was parsed: the connection is idle now
            # (its deadline is set once the read is parsed).
            self._phase = _IDLE
            self._deadline = 0.0

    # -- requests -------------------------------------------------------------

    def _request(self) -> Request:
        parser = self._parser
        target = parser.url
        method = parser.method
        version = parser.version
        names = parser.names
        fields = parser.fields
        if version != "1.1" and version != "1.0":
            raise HeadError(505, "HTTP version not supported\n")
        if method == "CONNECT":
            raise HeadError(
                405,
                "CONNECT is not supported\n",
                fields=_ALLOW,
            )
        if target[:1] != b"/":
            # Absolute-form and asterisk-form: only a path goes to the upstream.
            raise HeadError(400, "request target must be a path\n")
        chunked = False
        expect = False
        at = parser.coding_at
        if at >= 0:
            coding = fields[at][1].strip().lower()
            # llhttp accepts "gzip, chunked" and HTTP/1.0 chunking; neither
            # can be forwarded faithfully (RFC 9112 §6.1).
            if coding != b"chunked" or version == "1.0":
                raise HeadError(400, "unsupported transfer coding\n")
            chunked = True
        hosts = parser.hosts
        if hosts > 1:
            raise HeadError(400, "more than one Host field\n")
        if not hosts and version == "1.1":
            raise HeadError(400, "missing Host field\n")
        at = parser.expect_at
        if at >= 0:
            if fields[at][1].strip().lower() != b"100-continue":
                raise HeadError(417, "unsupported expectation\n")
            expect = version == "1.1"
        raw_path, sep, query = target.partition(b"?")
        if b"#" in target:
            raise HeadError(400, "request target must not carry a fragment\n")
        return Request(
            method,
            target,
            raw_path.decode("latin-1"),
            query.decode("latin-1") if sep else "",
            version,
            fields,
            names,
            # HTTP/1.0 clients get one answer per connection.
            version == "1.1" and parser.keep_alive,
            parser.content_length,
            chunked,
            expect,
            self.peer,
        )

    def _start(self, exchange: Exchange) -> None:
        self._current = exchange
        if not exchange.request.keep_alive:
            self.keep_alive = False
        try:
            self._listener.dispatcher.dispatch(exchange)
        except Exception:
            log.exception("request handler failed", extra={"peer": self.peer})
            self._listener.dispatcher.refused("internal")
            if not exchange.response_started:
                exchange.respond(_http.response(500, b"internal error\n"), close=True)
            else:
                self.abort()

    def _exchange_done(self, exchange: Exchange) -> None:
        if exchange is not self._current:
            return
        self._current = None
        # A forwarded exchange and its consumer refer to each other: without this
        # the pair (and the request) would wait for the cycle collector.
        exchange._consumer = None
        if not self.keep_alive or self.draining:
            self._close()
            return
        if self._pending:
            self._start(self._pending.popleft())
            if not self._pending:
                self.resume_reading(_PAUSE_PIPELINE)
            return
        self.resume_reading(_PAUSE_PIPELINE)
        if self._reading is None and self._phase != _HEAD:
            self._set_deadline(_IDLE, self._loop.time() + self._listener.header_seconds)

    # -- output and flow control ----------------------------------------------

    def write(self, data: bytes) -> None:
        # Held to the end of the turn, with the other connections' answers
        # (``_outbox``): pipelined answers parsed from one read leave together too.
        self._out.append(data)
        if not self._posted:
            self._posted = True
            self._listener.outbox.post(self)

    def pause_reading(self, reason: int = _PAUSE_UPSTREAM) -> None:
        self._pause(reason)

    def resume_reading(self, reason: int = _PAUSE_UPSTREAM) -> None:
        was = self._paused
        self._paused &= ~reason
        if was and not self._paused and self._transport is not None and not self.closed:
            self._transport.resume_reading()

    def _pause(self, reason: int) -> None:
        if not self._paused and self._transport is not None and not self.closed:
            self._transport.pause_reading()
        self._paused |= reason

    # -- endings --------------------------------------------------------------

    def _bad_request(self, exc: Exception) -> None:
        if isinstance(exc, httptools.HttpParserCallbackError):
            cause = exc.__context__
            if isinstance(cause, _StopParsingError):
                return
            if isinstance(cause, _TooManyPipelinedError):
                self._listener.dispatcher.refused("bad_request")
                self.keep_alive = False
                self._pending.clear()
                if self._current is None:
                    self._close()
                return
            if isinstance(cause, HeadError):
                self._refuse(cause.status, cause.text, fields=cause.fields)
                return
            if cause is not None:
                log.error("request parsing failed", exc_info=cause, extra={"peer": self.peer})
                self._listener.dispatcher.refused("internal")
                self._refuse(500, "internal error\n", count=False)
                return
        self._refuse(400, "bad request\n")

    def _refuse(self, status: int, text: str, *, fields: bytes = b"", count: bool = True) -> None:
        """Answer a request that cannot be parsed or served, then close: framing is lost."""
        if count:
            self._listener.dispatcher.refused("bad_request")
        self.keep_alive = False
        self._pending.clear()
        current = self._current
        self._reading = None
        if current is not None:
            self._pause(_PAUSE_PIPELINE)
            if current.body_done:
                return  # a request behind it broke: the current answer is the last
            # Its own body broke (a bad chunk): whatever was started for it stops.
            current.cancel_body("bad_request")
            if current.response_started:
                self.abort()
                return
            current.response_started = current.response_done = True
            self._current = None
        self.write(_http.response(status, text.encode(), fields=fields, close=True))
        self._linger()

    def defer(self, exchange: Exchange, action: Callable[[], None]) -> None:
        """Run ``action`` once the bytes being parsed proved well-formed.

        Sending to the upstream waits for the end of the read that completed
        a request: if the same read goes on to break the framing (a smuggled
        request, a bad chunk), nothing of it has left. An action of a request
        whose body was incomplete when the framing broke is dropped.
        """
        if self._feeding:
            self._deferred.append((exchange, action))
        else:
            action()

    def _run_deferred(self, *, failed: bool) -> None:
        deferred, self._deferred = self._deferred, []
        for exchange, action in deferred:
            if not failed or exchange.body_done:
                action()

    def drain(self) -> None:
        if self._current is None and not self._in_head:
            self._close()

    def _close(self) -> None:
        self.send_out()
        transport = self._transport
        if transport is None or self.closed:
            return
        reading = self._reading
        if (reading is not None and not reading.body_done) or self._in_head:
            # The client is still sending: read and drop it for a moment so
            # that the answer is not destroyed by a reset.
            self._linger()
            return
        self.closed = True
        transport.close()

    def _linger(self) -> None:
        self.send_out()
        transport = self._transport
        if transport is None or self.closed or self._phase == _LINGER:
            return
        self.keep_alive = False
        self._set_deadline(_LINGER, self._loop.time() + LINGER_SECONDS)
        self._paused = 0
        transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()

    def abort(self) -> None:
        transport = self._transport
        if transport is not None and not self.closed:
            self.closed = True
            transport.abort()

    # -- the timer ------------------------------------------------------------

    def _set_deadline(self, phase: int, deadline: float) -> None:
        self._phase = phase
        self._deadline = deadline
        if deadline:
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        timer = self._timer
        if timer is not None:
            if self._timer_at <= when:
                return  # it fires first and re-arms for the later deadline
            timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self._loop.time()
        upcoming = []
        if self._write_deadline:
            if now >= self._write_deadline:
                log.info("client stopped reading its answer", extra={"peer": self.peer})
                self.abort()
                return
            upcoming.append(self._write_deadline)
        deadline = self._deadline
        if deadline:
            if now >= deadline:
                self._timed_out()
                return
            upcoming.append(deadline)
        if upcoming:
            self._arm(min(upcoming))

    def _timed_out(self) -> None:
        phase = self._phase
        self._deadline = 0.0
        if phase == _BODY:
            exchange = self._reading
            self._listener.dispatcher.refused("slow_client")
            self.keep_alive = False
            if exchange is not None:
                exchange.cancel_body("slow_client")
                if not exchange.response_started:
                    exchange.respond(_http.response(408, b"request body too slow\n"), close=True)
                    return
            self.abort()
            return
        # Idle keep-alive, a head that never completed (slowloris), or the
        # end of lingering: hang up without an answer.
        self.abort() if phase == _LINGER else self._hang_up()

    def _hang_up(self) -> None:
        self.send_out()
        transport = self._transport
        if transport is not None and not self.closed:
            self.closed = True
            transport.close()


class _TooManyPipelinedError(Exception):
    pass


class _StopParsingError(Exception):
    """The connection is closing: what the client sent after is not read."""
