"""The operator's rollout count against a real Prometheus scraping sidecar metrics.

Each sidecar exports ``powgate_config_info{policy, version}``; Prometheus adds
the ``namespace`` of the pod it scraped (here: a target label, as the chart's
PodMonitor does). A pod in another namespace can export any ``policy`` label
it likes: it must not count towards the policy's rollout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from prometheus_api_client import PrometheusConnect
from prometheus_client import start_http_server

from powgate.controller import Failure
from powgate.policy import PrometheusSpec, RolloutStatus
from powgate_operator._prometheus import SignalReader, StoreReach
from powgate_sidecar._metrics import Metrics
from powgate_testbed.prometheus import PrometheusServer, ScrapeTarget
from waiting import eventually_async


@pytest.fixture
def sidecar_metrics() -> Iterator[list[tuple[str, Metrics]]]:
    """Sidecar metric registries served on loopback, as (address, metrics)."""
    served: list[tuple[str, Metrics]] = []
    servers = []

    def serve(policy: str, version: str) -> None:
        metrics = Metrics()
        metrics.set_config(policy=policy, version=version, difficulties={"default": 1})
        server, thread = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
        servers.append((server, thread))
        served.append((f"127.0.0.1:{server.server_port}", metrics))

    serve("ai/chat", "v2")
    serve("ai/chat", "v1")
    serve("ai/chat", "v2")  # scraped from another namespace below
    # Their replay store: the first reaches it, the second not, the intruder claims not.
    for (_, metrics), up in zip(served, (1, 0, 0), strict=True):
        metrics.replay_store_up.labels("ai/chat", "Refuse").set(up)
    yield served
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_only_sidecars_of_the_policys_namespace_count(
    prometheus: PrometheusServer, sidecar_metrics: list[tuple[str, Metrics]]
) -> None:
    """The rollout, and the replay store's reach (the ReplayStoreAvailable condition)."""
    namespaces = ["ai", "ai", "intruder"]
    prometheus.set_targets(
        [
            ScrapeTarget(job="sidecars", address=address, labels={"namespace": namespace})
            for (address, _), namespace in zip(sidecar_metrics, namespaces, strict=True)
        ]
    )
    reader = SignalReader(max_workers=2)
    spec = PrometheusSpec(address=prometheus.url, timeout_seconds=5)

    async def rollout() -> RolloutStatus | Failure:
        return await reader.rollout(
            prometheus=spec, credentials=None, policy="ai/chat", version="v2"
        )

    def all_scraped() -> bool:
        with PrometheusConnect(url=prometheus.url, disable_ssl=True) as prom:
            result = prom.custom_query('count(powgate_config_info{policy="ai/chat"})')
        return bool(result) and float(result[0]["value"][1]) == 3

    try:
        # The positive signal first: every sidecar, the intruder's too, is in Prometheus.
        await eventually_async(
            lambda: asyncio.to_thread(all_scraped), what="all three sidecars scraped"
        )
        counted = await rollout()
        # The same scrapes carry powgate_replay_store_up.
        reach = await reader.replay_store(prometheus=spec, credentials=None, policy="ai/chat")
    finally:
        reader.close()
    assert counted == RolloutStatus(version="v2", updated=1, total=2)
    assert reach == StoreReach(answering=1, unavailable=1)
