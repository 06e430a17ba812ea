"""`powgate sidecar` as a real process, for end-to-end tests that put it before an upstream.

`start_sidecar` runs the console script of this environment, configured
through ``POWGATE_*`` variables as the injected container is, on free
loopback ports; `SidecarEndpoints` reads its metrics back. `config_reader`
makes the credentials of a pod whose sidecar reads one ConfigMap, and
`start_standin` the stand-in AI service to put behind it.
"""

from __future__ import annotations

import base64
import contextlib
import random
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml
from kubernetes import client as k8s

from powgate_sidecar import KubeEndpoint
from powgate_testbed._process import ManagedProcess, free_ports, stop_all, wait_until
from powgate_testbed.cluster import ClusterAccess

__all__ = [
    "PodCredentials",
    "SidecarEndpoints",
    "config_reader",
    "metric_value",
    "powgate",
    "ready",
    "start_sidecar",
    "start_standin",
]

#: Bounds a hang of a process start on a loaded machine; never a measurement.
_START_TIMEOUT = 60.0


def powgate(*args: str) -> list[str]:
    """``powgate ARGS``: the console script of this environment, as a container runs it."""
    return [str(Path(sys.executable).with_name("powgate")), *args]


def ready(url: str) -> bool:
    """Whether ``url`` answers 200 (a probe; refused connections are "not yet")."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def metric_value(url: str, sample: str) -> float:
    """The value of one exposition line of ``url/metrics``: ``name{label="v"}`` (0 if absent)."""
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@dataclass(frozen=True)
class SidecarEndpoints:
    """Where a started sidecar listens: the proxy and its metrics/probe port."""

    url: str
    metrics_url: str

    def wait_ready(self, *, watch: Sequence[ManagedProcess]) -> None:
        """Wait for ``/readyz`` to answer 200; fail early if a watched process exits."""
        wait_until(
            lambda: ready(self.metrics_url + "/readyz"),
            what=f"the sidecar at {self.url} ready",
            timeout=_START_TIMEOUT,
            watch=watch,
        )

    def metric(self, sample: str) -> float:
        return metric_value(self.metrics_url, sample)

    def requests(self, *, route: str, outcome: str, reason: str) -> float:
        """``powgate_requests_total`` for one route, outcome and reason."""
        return self.metric(
            f'powgate_requests_total{{outcome="{outcome}",reason="{reason}",route="{route}"}}'
        )


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive free TCP ports on 127.0.0.1, below the
    kernel's ephemeral range: nothing takes them meanwhile unless it names them
    (ports bound to 0 and outgoing connections come from that range)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        base = random.randrange(10_000, low - count)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base


def start_sidecar(
    *,
    tmp_path: Path,
    upstream: str,
    key_file: Path,
    config_args: Sequence[str],
    extra: Sequence[str] = (),
    launcher: Sequence[str] = (),
    workers: int = 1,
) -> tuple[ManagedProcess, SidecarEndpoints]:
    """Start ``powgate sidecar`` in front of ``upstream``; the caller waits for ``/readyz``.

    ``launcher``: a command that ends by running its arguments (the sidecar's command line).
    ``workers``: its worker processes; worker ``i`` serves metrics on the returned
    metrics port + ``i``, so the ports after it must be free too (a port picked alone
    had its neighbour taken by another process on busy test runs).
    """
    port, metrics_port = free_ports(2)
    if workers != 1:
        metrics_port = free_port_block(workers)
        extra = [*extra, "--workers", str(workers)]
    process = ManagedProcess(
        name="sidecar",
        argv=[
            *launcher,
            "env",
            f"POWGATE_LISTEN=127.0.0.1:{port}",
            f"POWGATE_UPSTREAM={upstream}",
            f"POWGATE_METRICS_LISTEN=127.0.0.1:{metrics_port}",
            f"POWGATE_KEY_FILE={key_file}",
            "POWGATE_HEADER_TIMEOUT=1",
            *powgate("sidecar", *config_args, *extra),
        ],
        log_path=tmp_path / "sidecar.log",
        die_with_parent=True,
    )
    return process, SidecarEndpoints(
        url=f"http://127.0.0.1:{port}", metrics_url=f"http://127.0.0.1:{metrics_port}"
    )


def start_standin(*, tmp_path: Path, name: str = "standin") -> tuple[ManagedProcess, str]:
    """``powgate standin`` on a free loopback port, once it answers; (process, URL)."""
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    process = ManagedProcess(
        name=name,
        argv=powgate(
            "standin",
            "--listen",
            f"127.0.0.1:{port}",
            "--tokens-per-second",
            "20",
            "--model",
            "standin",
        ),
        log_path=tmp_path / f"{name}.log",
        die_with_parent=True,
    )
    try:
        wait_until(
            lambda: ready(url + "/healthz"),
            what=f"{name} up",
            timeout=_START_TIMEOUT,
            watch=[process],
        )
    except BaseException:
        stop_all([process], grace=5)
        raise
    return process, url


@dataclass(frozen=True)
class PodCredentials:
    """What a pod's sidecar reads the API server with: address, token file, CA file."""

    api_url: str
    token_file: Path
    ca_file: Path

    def endpoint(self) -> KubeEndpoint:
        return KubeEndpoint(api_url=self.api_url, token_file=self.token_file, ca_file=self.ca_file)

    def sidecar_args(self, *, namespace: str, name: str) -> list[str]:
        """The flags of a sidecar following the ConfigMap ``namespace/name`` with them."""
        return [
            "--config-object", f"{namespace}/{name}",
            "--kube-api-url", self.api_url,
            "--kube-token-file", str(self.token_file),
            "--kube-ca-file", str(self.ca_file),
        ]  # fmt: skip


def config_reader(
    *, cluster: ClusterAccess, kube_client: k8s.ApiClient, namespace: str, name: str, root: Path
) -> PodCredentials:
    """A ServiceAccount allowed to get/list/watch the one ConfigMap ``name``, and its token.

    The same rule as the operator's per-policy Role. list/watch cannot be
    limited by resourceNames unless the request names the object by a field
    selector, which is what the sidecar sends.
    """
    account = f"reader-{name}"[:63]
    core, rbac = k8s.CoreV1Api(kube_client), k8s.RbacAuthorizationV1Api(kube_client)
    core.create_namespaced_service_account(
        namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=account))
    )
    rule = k8s.V1PolicyRule(
        api_groups=[""], resources=["configmaps"], resource_names=[name],
        verbs=["get", "list", "watch"],
    )  # fmt: skip
    rbac.create_namespaced_role(
        namespace, k8s.V1Role(metadata=k8s.V1ObjectMeta(name=account), rules=[rule])
    )
    rbac.create_namespaced_role_binding(
        namespace,
        k8s.V1RoleBinding(
            metadata=k8s.V1ObjectMeta(name=account),
            role_ref=k8s.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name=account
            ),
            subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name=account, namespace=namespace)],
        ),
    )
    status = core.create_namespaced_service_account_token(
        account,
        namespace,
        k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[])),
    ).status
    assert status is not None
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    entry = kubeconfig["clusters"][0]["cluster"]
    ca_file, token_file = root / f"{account}.ca.crt", root / f"{account}.token"
    ca_file.write_bytes(base64.b64decode(entry["certificate-authority-data"]))
    token_file.write_text(str(status.token))
    return PodCredentials(entry["server"], token_file, ca_file)
