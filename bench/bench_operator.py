"""The operator's costs: one evaluation, an edit's way to the config object, 100 policies.

* evaluation cost: :func:`powgate.controller.evaluate` on a policy with two
  signals and a full status, next to parsing that status (work the operator
  does on every evaluation anyway);
* reconcile latency: a spec edit until the rendered ConfigMap carries it,
  against a real control plane, next to one plain ConfigMap patch (the API
  server's own write round trip) measured in the same run;
* schedule keeping: 100 policies, each with a signal, evaluated every 2 s for
  30 s against a real Prometheus; the lag of each evaluation behind its
  schedule (the operator's own histogram) and the operator's CPU share.

Needs the control-plane binaries (``make tools``) and ``prometheus`` for the
last two parts.
"""

from __future__ import annotations

import functools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from bench import best_seconds, table
from powgate.config import SidecarConfig
from powgate.controller import Sample, evaluate
from powgate.policy import GROUP, PLURAL, VERSION, PolicySpec, PolicyStatus, config_map_name
from powgate_testbed._process import free_ports
from powgate_testbed.cluster import LocalCluster, Tools, ToolsMissingError, cache_dir
from powgate_testbed.prometheus import PrometheusServer

ROOT = Path(__file__).resolve().parents[1]
EVALUATIONS = 2000
EDITS = 20
POLICIES = 100
INTERVAL = 2
SCHEDULE_SECONDS = 30
NAMESPACE = "bench"


def _spec_and_status() -> tuple[PolicySpec, PolicyStatus]:
    spec = PolicySpec.model_validate(
        {
            "selector": {"matchLabels": {"app": "llm"}},
            "signals": [
                {"name": "junk", "query": "q1", "target": 10},
                {"name": "queue", "query": "q2", "target": 5},
            ],
        }
    )
    now = datetime.now(UTC)
    status = PolicyStatus.model_validate(
        {
            "difficulty": 50_000,
            "recommendations": [
                {"time": now - timedelta(seconds=15 * i), "difficulty": 40_000 + i}
                for i in range(20, 0, -1)
            ],
            "history": [
                {
                    "time": now - timedelta(seconds=60 * i),
                    "previous": 1000,
                    "difficulty": 2000,
                    "reason": "AboveTarget",
                }
                for i in range(20, 0, -1)
            ],
        }
    )
    return spec, status


def evaluation_cost() -> list[tuple[str, ...]]:
    spec, status = _spec_and_status()
    raw = status.model_dump(mode="json", by_alias=True)
    readings = {"junk": Sample(25.0), "queue": Sample(4.0)}

    def run_evaluate() -> None:
        for _ in range(EVALUATIONS):
            evaluate(spec=spec, status=status, readings=readings, now=datetime.now(UTC))

    def run_parse() -> None:
        for _ in range(EVALUATIONS):
            PolicyStatus.model_validate(raw)

    controller = best_seconds(run_evaluate, repeat=5) / EVALUATIONS
    parse = best_seconds(run_parse, repeat=5) / EVALUATIONS
    return [
        (
            "evaluate() (2 signals, full status)",
            f"{controller * 1e6:.0f} µs",
            f"{controller / parse:.2f}x",
        ),
        ("reference: parse the status", f"{parse * 1e6:.0f} µs", "1.00x"),
    ]


def _operator(kubeconfig: Path, metrics_port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    argv = [sys.executable, "-m", "powgate_operator", "--namespace", NAMESPACE]
    argv += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
    argv += ["--health-listen", f"127.0.0.1:{free_ports(1)[0]}"]
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _wait(check: Callable[[], bool], *, timeout: float = 60.0, step: float = 0.005) -> float:
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > timeout:
            raise TimeoutError("the operator did not react in time")
        time.sleep(step)
    return time.perf_counter() - started


def _policy(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PowPolicy",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}}, **spec},
    }


def _rendered(core: k8s.CoreV1Api, name: str) -> SidecarConfig | None:
    try:
        data = core.read_namespaced_config_map(config_map_name(name), NAMESPACE).data
    except k8s.ApiException:
        return None
    return None if not data else SidecarConfig.from_json(data["config.json"])


def _has_floor(core: k8s.CoreV1Api, name: str, floor: int) -> bool:
    config = _rendered(core, name)
    return config is not None and config.min_difficulty == floor


def _percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99, ordered[-1]


def reconcile_latency(api: k8s.ApiClient) -> list[tuple[str, ...]]:
    custom, core = k8s.CustomObjectsApi(api), k8s.CoreV1Api(api)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, _policy("edit", difficulty={"min": 1000, "max": 10**9})
    )
    _wait(lambda: _rendered(core, "edit") is not None)
    edits: list[float] = []
    for i in range(EDITS):
        floor = 2000 + i * 1000
        started = time.perf_counter()
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, "edit", {"spec": {"difficulty": {"min": floor}}}
        )
        _wait(functools.partial(_has_floor, core, "edit", floor))
        edits.append(time.perf_counter() - started)
    core.create_namespaced_config_map(
        NAMESPACE, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="reference"), data={"k": "0"})
    )
    writes: list[float] = []
    for i in range(EDITS):
        started = time.perf_counter()
        core.patch_namespaced_config_map("reference", NAMESPACE, {"data": {"k": str(i)}})
        writes.append(time.perf_counter() - started)
    e50, e99, emax = _percentiles(edits)
    w50, w99, wmax = _percentiles(writes)
    return [
        (
            "policy edit → config object updated",
            f"{e50 * 1e3:.0f} ms",
            f"{e99 * 1e3:.0f} ms",
            f"{emax * 1e3:.0f} ms",
            f"{e50 / w50:.1f}x",
        ),
        (
            "reference: one ConfigMap patch",
            f"{w50 * 1e3:.0f} ms",
            f"{w99 * 1e3:.0f} ms",
            f"{wmax * 1e3:.0f} ms",
            "1.0x",
        ),
    ]


def _histogram(text: str, name: str) -> list[tuple[float, float]]:
    buckets = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    return buckets


def _quantile(buckets: list[tuple[float, float]], q: float) -> float:
    total = buckets[-1][1]
    for bound, count in buckets:
        if count >= q * total:
            return bound
    return float("inf")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def schedule(
    api: k8s.ApiClient, metrics_port: int, pid: int, prometheus: str
) -> list[tuple[str, ...]]:
    custom = k8s.CustomObjectsApi(api)
    for i in range(POLICIES):
        # A constant query at its target: a real round trip to Prometheus and a steady
        # state, so each evaluation costs what a quiet production policy costs.
        body = _policy(
            f"p{i:03d}",
            prometheus={"address": prometheus, "timeoutSeconds": 2},
            signals=[{"name": "load", "query": "vector(5)", "target": 5}],
            evaluationIntervalSeconds=INTERVAL,
        )
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)

    def all_running() -> bool:
        listed = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
        assert isinstance(listed, dict)
        return sum(1 for p in listed["items"] if p.get("status", {}).get("signals")) >= POLICIES

    # Measure the steady state: every policy created and evaluated at least once.
    _wait(all_running, timeout=120, step=0.5)
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    before = _histogram(httpx.get(url).text, "powgate_operator_evaluation_lag_seconds")
    cpu_before = _cpu_seconds(pid)
    time.sleep(SCHEDULE_SECONDS)
    cpu = (_cpu_seconds(pid) - cpu_before) / SCHEDULE_SECONDS
    after = _histogram(httpx.get(url).text, "powgate_operator_evaluation_lag_seconds")
    window = [(le, count - dict(before).get(le, 0.0)) for le, count in after]
    done = window[-1][1]
    expected = POLICIES * SCHEDULE_SECONDS / INTERVAL
    label = f"{POLICIES} policies every {INTERVAL} s, {SCHEDULE_SECONDS} s"
    p50, p99 = _quantile(window, 0.5) * 1e3, _quantile(window, 0.99) * 1e3
    return [(label, f"{done:.0f} / {expected:.0f}", f"≤ {p50:g} ms", f"≤ {p99:g} ms", f"{cpu:.0%}")]


def main() -> None:
    print(table(("evaluation", "per call", "ratio"), evaluation_cost()))
    try:
        tools = Tools.locate(cache_dir())
    except ToolsMissingError as exc:
        print(f"\n(reconcile and schedule parts skipped: {exc})")
        return
    with (
        tempfile.TemporaryDirectory(prefix="bench-operator-") as folder,
        LocalCluster(root=Path(folder) / "cluster", tools=tools) as cluster,
    ):
        k8s_config.load_kube_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        api = k8s.ApiClient()
        crd = yaml.safe_load((ROOT / "crds" / "powpolicy.yaml").read_text())
        k8s.ApiextensionsV1Api(api).create_custom_resource_definition(crd)
        time.sleep(2)  # until the CRD is established
        k8s.CoreV1Api(api).create_namespace(
            k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE))
        )
        metrics_port = free_ports(1)[0]
        operator = _operator(cluster.kubeconfig, metrics_port, Path(folder) / "operator.log")
        try:
            print()
            print(
                table(
                    ("reconcile latency", "p50", "p99", "max", "p50 ratio"), reconcile_latency(api)
                )
            )
            print()
            header = ("schedule", "evaluations", "lag p50", "lag p99", "operator CPU")
            with PrometheusServer(root=Path(folder) / "prometheus") as prometheus:
                rows = schedule(api, metrics_port, operator.pid, prometheus.url)
            print(table(header, rows))
        finally:
            operator.send_signal(signal.SIGTERM)
            operator.wait(timeout=30)
