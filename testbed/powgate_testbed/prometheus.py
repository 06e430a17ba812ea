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
import re
import shutil
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
    "PrometheusError",
    "PrometheusNotFoundError",
    "PrometheusServer",
    "ScrapeTarget",
    "StartupError",
    "find_prometheus",
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


def _render_config(targets: Sequence[ScrapeTarget], *, interval: float) -> str:
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
        "scrape_configs": scrape_configs,
    }
    return yaml.safe_dump(config, sort_keys=False)


class PrometheusServer(Service):
    """A Prometheus process with its own configuration and data under `root`."""

    def __init__(
        self,
        *,
        root: Path,
        binary: Path | None = None,
        scrape_interval: float = 1.0,
        targets: Sequence[ScrapeTarget] = (),
    ) -> None:
        if scrape_interval <= 0:
            raise ValueError("scrape interval must be positive")
        self.root = root
        self._binary = binary
        self._interval = scrape_interval
        self._targets = list(targets)
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
        self.config_file.write_text(_render_config(self._targets, interval=self._interval))
        (port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{port}"
        self._process = ManagedProcess(
            name="prometheus",
            argv=[
                str(binary),
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
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
        rendered = _render_config(targets, interval=self._interval)
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
        # The discovered address, not the instance label, which a target's
        # own labels may override.
        return {(t["scrapePool"], t["discoveredLabels"]["__address__"]) for t in active}

    def _get(self, path: str) -> httpx.Response | None:
        try:
            response = httpx.get(f"{self.url}{path}", timeout=2.0)
        except httpx.HTTPError:
            return None
        return response if response.status_code == httpx.codes.OK else None
