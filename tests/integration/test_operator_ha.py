"""Two operator replicas with kopf peering against the real API server: one is active.

Each replica is its own ``python -m powgate_operator --peering`` process with
its own ``POD_ID`` (as the chart's Deployment sets it), so each derives its
own peering priority. The replica with the higher priority starts first and
joins the peering object; the other then joins, sees it and stays paused. Only the
active replica reconciles (its log has kopf's handler lines, the standby's has none);
after a SIGTERM the active one leaves the peering object on its way out, the
standby resumes and reconciles the next edit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import pytest
import yaml
from _operator_process import OperatorProcess, delete_policies, wait_established
from kubernetes import client as k8s

from powgate.config import SidecarConfig
from powgate.policy import GROUP, PLURAL, VERSION, config_map_name
from powgate_operator.cli import peering_priority
from powgate_testbed.cluster import ClusterAccess
from waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
POLICY_CRD = yaml.safe_load((ROOT / "crds" / "powpolicy.yaml").read_text())
PEERING_CRDS = list(yaml.safe_load_all((ROOT / "crds" / "kopf-peering.yaml").read_text()))
PEERING = "powgate"
POLICY = "chat"
#: What kopf logs when a replica becomes the active one.
RESUMING = "Resuming operations after the pause"
#: What kopf logs (plain format) when a handler has run on an object.
HANDLED = re.compile(r"kopf\.objects.*Handler '[^']+' succeeded")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crds(kube_client: k8s.ApiClient) -> None:
    """The PowPolicy CRD and kopf's peering CRDs, established."""
    api = k8s.ApiextensionsV1Api(kube_client)
    for crd in [POLICY_CRD, *PEERING_CRDS]:
        name = crd["metadata"]["name"]
        try:
            api.create_custom_resource_definition(crd)
        except k8s.ApiException as exc:
            # Already there: another test of this session (or its Helm release) made it.
            if exc.status != HTTPStatus.CONFLICT:
                raise
        wait_established(api, name)


class Replica(OperatorProcess):
    """One operator process of the peering, named by its ``POD_ID``."""

    def __init__(self, *, pod_id: str, cluster: ClusterAccess, namespace: str, root: Path) -> None:
        super().__init__(
            namespace=namespace,
            kubeconfig=cluster.kubeconfig,
            log=root / f"{pod_id}.log",
            args=["--peering", PEERING],
            env={"POD_ID": pod_id},
        )
        self.pod_id = pod_id
        self.priority = peering_priority(explicit=None, pod_id=pod_id)

    def handled(self) -> list[str]:
        """kopf's lines for handlers run on objects: in this test's scope, the one policy."""
        return [line for line in self.log().splitlines() if HANDLED.search(line)]


@pytest.fixture
def replicas(
    cluster: ClusterAccess, kube_client: k8s.ApiClient, crds: None, namespace: str, tmp_path: Path
) -> Iterator[tuple[Replica, Replica]]:
    """(active, standby): the replica with the higher derived priority comes first."""
    # kopf only patches an existing peering object (the chart creates it as a hook).
    custom = k8s.CustomObjectsApi(kube_client)
    custom.create_namespaced_custom_object(
        "kopf.dev",
        "v1",
        namespace,
        "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}},
    )
    first, second = (
        Replica(pod_id=pod_id, cluster=cluster, namespace=namespace, root=tmp_path)
        for pod_id in ("powgate-operator-a", "powgate-operator-b")
    )
    # Distinct POD_IDs must give distinct priorities: kopf pauses replicas that tie.
    assert first.priority != second.priority
    active, standby = sorted((first, second), key=lambda r: r.priority, reverse=True)
    try:
        yield active, standby
        # Policies carry the operator's finalizer: delete them while a replica runs,
        # so the namespace can go afterwards.
        delete_policies(custom, namespace=namespace)
    finally:
        for replica in (active, standby):
            replica.stop()
            # Shown by pytest only when the test failed.
            print(f"--- {replica.pod_id} (priority {replica.priority})\n{replica.log()[-6000:]}")


def peers(custom: k8s.CustomObjectsApi, namespace: str) -> set[str]:
    """The identities in the peering object (kopf's status, one key per live replica)."""
    obj = custom.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", PEERING)
    assert isinstance(obj, dict)
    return set(obj.get("status") or {})


def rendered(core: k8s.CoreV1Api, namespace: str, *, mode: str) -> SidecarConfig | None:
    """The policy's rendered config, once it is in ``mode``."""
    try:
        config_map = core.read_namespaced_config_map(config_map_name(POLICY), namespace)
    except k8s.ApiException as exc:
        if exc.status == HTTPStatus.NOT_FOUND:
            return None
        raise
    assert config_map.data is not None
    config = SidecarConfig.from_json(config_map.data["config.json"])
    return config if config.mode == mode else None


def test_one_replica_reconciles_and_the_standby_takes_over_on_sigterm(
    replicas: tuple[Replica, Replica], kube_client: k8s.ApiClient, namespace: str
) -> None:
    active, standby = replicas
    custom, core = k8s.CustomObjectsApi(kube_client), k8s.CoreV1Api(kube_client)

    # The higher priority joins first, so the standby finds it there at once.
    active.start()
    eventually(lambda: active.pod_id in peers(custom, namespace), what="the first replica to join")
    standby.start()
    eventually(lambda: standby.pod_id in peers(custom, namespace), what="the second to join")
    # kopf starts every peering replica paused and resumes the one that finds no
    # higher priority in the peering object; it tells so at debug level (--verbose).
    paused = re.compile(
        rf"Pausing the watch-stream for powpolicies\S* in '{namespace}' "
        rf"\(blockers: {PEERING}@{namespace}\)"
    )
    eventually(lambda: paused.search(standby.log()), what="the standby to pause")
    eventually(lambda: RESUMING in active.log(), what="the first replica to be active")

    # Created and edited while both run: only the active replica handles it.
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "PowPolicy",
            "metadata": {"name": POLICY},
            "spec": {
                "selector": {"matchLabels": {"app": POLICY}},
                "difficulty": {"min": 1000, "initial": 4000, "max": 90_000},
            },
        },
    )
    eventually(lambda: rendered(core, namespace, mode="enforce"), what="the policy's config map")
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, POLICY, {"spec": {"mode": "observe"}}
    )
    config = eventually(
        lambda: rendered(core, namespace, mode="observe"),
        what="the first edit in the config map",
    )
    assert config.difficulty == 4000
    assert active.handled() != []
    assert standby.handled() == []
    assert RESUMING not in standby.log()

    # SIGTERM: the active replica shuts down cleanly and leaves the peering object.
    assert active.stop() == 0
    eventually(
        lambda: active.pod_id not in peers(custom, namespace), what="the stopped one to leave"
    )
    eventually(
        lambda: RESUMING in standby.log(),
        what="the standby to resume",
    )
    custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        POLICY,
        {"spec": {"mode": "enforce", "difficulty": {"min": 6000, "initial": None}}},
    )
    config = eventually(
        lambda: rendered(core, namespace, mode="enforce"),
        what="the second edit in the config map",
    )
    assert (config.difficulty, config.min_difficulty) == (6000, 6000)
    assert standby.handled() != []
    assert standby.running
