"""Who may call the webhook, and what an admission review may claim.

With ``--webhook-client-ca`` the webhook's TLS listener requires a client
certificate issued by that CA (the API server presents one when its
admission-plugin kubeconfig names it; see docs/injection.md), and the
certificate must name one of ``--webhook-client-names`` (its common name or
a DNS name) when they are given. Any other caller's review is answered
``allowed: false`` with 403 before a handler sees it, and counted.

Whoever calls, a review is judged by the namespace of the *request* (the
API server sets it from the URL the pod was posted to): the object's own
``metadata.namespace`` must be absent or the same, and is set to it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Collection, Mapping
from typing import Any, cast

import kopf

from . import _metrics as metrics

__all__ = ["guarded"]

log = logging.getLogger("powgate.operator.webhook")


def guarded(fn: kopf.WebhookFn, *, client_names: Collection[str]) -> kopf.WebhookFn:
    """``fn`` behind the caller's certificate name and the request-namespace rule.

    ``client_names`` empty: any caller that completed the TLS handshake
    (which, with a client CA configured, already means a certificate of it).
    """
    allowed = frozenset(client_names)

    async def guard(
        request: Any,
        *,
        webhook: str | None = None,
        headers: dict[str, str] | None = None,
        sslpeer: dict[str, Any] | None = None,
    ) -> Any:
        if allowed and not allowed & _names(sslpeer or {}):
            return _refused(
                request, "client", 403, "the caller's certificate is not the API server's"
            )
        checked = _in_request_namespace(request)
        if checked is None:
            return _refused(
                request, "namespace", 400, "the object's namespace is not the request's"
            )
        # kopf's review types are TypedDicts of its own: the same JSON.
        return await fn(cast(Any, checked), webhook=webhook, headers=headers, sslpeer=sslpeer)

    return guard


def _names(peer: Mapping[str, Any]) -> set[str]:
    """Common names and DNS names of a peer certificate (``ssl.getpeercert()``)."""
    names = {
        value for rdn in peer.get("subject") or () for key, value in rdn if key == "commonName"
    }
    names |= {value for kind, value in peer.get("subjectAltName") or () if kind == "DNS"}
    return names


def _in_request_namespace(request: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The review with its object in the request's namespace; None when they disagree."""
    payload = request.get("request") or {}
    namespace = payload.get("namespace")
    obj = payload.get("object")
    if not isinstance(obj, Mapping):
        return request  # kopf answers a review without an object itself
    meta = obj.get("metadata") or {}
    if not isinstance(namespace, str) or not namespace:
        return None
    if meta.get("namespace") not in (None, "", namespace):
        return None
    result = copy.deepcopy(dict(request))
    result["request"]["object"].setdefault("metadata", {})["namespace"] = namespace
    return result


def _refused(request: Mapping[str, Any], reason: str, code: int, message: str) -> dict[str, Any]:
    metrics.ADMISSIONS_REFUSED.labels(reason).inc()
    log.warning("admission review refused (%s): %s", reason, message)
    return {
        "apiVersion": request.get("apiVersion", "admission.k8s.io/v1"),
        "kind": request.get("kind", "AdmissionReview"),
        "response": {
            "uid": (request.get("request") or {}).get("uid", ""),
            "allowed": False,
            "status": {"code": code, "message": f"powgate: {message}"},
        },
    }
