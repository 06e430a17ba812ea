"""Fixtures for tests against real processes: a Kubernetes control plane, Prometheus, Chromium.

`cluster` starts the local control plane once per session (or uses the
cluster of `$POWGATE_KUBECONFIG`, which is how `make e2e-kind` runs this
suite on kind), and `local_cluster` is that control plane itself, for tests
that act on it; `kube_client` is the official client for the cluster;
`namespace` gives each test its own namespace. `prometheus` is a Prometheus
server whose scrape targets a test sets with `set_targets`. `chromium` is
Debian's headless Chromium and `open_page` opens a URL in a fresh instance of
it; `altcha_widget` is the ALTCHA widget from npm (`make js-deps`). `store`
is a fresh Redis/Valkey server (the shared replay store) for one test.

When a binary is missing the fixtures skip with a hint, except under CI
(`$CI` set), where they fail: CI must never pass by skipping these tests.
Tests using a fixture get the matching marker (`cluster`, `prometheus`,
`browser`, `node`) automatically, so `-m "not cluster"` deselects them.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from types import FrameType
from typing import NoReturn

import pytest
from _browser import OpenPage
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from powgate_testbed._netns import node_network_possible
from powgate_testbed._process import ManagedProcess, stop_all
from powgate_testbed.chromium import chromium_binary, open_headless
from powgate_testbed.cluster import (
    ClusterAccess,
    LocalCluster,
    Tools,
    ToolsMissingError,
    cache_dir,
    reap_stale_runs,
)
from powgate_testbed.node import NodeTools, NodeToolsMissingError, RealNode
from powgate_testbed.prometheus import PrometheusNotFoundError, PrometheusServer, find_prometheus
from powgate_testbed.store_server import StoreNotFoundError, StoreServer, find_store_server
from waiting import eventually

# Fixture → marker, for every test that uses the fixture, even indirectly.
_MARKERS = {
    "cluster": "cluster",
    "local_cluster": "cluster",
    "prometheus_binary": "prometheus",
    "store_binary": "store",
    "chromium": "browser",
    "altcha_widget": "node",
    "real_node": "realnode",
}
_ACCOUNT_TIMEOUT = 30.0
#: The npm packages of the browser tests: package.json, its lock and node_modules.
_JS_PACKAGES = Path(__file__).resolve().parents[1] / "js"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = getattr(item, "fixturenames", ())
        # A set: `cluster` and `local_cluster` both mean the `cluster` marker.
        for marker in {marker for fixture, marker in _MARKERS.items() if fixture in used}:
            item.add_marker(marker)


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _sigterm_tears_down() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt, so pytest runs every fixture's teardown.

    Without this a terminated test run (a CI timeout, `kill`) would leave its
    processes to the kernel's parent-death signal and its folders to the next run.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def tools() -> Tools:
    """The built control-plane binaries (`make tools`)."""
    try:
        return Tools.locate(cache_dir())
    except ToolsMissingError as exc:
        _unavailable(str(exc))


@pytest.fixture(scope="session")
def local_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster | None]:
    """The control plane this run started; None when `$POWGATE_KUBECONFIG` names the cluster.

    For the few tests that act on the control plane itself (another API
    server on its etcd); the others use `cluster`.
    """
    if os.environ.get("POWGATE_KUBECONFIG"):
        yield None
        return
    # Looked up here, not declared: a cluster given by kubeconfig needs no binaries.
    tools: Tools = request.getfixturevalue("tools")
    # One folder per test run, so concurrent runs on one machine never share
    # or stop each other's clusters; folders of dead runs are removed here.
    runs = cache_dir() / "clusters"
    reap_stale_runs(runs)
    # The real node's network is made with the cluster (its API server listens
    # on the link's host end); the node itself starts only if a test asks.
    with LocalCluster(
        root=runs / str(os.getpid()), tools=tools, node_network=node_network_possible() is None
    ) as local:
        yield local


@pytest.fixture(scope="session")
def cluster(local_cluster: LocalCluster | None) -> ClusterAccess:
    if local_cluster is None:
        return ClusterAccess(
            kubeconfig=Path(os.environ["POWGATE_KUBECONFIG"]), reaches_loopback=False
        )
    return local_cluster.access


@pytest.fixture(scope="session")
def real_node(local_cluster: LocalCluster | None) -> Iterator[RealNode]:
    """A real node (containerd, runc, CNI, kubelet, kube-proxy) in the local cluster.

    Started on first use and stopped with the session; pods for it select it
    and tolerate its taint (`real_node.selector`, `real_node.toleration`).
    """
    if local_cluster is None:
        pytest.skip("the real node belongs to the local cluster; this run uses $POWGATE_KUBECONFIG")
    if local_cluster.network is None:
        _unavailable(f"no network namespace for a real node: {node_network_possible()}")
    try:
        tools = NodeTools.locate(cache_dir())
    except NodeToolsMissingError as exc:
        _unavailable(str(exc))
    with RealNode(cluster=local_cluster, tools=tools) as node:
        yield node


@pytest.fixture(scope="session")
def kube_client(cluster: ClusterAccess) -> Iterator[k8s.ApiClient]:
    api: k8s.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(cluster.kubeconfig)
    )
    yield api
    api.close()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def api_client(kube_client: k8s.ApiClient) -> k8s.ApiClient:
    """The same client as `kube_client`, under the name the official client uses."""
    return kube_client


def _has_default_account(core: k8s.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespaced_service_account("default", namespace)
    except k8s.ApiException as exc:
        if exc.status == HTTPStatus.NOT_FOUND:
            return False
        raise
    return True


@pytest.fixture
def namespace(kube_client: k8s.ApiClient) -> Iterator[str]:
    """A fresh namespace for one test, deleted (in the background) afterwards.

    Yielded once its default service account exists: until then the API
    server rejects every pod in it.
    """
    name = f"test-{uuid.uuid4().hex[:10]}"
    core = k8s.CoreV1Api(kube_client)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    eventually(
        lambda: _has_default_account(core, name),
        what=f"the default service account of namespace {name}",
        timeout=_ACCOUNT_TIMEOUT,
        interval=0.1,
    )
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def prometheus_binary() -> Path:
    """The system's `prometheus` (`make system-deps`)."""
    try:
        return find_prometheus()
    except PrometheusNotFoundError as exc:
        _unavailable(str(exc))


@pytest.fixture(scope="session")
def session_prometheus(
    tmp_path_factory: pytest.TempPathFactory, prometheus_binary: Path
) -> Iterator[PrometheusServer]:
    """One server for the session; tests use it through `prometheus`."""
    with PrometheusServer(
        root=tmp_path_factory.mktemp("prometheus"), binary=prometheus_binary
    ) as server:
        yield server


@pytest.fixture
def prometheus(session_prometheus: PrometheusServer) -> Iterator[PrometheusServer]:
    """The session's server: set the targets you need with `set_targets`.

    They are dropped after the test: the ports of its servers are free again, and a
    later test's server that is given one of them (a sidecar's proxy port, say) must
    not be scraped.
    """
    yield session_prometheus
    session_prometheus.set_targets([])


@pytest.fixture(scope="session")
def store_binary() -> Path:
    """The system's `redis-server` or `valkey-server` (`make system-deps`)."""
    try:
        return find_store_server()
    except StoreNotFoundError as exc:
        _unavailable(str(exc))


@pytest.fixture
def store(tmp_path_factory: pytest.TempPathFactory, store_binary: Path) -> Iterator[StoreServer]:
    """A fresh Redis/Valkey server on a free loopback port, stopped after the test."""
    with StoreServer(root=tmp_path_factory.mktemp("store"), binary=store_binary) as server:
        yield server


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's `chromium` (`make system-deps`)."""
    path = chromium_binary()
    if path is None:
        _unavailable("chromium is not installed (make system-deps installs it)")
    return path


@pytest.fixture
def open_page(chromium: str, tmp_path: Path) -> Iterator[OpenPage]:
    """Opens a URL in a headless Chromium with a fresh profile; every one is stopped afterwards.

    Each browser runs in its own process group, so stopping it also stops
    the renderer and utility processes it forked.
    """
    browsers: list[ManagedProcess] = []

    def open_page(url: str) -> Path:
        log = tmp_path / f"chromium-{len(browsers)}.log"
        profile = tmp_path / f"profile-{len(browsers)}"
        browsers.append(open_headless(chromium, url, log=log, profile=profile))
        return log

    yield open_page
    stop_all(browsers, grace=10)


@pytest.fixture(scope="session")
def altcha_widget() -> bytes:
    """The ALTCHA widget's browser bundle, in the version ``tests/js/package.json`` pins."""
    wanted = json.loads((_JS_PACKAGES / "package.json").read_text())["dependencies"]["altcha"]
    package = _JS_PACKAGES / "node_modules" / "altcha"
    try:
        installed = json.loads((package / "package.json").read_text())["version"]
    except FileNotFoundError:
        installed = None
    if installed is None:
        _unavailable("the altcha npm package is not installed in tests/js (make js-deps)")
    if installed != wanted:
        _unavailable(f"tests/js has altcha {installed}, package.json pins {wanted} (make js-deps)")
    return (package / "dist" / "main" / "altcha.js").read_bytes()


@pytest.fixture(scope="session")
def altcha_workers(altcha_widget: bytes) -> dict[str, bytes]:
    """The widget's separately loaded PoW v2 workers, by file name (``argon2id.js``, …)."""
    del altcha_widget  # only its version check
    folder = _JS_PACKAGES / "node_modules" / "altcha" / "dist" / "workers"
    return {path.name: path.read_bytes() for path in folder.glob("*.js")}
