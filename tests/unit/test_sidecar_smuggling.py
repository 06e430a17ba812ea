"""Request smuggling: every ambiguous framing is answered 400 and nothing reaches the upstream.

The upstream here is a bare TCP server that records every byte it is sent:
"nothing reached it" means no connection carried a byte, not merely that
no request was routed. The requests go to an unprotected path, so a request
that got through would have been forwarded: what stops them is framing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from powgate import KeyRing
from powgate.config import RouteConfig, SidecarConfig
from powgate_sidecar import Sidecar

CONFIG = SidecarConfig(
    policy="team/chat", routes=[RouteConfig(name="chat", paths=["/v1/*"], methods=["POST"])]
)
HEAD = b"POST /open HTTP/1.1\r\nHost: x\r\n"
TE = b"Transfer-Encoding: chunked\r\n"
HEAD10 = b"POST /open HTTP/1.0\r\n"
#: A request smuggled in the body of the first, should the framing be read two ways.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
#: Sent after the request under test: once answered, the upstream has seen all before it.
SENTINEL = b"GET /sentinel HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@dataclass
class Recorder:
    """An upstream that answers 200 to anything and keeps every byte it got."""

    received: list[bytes] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        while data := await reader.read(65536):
            self.received.append(data)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        writer.close()

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
            await writer.wait_closed()


@dataclass
class Stack:
    port: int
    upstream: Recorder
    sidecar: Sidecar

    async def received_only_a_sentinel(self) -> bool:
        """Whether the upstream got nothing but a request sent after the one under test.

        The sentinel is the positive signal: once its answer is back, anything the
        earlier request had sent upstream would have arrived before it.
        """
        answer = await exchange(self.port, SENTINEL)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:120]
        return b"".join(self.upstream.received).startswith(b"GET /sentinel ") and all(
            b"/smuggled" not in chunk and b"/open" not in chunk for chunk in self.upstream.received
        )

    def bad_requests(self) -> float:
        registry = self.sidecar.metrics.registry
        value = registry.get_sample_value("powgate_client_errors_total", {"kind": "bad_request"})
        return value or 0.0


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    recorder = Recorder()
    upstream = await asyncio.start_server(recorder.handle, "127.0.0.1", 0)
    upstream_port = upstream.sockets[0].getsockname()[1]
    sidecar = Sidecar(
        upstream=f"http://127.0.0.1:{upstream_port}", keyring=KeyRing.generate(), config=CONFIG
    )
    await sidecar.start()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(sidecar.listener(header_seconds=2), "127.0.0.1", 0)
    yield Stack(server.sockets[0].getsockname()[1], recorder, sidecar)
    server.close()
    await sidecar.close()
    upstream.close()
    await recorder.close()


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, read until the sidecar closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    await writer.wait_closed()
    return answer


#: (name, bytes): each is ambiguous or malformed framing.
CASES = [
    ("CL.TE", HEAD + b"Content-Length: 6\r\n" + TE + b"\r\n0\r\n\r\nX"),
    ("TE.CL", HEAD + TE + b"Content-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
    ("CL.CL same", HEAD + b"Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"),
    ("CL.CL differ", HEAD + b"Content-Length: 4\r\nContent-Length: 40\r\n\r\nabcd" + SMUGGLED),
    ("CL list", HEAD + b"Content-Length: 4, 4\r\n\r\nabcd"),
    ("CL plus", HEAD + b"Content-Length: +4\r\n\r\nabcd"),
    ("CL negative", HEAD + b"Content-Length: -4\r\n\r\nabcd"),
    ("CL hex", HEAD + b"Content-Length: 0x4\r\n\r\nabcd"),
    ("CL inner space", HEAD + b"Content-Length: 1 0\r\n\r\n0123456789"),
    ("CL overflow", HEAD + b"Content-Length: 18446744073709551617\r\n\r\nabcd"),
    ("CL space before colon", HEAD + b"Content-Length : 4\r\n\r\nabcd"),
    ("obs-fold", HEAD + b"X-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n"),
    ("obs-fold TE", HEAD + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"),
    ("bare LF request line", b"POST /open HTTP/1.1\nHost: x\r\nContent-Length: 0\r\n\r\n"),
    ("bare LF header", HEAD + b"X-A: 1\nContent-Length: 0\r\n\r\n"),
    ("bare LF end", HEAD + b"Content-Length: 0\n\n" + SMUGGLED),
    ("bare CR header", HEAD + b"X-A: 1\rContent-Length: 0\r\n\r\n"),
    ("chunk size not hex", HEAD + TE + b"\r\nzz\r\nabc\r\n0\r\n\r\n"),
    ("chunk size negative", HEAD + TE + b"\r\n-3\r\nabc\r\n0\r\n\r\n"),
    ("chunk size overflow", HEAD + TE + b"\r\n1ffffffffffffffff\r\nabc\r\n"),
    ("chunk size space", HEAD + TE + b"\r\n3 \r\nabc\r\n0\r\n\r\n"),
    ("chunk size bare LF", HEAD + TE + b"\r\n3\nabc\n0\n\n"),
    ("chunk longer than said", HEAD + TE + b"\r\n3\r\nabcdef\r\n0\r\n\r\n"),
    ("TE xchunked", HEAD + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
    ("TE chunked, gzip", HEAD + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
    ("TE gzip, chunked", HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
    ("TE identity", HEAD + b"Transfer-Encoding: identity\r\nContent-Length: 3\r\n\r\nabc"),
    ("TE twice", HEAD + TE + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("TE space before colon", HEAD + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
    ("TE vertical tab", HEAD + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n"),
    ("TE in HTTP/1.0", HEAD10 + TE + b"\r\n0\r\n\r\n"),
    ("TE with CL in HTTP/1.0", HEAD10 + b"Content-Length: 3\r\n" + TE + b"\r\nabc"),
    ("Host twice", b"POST /open HTTP/1.1\r\nHost: x\r\nHost: y\r\nContent-Length: 0\r\n\r\n"),
    ("no Host", b"POST /open HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
    ("NUL in a field", HEAD + b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n"),
    ("absolute-form target", b"GET http://127.0.0.1:1/open HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("asterisk-form target", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("fragment in target", b"GET /open#x HTTP/1.1\r\nHost: x\r\n\r\n"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "data"), CASES, ids=[name for name, _ in CASES])
async def test_ambiguous_framing_is_refused_and_never_forwarded(
    stack: Stack, name: str, data: bytes
) -> None:
    answer = await exchange(stack.port, data)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:120]
    assert b"\r\nConnection: close\r\n" in answer.partition(b"\r\n\r\n")[0] + b"\r\n"
    # One answer, and the connection closed after it: nothing smuggled was read as a request.
    assert answer.count(b"HTTP/1.1 ") == 1
    assert stack.bad_requests() == 1
    assert await stack.received_only_a_sentinel()


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"CONNECT @127.0.0.1:22 HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET /open HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /open\r\n\r\n", 505),  # HTTP/0.9
    ],
    ids=["CONNECT", "CONNECT userinfo", "HTTP/2 text", "HTTP/0.9"],
)
async def test_other_methods_and_versions_of_framing_are_refused(
    stack: Stack, data: bytes, status: int
) -> None:
    answer = await exchange(stack.port, data)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:120]
    assert await stack.received_only_a_sentinel()


async def test_a_well_framed_chunked_request_does_pass(stack: Stack) -> None:
    """The control: the same path and framing, well-formed, is forwarded."""
    data = HEAD + TE + b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    answer = await exchange(stack.port, data)
    assert answer.startswith(b"HTTP/1.1 200 ")
    upstream = b"".join(stack.upstream.received)
    assert upstream.startswith(b"POST /open HTTP/1.1\r\n")
    assert upstream.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
