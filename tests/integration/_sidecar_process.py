"""`powgate sidecar` as a real process, for end-to-end tests that put it before an upstream.

`start_sidecar` runs the console script of this environment, configured
through ``POWGATE_*`` variables as the injected container is, on free
loopback ports; `SidecarEndpoints` reads its metrics back.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from powgate_testbed._process import ManagedProcess, free_ports

__all__ = ["SidecarEndpoints", "metric_value", "powgate", "ready", "start_sidecar"]


def powgate(*args: str) -> list[str]:
    """``powgate ARGS``: the console script of this environment, as a container runs it."""
    return [str(Path(sys.executable).with_name("powgate")), *args]


def ready(url: str) -> bool:
    """Whether ``url`` answers 200 (a probe; refused connections are "not yet")."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def metric_value(url: str, sample: str) -> float:
    """The value of one exposition line of ``url/metrics``: ``name{label="v"}`` (0 if absent)."""
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@dataclass(frozen=True)
class SidecarEndpoints:
    """Where a started sidecar listens: the proxy and its metrics/probe port."""

    url: str
    metrics_url: str

    def metric(self, sample: str) -> float:
        return metric_value(self.metrics_url, sample)

    def requests(self, *, route: str, outcome: str, reason: str) -> float:
        """``powgate_requests_total`` for one route, outcome and reason."""
        return self.metric(
            f'powgate_requests_total{{outcome="{outcome}",reason="{reason}",route="{route}"}}'
        )


def start_sidecar(
    *,
    tmp_path: Path,
    upstream: str,
    key_file: Path,
    config_args: Sequence[str],
    extra: Sequence[str] = (),
) -> tuple[ManagedProcess, SidecarEndpoints]:
    """Start ``powgate sidecar`` in front of ``upstream``; the caller waits for ``/readyz``."""
    port, metrics_port = free_ports(2)
    process = ManagedProcess(
        name="sidecar",
        argv=[
            "env",
            f"POWGATE_LISTEN=127.0.0.1:{port}",
            f"POWGATE_UPSTREAM={upstream}",
            f"POWGATE_METRICS_LISTEN=127.0.0.1:{metrics_port}",
            f"POWGATE_KEY_FILE={key_file}",
            "POWGATE_HEADER_TIMEOUT=1",
            *powgate("sidecar", *config_args, *extra),
        ],
        log_path=tmp_path / "sidecar.log",
        die_with_parent=True,
    )
    return process, SidecarEndpoints(
        url=f"http://127.0.0.1:{port}", metrics_url=f"http://127.0.0.1:{metrics_port}"
    )
