"""The stand-in and the load tool as real processes, driven through their command lines."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

STARTUP_TIMEOUT = 30.0


@pytest.fixture
def standin() -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "powgate_testbed.standin",
            "--listen",
            "127.0.0.1:0",
            "--concurrency",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        # The first line names the address the kernel picked for port 0.
        line = process.stdout.readline()
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        assert found, f"unexpected first line {line!r}"
        yield process, found.group(1)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=STARTUP_TIMEOUT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def served(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    return {
        sample.labels.get("status", sample.name): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "powgate_standin_requests_total"
    }


def test_load_tool_counts_agree_with_the_standin_metrics(
    standin: tuple[subprocess.Popen[str], str], tmp_path: Path
) -> None:
    process, url = standin
    output = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "powgate_testbed.load",
            "--target",
            url,
            "--duration",
            "30",
            "--max-requests",
            "20",
            "--legit-rate",
            "10",
            "--max-tokens",
            "4",
            "--stream",
            "--arrivals",
            "uniform",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text())
    legit = report["summary"]["legit"]
    # No proof of work in front of the stand-in: every request goes straight in.
    assert legit["sent"] == legit["admitted"] == 20
    assert legit["challenges"] == legit["hashes"] == 0
    assert served(url) == {"200": 20.0}
    assert "legit" in result.stdout
    assert sum(row["legit"]["admitted"] for row in report["series"]) == 20

    # SIGTERM drains and exits cleanly.
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=STARTUP_TIMEOUT) == 0


def test_busy_port_is_a_clear_error(standin: tuple[subprocess.Popen[str], str]) -> None:
    _, url = standin
    busy = url.removeprefix("http://")
    result = subprocess.run(
        [sys.executable, "-m", "powgate_testbed.standin", "--listen", busy],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert f"cannot listen on {busy}" in result.stderr
