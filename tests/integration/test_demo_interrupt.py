"""`make demo` interrupted: Ctrl-C while the stack runs stops everything it started.

Its own module (not test_demo.py's): `make test`'s workers run it beside the
quick demo, which takes minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client as k8s

from powgate_testbed.cluster import ClusterAccess

# Its two waits (below) bound a hang; together they outlast the suite's per-test limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: Bounds a hang of the interrupt test; never a measure of speed.
_WAIT = 180.0


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in command:
            found.append(int(entry.name))
    return found


def test_ctrl_c_tears_everything_down(
    cluster: ClusterAccess,
    prometheus_binary: Path,
    kube_client: k8s.ApiClient,
    tmp_path: Path,
) -> None:
    # A foreground job's SIGINT, as a terminal's Ctrl-C sends it: whoever started this
    # test may have left SIGINT ignored (a non-interactive shell's background job does,
    # and the child inherits it), and a demo that ignores it would run to its end.
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "powgate_testbed.demo",
            "--quick",
            "--no-baselines",
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--output",
            str(tmp_path),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=_default_sigint,
    ) as demo:
        assert demo.stdout is not None
        namespace = ""
        deadline = time.monotonic() + _WAIT
        try:
            # Wait until the first run is under way: the sidecars and the stand-in are up.
            for line in demo.stdout:
                if "namespace " in line:
                    namespace = line.split("namespace ", 1)[1].split(",", 1)[0]
                if line.startswith("run 1/"):
                    break
                assert time.monotonic() < deadline, "the demo's first run never started"
            else:
                pytest.fail("the demo ended before its first run")
            assert namespace, "the demo never reported its namespace"
            assert _processes_mentioning(namespace), "the operator and sidecars should be running"
            demo.send_signal(signal.SIGINT)
            rest, _ = demo.communicate(timeout=_WAIT)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
    assert demo.returncode == 130, rest
    assert "interrupted" in rest
    assert _processes_mentioning(namespace) == []
    assert _namespace_phase(kube_client, namespace) in ("Terminating", "Gone")


def _namespace_phase(kube_client: k8s.ApiClient, name: str) -> str:
    try:
        status = k8s.CoreV1Api(kube_client).read_namespace(name).status
    except k8s.ApiException as exc:
        if exc.status == 404:
            return "Gone"
        raise
    return str(status.phase if status is not None else None)
