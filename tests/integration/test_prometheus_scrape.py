"""A real Prometheus scrapes local endpoints; targets change while it runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from prometheus_api_client import PrometheusConnect
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from powgate_testbed.prometheus import PrometheusServer, ScrapeTarget
from waiting import eventually

_DEADLINE = 30.0


@dataclass
class Exporter:
    """A `/metrics` endpoint on loopback with one gauge."""

    address: str
    gauge: Gauge


@pytest.fixture
def exporter_factory() -> Iterator[Callable[[str], Exporter]]:
    servers = []

    def start(metric: str) -> Exporter:
        registry = CollectorRegistry()
        gauge = Gauge(metric, "test value", registry=registry)
        server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        servers.append((server, thread))
        return Exporter(address=f"127.0.0.1:{server.server_port}", gauge=gauge)

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def prom(prometheus: PrometheusServer) -> Iterator[PrometheusConnect]:
    with PrometheusConnect(url=prometheus.url, disable_ssl=True) as client:
        yield client


def _query_value(prom: PrometheusConnect, promql: str) -> float | None:
    result = prom.custom_query(query=promql)
    if not result:
        return None
    return float(result[0]["value"][1])


def _wait_for_value(prom: PrometheusConnect, promql: str, expected: float) -> None:
    eventually(
        lambda: _query_value(prom, promql) == expected,
        what=f"{promql} = {expected}",
        timeout=_DEADLINE,
        context=lambda: f"last value {_query_value(prom, promql)}",
    )


def test_scrapes_local_endpoint_and_answers_promql(
    prometheus: PrometheusServer,
    prom: PrometheusConnect,
    exporter_factory: Callable[[str], Exporter],
) -> None:
    exporter = exporter_factory("powgate_probe_value")
    exporter.gauge.set(42.5)
    prometheus.set_targets(
        [ScrapeTarget(job="probe", address=exporter.address, labels={"role": "probe"})]
    )

    _wait_for_value(prom, 'powgate_probe_value{job="probe",role="probe"}', 42.5)
    # A later value arrives with the next scrapes: the series is live.
    exporter.gauge.set(7)
    _wait_for_value(prom, 'powgate_probe_value{job="probe"}', 7)
    _wait_for_value(prom, 'up{job="probe"}', 1)


def test_targets_are_replaced_at_run_time(
    prometheus: PrometheusServer,
    prom: PrometheusConnect,
    exporter_factory: Callable[[str], Exporter],
) -> None:
    first = exporter_factory("powgate_first_value")
    second = exporter_factory("powgate_second_value")
    first.gauge.set(1)
    second.gauge.set(2)

    prometheus.set_targets([ScrapeTarget(job="first", address=first.address)])
    _wait_for_value(prom, "powgate_first_value", 1)
    prometheus.set_targets([ScrapeTarget(job="second", address=second.address)])
    _wait_for_value(prom, "powgate_second_value", 2)

    active = prom.get_targets()["activeTargets"]
    assert [t["scrapePool"] for t in active] == ["second"]
    assert prometheus.targets == [ScrapeTarget(job="second", address=second.address)]


def test_rejected_targets_leave_the_running_config(prometheus: PrometheusServer) -> None:
    before = prometheus.config_file.read_text()
    kept = prometheus.targets
    conflicting = [
        ScrapeTarget(job="a", address="127.0.0.1:1"),
        ScrapeTarget(job="a", address="127.0.0.1:2", metrics_path="/other"),
    ]
    with pytest.raises(ValueError, match="different metrics paths"):
        prometheus.set_targets(conflicting)
    assert prometheus.config_file.read_text() == before
    assert prometheus.targets == kept


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"job": "", "address": "127.0.0.1:9"}, "job name"),
        ({"job": "j", "address": "127.0.0.1"}, "host:port"),
        ({"job": "j", "address": "http://127.0.0.1:9"}, "host:port"),
        ({"job": "j", "address": "127.0.0.1:99999"}, "out of range"),
        ({"job": "j", "address": "127.0.0.1:0"}, "out of range"),
        ({"job": "j", "address": "127.0.0.1:9", "metrics_path": "metrics"}, "start with '/'"),
        ({"job": "j", "address": "127.0.0.1:9", "labels": {"bad-name": "x"}}, "label name"),
        ({"job": "j", "address": "127.0.0.1:9", "labels": {"__address__": "x"}}, "label name"),
    ],
)
def test_scrape_target_validation(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScrapeTarget(**fields)  # type: ignore[arg-type]
