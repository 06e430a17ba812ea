"""Bringing the demo's stack up and down: control plane, Prometheus, operator, service, sidecars.

Pods are fake under kwok, so the parts that would run in pods run here as
processes, on the code paths a pod uses: the operator talks to the API server
with a kubeconfig (in a pod: its service account), and each sidecar watches
its rendered ConfigMap through the API server with a service-account token
that RBAC limits to the demo's ConfigMaps. The key ring travels in the
policy's Secret; the demo copies it into a folder the way the kubelet mounts
a Secret volume.

Everything is owned by one :class:`DemoStack` (a context manager): leaving it
for any reason, Ctrl-C included, stops every process and deletes what the
demo created in the cluster.

With ``real_pods=True`` the same stack runs in containers instead, on the
local cluster's real node (:mod:`.node`): the chart installs the operator
image, and each run's service is a Deployment of stand-in pods whose sidecars
the webhook injects. One stand-in process served every sidecar in the other
mode; here each pod has its own, with its share of the backend's capacity.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final

import httpx
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from powgate.config import CONFIG_DATA_KEY
from powgate.contract import (
    INJECTED_ANNOTATION,
    KEYRING_SECRET_KEY,
    METRICS_PORT_NAME,
    NAMESPACE_LABEL,
    NAMESPACE_LABEL_VALUE,
    SIDECAR_NAME,
)
from powgate.policy import GROUP, PLURAL, VERSION, config_map_name, key_secret_name
from powgate_operator.crd import crd_manifest

from ._demo_scenario import APP_LABEL, Defence, Scenario, policy_manifest
from ._process import (
    ManagedProcess,
    Service,
    StartupError,
    free_ports,
    stop_all,
    tail,
    wait_until,
)
from .cluster import LocalCluster, Tools, cache_dir, reap_stale_runs
from .node import NodeTools, RealNode
from .prometheus import PrometheusServer, ScrapeTarget

__all__ = ["DemoStack", "Deployment"]

_SERVICE_ACCOUNT: Final = "powgate-sidecar"
_CHART: Final = Path(__file__).resolve().parents[2] / "charts" / "powgate"
#: Generous: a busy 2-core machine; these bound a hang, they do not measure speed.
_READY_TIMEOUT: Final = 60.0
_POD_TIMEOUT: Final = 180.0
_STOP_GRACE: Final = 10.0
_LOG_TAIL_LINES: Final = 20


def _probe(check: Callable[[], bool]) -> Callable[[], bool]:
    def guarded() -> bool:
        try:
            return check()
        except (httpx.HTTPError, k8s.ApiException):
            return False

    return guarded


def _injected_and_ready(pod: k8s.V1Pod) -> bool:
    meta, status = pod.metadata, pod.status
    if meta is None or status is None or meta.deletion_timestamp is not None:
        return False
    if INJECTED_ANNOTATION not in (meta.annotations or {}):
        return False
    return any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])


def _raw(manifest: dict[str, Any]) -> Any:
    """A manifest as the client's ``body``: it sends dicts as they are, though its
    type hints name only its model classes."""
    return manifest


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=2.0).status_code == httpx.codes.OK


@dataclass(frozen=True, slots=True)
class _ApiServer:
    """Where the API server is and how a pod would trust it (from a kubeconfig)."""

    url: str
    ca_pem: bytes | None

    @classmethod
    def from_kubeconfig(cls, path: Path) -> _ApiServer:
        config = yaml.safe_load(path.read_text())
        current = config.get("current-context")
        context = next(c["context"] for c in config["contexts"] if c["name"] == current)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        if "certificate-authority-data" in cluster:
            ca: bytes | None = base64.b64decode(cluster["certificate-authority-data"])
        elif "certificate-authority" in cluster:
            ca = (path.parent / cluster["certificate-authority"]).read_bytes()
        else:
            ca = None
        return cls(url=str(cluster["server"]), ca_pem=ca)


@dataclass(frozen=True, slots=True)
class Deployment:
    """One run's service: the stand-in and the sidecars in front of it."""

    defence: Defence
    sidecar_urls: tuple[str, ...]
    sidecar_metrics: tuple[str, ...]
    #: One stand-in behind every sidecar, or (real pods) one in each pod.
    standin_urls: tuple[str, ...]


class DemoStack(Service):
    """The cluster side of the demo, and one deployment at a time on top of it."""

    def __init__(
        self,
        *,
        scenario: Scenario,
        workdir: Path,
        logs: Path,
        kubeconfig: Path | None,
        real_pods: bool = False,
    ) -> None:
        """``workdir`` holds what a pod would mount (token, keys) and Prometheus' data."""
        if real_pods and kubeconfig is not None:
            raise ValueError("real pods run on the local cluster's own node, not on a given one")
        self.scenario = scenario
        self.real_pods = real_pods
        self.node: RealNode | None = None
        self.workdir = workdir
        self.logs = logs
        self._given_kubeconfig = kubeconfig
        self._stack = contextlib.ExitStack()
        self.namespace = f"powgate-demo-{uuid.uuid4().hex[:6]}"
        self.kubeconfig = Path()
        self.prometheus = PrometheusServer(
            root=workdir / "prometheus", scrape_interval=scenario.interval
        )
        self._api: k8s.ApiClient | None = None
        self._server: _ApiServer | None = None

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            # What did start is stopped: a with block never reaches __exit__.
            self._stack.close()
            raise

    def stop(self) -> None:
        self._stack.close()

    def _start(self) -> None:
        self.kubeconfig = self._control_plane()
        self._server = _ApiServer.from_kubeconfig(self.kubeconfig)
        api: k8s.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )
        self._api = api
        self._stack.callback(api.close)
        if self.node is not None:
            # The operator, in its pod, queries it: on the host's end of the node's link.
            self.prometheus = PrometheusServer(
                root=self.workdir / "prometheus",
                scrape_interval=self.scenario.interval,
                host=self.node.host_address,
            )
            self._stack.enter_context(self.prometheus)
            self._create_namespace()
            self._install_chart(self.node)
            return
        self._install_crd()
        self._stack.enter_context(self.prometheus)
        self._create_namespace()
        self._grant_sidecars()
        self._start_operator()

    def _control_plane(self) -> Path:
        if self._given_kubeconfig is not None:
            return self._given_kubeconfig
        # One folder per run, as the test fixtures do: concurrent runs never
        # share a cluster, and folders of runs that were killed are reaped here.
        runs = cache_dir() / "demos"
        reap_stale_runs(runs)
        cluster = LocalCluster(
            root=runs / str(os.getpid()),
            tools=Tools.locate(cache_dir()),
            nodes=1,
            node_network=self.real_pods,
        )
        self._stack.enter_context(cluster)
        if self.real_pods:
            node = RealNode(cluster=cluster, tools=NodeTools.locate(cache_dir()))
            self.node = self._stack.enter_context(node)
        return cluster.kubeconfig

    @property
    def api(self) -> k8s.ApiClient:
        assert self._api is not None, "use DemoStack as a context manager"
        return self._api

    def _install_crd(self) -> None:
        # Generated from the model, as `crds/powpolicy.yaml` is: the same schema.
        crd = crd_manifest()
        extensions = k8s.ApiextensionsV1Api(self.api)
        name = crd["metadata"]["name"]
        try:
            current = extensions.read_custom_resource_definition(name)
        except k8s.ApiException as exc:
            if exc.status != HTTPStatus.NOT_FOUND:
                raise
            extensions.create_custom_resource_definition(_raw(crd))
        else:
            # Kept afterwards on a cluster that is not the demo's own: deleting a
            # CRD deletes every PowPolicy in the cluster.
            body = copy.deepcopy(crd)
            assert current.metadata is not None
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            extensions.replace_custom_resource_definition(name, _raw(body))

        def established() -> bool:
            status = extensions.read_custom_resource_definition(name).status
            conditions = (status.conditions if status is not None else None) or []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        wait_until(_probe(established), what="the PowPolicy CRD", timeout=_READY_TIMEOUT, watch=[])

    def _create_namespace(self) -> None:
        core = k8s.CoreV1Api(self.api)
        # With real pods the webhook injects the sidecars: the namespace opts in.
        labels = {NAMESPACE_LABEL: NAMESPACE_LABEL_VALUE} if self.real_pods else None
        meta = k8s.V1ObjectMeta(name=self.namespace, labels=labels)
        core.create_namespace(k8s.V1Namespace(metadata=meta))
        self._stack.callback(self._delete_namespace)

    def _install_chart(self, node: RealNode) -> None:
        """`helm install` of the chart with the operator image, on the real node."""
        release_namespace = f"{self.namespace}-system"
        k8s.CoreV1Api(self.api).create_namespace(
            k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=release_namespace))
        )
        values = {
            "operator": {
                "image": {"repository": "powgate-operator", "tag": "dev", "pullPolicy": "Never"},
                "watchNamespaces": [self.namespace],
                "nodeSelector": node.selector,
                "tolerations": [node.toleration],
            },
            "sidecar": {
                "image": {"repository": "powgate-sidecar", "tag": "dev", "pullPolicy": "Never"},
                "logLevel": "warning",
            },
            # A pod created while the webhook is slow (a busy machine) waits and
            # is retried instead of running without its sidecar.
            "webhook": {"failurePolicy": "Fail", "timeoutSeconds": 10},
        }
        path = self.workdir / "values.json"
        path.write_text(json.dumps(values))
        helm = [str(cache_dir() / "bin" / "helm"), "--namespace", release_namespace]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

        def uninstall() -> None:
            self._save_pod_logs(release_namespace, "app.kubernetes.io/component=operator")
            subprocess.run([*helm, "uninstall", "powgate", "--wait"], env=env, check=False,
                           capture_output=True, timeout=120)  # fmt: skip

        result = subprocess.run(
            [*helm, "install", "powgate", str(_CHART), "--values", str(path), "--wait",
             "--timeout", "300s"],
            env=env, capture_output=True, text=True, timeout=360, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise StartupError(f"helm install failed: {result.stderr.strip()}")
        # LIFO: after the runs' Deployments and policies are gone, before the namespace.
        self._stack.callback(uninstall)

    def _save_pod_logs(self, namespace: str, selector: str) -> None:
        """Each container's log of the selected pods into `logs/`, before the pods go."""
        core = k8s.CoreV1Api(self.api)
        with contextlib.suppress(k8s.ApiException):
            for pod in core.list_namespaced_pod(namespace, label_selector=selector).items:
                if pod.metadata is None or pod.metadata.name is None or pod.spec is None:
                    continue
                name, spec = pod.metadata.name, pod.spec
                for container in [*(spec.init_containers or []), *spec.containers]:
                    with contextlib.suppress(k8s.ApiException):
                        text = core.read_namespaced_pod_log(
                            name, namespace, container=container.name
                        )
                        (self.logs / f"{name}-{container.name}.log").write_text(text)

    def _delete_namespace(self) -> None:
        with contextlib.suppress(k8s.ApiException):
            k8s.CoreV1Api(self.api).delete_namespace(self.namespace)

    def _grant_sidecars(self) -> None:
        """A ServiceAccount that may read only the demo's rendered ConfigMaps, and its token."""
        core, rbac = k8s.CoreV1Api(self.api), k8s.RbacAuthorizationV1Api(self.api)
        meta = k8s.V1ObjectMeta(name=_SERVICE_ACCOUNT)
        core.create_namespaced_service_account(self.namespace, k8s.V1ServiceAccount(metadata=meta))
        rule = k8s.V1PolicyRule(
            api_groups=[""],
            resources=["configmaps"],
            resource_names=[config_map_name(str(defence)) for defence in Defence],
            verbs=["get", "list", "watch"],
        )
        rbac.create_namespaced_role(self.namespace, k8s.V1Role(metadata=meta, rules=[rule]))
        rbac.create_namespaced_role_binding(
            self.namespace,
            k8s.V1RoleBinding(
                metadata=meta,
                role_ref=k8s.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name=_SERVICE_ACCOUNT
                ),
                subjects=[
                    k8s.RbacV1Subject(
                        kind="ServiceAccount", name=_SERVICE_ACCOUNT, namespace=self.namespace
                    )
                ],
            ),
        )
        request = k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[]))
        status = core.create_namespaced_service_account_token(
            _SERVICE_ACCOUNT, self.namespace, request
        ).status
        assert status is not None, "the API server answers a TokenRequest with its status"
        pod = self.workdir / "serviceaccount"
        pod.mkdir(parents=True, exist_ok=True)
        (pod / "token").write_text(str(status.token))
        assert self._server is not None
        if self._server.ca_pem is not None:
            (pod / "ca.crt").write_bytes(self._server.ca_pem)

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        return ManagedProcess(
            name=name, argv=argv, log_path=self.logs / f"{name}.log", die_with_parent=True
        )

    def _start_operator(self) -> None:
        metrics, health = free_ports(2)
        # `env` sets the kubeconfig for the operator alone (it execs, keeping the pid).
        operator = self._spawn(
            "operator",
            [
                "env",
                f"KUBECONFIG={self.kubeconfig}",
                sys.executable,
                "-m",
                "powgate_operator",
                "--namespace",
                self.namespace,
                "--metrics-listen",
                f"127.0.0.1:{metrics}",
                "--health-listen",
                f"127.0.0.1:{health}",
            ],
        )
        # Stopped before the namespace goes: the operator removes its finalizers.
        self._stack.callback(stop_all, [operator], grace=_STOP_GRACE)
        self._wait(
            lambda: _http_ok(f"http://127.0.0.1:{health}/readyz"),
            what="the operator to be ready",
            watch=[operator],
        )

    def _wait(
        self,
        check: Callable[[], bool],
        *,
        what: str,
        watch: tuple[ManagedProcess, ...] | list[ManagedProcess],
    ) -> None:
        try:
            wait_until(_probe(check), what=what, timeout=_READY_TIMEOUT, watch=watch)
        except StartupError as exc:
            logs = "\n".join(
                f"--- {p.log_path.name} ---\n{tail(p.log_path, lines=_LOG_TAIL_LINES)}"
                for p in watch
            )
            raise StartupError(f"{exc}\n{logs}") from exc

    # -- one run's deployment ------------------------------------------------------

    @contextlib.contextmanager
    def deploy(self, defence: Defence) -> Iterator[Deployment]:
        """The policy of ``defence`` applied, and the service with its sidecars running."""
        with contextlib.ExitStack() as stack:
            self._apply_policy(defence)
            stack.callback(self._delete_policy, defence)
            if self.node is not None:
                self._wait_config(defence)
                deployment = self._start_pods(self.node, defence, stack=stack)
            else:
                keys = self._mount_keys(defence)
                deployment = self._start_service(defence, keys=keys, stack=stack)
            self.prometheus.set_targets(self._targets(deployment))
            stack.callback(self.prometheus.set_targets, [])
            yield deployment

    def _apply_policy(self, defence: Defence) -> None:
        body = policy_manifest(
            self.scenario,
            defence=defence,
            namespace=self.namespace,
            prometheus=self.prometheus.url,
            generator=self.generator_address,
        )
        k8s.CustomObjectsApi(self.api).create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body
        )

    @property
    def generator_address(self) -> str:
        """Where the traffic generator's requests come from, as the sidecars see them."""
        # Real pods: the host's end of the node's link; processes: loopback.
        return self.node.host_address if self.node is not None else "127.0.0.1"

    def _delete_policy(self, defence: Defence) -> None:
        custom = k8s.CustomObjectsApi(self.api)
        name = str(defence)
        with contextlib.suppress(k8s.ApiException):
            custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

        def gone() -> bool:
            try:
                custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
            except k8s.ApiException as exc:
                return bool(exc.status == HTTPStatus.NOT_FOUND)
            return False

        # The operator's finalizer goes once it has cleaned up; if the operator is
        # gone, the finalizer is dropped here so the namespace can be deleted.
        try:
            wait_until(gone, what=f"PowPolicy {name} deleted", timeout=20.0, watch=[])
        except StartupError:
            with contextlib.suppress(k8s.ApiException):
                custom.patch_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, name, {"metadata": {"finalizers": []}}
                )

    def _mount_keys(self, defence: Defence) -> Path:
        """The policy's key ring, written where a Secret volume would put it."""
        core = k8s.CoreV1Api(self.api)
        name = key_secret_name(str(defence))
        found: dict[str, bytes] = {}

        def published() -> bool:
            data = core.read_namespaced_secret(name, self.namespace).data or {}
            if KEYRING_SECRET_KEY not in data:
                return False
            found["ring"] = base64.b64decode(data[KEYRING_SECRET_KEY])
            # The sidecar starts on the ConfigMap, so wait for both objects.
            config = core.read_namespaced_config_map(config_map_name(str(defence)), self.namespace)
            return CONFIG_DATA_KEY in (config.data or {})

        self._wait(published, what=f"the operator to publish {name} and its config", watch=[])
        folder = self.workdir / "keys" / str(defence)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / KEYRING_SECRET_KEY).write_bytes(found["ring"])
        return folder

    def _wait_config(self, defence: Defence) -> None:
        """Until the operator has rendered the policy: pods then start on its config."""
        core = k8s.CoreV1Api(self.api)

        def rendered() -> bool:
            config = core.read_namespaced_config_map(config_map_name(str(defence)), self.namespace)
            return CONFIG_DATA_KEY in (config.data or {})

        self._wait(rendered, what=f"the operator to render {defence}'s config", watch=[])

    def _start_pods(
        self, node: RealNode, defence: Defence, *, stack: contextlib.ExitStack
    ) -> Deployment:
        """The stand-in as a Deployment of `sidecars` pods, each injected with its sidecar."""
        backend, replicas = self.scenario.backend, self.scenario.sidecars

        def share(total: int) -> int:  # each pod's part of the backend, at least one
            return max(1, -(-total // replicas))

        name = f"standin-{defence}"
        body: dict[str, Any] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": APP_LABEL, "run": str(defence)}},
                "template": {
                    "metadata": {"labels": {"app": APP_LABEL, "run": str(defence)}},
                    "spec": {
                        "nodeSelector": node.selector,
                        "tolerations": [node.toleration],
                        "terminationGracePeriodSeconds": 2,
                        "containers": [
                            {
                                "name": "standin",
                                "image": node.image("standin"),
                                "imagePullPolicy": "Never",
                                "args": [
                                    f"--concurrency={share(backend.concurrency)}",
                                    f"--tokens-per-second={backend.tokens_per_second}",
                                    f"--max-queue={share(backend.max_queue)}",
                                ],
                                "ports": [{"name": "http", "containerPort": 8000}],
                                "readinessProbe": {
                                    "httpGet": {"path": "/healthz", "port": "http"},
                                    "periodSeconds": 1,
                                },
                            }
                        ],
                    },
                },
            },
        }
        apps, core = k8s.AppsV1Api(self.api), k8s.CoreV1Api(self.api)
        apps.create_namespaced_deployment(self.namespace, _raw(body))
        selector = f"run={defence}"

        def pods() -> list[k8s.V1Pod]:
            return list(core.list_namespaced_pod(self.namespace, label_selector=selector).items)

        def delete() -> None:
            self._save_pod_logs(self.namespace, selector)
            with contextlib.suppress(k8s.ApiException):
                apps.delete_namespaced_deployment(name, self.namespace)
            with contextlib.suppress(StartupError):
                wait_until(
                    lambda: not pods(), what=f"{name}'s pods gone", timeout=_READY_TIMEOUT, watch=[]
                )

        stack.callback(delete)
        found: list[k8s.V1Pod] = []

        def running() -> bool:
            found[:] = [p for p in pods() if _injected_and_ready(p)]
            return len(found) == replicas

        try:
            # Longer than a process start: containers, probes and injection, on 2 cores.
            wait_until(
                _probe(running), what=f"{replicas} injected {name} pods Ready",
                timeout=_POD_TIMEOUT, watch=[],
            )  # fmt: skip
        except StartupError as exc:
            seen = [
                f"{p.metadata.name}: {p.status.phase}, injected "
                f"{INJECTED_ANNOTATION in (p.metadata.annotations or {})}, "
                f"{[(c.name, c.ready) for c in (p.status.init_container_statuses or [])]}"
                f"{[(c.name, c.ready) for c in (p.status.container_statuses or [])]}"
                for p in pods()
                if p.metadata is not None and p.status is not None
            ]
            raise StartupError(f"{exc}; pods: {seen}") from exc
        sidecars, metrics, standins = [], [], []
        for pod in found:
            # A Ready pod has both.
            assert pod.status is not None
            assert pod.spec is not None
            ip = pod.status.pod_ip
            (sidecar,) = [c for c in pod.spec.init_containers or [] if c.name == SIDECAR_NAME]
            ports = {p.name: p.container_port for p in sidecar.ports or []}
            sidecars.append(f"http://{ip}:{ports['http']}")
            metrics.append(f"http://{ip}:{ports[METRICS_PORT_NAME]}")
            standins.append(f"http://{ip}:8000")
        return Deployment(
            defence=defence,
            sidecar_urls=tuple(sidecars),
            sidecar_metrics=tuple(metrics),
            standin_urls=tuple(standins),
        )

    def _start_service(
        self, defence: Defence, *, keys: Path, stack: contextlib.ExitStack
    ) -> Deployment:
        backend = self.scenario.backend
        count = self.scenario.sidecars
        standin_port, *ports = free_ports(1 + 2 * count)
        standin_url = f"http://127.0.0.1:{standin_port}"
        standin = self._spawn(
            f"standin-{defence}",
            [
                sys.executable,
                "-m",
                "powgate_testbed.standin",
                "--listen",
                f"127.0.0.1:{standin_port}",
                "--concurrency",
                str(backend.concurrency),
                "--tokens-per-second",
                str(backend.tokens_per_second),
                "--max-queue",
                str(backend.max_queue),
            ],
        )
        processes = [standin]
        # Stopped in reverse, the sidecars first, then the service behind them;
        # the list grows below, so a failed start stops what did start.
        stack.callback(lambda: stop_all(reversed(processes), grace=_STOP_GRACE))
        assert self._server is not None
        pod = self.workdir / "serviceaccount"
        sidecars, metrics = [], []
        for index in range(count):
            proxy, metric = ports[2 * index], ports[2 * index + 1]
            argv = [
                sys.executable,
                "-m",
                "powgate",
                "sidecar",
                "--listen",
                f"127.0.0.1:{proxy}",
                "--upstream",
                standin_url,
                "--metrics-listen",
                f"127.0.0.1:{metric}",
                "--config-object",
                f"{self.namespace}/{config_map_name(str(defence))}",
                "--key-file",
                str(keys),
                "--kube-api-url",
                self._server.url,
                "--kube-token-file",
                str(pod / "token"),
                "--log-level",
                "warning",
            ]
            if self._server.ca_pem is not None:
                argv += ["--kube-ca-file", str(pod / "ca.crt")]
            processes.append(self._spawn(f"sidecar-{defence}-{index}", argv))
            sidecars.append(f"http://127.0.0.1:{proxy}")
            metrics.append(f"http://127.0.0.1:{metric}")
        deployment = Deployment(
            defence=defence,
            sidecar_urls=tuple(sidecars),
            sidecar_metrics=tuple(metrics),
            standin_urls=(standin_url,),
        )
        self._wait(
            lambda: (
                _http_ok(f"{standin_url}/healthz")
                and all(_http_ok(f"{url}/readyz") for url in metrics)
            ),
            what="the service and its sidecars (their config from the API server)",
            watch=processes,
        )
        return deployment

    def _targets(self, deployment: Deployment) -> list[ScrapeTarget]:
        # The labels a pod's scrape config would attach, so `$namespace` queries work.
        labels = {"namespace": self.namespace, "app": APP_LABEL}
        targets = [
            ScrapeTarget(job="powgate-sidecar", address=url.removeprefix("http://"), labels=labels)
            for url in deployment.sidecar_metrics
        ]
        targets += [
            ScrapeTarget(job="standin", address=url.removeprefix("http://"), labels=labels)
            for url in deployment.standin_urls
        ]
        return targets

    def policy_status(self, defence: Defence) -> dict[str, Any]:
        """The policy's status as the operator last wrote it (empty before the first write)."""
        policy = k8s.CustomObjectsApi(self.api).get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, str(defence)
        )
        status = policy.get("status") if isinstance(policy, dict) else None
        return status if isinstance(status, dict) else {}
