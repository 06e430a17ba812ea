"""The sidecar's building blocks: routing, the effort queue, solution carriers, the CLI."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import pytest

from powgate import KeyRing
from powgate.config import QueueConfig, RouteConfig, SidecarConfig
from powgate_sidecar import (
    ConfigMapWatcher,
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


async def test_unreachable_api_server_keeps_the_config_and_counts_errors() -> None:
    sidecar = Sidecar(
        upstream="http://127.0.0.1:9",
        keyring=KeyRing.generate(),
        config=SidecarConfig(version="v1"),
    )
    endpoint = KubeEndpoint(api_url="http://127.0.0.1:9", token_file=None, ca_file=None)
    async with KubeClient(endpoint) as client:
        watcher = ConfigMapWatcher(
            client=client, namespace="ns", name="cfg", sink=sidecar, backoff_base=0.01
        )
        task = asyncio.create_task(watcher.run())
        for _ in range(500):
            if errors_counted(sidecar) >= 3:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert errors_counted(sidecar) >= 3
    assert sidecar.config is not None
    assert sidecar.config.version == "v1"
