"""Fixtures for tests against real processes: a Kubernetes control plane and Prometheus.

`cluster` starts the local control plane once per session (or uses the
cluster of `$POWGATE_KUBECONFIG`, which is how `make e2e-kind` runs this
suite on kind); `kube_client` is the official client configured for it;
`namespace` gives each test its own namespace. `prometheus` is a Prometheus
server whose scrape targets a test sets with `set_targets`.

When a binary is missing the fixtures skip with a hint, except under CI
(`$CI` set), where they fail: CI must never pass by skipping these tests.
Tests using a fixture get the matching marker (`cluster`, `prometheus`)
automatically, so `-m "not cluster"` deselects them.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from types import FrameType
from typing import NoReturn

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from powgate_testbed.cluster import (
    ClusterAccess,
    LocalCluster,
    Tools,
    ToolsMissingError,
    cache_dir,
    reap_stale_runs,
)
from powgate_testbed.prometheus import PrometheusNotFoundError, PrometheusServer, find_prometheus

# Fixture → marker, for every test that uses the fixture, even indirectly.
_MARKERS = {"cluster": "cluster", "prometheus_binary": "prometheus"}
_ACCOUNT_TIMEOUT = 30.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = getattr(item, "fixturenames", ())
        for fixture, marker in _MARKERS.items():
            if fixture in used:
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
def cluster(request: pytest.FixtureRequest) -> Iterator[ClusterAccess]:
    existing = os.environ.get("POWGATE_KUBECONFIG")
    if existing:
        yield ClusterAccess(kubeconfig=Path(existing), reaches_loopback=False)
        return
    # Looked up here, not declared: a cluster given by kubeconfig needs no binaries.
    tools: Tools = request.getfixturevalue("tools")
    # One folder per test run, so concurrent runs on one machine never share
    # or stop each other's clusters; folders of dead runs are removed here.
    runs = cache_dir() / "clusters"
    reap_stale_runs(runs)
    with LocalCluster(root=runs / str(os.getpid()), tools=tools) as local:
        yield local.access


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
    deadline = time.monotonic() + _ACCOUNT_TIMEOUT
    while not _has_default_account(core, name):
        if time.monotonic() > deadline:
            pytest.fail(f"namespace {name}: no default service account after {_ACCOUNT_TIMEOUT} s")
        time.sleep(0.1)
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
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, prometheus_binary: Path
) -> Iterator[PrometheusServer]:
    """One server for the session: set the targets you need with `set_targets`."""
    with PrometheusServer(
        root=tmp_path_factory.mktemp("prometheus"), binary=prometheus_binary
    ) as server:
        yield server
