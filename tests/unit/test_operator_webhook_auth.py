"""Who may call the webhook and what a review may claim, before any handler runs."""

from __future__ import annotations

from typing import Any

import pytest

from powgate_operator import _metrics as metrics
from powgate_operator._webhook_auth import guarded

APISERVER = {
    "subject": ((("organizationName", "system"),), (("commonName", "kube-apiserver-webhook"),)),
    "subjectAltName": (("DNS", "apiserver.internal"),),
}
ADMIN = {"subject": ((("commonName", "admin"),),)}


def review(*, request_namespace: str | None = "ai", object_namespace: str | None = None) -> Any:
    meta: dict[str, Any] = {"name": "p", "labels": {"app": "llm"}}
    if object_namespace is not None:
        meta["namespace"] = object_namespace
    request: dict[str, Any] = {
        "uid": "u-7",
        "operation": "CREATE",
        "object": {"metadata": meta, "spec": {}},
        "userInfo": {"username": "someone"},
    }
    if request_namespace is not None:
        request["namespace"] = request_namespace
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


class Handler:
    """kopf's admission function, as the server would call it."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def __call__(self, request: Any, **_: Any) -> Any:
        self.seen.append(request)
        return {"response": {"uid": request["request"]["uid"], "allowed": True}}


def refused(reason: str) -> float:
    return float(metrics.ADMISSIONS_REFUSED.labels(reason)._value.get())


@pytest.mark.parametrize("peer", [None, {}, ADMIN])
async def test_a_caller_without_the_api_servers_certificate_is_refused_and_nothing_runs(
    peer: Any,
) -> None:
    handler = Handler()
    before = refused("client")
    answer = await guarded(handler, client_names=["kube-apiserver-webhook"])(review(), sslpeer=peer)
    assert answer["response"] == {
        "uid": "u-7",
        "allowed": False,
        "status": {
            "code": 403,
            "message": "powgate: the caller's certificate is not the API server's",
        },
    }
    assert handler.seen == []
    assert refused("client") == before + 1


@pytest.mark.parametrize("name", ["kube-apiserver-webhook", "apiserver.internal"])
async def test_the_api_servers_certificate_by_common_or_dns_name_is_answered(name: str) -> None:
    handler = Handler()
    answer = await guarded(handler, client_names=[name])(review(), sslpeer=APISERVER)
    assert answer["response"]["allowed"] is True
    assert len(handler.seen) == 1


async def test_without_names_every_caller_that_completed_the_handshake_is_answered() -> None:
    handler = Handler()
    await guarded(handler, client_names=())(review(), sslpeer={})
    assert len(handler.seen) == 1


@pytest.mark.parametrize("object_namespace", [None, "", "ai"])
async def test_the_object_is_judged_in_the_requests_namespace(object_namespace: str | None) -> None:
    handler = Handler()
    await guarded(handler, client_names=())(review(object_namespace=object_namespace))
    (seen,) = handler.seen
    assert seen["request"]["object"]["metadata"]["namespace"] == "ai"


@pytest.mark.parametrize(
    "forged",
    [
        # A pod claimed to be in a namespace whose policy the caller wants, posted elsewhere.
        review(request_namespace="ai", object_namespace="payments"),
        # No request namespace at all.
        review(request_namespace=None, object_namespace="ai"),
    ],
)
async def test_a_review_whose_namespaces_disagree_is_refused(forged: Any) -> None:
    handler = Handler()
    before = refused("namespace")
    answer = await guarded(handler, client_names=())(forged)
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"]["code"] == 400
    assert handler.seen == []
    assert refused("namespace") == before + 1
