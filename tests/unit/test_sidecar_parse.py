"""The request parser's two builds tell the connection the same things.

``_cparse`` (llhttp bound in C, the compiled build) and ``_parse`` (llhttp
through ``httptools``, the Python sources) are fed the same bytes, whole and
a byte at a time (every field split across reads), and must report the same
events, heads and errors. The connection's own tests (framing, smuggling,
limits) run on whichever build is installed, and on the sources too
(``test_sidecar_compiled``).
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from powgate_sidecar import _compiled, _parse
from powgate_sidecar._parse import MAX_FIELD_BYTES, MAX_FIELDS
from powgate_testbed.fuzz_parser import outcome

Parser = Callable[[Any], Any]
BUILDS: list[Any] = [pytest.param(_parse.RequestParser, id="httptools")]
if _compiled.COMPILED:
    from powgate_sidecar import _cparse

    BUILDS.append(pytest.param(_cparse.RequestParser, id="llhttp-in-C"))


def _outcome(build: Parser, data: bytes, *, step: int, fail_on: str = "") -> list[Any]:
    reads = [data[at : at + step] for at in range(0, len(data), step)]
    return outcome(build, reads, fail_on=fail_on)


GET = b"GET /v1/chat?x=1 HTTP/1.1\r\nHost: a\r\n"
CASES = [
    ("one request", GET + b"\r\n"),
    ("three pipelined", (GET + b"\r\n") * 3),
    ("fields' spelling kept, names lowered", GET + b"X-MiXed-Case: Va Lue\r\n\r\n"),
    ("empty value", GET + b"X-Empty:\r\nX-Spaces:   \r\n\r\n"),
    ("HTTP/1.0", b"GET / HTTP/1.0\r\n\r\n"),
    (
        "framing fields",
        b"POST / HTTP/1.1\r\nhOsT: a\r\nExpect: 100-continue\r\nHost: b\r\n"
        b"expect: other\r\nContent-Length: 0002\r\n\r\nok",
    ),
    ("no Host", b"GET / HTTP/1.1\r\nX-Host: a\r\nHosts: b\r\n\r\n"),
    ("Content-Length: 0", GET + b"Content-Length: 0\r\n\r\n"),
    ("HTTP/1.0 keep-alive", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
    ("close", GET + b"Connection: close\r\n\r\n"),
    ("HTTP/0.9", b"GET /open\r\n\r\n"),
    ("HTTP/2 text", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
    ("methods", b"PATCH / HTTP/1.1\r\nHost: a\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("unknown method", b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("body", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello" + GET + b"\r\n"),
    (
        "chunked with trailers",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n" + GET + b"\r\n",
    ),
    ("CL.TE", GET + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX"),
    ("CL twice", GET + b"Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"),
    ("obs-fold", GET + b"X-A: 1\r\n folded\r\n\r\n"),
    ("bare LF", b"GET / HTTP/1.1\nHost: a\r\n\r\n"),
    ("NUL in a field", GET + b"X-A: a\x00b\r\n\r\n"),
    ("space before colon", GET + b"Content-Length : 4\r\n\r\nabcd"),
    ("bad chunk", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
    ("CONNECT", b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\nafter the head"),
    ("upgrade", GET + b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\nafter the head"),
    ("target at the limit", b"GET /" + b"a" * (MAX_FIELD_BYTES - 1) + b" HTTP/1.1\r\n\r\n"),
    ("target too long", b"GET /" + b"a" * MAX_FIELD_BYTES + b" HTTP/1.1\r\n\r\n"),
    ("field at the limit", GET + b"X: " + b"v" * (MAX_FIELD_BYTES - 1) + b"\r\n\r\n"),
    ("field too long", GET + b"X: " + b"v" * MAX_FIELD_BYTES + b"\r\n\r\n"),
    ("name too long", GET + b"X" * (MAX_FIELD_BYTES + 1) + b": v\r\n\r\n"),
    ("fields at the limit", GET + b"X: v\r\n" * (MAX_FIELDS - 1) + b"\r\n"),
    ("too many fields", GET + b"X: v\r\n" * MAX_FIELDS + b"\r\n"),
    # Over the limits, then a malformed byte: the field is refused where
    # httptools hands it over (the next name, or the head's end), so both
    # builds see the malformed byte first (the C parser once refused earlier).
    ("too many fields, then a bad name", GET + b"X: v\r\n" * MAX_FIELDS + b"\x01\r\n\r\n"),
    ("too many fields, then a bad value", GET + b"X: v\r\n" * MAX_FIELDS + b"Y: \x01\r\n\r\n"),
    ("field too long, then a bad value", GET + b"X: " + b"v" * MAX_FIELD_BYTES + b"\x01\r\n\r\n"),
    ("name too long, then a bad name", GET + b"X" * (MAX_FIELD_BYTES + 1) + b"\x01: v\r\n\r\n"),
    ("field too long, then fine", GET + b"X: " + b"v" * MAX_FIELD_BYTES + b"\r\nY: 1\r\n\r\n"),
]


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize(("name", "data"), CASES, ids=[name for name, _ in CASES])
def test_both_builds_report_the_same_whole_and_byte_by_byte(
    build: Parser, name: str, data: bytes
) -> None:
    whole = _outcome(_parse.RequestParser, data, step=len(data))
    assert _outcome(build, data, step=len(data)) == whole
    # A byte a read: every span (target, name, value) arrives in pieces.
    in_pieces = _outcome(build, data, step=1)
    assert in_pieces == _outcome(_parse.RequestParser, data, step=1)
    assert in_pieces == whole


def test_the_heads_are_what_was_sent() -> None:
    data = CASES[2][1] + b"POST /x HTTP/1.0\r\nContent-Length: 2\r\n\r\nok"
    assert _outcome(_parse.RequestParser, data, step=len(data)) == [
        ("begin",),
        ("head", b"/v1/chat?x=1", [(b"Host", b"a"), (b"X-MiXed-Case", b"Va Lue")],
         [b"host", b"x-mixed-case"], "GET", "1.1", True),
        ("framing", None, -1, -1, 1),
        ("complete",),
        ("begin",),
        ("head", b"/x", [(b"Content-Length", b"2")], [b"content-length"], "POST", "1.0", False),
        ("framing", 2, -1, -1, 0),
        ("body", b"ok"),
        ("complete",),
    ]  # fmt: skip


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("event", ["begin", "head", "body", "complete"])
def test_a_callbacks_exception_is_the_errors_context(build: Parser, event: str) -> None:
    data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok"
    outcome = _outcome(build, data, step=len(data), fail_on=event)
    assert outcome[-1] == ("callback error", "KeyError", repr(KeyError(event)))
    assert outcome == _outcome(_parse.RequestParser, data, step=len(data), fail_on=event)


class _Sink:
    def on_message_begin(self) -> None:
        pass

    def on_headers_complete(self) -> None:
        pass

    def on_body(self, data: bytes) -> None:
        pass

    def on_message_complete(self) -> None:
        pass


@pytest.mark.parametrize("build", BUILDS)
def test_a_parser_between_requests_holds_little(build: Parser) -> None:
    # One parser per connection: 10,000 idle keep-alive connections must stay cheap,
    # after a small head and after one at the limits alike (its buffers are freed).
    large = GET + b"X: " + b"v" * (MAX_FIELD_BYTES - 1) + b"\r\n\r\n"
    count = 200
    for first in (GET + b"\r\n", large):
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            parsers = []
            for _ in range(count):
                parser = build(_Sink())
                parser.feed_data(first)
                parser.feed_data(GET + b"\r\n")  # the head it holds: a small one
                parsers.append(parser)
            held = (tracemalloc.get_traced_memory()[0] - before) / count
        finally:
            tracemalloc.stop()
        assert held < 4096, f"{held:.0f} bytes a parser"
