"""The sidecar's request path against a fake upstream (an in-process aiohttp app).

The sidecar listens on a loopback port of its own (its protocol factory on
the test's event loop); clients are aiohttp's, or raw sockets where the
bytes themselves matter.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import shutil
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestServer
from deepseekpowsolver import DeepSeekPowSolver

from descriptors import allow_open_files
from powgate import (
    DEEPSEEK_CHALLENGE_PATH,
    Challenge,
    ChallengeV2,
    DeepSeekChallenge,
    HmacKey,
    Issuer,
    KeyRing,
    _deepseek_hash,
    parse_challenge,
    solve,
    solve_challenge,
    solve_v2,
)
from powgate._keys import new_secret
from powgate.config import (
    CONFIG_CONTRACT,
    Mode,
    OverloadConfig,
    QueueConfig,
    RouteConfig,
    SidecarConfig,
)
from powgate_sidecar import Limits, Sidecar, _connection
from powgate_sidecar._forward import UpstreamPool
from powgate_testbed.fuzz_http import ClientTransport
from waiting import eventually_async

POLICY = "team/chat"
#: Bounds the wait for the sidecar to close its connections at the end of a test.
_DRAIN = 30.0


@dataclass
class Upstream:
    """What the fake upstream saw, and a gate that holds the streaming endpoint open."""

    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    release_stream: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    slow: float = 0.0

    def app(self) -> web.Application:
        async def echo(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            self.seen.append((request.method, request.path_qs, dict(request.headers), body))
            if self.slow:
                await asyncio.sleep(self.slow)
            return web.json_response({"ok": True, "bytes": len(body)})

        async def stream(request: web.Request) -> web.StreamResponse:
            self.seen.append((request.method, request.path_qs, dict(request.headers), b""))
            self.arrived.set()
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: first\n\n")
            await self.release_stream.wait()
            await response.write(b"data: [DONE]\n\n")
            return response

        app = web.Application()
        app.router.add_route("*", "/v1/stream", stream)
        app.router.add_route("*", "/{tail:.*}", echo)
        return app


def make_config(**overrides: object) -> SidecarConfig:
    base: dict[str, object] = {
        "policy": POLICY,
        "difficulty": 200,
        "min_difficulty": 50,
        "routes": [
            RouteConfig(name="chat", paths=["/v1/*"], methods=["POST"]),
            RouteConfig(
                name="pages",
                paths=["/app", "/app/*"],
                methods=["GET", "POST"],
                difficulty_multiplier=0.5,
            ),
        ],
    }
    base.update(overrides)
    return SidecarConfig.model_validate(base)


@dataclass
class Harness:
    sidecar: Sidecar
    client: aiohttp.ClientSession
    port: int
    upstream: Upstream
    keyring: KeyRing

    def count(self, route: str, outcome: str, reason: str) -> float:
        value = self.sidecar.metrics.registry.get_sample_value(
            "powgate_requests_total", {"route": route, "outcome": outcome, "reason": reason}
        )
        return value or 0.0

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.sidecar.metrics.registry.get_sample_value(name, labels or {}) or 0.0

    async def challenge(self, path: str = "/v1/chat", method: str = "POST") -> Challenge:
        response = await self.client.get(
            "/.well-known/powgate/challenge", params={"method": method, "path": path}
        )
        assert response.status == 200
        return Challenge.from_json(await response.read())

    async def solution(self, path: str = "/v1/chat", method: str = "POST") -> str:
        challenge = await self.challenge(path, method)
        return challenge.solution(solve(challenge).number).encode()


async def build(
    *,
    config: SidecarConfig | None = None,
    limits: Limits | None = None,
    upstream_url: str | None = None,
    trusted_proxies: tuple[str, ...] = (),
) -> AsyncIterator[Harness]:
    upstream = Upstream()
    upstream_server = TestServer(upstream.app())
    await upstream_server.start_server()
    keyring = KeyRing.generate()
    sidecar = Sidecar(
        upstream=upstream_url or str(upstream_server.make_url("/")),
        keyring=keyring,
        config=config or make_config(),
        limits=limits,
        trusted_proxies=trusted_proxies,
    )
    async with serving(sidecar) as (client, port):
        yield Harness(sidecar, client, port, upstream, keyring)
    await upstream_server.close()


@contextlib.asynccontextmanager
async def serving(sidecar: Sidecar) -> AsyncIterator[tuple[aiohttp.ClientSession, int]]:
    """``sidecar`` listening on a free loopback port, and a client session for it."""
    await sidecar.start()
    listener = sidecar.listener()
    server = await asyncio.get_running_loop().create_server(listener, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}")
    try:
        yield client, port
    finally:
        await client.close()
        # As the sidecar shuts down: its side of every connection closed before the
        # test ends (on a busy machine the client's close may not have reached it yet).
        server.close()
        await listener.drain(_DRAIN)
        await server.wait_closed()
        await sidecar.close()


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    async for harness in build():
        yield harness


async def test_missing_solution_gets_a_uniform_428_challenge(h: Harness) -> None:
    response = await h.client.post("/v1/chat", json={"q": 1})
    assert response.status == 428
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["WWW-Authenticate"] == 'PoW realm="powgate", algorithm="SHA-256"'
    assert response.headers["Cache-Control"] == "no-store"
    challenge = Challenge.from_json(await response.read())
    assert challenge.maxnumber == 200
    assert challenge.params.binding == f"{POLICY}:chat"
    assert h.upstream.seen == []
    assert h.count("chat", "challenged", "missing") == 1


async def test_valid_solution_is_forwarded_without_the_solution_header(h: Harness) -> None:
    payload = await h.solution()
    response = await h.client.post(
        "/v1/chat?x=1",
        data=b'{"q": 1}',
        headers={"X-Powgate-Solution": payload, "X-Powgate-Solve-Ms": "1500"},
    )
    assert response.status == 200
    assert await response.json() == {"ok": True, "bytes": 8}
    [(method, path, headers, body)] = h.upstream.seen
    assert (method, path, body) == ("POST", "/v1/chat?x=1", b'{"q": 1}')
    assert "X-Powgate-Solution" not in headers
    assert "X-Powgate-Solve-Ms" not in headers
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert h.count("chat", "admitted", "ok") == 1
    assert h.sample("powgate_client_solve_seconds_sum") == 1.5
    assert h.sample("powgate_verify_seconds_count") == 1
    assert h.sample("powgate_upstream_seconds_count", {"route": "chat", "status_class": "2xx"}) == 1


async def test_replayed_solution_is_rejected_and_never_reaches_upstream(h: Harness) -> None:
    payload = await h.solution()
    first = await h.client.post("/v1/chat", headers={"X-Powgate-Solution": payload})
    second = await h.client.post("/v1/chat", headers={"X-Powgate-Solution": payload})
    assert (first.status, second.status) == (200, 428)
    assert len(h.upstream.seen) == 1
    assert h.count("chat", "rejected", "replayed") == 1
    assert h.sample("powgate_replay_cache_entries") == 1


def forge(payload: str, **changes: object) -> str:
    data = json.loads(base64.b64decode(payload))
    data.update(changes)
    return base64.b64encode(json.dumps(data).encode()).decode()


@pytest.mark.parametrize(
    ("mutation", "reason"),
    [
        ({"signature": "0" * 64}, "bad_signature"),
        ({"number": 10**9}, "wrong_number"),
        ({"algorithm": "MD5"}, "unknown_algorithm"),
    ],
)
async def test_tampered_solutions_are_rejected_with_their_reason(
    h: Harness, mutation: dict[str, object], reason: str
) -> None:
    payload = forge(await h.solution(), **mutation)
    response = await h.client.post("/v1/chat", headers={"X-Powgate-Solution": payload})
    assert response.status == 428
    Challenge.from_json(await response.read())  # the same uniform body: a fresh challenge
    assert h.count("chat", "rejected", reason) == 1
    assert h.upstream.seen == []


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("%%% not base64 %%%", "malformed"),
        ("A" * 5000, "oversized"),
        (base64.b64encode(b"[1,2]").decode(), "malformed"),
    ],
)
async def test_garbage_solutions_are_rejected(h: Harness, payload: str, reason: str) -> None:
    response = await h.client.post("/v1/chat", headers={"X-Powgate-Solution": payload})
    assert response.status == 428
    assert h.count("chat", "rejected", reason) == 1
    assert h.upstream.seen == []


async def solved_by(issuer: Issuer, *, difficulty: int, ttl: float, binding: str) -> str:
    challenge = issuer.issue(difficulty=difficulty, ttl=ttl, binding=binding)
    return challenge.solution(solve(challenge).number).encode()


async def test_expired_wrong_binding_insufficient_and_foreign_key_are_rejected(h: Harness) -> None:
    binding = f"{POLICY}:chat"
    past = Issuer(keyring=h.keyring, clock=lambda: time.time() - 3600)
    cases = {
        "expired": await solved_by(past, difficulty=200, ttl=60, binding=binding),
        "wrong_binding": await solved_by(
            Issuer(keyring=h.keyring), difficulty=200, ttl=60, binding=f"{POLICY}:pages"
        ),
        "insufficient": await solved_by(
            Issuer(keyring=h.keyring), difficulty=10, ttl=60, binding=binding
        ),
        "unknown_key": await solved_by(
            Issuer(keyring=KeyRing.generate(kid="other")), difficulty=200, ttl=60, binding=binding
        ),
        "bad_signature": await solved_by(
            Issuer(keyring=KeyRing.generate()), difficulty=200, ttl=60, binding=binding
        ),
    }
    for reason, payload in cases.items():
        response = await h.client.post("/v1/chat", headers={"X-Powgate-Solution": payload})
        assert response.status == 428, reason
        assert h.count("chat", "rejected", reason) == 1, reason
    assert h.upstream.seen == []


async def test_urlencoded_form_field_carries_the_solution_and_the_body_is_forwarded_intact(
    h: Harness,
) -> None:
    payload = await h.solution("/app/login")
    form = {"user": "ada", "altcha": payload}
    response = await h.client.post("/app/login", data=form)
    assert response.status == 200
    [(_, _, _, body)] = h.upstream.seen
    assert body == urlencode(form).encode()
    assert h.count("pages", "admitted", "ok") == 1


async def test_multipart_form_field_carries_the_solution(h: Harness) -> None:
    payload = await h.solution("/app/upload")
    form = aiohttp.FormData()
    form.add_field("file", b"\x00" * 1000, filename="a.bin")
    form.add_field("altcha", payload)
    response = await h.client.post("/app/upload", data=form)
    assert response.status == 200
    [(_, _, headers, body)] = h.upstream.seen
    assert headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert payload.encode() in body
    assert b"\x00" * 1000 in body


async def test_oversized_form_is_not_searched_and_counts_as_oversized(h: Harness) -> None:
    response = await h.client.post(
        "/app/x", data={"pad": "x" * 70_000, "altcha": await h.solution("/app/x")}
    )
    assert response.status == 428
    assert h.count("pages", "rejected", "oversized") == 1
    assert h.upstream.seen == []


async def test_cookie_is_single_use_stripped_upstream_and_cleared(h: Harness) -> None:
    payload = await h.solution("/app", "GET")
    response = await h.client.get(
        "/app", headers={"Cookie": f"theme=dark; powgate_solution={payload}; sid=1"}
    )
    assert response.status == 200
    assert "powgate_solution=; Max-Age=0" in response.headers["Set-Cookie"]
    [(_, _, headers, _)] = h.upstream.seen
    assert headers["Cookie"] == "theme=dark; sid=1"


async def test_browser_navigation_gets_the_static_interstitial_page(h: Harness) -> None:
    html = {"Accept": "text/html,application/xhtml+xml"}
    response = await h.client.get("/app", headers=html)
    assert response.status == 428
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Cache-Control"] == "no-store"
    page = await response.read()
    # The same bytes for every refusal: the page carries no challenge, its
    # script fetches one (and is served, cacheable, like the solver).
    again = await h.client.get("/app/other", headers=html)
    assert await again.read() == page
    assert b"maxnumber" not in page
    assert b"src=/.well-known/powgate/interstitial.js" in page
    script = await h.client.get("/.well-known/powgate/interstitial.js")
    assert script.status == 200
    assert "max-age" in script.headers["Cache-Control"]
    challenge = await h.challenge("/app", "GET")
    assert challenge.maxnumber == 100  # the pages route: 200 x 0.5
    assert h.count("pages", "challenged", "missing") == 2


async def test_challenge_endpoint(h: Harness) -> None:
    response = await h.client.get(
        "/.well-known/powgate/challenge", params={"method": "POST", "path": "/v1/x"}
    )
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert Challenge.from_json(await response.read()).params.binding == f"{POLICY}:chat"
    not_routed = await h.client.get(
        "/.well-known/powgate/challenge", params={"method": "GET", "path": "/v1/x"}
    )
    assert not_routed.status == 404
    no_path = await h.client.get("/.well-known/powgate/challenge")
    assert no_path.status == 400
    wrong_method = await h.client.post("/.well-known/powgate/challenge")
    assert wrong_method.status == 405


async def test_solver_assets_are_served_with_etags(h: Harness) -> None:
    response = await h.client.get("/.well-known/powgate/solver.js")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/javascript")
    etag = response.headers["ETag"]
    cached = await h.client.get("/.well-known/powgate/worker.js")
    assert cached.status == 200
    again = await h.client.get("/.well-known/powgate/solver.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert (await h.client.get("/.well-known/powgate/nothing.js")).status == 404
    # The WebAssembly builds that solver.js loads for Argon2id and scrypt.
    for name in ("argon2.js", "scrypt.js"):
        wasm = await h.client.get(f"/.well-known/powgate/{name}")
        assert wasm.status == 200
        assert b"hashwasm" in await wasm.read()


async def test_exempt_and_unprotected_requests_pass_and_are_counted(h: Harness) -> None:
    assert (await h.client.get("/healthz")).status == 200
    assert (await h.client.post("/healthz")).status == 200
    assert (await h.client.get("/v1/models")).status == 200  # GET is not a paying method of "chat"
    assert (await h.client.get("/other")).status == 200
    assert h.count("none", "exempt", "none") == 2
    assert h.count("none", "unprotected", "none") == 2
    assert len(h.upstream.seen) == 4


async def raw_exchange(h: Harness, request: bytes) -> bytes:
    """Send bytes as they are (no client library normalising them) and read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), timeout=10)
    writer.close()
    return answer


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        # Nothing is added but X-Forwarded-*: no Accept, Accept-Encoding,
        # User-Agent or Content-Type of the client library's own.
        ({}, {}),
        (
            {"Accept": "text/event-stream", "User-Agent": "sdk/1", "Content-Type": "x/y"},
            {"Accept": "text/event-stream", "User-Agent": "sdk/1", "Content-Type": "x/y"},
        ),
        # Hop-by-hop fields, and those the Connection header names, stop here.
        (
            {"Connection": "keep-alive, X-Trace", "X-Trace": "1", "Keep-Alive": "5", "TE": "x"},
            {},
        ),
        ({"Proxy-Authorization": "Basic eA==", "Upgrade": "h2c"}, {}),
        # The solution is ours; other cookies go on.
        ({"Cookie": "a=1; powgate_solution=SOLUTION; b=2"}, {"Cookie": "a=1; b=2"}),
        ({"Cookie": "powgate_solution=SOLUTION"}, {}),
        # What a client claims about itself is overwritten or dropped: its
        # peer is no trusted proxy (see the trusted-proxy test).
        (
            {"X-Forwarded-For": "10.0.0.1", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "a",
             "Forwarded": "for=10.0.0.1;proto=https", "X-Real-IP": "10.0.0.1"},
            {},
        ),
    ],
)  # fmt: skip
async def test_upstream_gets_the_clients_end_to_end_headers_exactly(
    h: Harness, sent: dict[str, str], forwarded: dict[str, str]
) -> None:
    payload = await h.solution()
    carrier = {} if "Cookie" in sent else {"X-Powgate-Solution": payload}
    fields = {**carrier, **sent, "Content-Length": "2"}
    head = "".join(
        f"{name}: {value.replace('SOLUTION', payload)}\r\n" for name, value in fields.items()
    )
    answer = await raw_exchange(
        h, f"POST /v1/chat HTTP/1.1\r\nHost: svc\r\n{head}\r\n{{}}".encode()
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    [(_, _, seen, body)] = h.upstream.seen
    assert body == b"{}"
    expected = {
        "Host": "svc",
        "Content-Length": "2",
        "X-Forwarded-For": "127.0.0.1",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "svc",
        **forwarded,
    }
    assert seen == expected


async def test_non_canonical_paths_are_refused(h: Harness) -> None:
    for path in ("/healthz/../v1/chat", "/x//v1/chat", "/v1/./chat"):
        answer = await raw_exchange(
            h, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
        )
        assert answer.startswith(b"HTTP/1.1 400"), path
    assert h.upstream.seen == []
    assert h.sample("powgate_client_errors_total", {"kind": "bad_path"}) == 3


async def test_observe_mode_forwards_everything_and_counts_the_verdict(h: Harness) -> None:
    h.sidecar.apply_config(make_config(mode=Mode.OBSERVE), source="test")
    assert (await h.client.post("/v1/chat")).status == 200
    assert (await h.client.post("/v1/chat", headers={"X-Powgate-Solution": "junk"})).status == 200
    assert h.count("chat", "observed", "missing") == 1
    assert h.count("chat", "observed", "malformed") == 1


async def test_off_mode_is_a_plain_proxy(h: Harness) -> None:
    h.sidecar.apply_config(make_config(mode=Mode.OFF), source="test")
    assert (await h.client.post("/v1/chat")).status == 200
    assert h.count("chat", "unprotected", "none") == 1
    no_challenge = await h.client.get("/.well-known/powgate/challenge", params={"path": "/v1/chat"})
    assert no_challenge.status == 404


async def test_hot_reload_new_difficulty_applies_and_old_challenges_still_verify(
    h: Harness,
) -> None:
    old = await h.solution()
    assert h.sidecar.apply_config(make_config(difficulty=400, version="v2"), source="test")
    assert (await h.challenge()).maxnumber == 400
    assert (await h.client.post("/v1/chat", headers={"X-Powgate-Solution": old})).status == 200
    assert h.sample("powgate_difficulty", {"route": "chat"}) == 400
    assert h.sample("powgate_config_info", {"policy": POLICY, "version": "v2"}) == 1
    exposition = h.sidecar.metrics.registry.collect()
    info = [s for m in exposition if m.name == "powgate_config_info" for s in m.samples]
    assert len(info) == 1


async def test_invalid_document_keeps_the_last_good_config(h: Harness) -> None:
    before = h.sidecar.config
    assert not h.sidecar.apply_document(b'{"difficulty": -5}', source="file")
    assert not h.sidecar.apply_document(b"not json", source="file")
    assert not h.sidecar.apply_document(None, source="kubernetes")
    # The model knows the registry: an unknown algorithm is an invalid document.
    assert not h.sidecar.apply_document(b'{"algorithm": "ROT13"}', source="file")
    assert h.sidecar.config is before
    assert h.sample("powgate_config_reloads_total", {"source": "file", "result": "invalid"}) == 3
    assert (
        h.sample("powgate_config_reloads_total", {"source": "kubernetes", "result": "missing"}) == 1
    )
    assert (await h.challenge()).maxnumber == 200


async def test_key_rotation_signs_with_the_new_key_and_drops_removed_ones(h: Harness) -> None:
    old = await h.solution()
    h.sidecar.apply_keyring(KeyRing.generate(kid="k9"))
    assert (await h.challenge()).params.kid == "k9"
    assert (await h.client.post("/v1/chat", headers={"X-Powgate-Solution": old})).status == 428
    assert h.count("chat", "rejected", "unknown_key") == 1


async def test_sse_events_arrive_before_the_upstream_finishes(h: Harness) -> None:
    response = await h.client.post(
        "/v1/stream", headers={"X-Powgate-Solution": await h.solution("/v1/stream")}
    )
    assert response.status == 200
    first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), timeout=10)
    assert first == b"data: first\n\n"
    assert not h.upstream.release_stream.is_set()
    h.upstream.release_stream.set()
    assert await response.content.read() == b"data: [DONE]\n\n"


async def test_hop_by_hop_headers_are_not_forwarded(h: Harness) -> None:
    await h.client.get(
        "/other", headers={"Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1", "TE": "x"}
    )
    [(_, _, headers, _)] = h.upstream.seen
    assert "X-Secret-Hop" not in headers
    assert "TE" not in headers


async def test_declared_huge_body_is_refused_before_upstream() -> None:
    async for h in build(limits=Limits(max_body_bytes=1000)):
        payload = await h.solution()
        response = await h.client.post(
            "/v1/chat", data=b"x" * 5000, headers={"X-Powgate-Solution": payload}
        )
        assert response.status == 413
        unsolved = await h.client.post("/v1/chat", data=b"x" * 5000)
        assert unsolved.status == 428
        assert h.upstream.seen == []
        assert h.sample("powgate_client_errors_total", {"kind": "body_too_large"}) == 1


async def test_chunked_huge_body_is_cut_off() -> None:
    async for h in build(limits=Limits(max_body_bytes=1000)):

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b"y" * 500

        response = await h.client.post("/other", data=chunks())
        assert response.status == 413
        assert h.upstream.seen == []


async def test_unreachable_upstream_is_a_502() -> None:
    async for h in build(upstream_url="http://127.0.0.1:9"):
        response = await h.client.get("/other")
        assert response.status == 502
        assert h.sample("powgate_upstream_errors_total", {"kind": "connect"}) == 1


async def test_slow_upstream_is_a_504() -> None:
    async for h in build(limits=Limits(upstream_read_seconds=0.2)):
        h.upstream.slow = 2
        response = await h.client.get("/other")
        assert response.status == 504
        assert h.sample("powgate_upstream_errors_total", {"kind": "timeout"}) == 1


async def test_before_any_config_every_request_is_refused() -> None:
    sidecar = Sidecar(upstream="http://127.0.0.1:9", keyring=KeyRing.generate(), config=None)
    async with serving(sidecar) as (client, _):
        assert (await client.post("/v1/chat")).status == 503
        assert (
            await client.get("/.well-known/powgate/challenge", params={"path": "/"})
        ).status == 503


@pytest.fixture
async def queued() -> AsyncIterator[Harness]:
    config = make_config(queue=QueueConfig(max_concurrent=1, max_waiting=10, max_wait_seconds=30))
    async for harness in build(config=config):
        yield harness


async def test_queue_admits_the_harder_solution_first(queued: Harness) -> None:
    h = queued
    holder = asyncio.create_task(
        h.client.post("/v1/stream", headers={"X-Powgate-Solution": await h.solution("/v1/stream")})
    )
    await h.upstream.arrived.wait()
    order: list[int] = []
    issuer = Issuer(keyring=h.keyring)

    async def send(difficulty: int) -> None:
        payload = await solved_by(issuer, difficulty=difficulty, ttl=60, binding=f"{POLICY}:chat")
        response = await h.client.post("/v1/chat", headers={"X-Powgate-Solution": payload})
        assert response.status == 200
        order.append(difficulty)

    cheap = asyncio.create_task(send(200))
    await eventually_async(lambda: h.sample("powgate_queue_depth") == 1, what="one waiting")
    dear = asyncio.create_task(send(800))
    await eventually_async(lambda: h.sample("powgate_queue_depth") == 2, what="two waiting")
    h.upstream.release_stream.set()
    await asyncio.gather(cheap, dear)
    await (await holder).read()
    assert order == [800, 200]


async def test_the_pool_keeps_a_connection_opened_ahead_for_the_next_request(
    h: Harness,
) -> None:
    pool = h.sidecar._forwarder.pool
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    try:
        writer.write(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        seen = b""
        while b"data: first" not in seen:
            seen += await reader.read(65536)
        # The stream holds one connection; another waits, opened ahead.
        await eventually_async(lambda: len(pool._idle) == 1, what="a connection opened ahead")
        spare = pool._idle[0]
        # The client leaves mid-answer (a reset, as a closed tab's socket):
        # its upstream connection cannot carry another request.
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        await eventually_async(lambda: pool.lent == 0, what="the stream's connection given up")
        assert pool._idle == [spare]
        solution = await h.solution()
        response = await h.client.post("/v1/chat", headers={"X-Powgate-Solution": solution})
        assert response.status == 200
        # The next request went out on the spare and gave it back, beside the one
        # opened ahead when it was taken.
        await eventually_async(lambda: len(pool._idle) == 2, what="another opened ahead")
        assert spare in pool._idle
    finally:
        h.upstream.release_stream.set()


async def test_a_connection_opened_ahead_stays_within_the_pools_bound() -> None:
    """A request given a connection of its own while the spare was connecting
    took the pool's last place: the spare is closed, not kept as one too many."""
    gates: list[asyncio.Future[None]] = []
    opened: list[_Conn] = []

    async def opener(pool: UpstreamPool) -> Any:
        gate = asyncio.get_running_loop().create_future()
        gates.append(gate)
        await gate
        opened.append(_Conn())
        return opened[-1]

    pool = UpstreamPool("http://127.0.0.1:9", limits=Limits(upstream_connections=1), opener=opener)
    pool.replenish()  # a connection given up, say: the spare starts connecting
    await asyncio.sleep(0)
    request = _Borrower()
    pool.acquire(request)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert len(gates) == 2  # the request did not wait for the spare
    gates[1].set_result(None)
    await eventually_async(lambda: request.conn is not None, what="the request connected")
    gates[0].set_result(None)
    await eventually_async(lambda: len(opened) == 2, what="the spare connected")
    await asyncio.sleep(0)
    assert pool.lent == 1
    assert pool._idle == []
    assert [conn.closed for conn in opened] == [False, True]


@dataclass
class _Conn:
    """An upstream connection as the pool sees one."""

    closed: bool = False

    def close(self) -> None:
        self.closed = True


@dataclass
class _Borrower:
    """A request asking the pool for a connection (what ``Forward`` is to it)."""

    paid: bool = True
    lent: bool = False
    gone: bool = False
    waiting: Any = None
    conn: Any = None

    def connected(self, conn: Any, *, reused: bool) -> None:
        self.conn = conn

    def connect_failed(self, kind: str, *, cause: str) -> None:
        raise AssertionError(f"{kind}: {cause}")


async def test_full_queue_answers_503_with_a_fresh_challenge() -> None:
    config = make_config(queue=QueueConfig(max_concurrent=1, max_waiting=0, max_wait_seconds=30))
    async for h in build(config=config):
        holder = asyncio.create_task(
            h.client.post(
                "/v1/stream", headers={"X-Powgate-Solution": await h.solution("/v1/stream")}
            )
        )
        await h.upstream.arrived.wait()
        response = await h.client.post(
            "/v1/chat", headers={"X-Powgate-Solution": await h.solution()}
        )
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        Challenge.from_json(await response.read())
        assert h.sample("powgate_queue_dropped_total", {"route": "chat", "cause": "full"}) == 1
        h.upstream.release_stream.set()
        await (await holder).read()


def test_forwarding_on_uvloop() -> None:
    """The sidecar runs on uvloop, whose transports are not asyncio's classes."""

    async def scenario() -> None:
        async for h in build(limits=Limits(max_body_bytes=10_000)):
            payload = await h.solution()
            response = await h.client.post(
                "/v1/chat", data=b"x" * 5000, headers={"X-Powgate-Solution": payload}
            )
            assert await response.json() == {"ok": True, "bytes": 5000}

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(30):
                    yield b"y" * 500

            assert (await h.client.post("/other", data=chunks())).status == 413
            stream = await h.client.post(
                "/v1/stream", headers={"X-Powgate-Solution": await h.solution("/v1/stream")}
            )
            assert await stream.content.readuntil(b"\n\n") == b"data: first\n\n"
            h.upstream.release_stream.set()
            assert await stream.content.read() == b"data: [DONE]\n\n"
            assert [path for _, path, _, _ in h.upstream.seen] == ["/v1/chat", "/v1/stream"]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


# -- ALTCHA PoW v2 and DeepSeek's format -------------------------------------------

#: A cheap try, so that tests derive in microseconds.
SMALL_ARGON2ID = {"cost": 1, "memoryCost": 64, "parallelism": 1}


async def _v2_payload(h: Harness, *, wrong: bool = False) -> str:
    response = await h.client.get(
        "/.well-known/powgate/challenge", params={"method": "POST", "path": "/v1/chat"}
    )
    challenge = parse_challenge(await response.read())
    assert isinstance(challenge, ChallengeV2)
    found = solve_v2(challenge)
    counter = found.counter + 1 if wrong else found.counter
    return challenge.solution(counter, found.derived_key).encode()


@pytest.fixture
async def v2() -> AsyncIterator[Harness]:
    config = make_config(algorithm="ARGON2ID", kdf=SMALL_ARGON2ID, difficulty=64, min_difficulty=8)
    limits = Limits(derivation_threads=1, derivations_pending=1)
    async for harness in build(config=config, limits=limits):
        yield harness


async def test_v2_challenges_carry_the_policys_parameters_and_are_admitted_once(
    v2: Harness,
) -> None:
    refused = await v2.client.post("/v1/chat", json={"q": 1})
    assert refused.status == 428
    challenge = parse_challenge(await refused.read())
    assert isinstance(challenge, ChallengeV2)
    assert challenge.algorithm == "ARGON2ID"
    assert challenge.difficulty == 64
    payload = await _v2_payload(v2)
    ok = await v2.client.post("/v1/chat", json={"q": 1}, headers={"X-Powgate-Solution": payload})
    assert ok.status == 200
    again = await v2.client.post("/v1/chat", headers={"X-Powgate-Solution": payload})
    assert again.status == 428
    assert v2.count("chat", "admitted", "ok") == 1
    assert v2.count("chat", "rejected", "replayed") == 1
    assert len(v2.upstream.seen) == 1
    assert v2.sample("powgate_derivations_pending") == 0


async def test_v2_wrong_key_is_spent_then_refused(v2: Harness) -> None:
    wrong = await _v2_payload(v2, wrong=True)
    response = await v2.client.post("/v1/chat", headers={"X-Powgate-Solution": wrong})
    assert response.status == 428
    assert v2.count("chat", "rejected", "wrong_number") == 1
    assert v2.upstream.seen == []


async def test_v2_full_derivation_pool_refuses_without_spending(v2: Harness) -> None:
    payload = await _v2_payload(v2)
    held = v2.sidecar._pool.reserve()
    assert held is not None
    busy = await v2.client.post("/v1/chat", headers={"X-Powgate-Solution": payload})
    assert busy.status == 503
    assert busy.headers["Retry-After"] == "1"
    assert v2.count("chat", "rejected", "verifier_busy") == 1
    held.close()
    # Not spent: the same solution goes through once the pool has room.
    ok = await v2.client.post("/v1/chat", headers={"X-Powgate-Solution": payload})
    assert ok.status == 200


async def test_deepseek_answers_in_their_header_are_admitted() -> None:
    config = make_config(algorithm="DeepSeekHashV1", difficulty=2000)
    async for h in build(config=config):
        refused = await h.client.post("/v1/chat", json={"q": 1})
        challenge = parse_challenge(await refused.read())
        assert isinstance(challenge, DeepSeekChallenge)
        solved = solve_challenge(challenge)
        assert solved.header == "x-ds-pow-response"
        ok = await h.client.post("/v1/chat", headers={solved.header: solved.payload})
        assert ok.status == 200
        assert h.count("chat", "admitted", "ok") == 1


async def test_at_the_replay_bound_valid_solutions_are_refused_never_admitted_twice() -> None:
    """The config sizes the cache; at its bound the sidecar fails closed, and says so."""
    bound = 1000
    async for h in build(config=make_config(replay_cache_entries=bound)):
        assert h.sample("powgate_replay_cache_capacity") == bound
        first = await h.solution()
        assert (
            await h.client.post("/v1/chat", headers={"X-Powgate-Solution": first})
        ).status == 200
        for _ in range(bound - 1):
            payload = await h.solution()
            response = await h.client.post("/v1/chat", headers={"X-Powgate-Solution": payload})
            assert response.status == 200
        fresh = await h.solution()
        refused = await h.client.post("/v1/chat", headers={"X-Powgate-Solution": fresh})
        assert refused.status != 200
        assert h.count("chat", "rejected", "replay_cache_full") == 1
        # A replay is still a replay, not a second admission.
        again = await h.client.post("/v1/chat", headers={"X-Powgate-Solution": first})
        assert again.status != 200
        assert h.count("chat", "admitted", "ok") == bound


async def test_deepseek_clients_fetch_from_deepseeks_endpoint_and_pay_in_their_header() -> None:
    """A DeepSeek client unchanged: create_pow_challenge, then x-ds-pow-response.

    ``deepseekpowsolver`` (PyPI; DeepSeek's own WebAssembly, run by Node)
    solves and encodes the answer; only its solve and encode methods are
    called, never those that talk to DeepSeek's servers.
    """
    if shutil.which("node") is None:
        pytest.skip("needs Node.js (make system-deps)")
    config = make_config(algorithm="DeepSeekHashV1", difficulty=20_000)
    async for h in build(config=config):
        ask = {"target_path": "/v1/chat"}
        response = await h.client.post(DEEPSEEK_CHALLENGE_PATH, json=ask)
        assert response.status == 200
        envelope = await response.json()
        assert envelope["code"] == 0
        issued = envelope["data"]["biz_data"]["challenge"]
        assert issued["target_path"] == "/v1/chat"
        challenge = parse_challenge(envelope)
        assert isinstance(challenge, DeepSeekChallenge)
        while _deepseek_hash.hash_v1(f"{challenge.prefix}0".encode()).hex() == challenge.challenge:
            # That solver reports answer 0 as "not found": fetch another.
            response = await h.client.post(
                DEEPSEEK_CHALLENGE_PATH, json={"target_path": "/v1/chat"}
            )
            issued = (await response.json())["data"]["biz_data"]["challenge"]
            challenge = parse_challenge(issued)
            assert isinstance(challenge, DeepSeekChallenge)
        solver = DeepSeekPowSolver(token="unused")
        answer = await asyncio.to_thread(solver.SleviS, issued)
        header = solver.create_Fis(issued, answer)
        ok = await h.client.post("/v1/chat", json={"q": 1}, headers={"x-ds-pow-response": header})
        assert ok.status == 200
        again = await h.client.post("/v1/chat", headers={"x-ds-pow-response": header})
        assert again.status == 428
        assert h.count("chat", "admitted", "ok") == 1
        assert h.count("chat", "rejected", "replayed") == 1


@pytest.mark.parametrize(
    ("method", "body", "status"),
    [
        ("GET", None, 405),
        ("POST", b"not json", 400),
        ("POST", b'{"target_path": "relative"}', 400),
        ("POST", b'{"target_path": "/not/protected"}', 404),
        ("POST", b"x" * 5000, 413),
    ],
)
async def test_deepseeks_endpoint_refuses_what_is_not_a_challenge_request(
    method: str, body: bytes | None, status: int
) -> None:
    config = make_config(algorithm="DeepSeekHashV1", difficulty=2000)
    async for h in build(config=config):
        response = await h.client.request(method, DEEPSEEK_CHALLENGE_PATH, data=body)
        assert response.status == status
        assert h.upstream.seen == []


async def test_deepseeks_path_is_the_upstreams_under_other_schemes(h: Harness) -> None:
    response = await h.client.post(DEEPSEEK_CHALLENGE_PATH, json={"target_path": "/v1/chat"})
    assert response.status == 200
    assert [path for _, path, _, _ in h.upstream.seen] == [DEEPSEEK_CHALLENGE_PATH]


async def test_a_newer_operators_document_is_applied_and_its_unknown_fields_counted(
    h: Harness,
) -> None:
    document = json.loads(make_config(difficulty=300, version="v9").to_json())
    document["clientBudgets"] = {"perMinute": 5}
    document["routes"][0]["burst"] = 2
    assert h.sidecar.apply_document(json.dumps(document), source="kubernetes")
    assert (await h.challenge()).maxnumber == 300
    assert h.sample("powgate_config_fields_ignored_total", {"source": "kubernetes"}) == 2
    newer = {**document, "contract": CONFIG_CONTRACT + 1, "difficulty": 999}
    assert not h.sidecar.apply_document(json.dumps(newer), source="kubernetes")
    assert (await h.challenge()).maxnumber == 300


async def test_a_long_pipeline_is_answered_in_order(h: Harness) -> None:
    # Far more than one read: the connection is parsed a slice per turn and
    # each slice's answers leave in one write, in the order asked.
    junk = b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}" * 3000
    last = b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    writer.write(junk + last)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=60)
    writer.close()
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses == [b"428"] * 3000 + [b"200"]
    assert [path for _, path, _, _ in h.upstream.seen] == ["/other"]
    assert h.count("chat", "challenged", "missing") == 3000


class _Recorded(ClientTransport):
    """A client transport that notes which connection wrote what, in order."""

    def __init__(self, name: str, writes: list[tuple[str, bytes]]) -> None:
        super().__init__()
        self.name = name
        self.writes = writes

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append((self.name, bytes(data)))


class _Events(_Recorded):
    """A recorded client transport that notes its end (close or half-close) among the writes."""

    def close(self) -> None:
        self.closing = True
        self.writes.append((self.name, b"<end>"))

    def write_eof(self) -> None:
        self.writes.append((self.name, b"<end>"))


_REFUSED = b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


def _each_sends(
    listener: _connection.Listener,
    data: bytes,
    *,
    names: tuple[str, ...],
    writes: list[tuple[str, bytes]],
) -> list[_connection.ClientConnection]:
    """A connection per name, each reading ``data`` in this turn; their writes noted in order."""
    conns = []
    for name in names:
        conn = listener()
        conn.connection_made(_Recorded(name, writes))
        conn.data_received(data)
        conns.append(conn)
    return conns


async def test_answers_read_in_one_turn_leave_together_at_its_end(h: Harness) -> None:
    listener = h.sidecar.listener()
    writes: list[tuple[str, bytes]] = []
    conns = _each_sends(listener, _REFUSED, names=("a", "b", "c"), writes=writes)
    assert writes == []  # nothing leaves while the turn's reads are handled
    await asyncio.sleep(0)
    assert [name for name, _ in writes] == ["a", "b", "c"]  # one write each, in turn
    assert all(data.startswith(b"HTTP/1.1 428 ") for _, data in writes)
    for conn in conns:
        conn.connection_lost(None)


async def test_held_answers_leave_before_the_close_and_in_order(h: Harness) -> None:
    # A request answered, then a smuggling attempt in the same read: the answer,
    # the 400, then the close, in that order.
    listener = h.sidecar.listener()
    writes: list[tuple[str, bytes]] = []
    conn = listener()
    conn.connection_made(_Events("a", writes))
    smuggled = (
        b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    )
    conn.data_received(_REFUSED + smuggled)
    for _ in range(4):
        await asyncio.sleep(0)
    sent = b"".join(data for _, data in writes)
    assert sent.startswith(b"HTTP/1.1 428 ")
    assert sent.index(b"HTTP/1.1 428 ") < sent.index(b"HTTP/1.1 400 ") < sent.index(b"<end>")
    assert h.upstream.seen == []
    conn.connection_lost(None)


async def test_a_client_gone_with_answers_held_gets_nothing_and_others_are_answered(
    h: Harness,
) -> None:
    listener = h.sidecar.listener()
    writes: list[tuple[str, bytes]] = []
    gone, stays = listener(), listener()
    gone.connection_made(_Recorded("gone", writes))
    stays.connection_made(_Recorded("stays", writes))
    gone.data_received(_REFUSED)
    stays.data_received(_REFUSED)
    gone.connection_lost(None)  # before the turn ends
    await asyncio.sleep(0)
    assert [name for name, _ in writes] == ["stays"]
    stays.connection_lost(None)


async def test_backlogs_share_one_budget_a_turn_and_a_single_request_goes_first(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A budget of nothing: one slice a turn, whatever the number of flooding
    # connections, so a turn stays short however many pipeline at once.
    monkeypatch.setattr(_connection, "TURN_BUDGET", 0.0)
    listener = h.sidecar.listener()
    writes: list[tuple[str, bytes]] = []
    flooders = _each_sends(listener, _REFUSED * 20, names=("a", "b", "c"), writes=writes)
    assert writes == []  # several requests in one read wait for the loop's next turn
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # a turn's answers leave at its end (the outbox)
    assert [name for name, _ in writes] == ["a"]  # one slice, not one per connection
    single = listener()
    single.connection_made(_Recorded("single", writes))
    single.data_received(b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    await asyncio.sleep(0)
    # A read of one request: answered at the end of its own turn, before the next slices.
    assert [name for name, _ in writes] == ["a", "b", "single"]
    for _ in range(200):
        if not any(conn.backlog for conn in flooders):
            break
        await asyncio.sleep(0)
    await asyncio.sleep(0)  # the last slice's answers leave at the end of its turn
    order = [name for name, _ in writes if name != "single"]
    assert order[:6] == ["a", "b", "c", "a", "b", "c"]  # round-robin
    for name in ("a", "b", "c"):
        answered = b"".join(data for each, data in writes if each == name)
        assert answered.count(b"HTTP/1.1 428 ") == 20
    assert h.upstream.seen == []
    for conn in [*flooders, single]:
        conn.connection_lost(None)


async def test_after_a_raise_and_its_grace_easier_challenges_are_refused() -> None:
    """No stockpiling: challenges fetched while difficulty was low stop paying after a raise."""
    now = int(time.time())

    def stockpiled(h: Harness) -> str:
        # Fetched (signed by this sidecar's key) while difficulty was 100, solved later.
        cheap = Issuer(keyring=h.keyring).issue(difficulty=100, ttl=300, binding=f"{POLICY}:chat")
        assert isinstance(cheap, Challenge)
        return cheap.solution(solve(cheap).number).encode()

    within = make_config(difficulty=400, raised_at=now - 10, raise_grace_seconds=60)
    async for h in build(config=within):
        response = await h.client.post("/v1/chat", headers={"X-Powgate-Solution": stockpiled(h)})
        assert response.status == 200  # in flight when difficulty rose: still good
    after = make_config(difficulty=400, raised_at=now - 120, raise_grace_seconds=60)
    async for h in build(config=after):
        response = await h.client.post("/v1/chat", headers={"X-Powgate-Solution": stockpiled(h)})
        assert response.status != 200
        assert h.count("chat", "rejected", "insufficient") == 1
        # Today's challenges still pay.
        fresh = await h.solution()
        assert (
            await h.client.post("/v1/chat", headers={"X-Powgate-Solution": fresh})
        ).status == 200


async def test_the_key_ids_held_are_exported_for_the_operator() -> None:
    """``powgate_key_info``: what the operator waits for before it switches or retires a key."""

    def held(h: Harness) -> dict[str, str]:
        families = {m.name: m for m in h.sidecar.metrics.registry.collect()}
        return {
            s.labels["kid"]: s.labels["active"]
            for s in families["powgate_key_info"].samples
            if s.labels["policy"] == POLICY and s.value == 1
        }

    async for h in build():
        assert held(h) == {h.keyring.active: "true"}
        published = h.keyring.with_key(HmacKey("k2", new_secret()))
        h.sidecar.apply_keyring(published)
        assert held(h) == {h.keyring.active: "true", "k2": "false"}
        h.sidecar.apply_keyring(published.activated("k2", retire_previous_at=None))
        assert held(h) == {h.keyring.active: "false", "k2": "true"}


# -- overload ------------------------------------------------------------------


class _Peer(_Recorded):
    """A recorded client transport from ``peer``, noting when it is closed."""

    def __init__(self, name: str, writes: list[tuple[str, bytes]], *, peer: str) -> None:
        super().__init__(name, writes)
        self.peer = peer

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self.peer, 40000) if name == "peername" else default

    def close(self) -> None:
        self.closing = True


async def test_one_address_past_its_connection_cap_is_answered_503_and_others_are_served() -> None:
    overload = OverloadConfig(max_connections_per_client=3, lag_threshold_milliseconds=0)
    async for h in build(config=make_config(overload=overload), trusted_proxies=("10.9.0.0/16",)):
        listener = h.sidecar.listener()
        writes: list[tuple[str, bytes]] = []
        flood = []
        for index in range(1000):
            transport = _Peer(f"flood{index}", writes, peer="10.0.0.1")
            conn = listener()
            conn.connection_made(transport)
            flood.append((conn, transport))
        held = [conn for conn, transport in flood if not transport.closing]
        assert len(held) == 3
        refused = [data for name, data in writes if name.startswith("flood")]
        assert len(refused) == 997
        assert all(data.startswith(b"HTTP/1.1 503 ") for data in refused)
        assert all(b"Retry-After: 1\r\n" in data for data in refused)
        sample = h.sidecar.metrics.registry.get_sample_value
        assert sample("powgate_connections_refused_total", {"reason": "client_connections"}) == 997
        # Another client, a proxy the policy trusts (it carries many clients), and the
        # same IPv6 /64 under any address: each counted on its own.
        other = listener()
        other.connection_made(_Peer("other", writes, peer="10.0.0.2"))
        other.data_received(b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        await asyncio.sleep(0)  # answered at the end of the turn
        assert writes[-1][0] == "other"
        assert writes[-1][1].startswith(b"HTTP/1.1 428 ")
        proxies = [_Peer(f"proxy{i}", writes, peer="10.9.0.7") for i in range(10)]
        for transport in proxies:
            listener().connection_made(transport)
        assert not any(transport.closing for transport in proxies)
        v6 = [_Peer(f"v6-{i}", writes, peer=f"2001:db8:1:2::{i + 1:x}") for i in range(4)]
        for transport in v6:
            listener().connection_made(transport)
        assert [transport.closing for transport in v6] == [False, False, False, True]
        # A connection of the first client that ends makes room for one more.
        held[0].connection_lost(None)
        again = _Peer("again", writes, peer="10.0.0.1")
        listener().connection_made(again)
        assert not again.closing
        assert sample("powgate_clients_connected") == 3  # 10.0.0.1, 10.0.0.2, the /64


async def test_thousands_of_connections_from_one_address_leave_room_for_a_paid_request() -> None:
    allow_open_files(2 * 1500 + 512)  # both ends of each connection are in this process
    overload = OverloadConfig(max_connections_per_client=50)
    async for h in build(config=make_config(overload=overload)):
        payload = await h.solution()
        loop = asyncio.get_running_loop()
        flood: list[socket.socket] = []
        try:
            for _ in range(1500):
                sock = socket.socket()
                sock.setblocking(False)
                await loop.sock_connect(sock, ("127.0.0.1", h.port))
                flood.append(sock)
            counts = h.sidecar.overload
            await eventually_async(
                lambda counts=counts: counts.refused_connections == 1450,
                what="the flood's excess refused",
            )
            labels = {"reason": "client_connections"}
            registry = h.sidecar.metrics.registry
            assert registry.get_sample_value("powgate_connections_refused_total", labels) == 1450
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", h.port, local_addr=("127.0.0.2", 0)
            )
            writer.write(
                b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                b"X-Powgate-Solution: " + payload.encode() + b"\r\n\r\n{}"
            )
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert h.count("chat", "admitted", "ok") == 1
        finally:
            for sock in flood:
                sock.close()


async def test_while_the_loop_lags_refusals_wait_their_turn_and_a_paid_request_goes_first(
    h: Harness,
) -> None:
    overload = h.sidecar.overload
    listener = h.sidecar.listener()
    writes: list[tuple[str, bytes]] = []
    junk = b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    payload = await h.solution()
    overload.lagging = True
    flood = []
    for index in range(20):
        conn = listener()
        conn.connection_made(_Peer(f"junk{index}", writes, peer=f"10.0.1.{index}"))
        conn.data_received(junk)
        flood.append(conn)
    paid = listener()
    paid.connection_made(_Peer("paid", writes, peer="10.0.2.1"))
    paid.data_received(
        b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"X-Powgate-Solution: " + payload.encode() + b"\r\n\r\n{}"
    )
    # Nothing refused yet, and the paid request judged, admitted and on its way.
    assert writes == []
    assert h.count("chat", "challenged", "missing") == 0
    assert h.count("chat", "admitted", "ok") == 1
    sample = h.sidecar.metrics.registry.get_sample_value
    assert sample("powgate_requests_deferred_total") == 20
    await eventually_async(
        lambda: h.count("chat", "challenged", "missing") == 20, what="the refusals, later"
    )
    refusals = [data for name, data in writes if name.startswith("junk")]
    assert len(refusals) == 20
    assert all(data.startswith(b"HTTP/1.1 428 ") for data in refusals)
    # Each with a challenge of its own, as ever.
    assert len({data.partition(b"\r\n\r\n")[2] for data in refusals}) == 20
    await eventually_async(lambda: any(name == "paid" for name, _ in writes), what="paid answer")
    assert next(data for name, data in writes if name == "paid").startswith(b"HTTP/1.1 200 ")
    for conn in [*flood, paid]:
        conn.connection_lost(None)


async def test_deferring_starts_when_the_loop_runs_late_and_ends_once_it_is_on_time(
    h: Harness,
) -> None:
    overload = h.sidecar.overload
    assert overload.lag_seconds == 0.01  # the default
    overload.watch(asyncio.get_running_loop())
    await asyncio.sleep(0.02)
    # On time before the hold-up. On a busy machine a tick may be late by itself, and
    # that is lag too: then it is on time again once a hold passes without a late tick.
    await eventually_async(lambda: not overload.lagging, what="on time before the hold-up")
    time.sleep(0.05)  # noqa: ASYNC251 - the loop held up for 50 ms, as a flood's turn would
    await eventually_async(lambda: overload.lagging, what="lag noticed")
    await asyncio.sleep(0.1)
    assert overload.lagging  # held a while: deferring shortens the turns that were late
    await eventually_async(lambda: not overload.lagging, what="on time again")
    overload.stop()
