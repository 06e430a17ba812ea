"""Key rotation under load with real sidecar processes, one of which gets its keys late.

The operator runs as its own process against the real API server and reads
the sidecars' ``powgate_key_info`` from a real Prometheus. Three ``powgate
sidecar`` processes follow the policy's ConfigMap through the API server and
read their key ring from a file, as from a mounted Secret: a stand-in for the
kubelet copies the key Secret into each file, promptly for two of them and
:data:`LAG` seconds late for the third (a kubelet syncs a pod's Secret volume
only every minute or so). Meanwhile a client fetches each challenge from one
sidecar and spends its solution at another, as a load balancer would send
it. Every solution must pay: a key that signs before the late sidecar holds
it, or retires while it still signs with it, shows up as a refusal.
"""

from __future__ import annotations

import base64
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest
import yaml
from _operator_process import OperatorProcess, apply_crd, delete_policies
from _sidecar_process import (
    SidecarEndpoints,
    config_reader,
    start_sidecar,
    start_standin,
)
from kubernetes import client as k8s

from powgate import CHALLENGE_PATH, Challenge, KeyRing, solve
from powgate.contract import KEYRING_SECRET_KEY
from powgate.policy import GROUP, PLURAL, VERSION, config_map_name, key_secret_name
from powgate_testbed._process import ManagedProcess, stop_all
from powgate_testbed.cluster import ClusterAccess
from powgate_testbed.prometheus import PrometheusServer, ScrapeTarget
from waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "powpolicy.yaml").read_text())
POLICY = "rotating"
#: How late the third sidecar's key file follows the Secret, in seconds: longer than
#: the propagation bound below, so a switch on the bound alone would refuse requests.
LAG = 12.0
#: Switches of the signing key to see under load.
SWITCHES = 2
WAIT = 60.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def operator(
    cluster: ClusterAccess, kube_client: k8s.ApiClient, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    apply_crd(kube_client, CRD)
    process = OperatorProcess(
        namespace=namespace, kubeconfig=cluster.kubeconfig, log=tmp_path / "operator.log"
    )
    process.start()
    try:
        yield process
        delete_policies(k8s.CustomObjectsApi(kube_client), namespace=namespace)
    finally:
        process.stop()
        print(process.log()[-6000:])  # shown by pytest only when the test failed


class Kubelet:
    """Copies the key Secret into each sidecar's key file, some of them late.

    Polls the Secret (a real kubelet watches and then syncs each pod's
    volumes periodically); every version seen is written to a file once its
    delay has passed, in order, atomically (a rename, as the kubelet swaps
    its ``..data`` link).
    """

    def __init__(
        self, core: k8s.CoreV1Api, namespace: str, files: dict[Path, float], interval: float = 0.2
    ) -> None:
        self._core = core
        self._namespace = namespace
        self._files = files
        self._interval = interval
        self._seen: list[tuple[float, bytes]] = []
        self._written: dict[Path, bytes] = {}
        #: Active key ids in the order the Secret had them.
        self.actives: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        """Mount the Secret as it is now into every file (a pod's start), then follow it."""
        self._sync()
        for path in self._files:
            self._write(path, self._seen[-1][1])
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sync()

    def _sync(self) -> None:
        secret = self._core.read_namespaced_secret(key_secret_name(POLICY), self._namespace)
        data = base64.b64decode((secret.data or {})[KEYRING_SECRET_KEY])
        now = time.monotonic()
        if not self._seen or self._seen[-1][1] != data:
            self._seen.append((now, data))
            active = KeyRing.from_json(data).active
            if not self.actives or self.actives[-1] != active:
                self.actives.append(active)
        for path, delay in self._files.items():
            due = [d for seen, d in self._seen if seen + delay <= now]
            if due and self._written.get(path) != due[-1]:
                self._write(path, due[-1])

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        self._written[path] = data

    def settled(self, *, quiet: float) -> bool:
        """The Secret has not changed for ``quiet`` seconds and every file holds it."""
        changed, latest = self._seen[-1]
        return time.monotonic() - changed >= quiet and all(
            self._written.get(path) == latest for path in self._files
        )


@dataclass
class Load:
    """A client spending each challenge of one sidecar at the next one."""

    sidecars: list[SidecarEndpoints]
    answers: dict[int, int] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            for turn in itertools.count():
                if self._stop.is_set():
                    return
                issuer = self.sidecars[turn % len(self.sidecars)]
                spender = self.sidecars[(turn + 1) % len(self.sidecars)]
                fetched = client.get(
                    issuer.url + CHALLENGE_PATH, params={"path": "/v1/chat/completions"}
                )
                challenge = Challenge.from_json(fetched.content)
                solution = challenge.solution(solve(challenge).number).encode()
                answer = client.post(
                    spender.url + "/v1/chat/completions",
                    headers={"X-Powgate-Solution": solution},
                    json={
                        "model": "standin",
                        "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 2,
                    },
                )
                self.answers[answer.status_code] = self.answers.get(answer.status_code, 0) + 1
                if answer.status_code != HTTPStatus.OK:
                    self.refusals.append(f"{time.strftime('%X')} {answer.status_code}")

    def stop(self) -> None:
        self._stop.set()


def rejected(sidecar: SidecarEndpoints) -> dict[str, float]:
    """``powgate_requests_total{outcome="rejected"}`` by reason."""
    text = httpx.get(sidecar.metrics_url + "/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("powgate_requests_total{") and 'outcome="rejected"' in line:
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = counts.get(reason, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_rotation_under_load_waits_for_the_late_sidecar_and_refuses_nobody(
    operator: OperatorProcess,
    cluster: ClusterAccess,
    kube_client: k8s.ApiClient,
    namespace: str,
    prometheus: PrometheusServer,
    tmp_path: Path,
) -> None:
    core = k8s.CoreV1Api(kube_client)
    k8s.CustomObjectsApi(kube_client).create_namespaced_custom_object(
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
                "difficulty": {"min": 1000, "max": 1000},
                # Rotate as often as the model allows; without reports from the
                # sidecars, a phase would wait 4 s: far less than the late one's lag.
                "challenge": {"lifetimeSeconds": 10},
                "keys": {"rotationIntervalSeconds": 10, "propagationSeconds": 4},
                "prometheus": {"address": prometheus.url, "timeoutSeconds": 2},
                "evaluationIntervalSeconds": 1,
            },
        },
    )
    eventually(
        lambda: (
            core.list_namespaced_secret(
                namespace, field_selector=f"metadata.name={key_secret_name(POLICY)}"
            ).items
            or None
        ),
        what="the key Secret",
        timeout=WAIT,
    )
    files = {tmp_path / f"keys-{i}.json": delay for i, delay in enumerate((0.0, 0.0, LAG))}
    kubelet = Kubelet(core, namespace, files)
    kubelet.start()
    reader = config_reader(
        cluster=cluster,
        kube_client=kube_client,
        namespace=namespace,
        name=config_map_name(POLICY),
        root=tmp_path,
    )
    processes: list[ManagedProcess] = []
    load: Load | None = None
    loader: threading.Thread | None = None
    try:
        standin, upstream = start_standin(tmp_path=tmp_path)
        processes.append(standin)
        sidecars = []
        for index, key_file in enumerate(files):
            root = tmp_path / f"sidecar-{index}"
            root.mkdir()
            process, endpoints = start_sidecar(
                tmp_path=root,
                upstream=upstream,
                key_file=key_file,
                config_args=reader.sidecar_args(namespace=namespace, name=config_map_name(POLICY)),
            )
            processes.append(process)
            sidecars.append(endpoints)
        for endpoints in sidecars:
            endpoints.wait_ready(watch=processes)
        prometheus.set_targets(
            [
                ScrapeTarget(
                    job=f"sidecars-{namespace}",
                    address=s.metrics_url.removeprefix("http://"),
                    labels={"namespace": namespace},
                )
                for s in sidecars
            ]
        )
        load = Load(sidecars)
        loader = threading.Thread(target=load.run, daemon=True)
        loader.start()

        def serving() -> None:
            assert loader is not None
            assert loader.is_alive(), "the client stopped"

        def switched() -> bool:
            serving()
            return len(kubelet.actives) > SWITCHES

        eventually(switched, what=f"{SWITCHES} switches of the signing key", timeout=4 * WAIT)
        # No further rotation: the last one runs to its end (the old key retired once the
        # late sidecar signs with the new one), and the late file catches up, under load.
        k8s.CustomObjectsApi(kube_client).patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            POLICY,
            {"spec": {"keys": {"rotationIntervalSeconds": 0}}},
        )

        def settled() -> bool:
            serving()
            return kubelet.settled(quiet=2 * LAG)

        eventually(settled, what="the rotation to end in every file", timeout=2 * WAIT)
        load.stop()
        loader.join(timeout=WAIT)
        print(f"answers {load.answers}, switches {kubelet.actives}")
        assert load.refusals == []
        assert sum(load.answers.values()) > 0
        assert [rejected(s) for s in sidecars] == [{}, {}, {}]
    finally:
        if load is not None:
            load.stop()
        if loader is not None:
            loader.join(timeout=WAIT)
        kubelet.stop()
        stop_all(processes, grace=10)
