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
"""

from __future__ import annotations

import base64
import contextlib
import copy
import os
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
from powgate.contract import KEYRING_SECRET_KEY
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
from .prometheus import PrometheusServer, ScrapeTarget

__all__ = ["DemoStack", "Deployment"]

_SERVICE_ACCOUNT: Final = "powgate-sidecar"
#: Generous: a busy 2-core machine; these bound a hang, they do not measure speed.
_READY_TIMEOUT: Final = 60.0
_STOP_GRACE: Final = 10.0
_LOG_TAIL_LINES: Final = 20


def _probe(check: Callable[[], bool]) -> Callable[[], bool]:
    def guarded() -> bool:
        try:
            return check()
        except (httpx.HTTPError, k8s.ApiException):
            return False

    return guarded


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
    standin_url: str


class DemoStack(Service):
    """The cluster side of the demo, and one deployment at a time on top of it."""

    def __init__(
        self, *, scenario: Scenario, workdir: Path, logs: Path, kubeconfig: Path | None
    ) -> None:
        """``workdir`` holds what a pod would mount (token, keys) and Prometheus' data."""
        self.scenario = scenario
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
            root=runs / str(os.getpid()), tools=Tools.locate(cache_dir()), nodes=1
        )
        self._stack.enter_context(cluster)
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
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=self.namespace)))
        self._stack.callback(self._delete_namespace)

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
            keys = self._mount_keys(defence)
            deployment = self._start_service(defence, keys=keys, stack=stack)
            self.prometheus.set_targets(self._targets(deployment))
            stack.callback(self.prometheus.set_targets, [])
            yield deployment

    def _apply_policy(self, defence: Defence) -> None:
        body = policy_manifest(
            self.scenario, defence=defence, namespace=self.namespace, prometheus=self.prometheus.url
        )
        k8s.CustomObjectsApi(self.api).create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body
        )

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
                # The traffic generator plays the proxy in front of a service: it names
                # each client in X-Forwarded-For (the who-pays runs).
                "--trusted-proxies",
                "127.0.0.1/32",
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
            standin_url=standin_url,
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
        targets.append(
            ScrapeTarget(
                job="standin",
                address=deployment.standin_url.removeprefix("http://"),
                labels=labels,
            )
        )
        return targets

    def policy_status(self, defence: Defence) -> dict[str, Any]:
        """The policy's status as the operator last wrote it (empty before the first write)."""
        policy = k8s.CustomObjectsApi(self.api).get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, str(defence)
        )
        status = policy.get("status") if isinstance(policy, dict) else None
        return status if isinstance(status, dict) else {}
