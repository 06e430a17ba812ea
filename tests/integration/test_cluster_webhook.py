"""The API server calls a mutating webhook served over TLS by a local process."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import trustme
from kubernetes import client as k8s

from powgate_testbed.cluster import ClusterAccess

MUTATED_LABEL = "powgate.dev/mutated"
_DEADLINE = 30.0


class _Webhook(ThreadingHTTPServer):
    """Answers AdmissionReviews with a JSON patch that adds a label; remembers the calls."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.reviews: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}/mutate"


class _Handler(BaseHTTPRequestHandler):
    server: _Webhook

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.reviews.append(review)
        request = review["request"]
        patch = []
        if not request["object"]["metadata"].get("labels"):
            patch.append({"op": "add", "path": "/metadata/labels", "value": {}})
        label_path = "/metadata/labels/" + MUTATED_LABEL.replace("/", "~1")
        patch.append({"op": "add", "path": label_path, "value": "yes"})
        body = json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": request["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
            }
        ).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test asserts on the recorded reviews instead."""


@pytest.fixture
def webhook(cluster: ClusterAccess) -> Iterator[tuple[_Webhook, trustme.CA]]:
    if not cluster.reaches_loopback:
        pytest.skip("the API server cannot reach this machine's loopback (cluster in containers)")
    ca = trustme.CA()
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    server = _Webhook(tls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, ca
    server.shutdown()
    server.server_close()
    thread.join()


def _register(
    admission: k8s.AdmissionregistrationV1Api, *, name: str, url: str, ca_pem: bytes, namespace: str
) -> None:
    admission.create_mutating_webhook_configuration(
        k8s.V1MutatingWebhookConfiguration(
            metadata=k8s.V1ObjectMeta(name=name),
            webhooks=[
                k8s.V1MutatingWebhook(
                    name="label.test.powgate.dev",
                    client_config=k8s.AdmissionregistrationV1WebhookClientConfig(
                        url=url, ca_bundle=base64.b64encode(ca_pem).decode()
                    ),
                    rules=[
                        k8s.V1RuleWithOperations(
                            api_groups=[""],
                            api_versions=["v1"],
                            operations=["CREATE"],
                            resources=["configmaps"],
                        )
                    ],
                    # Only the test's namespace: the cluster is shared by the session.
                    namespace_selector=k8s.V1LabelSelector(
                        match_labels={"kubernetes.io/metadata.name": namespace}
                    ),
                    failure_policy="Fail",
                    side_effects="None",
                    admission_review_versions=["v1"],
                    timeout_seconds=5,
                )
            ],
        )
    )


def _meta(config_map: k8s.V1ConfigMap) -> k8s.V1ObjectMeta:
    assert config_map.metadata is not None
    return config_map.metadata


def _create_configmap(core: k8s.CoreV1Api, namespace: str) -> k8s.V1ConfigMap:
    name = f"cm-{uuid.uuid4().hex[:8]}"
    return core.create_namespaced_config_map(
        namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name=name), data={"k": "v"})
    )


def _first_effect(core: k8s.CoreV1Api, namespace: str) -> k8s.V1ConfigMap | k8s.ApiException:
    """Create ConfigMaps until the webhook acts: the first labelled one or refusal.

    The API server learns of a new webhook configuration through a watch, a
    moment after it is stored; creates before that pass untouched.
    """
    deadline = time.monotonic() + _DEADLINE
    while time.monotonic() < deadline:
        try:
            created = _create_configmap(core, namespace)
        except k8s.ApiException as exc:
            return exc
        if MUTATED_LABEL in (_meta(created).labels or {}):
            return created
        time.sleep(0.2)
    pytest.fail(f"webhook configuration not in force after {_DEADLINE:.0f} s")


def test_api_server_calls_mutating_webhook(
    kube_client: k8s.ApiClient, namespace: str, webhook: tuple[_Webhook, trustme.CA]
) -> None:
    server, ca = webhook
    admission = k8s.AdmissionregistrationV1Api(kube_client)
    core = k8s.CoreV1Api(kube_client)
    name = f"test-{namespace}"
    _register(admission, name=name, url=server.url, ca_pem=ca.cert_pem.bytes(), namespace=namespace)
    try:
        created = _first_effect(core, namespace)
    finally:
        admission.delete_mutating_webhook_configuration(name)

    assert isinstance(created, k8s.V1ConfigMap), created
    name = str(_meta(created).name)
    stored = core.read_namespaced_config_map(name, namespace)
    assert _meta(stored).labels == {MUTATED_LABEL: "yes"}
    assert stored.data == {"k": "v"}
    review = next(r for r in server.reviews if r["request"]["name"] == name)
    assert review["request"]["namespace"] == namespace
    assert review["request"]["operation"] == "CREATE"
    assert review["request"]["kind"] == {"group": "", "version": "v1", "kind": "ConfigMap"}


def test_api_server_verifies_the_webhook_certificate(
    kube_client: k8s.ApiClient, namespace: str, webhook: tuple[_Webhook, trustme.CA]
) -> None:
    server, _ = webhook
    admission = k8s.AdmissionregistrationV1Api(kube_client)
    core = k8s.CoreV1Api(kube_client)
    name = f"test-{namespace}"
    # A CA that did not sign the webhook's certificate: with failurePolicy
    # Fail, every create in the namespace is refused.
    stranger = trustme.CA()
    _register(
        admission, name=name, url=server.url, ca_pem=stranger.cert_pem.bytes(), namespace=namespace
    )
    try:
        outcome = _first_effect(core, namespace)
    finally:
        admission.delete_mutating_webhook_configuration(name)
    assert isinstance(outcome, k8s.ApiException), outcome
    assert outcome.status == HTTPStatus.INTERNAL_SERVER_ERROR
    assert "x509" in str(outcome.body)
    assert server.reviews == []
