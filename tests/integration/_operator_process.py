"""What the tests that run the operator against the real API server share.

`apply_crd` installs a CRD and waits until it is served, `network_policy_of`
reads what the operator wrote for a policy, and `OperatorProcess` runs
``python -m powgate_operator`` as its own process.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from powgate.policy import GROUP, PLURAL, VERSION, network_policy_name
from waiting import eventually, free_port

__all__ = [
    "OperatorProcess",
    "apply_crd",
    "delete_policies",
    "network_policy_of",
    "wait_established",
]


def wait_established(api: k8s.ApiextensionsV1Api, name: str) -> None:
    """Wait until the API server serves the CRD `name`."""

    def established() -> bool:
        status = api.read_custom_resource_definition(name).status
        conditions = (status.conditions if status else None) or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    eventually(established, what=f"the CRD {name} to be established")


def apply_crd(kube_client: k8s.ApiClient, body: dict[str, Any]) -> None:
    """Create the CRD, or replace one an earlier test made, and wait until it is served.

    Replaced rather than kept, so a test always runs against the CRD of this tree.
    """
    api = k8s.ApiextensionsV1Api(kube_client)
    name = body["metadata"]["name"]
    try:
        current = api.read_custom_resource_definition(name)
    except k8s.ApiException as exc:
        if exc.status != HTTPStatus.NOT_FOUND:
            raise
        # The client sends plain dicts as they are; its annotations ask for models.
        api.create_custom_resource_definition(body)  # type: ignore[arg-type]
    else:
        replacement = copy.deepcopy(body)
        assert current.metadata is not None
        replacement["metadata"]["resourceVersion"] = current.metadata.resource_version
        api.replace_custom_resource_definition(name, replacement)  # type: ignore[arg-type]
    wait_established(api, name)


def delete_policies(custom: k8s.CustomObjectsApi, *, namespace: str) -> None:
    """Delete the namespace's policies and wait until they are gone.

    They carry the operator's finalizer, so an operator must be running: the
    namespace can only go once they have.
    """
    custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)

    def none_left() -> bool:
        listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        return isinstance(listed, dict) and not listed["items"]

    eventually(none_left, what="the policies to be deleted")


def network_policy_of(
    kube_client: k8s.ApiClient, *, namespace: str, policy: str
) -> k8s.V1NetworkPolicy | None:
    """The NetworkPolicy the operator writes for ``policy``, as stored; None when absent."""
    try:
        return k8s.NetworkingV1Api(kube_client).read_namespaced_network_policy(
            network_policy_name(policy), namespace
        )
    except k8s.ApiException as exc:
        if exc.status == HTTPStatus.NOT_FOUND:
            return None
        raise


class OperatorProcess:
    """``python -m powgate_operator`` watching one namespace; restartable.

    It runs in its own process group (a SIGTERM to the test run does not reach
    it first) with its output appended to one log file across restarts. Every
    start listens for metrics and health on fresh loopback ports.
    """

    def __init__(
        self,
        *,
        namespace: str,
        kubeconfig: Path,
        log: Path,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self._namespace = namespace
        self._args = list(args)
        self._env = {**os.environ, **(env or {}), "KUBECONFIG": str(kubeconfig)}
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "powgate_operator",
            "--namespace",
            self._namespace,
            "--metrics-listen",
            f"127.0.0.1:{free_port()}",
            "--health-listen",
            f"127.0.0.1:{free_port()}",
            *self._args,
            "--verbose",
        ]
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=self._env, start_new_session=True
            )

    def stop(self) -> int | None:
        """SIGTERM, and the exit code (None when it had to be killed, or never ran)."""
        if self._process is None:
            return None
        process, self._process = self._process, None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return None

    @property
    def running(self) -> bool:
        return self._process is not None

    def log(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""
