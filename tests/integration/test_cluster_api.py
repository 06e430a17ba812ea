"""The local control plane is a real one: CRDs, watches, status, validation, workloads."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import pytest
from _operator_process import wait_established
from kubernetes import client as k8s
from kubernetes import watch

from waiting import eventually

GROUP = "test.powgate.dev"
# kwok never pulls images; on kind (`make e2e-kind`) this must name an image
# loaded into the cluster.
WORKLOAD_IMAGE = os.environ.get("POWGATE_TEST_IMAGE", "powgate/workload:test")
_DEADLINE = 60.0


@dataclass(frozen=True)
class Crd:
    plural: str
    kind: str

    def body(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/v1",
            "kind": self.kind,
            "metadata": {"name": name},
            "spec": spec,
        }


def _as_dict(value: object) -> dict[str, Any]:
    """The custom-objects API returns decoded JSON, typed as `object`."""
    assert isinstance(value, dict)
    return value


def _crd(crd: Crd) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{crd.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": crd.plural, "kind": crd.kind},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {
                                        "size": {"type": "integer", "minimum": 1, "maximum": 10}
                                    },
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {"phase": {"type": "string"}},
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture
def crd(kube_client: k8s.ApiClient) -> Iterator[Crd]:
    """A namespaced CRD with a validated spec and a status subresource, unique to the test."""
    suffix = uuid.uuid4().hex[:8]
    crd = Crd(plural=f"gadgets{suffix}", kind=f"Gadget{suffix.upper()}")
    body = _crd(crd)
    extensions = k8s.ApiextensionsV1Api(kube_client)
    # The client sends plain dicts as they are; its annotations ask for models.
    extensions.create_custom_resource_definition(body)  # type: ignore[arg-type]
    wait_established(extensions, body["metadata"]["name"])
    yield crd
    extensions.delete_custom_resource_definition(body["metadata"]["name"])


def test_crd_watch_and_status_subresource(
    kube_client: k8s.ApiClient, namespace: str, crd: Crd
) -> None:
    custom = k8s.CustomObjectsApi(kube_client)
    plural = crd.plural
    listed = _as_dict(custom.list_namespaced_custom_object(GROUP, "v1", namespace, plural))
    start = listed["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(
        GROUP, "v1", namespace, plural, crd.body("one", {"size": 3})
    )
    # A status in a write to the main resource is dropped: only the status
    # subresource may set it.
    custom.patch_namespaced_custom_object(
        GROUP, "v1", namespace, plural, "one", {"status": {"phase": "Ignored"}}
    )
    custom.patch_namespaced_custom_object_status(
        GROUP, "v1", namespace, plural, "one", {"status": {"phase": "Ready"}}
    )

    seen: list[tuple[str, str | None]] = []
    stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
        custom.list_namespaced_custom_object,
        GROUP,
        "v1",
        namespace,
        plural,
        resource_version=start,
        timeout_seconds=int(_DEADLINE),
    )
    for event in stream:
        phase = (event["object"].get("status") or {}).get("phase")
        seen.append((event["type"], phase))
        if phase == "Ready":
            break
    assert seen[0] == ("ADDED", None)
    assert seen[-1] == ("MODIFIED", "Ready")
    assert ("MODIFIED", "Ignored") not in seen
    stored = _as_dict(custom.get_namespaced_custom_object(GROUP, "v1", namespace, plural, "one"))
    assert stored["spec"] == {"size": 3}
    assert stored["status"] == {"phase": "Ready"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"size": 0}, "spec.size"),
        ({"size": 11}, "spec.size"),
        ({"size": "big"}, "spec.size"),
        ({}, "spec.size: Required value"),
    ],
)
def test_schema_rejects_bad_objects(
    kube_client: k8s.ApiClient, namespace: str, crd: Crd, spec: dict[str, Any], message: str
) -> None:
    custom = k8s.CustomObjectsApi(kube_client)
    with pytest.raises(k8s.ApiException) as raised:
        custom.create_namespaced_custom_object(
            GROUP, "v1", namespace, crd.plural, crd.body("bad", spec)
        )
    assert raised.value.status == HTTPStatus.UNPROCESSABLE_ENTITY
    assert message in str(raised.value.body)
    listed = _as_dict(custom.list_namespaced_custom_object(GROUP, "v1", namespace, crd.plural))
    assert listed["items"] == []


def test_deployment_reaches_running_pods(kube_client: k8s.ApiClient, namespace: str) -> None:
    apps = k8s.AppsV1Api(kube_client)
    core = k8s.CoreV1Api(kube_client)
    labels = {"app": "workload"}
    container = k8s.V1Container(
        name="main",
        image=WORKLOAD_IMAGE,
        image_pull_policy="IfNotPresent",
        command=["sleep", "3600"],
    )
    apps.create_namespaced_deployment(
        namespace,
        k8s.V1Deployment(
            metadata=k8s.V1ObjectMeta(name="workload"),
            spec=k8s.V1DeploymentSpec(
                replicas=3,
                selector=k8s.V1LabelSelector(match_labels=labels),
                template=k8s.V1PodTemplateSpec(
                    metadata=k8s.V1ObjectMeta(labels=labels),
                    spec=k8s.V1PodSpec(containers=[container]),
                ),
            ),
        ),
    )

    def running() -> list[k8s.V1Pod]:
        pods = core.list_namespaced_pod(namespace, label_selector="app=workload").items
        return [p for p in pods if p.status is not None and p.status.phase == "Running"]

    eventually(lambda: len(running()) == 3, timeout=_DEADLINE, what="3 Running pods")
    # Scheduled onto nodes, given addresses and a mounted service-account
    # token: the controllers, the scheduler and the node agent all took part.
    addresses = set()
    for pod in running():
        assert pod.spec is not None
        assert pod.status is not None
        assert pod.spec.node_name
        assert any(volume.projected for volume in pod.spec.volumes or [])
        addresses.add(pod.status.pod_ip)
    assert len(addresses) == 3

    def ready_replicas() -> int | None:
        status = apps.read_namespaced_deployment_status("workload", namespace).status
        return status.ready_replicas if status else None

    eventually(
        lambda: ready_replicas() == 3, timeout=_DEADLINE, what="deployment status readyReplicas=3"
    )
