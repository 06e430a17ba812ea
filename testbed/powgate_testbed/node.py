"""A real node in the local cluster: containerd, runc, CNI, kubelet and kube-proxy.

Beside the kwok nodes, which only pretend, this node runs pods: the images
`make images` built are loaded into its containerd, its kubelet starts their
containers with runc, the CNI bridge gives them addresses, and kube-proxy
routes Services to them. Everything runs inside the network namespace the
cluster made for it (`_netns`), under the cluster's folder, and is stopped
with the cluster; what the runtime leaves behind it (shims, containers,
mounts) is found by that namespace and those folders and removed too.

    with LocalCluster(root=..., tools=..., node_network=True) as cluster:
        with RealNode(cluster=cluster, tools=NodeTools.locate(cache)) as node:
            ...  # pods that tolerate REAL_NODE_TAINT and select the node run here

The node carries the taint `powgate.dev/real-node=true:NoSchedule`, so pods
meant for kwok's fake nodes never land on it; pods meant for it tolerate the
taint and select it by name (`node.selector`, `node.toleration`).

Settings that matter on the machines this runs on (cgroup v1, a VM kernel,
root): the kubelet must be told to accept cgroup v1 and not to manage QoS
cgroups or node allocatable; containerd's CRI plugin must not raise the
OOM score of its shims' children (`restrict_oom_score_adj`), and runc must
be a recent one (Debian's 1.1 fails every sandbox there).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

import httpx
import yaml

from powgate_testbed._netns import NodeNetwork, node_folders
from powgate_testbed._process import ManagedProcess, Service, StartupError, tail, wait_until
from powgate_testbed.cluster import REAL_NODE_NAME, LocalCluster
from powgate_testbed.images import IMAGES, PAUSE

__all__ = [
    "REAL_NODE_NAME",
    "REAL_NODE_TAINT",
    "NodeTools",
    "NodeToolsMissingError",
    "RealNode",
]

#: Keeps pods that do not ask for the real node off it.
REAL_NODE_TAINT: Final = ("powgate.dev/real-node", "true", "NoSchedule")
#: Where Debian's containernetworking-plugins puts the CNI plugins.
_CNI_BIN = Path("/usr/lib/cni")
_CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
_CONTAINERD_TIMEOUT = 30.0
_IMPORT_TIMEOUT = 300.0
_READY_TIMEOUT = 120.0
_LOG_TAIL_LINES = 30
_KUBE_PROXY_HEALTH_PORT = 10256


class NodeToolsMissingError(FileNotFoundError):
    """A binary or image the real node needs is missing; the message names the fix."""


@dataclass(frozen=True, slots=True)
class NodeTools:
    """What the node runs: built tools (`make tools`), Debian's runtime, the images."""

    kubelet: Path
    kube_proxy: Path
    runc: Path
    containerd: Path
    ctr: Path
    iptables: Path
    images: tuple[Path, ...]
    image_tag: str

    @classmethod
    def locate(cls, cache: Path, *, image_tag: str = "dev") -> NodeTools:
        bin_dir = cache / "bin"
        tools = cls(
            kubelet=bin_dir / "kubelet",
            kube_proxy=bin_dir / "kube-proxy",
            runc=bin_dir / "runc",
            containerd=Path("/usr/bin/containerd"),
            ctr=Path("/usr/bin/ctr"),
            iptables=Path("/usr/sbin/iptables"),
            images=tuple(image.archive(cache) for image in (*IMAGES, PAUSE)),
            image_tag=image_tag,
        )
        hints = {
            "kubelet": "make tools",
            "kube_proxy": "make tools",
            "runc": "make tools",
            "containerd": "make system-deps",
            "ctr": "make system-deps",
            "iptables": "make system-deps",
        }
        missing = [
            f"{getattr(tools, name)} ({hint})"
            for name, hint in hints.items()
            if not Path(getattr(tools, name)).exists()
        ]
        missing += [f"{path} (make images)" for path in tools.images if not path.is_file()]
        missing += [
            f"{_CNI_BIN / plugin} (make system-deps)"
            for plugin in _CNI_PLUGINS
            if not (_CNI_BIN / plugin).exists()
        ]
        if missing:
            raise NodeToolsMissingError(f"the real node needs: {', '.join(missing)}")
        return tools

    def paths(self) -> tuple[Path, ...]:
        return tuple(
            getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), Path)
        )


class RealNode(Service):
    """The node `powgate-node` of a running `LocalCluster` made with `node_network=True`.

    Its processes are the cluster's (recorded in its state, stopped with it);
    `stop` stops only the node, and the cluster's own `stop` cleans up
    whatever the node left.
    """

    def __init__(self, *, cluster: LocalCluster, tools: NodeTools) -> None:
        if cluster.network is None:
            raise ValueError("the cluster was started without node_network=True")
        self.name = REAL_NODE_NAME
        self._cluster = cluster
        self._network: NodeNetwork = cluster.network
        self._tools = tools
        self.root, self._run = node_folders(cluster.root)
        self._processes: list[ManagedProcess] = []

    # -- what pods need to run here -------------------------------------------

    @property
    def selector(self) -> dict[str, str]:
        """A pod's nodeSelector for this node."""
        return {"kubernetes.io/hostname": self.name}

    @property
    def toleration(self) -> dict[str, str]:
        """A pod's toleration of this node's taint."""
        key, value, effect = REAL_NODE_TAINT
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}

    @property
    def address(self) -> str:
        """The node's InternalIP (its end of the link)."""
        return str(self._network.addresses.node)

    @property
    def host_address(self) -> str:
        """The host's end of the node's link: where pods reach a server of the test run."""
        return str(self._network.addresses.host)

    def image(self, name: str) -> str:
        """The reference of a loaded image, e.g. `image("sidecar")`."""
        return f"powgate-{name}:{self._tools.image_tag}"

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        t0 = time.monotonic()
        try:
            self._start(t0)
        except (StartupError, httpx.HTTPError, subprocess.SubprocessError) as exc:
            logs = self._log_tails()
            self.stop()
            raise StartupError(f"real node: {exc}\n{logs}") from exc
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        # kubelet first (it would restart what is stopped under it), then
        # kube-proxy and containerd; the shims and containers stay for the
        # cluster's clean-up, which finds them by the node's namespace.
        for process in reversed(self._processes):
            self._cluster._retire(process)
        self._processes.clear()

    def _start(self, t0: float) -> None:
        for folder in (self.root, self._run):
            folder.mkdir(parents=True, exist_ok=True)
        containerd = self._spawn("containerd", self._containerd_argv())
        wait_until(
            self._containerd_answers,
            what="containerd",
            timeout=_CONTAINERD_TIMEOUT,
            watch=[containerd],
        )
        t_runtime = time.monotonic() - t0
        self._import_images()
        t_images = time.monotonic() - t0
        self._spawn("kubelet", self._kubelet_argv())
        self._spawn("kube-proxy", self._kube_proxy_argv())
        with httpx.Client(
            base_url=self._cluster.server, verify=self._cluster.admin_context(), timeout=10.0
        ) as api:
            wait_until(
                lambda: self._ready(api),
                what=f"node {self.name} Ready and kube-proxy healthy",
                timeout=_READY_TIMEOUT,
                watch=self._processes,
            )
        print(
            f"real node ready in {time.monotonic() - t0:.1f} s (containerd {t_runtime:.1f} s, "
            f"images loaded after {t_images:.1f} s)",
            file=sys.stderr,
        )

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        process = self._cluster._spawn(name, self._network.enter(argv))
        self._processes.append(process)
        return process

    # -- containerd -----------------------------------------------------------

    @property
    def _socket(self) -> Path:
        return self._run / "containerd.sock"

    def _containerd_argv(self) -> list[str]:
        config = self.root / "containerd.toml"
        config.write_text(self._containerd_config())
        cni = self.root / "cni"
        cni.mkdir(exist_ok=True)
        (cni / "10-powgate.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        return [str(self._tools.containerd), f"--config={config}", "--log-level=warn"]

    def _containerd_config(self) -> str:
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""\
version = 2
root = "{self.root / "containerd"}"
state = "{self._run / "state"}"
# Snapshotters this node never uses; without them start-up is quieter.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self._socket}"

[ttrpc]
  address = "{self._run / "containerd.sock.ttrpc"}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.root / "opt"}"

[{cri}]
  sandbox_image = "{self.image("pause")}"
  # The kernels this runs on refuse a shim's child raising its OOM score.
  restrict_oom_score_adj = true
  enable_selinux = false
  netns_mounts_under = "{self._run / "netns"}"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{self._tools.runc}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{_CNI_BIN}"
  conf_dir = "{self.root / "cni"}"
  max_conf_num = 1
"""

    def _cni_config(self) -> dict[str, Any]:
        a = self._network.addresses
        return {
            "cniVersion": "1.0.0",
            "name": "powgate",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    # Pods keep their addresses towards the host, which routes
                    # the node's block back through the link; nothing is
                    # translated to leave the namespace, because nothing leaves.
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(a.pods), "gateway": str(a.pod_gateway)}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.root / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def _ctr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self._tools.ctr), f"--address={self._socket}", "--namespace=k8s.io", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def _containerd_answers(self) -> bool:
        return self._socket.exists() and self._ctr("version", timeout=5).returncode == 0

    def _import_images(self) -> None:
        for archive in self._tools.images:
            result = self._ctr("images", "import", str(archive), timeout=_IMPORT_TIMEOUT)
            if result.returncode != 0:
                raise StartupError(f"ctr images import {archive}: {result.stderr.strip()}")

    # -- kubelet and kube-proxy -----------------------------------------------

    def _kubelet_argv(self) -> list[str]:
        pki = self._cluster.root / "pki"
        key, value, effect = REAL_NODE_TAINT
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # The machines have cgroup v1 controllers only, and no systemd.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self._socket}",
            "address": self.address,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            # No cluster DNS here: pods reach Services by their addresses.
            "resolvConf": "",
            "registerWithTaints": [{"key": key, "value": value, "effect": effect}],
            # Images cannot be pulled again: never collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "podCIDR": str(self._network.addresses.pods),
            "maxPods": 50,
            "serializeImagePulls": False,
            # A changed Secret reaches a pod's volume only when the kubelet resyncs
            # the pod: every syncFrequency plus up to half of it again, per pod (1 min
            # by default). 10 s keeps that delay real and different for each pod
            # while a key rotation test waits seconds per phase instead of minutes.
            "syncFrequency": "10s",
        }
        path = self.root / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config))
        return [
            str(self._tools.kubelet),
            f"--config={path}",
            f"--kubeconfig={pki / 'kubelet.kubeconfig'}",
            # Under /run like the runtime's sockets: the kubelet puts its own
            # sockets (pod resources, plugin registration) in its root folder,
            # and a socket's path may have at most 108 bytes.
            f"--root-dir={self._run / 'kubelet'}",
            f"--cert-dir={self.root / 'kubelet-pki'}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.address}",
            "--node-labels=powgate.dev/real-node=true",
            "--v=1",
        ]

    def _kube_proxy_argv(self) -> list[str]:
        pki = self._cluster.root / "pki"
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(pki / "kube-proxy.kubeconfig")},
            "hostnameOverride": self.name,
            "clusterCIDR": str(self._network.addresses.pods),
            "bindAddress": self.address,
            "healthzBindAddress": f"{self.address}:{_KUBE_PROXY_HEALTH_PORT}",
            "metricsBindAddress": "127.0.0.1:10249",
            # Conntrack's table sizes and timeouts are the host's; inside a
            # network namespace they are read-only, so leave them alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
        }
        path = self.root / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        return [str(self._tools.kube_proxy), f"--config={path}", "--v=1"]

    def _ready(self, api: httpx.Client) -> bool:
        node = api.get(f"/api/v1/nodes/{self.name}")
        if node.status_code != httpx.codes.OK:
            return False
        conditions = node.json().get("status", {}).get("conditions", [])
        if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            return False
        try:
            health = httpx.get(
                f"http://{self.address}:{_KUBE_PROXY_HEALTH_PORT}/healthz", timeout=2
            )
        except httpx.HTTPError:
            return False
        return health.status_code == httpx.codes.OK

    def _log_tails(self) -> str:
        return "\n".join(
            f"--- {p.log_path.name} (last {_LOG_TAIL_LINES} lines) ---\n"
            f"{tail(p.log_path, lines=_LOG_TAIL_LINES)}"
            for p in self._processes
        )
