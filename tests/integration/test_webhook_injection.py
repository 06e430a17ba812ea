"""Sidecar injection by the operator's webhook, against the real API server.

The operator runs as its own process with the webhook on, watching only the
test's namespace; the API server calls it over TLS with the CA bundle the
operator issued and wrote into its MutatingWebhookConfiguration, and presents
its own client certificate (its admission-plugin kubeconfig), which the
webhook requires. Pods come from a real Deployment (controller manager →
ReplicaSet → pods), and the assertions read the pods as stored.
"""

from __future__ import annotations

import base64
import os
import ssl
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from _operator_process import OperatorProcess, apply_crd, network_policy_of
from kubernetes import client as k8s

from powgate.contract import (
    INJECTED_ANNOTATION,
    NAMESPACE_LABEL,
    NAMESPACE_LABEL_REQUIRED,
    NAMESPACE_LABEL_VALUE,
    OPT_OUT_LABEL,
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
from powgate_operator._objects import HANDLER_ID, role_name
from powgate_testbed.cluster import ClusterAccess
from waiting import eventually, free_port

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "powpolicy.yaml").read_text())

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crd(kube_client: k8s.ApiClient) -> None:
    apply_crd(kube_client, CRD)


def cluster_ca(cluster: ClusterAccess, path: Path) -> Path:
    """The cluster's CA (it issues the API server's webhook client certificate), as a file."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    path.write_bytes(
        base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])
    )
    return path


class Operator(OperatorProcess):
    """The operator process with the injection webhook on, answering the API server only."""

    def __init__(self, *, cluster: ClusterAccess, namespace: str, root: Path) -> None:
        port = free_port()
        self.url = f"https://127.0.0.1:{port}"
        self.cert_dir = root / "certs"
        self.configuration = f"injector-{namespace}"
        client_auth = []
        if cluster.webhook_client is not None:
            client_auth = [
                "--webhook-client-ca",
                str(cluster_ca(cluster, root / "cluster-ca.crt")),
                "--webhook-client-names",
                cluster.webhook_client,
            ]
        super().__init__(
            namespace=namespace,
            kubeconfig=cluster.kubeconfig,
            log=root / "operator.log",
            args=[
                "--webhook-listen",
                f"127.0.0.1:{port}",
                "--webhook-url",
                f"https://127.0.0.1:{port}",
                "--webhook-configuration",
                self.configuration,
                # No chart here: the operator creates the configuration itself.
                "--webhook-create-configuration",
                "--webhook-cert-dir",
                str(root / "certs"),
                "--operator-namespace",
                "default",
                "--sidecar-image",
                "powgate/sidecar:test",
                *client_auth,
            ],
        )


@pytest.fixture
def opted_in(kube_client: k8s.ApiClient, namespace: str) -> str:
    k8s.CoreV1Api(kube_client).patch_namespace(
        namespace, {"metadata": {"labels": {NAMESPACE_LABEL: NAMESPACE_LABEL_VALUE}}}
    )
    return namespace


@pytest.fixture
def operator(
    cluster: ClusterAccess,
    kube_client: k8s.ApiClient,
    crd: None,
    opted_in: str,
    tmp_path: Path,
) -> Iterator[Operator]:
    if not cluster.reaches_loopback:
        pytest.skip("the API server cannot call a webhook on this machine's loopback")
    process = Operator(cluster=cluster, namespace=opted_in, root=tmp_path)
    process.start()
    admission = k8s.AdmissionregistrationV1Api(kube_client)
    try:
        yield process
    finally:
        process.stop()
        try:
            admission.delete_mutating_webhook_configuration(process.configuration)
        except k8s.ApiException as exc:
            if exc.status != HTTPStatus.NOT_FOUND:
                raise
        if os.environ.get("POWGATE_SHOW_LOGS"):
            print(process.log())


def _policy(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PowPolicy",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": "llm"}}},
    }


def _pod_spec(*, automount: bool = True) -> dict[str, Any]:
    return {
        "automountServiceAccountToken": automount,
        "containers": [
            {
                "name": "model",
                "image": "standin:test",
                "ports": [{"name": "http", "containerPort": 8000}],
                "readinessProbe": {"httpGet": {"path": "/v1/models", "port": "http"}},
            }
        ],
    }


def _deployment(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"deployment": name}},
            "template": {
                "metadata": {"labels": {**labels, "deployment": name}},
                "spec": _pod_spec(automount=False),
            },
        },
    }


def _may(
    kube_client: k8s.ApiClient, namespace: str, account: str, resource: str, name: str
) -> bool:
    """What the API server's authorizer answers for the service account (a real RBAC check)."""
    review = k8s.AuthorizationV1Api(kube_client).create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": f"system:serviceaccount:{namespace}:{account}",
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": "get",
                    "resource": resource,
                    "name": name,
                },
            },
        }  # type: ignore[arg-type]
    )
    return bool(review.status.allowed)


def _create_pod(core: k8s.CoreV1Api, namespace: str, name: str, labels: dict[str, str]) -> Any:
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}}
    body["spec"] = _pod_spec()
    return core.api_client.sanitize_for_serialization(core.create_namespaced_pod(namespace, body))


def _injected_probe(core: k8s.CoreV1Api, namespace: str) -> Callable[[], dict[str, Any] | None]:
    """Creates a throw-away selected pod until one comes back injected (webhook in force)."""
    counter = iter(range(10_000))

    def probe() -> dict[str, Any] | None:
        name = f"probe-{next(counter)}"
        pod = _create_pod(core, namespace, name, {"app": "llm"})
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        return pod if INJECTED_ANNOTATION in (pod["metadata"].get("annotations") or {}) else None

    return probe


def bound(rbac: k8s.RbacAuthorizationV1Api, namespace: str) -> list[tuple[str, str]] | None:
    """The subjects of the policy's RoleBinding (None: there is none)."""
    try:
        binding = rbac.read_namespaced_role_binding(role_name("llm"), namespace)
    except k8s.ApiException as exc:
        if exc.status == HTTPStatus.NOT_FOUND:
            return None
        raise
    return [(s.kind, s.name) for s in binding.subjects or []]


def _in_force(kube_client: k8s.ApiClient, namespace: str, policy: str) -> None:
    """``policy`` created, and the webhook answering: a probe pod came back injected."""
    custom = k8s.CustomObjectsApi(kube_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _policy(policy))
    eventually(_injected_probe(k8s.CoreV1Api(kube_client), namespace), what="the webhook to inject")


def _sidecar(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["spec"].get("initContainers", []) if c["name"] == SIDECAR_NAME)


def test_selected_pods_get_the_sidecar_and_others_are_untouched(
    kube_client: k8s.ApiClient, operator: Operator, opted_in: str
) -> None:
    namespace = opted_in
    core, apps = k8s.CoreV1Api(kube_client), k8s.AppsV1Api(kube_client)
    custom = k8s.CustomObjectsApi(kube_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _policy("llm"))
    eventually(_injected_probe(core, namespace), what="the webhook to inject")

    apps.create_namespaced_deployment(namespace, _deployment("llm", {"app": "llm"}))

    def deployed_pod() -> dict[str, Any] | None:
        pods = core.list_namespaced_pod(namespace, label_selector="deployment=llm").items
        return core.api_client.sanitize_for_serialization(pods[0]) if pods else None

    pod = eventually(deployed_pod, what="the Deployment's pod")
    sidecar = _sidecar(pod)
    assert sidecar["restartPolicy"] == "Always"  # native sidecar on this 1.29+ API server
    assert sidecar["image"] == "powgate/sidecar:test"
    assert {p["name"]: p["containerPort"] for p in sidecar["ports"]} == {
        "http": 8480,
        "powgate-metrics": 9480,
    }
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["POWGATE_UPSTREAM"] == "http://127.0.0.1:8000"
    assert env["POWGATE_CONFIG_OBJECT"] == f"{namespace}/{config_map_name('llm')}"
    assert env["POWGATE_KEY_FILE"] == "/etc/powgate/keys"
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert sidecar["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    (model,) = pod["spec"]["containers"]
    assert model["ports"][0]["name"] == "http-app"
    assert model["ports"][0]["containerPort"] == 8000
    assert model["readinessProbe"]["httpGet"]["port"] == "http-app"
    # The pod turns automounting off, yet the sidecar has its own projected token.
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    sources = volumes["powgate-token"]["projected"]["sources"]
    assert any("serviceAccountToken" in s for s in sources)
    assert volumes["powgate-keys"]["secret"]["secretName"] == key_secret_name("llm")
    assert pod["metadata"]["annotations"][INJECTED_ANNOTATION] == "llm"

    # The pod's service account may read exactly the policy's ConfigMap, and never
    # its keys: the app container shares that account (the keys are a mounted volume).
    rbac = k8s.RbacAuthorizationV1Api(kube_client)
    role = rbac.read_namespaced_role(role_name("llm"), namespace)
    assert [n for r in role.rules for n in r.resource_names] == [config_map_name("llm")]
    # The Deployment's pod exists: its service account is bound (the throw-away probe
    # pods are gone, and with them their grants). The operator binds it once it has
    # seen the pod, so this is waited for before the account's rights are asked.
    eventually(
        lambda: bound(rbac, namespace) == [("ServiceAccount", "default")] or None,
        what="the binding to name exactly the pod's account",
        context=lambda: str(bound(rbac, namespace)),
    )
    # The API server's authorizer follows bindings through its own cache: waited for too.
    eventually(
        lambda: _may(kube_client, namespace, "default", "configmaps", config_map_name("llm")),
        what="the pod's account to read the policy's ConfigMap",
    )
    assert not _may(kube_client, namespace, "default", "secrets", key_secret_name("llm"))

    # Not selected, and opted out: stored exactly as sent.
    for name, labels in (
        ("other", {"app": "other"}),
        ("opted-out", {"app": "llm", OPT_OUT_LABEL: "false"}),
    ):
        stored = _create_pod(core, namespace, name, labels)
        assert INJECTED_ANNOTATION not in (stored["metadata"].get("annotations") or {})
        assert "initContainers" not in stored["spec"]
        assert stored["spec"]["containers"][0]["ports"][0]["name"] == "http"

    # Re-applying the Deployment changes nothing: same template, same single pod.
    patched = apps.patch_namespaced_deployment("llm", namespace, _deployment("llm", {"app": "llm"}))
    generation = patched.metadata.generation

    def controller_caught_up() -> bool:
        status = apps.read_namespaced_deployment_status("llm", namespace).status
        return (status.observed_generation or 0) >= generation and status.updated_replicas == 1

    # The positive signal: the controller has acted on the patched generation.
    eventually(controller_caught_up, what="the Deployment controller to observe the patch")
    sets = apps.list_namespaced_replica_set(namespace, label_selector="deployment=llm").items
    assert len(sets) == 1
    pods = core.list_namespaced_pod(namespace, label_selector="deployment=llm").items
    assert [p.metadata.name for p in pods] == [pod["metadata"]["name"]]
    assert sum(c.name == SIDECAR_NAME for c in pods[0].spec.init_containers) == 1


def test_webhook_down_with_ignore_does_not_block_pods(
    kube_client: k8s.ApiClient, operator: Operator, opted_in: str
) -> None:
    namespace = opted_in
    core = k8s.CoreV1Api(kube_client)
    custom = k8s.CustomObjectsApi(kube_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _policy("llm"))
    eventually(_injected_probe(core, namespace), what="the webhook to inject")
    operator.stop()

    admission = k8s.AdmissionregistrationV1Api(kube_client)
    webhook, required = admission.read_mutating_webhook_configuration(
        operator.configuration
    ).webhooks
    assert (webhook.failure_policy, required.failure_policy) == ("Ignore", "Fail")
    # The configuration still sends pods to the stopped webhook; Ignore admits them as sent.
    stored = _create_pod(core, namespace, "while-down", {"app": "llm"})
    assert INJECTED_ANNOTATION not in (stored["metadata"].get("annotations") or {})
    assert stored["spec"]["containers"][0]["ports"][0]["name"] == "http"

    # Back up, the operator reports the pod that runs without the sidecar.
    operator.start()

    def reported() -> dict[str, Any] | None:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "llm")
        protection = obj.get("status", {}).get("protection") or {}
        return obj if protection.get("unprotectedPods") == 1 else None

    obj = eventually(reported, what="the unprotected pod in the policy's status")
    assert obj["status"]["protection"]["unprotected"] == [
        {"name": "while-down", "reason": "NotInjected"}
    ]
    condition = next(c for c in obj["status"]["conditions"] if c["type"] == "PodsProtected")
    assert (condition["status"], condition["reason"]) == ("False", "UnprotectedPods")


def test_a_namespace_that_requires_the_sidecar_refuses_pods_while_the_webhook_is_down(
    kube_client: k8s.ApiClient, operator: Operator, opted_in: str
) -> None:
    namespace = opted_in
    core = k8s.CoreV1Api(kube_client)
    # Answering first: the operator registers the webhook just before it listens, and
    # a namespace that requires the sidecar refuses every pod until it does.
    _in_force(kube_client, namespace, "llm")
    core.patch_namespace(
        namespace, {"metadata": {"labels": {NAMESPACE_LABEL: NAMESPACE_LABEL_REQUIRED}}}
    )
    eventually(_injected_probe(core, namespace), what="the required webhook to inject")
    # A selected pod the sidecar cannot protect (no port to take over) is refused.
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "portless", "labels": {"app": "llm"}},
    }
    body["spec"] = {"containers": [{"name": "model", "image": "standin:test"}]}
    with pytest.raises(k8s.ApiException) as refused:
        core.create_namespaced_pod(namespace, body)
    assert "cannot protect it" in str(refused.value.body)
    operator.stop()
    # Down: no pod of the namespace is created at all, rather than without its sidecar.
    with pytest.raises(k8s.ApiException) as down:
        _create_pod(core, namespace, "while-down", {"app": "llm"})
    assert "failed calling webhook" in str(down.value.body)


def test_the_network_policy_admits_ingress_through_the_sidecar_only(
    kube_client: k8s.ApiClient, operator: Operator, opted_in: str
) -> None:
    namespace = opted_in
    apps = k8s.AppsV1Api(kube_client)
    custom = k8s.CustomObjectsApi(kube_client)
    _in_force(kube_client, namespace, "llm")
    apps.create_namespaced_deployment(namespace, _deployment("llm", {"app": "llm"}))

    def written() -> Any:
        found = network_policy_of(kube_client, namespace=namespace, policy="llm")
        return found if found is not None and "http" in ports_of(found) else None

    def ports_of(found: Any) -> list[str]:
        return sorted(str(p.port) for rule in found.spec.ingress for p in rule.ports)

    found = eventually(written, what="the policy's NetworkPolicy")
    # The API server took it: named ports resolve per pod to the sidecar's; the app's own
    # port (renamed http-app) is not among them.
    assert ports_of(found) == ["http", "powgate-metrics"]
    assert found.spec.pod_selector.match_labels == {POLICY_LABEL: "llm"}
    assert found.spec.policy_types == ["Ingress"]
    # The namespace gets a NetworkPolicy of its own that selects the pods: Auto withdraws
    # ours (it would admit every source to the sidecar) and says so.
    k8s.NetworkingV1Api(kube_client).create_namespaced_network_policy(
        namespace,
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "from-ingress-only"},
            "spec": {"podSelector": {"matchLabels": {"app": "llm"}}, "ingress": []},
        },
    )
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "llm", {"spec": {"evaluationIntervalSeconds": 1}}
    )

    def withdrawn() -> dict[str, Any] | None:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "llm")
        state = (obj.get("status", {}).get("protection") or {}).get("networkPolicy", "")
        return obj if state.startswith("NotWritten") else None

    eventually(withdrawn, what="Auto to step back", timeout=90)
    assert network_policy_of(kube_client, namespace=namespace, policy="llm") is None


def forged_review(namespace: str, account: str) -> dict[str, Any]:
    """An AdmissionReview for a selected pod, as an attacker would write it."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "forged", "namespace": namespace, "labels": {"app": "llm"}},
        "spec": {**_pod_spec(), "serviceAccountName": account},
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "f0f0f0f0-0000-0000-0000-000000000000",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "forged",
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": False,
        },
    }


def test_a_forged_admission_review_is_refused_and_grants_nothing(
    cluster: ClusterAccess, kube_client: k8s.ApiClient, operator: Operator, opted_in: str
) -> None:
    """Anyone who reaches the webhook's port may try to have a service account granted."""
    if cluster.webhook_client is None:
        pytest.skip("this cluster's API server presents no client certificate known here")
    namespace = opted_in
    core, rbac = k8s.CoreV1Api(kube_client), k8s.RbacAuthorizationV1Api(kube_client)
    custom = k8s.CustomObjectsApi(kube_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _policy("llm"))
    # The positive signal first: the API server's own calls are answered.
    eventually(_injected_probe(core, namespace), what="the webhook to inject")
    review = forged_review(namespace, "attacker")
    server = ssl.create_default_context(cafile=str(operator.cert_dir / "ca.crt"))
    # Without a client certificate the TLS handshake itself fails.
    with pytest.raises(httpx.TransportError), httpx.Client(verify=server, timeout=10) as anyone:
        anyone.post(f"{operator.url}/{HANDLER_ID}", json=review)
    # With a certificate of the same CA but another name (the cluster's administrator's):
    # answered, refused, and no handler ran.
    admin = yaml.safe_load(cluster.kubeconfig.read_text())["users"][0]["user"]
    tmp = operator.cert_dir.parent
    (tmp / "admin.crt").write_bytes(base64.b64decode(admin["client-certificate-data"]))
    (tmp / "admin.key").write_bytes(base64.b64decode(admin["client-key-data"]))
    server.load_cert_chain(tmp / "admin.crt", tmp / "admin.key")
    with httpx.Client(verify=server, timeout=10) as other:
        answer = other.post(f"{operator.url}/{HANDLER_ID}", json=review).json()
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"]["code"] == HTTPStatus.FORBIDDEN
    assert "patch" not in answer["response"]
    # Nothing was granted: no pod of the account exists (the probes' pods are gone too).
    assert not _may(kube_client, namespace, "attacker", "configmaps", config_map_name("llm"))
    assert ("ServiceAccount", "attacker") not in (bound(rbac, namespace) or [])


def test_grants_follow_the_pods_that_exist(
    kube_client: k8s.ApiClient, operator: Operator, opted_in: str
) -> None:
    namespace = opted_in
    core, rbac = k8s.CoreV1Api(kube_client), k8s.RbacAuthorizationV1Api(kube_client)
    apps = k8s.AppsV1Api(kube_client)
    custom = k8s.CustomObjectsApi(kube_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _policy("llm"))
    eventually(_injected_probe(core, namespace), what="the webhook to inject")
    for account in ("model", "batch"):
        core.create_namespaced_service_account(
            namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=account))
        )
        body = _deployment(account, {"app": "llm"})
        body["spec"]["template"]["spec"]["serviceAccountName"] = account
        apps.create_namespaced_deployment(namespace, body)
    expected = [("ServiceAccount", "batch"), ("ServiceAccount", "model")]
    eventually(
        lambda: bound(rbac, namespace) == expected or None,
        what="both accounts bound",
        context=lambda: str(bound(rbac, namespace)),
    )
    assert _may(kube_client, namespace, "batch", "configmaps", config_map_name("llm"))
    # The batch Deployment goes, and with its last pod the account's grant.
    apps.delete_namespaced_deployment("batch", namespace, propagation_policy="Foreground")
    eventually(
        lambda: bound(rbac, namespace) == [("ServiceAccount", "model")] or None,
        what="the batch account pruned",
        context=lambda: str(bound(rbac, namespace)),
    )
    assert not _may(kube_client, namespace, "batch", "configmaps", config_map_name("llm"))


def test_a_server_side_dry_run_is_injected_and_grants_nothing(
    kube_client: k8s.ApiClient, operator: Operator, opted_in: str
) -> None:
    """``sideEffects: None`` is declared, and true: a dry run is injected and grants nothing.

    The API server sends dry runs to webhooks declaring ``None`` (or
    ``NoneOnDryRun``, for one that writes but skips dry runs); were admission
    writing anything, the dry run's account would be bound.
    """
    namespace = opted_in
    core, apps = k8s.CoreV1Api(kube_client), k8s.AppsV1Api(kube_client)
    rbac = k8s.RbacAuthorizationV1Api(kube_client)
    admission = k8s.AdmissionregistrationV1Api(kube_client)
    _in_force(kube_client, namespace, "llm")  # the operator registered its configuration
    hooks = admission.read_mutating_webhook_configuration(operator.configuration).webhooks
    assert [h.side_effects for h in hooks] == ["None", "None"]
    for account in ("dry", "real"):
        core.create_namespaced_service_account(
            namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=account))
        )
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "dry", "labels": {"app": "llm"}},
    }
    body["spec"] = {**_pod_spec(), "serviceAccountName": "dry"}
    dry = core.api_client.sanitize_for_serialization(
        core.create_namespaced_pod(namespace, body, dry_run="All")
    )
    assert dry["metadata"]["annotations"][INJECTED_ANNOTATION] == "llm"
    assert _sidecar(dry)["name"] == SIDECAR_NAME
    with pytest.raises(k8s.ApiException) as absent:
        core.read_namespaced_pod("dry", namespace)
    assert absent.value.status == HTTPStatus.NOT_FOUND
    # A real pod after it is bound; the dry run's account never is.
    deployment = _deployment("real", {"app": "llm"})
    deployment["spec"]["template"]["spec"]["serviceAccountName"] = "real"
    apps.create_namespaced_deployment(namespace, deployment)
    seen: set[tuple[str, str]] = set()

    def real_bound() -> bool:
        subjects = bound(rbac, namespace) or []
        seen.update(subjects)
        return subjects == [("ServiceAccount", "real")]

    eventually(real_bound, what="the real pod's account bound", context=lambda: str(seen))
    # The dry run's account, not even for a while (the probes' `default` may pass by).
    assert ("ServiceAccount", "dry") not in seen
    assert not _may(kube_client, namespace, "dry", "configmaps", config_map_name("llm"))


def test_a_replaced_policy_applies_at_once_and_a_deleted_one_never(
    kube_client: k8s.ApiClient, operator: Operator, opted_in: str
) -> None:
    """Each admission sees the policies that exist when the pod is created, not a cache."""
    namespace = opted_in
    core = k8s.CoreV1Api(kube_client)
    custom = k8s.CustomObjectsApi(kube_client)
    # "a-old" sorts first: a stale view of it would win over "b-new".
    _in_force(kube_client, namespace, "a-old")
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "a-old")

    def gone() -> bool:
        try:
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "a-old")
        except k8s.ApiException as exc:
            return bool(exc.status == HTTPStatus.NOT_FOUND)
        return False

    eventually(gone, what="a-old deleted (its finalizer done)")
    stored = _create_pod(core, namespace, "after-delete", {"app": "llm"})
    assert INJECTED_ANNOTATION not in (stored["metadata"].get("annotations") or {})

    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _policy("b-new"))
    stored = _create_pod(core, namespace, "after-create", {"app": "llm"})
    assert stored["metadata"]["annotations"][INJECTED_ANNOTATION] == "b-new"

    # Being deleted (a finalizer of someone else's holds it): it selects nothing more.
    held = _policy("a-held")
    held["metadata"]["finalizers"] = ["example.com/hold"]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, held)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "a-held")
    stored = _create_pod(core, namespace, "while-deleting", {"app": "llm"})
    assert stored["metadata"]["annotations"][INJECTED_ANNOTATION] == "b-new"

    def release() -> bool:
        # The operator removes its own finalizer meanwhile: a list read before that would
        # put it back, which the API server refuses (422) for an object being deleted.
        # The read's resourceVersion makes such a race a conflict, and the next try rereads.
        current = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "a-held")
        metadata = current["metadata"]
        kept = [f for f in metadata["finalizers"] if f != "example.com/hold"]
        patch = {"metadata": {"finalizers": kept, "resourceVersion": metadata["resourceVersion"]}}
        try:
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "a-held", patch
            )
        except k8s.ApiException as exc:
            if exc.status == HTTPStatus.CONFLICT:
                return False
            raise
        return True

    eventually(release, what="the test's own finalizer removed from a-held")
