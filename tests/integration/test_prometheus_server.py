"""Starting and stopping the Prometheus server, and its failure paths."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from powgate_testbed.prometheus import (
    PrometheusError,
    PrometheusNotFoundError,
    PrometheusServer,
    ScrapeTarget,
    StartupError,
    find_prometheus,
)


def test_missing_binary_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PrometheusNotFoundError, match="make system-deps"):
        find_prometheus()


def test_failed_start_reports_the_log(tmp_path: Path) -> None:
    broken = tmp_path / "prometheus"
    broken.write_text("#!/bin/sh\necho 'unknown flag: --web.enable-lifecycle' >&2\nexit 2\n")
    broken.chmod(0o755)
    server = PrometheusServer(root=tmp_path / "prom", binary=broken)
    with pytest.raises(StartupError) as raised:
        server.start()
    assert "prometheus exited with code 2" in str(raised.value)
    assert "unknown flag" in str(raised.value)


def test_targets_need_a_running_server(tmp_path: Path) -> None:
    server = PrometheusServer(root=tmp_path)
    with pytest.raises(PrometheusError, match="not running"):
        server.set_targets([ScrapeTarget(job="j", address="127.0.0.1:9")])


def test_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        PrometheusServer(root=tmp_path, scrape_interval=0)


def test_initial_targets_and_clean_stop(tmp_path: Path, prometheus_binary: Path) -> None:
    target = ScrapeTarget(job="self", address="127.0.0.1:9", labels={"role": "none"})
    with PrometheusServer(
        root=tmp_path, binary=prometheus_binary, scrape_interval=0.5, targets=[target]
    ) as server:
        config = server.config_file.read_text()
        assert "scrape_interval: 500ms" in config
        assert "127.0.0.1:9" in config
        assert httpx.get(f"{server.url}/-/ready").status_code == httpx.codes.OK
        url = server.url
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/-/ready")
