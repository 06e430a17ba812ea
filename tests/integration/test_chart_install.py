"""The Helm chart against the real API server: install, run the operator with the
chart's RBAC, apply examples/, see the policies Ready, uninstall.

The operator Deployment's pods are fake under kwok (nothing runs in them), so
the operator runs here as a local process with exactly the container's
arguments and, as its credentials, a token of the chart's ServiceAccount from
the TokenRequest API: if the chart's RBAC misses a permission, the policies
never become Ready (or the operator logs a 403), and the test fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client as k8s

from powgate.policy import GROUP, PLURAL, VERSION, config_map_name, key_secret_name
from powgate_testbed.cluster import ClusterAccess, cache_dir

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "powgate"
#: Bounds a hang on a loaded 2-core machine; never a speed measurement.
WAIT = 90.0
T = TypeVar("T")

pytestmark = pytest.mark.slow


def binary(name: str) -> Path:
    path = cache_dir() / "bin" / name
    if not path.exists():
        message = f"{path} is missing: run `make tools`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def eventually(probe: Callable[[], T | None], *, what: str, timeout: float = WAIT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def local_args(args: list[str]) -> list[str]:
    """The container's arguments, with the listeners moved to free loopback ports."""
    return [
        re.sub(r"^(--(metrics|health)-listen)=0\.0\.0\.0:\d+$", rf"\1=127.0.0.1:{free_port()}", a)
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


def test_helm_install_then_examples_reach_ready_with_the_charts_rbac(
    kube: Kube,
    kube_client: k8s.ApiClient,
    namespace: str,
    policy_namespace: str,
    tmp_path: Path,
) -> None:
    release = "powgate"
    fullname = "powgate"  # the release name contains the chart name
    values = {"operator": {"watchNamespaces": [policy_namespace]}}
    (tmp_path / "values.json").write_text(json.dumps(values))
    extensions = k8s.ApiextensionsV1Api(kube_client)
    adopt_existing_crds(
        extensions,
        names=["powpolicies.powgate.dev", "kopfpeerings.kopf.dev"],
        release=release,
        ns=namespace,
    )

    started = time.perf_counter()
    install = kube.run(
        "helm", "install", release, str(CHART), "--namespace", namespace,
        "--values", str(tmp_path / "values.json"), "--wait", "--timeout", "180s",
    )  # fmt: skip
    install_seconds = time.perf_counter() - started
    print(f"helm install --wait: {install_seconds:.1f} s")
    # NOTES guide to a first policy in the watched namespace.
    assert "kind: PowPolicy" in install.stdout
    assert f"kubectl label namespace {policy_namespace} powgate.dev/injection=enabled" in (
        install.stdout
    )

    apps = k8s.AppsV1Api(kube_client)
    deployment = apps.read_namespaced_deployment(fullname, namespace)
    assert deployment.status is not None
    assert deployment.status.available_replicas == 1  # kwok's fake pod, Ready
    # The peering object, a post-install hook of a kind whose CRD is in this release.
    custom = k8s.CustomObjectsApi(kube_client)
    custom.get_namespaced_custom_object(
        "kopf.dev", "v1", policy_namespace, "kopfpeerings", fullname
    )

    # Least privilege, as the API server's authorizer sees it.
    auth = k8s.AuthorizationV1Api(kube_client)
    user = f"system:serviceaccount:{namespace}:{fullname}"
    assert access(
        auth,
        user=user,
        verb="watch",
        resource="powpolicies",
        group=GROUP,
        namespace=policy_namespace,
    )
    assert access(auth, user=user, verb="create", resource="secrets", namespace=policy_namespace)
    assert not access(auth, user=user, verb="list", resource="secrets", namespace="kube-system")
    assert not access(auth, user=user, verb="list", resource="secrets")  # cluster-wide
    assert not access(auth, user=user, verb="create", resource="pods", namespace=policy_namespace)
    assert not access(
        auth, user=user, verb="patch", resource="mutatingwebhookconfigurations",
        group="admissionregistration.k8s.io", name="someone-elses",
    )  # fmt: skip
    assert access(
        auth, user=user, verb="patch", resource="mutatingwebhookconfigurations",
        group="admissionregistration.k8s.io", name=f"{namespace}-{fullname}",
    )  # fmt: skip

    # The operator, as the chart runs it, with the chart's ServiceAccount.
    core = k8s.CoreV1Api(kube_client)
    token_config = service_account_kubeconfig(
        core=core,
        admin_kubeconfig=kube.kubeconfig,
        account=fullname,
        namespace=namespace,
        path=tmp_path / "operator.kubeconfig",
    )
    assert deployment.spec is not None
    assert deployment.spec.template.spec is not None
    (args,) = [c.args or [] for c in deployment.spec.template.spec.containers]
    log_path = tmp_path / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(token_config), "POD_ID": "local-operator"}
    with log_path.open("wb") as log:
        operator = subprocess.Popen(
            [sys.executable, "-m", "powgate_operator", *local_args(args)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        kube.run(
            "kubectl", "apply", "-f", "-", stdin=yaml.safe_dump_all(examples_in(policy_namespace))
        )
        names = [doc["metadata"]["name"] for doc in examples_in(policy_namespace)]

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
                        "kopf.dev", "v1", policy_namespace, "kopfpeerings", fullname
                    )
                ).get("status", {})
            ),
            what="the operator in the peering object",
        )
        listing = kube.run("kubectl", "get", "powpolicies", "-n", policy_namespace).stdout
        assert listing.split("\n")[0].split()[:4] == ["NAME", "DIFFICULTY", "MODE", "READY"]
    finally:
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(timeout=20)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
        log_text = log_path.read_text(errors="replace")
        print(log_text[-6000:])  # shown only when the test failed
    forbidden = [
        line
        for line in log_text.splitlines()
        if re.search(r"\b403\b|[Ff]orbidden|Not enough permissions", line)
    ]
    assert forbidden == []

    # Uninstall: the operator's objects go, the CRD (and with it the policies) stays.
    kube.run("helm", "uninstall", release, "--namespace", namespace, "--wait")
    with pytest.raises(k8s.ApiException) as gone:
        apps.read_namespaced_deployment(fullname, namespace)
    assert gone.value.status == HTTPStatus.NOT_FOUND
    extensions.read_custom_resource_definition("powpolicies.powgate.dev")
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
