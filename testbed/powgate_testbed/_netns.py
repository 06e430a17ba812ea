"""The real node's network: a network namespace of the test run's own, joined to the host by veth.

The node's container runtime, kubelet and kube-proxy run inside it, so the
CNI bridge, the pods' addresses and kube-proxy's iptables rules live there
and nowhere else: the host's own tables are never touched, and runs in
parallel on one machine never see each other's rules. The namespace is
held open by a sleeping process; when the last process in it ends, the
kernel removes it with its interfaces, rules and routes.

Addresses come from 198.18.0.0/15, the range set aside for network tests
(RFC 2544), one /19 block per run:

- services: the block's first /21 (the API server's `--service-cluster-ip-range`);
- pods: the next /22, on the node's CNI bridge;
- the link: the block's last /30, the host's end (where the API server
  listens) and the node's end (the node's InternalIP).

The host reaches the whole block through the node's end of the link, so a
client on the host reaches a ClusterIP through kube-proxy in the node's
namespace; nothing routes the block anywhere else, and the node's namespace
has no default route, so no packet leaves the machine. The host-side
interface, `pgnode<N>`, is what reserves block N: creating it fails if
another run holds the block.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import secrets
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from powgate_testbed._process import ManagedProcess, StartupError, wait_until

__all__ = [
    "NodeAddresses",
    "NodeNetwork",
    "NodeNetworkError",
    "kill_namespace",
    "node_cgroups",
    "node_folders",
    "node_network_possible",
    "remove_cgroup",
    "unmount_below",
]

_POOL = ipaddress.IPv4Network("198.18.0.0/15")
_BLOCK_PREFIX = 19
_INTERFACE_PREFIX = "pgnode"
_HOLDER_TIMEOUT = 10.0


class NodeNetworkError(RuntimeError):
    """The namespace or its link could not be set up."""


def node_network_possible() -> str | None:
    """None when this machine can give the run a network namespace, else why not."""
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    for tool in ("/usr/bin/unshare", "/usr/bin/nsenter", "/usr/sbin/ip"):
        if not Path(tool).exists():
            return f"{tool} is missing (util-linux, iproute2)"
    return None


@dataclass(frozen=True, slots=True)
class NodeAddresses:
    """The addresses of one run's block (see the module's documentation)."""

    index: int

    @property
    def block(self) -> ipaddress.IPv4Network:
        return list(_POOL.subnets(new_prefix=_BLOCK_PREFIX))[self.index]

    @property
    def services(self) -> ipaddress.IPv4Network:
        return next(self.block.subnets(new_prefix=21))

    @property
    def pods(self) -> ipaddress.IPv4Network:
        return list(self.block.subnets(new_prefix=22))[2]

    @property
    def link(self) -> ipaddress.IPv4Network:
        return list(self.block.subnets(new_prefix=30))[-1]

    @property
    def host(self) -> ipaddress.IPv4Address:
        """The host's end of the link: where the API server listens for the node."""
        return self.link[1]

    @property
    def node(self) -> ipaddress.IPv4Address:
        """The node's end of the link: its InternalIP."""
        return self.link[2]

    @property
    def kubernetes_service(self) -> ipaddress.IPv4Address:
        """The `kubernetes` Service's ClusterIP, the first of the service range."""
        return self.services[1]

    @property
    def pod_gateway(self) -> ipaddress.IPv4Address:
        return self.pods[1]

    @property
    def interface(self) -> str:
        return f"{_INTERFACE_PREFIX}{self.index}"

    @classmethod
    def count(cls) -> int:
        return int(2 ** (_BLOCK_PREFIX - _POOL.prefixlen))


def _ip(*args: str, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["nsenter", f"--net={netns}", "--"] if netns else []
    return subprocess.run(
        [*prefix, "ip", *args], capture_output=True, text=True, check=False, timeout=30
    )


def _must(result: subprocess.CompletedProcess[str]) -> None:
    if result.returncode != 0:
        raise NodeNetworkError(f"{' '.join(map(str, result.args))}: {result.stderr.strip()}")


class NodeNetwork:
    """The namespace and its link, set up by `create` and torn down by `delete`.

    `spawn` starts a process the way the cluster starts its components
    (recorded in its state, stopped with it): the namespace's holder is one.
    """

    def __init__(self, *, addresses: NodeAddresses, holder: ManagedProcess) -> None:
        self.addresses = addresses
        self.holder = holder
        #: Set as the namespace's link's alias: what tells this run's namespace
        #: from a later one that got the same inode number.
        self.mark = f"powgate-node-{secrets.token_hex(8)}"

    @property
    def path(self) -> str:
        """The namespace, as `nsenter --net=` and `setns` take it."""
        return f"/proc/{self.holder.record.pid}/ns/net"

    def inode(self) -> int:
        return int(os.stat(self.path).st_ino)

    def enter(self, argv: Sequence[str]) -> list[str]:
        """`argv`, run inside the namespace."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    @classmethod
    def create(cls, *, spawn: Callable[[str, Sequence[str]], ManagedProcess]) -> NodeNetwork:
        holder = spawn("node-netns", ["unshare", "--net", "--", "sleep", "infinity"])
        own = os.stat("/proc/self/ns/net").st_ino

        def entered() -> bool:
            try:
                return os.stat(f"/proc/{holder.record.pid}/ns/net").st_ino != own
            except FileNotFoundError:
                return False

        try:
            wait_until(
                entered,
                what="the node's network namespace",
                timeout=_HOLDER_TIMEOUT,
                watch=[holder],
            )
        except StartupError as exc:
            raise NodeNetworkError(str(exc)) from exc
        netns = f"/proc/{holder.record.pid}/ns/net"
        for index in range(NodeAddresses.count()):
            addresses = NodeAddresses(index)
            made = _ip(
                "link", "add", addresses.interface, "type", "veth",
                "peer", "name", "eth0", "netns", netns,
            )  # fmt: skip
            if made.returncode == 0:
                break
            if "File exists" not in made.stderr:
                _must(made)
        else:
            raise NodeNetworkError(f"all {NodeAddresses.count()} address blocks are in use")
        network = cls(addresses=addresses, holder=holder)
        try:
            network._configure()
        except BaseException:
            network.delete()
            raise
        return network

    def _configure(self) -> None:
        a = self.addresses
        link = a.link.prefixlen
        _must(_ip("addr", "add", f"{a.host}/{link}", "dev", a.interface))
        _must(_ip("link", "set", a.interface, "up"))
        _must(_ip("route", "add", str(a.block), "via", str(a.node), "dev", a.interface))
        _must(_ip("addr", "add", f"{a.node}/{link}", "dev", "eth0", netns=self.path))
        _must(_ip("link", "set", "eth0", "alias", self.mark, netns=self.path))
        _must(_ip("link", "set", "eth0", "up", netns=self.path))
        _must(_ip("link", "set", "lo", "up", netns=self.path))
        # Routing between the link and the pods' bridge, and iptables on
        # bridged traffic (kube-proxy's rules must see a pod reaching a
        # Service that is served by a pod on the same bridge): both settings
        # belong to the namespace, not the host.
        for key in ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"):
            result = subprocess.run(
                self.enter(["sh", "-c", f"echo 1 > /proc/sys/{key}"]),
                capture_output=True,
                text=True,
                check=False,
            )
            _must(result)

    def delete(self) -> None:
        """Remove the host's end of the link, while this run still holds it (a failed set-up)."""
        _ip("link", "delete", self.addresses.interface)


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return parents


def _in_namespace(pid: int, inode: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == inode
    except OSError:
        return False


def kill_namespace(inode: int, *, mark: str) -> int:
    """SIGKILL every process in the namespace `inode`, and all their descendants.

    What stays after the node's own processes are stopped: the container
    runtime's shims (they run in the node's namespace, in sessions of their
    own) and the containers they started (in the pods' namespaces, their
    children). The kernel reuses the inode numbers of namespaces that are
    gone, so the namespace must also carry the run's `mark` (see `NodeNetwork`)
    or nothing is killed: a stale record never hits another run's node.
    Returns how many processes were killed.
    """
    parents = _parents()
    doomed = {pid for pid in parents if pid != os.getpid() and _in_namespace(pid, inode)}
    if not doomed or not _marked(min(doomed), mark):
        return 0
    grown = True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in doomed} - doomed
        doomed |= children
        grown = bool(children)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    return len(doomed)


def _marked(pid: int, mark: str) -> bool:
    shown = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "--", "ip", "-o", "link", "show", "eth0"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return f"alias {mark}" in shown.stdout


def unmount_below(*folders: Path) -> None:
    """Detach every mount at or below `folders` (pod volumes, container root file systems)."""
    prefixes = [str(folder.resolve()) for folder in folders]
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == p or point.startswith(p + "/") for p in prefixes):
            mounts.append(point)
    # Deepest first; lazily, so one busy mount does not keep the others.
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


def _tag(root: Path) -> str:
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]


def node_folders(root: Path) -> tuple[Path, Path]:
    """Where a cluster's real node keeps its state: under the cluster's folder, and
    under /run for the sockets (a socket's path may have at most 108 bytes)."""
    return root / "node", Path("/run/powgate-node") / _tag(root)


def node_cgroups(root: Path) -> list[str]:
    """The cgroups of a cluster's real node's containers.

    containerd's CRI plugin puts each under /k8s.io/<container id> when the
    kubelet names no parent (as without QoS cgroups); the ids are those of
    the task folders in the runtime's state.
    """
    tasks = node_folders(root)[1] / "state" / "io.containerd.runtime.v2.task" / "k8s.io"
    try:
        return [f"/k8s.io/{task.name}" for task in tasks.iterdir()]
    except FileNotFoundError:
        return []


def remove_cgroup(name: str) -> None:
    """Remove the cgroup `name` and those below it, in every controller's hierarchy.

    Their processes must be gone; a cgroup that still has some stays.
    """
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / name.lstrip("/")
        if not top.is_dir():
            continue
        for folder in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
        ):
            with contextlib.suppress(OSError):
                folder.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()
