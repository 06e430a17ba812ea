"""Keeping the webhook registered: its certificates in a Secret, its CA in the configuration.

Every replica serves the same certificate, kept in one Secret (first writer
wins: a replica that loses the race uses the winner's certificates), owned
by the webhook configuration so that uninstalling the webhook removes it
too (the installer never created it, so it would not delete it), and the
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
    owners = await _configuration_owner(cluster, options.configuration)
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
        stored_owners = ((secret or {}).get("metadata") or {}).get("ownerReferences") or []
        if wanted == current and (stored_owners == owners or not owners):
            return None
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": MANAGED_BY},
                "ownerReferences": owners or stored_owners,
            },
            "data": wanted.to_secret_data(),
        }

    await update(cluster, SECRETS, name, namespace=namespace, change=renew)
    tls, issued = decided[-1]
    if issued:
        log.info("webhook certificates issued", extra={"expires": str(not_after(tls.cert))})
    return tls


async def _configuration_owner(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    """The webhook configuration as an owner reference; none while it does not exist.

    A namespaced object may be owned by a cluster-scoped one: when the
    configuration is deleted, the garbage collector deletes the Secret.
    """
    try:
        configuration = await cluster.get(MUTATING_WEBHOOK_CONFIGURATIONS, name, namespace=None)
    except NotFoundError:
        return []
    meta = configuration["metadata"]
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "name": meta["name"],
            "uid": meta["uid"],
        }
    ]


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
