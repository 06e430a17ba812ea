"""The sidecar's building blocks: routing, the effort queue, solution carriers, the CLI."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from powgate import KeyRing
from powgate._pool import default_threads
from powgate.config import CONFIG_DATA_KEY, QueueConfig, RouteConfig, SidecarConfig
from powgate.reputation import REPUTATION_DATA_KEY
from powgate_sidecar import (
    ConfigMapWatcher,
    ConfigSink,
    EffortQueue,
    FileWatch,
    KubeClient,
    KubeEndpoint,
    QueueVerdict,
    Sidecar,
)
from powgate_sidecar._carriers import form_solution, parse_solve_ms, split_cookie
from powgate_sidecar._routes import EXEMPT, RouteTable
from powgate_sidecar.cli import _settings, add_command

# -- routing ------------------------------------------------------------------


def test_routes_first_match_exempt_first_and_difficulty_scaling() -> None:
    table = RouteTable(
        SidecarConfig(
            policy="ns/p",
            difficulty=1000,
            min_difficulty=100,
            routes=[
                RouteConfig(
                    name="cheap", paths=["/v1/models"], methods=["POST"], difficulty_multiplier=0.01
                ),
                RouteConfig(
                    name="chat", paths=["/v1/*"], methods=["POST"], difficulty_multiplier=2.5
                ),
            ],
            exempt_paths=["/healthz", "/v1/health*"],
        )
    )
    cheap, chat = table.routes
    assert table.match(method="POST", path="/v1/models") is cheap
    assert table.match(method="POST", path="/v1/chat/completions") is chat
    assert table.match(method="GET", path="/v1/chat/completions") is None
    assert table.match(method="POST", path="/v1/healthcheck") is EXEMPT
    assert table.match(method="POST", path="/v2/x") is None
    # Never below the policy's minimum; both bounds scale alike.
    assert (cheap.difficulty, cheap.min_difficulty) == (100, 100)
    assert (chat.difficulty, chat.min_difficulty) == (2500, 250)
    assert chat.binding == "ns/p:chat"
    assert (
        table.version == SidecarConfig.model_validate(table.config.model_dump()).content_version()
    )


# -- the effort queue ------------------------------------------------------------


async def test_queue_serves_highest_difficulty_then_arrival() -> None:
    queue = EffortQueue(QueueConfig(max_concurrent=1, max_waiting=10, max_wait_seconds=30))
    assert await queue.acquire(difficulty=1) is None
    order: list[str] = []

    async def wait(name: str, difficulty: int) -> None:
        assert await queue.acquire(difficulty=difficulty) is None
        order.append(name)
        queue.release()

    tasks = [
        asyncio.create_task(wait(n, d)) for n, d in (("a", 10), ("b", 50), ("c", 50), ("d", 5))
    ]
    await asyncio.sleep(0)
    assert queue.depth == 4
    queue.release()
    await asyncio.gather(*tasks)
    assert order == ["b", "c", "a", "d"]
    assert (queue.depth, queue.active) == (0, 0)


async def test_queue_full_timeout_cancel_and_resize() -> None:
    queue = EffortQueue(QueueConfig(max_concurrent=1, max_waiting=1, max_wait_seconds=0.05))
    assert await queue.acquire(difficulty=1) is None
    assert await queue.acquire(difficulty=1) == QueueVerdict.TIMEOUT
    waiter = asyncio.create_task(queue.acquire(difficulty=1))
    await asyncio.sleep(0)
    assert await queue.acquire(difficulty=1) == QueueVerdict.FULL
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert queue.depth == 0
    # Lifting the cap lets waiters through at once.
    queue.set_limits(QueueConfig(max_concurrent=1, max_waiting=5, max_wait_seconds=30))
    blocked = asyncio.create_task(queue.acquire(difficulty=1))
    await asyncio.sleep(0)
    assert queue.depth == 1
    queue.set_limits(QueueConfig(max_concurrent=0))
    assert await blocked is None
    assert queue.active == 2


# -- carriers -----------------------------------------------------------------


def test_split_cookie() -> None:
    assert split_cookie("a=1; powgate_solution=abc==; b=2") == ("abc==", "a=1; b=2")
    assert split_cookie('powgate_solution="x"') == ("x", None)
    assert split_cookie("a=1") == (None, "a=1")


def test_form_solution_urlencoded_and_multipart() -> None:
    assert (
        form_solution(
            mimetype="application/x-www-form-urlencoded", header="", body=b"a=1&altcha=x%2By"
        )
        == "x+y"
    )
    assert (
        form_solution(mimetype="application/x-www-form-urlencoded", header="", body=b"a=1") is None
    )
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="altchax"\r\n\r\nno\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="altcha"\r\n\r\nPAYLOAD\r\n--XyZ--\r\n'
    )
    header = "multipart/form-data; boundary=XyZ"
    assert form_solution(mimetype="multipart/form-data", header=header, body=body) == "PAYLOAD"
    assert (
        form_solution(mimetype="multipart/form-data", header="multipart/form-data", body=body)
        is None
    )


@pytest.mark.parametrize(
    ("value", "expected"), [("1500", 1.5), ("0", 0.0), ("-1", None), ("1e3", None), ("9" * 9, None)]
)
def test_parse_solve_ms(value: str, expected: float | None) -> None:
    assert parse_solve_ms(value) == expected


def test_file_watch_sees_rewrites_and_replacements(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    KeyRing.generate().save(path)
    watch = FileWatch(path)
    assert not watch.changed()
    KeyRing.generate().save(path)  # atomic replace: new inode
    assert watch.changed()
    assert not watch.changed()
    path.unlink()
    assert watch.changed()


def test_file_watch_follows_a_secret_symlink_swap(tmp_path: Path) -> None:
    # The kubelet's layout: keyring.json -> ..data/keyring.json, ..data -> ..<timestamp>
    for name in ("..v1", "..v2"):
        (tmp_path / name).mkdir()
        KeyRing.generate().save(tmp_path / name / "keyring.json")
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "keyring.json").symlink_to("..data/keyring.json")
    watch = FileWatch(tmp_path / "keyring.json")
    (tmp_path / "..tmp").symlink_to("..v2")
    os.replace(tmp_path / "..tmp", tmp_path / "..data")
    assert watch.changed()


# -- the command line ------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers())
    return parser.parse_args(["sidecar", *argv])


def test_flags_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWGATE_LISTEN", "127.0.0.1:8081")
    monkeypatch.setenv("POWGATE_UPSTREAM", "http://127.0.0.1:8000")
    monkeypatch.setenv("POWGATE_KEY_FILE", "/keys")
    monkeypatch.setenv("POWGATE_CONFIG_OBJECT", "team/powgate-chat")
    monkeypatch.setenv("POWGATE_KUBE_API_URL", "https://127.0.0.1:6443")
    monkeypatch.setenv("POWGATE_WORKERS", "2")
    settings = _settings(parse(["--metrics-listen", "127.0.0.1:9999"]))
    assert settings.listen == ("127.0.0.1", 8081)
    assert settings.metrics_listen == ("127.0.0.1", 9999)
    assert settings.config_object == ("team", "powgate-chat")
    assert settings.kube is not None
    assert settings.kube.api_url == "https://127.0.0.1:6443"
    assert settings.reuse_port
    # Two processes share the container's CPUs for their derivation threads.
    assert settings.limits.derivation_threads == default_threads(processes=2)
    assert settings.limits.derivations_pending == default_threads(processes=2) * 8
    monkeypatch.setenv("POWGATE_DERIVATION_THREADS", "3")
    monkeypatch.setenv("POWGATE_DERIVATIONS_PENDING", "5")
    limits = _settings(parse([])).limits
    assert (limits.derivation_threads, limits.derivations_pending) == (3, 5)


#: Flags that make a valid command line on their own.
VALID = ["--upstream", "http://x", "--key-file", "k", "--config-file", "c"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--key-file", "k"], "--upstream"),
        (["--upstream", "http://x", "--key-file", "k"], "exactly one of"),
        (["--upstream", "ftp://x", "--key-file", "k", "--config-file", "c"], "http://"),
        (
            ["--upstream", "http://x", "--key-file", "k", "--config-object", "ns/n"],
            "KUBERNETES_SERVICE_HOST",
        ),
        (
            [*VALID, "--derivation-threads", "0"],
            "--derivation-threads must be at least 1",
        ),
        (
            [*VALID, "--derivation-threads", "4", "--derivations-pending", "3"],
            r"--derivations-pending must be at least the derivation threads \(4\)",
        ),
    ],
)
def test_settings_errors_name_the_mistake(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ValueError, match=message):
        _settings(parse(argv))


def test_malformed_addresses_are_argparse_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--listen", "nowhere"])
    assert "is not HOST:PORT" in capsys.readouterr().err


def errors_counted(sidecar: Sidecar) -> float:
    labels = {"source": "kubernetes", "result": "error"}
    return sidecar.metrics.registry.get_sample_value("powgate_config_reloads_total", labels) or 0.0


async def watch_until(
    *, api_url: str, sink: ConfigSink, done: Callable[[], bool], seconds: float = 5.0
) -> None:
    """Run a config watcher against ``api_url`` until ``done()`` (or ``seconds``), then stop it."""
    endpoint = KubeEndpoint(api_url=api_url, token_file=None, ca_file=None)
    async with KubeClient(endpoint) as client:
        watcher = ConfigMapWatcher(
            client=client, namespace="ns", name="cfg", sink=sink, backoff_base=0.01
        )
        task = asyncio.create_task(watcher.run())
        for _ in range(int(seconds / 0.01)):
            if done():
                break
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_unreachable_api_server_keeps_the_config_and_counts_errors() -> None:
    sidecar = Sidecar(
        upstream="http://127.0.0.1:9",
        keyring=KeyRing.generate(),
        config=SidecarConfig(version="v1"),
    )
    await watch_until(
        api_url="http://127.0.0.1:9", sink=sidecar, done=lambda: errors_counted(sidecar) >= 3
    )
    assert errors_counted(sidecar) >= 3
    assert sidecar.config is not None
    assert sidecar.config.version == "v1"


# -- the config watch after 410 Gone, against a scripted API server ---------------
# (tests/integration/test_sidecar_e2e.py provokes the 410 from a real one)

GONE = "config watch expired (410 Gone); listing again"
_EXPIRED = {
    "kind": "Status",
    "apiVersion": "v1",
    "status": "Failure",
    "message": "too old resource version: 10 (11)",
    "reason": "Expired",
    "code": 410,
}


@dataclass
class Deliveries:
    """A config sink that records what it is handed."""

    documents: list[str | bytes | None] = field(default_factory=list)
    lists: list[str | bytes | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def apply_document(self, text: str | bytes | None, *, source: str) -> bool:
        self.documents.append(text)
        return True

    def apply_reputation(self, text: str | bytes | None, *, source: str) -> bool:
        self.lists.append(text)
        return True

    def report_source_error(self, *, source: str, why: str) -> None:
        self.errors.append(why)


def _configmap(document: str, version: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "cfg", "namespace": "ns", "resourceVersion": version},
        "data": {CONFIG_DATA_KEY: document},
    }


def _listing(items: list[dict[str, Any]], version: str) -> dict[str, Any]:
    return {"kind": "ConfigMapList", "metadata": {"resourceVersion": version}, "items": items}


async def watch_scripted(
    api: Callable[[web.Request], Awaitable[web.StreamResponse]],
    *,
    until: Callable[[Deliveries], bool],
    finished: asyncio.Event,
) -> Deliveries:
    """A watcher against the scripted API server ``api`` until ``until(sink)``; then
    ``finished`` is set (answers held open end) and what the sink was handed returned."""
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/configmaps", api)
    sink = Deliveries()
    async with TestServer(app, host="127.0.0.1") as server:
        await watch_until(
            api_url=f"http://127.0.0.1:{server.port}", sink=sink, done=lambda: until(sink)
        )
        finished.set()
    return sink


async def _stream(request: web.Request, events: list[dict[str, Any]]) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for event in events:
        await response.write(json.dumps(event).encode() + b"\n")
    return response


# A WATCH says 410 in one of two ways: an ERROR event in a 200 stream (what the
# API server's watch cache sends) or the status of the answer itself.
@pytest.mark.parametrize("gone", ["event", "status"])
async def test_expired_watch_lists_again_and_delivers_a_recreated_object(
    gone: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="powgate.sidecar")
    v1, v2 = '{"version": "v1"}', '{"version": "v2"}'  # the watcher passes them on unread
    requests: list[dict[str, str]] = []
    finished = asyncio.Event()

    async def api(request: web.Request) -> web.StreamResponse:
        requests.append(dict(request.query))
        step = len(requests)
        if step == 1:
            return web.json_response(_listing([_configmap(v1, "10")], "10"))
        if step == 2 and gone == "status":
            return web.json_response(_EXPIRED, status=410)
        if step == 2:
            return await _stream(request, [{"type": "ERROR", "object": _EXPIRED}])
        if step == 3:  # the object was deleted while the watch was gone
            return web.json_response(_listing([], "12"))
        # Re-created as it was before, then changed; held open until the end.
        events = [
            {"type": "ADDED", "object": _configmap(v1, "13")},
            {"type": "MODIFIED", "object": _configmap(v2, "14")},
        ]
        response = await _stream(request, events)
        await finished.wait()
        return response

    sink = await watch_scripted(api, until=lambda s: v2 in s.documents, finished=finished)
    # Listed again, and told of the deletion; the object that came back with
    # the same document is delivered again, since the sink was told it was gone.
    assert sink.documents == [v1, None, v1, v2]
    assert [(r.get("watch"), r.get("resourceVersion")) for r in requests] == [
        (None, None),
        ("1", "10"),
        (None, None),
        ("1", "12"),
    ]
    assert caplog.messages.count(GONE) == 1
    assert sink.errors == []


async def test_a_broken_watch_resumes_from_the_last_event_it_delivered() -> None:
    v1, v2 = '{"version": "v1"}', '{"version": "v2"}'
    requests: list[dict[str, str]] = []
    finished = asyncio.Event()

    async def api(request: web.Request) -> web.StreamResponse:
        requests.append(dict(request.query))
        step = len(requests)
        if step == 1:
            return web.json_response(_listing([_configmap(v1, "10")], "10"))
        if step == 2:
            # One change, then the stream breaks in the middle of a line.
            response = await _stream(
                request, [{"type": "MODIFIED", "object": _configmap(v2, "11")}]
            )
            await response.write(b'{"type": "MODIF')
            assert request.transport is not None
            request.transport.abort()
            return response
        await finished.wait()
        return web.json_response(_listing([], "99"))

    sink = await watch_scripted(api, until=lambda s: len(requests) >= 3, finished=finished)
    assert sink.documents == [v1, v2]
    # Not the version the broken watch started from: no needless 410 and LIST.
    assert [(r.get("watch"), r.get("resourceVersion")) for r in requests] == [
        (None, None),
        ("1", "10"),
        ("1", "11"),
    ]
    assert len(sink.errors) == 1


async def test_the_reputation_list_beside_the_document_is_delivered_on_its_own() -> None:
    """The operator rewrites the list far more often than the document: each goes alone."""
    v1 = '{"version": "v1"}'
    first, second = '{"entries": []}', '{"source": "x", "entries": []}'
    finished = asyncio.Event()

    def with_list(listed: str | None, version: str) -> dict[str, Any]:
        obj = _configmap(v1, version)
        if listed is not None:
            obj["data"][REPUTATION_DATA_KEY] = listed
        return obj

    async def api(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") is None:
            return web.json_response(_listing([with_list(None, "10")], "10"))
        events = [
            {"type": "MODIFIED", "object": with_list(first, "11")},
            {"type": "MODIFIED", "object": with_list(second, "12")},
            {"type": "MODIFIED", "object": with_list(second, "13")},  # a resync
        ]
        response = await _stream(request, events)
        await finished.wait()
        return response

    sink = await watch_scripted(api, until=lambda s: second in s.lists, finished=finished)
    assert sink.documents == [v1]
    assert sink.lists == [first, second]


async def test_a_malformed_or_too_deep_event_is_an_error_and_the_watch_resumes() -> None:
    """Bad events are reported and retried; none ends the watcher (a nesting deep enough to
    exhaust a recursive parser's stack included)."""
    v1, v2 = '{"version": "v1"}', '{"version": "v2"}'
    bad = [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"type": "MODIFIED", "object": {',
        b"\xff\xfe",
        b"[]",
        b'{"type": "MODIFIED", "object": []}',
        b'{"type": "MODIFIED", "object": {"metadata": 1}}',
        b'{"type": "MODIFIED", "object": {"data": "config.json"}}',
    ]
    requests: list[dict[str, str]] = []
    finished = asyncio.Event()

    async def api(request: web.Request) -> web.StreamResponse:
        requests.append(dict(request.query))
        step = len(requests)
        if step == 1:
            return web.json_response(_listing([_configmap(v1, "10")], "10"))
        response = web.StreamResponse()
        await response.prepare(request)
        if step - 2 < len(bad):
            await response.write(bad[step - 2] + b"\n")
            await finished.wait()
            return response
        await response.write(
            json.dumps({"type": "MODIFIED", "object": _configmap(v2, "11")}).encode() + b"\n"
        )
        await finished.wait()
        return response

    sink = await watch_scripted(api, until=lambda s: v2 in s.documents, finished=finished)
    assert sink.documents == [v1, v2]
    assert len(sink.errors) == len(bad)
    assert all("ValueError" in why for why in sink.errors)
    # Each retry resumed from the last version delivered: no LIST again.
    assert [r.get("resourceVersion") for r in requests] == [None] + ["10"] * (len(bad) + 1)
