"""The control-plane starter leaves no process behind, however its owner ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from powgate_testbed._netns import node_cgroups, node_folders, node_network_possible
from powgate_testbed._process import ProcessRecord, process_alive
from powgate_testbed.cluster import (
    LocalCluster,
    StartupError,
    Tools,
    ToolsMissingError,
    cache_dir,
    reap_stale_runs,
)
from powgate_testbed.cluster import main as cluster_main
from powgate_testbed.images import image_dir
from powgate_testbed.node import NodeTools, NodeToolsMissingError

INTEGRATION_DIR = Path(__file__).parent
_DEADLINE = 60.0


def _records(root: Path) -> list[ProcessRecord]:
    state = json.loads((root / "state.json").read_text())
    return [ProcessRecord.from_json(p) for p in state["processes"]]


def _wait_all_gone(records: list[ProcessRecord]) -> None:
    deadline = time.monotonic() + _DEADLINE
    while any(process_alive(r) for r in records):
        if time.monotonic() > deadline:
            alive = [r.name for r in records if process_alive(r)]
            pytest.fail(f"still running after {_DEADLINE:.0f} s: {alive}")
        time.sleep(0.1)


@pytest.fixture
def private_cache(tmp_path: Path, tools: Tools) -> Path:
    """A cache folder of its own that shares the built binaries."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "bin").symlink_to(tools.etcd.parent)
    (cache / "share").symlink_to(tools.kwok_stages.parents[1])
    return cache


@pytest.fixture
def child_env(private_cache: Path) -> dict[str, str]:
    env = dict(os.environ, POWGATE_CACHE=str(private_cache))
    env.pop("CI", None)
    return env


def test_missing_tools_point_to_make(tmp_path: Path) -> None:
    with pytest.raises(ToolsMissingError, match="run `make tools`"):
        Tools.locate(tmp_path)


def _broken_tools(folder: Path) -> Tools:
    """Every binary is a script that complains and exits 3."""
    broken = folder / "broken"
    broken.write_text("#!/bin/sh\necho 'cannot start: disk on fire' >&2\nexit 3\n")
    broken.chmod(0o755)
    return Tools(
        etcd=broken,
        kube_apiserver=broken,
        kube_controller_manager=broken,
        kube_scheduler=broken,
        kwok=broken,
        kwok_stages=broken,
    )


def test_failed_start_reports_logs_and_cleans_up(tmp_path: Path) -> None:
    root = tmp_path / "run"
    with pytest.raises(StartupError) as raised:
        LocalCluster(root=root, tools=_broken_tools(tmp_path)).start()
    assert "etcd exited with code 3" in str(raised.value)
    assert "cannot start: disk on fire" in str(raised.value)
    assert sorted(p.name for p in root.iterdir()) == ["logs"]


def test_nodes_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one node"):
        LocalCluster(root=tmp_path, tools=_broken_tools(tmp_path), nodes=0)


@pytest.mark.slow
def test_cli_up_status_down(private_cache: Path, child_env: dict[str, str]) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "powgate_testbed.cluster", *args],
            env=child_env,
            capture_output=True,
            text=True,
            timeout=_DEADLINE * 2,
            check=False,
        )

    root = private_cache / "cluster"
    up = run("up", "--nodes", "1")
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == str(root / "kubeconfig")
    first = _records(root)
    assert all(process_alive(r) for r in first), "up must leave the cluster running"
    assert run("status").returncode == 0

    # A second up replaces the first cluster instead of leaving it behind.
    assert run("up", "--nodes", "1").returncode == 0
    _wait_all_gone(first)
    second = _records(root)

    down = run("down")
    assert down.returncode == 0
    assert "kube-apiserver" in down.stdout
    _wait_all_gone(second)
    assert sorted(p.name for p in root.iterdir()) == ["logs"]
    assert (root / "logs" / "kube-apiserver.log").stat().st_size > 0
    status = run("status")
    assert status.returncode == 1
    assert "no cluster" in status.stdout


def test_cli_reports_missing_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWGATE_CACHE", str(tmp_path))
    assert cluster_main(["up"]) == 1
    assert "run `make tools`" in capsys.readouterr().err
    assert cache_dir() == tmp_path


@pytest.mark.parametrize("content", ["{not json", '{"processes": [{"pid": "x"}]}', "[]"])
def test_unreadable_state_is_reported_and_replaced(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    content: str,
) -> None:
    root = tmp_path / "cluster"
    root.mkdir()
    (root / "state.json").write_text(content)
    monkeypatch.setenv("POWGATE_CACHE", str(tmp_path))
    assert cluster_main(["down"]) == 0
    captured = capsys.readouterr()
    assert "ignoring unreadable" in captured.err
    assert "nothing was running" in captured.out
    assert not (root / "state.json").exists()


def test_reaping_spares_live_runs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    broken = runs / "broken"
    broken.mkdir(parents=True)
    (broken / "state.json").write_text("{")
    orphaned = runs / "orphaned"
    orphaned.mkdir()
    (orphaned / "logs").mkdir()
    live = runs / "live"
    live.mkdir()
    owner = ProcessRecord.of(name="owner", pid=os.getpid())
    state = {"server": "", "owner": owner.to_json(), "processes": []}
    (live / "state.json").write_text(json.dumps(state))

    reap_stale_runs(runs)
    assert sorted(p.name for p in runs.iterdir()) == ["live"]


def test_runs_starting_together_reap_a_dead_run_once(tmp_path: Path) -> None:
    """Parallel test workers each reap the cache's dead runs as they start."""
    runs = tmp_path / "runs"
    dead = runs / "dead"
    for folder in range(20):
        files = dead / "etcd" / f"wal{folder}"
        files.mkdir(parents=True)
        for name in range(100):
            (files / str(name)).write_bytes(b"x")
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def reap() -> None:
        start.wait()
        try:
            reap_stale_runs(runs)
        except BaseException as exc:
            errors.append(exc)

    reapers = [threading.Thread(target=reap) for _ in range(start.parties)]
    for reaper in reapers:
        reaper.start()
    for reaper in reapers:
        reaper.join()
    assert errors == []
    assert list(runs.iterdir()) == []


@pytest.fixture
def owner_script(tmp_path: Path) -> Path:
    script = tmp_path / "owner.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            from pathlib import Path
            from powgate_testbed.cluster import LocalCluster, Tools, cache_dir

            cluster = LocalCluster(root=Path(sys.argv[1]), tools=Tools.locate(cache_dir()), nodes=1)
            cluster.start()
            print("ready", flush=True)
            time.sleep(600)
            """
        )
    )
    return script


@pytest.mark.slow
def test_killed_owner_takes_its_processes_along(
    private_cache: Path, child_env: dict[str, str], owner_script: Path
) -> None:
    runs = private_cache / "clusters"
    with subprocess.Popen(
        [sys.executable, str(owner_script), str(runs / "victim")],
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as owner:
        try:
            assert owner.stdout is not None
            assert owner.stdout.readline().strip() == "ready"
            records = _records(runs / "victim")
            assert all(process_alive(r) for r in records)
        finally:
            # SIGKILL: no handler, no atexit, no finally runs in the owner.
            owner.kill()
    _wait_all_gone(records)
    reap_stale_runs(runs)
    assert not (runs / "victim").exists()


@pytest.fixture
def node_owner_script(tmp_path: Path) -> Path:
    script = tmp_path / "node_owner.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            from pathlib import Path
            from kubernetes import client, config
            from powgate_testbed.cluster import LocalCluster, Tools, cache_dir
            from powgate_testbed.node import NodeTools, RealNode

            cache = cache_dir()
            cluster = LocalCluster(
                root=Path(sys.argv[1]), tools=Tools.locate(cache), nodes=1, node_network=True
            )
            cluster.start()
            node = RealNode(cluster=cluster, tools=NodeTools.locate(cache))
            node.start()
            core = client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
            pod = {
                "metadata": {"name": "held"},
                "spec": {
                    "nodeSelector": node.selector,
                    "tolerations": [node.toleration],
                    "containers": [
                        {"name": "app", "image": node.image("standin"), "imagePullPolicy": "Never"}
                    ],
                },
            }
            core.create_namespaced_pod("default", pod)
            while core.read_namespaced_pod("held", "default").status.phase != "Running":
                time.sleep(0.2)
            print("ready", flush=True)
            time.sleep(600)
            """
        )
    )
    return script


@pytest.fixture
def real_node_ready(private_cache: Path) -> None:
    """The real node's parts, shared with the private cache (or a skip, a failure under CI)."""
    (private_cache / "images").symlink_to(image_dir(cache_dir()))
    why = node_network_possible()
    try:
        NodeTools.locate(private_cache)
    except NodeToolsMissingError as exc:
        why = str(exc)
    if why and os.environ.get("CI"):
        pytest.fail(why)
    if why:
        pytest.skip(why)


def _mounts_under(*folders: Path) -> list[str]:
    prefixes = tuple(str(folder.resolve()) for folder in folders)
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if line.split()[4].startswith(prefixes)]


@pytest.mark.slow
def test_a_killed_owner_of_a_real_node_leaves_nothing_after_the_next_reap(
    private_cache: Path, child_env: dict[str, str], node_owner_script: Path, real_node_ready: None
) -> None:
    """The hardest case: the owner dies at once, its running pod's container and
    the runtime's shim are no children of it, and hold mounts, cgroups and the
    node's network namespace; the next run's reaping removes all of it."""
    runs = private_cache / "clusters"
    victim = runs / "victim"
    errors = private_cache / "node_owner.err"
    with (
        errors.open("w") as stderr,
        subprocess.Popen(
            [sys.executable, str(node_owner_script), str(victim)],
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        ) as owner,
    ):
        try:
            assert owner.stdout is not None
            assert owner.stdout.readline().strip() == "ready", errors.read_text()[-3000:]
            state = json.loads((victim / "state.json").read_text())
            interface, inode = state["node_network"]["interface"], state["node_network"]["inode"]
            containers = node_cgroups(victim)
            assert containers  # the pause and the app container
            assert _mounts_under(*node_folders(victim))  # pod volumes, container file systems
        finally:
            owner.kill()  # SIGKILL: no handler, no atexit, no finally runs in the owner.
    reaped_at = _boot_ticks()
    reap_stale_runs(runs)
    assert not victim.exists()
    assert not _mounts_under(*node_folders(victim))
    # The kernel may hand the freed namespace's inode number to a namespace made
    # since (another run's node on this machine): only processes older than the
    # reap can be the victim's.
    leftovers = [
        pid
        for pid in os.listdir("/proc")
        if pid.isdigit() and _netns_inode(pid) == inode and _started_before(pid, reaped_at)
    ]
    assert leftovers == []
    # The link goes with the namespace, which the kernel removes in the background.
    deadline = time.monotonic() + _DEADLINE
    while Path(f"/sys/class/net/{interface}").exists():
        assert time.monotonic() < deadline, f"{interface} still there"
        time.sleep(0.1)
    # A cgroup can only be removed once no process is left in it: the
    # containers' processes are gone too.
    for cgroup in containers:
        assert not Path(f"/sys/fs/cgroup/memory{cgroup}").exists()


def _boot_ticks() -> int:
    """Now, in the clock ticks since boot that /proc/<pid>/stat counts start times in."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))


def _started_before(pid: str, ticks: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # gone
    # Field 22 (start time); the command name (field 2) may hold spaces and parentheses.
    return int(stat.rpartition(")")[2].split()[19]) <= ticks


def _netns_inode(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


@pytest.fixture
def interrupted_test(tmp_path: Path) -> Path:
    test_file = tmp_path / "test_hold.py"
    test_file.write_text(
        textwrap.dedent(
            """
            import time

            def test_hold(cluster):
                print("HOLDING", flush=True)
                time.sleep(600)
            """
        )
    )
    return test_file


def _pytest_child(test_file: Path, *, env: dict[str, str]) -> subprocess.Popen[str]:
    # This folder's conftest is loaded as a plugin, so the child run uses
    # the very fixtures under test.
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "conftest",
            "-p",
            "no:cacheprovider",
            "-s",
            "-q",
            "-ra",
            str(test_file),
        ],
        cwd=test_file.parent,
        # This folder, and tests/ for the helpers the conftest imports (`waiting`).
        env=dict(
            env, PYTHONPATH=os.pathsep.join([str(INTEGRATION_DIR), str(INTEGRATION_DIR.parent)])
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture
def child_pytest(
    interrupted_test: Path, child_env: dict[str, str]
) -> Iterator[subprocess.Popen[str]]:
    with _pytest_child(interrupted_test, env=child_env) as child:
        yield child
        child.kill()


@pytest.mark.slow
def test_terminated_test_run_tears_the_cluster_down(
    private_cache: Path, child_pytest: subprocess.Popen[str]
) -> None:
    assert child_pytest.stdout is not None
    output = []
    for line in child_pytest.stdout:
        output.append(line)
        if "HOLDING" in line:
            break
    else:
        pytest.fail("the child test run never started:\n" + "".join(output))
    root = private_cache / "clusters" / str(child_pytest.pid)
    records = _records(root)
    child_pytest.send_signal(signal.SIGTERM)
    child_pytest.wait(timeout=_DEADLINE)
    # Torn down by the fixture (state removed), not merely killed by the kernel.
    assert not (root / "state.json").exists()
    assert not any(process_alive(r) for r in records)


@pytest.mark.parametrize(
    ("ci", "outcome"),
    [("", "1 skipped"), ("1", "1 error")],
)
def test_missing_tools_skip_locally_and_fail_in_ci(
    tmp_path: Path, interrupted_test: Path, ci: str, outcome: str
) -> None:
    env = dict(os.environ, POWGATE_CACHE=str(tmp_path / "empty"), CI=ci)
    env.pop("POWGATE_KUBECONFIG", None)
    with _pytest_child(interrupted_test, env=env) as child:
        output, _ = child.communicate(timeout=_DEADLINE)
    assert outcome in output
    assert "make tools" in output
