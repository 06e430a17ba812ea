"""The product in containers on the local cluster's real node: the images `make images`
built, the chart as a platform team installs it, pods the kubelet actually runs.

One release for the module, in the order a user meets it: `helm install` of
the chart with the operator image (its webhook served from its pod), a
stand-in AI service Deployment that the webhook injects, a client paying
proof of work through the Service's ClusterIP (kube-proxy in the node's
network namespace), a policy edit reaching the in-pod sidecar, and finally
deletion and `helm uninstall`. The tests share that state and run in file
order; each one checks what a user would check at that point.

Nothing here is pulled: pods use `imagePullPolicy: Never`, so an image that
`make images` did not build fails the test instead of being fetched.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s
from prometheus_client.parser import text_string_to_metric_families
from test_chart_install import CHART, Kube, adopt_existing_crds, as_dict, condition

from helm_chart import find, render
from powgate import CHALLENGE_PATH, SOLUTION_HEADER, Challenge, KeyRing
from powgate.client import PowAuth
from powgate.contract import (
    INJECTED_ANNOTATION,
    KEY_INFO_METRIC,
    KEYRING_SECRET_KEY,
    METRICS_PORT_NAME,
    NAMESPACE_LABEL,
    SIDECAR_NAME,
)
from powgate.policy import GROUP, PLURAL, VERSION, config_map_name, key_secret_name
from powgate_operator._objects import MANAGED_BY
from powgate_testbed.cluster import ClusterAccess, LocalCluster
from powgate_testbed.node import RealNode
from powgate_testbed.prometheus import PodDiscovery, PrometheusServer, pod_monitor_scrape_configs
from waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RELEASE = "powgate"
POLICY = "chat"
APP = "standin"
#: Difficulty before and after the edit; small, so a test client solves it at once.
DIFFICULTY = 2_000
EDITED = 3_000
#: A policy edit must reach the in-pod sidecar within this many seconds.
PROPAGATION = 1.0
WAIT = 180.0


@dataclass(frozen=True)
class Release:
    namespace: str
    app_namespace: str
    kube: Kube
    #: The chart's values, as installed.
    values: dict[str, Any]


@dataclass(frozen=True)
class App:
    """The stand-in Deployment behind its Service, as a client outside the pod sees it."""

    namespace: str
    url: str  # http://<ClusterIP>


def pods(core: k8s.CoreV1Api, namespace: str, selector: str) -> list[k8s.V1Pod]:
    return list(core.list_namespaced_pod(namespace, label_selector=selector).items)


def ready(pod: k8s.V1Pod) -> bool:
    conditions = pod.status.conditions or [] if pod.status else []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def pod_events(core: k8s.CoreV1Api, namespace: str) -> str:
    events = core.list_namespaced_event(namespace).items
    return "\n".join(f"{e.involved_object.name}: {e.reason}: {e.message}" for e in events[-30:])


def kubectl_exec(kube: Kube, namespace: str, pod: str, container: str, *command: str) -> str:
    """Run a command in a container, through the API server and the kubelet."""
    result = kube.run(
        "kubectl", "exec", "--namespace", namespace, pod, "--container", container, "--",
        *command, check=False,
    )  # fmt: skip
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def release(
    cluster: ClusterAccess, kube_client: k8s.ApiClient, real_node: RealNode, tmp_path_factory: Any
) -> Iterator[Release]:
    """The chart installed with the built images, the operator on the real node."""
    core = k8s.CoreV1Api(kube_client)
    namespace = f"powgate-{uuid.uuid4().hex[:6]}"
    app_namespace = f"ai-{uuid.uuid4().hex[:6]}"
    for name, labels in ((namespace, {}), (app_namespace, {NAMESPACE_LABEL: "enabled"})):
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name, labels=labels)))
    kube = Kube(cluster)
    placement = {"nodeSelector": real_node.selector, "tolerations": [real_node.toleration]}
    values = {
        "operator": {
            "image": {"repository": "powgate-operator", "tag": "dev", "pullPolicy": "Never"},
            "watchNamespaces": [app_namespace],
            **placement,
        },
        "sidecar": {
            "image": {"repository": "powgate-sidecar", "tag": "dev", "pullPolicy": "Never"}
        },
        # Opted-in pods wait for the webhook instead of starting without a
        # sidecar when it is slow (CI's busy cores).
        "webhook": {"failurePolicy": "Fail", "timeoutSeconds": 10},
    }
    path = tmp_path_factory.mktemp("release") / "values.json"
    path.write_text(json.dumps(values))
    adopt_existing_crds(
        k8s.ApiextensionsV1Api(kube_client),
        names=["powpolicies.powgate.dev", "kopfpeerings.kopf.dev"],
        release=RELEASE,
        ns=namespace,
    )
    started = time.perf_counter()
    install = kube.run(
        "helm", "install", RELEASE, str(CHART), "--namespace", namespace,
        "--values", str(path), "--wait", "--timeout", f"{WAIT:.0f}s", check=False,
    )  # fmt: skip
    if install.returncode != 0:
        pytest.fail(
            f"helm install failed:\n{install.stdout}\n{install.stderr}\n"
            f"{pod_events(core, namespace)}\n{operator_log(kube, namespace)}"
        )
    took = time.perf_counter() - started
    print(f"helm install --wait with the operator on the real node: {took:.1f} s")
    yield Release(namespace=namespace, app_namespace=app_namespace, kube=kube, values=values)
    # Left by a test that failed before uninstalling: the next module starts clean.
    kube.run("helm", "uninstall", RELEASE, "--namespace", namespace, "--wait", check=False)
    for name in (app_namespace, namespace):
        try:
            core.delete_namespace(name)
        except k8s.ApiException as exc:
            if exc.status != HTTPStatus.NOT_FOUND:
                raise


def operator_log(kube: Kube, namespace: str) -> str:
    result = kube.run(
        "kubectl", "logs", "--namespace", namespace, "deployment/powgate", "--tail=40", check=False
    )
    return result.stdout + result.stderr


def policy_body(namespace: str, difficulty: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PowPolicy",
        "metadata": {"name": POLICY, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": APP}},
            "difficulty": {"min": difficulty, "max": 1_000_000},
        },
    }


def standin_deployment(node: RealNode) -> dict[str, Any]:
    """The stand-in AI service as its own team would deploy it: non-root, read-only root."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP, "labels": {"app": APP}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {"labels": {"app": APP}},
                "spec": {
                    "nodeSelector": node.selector,
                    "tolerations": [node.toleration],
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
                    "containers": [
                        {
                            "name": "app",
                            "image": node.image("standin"),
                            "imagePullPolicy": "Never",
                            "args": ["--concurrency", "8", "--tokens-per-second", "500"],
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                            "securityContext": {
                                "readOnlyRootFilesystem": True,
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                },
            },
        },
    }


@pytest.fixture(scope="module")
def app(release: Release, kube_client: k8s.ApiClient, real_node: RealNode) -> App:
    """A PowPolicy, then the stand-in's Deployment and Service in the opted-in namespace."""
    ns = release.app_namespace
    custom = k8s.CustomObjectsApi(kube_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, policy_body(ns, DIFFICULTY))

    def policy_ready() -> bool:
        obj = as_dict(custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, POLICY))
        return condition(obj, "Ready") == "True"

    eventually(
        policy_ready, what="the policy Ready", timeout=WAIT,
        context=lambda: operator_log(release.kube, release.namespace),
    )  # fmt: skip
    k8s.AppsV1Api(kube_client).create_namespaced_deployment(ns, standin_deployment(real_node))
    service = k8s.CoreV1Api(kube_client).create_namespaced_service(
        ns,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": APP},
            "spec": {"selector": {"app": APP}, "ports": [{"port": 80, "targetPort": "http"}]},
        },
    )
    result = App(namespace=ns, url=f"http://{service.spec.cluster_ip}")
    app_pod(release, result, k8s.CoreV1Api(kube_client))
    return result


def injected_and_ready(pod: k8s.V1Pod) -> bool:
    # The operator restarts a selected Deployment whose pods predate injection,
    # so the first pod may still be one without a sidecar.
    annotations = pod.metadata.annotations or {} if pod.metadata else {}
    return (
        INJECTED_ANNOTATION in annotations
        and ready(pod)
        and pod.metadata.deletion_timestamp is None
    )


def app_pod(release: Release, app: App, core: k8s.CoreV1Api) -> k8s.V1Pod:
    """The stand-in's injected, Ready pod (failing with what the pods and the sidecar say)."""

    def context() -> str:
        described = release.kube.run(
            "kubectl", "describe", "pods", "--namespace", app.namespace, check=False
        ).stdout
        logs = release.kube.run(
            "kubectl", "logs", "--namespace", app.namespace, f"deployment/{APP}",
            "--container", SIDECAR_NAME, "--tail=30", check=False,
        )  # fmt: skip
        operator = operator_log(release.kube, release.namespace)
        return f"{described[-6000:]}\n{logs.stdout}{logs.stderr}\n{operator}"

    found: list[k8s.V1Pod] = eventually(
        # `or None`: an empty list is a value to `eventually`, not a miss.
        lambda: (
            [p for p in pods(core, app.namespace, f"app={APP}") if injected_and_ready(p)] or None
        ),
        what="the stand-in pod injected and Ready",
        timeout=WAIT,
        context=context,
    )
    (pod,) = found
    return pod


def test_1_helm_install_runs_the_operator_image_in_a_pod_serving_the_webhook(
    release: Release, kube_client: k8s.ApiClient, real_node: RealNode
) -> None:
    core = k8s.CoreV1Api(kube_client)
    (pod,) = pods(core, release.namespace, "app.kubernetes.io/component=operator")
    assert pod.spec is not None
    assert pod.status is not None
    assert pod.spec.node_name == real_node.name
    assert ready(pod)
    (container,) = pod.spec.containers
    assert container.image == real_node.image("operator")
    # A real process in a real container: its log is the operator's JSON log.
    log = operator_log(release.kube, release.namespace)
    assert '"message"' in log, log
    # The webhook configuration carries the CA of the certificate the pod serves.
    admission = k8s.AdmissionregistrationV1Api(kube_client)
    (config,) = [
        c
        for c in admission.list_mutating_webhook_configuration().items
        if c.metadata.name.startswith(release.namespace)
    ]
    for hook in config.webhooks:
        assert hook.client_config.ca_bundle, hook.name
        assert hook.client_config.service.namespace == release.namespace


def test_2_the_injected_pod_runs_the_native_sidecar_first_as_non_root_on_a_read_only_root(
    release: Release, app: App, kube_client: k8s.ApiClient
) -> None:
    core = k8s.CoreV1Api(kube_client)
    pod = app_pod(release, app, core)
    assert pod.metadata is not None
    assert pod.spec is not None
    assert pod.status is not None
    assert pod.metadata.annotations[INJECTED_ANNOTATION] == POLICY
    # A native sidecar: an init container that keeps running.
    (sidecar,) = [c for c in pod.spec.init_containers or [] if c.name == SIDECAR_NAME]
    assert sidecar.restart_policy == "Always"
    (app_container,) = pod.spec.containers
    statuses = {
        s.name: s for s in [*pod.status.init_container_statuses, *pod.status.container_statuses]
    }
    sidecar_started = statuses[SIDECAR_NAME].state.running.started_at
    app_started = statuses["app"].state.running.started_at
    assert sidecar_started <= app_started
    assert statuses[SIDECAR_NAME].ready
    assert statuses["app"].ready
    # Non-root, and the root file system refuses writes: asked of the processes themselves.
    probe = "import os; print('uid', os.getuid()); open('/probe', 'w')"
    for name in (SIDECAR_NAME, "app"):
        out = kubectl_exec(
            release.kube, app.namespace, pod.metadata.name, name, "python", "-c", probe
        )
        assert "uid 65532" in out, out
        assert "Read-only file system" in out, out
    # The app's named port is now the sidecar's: the Service's endpoints point at it.
    (taken,) = [p for p in sidecar.ports if p.name == "http"]
    assert all(p.name != "http" for p in app_container.ports)
    slices = k8s.DiscoveryV1Api(kube_client).list_namespaced_endpoint_slice(
        app.namespace, label_selector=f"kubernetes.io/service-name={APP}"
    )
    ports = {p.port for s in slices.items for p in s.ports or []}
    assert ports == {taken.container_port}


def standin_metric(app: App, kube_client: k8s.ApiClient, name: str) -> float:
    """A counter of the stand-in, read at its own port (behind the sidecar)."""
    core = k8s.CoreV1Api(kube_client)
    (pod,) = [p for p in pods(core, app.namespace, f"app={APP}") if injected_and_ready(p)]
    text = httpx.get(f"http://{pod.status.pod_ip}:8000/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((f"{name}{{", f"{name} "))
    )


def chat(client: httpx.Client, url: str) -> httpx.Response:
    return client.post(
        f"{url}/v1/chat/completions",
        json={
            "model": "powgate-standin",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
        },
        timeout=30,
    )


def test_3_a_client_pays_through_the_cluster_ip_and_an_unpaid_request_gets_428(
    app: App, kube_client: k8s.ApiClient
) -> None:
    before = standin_metric(app, kube_client, "powgate_standin_requests_total")
    with httpx.Client() as plain:
        refused = chat(plain, app.url)
    assert refused.status_code == HTTPStatus.PRECONDITION_REQUIRED
    assert Challenge.from_json(refused.content).maxnumber == DIFFICULTY
    with httpx.Client(auth=PowAuth()) as paying:
        answers = [chat(paying, app.url) for _ in range(3)]
    assert [a.status_code for a in answers] == [HTTPStatus.OK] * 3
    assert all(a.json()["object"] == "chat.completion" for a in answers)
    # The stand-in saw the three paid requests and not the refused one.
    assert standin_metric(app, kube_client, "powgate_standin_requests_total") - before == 3


def challenge_difficulty(url: str) -> int:
    response = httpx.get(url + CHALLENGE_PATH, params={"path": "/v1/chat/completions"}, timeout=5)
    return Challenge.from_json(response.content).maxnumber


def test_4_a_policy_edit_reaches_the_in_pod_sidecar_within_a_second(
    release: Release, app: App, kube_client: k8s.ApiClient
) -> None:
    assert challenge_difficulty(app.url) == DIFFICULTY
    custom = k8s.CustomObjectsApi(kube_client)
    edited = time.monotonic()
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, app.namespace, PLURAL, POLICY, {"spec": {"difficulty": {"min": EDITED}}}
    )
    eventually(
        lambda: challenge_difficulty(app.url) == EDITED,
        what="a challenge at the new difficulty",
        timeout=30,
    )
    took = time.monotonic() - edited
    print(f"policy edit → new difficulty in challenges from the pod: {took:.2f} s")
    assert took < PROPAGATION


@pytest.fixture(scope="module")
def pod_prometheus(
    release: Release,
    local_cluster: LocalCluster,
    real_node: RealNode,
    prometheus_binary: Any,
    tmp_path_factory: Any,
) -> Iterator[PrometheusServer]:
    """A Prometheus that scrapes what the chart's PodMonitor selects, reachable from pods.

    The cluster has no Prometheus Operator, so the PodMonitor the chart renders
    when one is present is translated the way the operator does it
    (`pod_monitor_scrape_configs`); pods are found through the API server
    (`PodDiscovery`, since Debian's Prometheus has no Kubernetes discovery).
    """
    values = {**release.values, "metrics": {"podMonitor": {"enabled": True, "interval": "1s"}}}
    pod_monitor = find(render(values, api_versions=["monitoring.coreos.com/v1"]), "PodMonitor")
    root = tmp_path_factory.mktemp("pod-prometheus")
    with (
        PodDiscovery(
            path=root / "pods.json",
            server=local_cluster.server,
            context=local_cluster.admin_context(),
        ),
        PrometheusServer(
            root=root,
            binary=prometheus_binary,
            discovery=pod_monitor_scrape_configs(pod_monitor, pods=root / "pods.json"),
            host=real_node.host_address,
        ) as server,
    ):
        yield server


def promql(server: PrometheusServer, query: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.url}/api/v1/query", params={"query": query}, timeout=5)
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


#: Stand-in pods serving during the key rotation: kube-proxy sends each new
#: connection to any of them, so a challenge from one is often paid at another.
ROTATION_PODS = 3
#: The kubelet must have brought a new key to some pod at least this long after
#: the operator published it (its rotation is then gated by the sidecars' reports:
#: with `propagationSeconds: 0`, a switch on time alone would have come first).
LATE = 2.0


def sidecar_metrics(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A sidecar's metrics by sample name: (labels, value) pairs."""
    text = httpx.get(url + "/metrics", timeout=5).text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def outcomes(url: str) -> dict[tuple[str, str], float]:
    """``powgate_requests_total`` of one sidecar by (outcome, reason)."""
    counts: dict[tuple[str, str], float] = {}
    for labels, value in sidecar_metrics(url).get("powgate_requests_total", []):
        key = (labels["outcome"], labels["reason"])
        counts[key] = counts.get(key, 0.0) + value
    return counts


@dataclass
class KeyTimeline:
    """When the key Secret and each pod's sidecar first showed each key id.

    Polled together, over and over; every time is when a poll saw it, so a
    real order can look reversed by at most ``gap`` (the longest time between
    two polls of the same thing).
    """

    core: k8s.CoreV1Api
    namespace: str
    #: Pod name → its sidecar's metrics URL.
    sidecars: dict[str, str]
    #: Key id → first seen listed in the Secret / signing there / gone from it again.
    published: dict[str, float] = field(default_factory=dict)
    switched: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, float] = field(default_factory=dict)
    #: Pod → key id → first seen held by its sidecar.
    held: dict[str, dict[str, float]] = field(default_factory=dict)
    #: What each holds now: the Secret's ring, each sidecar's key ids.
    ring: KeyRing | None = None
    now_held: dict[str, frozenset[str]] = field(default_factory=dict)
    gap: float = 0.0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    #: Held while the poller writes, and while a test reads.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.1):
            try:
                self._poll()
            except (httpx.HTTPError, k8s.ApiException) as exc:
                # A poll that failed under load is only a longer gap: note it and go on.
                self.errors.append(f"{time.strftime('%X')} {exc!r}"[:200])
                continue
            now = time.monotonic()
            self.gap = max(self.gap, now - last)
            last = now

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        secret = self.core.read_namespaced_secret(key_secret_name(POLICY), self.namespace)
        seen = time.monotonic()
        ring = KeyRing.from_json(base64.b64decode((secret.data or {})[KEYRING_SECRET_KEY]))
        listed = {key.kid for key in ring.keys}
        with self.lock:
            for kid in listed:
                self.published.setdefault(kid, seen)
            self.switched.setdefault(ring.active, seen)
            for kid in self.published.keys() - listed:
                self.dropped.setdefault(kid, seen)
            self.ring = ring
        for pod, url in self.sidecars.items():
            info = sidecar_metrics(url).get(KEY_INFO_METRIC, [])
            seen = time.monotonic()
            kids = frozenset(labels["kid"] for labels, _ in info)
            with self.lock:
                for kid in kids:
                    self.held.setdefault(pod, {}).setdefault(kid, seen)
                self.now_held[pod] = kids

    def late_switches(self) -> list[str]:
        """New signing keys that some sidecar got only ``LATE`` seconds after publication."""
        with self.lock:
            return self._late_switches()

    def _late_switches(self) -> list[str]:
        first = min(self.switched.values(), default=0.0)
        return [
            kid
            for kid, at in self.switched.items()
            if at > first
            and max(self.held.get(p, {}).get(kid, at) for p in self.sidecars) - self.published[kid]
            >= LATE + self.gap
        ]

    def settled(self) -> bool:
        """One key is left in the Secret, every sidecar holds just it, and a switch was late."""
        with self.lock:
            if self.ring is None or len(self.ring.keys) != 1 or not self._late_switches():
                return False
            return all(self.now_held.get(p) == {self.ring.active} for p in self.sidecars)


@dataclass
class PayingClient:
    """A client paying with the SDK through the ClusterIP, one new connection per request.

    A response hook sees what `PowAuth` hides: every challenge (its key id) and
    every answer to a solution, so a refused solution that the SDK then
    solved again still counts as a refusal.
    """

    url: str
    paid: dict[str, int] = field(default_factory=dict)  # key id of the paid challenge → count
    refusals: list[str] = field(default_factory=list)
    _kid: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)

    def _seen(self, response: httpx.Response) -> None:
        paying = SOLUTION_HEADER in response.request.headers
        if paying:
            if response.status_code == HTTPStatus.OK:
                self.paid[self._kid] = self.paid.get(self._kid, 0) + 1
            else:
                response.read()
                self.refusals.append(
                    f"{time.strftime('%X')} {response.status_code} paid with {self._kid}: "
                    f"{response.text[:200]}"
                )
        if response.status_code == HTTPStatus.PRECONDITION_REQUIRED:
            response.read()
            kid = Challenge.from_json(response.content).params.kid
            self._kid = kid or ""

    def run(self) -> None:
        # No keep-alive: kube-proxy picks a pod per connection, so the challenge
        # and its solution often land on different pods.
        with httpx.Client(
            auth=PowAuth(),
            limits=httpx.Limits(max_keepalive_connections=0),
            event_hooks={"response": [self._seen]},
        ) as client:
            while not self._stop.is_set():
                try:
                    chat(client, self.url)
                except httpx.HTTPError as exc:
                    self.refusals.append(f"{time.strftime('%X')} {exc!r}")

    def stop(self) -> None:
        self._stop.set()


def scale(apps: k8s.AppsV1Api, namespace: str, replicas: int) -> None:
    apps.patch_namespaced_deployment_scale(
        namespace=namespace, name=APP, body={"spec": {"replicas": replicas}}
    )


def serving_pods(core: k8s.CoreV1Api, namespace: str, count: int) -> list[k8s.V1Pod] | None:
    """Exactly ``count`` pods of the stand-in, all injected and Ready, none other left."""
    found = pods(core, namespace, f"app={APP}")
    if len(found) == count and all(injected_and_ready(p) for p in found):
        return found
    return None


def metrics_url(pod: k8s.V1Pod) -> str:
    (sidecar,) = [c for c in pod.spec.init_containers if c.name == SIDECAR_NAME]
    (port,) = [p.container_port for p in sidecar.ports if p.name == METRICS_PORT_NAME]
    return f"http://{pod.status.pod_ip}:{port}"


def test_5_a_key_rotation_refuses_no_paying_client_of_pods_whose_kubelet_delays_the_keys(
    release: Release, app: App, kube_client: k8s.ApiClient, pod_prometheus: PrometheusServer
) -> None:
    """Keys reach each pod when its kubelet resyncs it (at a different time for each):
    the operator, reading the sidecars' `powgate_key_info` from Prometheus, must
    switch signing only once every pod holds the new key, and retire the old one
    only once none signs with it. `propagationSeconds: 0` means that a switch
    not held back by those reports comes at once, before the kubelet brought the
    key everywhere (the test asserts that it did bring it late), and then a
    challenge from a pod signing with the new key, paid at a pod without it,
    would be refused.
    """
    ns = app.namespace
    core = k8s.CoreV1Api(kube_client)
    apps = k8s.AppsV1Api(kube_client)
    custom = k8s.CustomObjectsApi(kube_client)
    scale(apps, ns, ROTATION_PODS)
    client: PayingClient | None = None
    watch: KeyTimeline | None = None
    threads: list[threading.Thread] = []
    try:
        serving = eventually(
            lambda: serving_pods(core, ns, ROTATION_PODS),
            what=f"{ROTATION_PODS} injected stand-in pods Ready",
            timeout=WAIT,
            context=lambda: pod_events(core, ns),
        )
        sidecars = {p.metadata.name: metrics_url(p) for p in serving}
        # Every sidecar's keys are in Prometheus before the rotation starts (a
        # sidecar never scraped is not waited for: docs/security.md).
        eventually(
            lambda: (
                len(promql(pod_prometheus, f'{KEY_INFO_METRIC}{{namespace="{ns}"}}'))
                == ROTATION_PODS
            ),
            what="every sidecar's keys scraped",
            timeout=60,
        )
        before = {pod: outcomes(url) for pod, url in sidecars.items()}
        watch = KeyTimeline(core=core, namespace=ns, sidecars=sidecars)
        client = PayingClient(app.url)
        threads = [threading.Thread(target=t.run, daemon=True) for t in (watch, client)]
        for thread in threads:
            thread.start()
        eventually(lambda: watch.ring is not None and sum(client.paid.values()) > 0, what="paying")
        (initial,) = watch.ring.keys
        # Rotate as often as the model allows, and let nothing but the sidecars'
        # reports hold a phase back.
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, POLICY,
            {
                "spec": {
                    "prometheus": {"address": pod_prometheus.url, "timeoutSeconds": 2},
                    "evaluationIntervalSeconds": 1,
                    "challenge": {"lifetimeSeconds": 10},
                    "keys": {"rotationIntervalSeconds": 10, "propagationSeconds": 0},
                }
            },
        )  # fmt: skip

        def alive() -> None:
            assert all(t.is_alive() for t in threads), "the client or the key poller stopped"

        def late_switch() -> bool:
            alive()
            return bool(watch.late_switches())

        eventually(
            late_switch, what="a switch of the signing key after a late delivery", timeout=WAIT,
            context=lambda: f"{watch.published} {watch.switched} {watch.held}",
        )  # fmt: skip
        # No further rotation: the one under way runs to its end under load.
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, POLICY, {"spec": {"keys": {"rotationIntervalSeconds": 0}}}
        )

        def settled() -> bool:
            alive()
            return watch.settled()

        eventually(
            settled, what="the rotation ended in the Secret and in every pod", timeout=WAIT,
            context=lambda: f"{watch.ring} {watch.now_held}",
        )  # fmt: skip
        client.stop()
        watch.stop()
        for thread in threads:
            thread.join(timeout=60)
        after = {pod: outcomes(url) for pod, url in sidecars.items()}
        for kid, at in sorted(watch.switched.items(), key=lambda item: item[1])[1:]:
            published = watch.published[kid]
            arrivals = sorted(
                watch.held.get(p, {}).get(kid, float("inf")) - published for p in sidecars
            )
            print(
                f"key {kid}: in the pods {', '.join(f'{a:.1f}' for a in arrivals)} s after its "
                f"publication, signing after {at - published:.1f} s"
            )
        print(
            f"paid by key {client.paid}; old key dropped {watch.dropped}; "
            f"poll gap {watch.gap:.2f} s; poll errors {watch.errors}"
        )
        assert client.refusals == []
        # Every pod answered paid requests (so challenges crossed pods), and none refused one.
        for pod in sidecars:
            grew = {k: after[pod].get(k, 0.0) - before[pod].get(k, 0.0) for k in after[pod]}
            assert grew.get(("admitted", "ok"), 0) > 0, (pod, grew)
            assert not {k: v for k, v in grew.items() if k[0] == "rejected" and v}, (pod, grew)
        # The keys really changed, and each new one signed only once every pod held it.
        final = watch.ring.active
        assert final != initial.kid
        assert initial.kid in watch.dropped
        assert client.paid.get(final, 0) > 0, client.paid
        for kid, at in watch.switched.items():
            if kid != initial.kid:
                last = max(watch.held.get(p, {}).get(kid, float("inf")) for p in sidecars)
                assert last <= at + watch.gap, (kid, watch.held, at)
    finally:
        for stoppable in (client, watch):
            if stoppable is not None:
                stoppable.stop()
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, POLICY, {"spec": {"keys": {"rotationIntervalSeconds": 0}}}
        )
        scale(apps, ns, 1)
        eventually(lambda: serving_pods(core, ns, 1), what="one stand-in pod left", timeout=WAIT)
        # And Prometheus scrapes only that one again (test 6 counts the scraped pods).
        eventually(
            lambda: len(promql(pod_prometheus, f'up{{namespace="{ns}"}}')) == 1,
            what="one sidecar scraped",
            timeout=60,
        )


def test_6_prometheus_scrapes_the_sidecars_as_the_chart_says_and_their_rate_moves_difficulty(
    release: Release, app: App, kube_client: k8s.ApiClient, pod_prometheus: PrometheusServer
) -> None:
    ns = app.namespace
    pod = app_pod(release, app, k8s.CoreV1Api(kube_client))
    assert pod.metadata is not None
    # Exactly the sidecar of the injected pod is scraped, and it is up.
    up = eventually(
        lambda: promql(pod_prometheus, f'up{{namespace="{ns}"}} == 1') or None,
        what="the sidecar's metrics scraped",
        timeout=60,
    )
    assert [(s["metric"]["pod"], s["metric"]["container"]) for s in up] == [
        (pod.metadata.name, SIDECAR_NAME)
    ]
    # A signal on the sidecars' own count of unpaid requests, read by the
    # operator in its pod from this Prometheus.
    custom = k8s.CustomObjectsApi(kube_client)
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, POLICY,
        {
            "spec": {
                "prometheus": {"address": pod_prometheus.url},
                "evaluationIntervalSeconds": 1,
                "signals": [
                    {
                        "name": "unpaid",
                        "query": 'sum(rate(powgate_requests_total{namespace="$namespace",'
                        'outcome="challenged"}[5s]))',
                        "target": 1,
                    }
                ],
            }
        },
    )  # fmt: skip

    def difficulty() -> int:
        obj = as_dict(custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, POLICY))
        return int(obj.get("status", {}).get("difficulty") or 0)

    assert difficulty() == EDITED
    # Bots that do not pay, about 10 a second, for at most a minute.
    deadline = time.monotonic() + 60
    with httpx.Client() as bot:
        while difficulty() <= EDITED:
            assert time.monotonic() < deadline, "difficulty did not rise: " + str(
                promql(pod_prometheus, f'powgate_requests_total{{namespace="{ns}"}}')
            )
            for _ in range(5):
                assert chat(bot, app.url).status_code == HTTPStatus.PRECONDITION_REQUIRED
                time.sleep(0.1)
    raised = difficulty()
    print(f"difficulty raised by the sidecars' unpaid rate: {EDITED} → {raised}")
    # And the sidecar in the pod hands out challenges at the raised difficulty.
    eventually(lambda: challenge_difficulty(app.url) >= raised, what="challenges at the raise")


def test_7_deleting_and_uninstalling_leaves_only_the_crd(
    release: Release, app: App, kube_client: k8s.ApiClient
) -> None:
    ns = app.namespace
    core = k8s.CoreV1Api(kube_client)
    rbac = k8s.RbacAuthorizationV1Api(kube_client)
    custom = k8s.CustomObjectsApi(kube_client)
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, POLICY)

    def gone(read: Any, *args: str) -> bool:
        try:
            read(*args)
        except k8s.ApiException as exc:
            return exc.status == HTTPStatus.NOT_FOUND
        return False

    eventually(
        lambda: gone(core.read_namespaced_config_map, config_map_name(POLICY), ns),
        what="config gone",
    )
    eventually(
        lambda: gone(core.read_namespaced_secret, key_secret_name(POLICY), ns), what="keys gone"
    )
    managed = f"app.kubernetes.io/managed-by={MANAGED_BY}"
    eventually(
        lambda: not rbac.list_namespaced_role(ns, label_selector=managed).items, what="roles gone"
    )
    core.delete_namespace(ns)
    eventually(lambda: gone(core.read_namespace, ns), what=f"namespace {ns} gone", timeout=WAIT)

    release.kube.run("helm", "uninstall", RELEASE, "--namespace", release.namespace, "--wait")

    # Everything the chart or the operator made is gone, but the CRD (crds.keep);
    # what the operator made goes with its owner, through the garbage collector.
    def leftovers() -> list[str]:
        found = []
        listed = release.kube.run(
            "kubectl", "get", "deployments,services,secrets,configmaps,serviceaccounts,roles,"
            "rolebindings,leases", "--namespace", release.namespace, "-o", "name",
        )  # fmt: skip
        found += [
            line
            for line in listed.stdout.split()
            if "kube-root-ca.crt" not in line and not line.endswith("/default")
        ]
        for kind in ("mutatingwebhookconfigurations", "clusterroles", "clusterrolebindings"):
            listed = release.kube.run("kubectl", "get", kind, "-o", "name")
            found += [line for line in listed.stdout.split() if RELEASE in line.split("/", 1)[1]]
        return found

    eventually(
        lambda: not leftovers(),
        what="no object of the release left",
        context=lambda: str(leftovers()),
    )
    k8s.ApiextensionsV1Api(kube_client).read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    eventually(
        lambda: not pods(core, release.namespace, "app.kubernetes.io/component=operator"),
        what="the operator pod gone",
    )
