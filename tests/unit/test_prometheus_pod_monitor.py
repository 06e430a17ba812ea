"""The PodMonitor translation and the pod discovery file of the testbed's Prometheus.

Whether Prometheus then scrapes the right pods is checked against a real one
in tests/integration/test_real_pods.py; here, each selector form becomes the
relabelling rule the Prometheus Operator writes for it, and a pod becomes the
targets and meta labels Prometheus' own pod discovery gives it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from powgate_testbed.prometheus import _pod_targets, pod_monitor_scrape_configs

PRESENT = "__meta_kubernetes_pod_labelpresent_powgate_dev_policy"
VALUE = "__meta_kubernetes_pod_label_powgate_dev_policy"


def monitor(selector: dict[str, Any], namespaces: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "sidecars", "namespace": "powgate"},
        "spec": {
            "selector": selector,
            "namespaceSelector": namespaces if namespaces is not None else {"any": True},
            "podMetricsEndpoints": [{"port": "powgate-metrics", "path": "/m", "interval": "1s"}],
        },
    }


@pytest.mark.parametrize(
    ("selector", "rule"),
    [
        (
            {"matchLabels": {"powgate.dev/policy": "chat"}},
            {"action": "keep", "source_labels": [VALUE, PRESENT], "regex": "(chat);true"},
        ),
        (
            {"matchExpressions": [{"key": "powgate.dev/policy", "operator": "Exists"}]},
            {"action": "keep", "source_labels": [PRESENT], "regex": "true"},
        ),
        (
            {"matchExpressions": [{"key": "powgate.dev/policy", "operator": "DoesNotExist"}]},
            {"action": "drop", "source_labels": [PRESENT], "regex": "true"},
        ),
        (
            {
                "matchExpressions": [
                    {"key": "powgate.dev/policy", "operator": "In", "values": ["a", "b.c"]}
                ]
            },
            {"action": "keep", "source_labels": [VALUE, PRESENT], "regex": r"(a|b\.c);true"},
        ),
        (
            {
                "matchExpressions": [
                    {"key": "powgate.dev/policy", "operator": "NotIn", "values": ["a"]}
                ]
            },
            {"action": "drop", "source_labels": [VALUE, PRESENT], "regex": "(a);true"},
        ),
    ],
)
def test_each_selector_form_becomes_the_operators_relabelling(
    selector: dict[str, Any], rule: dict[str, Any]
) -> None:
    (config,) = pod_monitor_scrape_configs(monitor(selector), pods=Path("/p.json"))
    assert config["relabel_configs"][0] == rule
    assert config["job_name"] == "podMonitor/powgate/sidecars/0"
    assert config["metrics_path"] == "/m"
    assert config["scrape_interval"] == "1s"
    assert config["file_sd_configs"] == [{"files": ["/p.json"], "refresh_interval": "1s"}]
    port_rule = {
        "action": "keep",
        "source_labels": ["__meta_kubernetes_pod_container_port_name"],
        "regex": "powgate-metrics",
    }
    assert port_rule in config["relabel_configs"]


def test_named_namespaces_keep_only_their_pods() -> None:
    (config,) = pod_monitor_scrape_configs(
        monitor({}, {"matchNames": ["ai", "ml"]}), pods=Path("/p.json")
    )
    assert {
        "action": "keep",
        "source_labels": ["__meta_kubernetes_namespace"],
        "regex": "ai|ml",
    } in config["relabel_configs"]


def test_an_unknown_operator_is_refused() -> None:
    with pytest.raises(ValueError, match="Bogus"):
        pod_monitor_scrape_configs(
            monitor({"matchExpressions": [{"key": "k", "operator": "Bogus"}]}), pods=Path("/p")
        )


def test_a_pod_gives_one_target_per_container_port_native_sidecars_included() -> None:
    pod = {
        "metadata": {"name": "chat-1", "namespace": "ai", "labels": {"powgate.dev/policy": "chat"}},
        "spec": {
            "nodeName": "n",
            "initContainers": [
                {
                    "name": "powgate-sidecar",
                    "ports": [{"name": "powgate-metrics", "containerPort": 9480}],
                }
            ],
            "containers": [{"name": "app", "ports": [{"containerPort": 8000}]}, {"name": "x"}],
        },
        "status": {"podIP": "198.18.8.2", "phase": "Running"},
    }
    groups = _pod_targets(pod)
    assert [g["targets"] for g in groups] == [["198.18.8.2:9480"], ["198.18.8.2:8000"]]
    sidecar = groups[0]["labels"]
    assert sidecar[PRESENT] == "true"
    assert sidecar[VALUE] == "chat"
    assert sidecar["__meta_kubernetes_pod_container_port_name"] == "powgate-metrics"
    assert sidecar["__meta_kubernetes_namespace"] == "ai"
    assert groups[1]["labels"]["__meta_kubernetes_pod_container_port_name"] == ""


def test_a_pod_without_an_address_has_no_targets() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ai"}, "spec": {"containers": []}, "status": {}}
    assert _pod_targets(pod) == []
