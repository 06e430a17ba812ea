"""The Helm chart against the real API server: install, run the operator with the
chart's RBAC, apply examples/, see the policies Ready, inject a sidecar, uninstall.

The operator Deployment's pods are fake under kwok (nothing runs in them), so
the operator runs here as a local process with exactly the container's
arguments and environment and, as its credentials, a token of the chart's
ServiceAccount from the TokenRequest API: if the chart's RBAC misses a
permission, the policies never become Ready, a pod misses its sidecar, or the
operator logs a 403, and the test fails. Only the listeners move to loopback,
and the webhook is called by URL instead of through its Service (this
machine's API server reaches no Service).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
import yaml
from _operator_process import network_policy_of
from kubernetes import client as k8s

from helm_chart import binary
from powgate.contract import (
    INJECTED_ANNOTATION,
    NAMESPACE_LABEL,
    NAMESPACE_LABEL_VALUE,
    POLICY_LABEL,
    SIDECAR_NAME,
)
from powgate.policy import (
    GROUP,
    PLURAL,
    VERSION,
    config_map_name,
    key_secret_name,
)
from powgate_operator._objects import HANDLER_ID, WEBHOOK_NAME, role_name
from powgate_testbed.cluster import ClusterAccess
from waiting import eventually, free_port

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "powgate"
RELEASE = "powgate"
#: The objects' names: the release name contains the chart name, so it is used as is.
FULLNAME = "powgate"
#: What the operator logs when the API server refuses it something.
FORBIDDEN = re.compile(r"\b403\b|[Ff]orbidden|Not enough permissions")

pytestmark = pytest.mark.slow


class Kube:
    """helm and kubectl against the test cluster, as its administrator."""

    def __init__(self, cluster: ClusterAccess) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        self.kubeconfig = cluster.kubeconfig

    def run(
        self, tool: str, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(binary(tool)), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=300,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(f"{tool} {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result


@pytest.fixture
def kube(cluster: ClusterAccess) -> Kube:
    return Kube(cluster)


@pytest.fixture
def policy_namespace(kube_client: k8s.ApiClient) -> Iterator[str]:
    """A second namespace: where the policies live (the release's is `namespace`)."""
    core = k8s.CoreV1Api(kube_client)
    name = f"pol-{uuid.uuid4().hex[:10]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def adopt_existing_crds(
    api: k8s.ApiextensionsV1Api, *, names: list[str], release: str, ns: str
) -> None:
    """Hand CRDs created by `kubectl apply` (or another release) to this release.

    Helm refuses to take over objects it does not own; these labels and
    annotations are its documented way of adopting them (docs/install.md).
    Other tests of this session create the PowPolicy CRD directly.
    """
    for name in names:
        try:
            api.read_custom_resource_definition(name)
        except k8s.ApiException as exc:
            if exc.status == HTTPStatus.NOT_FOUND:
                continue
            raise
        api.patch_custom_resource_definition(
            name,
            {
                "metadata": {
                    "labels": {"app.kubernetes.io/managed-by": "Helm"},
                    "annotations": {
                        "meta.helm.sh/release-name": release,
                        "meta.helm.sh/release-namespace": ns,
                    },
                }
            },
        )


def service_account_kubeconfig(
    *, core: k8s.CoreV1Api, admin_kubeconfig: Path, account: str, namespace: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as `account`, with a token from the TokenRequest API."""
    request = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    status = core.create_namespaced_service_account_token(account, namespace, request).status
    assert status is not None
    token = status.token
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": cluster["name"], "user": account}}],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def local_args(args: list[str]) -> list[str]:
    """The container's arguments, with the listeners moved to free loopback ports."""
    return [
        re.sub(r"^(--(metrics|health)-listen)=.+:\d+$", rf"\1=127.0.0.1:{free_port()}", a)
        for a in args
    ]


def examples_in(namespace: str) -> list[dict[str, Any]]:
    """examples/*.yaml, moved into the test's namespace (their own name theirs to choose)."""
    docs = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["metadata"]["namespace"] = namespace
                docs.append(doc)
    assert docs
    return docs


def as_dict(obj: object) -> dict[str, Any]:
    """A custom object as the client returns it (typed only as `object`)."""
    assert isinstance(obj, dict)
    return obj


def condition(obj: dict[str, Any], kind: str) -> str | None:
    for entry in obj.get("status", {}).get("conditions", []):
        if entry["type"] == kind:
            return str(entry["status"])
    return None


def access(
    auth: k8s.AuthorizationV1Api,
    *,
    user: str,
    verb: str,
    resource: str,
    group: str = "",
    namespace: str | None = None,
    name: str | None = None,
) -> bool:
    review = k8s.V1SubjectAccessReview(
        spec=k8s.V1SubjectAccessReviewSpec(
            user=user,
            groups=["system:serviceaccounts", "system:authenticated"],
            resource_attributes=k8s.V1ResourceAttributes(
                verb=verb, resource=resource, group=group, namespace=namespace, name=name
            ),
        )
    )
    status = auth.create_subject_access_review(review).status
    return status is not None and status.allowed is True


def install_release(
    kube: Kube, kube_client: k8s.ApiClient, *, namespace: str, watched: str, tmp_path: Path
) -> str:
    """`helm install --wait` of the chart, watching `watched`; its output (NOTES)."""
    values = {"operator": {"watchNamespaces": [watched]}}
    (tmp_path / "values.json").write_text(json.dumps(values))
    adopt_existing_crds(
        k8s.ApiextensionsV1Api(kube_client),
        names=["powpolicies.powgate.dev", "kopfpeerings.kopf.dev"],
        release=RELEASE,
        ns=namespace,
    )
    started = time.perf_counter()
    install = kube.run(
        "helm", "install", RELEASE, str(CHART), "--namespace", namespace,
        "--values", str(tmp_path / "values.json"), "--wait", "--timeout", "180s",
    )  # fmt: skip
    print(f"helm install --wait: {time.perf_counter() - started:.1f} s")
    return install.stdout


def container_env(container: k8s.V1Container, *, pod: str, namespace: str) -> dict[str, str]:
    """The container's environment as the kubelet sets it (the downward-API fields
    the chart uses resolve to this pod's name and namespace)."""
    fields = {"metadata.name": pod, "metadata.namespace": namespace, "status.podIP": "127.0.0.1"}
    env = {}
    for var in container.env or []:
        if var.value_from is None:
            env[var.name] = var.value or ""
        else:
            field = var.value_from.field_ref
            assert field is not None, f"{var.name}: only fieldRef values are resolved here"
            env[var.name] = fields[field.field_path]
    return env


@dataclass(frozen=True)
class ChartOperator:
    """The operator the chart's Deployment describes, running as a local process."""

    #: The base URL its webhook is served at (loopback).
    webhook_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def chart_operator(
    *, kube: Kube, kube_client: k8s.ApiClient, namespace: str, root: Path
) -> Iterator[ChartOperator]:
    """Run the chart Deployment's container locally with its ServiceAccount's token.

    Arguments and environment are the container's; the listeners move to free
    loopback ports, and the webhook is named by that URL instead of the
    Service (its certificate must carry the address the API server dials).
    """
    deployment = k8s.AppsV1Api(kube_client).read_namespaced_deployment(FULLNAME, namespace)
    assert deployment.spec is not None
    assert deployment.spec.template.spec is not None
    (container,) = deployment.spec.template.spec.containers
    token_config = service_account_kubeconfig(
        core=k8s.CoreV1Api(kube_client),
        admin_kubeconfig=kube.kubeconfig,
        account=FULLNAME,
        namespace=namespace,
        path=root / "operator.kubeconfig",
    )
    port = free_port()
    operator = ChartOperator(
        webhook_url=f"https://127.0.0.1:{port}", log_path=root / "operator.log"
    )
    env = container_env(container, pod="local-operator", namespace=namespace)
    assert "POWGATE_WEBHOOK_SERVICE" in env  # replaced by the URL below
    del env["POWGATE_WEBHOOK_SERVICE"]
    env |= {
        "POWGATE_WEBHOOK_LISTEN": f"127.0.0.1:{port}",
        "POWGATE_WEBHOOK_URL": operator.webhook_url,
        "POWGATE_WEBHOOK_CERT_DIR": str(root / "webhook-certs"),
    }
    with operator.log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "powgate_operator", *local_args(container.args or [])],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, "KUBECONFIG": str(token_config)},
            start_new_session=True,
        )
    try:
        yield operator
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(operator.log()[-6000:])  # shown only when the test failed


def forbidden(log: str) -> list[str]:
    return [line for line in log.splitlines() if FORBIDDEN.search(line)]


def test_helm_install_then_examples_reach_ready_with_the_charts_rbac(
    kube: Kube,
    kube_client: k8s.ApiClient,
    namespace: str,
    policy_namespace: str,
    tmp_path: Path,
) -> None:
    stdout = install_release(
        kube, kube_client, namespace=namespace, watched=policy_namespace, tmp_path=tmp_path
    )
    # NOTES guide to a first policy in the watched namespace.
    assert "kind: PowPolicy" in stdout
    assert f"kubectl label namespace {policy_namespace} powgate.dev/injection=enabled" in stdout

    apps = k8s.AppsV1Api(kube_client)
    deployment = apps.read_namespaced_deployment(FULLNAME, namespace)
    assert deployment.status is not None
    assert deployment.status.available_replicas == 1  # kwok's fake pod, Ready
    # The peering object, a post-install hook of a kind whose CRD is in this release.
    custom = k8s.CustomObjectsApi(kube_client)
    custom.get_namespaced_custom_object(
        "kopf.dev", "v1", policy_namespace, "kopfpeerings", FULLNAME
    )

    # Least privilege, as the API server's authorizer sees it.
    auth = k8s.AuthorizationV1Api(kube_client)
    user = f"system:serviceaccount:{namespace}:{FULLNAME}"
    assert access(
        auth,
        user=user,
        verb="watch",
        resource="powpolicies",
        group=GROUP,
        namespace=policy_namespace,
    )
    assert access(auth, user=user, verb="create", resource="secrets", namespace=policy_namespace)
    # Secrets only by name: none enumerated, watched, replaced wholesale or deleted.
    for verb in ("list", "watch", "update", "delete"):
        assert not access(
            auth, user=user, verb=verb, resource="secrets", namespace=policy_namespace
        ), verb
    assert not access(
        auth, user=user, verb="delete", resource="configmaps", namespace=policy_namespace
    )
    assert not access(
        auth, user=user, verb="delete", resource="rolebindings",
        group="rbac.authorization.k8s.io", namespace=policy_namespace,
    )  # fmt: skip
    assert access(
        auth, user=user, verb="create", resource="networkpolicies",
        group="networking.k8s.io", namespace=policy_namespace,
    )  # fmt: skip
    assert not access(auth, user=user, verb="list", resource="secrets", namespace="kube-system")
    assert not access(auth, user=user, verb="list", resource="secrets")  # cluster-wide
    assert not access(auth, user=user, verb="create", resource="pods", namespace=policy_namespace)
    assert not access(
        auth, user=user, verb="patch", resource="mutatingwebhookconfigurations",
        group="admissionregistration.k8s.io", name="someone-elses",
    )  # fmt: skip
    assert access(
        auth, user=user, verb="patch", resource="mutatingwebhookconfigurations",
        group="admissionregistration.k8s.io", name=f"{namespace}-{FULLNAME}",
    )  # fmt: skip

    # The operator, as the chart runs it, with the chart's ServiceAccount.
    core = k8s.CoreV1Api(kube_client)
    with chart_operator(
        kube=kube, kube_client=kube_client, namespace=namespace, root=tmp_path
    ) as operator:
        kube.run(
            "kubectl", "apply", "-f", "-", stdin=yaml.safe_dump_all(examples_in(policy_namespace))
        )
        names = [
            doc["metadata"]["name"]
            for doc in examples_in(policy_namespace)
            if doc["kind"] == "PowPolicy"
        ]

        def ready(name: str) -> bool:
            obj = as_dict(
                custom.get_namespaced_custom_object(GROUP, VERSION, policy_namespace, PLURAL, name)
            )
            return condition(obj, "Ready") == "True"

        for name in names:
            eventually(lambda name=name: ready(name), what=f"policy {name} Ready")  # type: ignore[misc]
            core.read_namespaced_config_map(config_map_name(name), policy_namespace)
            core.read_namespaced_secret(key_secret_name(name), policy_namespace)
        # kopf joined the peering object (its keep-alive is a patch the RBAC must allow).
        eventually(
            lambda: (
                "local-operator"
                in as_dict(
                    custom.get_namespaced_custom_object(
                        "kopf.dev", "v1", policy_namespace, "kopfpeerings", FULLNAME
                    )
                ).get("status", {})
            ),
            what="the operator in the peering object",
        )
        listing = kube.run("kubectl", "get", "powpolicies", "-n", policy_namespace).stdout
        assert listing.split("\n")[0].split()[:4] == ["NAME", "DIFFICULTY", "MODE", "READY"]
    assert forbidden(operator.log()) == []

    # Uninstall: the operator's objects go, the CRD (and with it the policies) stays.
    kube.run("helm", "uninstall", RELEASE, "--namespace", namespace, "--wait")
    with pytest.raises(k8s.ApiException) as gone:
        apps.read_namespaced_deployment(FULLNAME, namespace)
    assert gone.value.status == HTTPStatus.NOT_FOUND
    k8s.ApiextensionsV1Api(kube_client).read_custom_resource_definition("powpolicies.powgate.dev")
    remaining = as_dict(
        custom.list_namespaced_custom_object(GROUP, VERSION, policy_namespace, PLURAL)
    )
    assert sorted(p["metadata"]["name"] for p in remaining["items"]) == sorted(names)
    # The policies carry kopf's finalizer; without an operator they would block the
    # namespace's deletion, so the test removes them the way a user would.
    for name in names:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, policy_namespace, PLURAL, name, {"metadata": {"finalizers": None}}
        )


def pod_annotations(pod: k8s.V1Pod) -> dict[str, str] | None:
    return pod.metadata.annotations if pod.metadata else None


def llm_pod_spec(account: str) -> k8s.V1PodSpec:
    """An app serving on the port named `http`, which the sidecar takes over."""
    port = k8s.V1ContainerPort(name="http", container_port=8000)
    return k8s.V1PodSpec(
        service_account_name=account,
        containers=[k8s.V1Container(name="model", image="standin:test", ports=[port])],
    )


def test_the_charts_webhook_injects_the_sidecar_with_the_charts_rbac(
    cluster: ClusterAccess,
    kube: Kube,
    kube_client: k8s.ApiClient,
    namespace: str,
    policy_namespace: str,
    tmp_path: Path,
) -> None:
    if not cluster.reaches_loopback:
        pytest.skip("the API server cannot call a webhook on this machine's loopback")
    install_release(
        kube, kube_client, namespace=namespace, watched=policy_namespace, tmp_path=tmp_path
    )
    core, apps = k8s.CoreV1Api(kube_client), k8s.AppsV1Api(kube_client)
    custom = k8s.CustomObjectsApi(kube_client)
    admission = k8s.AdmissionregistrationV1Api(kube_client)
    configuration = f"{namespace}-{FULLNAME}"
    try:
        with chart_operator(
            kube=kube, kube_client=kube_client, namespace=namespace, root=tmp_path
        ) as operator:
            # As the administrator: the chart's configuration calls the local operator
            # by URL instead of the Service. The caBundle stays the operator's to patch.
            admission.patch_mutating_webhook_configuration(
                configuration,
                [
                    {"op": "test", "path": "/webhooks/0/name", "value": WEBHOOK_NAME},
                    {"op": "remove", "path": "/webhooks/0/clientConfig/service"},
                    {
                        "op": "add",
                        "path": "/webhooks/0/clientConfig/url",
                        "value": f"{operator.webhook_url}/{HANDLER_ID}",
                    },
                ],
            )
            core.patch_namespace(
                policy_namespace,
                {"metadata": {"labels": {NAMESPACE_LABEL: NAMESPACE_LABEL_VALUE}}},
            )
            for account in ("probe", "llm"):
                core.create_namespaced_service_account(
                    policy_namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=account))
                )
            custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                policy_namespace,
                PLURAL,
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "PowPolicy",
                    "metadata": {"name": "llm"},
                    "spec": {"selector": {"matchLabels": {"app": "llm"}}},
                },
            )
            try:
                probes = iter(range(10_000))

                def injected_probe() -> bool:
                    # With failurePolicy Ignore, a pod admitted before the webhook
                    # serves (or before the API server trusts its CA) is stored as sent.
                    name = f"probe-{next(probes)}"
                    body = k8s.V1Pod(
                        metadata=k8s.V1ObjectMeta(name=name, labels={"app": "llm"}),
                        spec=llm_pod_spec("probe"),
                    )
                    pod = core.create_namespaced_pod(policy_namespace, body)
                    core.delete_namespaced_pod(name, policy_namespace, grace_period_seconds=0)
                    return INJECTED_ANNOTATION in (pod_annotations(pod) or {})

                eventually(injected_probe, what="the chart's webhook to inject")
                labels = {"app": "llm"}
                apps.create_namespaced_deployment(
                    policy_namespace,
                    k8s.V1Deployment(
                        metadata=k8s.V1ObjectMeta(name="llm"),
                        spec=k8s.V1DeploymentSpec(
                            replicas=1,
                            selector=k8s.V1LabelSelector(match_labels=labels),
                            template=k8s.V1PodTemplateSpec(
                                metadata=k8s.V1ObjectMeta(labels=labels),
                                spec=llm_pod_spec("llm"),
                            ),
                        ),
                    ),
                )

                def deployed_pod() -> k8s.V1Pod | None:
                    pods = core.list_namespaced_pod(policy_namespace, label_selector="app=llm")
                    return pods.items[0] if pods.items else None

                pod = eventually(deployed_pod, what="the Deployment's pod")
                assert (pod_annotations(pod) or {}).get(INJECTED_ANNOTATION) == "llm"
                assert pod.spec is not None
                (sidecar,) = [
                    c
                    for c in (pod.spec.init_containers or []) + pod.spec.containers
                    if c.name == SIDECAR_NAME
                ]
                # What the chart's values say is injected.
                assert str(sidecar.image).startswith("powgate-sidecar:")
                assert sidecar.resources is not None
                assert sidecar.resources.requests == {"cpu": "100m", "memory": "64Mi"}
                env = {e.name: e.value for e in sidecar.env or []}
                assert env["POWGATE_CONFIG_OBJECT"] == (
                    f"{policy_namespace}/{config_map_name('llm')}"
                )

                # The operator granted the Deployment pod's service account read access
                # to the policy's config; the probes' pods are gone, and so is their grant.
                def bound() -> list[str]:
                    rbac = k8s.RbacAuthorizationV1Api(kube_client)
                    try:
                        binding = rbac.read_namespaced_role_binding(
                            role_name("llm"), policy_namespace
                        )
                    except k8s.ApiException as exc:
                        if exc.status == HTTPStatus.NOT_FOUND:
                            return []
                        raise
                    return sorted(s.name for s in binding.subjects or [])

                eventually(
                    lambda: bound() == ["llm"] or None,
                    what="the binding to name the Deployment's account only",
                    context=lambda: str(bound()),
                )

                # And wrote the policy's NetworkPolicy, with the chart's RBAC.
                def network_policy() -> k8s.V1NetworkPolicy | None:
                    return network_policy_of(kube_client, namespace=policy_namespace, policy="llm")

                written = eventually(network_policy, what="the policy's NetworkPolicy")
                assert written.spec is not None
                assert written.spec.pod_selector.match_labels == {POLICY_LABEL: "llm"}
            finally:
                # While the operator runs: it removes its finalizer.
                custom.delete_namespaced_custom_object(
                    GROUP, VERSION, policy_namespace, PLURAL, "llm"
                )
                eventually(
                    lambda: (
                        not as_dict(
                            custom.list_namespaced_custom_object(
                                GROUP, VERSION, policy_namespace, PLURAL
                            )
                        )["items"]
                    ),
                    what="the policy to be deleted",
                )
        assert forbidden(operator.log()) == []
    finally:
        kube.run("helm", "uninstall", RELEASE, "--namespace", namespace, "--wait")


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"operator": {"replicas": 2}, "networkPolicy": {"enabled": True}},
        {"operator": {"watchNamespaces": ["default"]}, "webhook": {"failurePolicy": "Fail"}},
        {"webhook": {"enabled": False}, "peering": {"enabled": False}},
    ],
    ids=["defaults", "ha-netpol", "namespaced-fail", "minimal"],
)
def test_every_rendered_manifest_passes_server_side_validation(
    kube: Kube, namespace: str, values: dict[str, Any], tmp_path: Path
) -> None:
    """`kubectl apply --dry-run=server --validate=strict`: the API server's own schema
    (unknown fields are errors), defaulting and admission, without changing anything."""
    (tmp_path / "values.json").write_text(json.dumps(values))
    rendered = kube.run(
        "helm", "template", f"dry-{uuid.uuid4().hex[:6]}", str(CHART), "--namespace", namespace,
        "--values", str(tmp_path / "values.json"),
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    # Hooks (the peering objects) are created after the install, once their CRD
    # exists: they cannot be dry-run before it. The install test creates them for real.
    checkable = [d for d in docs if "helm.sh/hook" not in d["metadata"].get("annotations", {})]
    skipped = {d["kind"] for d in docs} - {d["kind"] for d in checkable}
    assert skipped <= {"ClusterKopfPeering", "KopfPeering"}
    result = kube.run(
        "kubectl", "apply", "--dry-run=server", "--validate=strict", "-f", "-",
        stdin=yaml.safe_dump_all(checkable), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(checkable)


def test_a_typo_in_values_fails_before_anything_is_installed(
    kube: Kube, namespace: str, kube_client: k8s.ApiClient
) -> None:
    result = kube.run(
        "helm", "install", "typo", str(CHART), "--namespace", namespace,
        "--set", "webhook.failurPolicy=Fail", check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "additional properties 'failurPolicy' not allowed" in result.stderr
    listed = k8s.AppsV1Api(kube_client).list_namespaced_deployment(namespace)
    assert listed.items == []
