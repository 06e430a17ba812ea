"""`powgate operator`: arguments, kopf settings, and the health and metrics endpoints."""

from __future__ import annotations

import argparse
import asyncio

import httpx
import pytest

from powgate_operator._server import start_servers
from powgate_operator.cli import add_command, kopf_settings, peering_priority
from waiting import free_port


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["operator", *argv])


def test_arguments() -> None:
    args = parse("-n", "ai", "-n", "web", "--metrics-listen", "127.0.0.1:9999", "--peering", "pg")
    assert args.namespace == ["ai", "web"]
    assert args.metrics_listen == ("127.0.0.1", 9999)
    assert args.health_listen == ("127.0.0.1", 8081)
    assert args.peering == "pg"
    assert parse("--all-namespaces").all_namespaces


@pytest.mark.parametrize(
    "argv",
    [
        [],  # a scope is required: never watch "everything" by accident
        ["-n", "ai", "--all-namespaces"],
        ["-n", "ai", "--metrics-listen", "9090"],
        ["-n", "ai", "--health-listen", "host:99999"],
    ],
)
def test_bad_arguments_exit_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_kopf_settings() -> None:
    alone = kopf_settings(peering=None, priority=0)
    assert alone.peering.standalone
    assert alone.watching.server_timeout is not None
    assert alone.watching.client_timeout is not None
    assert alone.watching.server_timeout < alone.watching.client_timeout
    peered = kopf_settings(peering="powgate", priority=5)
    assert (peered.peering.standalone, peered.peering.name, peered.peering.priority) == (
        False,
        "powgate",
        5,
    )


def test_peering_priorities_differ_per_replica_unless_given() -> None:
    assert peering_priority(explicit=7, pod_id="pg-1") == 7
    # Stable for one pod (a restart keeps its place), distinct across pods.
    assert peering_priority(explicit=None, pod_id="pg-1") == peering_priority(
        explicit=None, pod_id="pg-1"
    )
    derived = {peering_priority(explicit=None, pod_id=f"pg-{i}") for i in range(200)}
    assert len(derived) == 200
    assert all(0 <= p < 2**31 for p in derived)
    randoms = {peering_priority(explicit=None, pod_id=None) for _ in range(50)}
    assert len(randoms) > 1
    assert parse("-n", "ai").priority is None


async def test_health_and_metrics_endpoints() -> None:
    ready = asyncio.Event()
    metrics, health = ("127.0.0.1", free_port()), ("127.0.0.1", free_port())
    runners = await start_servers(metrics=metrics, health=health, ready=ready)
    try:
        async with httpx.AsyncClient() as http:
            base = f"http://127.0.0.1:{health[1]}"
            assert (await http.get(f"{base}/healthz")).status_code == 200
            assert (await http.get(f"{base}/readyz")).status_code == 503
            ready.set()
            assert (await http.get(f"{base}/readyz")).status_code == 200
            scraped = await http.get(f"http://127.0.0.1:{metrics[1]}/metrics")
            assert "powgate_operator_reconciles_total" in scraped.text
    finally:
        for runner in runners:
            await runner.cleanup()
