"""A local Kubernetes control plane without containers, started the way envtest does.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok run as
plain processes on 127.0.0.1 with free ports and a throw-away PKI; kwok plays
the kubelet of a few fake Nodes, so Deployments produce pods that reach
Running. With `node_network=True` the cluster also gets a network namespace
for a real node (`powgate_testbed.node`), and its API server listens on the
host's end of that namespace's link instead of 127.0.0.1. The binaries come
from `make tools` (pinned Go modules under `hack/tools/`), in
`$POWGATE_CACHE/bin`.

    python -m powgate_testbed.cluster up|down|status

`up` leaves the cluster running (state in `<cache>/cluster/`, admin
kubeconfig in `<cache>/cluster/kubeconfig`) until `down`. In-process users
(the pytest fixture) use `LocalCluster` as a context manager instead, which
ties the processes to their owner: they are stopped on exit, on an exception,
and (when started from the main thread) by the kernel if the owner is killed
outright.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import fcntl
import json
import os
import shutil
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import httpx
import yaml

from powgate_testbed._netns import (
    NodeNetwork,
    kill_namespace,
    node_cgroups,
    node_folders,
    remove_cgroup,
    unmount_below,
)
from powgate_testbed._pki import CertificateAuthority, KeyPair, generate_signing_key
from powgate_testbed._process import (
    ManagedProcess,
    ProcessRecord,
    Service,
    StartupError,
    free_ports,
    process_alive,
    stop_all,
    stop_recorded,
    tail,
    wait_until,
)

__all__ = [
    "FAKE_NODE_ANNOTATION",
    "REAL_NODE_NAME",
    "WEBHOOK_CLIENT_NAME",
    "ApiServerReplica",
    "ClusterAccess",
    "LocalCluster",
    "StartupError",
    "Tools",
    "ToolsMissingError",
    "cache_dir",
    "main",
    "reap_stale_runs",
]

# kwok manages only Nodes carrying this annotation, so it never touches a
# real node if pointed at a real cluster by mistake.
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
_SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
_STATE_FILE = "state.json"
_LOG_TAIL_LINES = 25
_STOP_GRACE = 3.0
# Generous: the machine may be busy compiling; a healthy start takes seconds.
_ETCD_TIMEOUT = 30.0
_APISERVER_TIMEOUT = 60.0
_SETTLE_TIMEOUT = 60.0
#: The real node's name (`powgate_testbed.node`); its certificates are made with the cluster's.
REAL_NODE_NAME = "powgate-node"
#: The common name of the client certificate the API server presents to admission
#: webhooks (issued by the cluster's CA; its admission-plugin kubeconfig names it).
WEBHOOK_CLIENT_NAME = "kube-apiserver-webhook-client"


def cache_dir() -> Path:
    """`$POWGATE_CACHE` (set by the Makefile), else `.cache` in the working directory."""
    return Path(os.environ.get("POWGATE_CACHE") or ".cache").resolve()


@dataclass(frozen=True, slots=True)
class ClusterAccess:
    """What a client of a cluster needs: its admin kubeconfig, and how it is placed.

    `reaches_loopback` says whether the API server runs on this machine and
    can therefore call webhooks served on 127.0.0.1 (true for `LocalCluster`,
    false for a cluster in containers such as kind). `webhook_client` is the
    name on the client certificate the API server presents to webhooks,
    issued by the CA of the kubeconfig (None: it presents none known here).
    """

    kubeconfig: Path
    reaches_loopback: bool
    webhook_client: str | None = None


class ToolsMissingError(FileNotFoundError):
    """The control-plane binaries have not been built."""


@dataclass(frozen=True, slots=True)
class Tools:
    """Paths of the binaries `make tools` builds, and kwok's stage definitions."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kwok: Path
    kwok_stages: Path

    @classmethod
    def locate(cls, cache: Path) -> Tools:
        bin_dir = cache / "bin"
        tools = cls(
            etcd=bin_dir / "etcd",
            kube_apiserver=bin_dir / "kube-apiserver",
            kube_controller_manager=bin_dir / "kube-controller-manager",
            kube_scheduler=bin_dir / "kube-scheduler",
            kwok=bin_dir / "kwok",
            kwok_stages=cache / "share" / "kwok" / "stages.yaml",
        )
        missing = [str(path) for path in tools.paths() if not path.is_file()]
        if missing:
            raise ToolsMissingError(
                f"control-plane tools not built (missing: {', '.join(missing)}); run `make tools`"
            )
        return tools

    def paths(self) -> tuple[Path, ...]:
        return tuple(getattr(self, field.name) for field in fields(self))


def _kubeconfig(*, server: str, ca: bytes, client: KeyPair, user: str) -> dict[str, Any]:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    # Credentials are embedded, so the file can be copied anywhere and read by
    # any client (the Python client, kubectl, kopf) without the PKI folder.
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "powgate",
                "cluster": {"server": server, "certificate-authority-data": b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client.cert_pem),
                    "client-key-data": b64(client.key_pem),
                },
            }
        ],
        "contexts": [{"name": "powgate", "context": {"cluster": "powgate", "user": user}}],
        "current-context": "powgate",
    }


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600)
    path.write_bytes(data)


def _fake_node(name: str) -> dict[str, Any]:
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {FAKE_NODE_ANNOTATION[0]: FAKE_NODE_ANNOTATION[1]},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        # kwok fills in conditions and addresses; capacity has to be there
        # from the start or the scheduler sees a node that fits nothing.
        "status": {"capacity": resources, "allocatable": resources},
    }


def _node_ready(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


@dataclass(frozen=True, slots=True)
class _Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def pick(cls) -> _Ports:
        return cls(*free_ports(len(fields(cls))))


class LocalCluster(Service):
    """etcd + control plane + kwok under one state folder.

    `owned=True` ties the processes to this Python process (stopped when it
    exits, however it exits); `owned=False` leaves them running for a later
    `down`, which is what `make cluster-up` needs.
    """

    def __init__(
        self,
        *,
        root: Path,
        tools: Tools,
        nodes: int = 2,
        owned: bool = True,
        node_network: bool = False,
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node for pods to run")
        self.root = root
        self._tools = tools
        self._nodes = nodes
        self._owned = owned
        self._node_network = node_network
        self._processes: list[ManagedProcess] = []
        self._ports: _Ports | None = None
        self.server = ""
        #: The real node's network (`node_network=True`), made before the API
        #: server, which listens on its host end so the node and pods reach it.
        self.network: NodeNetwork | None = None
        self._network_inode = 0

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def access(self) -> ClusterAccess:
        return ClusterAccess(
            kubeconfig=self.kubeconfig, reaches_loopback=True, webhook_client=WEBHOOK_CLIENT_NAME
        )

    @property
    def ca_file(self) -> Path:
        return self.root / "pki" / "ca.crt"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start every component and return once the cluster accepts workloads."""
        _clear_state(self.root)
        self.logs.mkdir(parents=True, exist_ok=True)
        if self._owned:
            atexit.register(self.stop)
        self._save_state()
        try:
            self._start()
        except (StartupError, httpx.HTTPError) as exc:
            self.stop()
            raise StartupError(f"{exc}\n{self._log_tails()}") from exc
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process and delete the state; logs stay for inspection."""
        stop_all(reversed(self._processes), grace=_STOP_GRACE)
        self._processes.clear()
        if self.network is not None:
            _clean_node(self.root, inode=self._network_inode, mark=self.network.mark)
            self.network = None
        if self._owned:
            atexit.unregister(self.stop)
        _clear_state(self.root)

    # -- start-up ----------------------------------------------------------

    def _spawn(self, name: str, argv: Sequence[str]) -> ManagedProcess:
        """Start a component, recorded in the state so that it is stopped with the cluster."""
        process = ManagedProcess(
            name=name,
            argv=argv,
            log_path=self.logs / f"{name}.log",
            die_with_parent=self._owned,
        )
        self._processes.append(process)
        # Saved after every start so a run killed half-way is still cleaned up.
        self._save_state()
        return process

    def _retire(self, process: ManagedProcess) -> None:
        """Stop one process before the others, and forget it (`stop` may have come first)."""
        if process in self._processes:
            stop_all([process], grace=_STOP_GRACE)
            self._processes.remove(process)
            self._save_state()

    def apiserver_replica(self) -> ApiServerReplica:
        """A further kube-apiserver on this cluster's etcd, not yet started (`ApiServerReplica`)."""
        if self._ports is None:
            raise RuntimeError("the cluster is not running")
        (port,) = free_ports(1)
        ports = replace(self._ports, apiserver=port)
        return ApiServerReplica(
            cluster=self,
            argv=self._apiserver_argv(ports, self.root / "pki"),
            server=f"https://{self._listen_address}:{port}",
        )

    def _start(self) -> None:
        t0 = time.monotonic()
        ports = self._ports = _Ports.pick()
        if self._node_network:
            self.network = NodeNetwork.create(spawn=self._spawn)
            self._network_inode = self.network.inode()
            self._save_state()
        self.server = f"https://{self._listen_address}:{ports.apiserver}"
        pki = self._write_pki()
        etcd = self._spawn("etcd", self._etcd_argv(ports))
        wait_until(
            lambda: _http_ok(f"http://127.0.0.1:{ports.etcd_client}/health", context=None),
            what="etcd health",
            timeout=_ETCD_TIMEOUT,
            watch=[etcd],
        )
        apiserver = self._spawn("kube-apiserver", self._apiserver_argv(ports, pki))
        admin_context = _admin_context(self.root)
        wait_until(
            lambda: _http_ok(f"{self.server}/readyz", context=admin_context),
            what="kube-apiserver /readyz",
            timeout=_APISERVER_TIMEOUT,
            watch=[etcd, apiserver],
        )
        t_api = time.monotonic() - t0
        self._spawn("kube-controller-manager", self._controller_manager_argv(ports, pki))
        self._spawn("kube-scheduler", self._scheduler_argv(ports, pki))
        self._spawn("kwok", self._kwok_argv(ports, pki))
        with httpx.Client(base_url=self.server, verify=admin_context, timeout=10.0) as api:
            for index in range(self._nodes):
                api.post("/api/v1/nodes", json=_fake_node(f"kwok-node-{index}")).raise_for_status()
            wait_until(
                lambda: self._settled(api),
                what="the default service account and Ready nodes",
                timeout=_SETTLE_TIMEOUT,
                watch=self._processes,
            )
        total = time.monotonic() - t0
        print(
            f"cluster ready in {total:.1f} s (kube-apiserver ready after {t_api:.1f} s); "
            f"kubeconfig: {self.kubeconfig}",
            file=sys.stderr,
        )

    def admin_context(self) -> ssl.SSLContext:
        """TLS settings of the cluster's administrator, for an HTTP client of the API server."""
        return _admin_context(self.root)

    @property
    def _listen_address(self) -> str:
        return str(self.network.addresses.host) if self.network else "127.0.0.1"

    def _settled(self, api: httpx.Client) -> bool:
        # Pods are rejected until their namespace's default service account
        # exists (the ServiceAccount admission plugin), and stay Pending until
        # a Ready node exists: both are what "the cluster accepts workloads" means.
        account = api.get("/api/v1/namespaces/default/serviceaccounts/default")
        if account.status_code != httpx.codes.OK:
            return False
        nodes = api.get("/api/v1/nodes").json().get("items", [])
        return len(nodes) == self._nodes and all(_node_ready(node) for node in nodes)

    def _write_pki(self) -> Path:
        pki = self.root / "pki"
        pki.mkdir(parents=True)
        ca = CertificateAuthority(common_name="powgate-local-ca")
        ca.pair.write(cert_path=pki / "ca.crt", key_path=pki / "ca.key")
        addresses = ["127.0.0.1"]
        if self.network is not None:
            # Pods reach it as the `kubernetes` Service, the node at the link's host end.
            addresses += [
                str(self.network.addresses.host),
                str(self.network.addresses.kubernetes_service),
            ]
        ca.issue(
            common_name="kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ip_addresses=tuple(addresses),
            server=True,
        ).write(cert_path=pki / "apiserver.crt", key_path=pki / "apiserver.key")
        private, public = generate_signing_key()
        _write_private(pki / "sa.key", private)
        (pki / "sa.pub").write_bytes(public)
        # The bootstrap RBAC policy grants the scheduler what it needs by its
        # user name; the controller manager runs every controller under its
        # own identity, which needs more than its bootstrap role (see its
        # flags); admin and kwok are cluster admins too.
        users = {
            "admin": ("admin", ("system:masters",)),
            "controller-manager": ("system:kube-controller-manager", ("system:masters",)),
            "scheduler": ("system:kube-scheduler", ()),
            "kwok": ("kwok-controller", ("system:masters",)),
            # The real node's: the Node authorizer and NodeRestriction know a
            # kubelet by this name and group; the bootstrap policy binds
            # kube-proxy's role to its user; the API server calls kubelets
            # (logs, exec) as a cluster admin.
            "kubelet": (f"system:node:{REAL_NODE_NAME}", ("system:nodes",)),
            "kube-proxy": ("system:kube-proxy", ()),
            "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ("system:masters",)),
        }
        for name, (user, groups) in users.items():
            pair = ca.issue(common_name=user, organizations=groups, client=True)
            pair.write(cert_path=pki / f"{name}.crt", key_path=pki / f"{name}.key")
            config = _kubeconfig(server=self.server, ca=ca.pair.cert_pem, client=pair, user=user)
            path = self.kubeconfig if name == "admin" else pki / f"{name}.kubeconfig"
            _write_private(path, yaml.safe_dump(config).encode())
        self._write_admission_config(ca, pki)
        return pki

    def _write_admission_config(self, ca: CertificateAuthority, pki: Path) -> None:
        """The API server presents a client certificate to every admission webhook.

        Its admission plugins read a kubeconfig whose user ``*`` (any webhook
        host) holds the certificate, as a production API server is set up for
        webhooks that authenticate it (docs/injection.md).
        """
        ca.issue(common_name=WEBHOOK_CLIENT_NAME, client=True).write(
            cert_path=pki / "webhook-client.crt", key_path=pki / "webhook-client.key"
        )
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "users": [
                {
                    "name": "*",
                    "user": {
                        "client-certificate": str(pki / "webhook-client.crt"),
                        "client-key": str(pki / "webhook-client.key"),
                    },
                }
            ],
        }
        _write_private(pki / "webhook-client.kubeconfig", yaml.safe_dump(kubeconfig).encode())
        plugin = {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "WebhookAdmissionConfiguration",
            "kubeConfigFile": str(pki / "webhook-client.kubeconfig"),
        }
        admission = {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "AdmissionConfiguration",
            "plugins": [
                {"name": name, "configuration": plugin}
                for name in ("MutatingAdmissionWebhook", "ValidatingAdmissionWebhook")
            ],
        }
        (pki / "admission.yaml").write_text(yaml.safe_dump(admission))

    def _etcd_argv(self, ports: _Ports) -> list[str]:
        client = f"http://127.0.0.1:{ports.etcd_client}"
        peer = f"http://127.0.0.1:{ports.etcd_peer}"
        return [
            str(self._tools.etcd),
            "--name=powgate",
            f"--data-dir={self.root / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=powgate={peer}",
            "--initial-cluster-state=new",
            # The data is thrown away after the run: durability buys nothing
            # and fsync is what makes etcd slow on a shared disk.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]

    def _apiserver_argv(self, ports: _Ports, pki: Path) -> list[str]:
        services = str(self.network.addresses.services) if self.network else "10.96.0.0/16"
        return [
            str(self._tools.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
            f"--bind-address={self._listen_address}",
            f"--advertise-address={self._listen_address}",
            f"--secure-port={ports.apiserver}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            # Added to the default plugins (which already include the
            # ServiceAccount and webhook plugins); named so the intent is visible.
            "--enable-admission-plugins=NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
            f"--admission-control-config-file={pki / 'admission.yaml'}",
            f"--service-account-issuer={_SA_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={services}",
            "--allow-privileged=true",
            # The kubernetes Service cannot point at a loopback address, so
            # without the node's network the endpoint reconciler would only
            # log failures; with it, pods reach this server at the link's host end.
            f"--endpoint-reconciler-type={'lease' if self.network else 'none'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            # Nodes are named, not resolvable: call kubelets at their addresses.
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false",
        ]

    def _component_argv(self, binary: Path, *, kubeconfig: Path, port: int) -> list[str]:
        return [
            str(binary),
            f"--kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            # One instance per cluster: electing a leader only delays start-up.
            "--leader-elect=false",
        ]

    def _controller_manager_argv(self, ports: _Ports, pki: Path) -> list[str]:
        return [
            *self._component_argv(
                self._tools.kube_controller_manager,
                kubeconfig=pki / "controller-manager.kubeconfig",
                port=ports.controller_manager,
            ),
            # The token controller signs service-account tokens and the root
            # CA publisher fills every namespace's kube-root-ca.crt from these.
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            # One identity for all controllers: per-controller service
            # accounts (what kubeadm sets up) make start-up seconds slower
            # while each waits for its token, and this cluster tests workloads,
            # not the controllers' own RBAC.
            "--use-service-account-credentials=false",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
        ]

    def _scheduler_argv(self, ports: _Ports, pki: Path) -> list[str]:
        return self._component_argv(
            self._tools.kube_scheduler,
            kubeconfig=pki / "scheduler.kubeconfig",
            port=ports.scheduler,
        )

    def _kwok_argv(self, ports: _Ports, pki: Path) -> list[str]:
        key, value = FAKE_NODE_ANNOTATION
        return [
            str(self._tools.kwok),
            f"--kubeconfig={pki / 'kwok.kubeconfig'}",
            f"--config={self._tools.kwok_stages}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={key}={value}",
            # Matches the heartbeat-with-lease stage: kwok renews node leases,
            # the way kubelets do, so the node lifecycle controller keeps the
            # fake nodes Ready.
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{ports.kwok}",
            "--cidr=10.244.0.0/16",
        ]

    # -- state -------------------------------------------------------------

    def _save_state(self) -> None:
        state: dict[str, Any] = {
            "server": self.server,
            "node_network": {
                "interface": self.network.addresses.interface,
                "inode": self._network_inode,
                "mark": self.network.mark,
            }
            if self.network
            else None,
            "owner": ProcessRecord.of(name="owner", pid=os.getpid()).to_json()
            if self._owned
            else None,
            "processes": [p.record.to_json() for p in self._processes],
        }
        path = self.root / _STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(path)

    def _log_tails(self) -> str:
        return "\n".join(
            f"--- {log.name} (last {_LOG_TAIL_LINES} lines) ---\n{tail(log, lines=_LOG_TAIL_LINES)}"
            for log in sorted(self.logs.glob("*.log"))
        )


class ApiServerReplica(Service):
    """A further kube-apiserver of a `LocalCluster`, as in a highly available control plane.

    Same etcd, flags, certificates and service-account keys as the first, so
    the cluster's kubeconfig and tokens work against it. It keeps its address
    across `stop` and `start`: a client pointed at it meets what clients meet
    when their API server restarts (an upgrade, a crash) — the same address
    and a new, empty watch cache. Started through the cluster, it is recorded
    in its state and stopped with it.
    """

    def __init__(self, *, cluster: LocalCluster, argv: Sequence[str], server: str) -> None:
        self.server = server
        self._cluster = cluster
        self._argv = list(argv)
        self._process: ManagedProcess | None = None

    def start(self) -> None:
        """Start it and return once it answers `/readyz`."""
        if self._process is not None:
            raise RuntimeError("the replica is already running")
        process = self._process = self._cluster._spawn("kube-apiserver-replica", self._argv)
        context = _admin_context(self._cluster.root)
        try:
            wait_until(
                lambda: _http_ok(f"{self.server}/readyz", context=context),
                what="kube-apiserver replica /readyz",
                timeout=_APISERVER_TIMEOUT,
                watch=[process],
            )
        except StartupError as exc:
            self.stop()
            log = tail(process.log_path, lines=_LOG_TAIL_LINES)
            raise StartupError(f"{exc}\n--- {process.log_path.name} ---\n{log}") from exc

    def stop(self) -> None:
        if self._process is not None:
            self._cluster._retire(self._process)
            self._process = None


def _http_ok(url: str, *, context: ssl.SSLContext | None) -> bool:
    try:
        response = httpx.get(url, verify=context or True, timeout=2.0)
    except httpx.HTTPError:
        return False
    return response.status_code == httpx.codes.OK


@dataclass(frozen=True, slots=True)
class _State:
    server: str
    owner: ProcessRecord | None
    processes: list[ProcessRecord]
    #: The real node's network: its host interface and its namespace's inode.
    node_network: tuple[int, str] | None


def _read_state(root: Path) -> _State | None:
    """The state file, or None if there is none or it cannot be understood.

    The file may come from an older version or a crash mid-write; a broken one
    is reported and treated as absent rather than failing `up` and `down`.
    """
    path = root / _STATE_FILE
    try:
        data = json.loads(path.read_text())
        owner = data["owner"]
        network = data.get("node_network")
        return _State(
            server=str(data["server"]),
            owner=ProcessRecord.from_json(owner) if owner is not None else None,
            processes=[ProcessRecord.from_json(p) for p in data["processes"]],
            node_network=(int(network["inode"]), str(network["mark"])) if network else None,
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"ignoring unreadable {path}: {exc!r}", file=sys.stderr)
        return None


def _clear_state(root: Path) -> list[str]:
    """Stop what a state folder records and delete it, except the logs.

    Returns the names of processes that were still running.
    """
    state = _read_state(root)
    # Newest first, as `LocalCluster.stop` does: etcd goes last.
    found = stop_recorded(reversed(state.processes), grace=_STOP_GRACE) if state else []
    if state and state.node_network:
        inode, mark = state.node_network
        _clean_node(root, inode=inode, mark=mark)
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name == "logs":
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    return found


def _clean_node(root: Path, *, inode: int, mark: str) -> None:
    """What a real node leaves once its processes are stopped: its runtime's
    shims and their containers, the mounts of pods and containers.

    The namespace, and with it the link (the host's `pgnode<N>` goes with its
    peer), its routes and its rules, goes with its last process; the link is
    never deleted by name, which a later run may have taken since.
    """
    cgroups = node_cgroups(root)
    kill_namespace(inode, mark=mark)
    unmount_below(*node_folders(root))
    for folder in node_folders(root):
        shutil.rmtree(folder, ignore_errors=True)
    for cgroup in cgroups:
        remove_cgroup(cgroup)


def reap_stale_runs(runs: Path) -> None:
    """Remove per-run folders under `runs` whose owning process is gone.

    A run killed with SIGKILL leaves its folder (and, if the kernel's
    parent-death signal could not reach them, its processes) behind.
    """
    if not runs.is_dir():
        return
    # One reaper at a time: runs that start together (test workers, checkouts
    # sharing a cache) would otherwise delete one dead run's files under each other.
    with (runs.parent / f"{runs.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for root in runs.iterdir():
            state = _read_state(root)
            owner = state.owner if state else None
            if owner is not None and process_alive(owner):
                continue
            if owner is None and root.name.isdigit() and Path(f"/proc/{root.name}").exists():
                # A run that has created its folder but not yet written its state.
                continue
            _clear_state(root)
            shutil.rmtree(root, ignore_errors=True)


def _status(root: Path) -> int:
    state = _read_state(root)
    if not state:
        print(f"no cluster in {root}")
        return 1
    records = state.processes
    for record in records:
        condition = "running" if process_alive(record) else "gone"
        print(f"{record.name:<24} pid {record.pid:<8} {condition}")
    ready = all(process_alive(r) for r in records) and _http_ok(
        f"{state.server}/readyz",
        context=_admin_context(root),
    )
    print(f"server {state.server}: {'ready' if ready else 'not ready'}")
    print(f"kubeconfig: {root / 'kubeconfig'}")
    return 0 if ready else 1


def _admin_context(root: Path) -> ssl.SSLContext:
    pki = root / "pki"
    context = ssl.create_default_context(cafile=pki / "ca.crt")
    context.load_cert_chain(pki / "admin.crt", pki / "admin.key")
    return context


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m powgate_testbed.cluster",
        description="Start, stop or inspect the local Kubernetes control plane.",
    )
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--nodes", type=int, default=2, help="fake kwok nodes (default 2)")
    args = parser.parse_args(argv)
    root = cache_dir() / "cluster"
    if args.action == "down":
        found = _clear_state(root)
        print(f"stopped: {', '.join(found) or 'nothing was running'}")
        return 0
    if args.action == "status":
        return _status(root)
    try:
        tools = Tools.locate(cache_dir())
        LocalCluster(root=root, tools=tools, nodes=args.nodes, owned=False).start()
    except (ToolsMissingError, StartupError, ValueError) as exc:
        print(f"cluster up failed: {exc}", file=sys.stderr)
        return 1
    print(root / "kubeconfig")
    return 0


if __name__ == "__main__":
    sys.exit(main())
