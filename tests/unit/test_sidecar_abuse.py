"""The sidecar tried as an attacker would: one test per hole found, against ``serve``.

Each test drives the running sidecar (``serve`` with its settings, on the
test's event loop) over real sockets, and checks what reached the upstream
(an aiohttp app that records every request) or another local service.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from powgate import CHALLENGE_PATH, Challenge, KeyRing, solve
from powgate.config import RouteConfig, SidecarConfig
from powgate_sidecar import Limits, Settings, serve
from waiting import free_port, until_ready

CONFIG = SidecarConfig(
    policy="team/chat",
    difficulty=50,
    routes=[
        RouteConfig(name="chat", paths=["/v1/chat/completions"], methods=["POST"]),
        RouteConfig(name="pages", paths=["/app/*"], methods=["GET"]),
    ],
)


@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Running:
    port: int
    metrics: str
    seen: list[Seen] = field(default_factory=list)

    async def solution(self, path: str = "/v1/chat/completions", method: str = "POST") -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{self.port}{CHALLENGE_PATH}",
                params={"path": path, "method": method},
            ) as response,
        ):
            assert response.status == 200
            challenge = Challenge.from_json(await response.read())
        return challenge.solution(solve(challenge).number).encode()


async def _recording_upstream(seen: list[Seen]) -> web.Application:
    async def any_path(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append(Seen(request.method, request.path_qs, list(request.headers.items()), body))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_path)
    return app


@contextlib.asynccontextmanager
async def running(
    tmp_path_factory: pytest.TempPathFactory, **changes: object
) -> AsyncIterator[Running]:
    seen: list[Seen] = []
    upstream = TestServer(await _recording_upstream(seen))
    await upstream.start_server()
    folder = tmp_path_factory.mktemp("sidecar")
    config_file, key_file = folder / "config.json", folder / "keyring.json"
    config_file.write_text(CONFIG.to_json())
    KeyRing.generate().save(key_file)
    port, metrics_port = free_port(), free_port()
    settings = Settings(
        listen=("127.0.0.1", port),
        upstream=str(upstream.make_url("/")),
        metrics_listen=("127.0.0.1", metrics_port),
        key_file=key_file,
        config_file=config_file,
        header_timeout=5,
        shutdown_timeout=2,
    )
    settings = replace(settings, **changes)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop=stop))
    metrics = f"http://127.0.0.1:{metrics_port}"
    await until_ready(metrics + "/readyz")
    try:
        yield Running(port, metrics, seen)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        await upstream.close()


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and read what comes back until the sidecar closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    chunks = []
    timeout = 10.0
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), timeout=timeout):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and timeout > 1:
                timeout = 0.3  # the answer's head is in: what follows comes at once or not at all
    writer.close()
    return b"".join(chunks)


# -- 1. stalled uploads cannot starve paid requests of the upstream -------------


async def test_stalled_uploads_neither_pin_the_upstream_nor_starve_paid_requests(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    limits = Limits(upstream_connections=4, upstream_connect_seconds=1.0, body_read_seconds=1.0)
    async with running(tmp_path_factory, limits=limits) as sidecar:
        stalled = []
        for index in range(8):
            # Unprotected uploads, no proof of work: a chunked body that sends
            # one chunk and stops, and a long body that never starts.
            reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
            if index % 2:
                writer.write(
                    b"PUT /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"10\r\n0123456789abcdef\r\n"
                )
            else:
                writer.write(b"PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            await writer.drain()
            stalled.append((reader, writer))
        await asyncio.sleep(0.2)
        payload = await sidecar.solution()
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                f"http://127.0.0.1:{sidecar.port}/v1/chat/completions",
                data=b"{}",
                headers={"X-Powgate-Solution": payload},
                timeout=aiohttp.ClientTimeout(total=10),
            )
            assert response.status == 200
        # The stalled bodies time out: each is answered 408 by the sidecar (the positive
        # signal that it is settled), and none of them was answered by the upstream.
        for reader, writer in stalled:
            answer = await asyncio.wait_for(reader.read(), timeout=30)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
            writer.close()
        assert [s.path for s in sidecar.seen] == ["/v1/chat/completions"]


# -- 2. only origin-form targets go upstream, always to the configured one ------


async def test_connect_and_foreign_targets_never_reach_another_service(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    reached: list[bytes] = []

    async def canary(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reached.append(await reader.read(1000))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret")
        writer.close()

    other = await asyncio.start_server(canary, "127.0.0.1", 0)
    other_port = other.sockets[0].getsockname()[1]
    async with running(tmp_path_factory) as sidecar:
        answers = [
            await exchange(sidecar.port, data)
            for data in (
                b"CONNECT @127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n" % other_port,
                b"GET http://127.0.0.1:%d/x HTTP/1.1\r\nHost: x\r\n\r\n" % other_port,
                b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            )
        ]
    other.close()
    assert [answer[:12] for answer in answers] == [
        b"HTTP/1.1 405",
        b"HTTP/1.1 400",
        b"HTTP/1.1 400",
    ]
    assert all(b"secret" not in answer for answer in answers)
    assert reached == []
    assert sidecar.seen == []


# -- 3. protecting GET protects HEAD --------------------------------------------


async def test_head_pays_where_get_pays(tmp_path_factory: pytest.TempPathFactory) -> None:
    async with running(tmp_path_factory) as sidecar:
        answer = await exchange(sidecar.port, b"HEAD /app/page HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 428 ")
        assert answer.endswith(b"\r\n\r\n")  # a HEAD answer has no body
        payload = await sidecar.solution("/app/page", "GET")
        paid = b"HEAD /app/page HTTP/1.1\r\nHost: x\r\nX-Powgate-Solution: %s\r\n\r\n"
        assert (await exchange(sidecar.port, paid % payload.encode())).startswith(b"HTTP/1.1 200")
    assert [(s.method, s.path) for s in sidecar.seen] == [("HEAD", "/app/page")]


# -- 4. paths are matched as the upstream will read them -----------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions/",
        "/v1/chat/completions;x=1",
        "/v1/chat;x=1/completions",
        "/v1%2Fchat%2Fcompletions",
        "/v1/chat/%63ompletions",
        "/V1/Chat/Completions",
    ],
)
async def test_spellings_of_a_protected_path_are_challenged(
    tmp_path_factory: pytest.TempPathFactory, path: str
) -> None:
    async with running(tmp_path_factory) as sidecar:
        request = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
        assert (await exchange(sidecar.port, request)).startswith(b"HTTP/1.1 428 ")
    assert sidecar.seen == []


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions%00", "/v1/chat/completions%20", "/v1/chat/completions%5c"]
)
async def test_nul_space_and_backslash_in_a_path_are_refused(
    tmp_path_factory: pytest.TempPathFactory, path: str
) -> None:
    async with running(tmp_path_factory) as sidecar:
        request = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
        assert (await exchange(sidecar.port, request)).startswith(b"HTTP/1.1 400 ")
    assert sidecar.seen == []


# -- 5. a solution is spent only on a request that goes on ---------------------


async def test_a_request_refused_for_its_size_does_not_spend_its_solution(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    async with running(tmp_path_factory, limits=Limits(max_body_bytes=1000)) as sidecar:
        payload = await sidecar.solution()
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"X-Powgate-Solution: {payload}\r\nContent-Length: %d\r\n\r\n"
        )
        too_large = await exchange(sidecar.port, (head % 5000).encode())
        assert too_large.startswith(b"HTTP/1.1 413 ")
        answer = await exchange(sidecar.port, (head % 2).encode() + b"{}")
        assert answer.startswith(b"HTTP/1.1 200 ")
    assert [s.body for s in sidecar.seen] == [b"{}"]


# -- 6. what a client claims about itself is not believed ----------------------

SPOOFED = (
    b"X-Forwarded-For: 10.9.9.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: bank.example\r\n"
    b"Forwarded: for=10.9.9.9;proto=https\r\nX-Real-IP: 10.9.9.9\r\n"
)


async def test_forwarding_headers_from_an_untrusted_peer_are_overwritten(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    async with running(tmp_path_factory) as sidecar:
        request = b"GET /open HTTP/1.1\r\nHost: svc\r\n" + SPOOFED + b"\r\n"
        assert (await exchange(sidecar.port, request)).startswith(b"HTTP/1.1 200 ")
    [seen] = sidecar.seen
    forwarded = {name.lower(): value for name, value in seen.headers if name.lower() != "host"}
    assert forwarded == {
        "x-forwarded-for": "127.0.0.1",
        "x-forwarded-proto": "http",
        "x-forwarded-host": "svc",
    }


async def test_forwarding_headers_from_a_trusted_proxy_are_kept(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    async with running(tmp_path_factory, trusted_proxies=("127.0.0.0/8",)) as sidecar:
        request = b"GET /open HTTP/1.1\r\nHost: svc\r\n" + SPOOFED + b"\r\n"
        assert (await exchange(sidecar.port, request)).startswith(b"HTTP/1.1 200 ")
    [seen] = sidecar.seen
    forwarded = {name.lower(): value for name, value in seen.headers}
    # Once: the proxy's chain with the peer appended, not the chain and then that.
    assert [name.lower() for name, _ in seen.headers].count("x-forwarded-for") == 1
    assert forwarded["x-forwarded-for"] == "10.9.9.9, 127.0.0.1"
    assert forwarded["x-forwarded-proto"] == "https"
    assert forwarded["x-forwarded-host"] == "bank.example"
    assert forwarded["forwarded"] == "for=10.9.9.9;proto=https"
    assert forwarded["x-real-ip"] == "10.9.9.9"


# -- 7. several Cookie fields are one list --------------------------------------


async def test_a_solution_in_a_second_cookie_field_is_found_and_other_cookies_kept(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    async with running(tmp_path_factory) as sidecar:
        payload = await sidecar.solution("/app/page", "GET")
        request = (
            "GET /app/page HTTP/1.1\r\nHost: x\r\nCookie: theme=dark\r\n"
            f"Cookie: powgate_solution={payload}; sid=7\r\n\r\n"
        ).encode()
        answer = await exchange(sidecar.port, request)
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert b"Set-Cookie: powgate_solution=; Max-Age=0" in answer
    [seen] = sidecar.seen
    cookies = [value for name, value in seen.headers if name.lower() == "cookie"]
    assert cookies == ["theme=dark; sid=7"]


# -- 8. refusals do not amplify --------------------------------------------------

#: What Chromium sends for a navigation (its usual fields, a typical length).
NAVIGATION = (
    b"GET /app/page HTTP/1.1\r\nHost: shop.example.com\r\nConnection: keep-alive\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/131.0.0.0 Safari/537.36\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    b"image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7\r\n"
    b'sec-ch-ua: "Chromium";v="131", "Not_A Brand";v="24"\r\nsec-ch-ua-mobile: ?0\r\n'
    b'sec-ch-ua-platform: "Linux"\r\nSec-Fetch-Site: none\r\nSec-Fetch-Mode: navigate\r\n'
    b"Sec-Fetch-User: ?1\r\nSec-Fetch-Dest: document\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n\r\n"
)


async def test_a_refused_navigation_is_answered_with_fewer_bytes_than_it_sent(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    async with running(tmp_path_factory) as sidecar:
        answer = await exchange(sidecar.port, NAVIGATION)
    assert answer.startswith(b"HTTP/1.1 428 ")
    assert b"text/html" in answer.partition(b"\r\n\r\n")[0]
    assert len(answer) < len(NAVIGATION)
