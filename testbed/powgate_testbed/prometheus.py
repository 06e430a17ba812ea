"""A throw-away Prometheus server on loopback, with scrape targets set at run time.

    with PrometheusServer(root=tmp_path) as prom:
        prom.set_targets([ScrapeTarget(job="sidecar", address="127.0.0.1:9100")])
        # query prom.url with prometheus-api-client

It runs the system's `prometheus` binary (Debian's package, installed by
`make system-deps`) with its own generated configuration, data folder and a
short scrape interval, so tests see a new sample within about a second.
Targets are replaced by rewriting the configuration and asking the running
server to reload it (`--web.enable-lifecycle`): no restart, no lost samples.
"""

from __future__ import annotations

import atexit
import json
import re
import shutil
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from powgate_testbed._process import (
    ManagedProcess,
    Service,
    StartupError,
    free_ports,
    stop_all,
    tail,
    wait_until,
)

__all__ = [
    "PodDiscovery",
    "PrometheusError",
    "PrometheusNotFoundError",
    "PrometheusServer",
    "ScrapeTarget",
    "StartupError",
    "find_prometheus",
    "pod_monitor_scrape_configs",
]

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ADDRESS = re.compile(r"[A-Za-z0-9.\-]+:[0-9]{1,5}")
_START_TIMEOUT = 30.0
_STOP_GRACE = 5.0
_LOG_TAIL_LINES = 25
_POLL_INTERVAL = 0.1


class PrometheusNotFoundError(FileNotFoundError):
    """No `prometheus` binary on this machine."""


class PrometheusError(RuntimeError):
    """Prometheus refused a configuration; the previous one stays in effect."""


def find_prometheus() -> Path:
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusNotFoundError(
            "no `prometheus` binary on PATH; run `make system-deps` (Debian package prometheus)"
        )
    return Path(found)


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """One `/metrics` endpoint; targets with the same job share one scrape config."""

    job: str
    address: str
    metrics_path: str = "/metrics"
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Checked here so a bad target fails at the caller with a clear
        # message, before the running server's configuration is touched.
        if not self.job:
            raise ValueError("a scrape target needs a job name")
        if not _ADDRESS.fullmatch(self.address):
            raise ValueError(f"scrape address must be host:port, got {self.address!r}")
        if not 0 < int(self.address.rsplit(":", 1)[1]) < 65536:
            raise ValueError(f"scrape port out of range in {self.address!r}")
        if not self.metrics_path.startswith("/"):
            raise ValueError(f"metrics path must start with '/', got {self.metrics_path!r}")
        for name in self.labels:
            if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
                raise ValueError(f"invalid label name {name!r}")


def _render_config(
    targets: Sequence[ScrapeTarget],
    *,
    interval: float,
    discovery: Sequence[Mapping[str, Any]] = (),
) -> str:
    jobs: dict[str, list[ScrapeTarget]] = {}
    for target in targets:
        jobs.setdefault(target.job, []).append(target)
    scrape_configs = []
    for job, members in jobs.items():
        paths = {t.metrics_path for t in members}
        if len(paths) > 1:
            raise ValueError(
                f"job {job!r} has targets with different metrics paths: {sorted(paths)}"
            )
        scrape_configs.append(
            {
                "job_name": job,
                "metrics_path": paths.pop(),
                "static_configs": [
                    {"targets": [t.address], "labels": dict(t.labels)} for t in members
                ],
            }
        )
    # Prometheus durations take no fractions ("1.5s" is invalid): milliseconds.
    seconds = f"{max(1, round(interval * 1000))}ms"
    config: dict[str, Any] = {
        # The timeout may not exceed the interval; a target slower than one
        # interval is down as far as these tests are concerned.
        "global": {
            "scrape_interval": seconds,
            "scrape_timeout": seconds,
            "evaluation_interval": seconds,
        },
        "scrape_configs": [*scrape_configs, *(dict(d) for d in discovery)],
    }
    return yaml.safe_dump(config, sort_keys=False)


def _label_name(name: str) -> str:
    """A label key as a Prometheus meta label suffix (`powgate.dev/x` → `powgate_dev_x`)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def pod_monitor_scrape_configs(
    pod_monitor: Mapping[str, Any], *, pods: Path
) -> list[dict[str, Any]]:
    """What the Prometheus Operator makes of a PodMonitor: one scrape config per endpoint.

    For a Prometheus without the operator (the testbed's): targets are every
    container port of every pod, with the meta labels Prometheus' Kubernetes
    discovery gives them, from the file `pods` (`PodDiscovery` writes it:
    Debian's Prometheus is built without Kubernetes discovery), kept or
    dropped by relabelling as the operator does it: the selector's labels and
    expressions, the namespaces, the endpoint's named container port and path;
    `namespace`, `pod` and `container` become target labels.
    """
    meta, spec = pod_monitor["metadata"], pod_monitor["spec"]
    selector = spec.get("selector") or {}
    relabel: list[dict[str, Any]] = []
    for key, value in (selector.get("matchLabels") or {}).items():
        relabel.append(_keep_label(key, [str(value)], action="keep"))
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        present = f"__meta_kubernetes_pod_labelpresent_{_label_name(key)}"
        if operator in ("Exists", "DoesNotExist"):
            action = "keep" if operator == "Exists" else "drop"
            relabel.append({"action": action, "source_labels": [present], "regex": "true"})
        elif operator in ("In", "NotIn"):
            action = "keep" if operator == "In" else "drop"
            relabel.append(_keep_label(key, expression.get("values") or [], action=action))
        else:
            raise ValueError(f"unknown selector operator {operator!r}")
    namespaces = spec.get("namespaceSelector") or {}
    if not namespaces.get("any"):
        names = list(namespaces.get("matchNames") or [meta["namespace"]])
        relabel.append(
            {
                "action": "keep",
                "source_labels": ["__meta_kubernetes_namespace"],
                "regex": "|".join(re.escape(n) for n in names),
            }
        )
    discovery = {"files": [str(pods)], "refresh_interval": "1s"}
    configs = []
    for index, endpoint in enumerate(spec["podMetricsEndpoints"]):
        config: dict[str, Any] = {
            "job_name": f"podMonitor/{meta['namespace']}/{meta['name']}/{index}",
            "metrics_path": endpoint.get("path", "/metrics"),
            "file_sd_configs": [discovery],
            "relabel_configs": [
                *relabel,
                {
                    "action": "keep",
                    "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                    "regex": endpoint["port"],
                },
                *(
                    {"source_labels": [f"__meta_kubernetes_{source}"], "target_label": target}
                    for source, target in (
                        ("namespace", "namespace"),
                        ("pod_name", "pod"),
                        ("pod_container_name", "container"),
                    )
                ),
            ],
        }
        if "interval" in endpoint:
            config["scrape_interval"] = endpoint["interval"]
            config["scrape_timeout"] = endpoint["interval"]
        configs.append(config)
    return configs


class PodDiscovery(Service):
    """Prometheus' Kubernetes pod discovery, for a Prometheus built without it.

    Lists the cluster's pods every `interval` seconds and writes them to
    `path` in Prometheus' file discovery format: one target per container
    port (`<pod IP>:<port>`), with the `__meta_kubernetes_*` labels that
    Prometheus' own role-pod discovery sets, so the same relabelling applies.
    """

    def __init__(
        self, *, path: Path, server: str, context: ssl.SSLContext, interval: float = 1.0
    ) -> None:
        self.path = path
        self._server = server
        self._context = context
        self._interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write([])
        self._thread = threading.Thread(target=self._run, name="pod-discovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        with httpx.Client(base_url=self._server, verify=self._context, timeout=5) as api:
            while not self._stopping.is_set():
                try:
                    response = api.get("/api/v1/pods")
                    response.raise_for_status()
                    self._write(response.json()["items"])
                except (httpx.HTTPError, ValueError, KeyError):
                    self.errors += 1  # the last good file stays in force
                self._stopping.wait(self._interval)

    def _write(self, pods: Sequence[Mapping[str, Any]]) -> None:
        groups = [group for pod in pods for group in _pod_targets(pod)]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.path)


def _pod_targets(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    ip = status.get("podIP")
    if not ip:
        return []
    common = {
        "__meta_kubernetes_namespace": meta["namespace"],
        "__meta_kubernetes_pod_name": meta["name"],
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_node_name": spec.get("nodeName", ""),
        "__meta_kubernetes_pod_phase": status.get("phase", ""),
    }
    for key, value in (meta.get("labels") or {}).items():
        common[f"__meta_kubernetes_pod_label_{_label_name(key)}"] = value
        common[f"__meta_kubernetes_pod_labelpresent_{_label_name(key)}"] = "true"
    groups = []
    # Native sidecars are init containers that keep running; Prometheus lists them too.
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        for port in container.get("ports") or []:
            labels = {
                **common,
                "__meta_kubernetes_pod_container_name": container["name"],
                "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
            }
            groups.append({"targets": [f"{ip}:{port['containerPort']}"], "labels": labels})
    return groups


def _keep_label(key: str, values: Sequence[str], *, action: str) -> dict[str, Any]:
    name = _label_name(key)
    return {
        "action": action,
        "source_labels": [
            f"__meta_kubernetes_pod_label_{name}",
            f"__meta_kubernetes_pod_labelpresent_{name}",
        ],
        "regex": f"({'|'.join(re.escape(v) for v in values)});true",
    }


class PrometheusServer(Service):
    """A Prometheus process with its own configuration and data under `root`."""

    def __init__(
        self,
        *,
        root: Path,
        binary: Path | None = None,
        scrape_interval: float = 1.0,
        targets: Sequence[ScrapeTarget] = (),
        discovery: Sequence[Mapping[str, Any]] = (),
        host: str = "127.0.0.1",
    ) -> None:
        """`discovery`: scrape configs that find their targets themselves (e.g.
        `pod_monitor_scrape_configs`), kept as they are; `host`: the address to
        listen on (another than loopback when pods must reach the server)."""
        if scrape_interval <= 0:
            raise ValueError("scrape interval must be positive")
        self.root = root
        self._binary = binary
        self._interval = scrape_interval
        self._targets = list(targets)
        self._discovery = [dict(d) for d in discovery]
        self._host = host
        self._process: ManagedProcess | None = None
        self.url = ""

    @property
    def config_file(self) -> Path:
        return self.root / "prometheus.yml"

    @property
    def log_file(self) -> Path:
        return self.root / "prometheus.log"

    @property
    def targets(self) -> list[ScrapeTarget]:
        return list(self._targets)

    def start(self) -> None:
        binary = self._binary or find_prometheus()
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            _render_config(self._targets, interval=self._interval, discovery=self._discovery)
        )
        (port,) = free_ports(1)
        self.url = f"http://{self._host}:{port}"
        self._process = ManagedProcess(
            name="prometheus",
            argv=[
                str(binary),
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address={self._host}:{port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            log_path=self.log_file,
            die_with_parent=True,
        )
        atexit.register(self.stop)
        try:
            wait_until(
                lambda: self._get("/-/ready") is not None,
                what="prometheus /-/ready",
                timeout=_START_TIMEOUT,
                watch=[self._process],
            )
        except StartupError as exc:
            self.stop()
            raise StartupError(
                f"{exc}\n--- {self.log_file.name} ---\n{tail(self.log_file, lines=_LOG_TAIL_LINES)}"
            ) from exc

    def stop(self) -> None:
        if self._process is not None:
            stop_all([self._process], grace=_STOP_GRACE)
            self._process = None
        atexit.unregister(self.stop)

    def set_targets(self, targets: Sequence[ScrapeTarget], *, timeout: float = 10.0) -> None:
        """Replace the scrape targets and wait until Prometheus has picked them up.

        If Prometheus rejects the configuration, the previous file is put back
        (the server keeps running with it) and `PrometheusError` is raised.
        """
        if self._process is None:
            raise PrometheusError("the server is not running; call start() first")
        rendered = _render_config(targets, interval=self._interval, discovery=self._discovery)
        previous = self.config_file.read_text()
        self.config_file.write_text(rendered)
        response = httpx.post(f"{self.url}/-/reload", timeout=timeout)
        if response.status_code != httpx.codes.OK:
            self.config_file.write_text(previous)
            raise PrometheusError(f"reload refused: {response.text.strip()}")
        self._targets = list(targets)
        wanted = {(t.job, t.address) for t in targets}
        deadline = time.monotonic() + timeout
        while self._active_targets() != wanted:
            if time.monotonic() > deadline:
                raise PrometheusError(f"targets not active after {timeout:.0f} s: {sorted(wanted)}")
            time.sleep(_POLL_INTERVAL)

    def _active_targets(self) -> set[tuple[str, str]]:
        response = self._get("/api/v1/targets?state=active")
        if response is None:
            return set()
        active = response.json()["data"]["activeTargets"]
        discovered = {d["job_name"] for d in self._discovery}
        # The discovered address, not the instance label, which a target's
        # own labels may override.
        return {
            (t["scrapePool"], t["discoveredLabels"]["__address__"])
            for t in active
            if t["scrapePool"] not in discovered
        }

    def _get(self, path: str) -> httpx.Response | None:
        try:
            response = httpx.get(f"{self.url}{path}", timeout=2.0)
        except httpx.HTTPError:
            return None
        return response if response.status_code == httpx.codes.OK else None
