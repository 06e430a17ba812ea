"""Rollout: a difficulty change reaches N real sidecar processes through the API server.

Each sidecar is a `powgate sidecar` process watching the rendered config
ConfigMap with a service-account token limited by the Role the operator
grants injected pods (exactly that ConfigMap and the key Secret). The test
edits the ConfigMap (what the operator writes on a difficulty change) and
waits until every sidecar hands out challenges at the new difficulty.
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes import client as k8s

from powgate import CHALLENGE_PATH, Challenge, KeyRing
from powgate.config import CONFIG_DATA_KEY, SidecarConfig
from powgate.policy import LabelSelector, config_map_name
from powgate_operator._inject import PolicyRef
from powgate_operator._objects import role_binding_body, role_body
from powgate_testbed._process import ManagedProcess, free_ports, stop_all, wait_until
from powgate_testbed.cluster import ClusterAccess

N = 20
POLICY = "llm"
#: Bounds a hang on a loaded machine; the measured time is printed, not asserted.
WAIT = 120.0

pytestmark = pytest.mark.slow


def _config(namespace: str, difficulty: int) -> str:
    config = SidecarConfig(policy=f"{namespace}/{POLICY}", difficulty=difficulty)
    return config.model_copy(update={"version": config.content_version()}).to_json()


def _difficulty(port: int) -> int | None:
    try:
        response = httpx.get(
            f"http://127.0.0.1:{port}{CHALLENGE_PATH}", params={"path": "/v1/chat"}, timeout=5
        )
    except httpx.HTTPError:
        return None
    if response.status_code != httpx.codes.OK:
        return None
    return Challenge.from_json(response.content).maxnumber


@pytest.fixture
def sidecars(
    cluster: ClusterAccess, kube_client: k8s.ApiClient, namespace: str, tmp_path: Path
) -> Iterator[list[int]]:
    """N sidecar processes watching the namespace's config; yields their proxy ports."""
    core, rbac = k8s.CoreV1Api(kube_client), k8s.RbacAuthorizationV1Api(kube_client)
    created = core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {"name": config_map_name(POLICY)},
            "data": {CONFIG_DATA_KEY: _config(namespace, 100)},
        },
    )
    # The Role and RoleBinding the operator creates for injected pods.
    owner = PolicyRef(
        namespace=namespace,
        name=POLICY,
        uid=str(created.metadata.uid),
        selector=LabelSelector(match_labels={"app": POLICY}),
    )
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "model"}})
    for manifest in (role_body(owner.metadata()), role_binding_body(owner.metadata(), ["model"])):
        del manifest["metadata"]["ownerReferences"]  # no PowPolicy here: the namespace owns them
        create = (
            rbac.create_namespaced_role
            if manifest["kind"] == "Role"
            else rbac.create_namespaced_role_binding
        )
        create(namespace, manifest)
    token = core.create_namespaced_service_account_token(
        "model", namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    (tmp_path / "token").write_text(token)
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    entry = kubeconfig["clusters"][0]["cluster"]
    (tmp_path / "ca.crt").write_bytes(base64.b64decode(entry["certificate-authority-data"]))
    KeyRing.generate().save(tmp_path / "keyring.json")

    ports = free_ports(2 * N)
    processes = [
        ManagedProcess(
            name=f"sidecar-{i}",
            argv=[
                str(Path(sys.executable).with_name("powgate")),
                "sidecar",
                "--listen",
                f"127.0.0.1:{ports[2 * i]}",
                "--metrics-listen",
                f"127.0.0.1:{ports[2 * i + 1]}",
                "--upstream",
                "http://127.0.0.1:9",
                "--key-file",
                str(tmp_path / "keyring.json"),
                "--config-object",
                f"{namespace}/{config_map_name(POLICY)}",
                "--kube-api-url",
                entry["server"],
                "--kube-token-file",
                str(tmp_path / "token"),
                "--kube-ca-file",
                str(tmp_path / "ca.crt"),
            ],
            log_path=tmp_path / f"sidecar-{i}.log",
            die_with_parent=True,
        )
        for i in range(N)
    ]
    proxy_ports = ports[0::2]
    try:
        wait_until(
            lambda: all(_difficulty(p) == 100 for p in proxy_ports),
            what=f"{N} sidecars enforcing the initial config",
            timeout=WAIT,
            watch=processes,
        )
        yield proxy_ports
    finally:
        stop_all(processes, grace=5.0)


def test_a_difficulty_change_reaches_every_sidecar(
    kube_client: k8s.ApiClient, namespace: str, sidecars: list[int]
) -> None:
    core = k8s.CoreV1Api(kube_client)
    started = time.monotonic()
    core.patch_namespaced_config_map(
        config_map_name(POLICY), namespace, {"data": {CONFIG_DATA_KEY: _config(namespace, 4321)}}
    )
    pending = set(sidecars)
    applied: dict[int, float] = {}
    deadline = started + WAIT
    while pending and time.monotonic() < deadline:
        for port in list(pending):
            if _difficulty(port) == 4321:
                applied[port] = time.monotonic() - started
                pending.discard(port)
        time.sleep(0.01)
    assert not pending, f"{len(pending)} of {N} sidecars never applied the edit"
    # Polling twenty sidecars in turn bounds the resolution (tens of ms); bench_rollout
    # measures without polling. Reported, not asserted: speed belongs in benchmarks.
    print(f"edit → last of {N} sidecars enforcing: {max(applied.values()) * 1e3:.0f} ms")
