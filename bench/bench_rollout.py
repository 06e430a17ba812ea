"""Rollout latency: a config edit → every sidecar watcher has applied it.

A local control plane (etcd + kube-apiserver, as in the integration tests)
serves one rendered config ConfigMap. N watchers — the sidecar's own
:class:`powgate_sidecar.ConfigMapWatcher`, each with its own watch, using a
service-account token limited by the Role the operator grants injected pods —
run in a few worker processes (1000 sidecars' watches without 1000 Python
interpreters) on the sidecar's own event loop. The parent edits the
difficulty and times, per watcher, the edit → the moment the parsed,
validated document arrived. The reference is the same edit seen by a single
watcher, in the same run.

Also reported: the CPU time spent per edit (from /proc) by the API server
and by all watcher processes together, and the failures the watchers retried
(10,000 watches opening at once meet the API server's priority and fairness).

``POWGATE_ROLLOUT_SIZES=1,10000`` runs only those rows (the first is the
reference), ``POWGATE_ROLLOUT_EDITS=200`` makes more edits per row (to
profile a watcher process), ``POWGATE_ROLLOUT_PODS=0`` skips the real-pod table.

A second table does the same for sidecars running in real pods, on the local
cluster's real node (`powgate_testbed.node`; needs root, `make tools` and
`make images`): the chart's operator image in a pod, a Deployment of stand-in
replicas with injected sidecars, and the time from a PowPolicy edit to each
pod's sidecar handing out challenges at the new difficulty (asked at the
pod's own address every few milliseconds). That path includes the operator
rendering the ConfigMap, so its reference is the same edit with one replica.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from powgate import CHALLENGE_PATH, Challenge
from powgate.config import CONFIG_DATA_KEY, SidecarConfig
from powgate.contract import NAMESPACE_LABEL, NAMESPACE_LABEL_VALUE
from powgate.policy import GROUP, PLURAL, VERSION, LabelSelector, config_map_name
from powgate_operator._inject import PolicyRef
from powgate_operator._objects import role_binding_body, role_body, role_name
from powgate_sidecar._loop import new_event_loop
from powgate_testbed._netns import node_network_possible
from powgate_testbed.cluster import LocalCluster, Tools, cache_dir
from powgate_testbed.node import NodeTools, NodeToolsMissingError, RealNode

SIZES: Final = (1, 10, 100, 1000, 10_000)
#: The rows to run, e.g. ``1,10000`` (the first is the reference); default: SIZES.
SIZES_ENV: Final = "POWGATE_ROLLOUT_SIZES"
#: ``0`` skips the real-pod table (it needs root and the images, and takes minutes).
PODS_ENV: Final = "POWGATE_ROLLOUT_PODS"
EDITS: Final = 5
#: Edits per row instead of EDITS (e.g. many, to profile a watcher process under them).
EDITS_ENV: Final = "POWGATE_ROLLOUT_EDITS"
#: Watchers per worker process; 1000 watchers → 4 processes, 10,000 → 40, on this 2-core machine.
PER_PROCESS: Final = 250
NAMESPACE: Final = "rollout"
POLICY: Final = "bench"
_TICKS: Final = os.sysconf("SC_CLK_TCK")


def _config(difficulty: int) -> str:
    config = SidecarConfig(policy=f"{NAMESPACE}/{POLICY}", difficulty=difficulty)
    return config.model_copy(update={"version": config.content_version()}).to_json()


# -- worker process: many watchers, one report line per applied edit ---------------------


class _Reports:
    """The report lines of a process's watchers, written once per event-loop turn that
    made any: one write per event burst, and no timer waking 40 processes while they wait
    (with PYTHONUNBUFFERED a write per watcher cost more than the watch itself)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._lines: list[str] = []
        #: Failures the watchers retried, by reason, shared by the process's watchers: 10,000
        #: watchers starting at once meet the API server's priority and fairness (429s).
        self.retries: Counter[str] = Counter()
        self._retries_changed = False
        self._scheduled = False
        #: Nothing is written before the process's "synced" line.
        self._synced = False

    def synced(self) -> None:
        """Every watcher of the process has listed: say so (with the retries so far)."""
        sys.stdout.write(f"synced {json.dumps(self.retries)}\n")
        sys.stdout.flush()
        self._synced, self._retries_changed = True, False
        self._schedule()

    def add(self, line: str) -> None:
        self._lines.append(line)
        self._schedule()

    def retried(self, why: str) -> None:
        self.retries[why] += 1
        self._retries_changed = True
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._write)

    def _write(self) -> None:
        self._scheduled = False
        if not self._synced:
            return
        if self._retries_changed:
            self._retries_changed = False
            self._lines.append(f"retries {json.dumps(self.retries)}\n")
        sys.stdout.write("".join(self._lines))
        sys.stdout.flush()
        self._lines.clear()


class _Sink:
    def __init__(self, index: int, reports: _Reports) -> None:
        self.index = index
        self.reports = reports
        #: Set by the first document: the initial LIST is done.
        self.synced = asyncio.Event()

    def apply_document(self, text: str | bytes | None, *, source: str) -> bool:
        if text is None:
            return False
        # The sidecar's own parse and validation: the document is usable at this moment.
        config = SidecarConfig.from_json(text)
        now = time.monotonic()
        if self.synced.is_set():
            self.reports.add(f"{self.index} {config.difficulty} {now}\n")
        self.synced.set()
        return True

    def report_source_error(self, *, source: str, why: str) -> None:
        self.reports.retried(why.split(":", 2)[-1].strip())


async def _worker(spec: dict[str, Any]) -> None:
    from powgate_sidecar import ConfigMapWatcher, KubeClient, KubeEndpoint

    endpoint = KubeEndpoint(
        api_url=spec["server"], token_file=Path(spec["token"]), ca_file=Path(spec["ca"])
    )
    async with KubeClient(endpoint) as client:
        reports = _Reports()
        # Counted, not printed: uvloop reports each TLS handshake that a connect timeout
        # cut short with a traceback ("Fatal error on SSL protocol"), tens of thousands
        # while 10,000 watches open at once.
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: reports.retried(f"event loop: {context.get('message')}")
        )
        first, count = spec["first"], spec["count"]
        sinks = [_Sink(i, reports) for i in range(first, first + count)]
        watchers = [
            ConfigMapWatcher(
                client=client, namespace=NAMESPACE, name=config_map_name(POLICY), sink=sink
            )
            for sink in sinks
        ]
        tasks = [asyncio.create_task(w.run()) for w in watchers]
        await asyncio.gather(*(sink.synced.wait() for sink in sinks))
        reports.synced()
        await asyncio.gather(*tasks)  # watchers run until killed; one that fails ends the process


# -- parent ----------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _apiserver_pid(root: Path) -> int:
    state = json.loads((root / "state.json").read_text())
    return next(int(p["pid"]) for p in state["processes"] if p["name"] == "kube-apiserver")


def _setup(api: k8s.ApiClient, folder: Path, server: str, ca: Path) -> Path:
    """Namespace, ConfigMap, and a token for an account that may read only that ConfigMap."""
    core, rbac = k8s.CoreV1Api(api), k8s.RbacAuthorizationV1Api(api)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": "model"}})
    body = {"metadata": {"name": config_map_name(POLICY)}, "data": {CONFIG_DATA_KEY: _config(1)}}
    created = core.create_namespaced_config_map(NAMESPACE, body)
    policy = PolicyRef(
        namespace=NAMESPACE,
        name=POLICY,
        uid=str(created.metadata.uid),
        selector=LabelSelector(match_labels={"app": "bench"}),
    )
    role, binding = role_body(policy.metadata()), role_binding_body(policy.metadata(), ["model"])
    for manifest in (role, binding):
        del manifest["metadata"]["ownerReferences"]  # no PowPolicy here: the namespace owns them
    rbac.create_namespaced_role(NAMESPACE, role)
    rbac.create_namespaced_role_binding(NAMESPACE, binding)
    assert role_name(POLICY) == binding["roleRef"]["name"]
    token = core.create_namespaced_service_account_token(
        "model", NAMESPACE, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    path = folder / "token"
    path.write_text(token)
    return path


@dataclass(frozen=True, slots=True)
class _Row:
    latencies: list[float]
    #: CPU seconds per edit: the API server's, and all watcher processes' together.
    apiserver_cpu: float
    watchers_cpu: float
    #: Failures the watchers retried (their watch connections, mostly at start), by reason.
    retries: Counter[str]


def _measure(
    core: k8s.CoreV1Api, *, n: int, edits: int, spec: dict[str, Any], apiserver: int, start: int
) -> _Row:
    """Every watcher's latency over `edits` edits, and the CPU each edit cost."""
    workers = []
    counts = [min(PER_PROCESS, n - first) for first in range(0, n, PER_PROCESS)]
    for first, count in zip(range(0, n, PER_PROCESS), counts, strict=True):
        worker_spec = {**spec, "first": first, "count": count}
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.bench_rollout", json.dumps(worker_spec)],
                stdout=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).resolve().parents[1],
            )
        )
    try:
        retries: dict[int, Counter[str]] = {}
        for worker in workers:
            assert worker.stdout is not None
            word, _, counts_json = worker.stdout.readline().partition(" ")
            if word != "synced":
                raise RuntimeError("a watcher process ended before it synced")
            retries[worker.pid] = Counter(json.loads(counts_json))
        latencies: list[float] = []
        cpu = watchers_cpu = 0.0
        for edit in range(edits):
            difficulty = start + edit
            cpu_before = _cpu_seconds(apiserver)
            watchers_before = sum(_cpu_seconds(worker.pid) for worker in workers)
            t0 = time.monotonic()
            core.patch_namespaced_config_map(
                config_map_name(POLICY), NAMESPACE, {"data": {CONFIG_DATA_KEY: _config(difficulty)}}
            )
            for worker, count in zip(workers, counts, strict=True):
                assert worker.stdout is not None
                got = 0
                while got < count:
                    line = worker.stdout.readline()
                    if line.startswith("retries "):
                        retries[worker.pid] = Counter(json.loads(line.removeprefix("retries ")))
                        continue
                    _, value, at = line.split()
                    if int(value) == difficulty:
                        latencies.append(float(at) - t0)
                        got += 1
            cpu += _cpu_seconds(apiserver) - cpu_before
            watchers_cpu += sum(_cpu_seconds(worker.pid) for worker in workers) - watchers_before
            time.sleep(0.2)
        return _Row(latencies, cpu / edits, watchers_cpu / edits, sum(retries.values(), Counter()))
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- sidecars in real pods ---------------------------------------------------------------

#: Stand-in replicas, each with its injected sidecar; sized for 2 cores.
POD_SIZES: Final = (1, 10)
CHART: Final = Path(__file__).resolve().parents[1] / "charts" / "powgate"
_POLL: Final = 0.005


def _helm(kubeconfig: Path, *args: str) -> None:
    subprocess.run(
        [str(cache_dir() / "bin" / "helm"), *args],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        check=True,
        capture_output=True,
        timeout=300,
    )


def _deployment(node: RealNode, replicas: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "standin"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "standin"}},
            "template": {
                "metadata": {"labels": {"app": "standin"}},
                "spec": {
                    "nodeSelector": node.selector,
                    "tolerations": [node.toleration],
                    "containers": [
                        {
                            "name": "app",
                            "image": node.image("standin"),
                            "imagePullPolicy": "Never",
                            "ports": [{"name": "http", "containerPort": 8000}],
                        }
                    ],
                },
            },
        },
    }


def _sidecar_urls(core: k8s.CoreV1Api, namespace: str, replicas: int) -> list[str] | None:
    """The proxy URL of every Ready injected pod, once there are `replicas` of them."""
    pods = core.list_namespaced_pod(namespace, label_selector="app=standin").items
    urls = []
    for pod in pods:
        ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        sidecars = [c for c in pod.spec.init_containers or [] if c.name == "powgate-sidecar"]
        if ready and sidecars and pod.metadata.deletion_timestamp is None:
            (port,) = [p.container_port for p in sidecars[0].ports if p.name == "http"]
            urls.append(f"http://{pod.status.pod_ip}:{port}")
    return urls if len(urls) == replicas else None


async def _until_all(urls: list[str], difficulty: int, t0: float) -> list[float]:
    """Per sidecar, the time from `t0` to its first challenge at `difficulty`."""
    import httpx

    async def one(client: httpx.AsyncClient, url: str) -> float:
        while True:
            answer = await client.get(url + CHALLENGE_PATH, params={"path": "/v1/chat"})
            if Challenge.from_json(answer.content).maxnumber == difficulty:
                return time.monotonic() - t0
            await asyncio.sleep(_POLL)

    async with httpx.AsyncClient(timeout=10) as client:
        return list(await asyncio.wait_for(asyncio.gather(*(one(client, u) for u in urls)), 120))


def _wait(probe: Any, what: str, timeout: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout
    while (value := probe()) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.5)
    return value


def real_pods(tools: Tools, folder: Path) -> None:
    why = node_network_possible()
    try:
        node_tools = NodeTools.locate(cache_dir())
    except NodeToolsMissingError as exc:
        why = str(exc)
    if why:
        print(f"sidecars in real pods: skipped ({why})")
        return
    with (
        LocalCluster(root=folder / "pods", tools=tools, nodes=1, node_network=True) as cluster,
        RealNode(cluster=cluster, tools=node_tools) as node,
    ):
        api = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))
        core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
        custom = k8s.CustomObjectsApi(api)
        ns = "rollout-pods"
        core.create_namespace({"metadata": {"name": "powgate"}})
        core.create_namespace(
            {"metadata": {"name": ns, "labels": {NAMESPACE_LABEL: NAMESPACE_LABEL_VALUE}}}
        )
        placement = {"nodeSelector": node.selector, "tolerations": [node.toleration]}
        values = {
            "operator": {
                "image": {"repository": "powgate-operator", "tag": "dev", "pullPolicy": "Never"},
                "watchNamespaces": [ns],
                **placement,
            },
            "sidecar": {
                "image": {"repository": "powgate-sidecar", "tag": "dev", "pullPolicy": "Never"},
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
            },
        }
        (folder / "values.json").write_text(json.dumps(values))
        _helm(
            cluster.kubeconfig, "install", "powgate", str(CHART), "--namespace", "powgate",
            "--values", str(folder / "values.json"), "--wait", "--timeout", "300s",
        )  # fmt: skip
        policy = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "PowPolicy",
            "metadata": {"name": POLICY},
            "spec": {
                "selector": {"matchLabels": {"app": "standin"}},
                "difficulty": {"min": 1000, "max": 1_000_000},
            },
        }
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, policy)
        apps.create_namespaced_deployment(ns, _deployment(node, POD_SIZES[0]))
        print(f"{'sidecar pods':>12} {'p50 ms':>8} {'max ms':>8} {'max/ref':>8}")
        reference: float | None = None
        for round_, replicas in enumerate(POD_SIZES):
            apps.patch_namespaced_deployment_scale("standin", ns, {"spec": {"replicas": replicas}})
            urls = _wait(lambda n=replicas: _sidecar_urls(core, ns, n), f"{replicas} pods Ready")
            latencies: list[float] = []
            for edit in range(EDITS):
                difficulty = 10_000 * (round_ + 1) + edit
                t0 = time.monotonic()
                custom.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    ns,
                    PLURAL,
                    POLICY,
                    {"spec": {"difficulty": {"min": difficulty}}},
                )
                latencies += asyncio.run(_until_all(urls, difficulty, t0))
                time.sleep(0.2)
            worst = max(latencies)
            reference = reference or worst
            print(
                f"{replicas:>12} {statistics.median(latencies) * 1e3:>8.1f} "
                f"{worst * 1e3:>8.1f} {worst / reference:>8.1f}",
                flush=True,
            )
        print(
            f"(policy edit → every pod's sidecar issuing challenges at the new difficulty; "
            f"{EDITS} edits per row; reference: 1 pod)"
        )
        api.close()


def _sizes() -> tuple[int, ...]:
    chosen = os.environ.get(SIZES_ENV, "").strip()
    if not chosen:
        return SIZES
    try:
        sizes = tuple(int(size) for size in chosen.split(","))
    except ValueError:
        raise SystemExit(
            f"{SIZES_ENV}={chosen!r}: expected watcher counts such as 1,10000"
        ) from None
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"{SIZES_ENV}={chosen!r}: every count must be at least 1")
    return sizes


def main() -> None:
    sizes = _sizes()
    edits = int(os.environ.get(EDITS_ENV, "") or EDITS)
    if not 1 <= edits < 1000:  # each row's difficulties start 1000 apart
        raise SystemExit(f"{EDITS_ENV}={edits}: expected 1 to 999 edits per row")
    tools = Tools.locate(cache_dir())
    with tempfile.TemporaryDirectory(prefix="powgate-rollout-") as tmp:
        folder = Path(tmp)
        with LocalCluster(root=folder / "cluster", tools=tools, nodes=1) as cluster:
            api = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))
            core = k8s.CoreV1Api(api)
            token = _setup(api, folder, cluster.server, cluster.ca_file)
            kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
            spec = {
                "server": kubeconfig["clusters"][0]["cluster"]["server"],
                "token": str(token),
                "ca": str(cluster.ca_file),
            }
            apiserver = _apiserver_pid(folder / "cluster")
            print(
                f"{'watchers':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'max/ref':>8} "
                f"{'apiserver CPU ms/edit':>22} {'watchers CPU ms/edit':>21}"
            )
            reference: float | None = None
            retried: dict[int, Counter[str]] = {}
            for round_, n in enumerate(sizes):
                row = _measure(
                    core,
                    n=n,
                    edits=edits,
                    spec=spec,
                    apiserver=apiserver,
                    start=1000 * (round_ + 1),
                )
                worst = max(row.latencies)
                reference = reference or worst
                print(
                    f"{n:>8} {statistics.median(row.latencies) * 1e3:>8.1f} "
                    f"{_quantile(row.latencies, 0.99) * 1e3:>8.1f} {worst * 1e3:>8.1f} "
                    f"{worst / reference:>8.1f} {row.apiserver_cpu * 1e3:>22.0f} "
                    f"{row.watchers_cpu * 1e3:>21.0f}",
                    flush=True,
                )
                if row.retries:
                    retried[n] = row.retries
            print(
                f"(reference: the same edit seen by 1 watcher; {edits} edits per row; "
                f"{PER_PROCESS} watchers per process; target: max < 1000 ms at 10,000)"
            )
            for n, retries in retried.items():
                reasons = ", ".join(f"{why} ({count})" for why, count in retries.most_common())
                print(f"{n} watchers retried: {reasons}")
            api.close()
        if os.environ.get(PODS_ENV, "1") != "0":
            print()
            real_pods(tools, folder)


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        # The sidecar's own event loop (uvloop): the watchers cost what they cost in a pod.
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_worker(json.loads(sys.argv[1])))
    else:
        main()
