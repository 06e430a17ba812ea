"""The sidecar as it runs (``serve``): listeners, hostile connections, reloads, shutdown.

Everything runs in the test's event loop against a fake upstream; the
command-line process itself is exercised by the integration tests.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from powgate import CHALLENGE_PATH, Challenge, KeyRing, KeyRingError, solve
from powgate.config import RouteConfig, SidecarConfig
from powgate.pricing import (
    ApiKeyConfig,
    ApiKeyHashes,
    PricingConfig,
    TrustedCaller,
    api_key_digest,
)
from powgate.reputation import ReputationEntry, ReputationList
from powgate_sidecar import Limits, Settings, serve
from waiting import eventually_async, free_port, until_ready

CONFIG = SidecarConfig(
    policy="team/chat",
    difficulty=100,
    routes=[RouteConfig(name="chat", paths=["/v1/*"], methods=["POST"])],
)


@dataclass
class Running:
    base: str
    metrics: str
    port: int
    config_file: Path
    key_file: Path
    seen: list[str]
    release: asyncio.Event
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def get(self, session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
        async with session.get(url) as response:
            return response.status, await response.text()

    async def challenge(self, session: aiohttp.ClientSession) -> Challenge:
        async with session.get(self.base + CHALLENGE_PATH, params={"path": "/v1/chat"}) as response:
            assert response.status == 200
            return Challenge.from_json(await response.read())

    async def metric(self, session: aiohttp.ClientSession, line_start: str) -> float | None:
        _, text = await self.get(session, self.metrics + "/metrics")
        for line in text.splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
        return None


async def upstream_app(seen: list[str], release: asyncio.Event) -> web.Application:
    async def any_path(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        if request.path != "/v1/stream":
            return web.Response(text="ok")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        await release.wait()
        await response.write(b"data: two\n\n")
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_path)
    return app


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    seen: list[str] = []
    release = asyncio.Event()
    upstream = TestServer(await upstream_app(seen, release))
    await upstream.start_server()
    config_file = tmp_path / "config.json"
    config_file.write_text(CONFIG.to_json())
    key_file = tmp_path / "keyring.json"
    KeyRing.generate(kid="k1").save(key_file)
    port, metrics_port = free_port(), free_port()
    settings = Settings(
        listen=("127.0.0.1", port),
        upstream=str(upstream.make_url("/")),
        metrics_listen=("127.0.0.1", metrics_port),
        key_file=key_file,
        config_file=config_file,
        header_timeout=0.5,
        limits=Limits(body_read_seconds=0.5),
        shutdown_timeout=10,
        poll_interval=0.05,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop=stop))
    base, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"
    await until_ready(metrics + "/readyz")
    yield Running(base, metrics, port, config_file, key_file, seen, release, stop, task)
    stop.set()
    release.set()
    await asyncio.wait_for(task, timeout=30)
    await upstream.close()


async def raw(port: int, data: bytes, *, wait_for_eof: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(
        reader.read() if wait_for_eof else reader.read(65536), timeout=20
    )
    writer.close()
    return answer


async def listener_closed(port: int) -> None:
    for _ in range(500):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        writer.close()
        await asyncio.sleep(0.02)
    raise AssertionError(f"port {port} still accepts connections")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage\r\n\r\n",
        b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        b"POST /v1/chat HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
        b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
    ],
    ids=["tls-bytes", "huge-header", "too-many-headers", "conflicting-length", "bad-header-name"],
)
async def test_garbage_requests_are_refused_and_counted(
    running: Running, request_bytes: bytes
) -> None:
    answer = await raw(running.port, request_bytes)
    assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400", b"HTTP/1.1 431", b"HTTP/1.0 431"))
    assert running.seen == []
    async with aiohttp.ClientSession() as session:
        assert await running.metric(session, 'powgate_client_errors_total{kind="bad_request"}') == 1


async def test_slowloris_connection_is_closed_without_reaching_upstream(running: Running) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(b"POST /v1/chat HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    # The header timeout is 0.5 s: the server hangs up, the client never finished.
    assert await asyncio.wait_for(reader.read(), timeout=20) == b""
    writer.close()
    assert running.seen == []


async def test_a_paid_request_whose_body_stalls_gets_408_and_never_reaches_upstream(
    running: Running,
) -> None:
    async with aiohttp.ClientSession() as session:
        challenge = await running.challenge(session)
    payload = challenge.solution(solve(challenge).number).encode()
    head = (
        "POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
        f"X-Powgate-Solution: {payload}\r\n\r\n"
    )
    # Ten bytes of a hundred, then nothing: the body timeout (0.5 s) ends it.
    answer = await raw(running.port, head.encode() + b"0123456789", wait_for_eof=True)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert running.seen == []
    async with aiohttp.ClientSession() as session:
        line = 'powgate_client_errors_total{kind="slow_client"}'
        assert await running.metric(session, line) == 1


async def test_config_file_change_is_applied_and_a_bad_one_is_kept_out(running: Running) -> None:
    async with aiohttp.ClientSession() as session:
        old = await running.challenge(session)
        running.config_file.write_text(
            CONFIG.model_copy(update={"difficulty": 300, "version": "v2"}).to_json()
        )

        async def applied() -> bool:
            return (await running.challenge(session)).maxnumber == 300

        await eventually_async(applied, what="the edited config applied")
        # The challenge issued before the change still verifies.
        payload = old.solution(solve(old).number).encode()
        async with session.post(
            running.base + "/v1/chat", headers={"X-Powgate-Solution": payload}
        ) as response:
            assert response.status == 200
        running.config_file.write_text('{"difficulty": "lots"}')
        line = 'powgate_config_reloads_total{result="invalid",source="file"}'

        async def refused() -> bool:
            return await running.metric(session, line) == 1

        await eventually_async(refused, what="the bad config counted")
        assert (await running.challenge(session)).maxnumber == 300
        assert (
            await running.metric(session, 'powgate_config_info{policy="team/chat",version="v2"}')
            == 1
        )


async def test_key_file_swap_is_picked_up(running: Running) -> None:
    async with aiohttp.ClientSession() as session:
        assert (await running.challenge(session)).params.kid == "k1"
        # Replace the file the way a Secret update does: a new inode behind the same name.
        KeyRing.generate(kid="k2").save(running.key_file)

        async def swapped() -> bool:
            return (await running.challenge(session)).params.kid == "k2"

        await eventually_async(swapped, what="the new key signing")
        running.key_file.write_text(json.dumps({"version": 1, "active": "nope", "keys": []}))
        line = 'powgate_config_reloads_total{result="invalid",source="keyfile"}'

        async def refused() -> bool:
            return await running.metric(session, line) == 1

        # The positive signal: the broken file was read and refused (this fails if it
        # is never read); only then does the unchanged key prove it was kept out.
        await eventually_async(refused, what="the invalid key file counted")
        assert (await running.challenge(session)).params.kid == "k2"


async def test_trusted_keys_and_the_reputation_list_are_read_beside_keys_and_config(
    running: Running,
) -> None:
    """A mounted Secret holds apikeys.json beside keyring.json; a mounted ConfigMap holds
    reputation.json beside config.json. Both are followed like the files they sit with."""
    priced = CONFIG.model_copy(
        update={
            "version": "priced",
            "pricing": PricingConfig(enabled=True),
            "trusted_callers": [
                TrustedCaller(
                    name="partners", api_keys=ApiKeyConfig(secret_name="k"), multiplier=0.5
                )
            ],
        }
    )
    running.config_file.write_text(priced.to_json())
    listed = ReputationList(
        entries=(ReputationEntry(key="127.0.0.0/24", factor=8, expires=int(time.time()) + 600),)
    )
    running.config_file.with_name("reputation.json").write_text(listed.to_json())
    running.key_file.with_name("apikeys.json").write_text(
        ApiKeyHashes(callers={"partners": [api_key_digest("sk-1")]}).model_dump_json()
    )
    partner = {"Authorization": "Bearer sk-1"}
    async with aiohttp.ClientSession() as session:

        async def priced_at(maxnumber: int) -> bool:
            return (await running.challenge(session)).maxnumber == maxnumber

        await eventually_async(lambda: priced_at(800), what="the listed factor 8 applied")
        async with session.get(
            running.base + CHALLENGE_PATH, params={"path": "/v1/chat"}, headers=partner
        ) as response:
            assert Challenge.from_json(await response.read()).maxnumber == 400
        # A list that is not one keeps the one in force; a removed list is no list.
        running.config_file.with_name("reputation.json").write_text("{")
        line = 'powgate_config_reloads_total{result="invalid",source="reputation"}'

        async def refused() -> bool:
            return await running.metric(session, line) == 1

        await eventually_async(refused, what="the invalid list counted")
        assert (await running.challenge(session)).maxnumber == 800
        running.config_file.with_name("reputation.json").unlink()
        await eventually_async(lambda: priced_at(100), what="the removed list dropped")


async def test_metrics_and_health_endpoints(running: Running) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(running.base + "/v1/chat") as response:
            assert response.status == 428
        # A request without a solution is not timed: there was nothing to verify.
        async with session.post(
            running.base + "/v1/chat", headers={"X-Powgate-Solution": "bm90IGEgcGF5bG9hZA=="}
        ) as response:
            assert response.status == 428
        status, text = await running.get(session, running.metrics + "/metrics")
        assert status == 200
        for name in (
            'powgate_requests_total{outcome="challenged",reason="missing",route="chat"} 1.0',
            'powgate_difficulty{route="chat"} 100.0',
            'powgate_requests_total{outcome="rejected",reason="malformed",route="chat"} 1.0',
            "powgate_verify_seconds_count 1.0",
            "powgate_inflight 0.0",
            "powgate_queue_depth 0.0",
            "powgate_replay_cache_entries 0.0",
        ):
            assert name in text
        assert (await running.get(session, running.metrics + "/healthz"))[0] == 200


async def test_shutdown_drains_a_stream_in_flight(running: Running) -> None:
    async with aiohttp.ClientSession() as session:
        challenge = await running.challenge(session)
        payload = challenge.solution(solve(challenge).number).encode()
        async with session.post(
            running.base + "/v1/stream", headers={"X-Powgate-Solution": payload}
        ) as response:
            assert await response.content.readuntil(b"\n\n") == b"data: one\n\n"
            running.stop.set()
            await listener_closed(running.port)  # shutdown has begun; the stream stays
            assert not running.task.done()
            running.release.set()
            assert await response.content.read() == b"data: two\n\n"
    await asyncio.wait_for(running.task, timeout=30)


async def test_unusable_key_file_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "keyring.json").write_text("{}")
    settings = Settings(
        listen=("127.0.0.1", free_port()),
        upstream="http://127.0.0.1:9",
        metrics_listen=("127.0.0.1", free_port()),
        key_file=tmp_path,
        config_file=None,
    )
    with pytest.raises(KeyRingError, match=r"keyring\.json"):
        await serve(settings, stop=asyncio.Event())
