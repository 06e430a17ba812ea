"""Contracts between components, checked from both sides.

What the injector writes into a pod (variables, ports, labels) is exactly
what the sidecar's command line reads and what the chart's PodMonitor
selects; the series the operator's rollout query asks for is one the sidecar
exports. Each test renders or parses the real other side.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from typing import Any
from unittest import mock

import pytest

from helm_chart import MONITORING, find, kubelet_environment, render
from powgate import KeyRing
from powgate._pool import WAITING_PER_THREAD, default_threads
from powgate.config import SidecarConfig
from powgate.contract import (
    HEAVY_CLIENTS_METRIC,
    KEY_INFO_METRIC,
    METRICS_PORT_NAME,
    POLICY_LABEL,
    SIDECAR_NAME,
    SidecarFlag,
)
from powgate.policy import LabelSelector, config_map_name
from powgate.pricing import PricingConfig
from powgate_operator._inject import PolicyRef, SidecarTemplate, plan, selector_matches
from powgate_operator._prometheus import heavy_clients_query, key_info_query, rollout_query
from powgate_sidecar import Sidecar
from powgate_sidecar import cli as sidecar_cli
from powgate_sidecar._metrics import Metrics
from powgate_sidecar._server import Settings

NS = "ai"
POLICY = PolicyRef(
    namespace=NS, name="llm", uid="u-1", selector=LabelSelector(match_labels={"app": "llm"})
)


def injected_pod(*, native: bool = True, **template_fields: Any) -> dict[str, Any]:
    source = {
        "metadata": {"name": "p", "namespace": NS, "labels": {"app": "llm"}},
        "spec": {
            "containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 8000}]},
            ]
        },
    }
    template = SidecarTemplate(
        image="powgate/sidecar:test",
        operator_namespace="powgate-system",
        native_sidecar=native,
        **template_fields,
    )
    decided = plan(source, namespace=NS, policies=[POLICY], template=template)
    assert decided.pod is not None, decided.message
    return decided.pod


def sidecar_container(pod: dict[str, Any]) -> dict[str, Any]:
    spec = pod["spec"]
    (found,) = [
        c
        for c in [*spec.get("initContainers", []), *spec["containers"]]
        if c["name"] == SIDECAR_NAME
    ]
    return found


#: What the downward API gives a pod: the values the test's kubelet hands out.
FIELDS = {"metadata.name": "p", "metadata.namespace": NS, "spec.nodeName": "node-1"}


def sidecar_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    sidecar_cli.add_command(parser.add_subparsers())
    return parser


def sidecar_settings(container: dict[str, Any]) -> Settings:
    """What the sidecar's real command line makes of the injected container's environment."""
    written = kubelet_environment(container["env"], fields={**FIELDS, "status.podIP": "10.244.0.7"})
    powgate = {k: v for k, v in written.items() if k.startswith("POWGATE_")}
    assert powgate, "the injector configures the sidecar through POWGATE_* variables"
    assert set(powgate) <= {flag.env for flag in SidecarFlag}
    # The kubelet adds the API server's address; nothing else reaches the process.
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("POWGATE_")},
        **powgate,
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
    }
    with mock.patch.dict(os.environ, environ, clear=True):
        args = sidecar_parser().parse_args(["sidecar"])
        return sidecar_cli._settings(args)


@pytest.mark.parametrize("native", [True, False])
def test_the_sidecar_cli_reads_every_variable_the_injector_writes(native: bool) -> None:
    container = sidecar_container(injected_pod(native=native))
    settings = sidecar_settings(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.listen[1] == ports["http"]  # the port the Service targets by name
    assert settings.metrics_listen == ("10.244.0.7", ports[METRICS_PORT_NAME])
    assert settings.upstream == "http://127.0.0.1:8000"
    assert settings.config_object == (NS, config_map_name("llm"))
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(settings.key_file) in mounts
    # The probes ask the port the sidecar serves its health on.
    assert container["startupProbe"]["httpGet"]["port"] == METRICS_PORT_NAME


def test_the_injectors_derivation_pool_sizes_the_sidecars_pool() -> None:
    """Told by the chart, the injector sets the pool; untold, the sidecar sizes it itself."""
    told = sidecar_container(injected_pod(derivation_threads=3, derivations_pending=12))
    limits = sidecar_settings(told).limits
    assert (limits.derivation_threads, limits.derivations_pending) == (3, 12)
    untold = sidecar_container(injected_pod())
    assert not {SidecarFlag.DERIVATION_THREADS.env, SidecarFlag.DERIVATIONS_PENDING.env} & {
        e["name"] for e in untold["env"]
    }
    limits = sidecar_settings(untold).limits
    assert limits.derivation_threads == default_threads()
    assert limits.derivations_pending == default_threads() * WAITING_PER_THREAD


def test_every_sidecar_flag_has_its_contract_name() -> None:
    options = {
        option
        for action in sidecar_parser()._subparsers._group_actions[0].choices["sidecar"]._actions  # type: ignore[union-attr]
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    assert options == {flag.value for flag in SidecarFlag}


def test_the_chart_pod_monitor_scrapes_injected_sidecars() -> None:
    docs = render({"metrics": {"podMonitor": {"enabled": True}}}, api_versions=[MONITORING])
    monitor = find(docs, "PodMonitor")["spec"]
    pod = injected_pod()
    selector = LabelSelector.model_validate(monitor["selector"])
    assert selector_matches(selector, pod["metadata"]["labels"])
    assert POLICY_LABEL in pod["metadata"]["labels"]
    uninjected = {"app": "llm"}
    assert not selector_matches(selector, uninjected)
    (endpoint,) = monitor["podMetricsEndpoints"]
    names = {p["name"] for p in sidecar_container(pod)["ports"]}
    assert endpoint["port"] in names
    assert endpoint["port"] == METRICS_PORT_NAME


def test_the_rollout_query_asks_for_a_series_the_sidecar_exports() -> None:
    metrics = Metrics()
    metrics.set_config(policy="ai/llm", version="v1", difficulties={"default": 1})
    exported = {
        sample.name: set(sample.labels)
        for metric in metrics.registry.collect()
        for sample in metric.samples
    }
    query = rollout_query("ai/llm")
    match = re.search(r"\((\w+)\{(.*)\}\)", query)
    assert match is not None, query
    series, matchers = match.groups()
    labels = set(re.findall(r"(\w+)=", matchers))
    # `namespace` is the target label the chart's PodMonitor attaches; the rest the sidecar's.
    assert labels - {"namespace"} <= exported[series]
    assert "version" in exported[series]  # what the query counts by


def test_the_heavy_clients_query_asks_for_a_series_the_sidecar_exports() -> None:
    """The operator sums what a real sidecar exports, by the label that seals the client."""
    config = SidecarConfig(policy="ai/llm", pricing=PricingConfig(enabled=True))
    sidecar = Sidecar(upstream="http://127.0.0.1:9", keyring=KeyRing.generate(), config=config)
    pricer = sidecar._pricer
    assert pricer is not None
    started = time.monotonic()  # the clock the sidecar's metrics read rates at
    for _ in range(50):
        pricer.quote(
            client="203.0.113.9", from_proxy=False, header=lambda _: None, now=started, wall=0
        )
    exported = {
        sample.name: set(sample.labels)
        for metric in sidecar.metrics.registry.collect()
        for sample in metric.samples
    }
    query = heavy_clients_query("ai/llm")
    match = re.search(r"by \((\w+)\) \((\w+)\{(.*)\}\)", query)
    assert match is not None, query
    grouped, series, matchers = match.groups()
    assert series == HEAVY_CLIENTS_METRIC
    labels = set(re.findall(r"(\w+)=", matchers))
    assert labels - {"namespace"} <= exported[series]
    assert grouped in exported[series]


def test_the_key_query_asks_for_a_series_the_sidecar_exports() -> None:
    """The operator counts, by the labels a real sidecar exports, who holds which key."""
    sidecar = Sidecar(
        upstream="http://127.0.0.1:9",
        keyring=KeyRing.generate(),
        config=SidecarConfig(policy="ai/llm"),
    )
    exported = {
        sample.name: dict(sample.labels)
        for metric in sidecar.metrics.registry.collect()
        for sample in metric.samples
    }
    query = key_info_query("ai/llm")
    match = re.search(r"by \(([\w, ]+)\) \((\w+)\{(.*)\}\)", query)
    assert match is not None, query
    grouped, series, matchers = match.groups()
    assert series == KEY_INFO_METRIC
    labels = set(re.findall(r"(\w+)=", matchers))
    assert labels - {"namespace"} <= set(exported[series])
    assert {g.strip() for g in grouped.split(",")} <= set(exported[series])
    assert exported[series]["policy"] == "ai/llm"
    assert exported[series]["active"] == "true"
