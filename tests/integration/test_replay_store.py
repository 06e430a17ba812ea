"""A solution buys one request cluster-wide: the shared replay store on a real Redis server.

The attacks first: one payload presented to three sidecar processes, to the
two workers of one sidecar, and again after a restart is admitted exactly
once (and, without the store, once per process: what the store is for).
Then the store misbehaving: down (refused with a counted reason, or
admitted once per sidecar in fallback mode), frozen (answers within the
bound, nothing waits for it), wrong credentials or permissions, garbage on
the wire, TLS. In-process sidecars share the test's event loop; each has its
own replay cache, as separate processes do.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from _sidecar_process import SidecarEndpoints, ready, start_sidecar
from aiohttp import web
from aiohttp.test_utils import TestServer

from powgate import CHALLENGE_PATH, Challenge, KeyRing, solve
from powgate.config import (
    REPLAY_STORE_CONTRACT,
    ReplayStoreSpec,
    RouteConfig,
    SidecarConfig,
    StoreOutage,
)
from powgate_sidecar import Sidecar
from powgate_testbed._process import ManagedProcess, stop_all
from powgate_testbed.store_server import StoreServer
from waiting import eventually, eventually_async

POLICY = "team/chat"
HEADER = "X-Powgate-Solution"


# Tests of a store that answers get 2 s (the chart's default is shorter): on busy
# shared cores a TLS handshake or a pipeline can take longer than a few hundred ms,
# and a 503 there would test the machine, not the sidecar. Tests of a store that
# does not answer pass their own, short bound.
def store_config(
    store: StoreServer | None,
    *,
    when_unavailable: StoreOutage = StoreOutage.REFUSE,
    timeout_ms: int = 2000,
    tls: bool = False,
) -> SidecarConfig:
    spec = None
    if store is not None:
        spec = ReplayStoreSpec(
            address=store.address,
            tls=tls,
            timeout_milliseconds=timeout_ms,
            when_unavailable=when_unavailable,
        )
    return SidecarConfig(
        contract=REPLAY_STORE_CONTRACT if spec is not None else 1,
        policy=POLICY,
        difficulty=500,
        min_difficulty=1,
        routes=[RouteConfig(name="chat", paths=["/v1/*"])],
        replay_store=spec,
    )


def solved(challenge_document: bytes) -> str:
    challenge = Challenge.from_json(challenge_document)
    return challenge.solution(solve(challenge).number).encode()


# -- in-process sidecars ---------------------------------------------------------


@dataclass
class Fleet:
    """Sidecars of one policy (one key ring), each on its own port, before one upstream."""

    sidecars: list[Sidecar]
    clients: list[aiohttp.ClientSession]

    async def payload(self) -> str:
        response = await self.clients[0].get(CHALLENGE_PATH, params={"path": "/v1/chat"})
        return solved(await response.read())

    async def post(self, index: int, payload: str) -> int:
        response = await self.clients[index].post("/v1/chat", headers={HEADER: payload})
        await response.read()
        return response.status

    async def store_answers(self) -> None:
        """Every sidecar has seen the store answer its probe: the first claim then finds
        a connection made (on busy cores a TLS handshake alone can outlast the timeout).

        Not ``up`` alone: a sidecar starts up (optimistic) before its first probe has
        answered, so that returned at once and the first claim raced the probe's connect.
        """
        for sidecar in self.sidecars:
            shared = sidecar._shared
            assert shared is not None
            await eventually_async(
                lambda shared=shared: shared.up and shared._last_answer > -math.inf,
                what="the store answering",
            )

    def sample(self, index: int, name: str, labels: dict[str, str] | None = None) -> float:
        registry = self.sidecars[index].metrics.registry
        return registry.get_sample_value(name, labels or {}) or 0.0

    def count(self, index: int, outcome: str, reason: str) -> float:
        labels = {"route": "chat", "outcome": outcome, "reason": reason}
        return self.sample(index, "powgate_requests_total", labels)


@contextlib.asynccontextmanager
async def fleet(
    config: SidecarConfig,
    *,
    size: int = 1,
    credentials: Path | None = None,
    trusted_proxies: tuple[str, ...] = (),
) -> AsyncIterator[Fleet]:
    """``size`` sidecars of one policy; ``trusted_proxies`` lets tests name clients."""
    upstream = TestServer(web.Application())
    upstream.app.router.add_route("*", "/{tail:.*}", _ok)
    await upstream.start_server()
    keyring = KeyRing.generate()
    sidecars, clients, servers = [], [], []
    try:
        for _ in range(size):
            sidecar = Sidecar(
                upstream=str(upstream.make_url("/")),
                keyring=keyring,
                config=config,
                replay_store_credentials=credentials,
                trusted_proxies=trusted_proxies,
            )
            await sidecar.start()
            server = await asyncio.get_running_loop().create_server(
                sidecar.listener(), "127.0.0.1", 0
            )
            port = server.sockets[0].getsockname()[1]
            sidecars.append(sidecar)
            servers.append(server)
            clients.append(aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}"))
        yield Fleet(sidecars, clients)
    finally:
        for client in clients:
            await client.close()
        for server in servers:
            server.close()
        for sidecar in sidecars:
            await sidecar.close()
        await upstream.close()


async def _ok(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"ok": True})


async def test_one_payload_at_three_sidecars_of_a_policy_is_admitted_once(
    store: StoreServer,
) -> None:
    async with fleet(store_config(store), size=3) as f:
        await f.store_answers()
        payload = await f.payload()
        statuses = [await f.post(i, payload) for i in range(3)]
        assert sorted(statuses) == [200, 428, 428]
        assert statuses[0] == 200
        assert f.count(1, "rejected", "replayed") == f.count(2, "rejected", "replayed") == 1
        assert f.sample(1, "powgate_replay_store_claims_total", {"result": "seen"}) == 1
        # Concurrent presentations race in the store: still one winner.
        payload = await f.payload()
        statuses = await asyncio.gather(*(f.post(i % 3, payload) for i in range(9)))
        assert sorted(statuses) == [200] + [428] * 8
        # The key lives in the store, under the policy's prefix, until the challenge expires.
        keys = store.client().keys(b"powgate:replay:team/chat:*")
        assert len(keys) == 2
        ttl = store.client().pttl(keys[0])
        assert 0 < ttl <= (300 + 30) * 1000


async def test_without_a_store_each_sidecar_admits_the_payload_once() -> None:
    """The weakness the store closes: single use per process only."""
    async with fleet(store_config(None), size=3) as f:
        payload = await f.payload()
        assert [await f.post(i, payload) for i in range(3)] == [200, 200, 200]


async def test_store_down_refuse_mode_refuses_valid_solutions_and_spends_nothing(
    store: StoreServer,
) -> None:
    async with fleet(store_config(store), size=1) as f:
        store.stop()
        payload = await f.payload()
        response = await f.clients[0].post("/v1/chat", headers={HEADER: payload})
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        Challenge.from_json(await response.read())  # a fresh challenge, as for every refusal
        assert f.count(0, "rejected", "replay_store_unavailable") == 1
        assert f.sample(0, "powgate_replay_store_unavailable_total", {"action": "refused"}) == 1
        assert f.sample(0, "powgate_replay_store_errors_total", {"kind": "unreachable"}) >= 1
        assert (
            f.sample(0, "powgate_replay_store_up", {"policy": POLICY, "when_unavailable": "Refuse"})
            == 0
        )
        # Again while down: refused, without waiting for the store each time.
        assert await f.post(0, payload) == 503
        assert f.count(0, "admitted", "ok") == 0
        store.start()
        # Back: the solution was never spent, so it pays now, once.
        await eventually_async(lambda: f.sidecars[0]._shared.up, what="the store seen back")  # type: ignore[union-attr]
        assert await f.post(0, payload) == 200
        assert await f.post(0, payload) == 428
        assert (
            f.sample(0, "powgate_replay_store_up", {"policy": POLICY, "when_unavailable": "Refuse"})
            == 1
        )


async def test_store_down_fallback_mode_admits_once_per_sidecar_and_counts_it(
    store: StoreServer,
) -> None:
    config = store_config(store, when_unavailable=StoreOutage.FALL_BACK_TO_LOCAL)
    async with fleet(config, size=2) as f:
        store.stop()
        payload = await f.payload()
        assert [await f.post(i, payload) for i in (0, 1, 0, 1)] == [200, 200, 428, 428]
        for index in (0, 1):
            assert f.count(index, "admitted", "ok") == 1
            assert f.count(index, "rejected", "replayed") == 1
            labels = {"action": "fallback"}
            assert f.sample(index, "powgate_replay_store_unavailable_total", labels) == 1


async def test_a_frozen_store_costs_a_request_the_timeout_at_most(store: StoreServer) -> None:
    """SIGSTOP: the kernel accepts, nothing answers. Requests answer; later ones do not wait."""
    async with fleet(store_config(store, timeout_ms=150), size=1) as f:
        first = await f.payload()
        later = [await f.payload() for _ in range(5)]
        # Which claims go to the (real) store: the health probe may time out too while
        # the store is frozen (it runs on its own clock), so the error count alone
        # cannot tell the claims that waited.
        shared = f.sidecars[0]._shared
        assert shared is not None
        real_set_once = shared.store.set_once
        sent: list[bytes] = []

        async def counted_set_once(key: bytes, *, ttl_ms: int) -> bool:
            sent.append(key)
            return await real_set_once(key, ttl_ms=ttl_ms)

        shared.store.set_once = counted_set_once  # type: ignore[method-assign]
        store.pause()
        try:
            # The client would wait 30 s: the sidecar answers long before, by its own bound.
            timeout = aiohttp.ClientTimeout(total=30)
            response = await f.clients[0].post("/v1/chat", headers={HEADER: first}, timeout=timeout)
            assert response.status == 503
            assert len(sent) == 1
            assert f.sample(0, "powgate_replay_store_errors_total", {"kind": "timeout"}) >= 1
            # Down now: five at once, and at most one of them (a trial) waits for the store.
            statuses = await asyncio.gather(*(f.post(0, payload) for payload in later))
            assert statuses == [503] * 5
            assert len(sent) <= 2
            assert f.count(0, "rejected", "replay_store_unavailable") == 6
        finally:
            store.resume()
        await eventually_async(lambda: f.sidecars[0]._shared.up, what="the store seen back")  # type: ignore[union-attr]
        # The frozen server read the timed-out SET when it resumed: that solution may be
        # spent (refused as replayed), never admitted twice. A fresh one pays.
        assert sorted([await f.post(0, first), await f.post(0, first)])[1] == 428
        assert await f.post(0, await f.payload()) == 200


@pytest.fixture
def guarded_store(tmp_path: Path, store_binary: Path) -> Iterator[StoreServer]:
    """A store whose default user is off: `powgate` may SET its keys (the least a sidecar
    needs, as docs/sidecar.md recommends), `reader` may only read."""
    users = {
        "powgate": "on >right-password ~powgate:replay:* resetchannels -@all +set +ping",
        "reader": "on >reader ~* +@read +ping",
    }
    with StoreServer(root=tmp_path / "guarded", binary=store_binary, users=users) as server:
        yield server


def credentials(folder: Path, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".")).write_text(text)
    return folder


@pytest.mark.parametrize(
    ("files", "kind"),
    [
        ({"username": "powgate", "password": "wrong"}, "auth"),
        ({}, "auth"),  # no credentials mounted: the server refuses the default user
        ({"username": "reader", "password": "reader"}, "auth"),  # NOPERM for SET
    ],
    ids=["wrong-password", "no-credentials", "no-permission"],
)
async def test_a_store_refusing_our_credentials_is_unavailable_and_counted(
    guarded_store: StoreServer, tmp_path: Path, files: dict[str, str], kind: str
) -> None:
    folder = credentials(tmp_path / "secret", **files)
    async with fleet(store_config(guarded_store), credentials=folder) as f:
        assert await f.post(0, await f.payload()) == 503
        # The start-up probe and the claim (or the probe alone: the store was down already).
        assert f.sample(0, "powgate_replay_store_errors_total", {"kind": kind}) >= 1
        assert f.count(0, "rejected", "replay_store_unavailable") == 1


async def test_credentials_from_the_mounted_folder_are_used_and_reread(
    guarded_store: StoreServer, tmp_path: Path
) -> None:
    folder = credentials(tmp_path / "secret", username="powgate", password="right-password")
    async with fleet(store_config(guarded_store), credentials=folder) as f:
        await f.store_answers()
        payload = await f.payload()
        assert [await f.post(0, payload) for _ in range(2)] == [200, 428]
        assert f.sample(0, "powgate_replay_store_claims_total", {"result": "new"}) == 1


async def test_a_store_answering_garbage_is_unavailable_and_counted() -> None:
    """Something at the address that is not Redis (or a corrupted answer)."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                writer.write(b"\x00\xffHTTP/1.1 200 OK\r\n?? not a reply\r\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    spec = ReplayStoreSpec(address=f"127.0.0.1:{port}", timeout_milliseconds=500)
    config = store_config(None).model_copy(
        update={"contract": REPLAY_STORE_CONTRACT, "replay_store": spec}
    )
    try:
        async with fleet(config) as f:
            assert await f.post(0, await f.payload()) == 503
            assert f.sample(0, "powgate_replay_store_errors_total", {"kind": "protocol"}) >= 1
            assert f.count(0, "admitted", "ok") == 0
    finally:
        server.close()


async def test_tls_store_is_verified_against_the_mounted_ca(
    tmp_path: Path, store_binary: Path
) -> None:
    with StoreServer(root=tmp_path / "tls", binary=store_binary, tls=True) as tls_store:
        assert tls_store.ca_file is not None
        trusted = credentials(tmp_path / "trusted", ca_crt=tls_store.ca_file.read_text())
        async with fleet(store_config(tls_store, tls=True), credentials=trusted) as f:
            await f.store_answers()
            payload = await f.payload()
            assert [await f.post(0, payload) for _ in range(2)] == [200, 428]
        # Without the CA the server's certificate is not trusted: never talked to.
        untrusted = credentials(tmp_path / "untrusted")
        async with fleet(store_config(tls_store, tls=True), credentials=untrusted) as f:
            assert await f.post(0, await f.payload()) == 503
            assert f.sample(0, "powgate_replay_store_errors_total", {"kind": "tls"}) >= 1


# -- sidecar processes -------------------------------------------------------------


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@dataclass
class Processes:
    tmp_path: Path
    upstream: str
    key_file: Path
    config_file: Path
    started: list[ManagedProcess]

    def start(self, name: str, *, workers: int = 1) -> list[SidecarEndpoints]:
        """A sidecar process, ready: the endpoints of each of its workers."""
        folder = self.tmp_path / name
        folder.mkdir(exist_ok=True)
        process, first = start_sidecar(
            tmp_path=folder,
            upstream=self.upstream,
            key_file=self.key_file,
            config_args=["--config-file", str(self.config_file)],
            workers=workers,
        )
        self.started.append(process)
        # Each worker exports its metrics on its own port (base + index).
        host, port = first.metrics_url.rsplit(":", 1)
        endpoints = [
            SidecarEndpoints(url=first.url, metrics_url=f"{host}:{int(port) + i}")
            for i in range(workers)
        ]
        for index, worker in enumerate(endpoints):
            eventually(
                lambda url=worker.metrics_url: ready(url + "/readyz"),
                what=f"sidecar {name} worker {index} ready",
            )
        return endpoints

    def stop(self, index: int) -> None:
        stop_all([self.started[index]], grace=10)


@pytest.fixture
def processes(tmp_path: Path, upstream: str) -> Iterator[Processes]:
    key_file, config_file = tmp_path / "keyring.json", tmp_path / "config.json"
    KeyRing.generate().save(key_file)
    running = Processes(tmp_path, upstream, key_file, config_file, [])
    try:
        yield running
    finally:
        stop_all(running.started, grace=10)


def post(url: str, payload: str) -> int:
    # A new connection each time: with --workers the kernel picks the worker per connection.
    with httpx.Client(timeout=30) as client:
        return client.post(url + "/v1/chat", headers={HEADER: payload}).status_code


def process_payload(url: str) -> str:
    return solved(httpx.get(url + CHALLENGE_PATH, params={"path": "/v1/chat"}, timeout=10).content)


def test_three_sidecar_processes_and_a_restart_admit_one_payload_once(
    processes: Processes, store: StoreServer
) -> None:
    processes.config_file.write_text(store_config(store).to_json())
    sidecars = [processes.start(name)[0] for name in ("a", "b", "c")]
    payload = process_payload(sidecars[0].url)
    assert [post(s.url, payload) for s in sidecars] == [200, 428, 428]
    # A restarted process has an empty cache of its own; the store remembers.
    processes.stop(0)
    [restarted] = processes.start("a-again")
    assert post(restarted.url, payload) == 428
    replayed = 'powgate_requests_total{outcome="rejected",reason="replayed",route="chat"}'
    assert restarted.metric(replayed) == 1


def test_without_the_store_each_process_and_a_restart_admit_the_payload(
    processes: Processes,
) -> None:
    """What the issue found: one payload, three processes and a restart, four admissions."""
    processes.config_file.write_text(store_config(None).to_json())
    sidecars = [processes.start(name)[0] for name in ("a", "b", "c")]
    payload = process_payload(sidecars[0].url)
    assert [post(s.url, payload) for s in sidecars] == [200, 200, 200]
    processes.stop(0)
    assert post(processes.start("a-again")[0].url, payload) == 200


def test_the_workers_of_one_sidecar_admit_one_payload_once(
    processes: Processes, store: StoreServer
) -> None:
    processes.config_file.write_text(store_config(store).to_json())
    workers = processes.start("workers", workers=2)
    url = workers[0].url
    payload = process_payload(url)
    # Each connection lands on either worker: 20 connections reach both (1 - 2^-19).
    statuses = [post(url, payload) for _ in range(20)]
    assert statuses.count(200) == 1
    assert statuses.count(428) == 19
    replayed = 'powgate_requests_total{outcome="rejected",reason="replayed",route="chat"}'
    seen = [worker.metric(replayed) for worker in workers]
    assert all(count > 0 for count in seen), seen
