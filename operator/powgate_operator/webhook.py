"""The sidecar injector: a mutating admission webhook served by the operator through kopf.

:func:`install` adds to the operator's registry the Pod CREATE handler
(which reads the namespace's PowPolicies and runs :func:`._inject.plan`) and
a kopf admission server. Who owns what:

- The MutatingWebhookConfiguration belongs to whoever installed powgate: the
  Helm chart creates it (without ``caBundle``, so an upgrade never resets
  it) and the operator only patches ``caBundle`` of the named object. With
  ``--webhook-create-configuration`` (running without the chart) the
  operator creates and updates the whole object itself (kopf's own managed
  configuration cannot express the namespace selector, the short timeout or
  the failure policy this webhook needs).
- TLS: by default the operator runs its own CA, keeps it with the serving
  certificate in a Secret (every replica serves the same certificate) and
  renews both before expiry. With ``--webhook-cert-manager`` it serves the
  mounted files of ``--webhook-cert-dir`` (reloaded when they change) and
  leaves certificates and ``caBundle`` to cert-manager.

- Callers: with ``--webhook-client-ca`` only the API server (its client
  certificate) is answered; every review is judged in its request's
  namespace (:mod:`._webhook_auth`).
- Admission writes nothing: the service accounts of injected pods are
  granted read access to their config once the pods exist (the operator's
  pod events, :mod:`.handlers`), so a review, forged or dry, grants nothing.

The parts live in their own modules: the options (:mod:`._options`), the
pod rules (:mod:`._inject`), the certificates and their registration
(:mod:`._webhook_certs`, :mod:`._webhook_registration`), the HTTPS servers
and who may call them (:mod:`._webhook_servers`, :mod:`._webhook_auth`) and
the policies admissions see (:mod:`._policy_listing`); this module wires
them into kopf.

Whether an *outage* of the webhook blocks pods is the configuration's
``failurePolicy`` (default Ignore: deployments keep working and pods created
meanwhile run without the sidecar — see docs/injection.md). The handler
treats the one question it cannot answer alone the same way: when the
namespace's PowPolicies cannot be read, Fail refuses the pod (its controller
retries) and Ignore admits it unchanged. Whatever else goes wrong, the pod is
admitted (unchanged, or injected with a warning) and the reason is logged
and counted. Namespaces labelled ``required`` have a webhook of their own
(:data:`._objects.HOOKS`) whose failure policy is always Fail, and there the
handler refuses instead: a selected pod it cannot inject, and any pod it
cannot decide on.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from http import HTTPStatus
from pathlib import Path
from typing import Any

import kopf

from . import _metrics as metrics
from ._cluster import Cluster, ClusterError
from ._inject import PolicyRef, SidecarTemplate, plan, supports_native_sidecars
from ._objects import HOOKS
from ._options import WebhookOptions
from ._policy_listing import PolicyListing
from ._webhook_servers import MountedCertServer, SelfManagedServer

__all__ = ["Injector", "admit", "install", "policies_of"]

log = logging.getLogger("powgate.operator.webhook")


@dataclass(frozen=True, slots=True)
class Injector:
    """What the operator's readiness waits for once the webhook is installed."""

    #: The listener has its certificate (and the caBundle is in place).
    serving: asyncio.Event


def install(
    registry: kopf.OperatorRegistry,
    settings: kopf.OperatorSettings,
    *,
    options: WebhookOptions,
    cluster: Cluster,
    namespaces: Sequence[str] | None,
) -> Injector:
    """Register the injector's admission handler and server with the operator.

    ``namespaces`` is the operator's scope (``None``: every namespace).
    """
    policies = PolicyListing(cluster, namespaces)
    serving = asyncio.Event()
    cert_dir = options.cert_dir or Path(tempfile.mkdtemp(prefix="powgate-webhook-"))
    server: kopf.WebhookServer
    if options.cert_manager:
        server = MountedCertServer(options=options, cert_dir=cert_dir, serving=serving)
    else:
        cert_dir.mkdir(parents=True, exist_ok=True)
        server = SelfManagedServer(
            cluster=cluster, options=options, cert_dir=cert_dir, serving=serving
        )
    settings.admission.server = server
    settings.admission.managed = None  # never kopf's: see the module's docstring
    sidecar = _Holder(options.sidecar)

    @kopf.on.startup(registry=registry)
    async def detect_sidecar_form(**_: Any) -> None:
        native = options.sidecar_mode == "native"
        if options.sidecar_mode == "auto":
            native = supports_native_sidecars(*await cluster.server_version())
        sidecar.value = replace(sidecar.value, native_sidecar=native)
        log.info("injecting %s sidecars", "native" if native else "regular-container")

    async def inject(
        body: kopf.Body, patch: kopf.Patch, warnings: list[str], *, required: bool
    ) -> None:
        pod = copy.deepcopy(dict(body))
        namespace = str((pod.get("metadata") or {}).get("namespace") or "")
        found = await policies_of(
            namespace,
            listing=policies,
            failure_policy="Fail" if required else options.failure_policy,
            warnings=warnings,
        )
        if found is None:
            return
        try:
            await admit(
                pod=pod,
                policies=found,
                template=sidecar.value,
                patch=patch,
                warnings=warnings,
                required=required,
            )
        except kopf.AdmissionError:
            raise
        except Exception as exc:
            metrics.INJECTIONS.labels("Error").inc()
            patch.clear()
            if required:
                log.exception("injection failed; the pod is refused (its namespace requires it)")
                raise kopf.AdmissionError(f"powgate: injection failed: {exc}", code=500) from exc
            # Never block a pod of an `enabled` namespace because of the injector itself.
            log.exception("injection failed; the pod is admitted without the sidecar")

    def handler(*, required: bool) -> Callable[..., Awaitable[None]]:
        async def handle(
            *, body: kopf.Body, patch: kopf.Patch, warnings: list[str], **_: Any
        ) -> None:
            await inject(body, patch, warnings, required=required)

        return handle

    for hook in HOOKS:
        strict = hook.failure_policy == "Fail"
        kopf.on.mutate(
            "pods",
            id=hook.handler,
            operations=["CREATE"],
            side_effects=False,
            ignore_failures=not strict and options.failure_policy == "Ignore",
            registry=registry,
        )(handler(required=strict))

    return Injector(serving=serving)


@dataclass(slots=True)
class _Holder:
    """The sidecar template, refined once at start-up (the sidecar form)."""

    value: SidecarTemplate


async def policies_of(
    namespace: str, *, listing: PolicyListing, failure_policy: str, warnings: list[str]
) -> list[PolicyRef] | None:
    """The PowPolicies of ``namespace`` now; ``None``: unreadable, admit the pod unchanged.

    Unreadable under ``failurePolicy: Fail`` raises :class:`kopf.AdmissionError`:
    the webhook cannot decide, which is what that policy refuses (the pod's
    controller retries).
    """
    try:
        return await listing.in_namespace(namespace)
    except ClusterError as exc:
        log.error("PowPolicies of %s unreadable; pod not injected: %s", namespace, exc)
        if failure_policy == "Fail":
            raise kopf.AdmissionError(
                f"powgate: the PowPolicies of {namespace} could not be read; retry",
                code=HTTPStatus.SERVICE_UNAVAILABLE,
            ) from exc
        warnings.append("powgate: not injected: the PowPolicies could not be read")
        return None


async def admit(
    *,
    pod: dict[str, Any],
    policies: Sequence[PolicyRef],
    template: SidecarTemplate,
    patch: kopf.Patch,
    warnings: list[str],
    required: bool = False,
) -> None:
    """Decide on one pod and put the injected pod into ``patch``; nothing else is written.

    ``required`` (a namespace labelled ``required``): a pod a policy selects
    but that cannot carry the sidecar (no port to take over, the host's
    network) is refused rather than run unprotected.
    """
    namespace = str((pod.get("metadata") or {}).get("namespace") or "")
    decided = plan(pod, namespace=namespace, policies=policies, template=template)
    warnings.extend(decided.warnings)
    if decided.pod is None:
        metrics.INJECTIONS.labels(str(decided.skip)).inc()
        log.debug("pod not injected: %s (%s)", decided.skip, decided.message)
        if required and decided.policy is not None:
            raise kopf.AdmissionError(
                f"powgate: PowPolicy {decided.policy.name} selects this pod but cannot protect "
                f"it ({decided.message}); its namespace requires the sidecar",
                code=403,
            )
        return
    metrics.INJECTIONS.labels("Injected").inc()
    patch.fns.append(_replacing(decided.pod))


def _replacing(pod: dict[str, Any]) -> Callable[[Any], None]:
    """A kopf patch function: kopf diffs the result against the request into a JSON patch."""

    def apply(raw: Any) -> None:
        raw.clear()
        raw.update(copy.deepcopy(pod))

    return apply
