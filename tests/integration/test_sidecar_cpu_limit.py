"""The sidecar sizes its ALTCHA v2 derivation pool from its container's CPU limit.

A real ``powgate sidecar`` process started inside a cgroup of this kernel
with a CFS quota of half a CPU, as a container runtime applies a pod's CPU
limit, reports the pool it started with: one thread, eight places. Needs a
writable CPU controller (root, cgroup v1 or v2 with ``cpu`` delegated to the
children of the root); skipped otherwise, with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _sidecar_process import start_sidecar

from powgate import KeyRing
from powgate.config import SidecarConfig
from powgate_testbed._process import stop_all

#: Half a CPU: 50 ms of every 100 ms.
QUOTA, PERIOD = 50_000, 100_000


def _cpu_hierarchy() -> tuple[Path, bool] | None:
    """(mount point, is v2) of the CPU controller, if this process may make a child there."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            kind, options = fields[fields.index("-") + 1], fields[fields.index("-") + 3]
            point = Path(fields[4])
            if kind == "cgroup" and "cpu" in options.split(","):
                return point, False
            if kind == "cgroup2" and "cpu" in (point / "cgroup.subtree_control").read_text():
                return point, True
    return None


@contextlib.contextmanager
def cpu_limited_cgroup() -> Iterator[Path]:
    found = _cpu_hierarchy()
    if found is None:
        pytest.skip("no writable CPU cgroup controller (needs root and cgroup cpu)")
    mount, v2 = found
    folder = mount / f"powgate-test-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir()
    except OSError as exc:  # a read-only cgroup file system (inside a container)
        pytest.skip(f"cannot make a cgroup under {mount}: {exc}")
    try:
        if v2:
            (folder / "cpu.max").write_text(f"{QUOTA} {PERIOD}")
        else:
            (folder / "cpu.cfs_period_us").write_text(str(PERIOD))
            (folder / "cpu.cfs_quota_us").write_text(str(QUOTA))
        yield folder
    finally:
        folder.rmdir()  # empty once its processes are gone


def test_a_sidecar_under_half_a_cpu_derives_in_one_thread(tmp_path: Path) -> None:
    config_file, key_file = tmp_path / "config.json", tmp_path / "keyring.json"
    config_file.write_text(SidecarConfig(policy="team/chat", algorithm="ARGON2ID").to_json())
    KeyRing.generate().save(key_file)
    with cpu_limited_cgroup() as cgroup:
        sidecar, endpoints = start_sidecar(
            tmp_path=tmp_path,
            upstream="http://127.0.0.1:9",
            key_file=key_file,
            config_args=["--config-file", str(config_file)],
            # Into the cgroup first, then the sidecar: as a runtime starts a container.
            launcher=["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup)],
        )
        try:
            endpoints.wait_ready(watch=[sidecar])
            members = (cgroup / "cgroup.procs").read_text().split()
            assert str(sidecar.record.pid) in members
        finally:
            stop_all([sidecar], grace=10)
    (started,) = [
        entry
        for line in sidecar.log_path.read_text().splitlines()
        if line.startswith("{")
        for entry in [json.loads(line)]
        if entry["message"] == "sidecar listening"
    ]
    assert (started["derivation_threads"], started["derivations_pending"]) == (1, 8)
