"""The config watcher's connection (llhttp on an asyncio protocol) against scripted raw HTTP.

A raw loopback server writes exactly the bytes each case needs (chunk
boundaries anywhere, broken answers); the API server itself is met in
tests/integration/test_sidecar_e2e.py, over TLS.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from powgate_sidecar._kube_connection import KubeConnection, connect

Handler = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
END = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """A loopback server handing each connection's request head to ``handler``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(await reader.readuntil(b"\r\n\r\n"), reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


TARGET = "/api/v1/namespaces/ns/configmaps?watch=1"


async def watch(
    url: str,
    on_line: Callable[[bytes], None] | None,
    *,
    read_timeout: float = 5.0,
    max_body: int = 1024,
    headers: dict[str, str] | None = None,
) -> tuple[KubeConnection, asyncio.Task[int]]:
    """A connection to ``url`` and its GET of TARGET, under way."""
    connection = await connect(url, ssl_context=None, connect_seconds=5, max_body=max_body)
    answer = connection.get(
        TARGET,
        headers=headers or {"Accept": "application/json"},
        read_timeout=read_timeout,
        on_line=on_line,
    )
    return connection, asyncio.ensure_future(answer)


async def test_lines_are_delivered_whatever_the_chunk_boundaries() -> None:
    requests: list[bytes] = []

    async def handler(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(head)
        # Two events in one chunk, one split over three chunks, an empty line, the end.
        parts = [b'{"a":1}\n{"b":2}\n', b'{"c"', b":3", b'}\n\n{"d":4}\n']
        writer.write(HEAD + b"".join(chunk(p) for p in parts))
        await writer.drain()
        await asyncio.sleep(0.05)  # and the end in data of its own
        writer.write(END)
        await writer.drain()

    lines: list[bytes] = []
    async with raw_server(handler) as url:
        connection, answer = await watch(url, lines.append, headers={"Authorization": "Bearer t"})
        assert await answer == 200
        connection.close()
    assert lines == [b'{"a":1}', b'{"b":2}', b'{"c":3}', b"", b'{"d":4}']
    request_line, *fields = requests[0].decode().split("\r\n")
    assert request_line == f"GET {TARGET} HTTP/1.1"
    assert f"Host: {url.removeprefix('http://')}" in fields
    assert "Authorization: Bearer t" in fields


async def test_requests_share_the_connection_while_the_server_keeps_it() -> None:
    """A LIST and the WATCHes after it: one connection (one TLS handshake), not one each."""
    listing = b'{"items": []}'
    seen: list[bytes] = []

    async def handler(
        head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        seen.append(head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(listing), listing))
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(HEAD + chunk(b'{"e":1}\n') + END)
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()

    lines: list[bytes] = []
    async with raw_server(handler) as url:
        connection = await connect(url, ssl_context=None, connect_seconds=5, max_body=1024)
        assert await connection.get("/list", headers={}, read_timeout=5) == 200
        assert bytes(connection.body) == listing
        assert await connection.get(TARGET, headers={}, read_timeout=5, on_line=lines.append) == 200
        assert not connection.closed
        assert await connection.get("/again", headers={}, read_timeout=5) == 200
        assert connection.closed  # the server said so
        with pytest.raises(ConnectionError):
            await connection.get("/more", headers={}, read_timeout=5)
    assert lines == [b'{"e":1}']
    assert [h.split(b" ")[1] for h in seen] == [b"/list", TARGET.encode(), b"/again"]


async def test_an_event_in_the_answers_last_data_comes_before_its_end() -> None:
    """A watch ending with an ERROR event (410) must be seen as that, not as a normal end."""

    async def handler(_: bytes, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + chunk(b'{"type":"ERROR"}\n') + END)
        await writer.drain()

    def on_line(line: bytes) -> None:
        raise LookupError(line.decode())

    async with raw_server(handler) as url:
        connection, answer = await watch(url, on_line)
        with pytest.raises(LookupError, match="ERROR"):
            await answer
        assert connection.closed


@pytest.mark.parametrize("lines", [True, False])
async def test_a_line_or_body_longer_than_any_object_fails_the_request(lines: bool) -> None:
    async def handler(_: bytes, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD)
        for _ in range(10):  # never a newline: the line grows past the cap
            writer.write(chunk(b"x" * 200))
        await writer.drain()
        await asyncio.sleep(5)

    async with raw_server(handler) as url:
        _, answer = await watch(url, (lambda _: None) if lines else None, max_body=1024)
        with pytest.raises(ValueError, match="larger than any ConfigMap"):
            await answer


async def test_silence_longer_than_the_read_timeout_fails_the_request() -> None:
    async def handler(_: bytes, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + chunk(b"{}\n"))
        await writer.drain()
        await asyncio.sleep(5)

    lines: list[bytes] = []
    async with raw_server(handler) as url:
        connection, answer = await watch(url, lines.append, read_timeout=0.2)
        with pytest.raises(TimeoutError, match="no answer from the API server"):
            await answer
        assert connection.closed
    assert lines == [b"{}"]


async def test_a_connection_broken_mid_answer_fails_the_request() -> None:
    async def handler(_: bytes, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + chunk(b'{"a":1}\n{"type": "MODIF'))
        await writer.drain()

    lines: list[bytes] = []
    async with raw_server(handler) as url:
        _, answer = await watch(url, lines.append)
        with pytest.raises(ConnectionError):
            await answer
    assert lines == [b'{"a":1}']  # the broken line is not delivered


async def test_an_answer_that_is_not_http_fails_the_request() -> None:
    async def handler(_: bytes, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async with raw_server(handler) as url:
        _, answer = await watch(url, lambda _: None)
        with pytest.raises(ValueError, match="not HTTP"):
            await answer


async def test_an_error_answer_gives_its_status_and_the_start_of_its_body() -> None:
    body = b'{"kind":"Status","code":403,"message":"forbidden"}' + b" " * 10_000

    async def handler(_: bytes, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n" % len(body)
        writer.write(head + body)
        await writer.drain()
        await asyncio.sleep(5)

    lines: list[bytes] = []
    async with raw_server(handler) as url:
        connection, answer = await watch(url, lines.append)
        assert await answer == 403
    assert connection.error_body.startswith(b'{"kind":"Status","code":403')
    assert len(connection.error_body) == 4096  # kept bounded
    assert lines == []


async def test_a_handler_error_ends_the_request_and_drops_the_connection() -> None:
    closed = asyncio.Event()

    async def handler(_: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + chunk(b'{"a":1}\n{"b":2}\n'))
        await writer.drain()
        await reader.read()  # the client's end of the connection
        closed.set()

    lines: list[bytes] = []

    def on_line(line: bytes) -> None:
        lines.append(line)
        raise ValueError("bad event")

    async with raw_server(handler) as url:
        _, answer = await watch(url, on_line)
        with pytest.raises(ValueError, match="bad event"):
            await answer
        await asyncio.wait_for(closed.wait(), 5)
    assert lines == [b'{"a":1}']  # nothing after the failing event


async def test_cancelling_a_request_drops_the_connection_at_once() -> None:
    """What a cancelled watcher does: the server sees the connection end."""
    closed = asyncio.Event()

    async def handler(_: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD)
        await writer.drain()
        await reader.read()
        closed.set()

    async with raw_server(handler) as url:
        connection, answer = await watch(url, lambda _: None)
        await asyncio.sleep(0.05)
        answer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await answer
        assert connection.closed
        await asyncio.wait_for(closed.wait(), 5)


async def test_data_nobody_asked_for_closes_the_connection() -> None:
    async def handler(_: bytes, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")  # unasked
        await writer.drain()
        await asyncio.sleep(5)

    async with raw_server(handler) as url:
        connection, answer = await watch(url, None)
        assert await answer == 200
        for _ in range(100):
            if connection.closed:
                break
            await asyncio.sleep(0.01)
        assert connection.closed


@pytest.mark.parametrize("value", ["Bearer a\r\nX-Injected: 1", "Bearer a\nb", "Bearer \0"])
async def test_a_header_with_a_line_break_is_refused_before_sending(value: str) -> None:
    """A token file is read as it is: a line break in it must not become a header."""
    sent: list[bytes] = []

    async def handler(head: bytes, __: asyncio.StreamReader, ___: asyncio.StreamWriter) -> None:
        sent.append(head)

    async with raw_server(handler) as url:
        _, answer = await watch(url, None, headers={"Authorization": value})
        with pytest.raises(ValueError, match="line break"):
            await answer
    assert sent == []
