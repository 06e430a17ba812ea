"""Keeping the webhook registered: its certificates in a Secret, its CA in the configuration.

Every replica serves the same certificate, kept in one Secret (first writer
wins: a replica that loses the race uses the winner's certificates), and the
CA bundle goes into the MutatingWebhookConfiguration before a certificate of
a new CA is served. The certificates themselves are :mod:`._webhook_certs`'.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from typing import Any

from ._cluster import (
    MUTATING_WEBHOOK_CONFIGURATIONS,
    SECRETS,
    Cluster,
    Manifest,
    NotFoundError,
    PatchType,
    create_or_replace,
    update,
)
from ._objects import MANAGED_BY
from ._options import WebhookOptions
from ._webhook_certs import WebhookTLS, not_after, renewed

__all__ = ["register", "sync_tls"]

log = logging.getLogger("powgate.operator.webhook")


async def sync_tls(
    cluster: Cluster, options: WebhookOptions, *, now: dt.datetime, lifetime: dt.timedelta
) -> WebhookTLS:
    """The certificates from the Secret, renewed and stored when due (first writer wins)."""
    name, namespace = options.tls_secret, options.operator_namespace
    #: What the last look at the stored Secret decided, and whether that meant a write.
    decided: list[tuple[WebhookTLS, bool]] = []

    def renew(secret: Manifest | None) -> Manifest | None:
        current: WebhookTLS | None = None
        if secret is not None:
            try:
                current = WebhookTLS.from_secret_data(
                    {k: str(v) for k, v in (secret.get("data") or {}).items()}
                )
            except ValueError as exc:
                # A damaged Secret is replaced: the webhook cannot serve without it.
                log.warning("%s; issuing new certificates", exc)
        wanted = renewed(current, hosts=options.hosts(), now=now, lifetime=lifetime)
        decided.append((wanted, wanted != current))
        if wanted == current:
            return None
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": MANAGED_BY},
            },
            "data": wanted.to_secret_data(),
        }

    await update(cluster, SECRETS, name, namespace=namespace, change=renew)
    tls, issued = decided[-1]
    if issued:
        log.info("webhook certificates issued", extra={"expires": str(not_after(tls.cert))})
    return tls


async def register(cluster: Cluster, options: WebhookOptions, *, ca_bundle: bytes) -> None:
    """Put the CA bundle into the MutatingWebhookConfiguration (or write all of it)."""
    if options.create_configuration:
        await create_or_replace(
            cluster,
            MUTATING_WEBHOOK_CONFIGURATIONS,
            options.configuration_body(ca_bundle=ca_bundle),
        )
        return
    await _patch_ca_bundle(cluster, options.configuration, ca_bundle)


async def _patch_ca_bundle(cluster: Cluster, name: str, ca_bundle: bytes) -> None:
    """Set ``caBundle`` of each webhook of the named configuration, and nothing else.

    The installer (the chart) owns every other field. Each change is guarded
    by a ``test`` of the webhook's name, so a concurrent edit that reorders
    the webhooks makes the patch fail instead of landing on the wrong one.
    """
    try:
        current = await cluster.get(MUTATING_WEBHOOK_CONFIGURATIONS, name, namespace=None)
    except NotFoundError as exc:
        raise NotFoundError(
            f"MutatingWebhookConfiguration {name} does not exist: install it with the "
            "chart, or let the operator create it (--webhook-create-configuration)",
            status=exc.status,
        ) from exc
    encoded = base64.b64encode(ca_bundle).decode()
    operations: list[dict[str, Any]] = []
    for index, hook in enumerate(current.get("webhooks") or []):
        if (hook.get("clientConfig") or {}).get("caBundle") == encoded:
            continue
        operations += [
            {"op": "test", "path": f"/webhooks/{index}/name", "value": hook["name"]},
            {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": encoded},
        ]
    if operations:
        await cluster.patch(
            MUTATING_WEBHOOK_CONFIGURATIONS,
            name,
            operations,
            namespace=None,
            patch_type=PatchType.JSON,
        )
        log.info("caBundle of MutatingWebhookConfiguration %s updated", name)
