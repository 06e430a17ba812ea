"""The derivation pool's default size: a container's CPU limit, read from its cgroup.

Table-driven over the layouts a process meets: cgroup v1 and v2, the
container's own view (its cgroup is the mount's top) and the host's (the
whole hierarchy, a limit possibly on an ancestor), hybrid hosts, and files
that are missing or not numbers. Each case is a fake ``/proc/self`` and
cgroup tree under a temporary folder (the seam is ``proc``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from powgate import DerivationPool
from powgate._pool import WAITING_PER_THREAD, cpu_limit, default_threads

V1_CPU = "cgroup cgroup rw,cpu,cpuacct"
V2 = "cgroup2 cgroup2 rw,nsdelegate"

#: name: (/proc/self/cgroup, [(mount root, mount folder, type and options)],
#:        {file under the fake root: content}, expected limit)
CASES: dict[str, tuple[str, list[tuple[str, str, str]], dict[str, str], float | None]] = {
    "v1 container view": (
        "4:cpu,cpuacct:/kubepods/pod1/c1\n3:memory:/kubepods/pod1/c1\n",
        [("/kubepods/pod1/c1", "cpu", V1_CPU)],
        {"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"},
        1.5,
    ),
    "v1 host view, the limit on an ancestor": (
        "4:cpu,cpuacct:/kubepods/pod1/c1\n",
        [("/", "cpu", V1_CPU)],
        {
            "cpu/kubepods/pod1/c1/cpu.cfs_quota_us": "-1",
            "cpu/kubepods/pod1/c1/cpu.cfs_period_us": "100000",
            "cpu/kubepods/pod1/cpu.cfs_quota_us": "50000",
            "cpu/kubepods/pod1/cpu.cfs_period_us": "100000",
            "cpu/cpu.cfs_quota_us": "-1",
            "cpu/cpu.cfs_period_us": "100000",
        },
        0.5,
    ),
    "v1 unlimited": (
        "1:cpu:/\n",
        [("/", "cpu", "cgroup cgroup rw,cpu")],
        {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},
        None,
    ),
    "v1 memory only mounted": (
        "4:cpu,cpuacct:/c1\n3:memory:/c1\n",
        [("/c1", "memory", "cgroup cgroup rw,memory")],
        {"memory/cpu.cfs_quota_us": "100000", "memory/cpu.cfs_period_us": "100000"},
        None,
    ),
    "v2 container view": (
        "0::/\n",
        [("/", "unified", V2)],
        {"unified/cpu.max": "200000 100000\n"},
        2.0,
    ),
    "v2 no limit": ("0::/\n", [("/", "unified", V2)], {"unified/cpu.max": "max 100000\n"}, None),
    "v2 host view, the lowest of the way up": (
        "0::/kubepods.slice/pod1.slice/c1.scope\n",
        [("/", "unified", V2)],
        {
            "unified/kubepods.slice/pod1.slice/c1.scope/cpu.max": "300000 100000",
            "unified/kubepods.slice/pod1.slice/cpu.max": "100000 100000",
            "unified/kubepods.slice/cpu.max": "max 100000",
        },
        1.0,
    ),
    "hybrid host: v1 cpu unlimited, v2 without the cpu controller": (
        "1:cpu:/\n0::/\n",
        [("/", "cpu", "cgroup cgroup rw,cpu"), ("/", "unified", V2)],
        {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},
        None,
    ),
    "a mount point with a space": (
        "0::/\n",
        [("/", "cgroup v2", V2)],
        {"cgroup v2/cpu.max": "50000 100000"},
        0.5,
    ),
    "not numbers": ("0::/\n", [("/", "unified", V2)], {"unified/cpu.max": "lots of\n"}, None),
    "a zero period": (
        "1:cpu:/\n",
        [("/", "cpu", "cgroup cgroup rw,cpu")],
        {"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "0"},
        None,
    ),
    "no cgroup files at all": ("0::/\n", [("/", "unified", V2)], {}, None),
    "garbled tables": ("nonsense\n", [], {}, None),
}


def fake_proc(
    tmp_path: Path, memberships: str, mounts: list[tuple[str, str, str]], files: dict[str, str]
) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(memberships)
    lines = ["22 1 0:21 / /proc rw - proc proc rw", "garbage line"]
    for i, (root, folder, kind) in enumerate(mounts):
        point = str(tmp_path / folder).replace(" ", "\\040")
        lines.append(f"{30 + i} 23 0:{28 + i} {root} {point} rw,relatime shared:9 - {kind}")
    (proc / "mountinfo").write_text("\n".join(lines) + "\n")
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return proc


@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_limit(case: str, tmp_path: Path) -> None:
    memberships, mounts, files, expected = CASES[case]
    assert cpu_limit(proc=fake_proc(tmp_path, memberships, mounts, files)) == expected


def test_no_proc_means_no_limit(tmp_path: Path) -> None:
    assert cpu_limit(proc=tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("quota", "available", "processes", "threads"),
    [
        ("150000 100000", 8, 1, 2),  # 1.5 CPUs: rounded up
        ("150000 100000", 8, 2, 1),  # shared among two processes
        ("600000 100000", 2, 1, 2),  # never above the CPUs the process may run on
        ("10000 100000", 8, 1, 1),  # a tenth of a CPU: still one thread
        ("800000 100000", 16, 3, 3),  # 8 over 3 processes, rounded up
        ("max 100000", 16, 1, 4),  # no limit: the CPUs available, at most 4
        ("max 100000", 2, 1, 2),
        ("max 100000", 16, 8, 1),
    ],
)
def test_default_threads(
    quota: str,
    available: int,
    processes: int,
    threads: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proc = fake_proc(tmp_path, "0::/\n", [("/", "unified", V2)], {"unified/cpu.max": quota})
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(available)))
    assert default_threads(processes=processes, proc=proc) == threads


def test_a_pool_sizes_itself_from_this_process() -> None:
    pool = DerivationPool()
    try:
        assert pool.workers == default_threads()
        assert pool.max_pending == pool.workers * WAITING_PER_THREAD
    finally:
        pool.close()
