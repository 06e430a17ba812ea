"""The sidecar injector: a mutating admission webhook served by the operator through kopf.

:func:`install` adds to the operator's registry an index of PowPolicy
selectors, the Pod CREATE handler (which runs :func:`._inject.plan`) and a
kopf admission server. Who owns what:

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

The handler never refuses a pod: whatever goes wrong, the pod is admitted
(unchanged, or injected with a warning) and the reason is logged and
counted. Whether an *outage* of the webhook blocks pods is the
configuration's ``failurePolicy`` (default Ignore: deployments keep working
and pods created meanwhile run without the sidecar — see docs/injection.md).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import logging
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import kopf
from kubernetes import client as k8s
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from powgate.policy import GROUP, PLURAL, VERSION, LabelSelector

from ._inject import (
    NAMESPACE_LABEL,
    NAMESPACE_LABEL_VALUE,
    OPT_OUT_LABEL,
    InjectionSettings,
    PolicyRef,
    plan,
    role_binding_body,
    role_body,
    role_name,
    supports_native_sidecars,
)
from ._objects import MANAGED_BY
from ._reconcile import _raw
from ._webhook_certs import SERVING_LIFETIME, WebhookTLS, not_after, renewed

__all__ = [
    "HANDLER_ID",
    "WEBHOOK_NAME",
    "Injector",
    "WebhookOptions",
    "install",
    "webhook_configuration_body",
]

log = logging.getLogger("powgate.operator.webhook")

#: kopf routes ``<server>/<handler id>`` to the handler: the path in the client config.
HANDLER_ID: Final = "inject"
WEBHOOK_NAME: Final = "inject.powgate.dev"
#: How often the certificates are checked; renewal starts weeks before expiry.
_RENEW_CHECK_SECONDS: Final = 3600.0
#: After a failed certificate or configuration step (e.g. RBAC not there yet).
_RETRY_SECONDS: Final = 10.0
#: kopf restarts its server when the certificate files change; this is how often it looks.
_FILE_CHECK_SECONDS: Final = 10.0
#: Until kopf's index holds every listed policy, admissions use a listing this fresh.
_RELIST_SECONDS: Final = 5.0
_CONFLICT_RETRIES: Final = 5
#: kopf passes an index to handlers under its function's name.
_INDEX: Final = "powgate_policy_selectors"

INJECTIONS: Final = Counter(
    "powgate_operator_injections_total",
    "Pod admissions seen by the injector, by result (Injected, a skip reason, or Error).",
    ["result"],
)
RBAC_ERRORS: Final = Counter(
    "powgate_operator_injection_rbac_errors_total",
    "Failures to grant an injected pod's service account read access to its config.",
)
TLS_ERRORS: Final = Counter(
    "powgate_operator_webhook_tls_errors_total",
    "Failed steps of keeping the webhook's certificate and caBundle current, by step.",
    ["step"],
)
POLICY_LISTING_ERRORS: Final = Counter(
    "powgate_operator_webhook_policy_listing_errors_total",
    "Failed listings of PowPolicies while the webhook's index is not yet complete.",
)
CERT_EXPIRY: Final = Gauge(
    "powgate_operator_webhook_certificate_expiry_timestamp_seconds",
    "When the webhook's serving certificate expires (unix time).",
)


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    """How the webhook is served and registered."""

    listen: tuple[str, int]
    configuration: str
    operator_namespace: str
    injection: InjectionSettings
    #: Exactly one of ``url`` (the API server calls it directly) and ``service``.
    url: str | None = None
    service: tuple[str, str, int] | None = None
    #: Create and update the whole configuration; otherwise only patch its ``caBundle``.
    create_configuration: bool = False
    #: Only used when the operator creates the configuration (the chart sets its own).
    failure_policy: str = "Ignore"
    timeout_seconds: int = 5
    #: Where the serving certificate files are: written by the operator, or mounted.
    cert_dir: Path | None = None
    #: The Secret holding the self-managed CA and serving certificate.
    cert_secret: str | None = None
    #: cert-manager (or anyone else) provides the files in ``cert_dir`` and the caBundle.
    cert_manager: bool = False
    cert_lifetime: dt.timedelta = SERVING_LIFETIME
    #: "auto" asks the API server's version; "native" or "container" force the form.
    sidecar_mode: str = "auto"

    @property
    def tls_secret(self) -> str:
        return self.cert_secret or f"{self.configuration}-tls"

    def hosts(self) -> list[str]:
        """The names the serving certificate must carry."""
        if self.url is not None:
            host = urlsplit(self.url).hostname
            if not host:
                raise ValueError(f"--webhook-url {self.url!r} has no host")
            return [host]
        assert self.service is not None
        namespace, name, _ = self.service
        return [f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]


def webhook_configuration_body(options: WebhookOptions, *, ca_bundle: bytes) -> dict[str, Any]:
    """The MutatingWebhookConfiguration: Pod CREATE in opted-in namespaces, opt-out by label."""
    client: dict[str, Any] = {"caBundle": base64.b64encode(ca_bundle).decode()}
    if options.url is not None:
        client["url"] = f"{options.url.rstrip('/')}/{HANDLER_ID}"
    else:
        assert options.service is not None
        namespace, name, port = options.service
        client["service"] = {
            "namespace": namespace,
            "name": name,
            "port": port,
            "path": f"/{HANDLER_ID}",
        }
    excluded = sorted(options.injection.excluded_namespaces)
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": options.configuration,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY},
        },
        "webhooks": [
            {
                "name": WEBHOOK_NAME,
                "clientConfig": client,
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {
                    "matchLabels": {NAMESPACE_LABEL: NAMESPACE_LABEL_VALUE},
                    # Belt and braces: these are never injected even if labelled.
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "NotIn",
                            "values": excluded,
                        }
                    ],
                },
                "objectSelector": {
                    "matchExpressions": [
                        {"key": OPT_OUT_LABEL, "operator": "NotIn", "values": ["false"]}
                    ]
                },
                "failurePolicy": options.failure_policy,
                "timeoutSeconds": options.timeout_seconds,
                # The handler writes RBAC objects, except on dry runs.
                "sideEffects": "NoneOnDryRun",
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": "Never",
                "admissionReviewVersions": ["v1"],
            }
        ],
    }


# -- the API server side: RBAC, certificates, configuration ----------------------


class _Cluster:
    """The webhook's writes through the official client (run in worker threads)."""

    def __init__(self, api: k8s.ApiClient, options: WebhookOptions) -> None:
        self._core = k8s.CoreV1Api(api)
        self._rbac = k8s.RbacAuthorizationV1Api(api)
        self._admission = k8s.AdmissionregistrationV1Api(api)
        self._version = k8s.VersionApi(api)
        self._custom = k8s.CustomObjectsApi(api)
        self._options = options
        #: (policy uid, service account) pairs already granted: admission stays one lookup.
        self._granted: set[tuple[str, str]] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    async def native_sidecars(self) -> bool:
        info = await asyncio.to_thread(self._version.get_code)
        return supports_native_sidecars(str(info.major), str(info.minor))

    async def grant(self, policy: PolicyRef, account: str) -> None:
        """Let ``account`` read the policy's ConfigMap and key Secret (Role + RoleBinding)."""
        if (policy.uid, account) in self._granted:
            return
        async with self._locks.setdefault(policy.uid, asyncio.Lock()):
            await asyncio.to_thread(self._grant, policy, account)
        self._granted.add((policy.uid, account))

    def _grant(self, policy: PolicyRef, account: str) -> None:
        name, namespace = role_name(policy.name), policy.namespace
        try:
            self._rbac.create_namespaced_role(namespace, _raw(role_body(policy)))
        except k8s.ApiException as exc:
            if exc.status != HTTPStatus.CONFLICT:
                raise
            self._rbac.replace_namespaced_role(name, namespace, _raw(role_body(policy)))
        # Another replica may add a subject at the same time: replace with the
        # resourceVersion read, and retry on conflict, so no subject is lost.
        for _ in range(_CONFLICT_RETRIES):
            try:
                current = self._rbac.read_namespaced_role_binding(name, namespace)
            except k8s.ApiException as exc:
                if exc.status != HTTPStatus.NOT_FOUND:
                    raise
                try:
                    self._rbac.create_namespaced_role_binding(
                        namespace, _raw(role_binding_body(policy, [account]))
                    )
                except k8s.ApiException as exc:
                    if exc.status == HTTPStatus.CONFLICT:
                        continue
                    raise
                return
            accounts = {s.name for s in current.subjects or [] if s.kind == "ServiceAccount"}
            if account in accounts:
                return
            body = role_binding_body(policy, {*accounts, account})
            body["metadata"]["resourceVersion"] = _resource_version(current)
            try:
                self._rbac.replace_namespaced_role_binding(name, namespace, _raw(body))
            except k8s.ApiException as exc:
                if exc.status == HTTPStatus.CONFLICT:
                    continue
                raise
            return
        raise RuntimeError(f"RoleBinding {namespace}/{name} kept changing; gave up")

    def sync_tls(self, now: dt.datetime, lifetime: dt.timedelta) -> WebhookTLS:
        """The certificates from the Secret, renewed and stored when due (first writer wins)."""
        name, namespace = self._options.tls_secret, self._options.operator_namespace
        for _ in range(_CONFLICT_RETRIES):
            try:
                secret = self._core.read_namespaced_secret(name, namespace)
            except k8s.ApiException as exc:
                if exc.status != HTTPStatus.NOT_FOUND:
                    raise
                secret = None
            current: WebhookTLS | None = None
            if secret is not None:
                try:
                    current = WebhookTLS.from_secret_data(
                        {k: str(v) for k, v in (secret.data or {}).items()}
                    )
                except ValueError as exc:
                    # A damaged Secret is replaced: the webhook cannot serve without it.
                    log.warning("%s; issuing new certificates", exc)
            wanted = renewed(current, hosts=self._options.hosts(), now=now, lifetime=lifetime)
            if wanted == current:
                return wanted
            body: dict[str, Any] = {
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
            try:
                if secret is None:
                    self._core.create_namespaced_secret(namespace, _raw(body))
                else:
                    body["metadata"]["resourceVersion"] = _resource_version(secret)
                    self._core.replace_namespaced_secret(name, namespace, _raw(body))
            except k8s.ApiException as exc:
                if exc.status == HTTPStatus.CONFLICT:
                    continue  # another replica renewed first: use its certificates
                raise
            log.info("webhook certificates issued", extra={"expires": str(not_after(wanted.cert))})
            return wanted
        raise RuntimeError(f"Secret {namespace}/{name} kept changing; gave up")

    def register(self, ca_bundle: bytes) -> None:
        """Put the CA bundle into the MutatingWebhookConfiguration (or write all of it)."""
        if not self._options.create_configuration:
            self._patch_ca_bundle(ca_bundle)
            return
        body = webhook_configuration_body(self._options, ca_bundle=ca_bundle)
        name = self._options.configuration
        try:
            current = self._admission.read_mutating_webhook_configuration(name)
        except k8s.ApiException as exc:
            if exc.status != HTTPStatus.NOT_FOUND:
                raise
            self._admission.create_mutating_webhook_configuration(_raw(body))
            return
        body["metadata"]["resourceVersion"] = _resource_version(current)
        self._admission.replace_mutating_webhook_configuration(name, _raw(body))

    def _patch_ca_bundle(self, ca_bundle: bytes) -> None:
        """Set ``caBundle`` of each webhook of the named configuration, and nothing else.

        The installer (the chart) owns every other field. Each change is guarded
        by a ``test`` of the webhook's name, so a concurrent edit that reorders
        the webhooks makes the patch fail instead of landing on the wrong one.
        """
        name = self._options.configuration
        try:
            current = self._admission.read_mutating_webhook_configuration(name)
        except k8s.ApiException as exc:
            if exc.status == HTTPStatus.NOT_FOUND:
                raise RuntimeError(
                    f"MutatingWebhookConfiguration {name} does not exist: install it with the "
                    "chart, or let the operator create it (--webhook-create-configuration)"
                ) from exc
            raise
        encoded = base64.b64encode(ca_bundle).decode()
        operations: list[dict[str, str]] = []
        for index, hook in enumerate(current.webhooks or []):
            if hook.client_config.ca_bundle == encoded:
                continue
            operations += [
                {"op": "test", "path": f"/webhooks/{index}/name", "value": hook.name},
                {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": encoded},
            ]
        if operations:
            self._admission.patch_mutating_webhook_configuration(name, operations)
            log.info("caBundle of MutatingWebhookConfiguration %s updated", name)

    def list_policies(self, namespaces: Sequence[str] | None) -> list[PolicyRef]:
        """Every PowPolicy in scope (``None``: all namespaces), read directly from the API."""
        if namespaces is None:
            listings = [self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)]
        else:
            listings = [
                self._custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
                for namespace in namespaces
            ]
        items = [
            item for listing in listings if isinstance(listing, dict) for item in listing["items"]
        ]
        refs = []
        for item in items:
            meta = item.get("metadata") or {}
            ref = _policy_ref(
                namespace=meta.get("namespace"),
                name=meta.get("name"),
                uid=meta.get("uid"),
                spec=item.get("spec") or {},
            )
            if ref is not None:
                refs.append(ref)
        return refs


def _policy_ref(
    *, namespace: str | None, name: str | None, uid: str | None, spec: Any
) -> PolicyRef | None:
    """What injection needs of a policy; ``None`` when its selector is unusable."""
    if namespace is None or name is None or uid is None:
        return None
    try:
        selector = LabelSelector.model_validate(spec.get("selector"))
    except ValidationError as exc:
        # The CRD rejects such selectors; an invalid one selects nothing.
        log.warning("PowPolicy %s/%s: unusable selector: %s", namespace, name, exc)
        return None
    return PolicyRef(namespace=namespace, name=name, uid=uid, selector=selector)


def _resource_version(obj: Any) -> str:
    """The resourceVersion of an object read with the official client."""
    return str(obj.metadata.resource_version)


class _SelfManagedServer(kopf.WebhookServer):
    """kopf's HTTPS server, fed with certificates this operator issues and renews.

    kopf reloads the certificate files when they change; the CA bundle goes
    into the webhook configuration before a certificate from a new CA is served.
    """

    def __init__(
        self, *, cluster: _Cluster, options: WebhookOptions, cert_dir: Path, serving: asyncio.Event
    ) -> None:
        host, port = options.listen
        super().__init__(
            addr=host,
            port=port,
            certfile=cert_dir / "tls.crt",
            pkeyfile=cert_dir / "tls.key",
            cafile=cert_dir / "ca.crt",
            file_check_interval=_FILE_CHECK_SECONDS,
        )
        self._cluster = cluster
        self._options = options
        self._cert_dir = cert_dir
        self._serving = serving

    async def _refresh(self) -> None:
        try:
            tls = await asyncio.to_thread(
                self._cluster.sync_tls, dt.datetime.now(dt.UTC), self._options.cert_lifetime
            )
        except Exception:
            TLS_ERRORS.labels("secret").inc()
            raise
        try:
            # Trust first, serve second: the bundle holds the new CA before the files change.
            await asyncio.to_thread(self._cluster.register, tls.ca_bundle)
        except Exception:
            TLS_ERRORS.labels("configuration").inc()
            raise
        _write_private(self._cert_dir / "ca.crt", tls.ca_bundle)
        _write_private(self._cert_dir / "tls.key", tls.key)
        _write_private(self._cert_dir / "tls.crt", tls.cert)
        CERT_EXPIRY.set(not_after(tls.cert).timestamp())

    async def _refresh_forever(self) -> None:
        delay = 0.0
        while True:
            await asyncio.sleep(delay)
            try:
                await self._refresh()
            except Exception:
                # Before the first success nothing is served (the pod stays unready); after
                # it, the current certificate is valid for weeks yet. Either way: retry soon.
                log.exception("webhook certificate or caBundle update failed")
                delay = _RETRY_SECONDS
                continue
            self._serving.set()
            delay = _RENEW_CHECK_SECONDS

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        refresher = asyncio.create_task(self._refresh_forever())
        try:
            await self._serving.wait()
            async for client_config in super().__call__(fn):
                yield client_config
        finally:
            refresher.cancel()


class _MountedCertServer(kopf.WebhookServer):
    """kopf's HTTPS server on mounted certificate files (cert-manager's Secret).

    kopf restarts the listener when the files change, which is how a renewed
    certificate is picked up; the caBundle is cert-manager's CA injector's job.
    """

    def __init__(self, *, options: WebhookOptions, cert_dir: Path, serving: asyncio.Event) -> None:
        host, port = options.listen
        super().__init__(
            addr=host,
            port=port,
            certfile=cert_dir / "tls.crt",
            pkeyfile=cert_dir / "tls.key",
            file_check_interval=_FILE_CHECK_SECONDS,
        )
        self._cert_dir = cert_dir
        self._serving = serving

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        # The Secret volume may be empty until cert-manager has issued the certificate.
        while not all((self._cert_dir / f).is_file() for f in ("tls.crt", "tls.key")):
            TLS_ERRORS.labels("mounted-files").inc()
            log.warning("waiting for tls.crt and tls.key in %s", self._cert_dir)
            await asyncio.sleep(_RETRY_SECONDS)
        CERT_EXPIRY.set(not_after((self._cert_dir / "tls.crt").read_bytes()).timestamp())
        self._serving.set()
        async for client_config in super().__call__(fn):
            yield client_config


def _write_private(path: Path, data: bytes) -> None:
    # Write then rename: kopf never reads a half-written file.
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_bytes(data)
    tmp.replace(path)


# -- kopf wiring ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Injector:
    """What the operator's readiness waits for once the webhook is installed."""

    #: The listener has its certificate (and the caBundle is in place).
    serving: asyncio.Event
    #: Admissions know every policy: a first full listing has arrived.
    listed: asyncio.Event
    #: Keeps the listing current; the caller runs it for the operator's lifetime.
    follow: Callable[[], Coroutine[Any, Any, None]]


class _Policies:
    """The policies admissions see: kopf's index, merged with a periodic direct listing.

    kopf fills its index from a watch that starts only after start-up and is
    paused on standby replicas (peering), yet every replica behind the webhook
    Service answers admissions. The listing covers both gaps: a pod created in
    the first moments, or handled by a standby, still finds its policy. The
    index wins for a policy both know (it is fresher); a deleted policy may
    linger in the listing for one interval.
    """

    def __init__(self, cluster: _Cluster, namespaces: Sequence[str] | None) -> None:
        self._cluster = cluster
        self._namespaces = None if namespaces is None else tuple(namespaces)
        self._listing: dict[str, list[PolicyRef]] = {}
        self.listed = asyncio.Event()

    def in_namespace(self, namespace: str, index: kopf.Index[str, PolicyRef]) -> list[PolicyRef]:
        indexed = list(index.get(namespace, []))
        known = {p.name for p in indexed}
        return indexed + [p for p in self._listing.get(namespace, []) if p.name not in known]

    async def follow(self) -> None:
        while True:
            try:
                refs = await asyncio.to_thread(self._cluster.list_policies, self._namespaces)
            except Exception as exc:
                POLICY_LISTING_ERRORS.inc()
                log.warning("listing PowPolicies failed (retrying): %s", exc)
            else:
                grouped: dict[str, list[PolicyRef]] = {}
                for ref in refs:
                    grouped.setdefault(ref.namespace, []).append(ref)
                self._listing = grouped
                self.listed.set()
            await asyncio.sleep(_RELIST_SECONDS)


def install(
    registry: kopf.OperatorRegistry,
    settings: kopf.OperatorSettings,
    *,
    options: WebhookOptions,
    api: k8s.ApiClient,
    namespaces: Sequence[str] | None,
) -> Injector:
    """Register the injector's index, admission handler and server with the operator.

    ``namespaces`` is the operator's scope (``None``: every namespace).
    """
    cluster = _Cluster(api, options)
    policies = _Policies(cluster, namespaces)
    serving = asyncio.Event()
    cert_dir = options.cert_dir or Path(tempfile.mkdtemp(prefix="powgate-webhook-"))
    server: kopf.WebhookServer
    if options.cert_manager:
        server = _MountedCertServer(options=options, cert_dir=cert_dir, serving=serving)
    else:
        cert_dir.mkdir(parents=True, exist_ok=True)
        server = _SelfManagedServer(
            cluster=cluster, options=options, cert_dir=cert_dir, serving=serving
        )
    settings.admission.server = server
    settings.admission.managed = None  # never kopf's: see the module's docstring
    injection = _Holder(options.injection)

    @kopf.on.startup(registry=registry)
    async def detect_sidecar_form(**_: Any) -> None:
        native = options.sidecar_mode == "native"
        if options.sidecar_mode == "auto":
            native = await cluster.native_sidecars()
        injection.value = replace(injection.value, native_sidecar=native)
        log.info("injecting %s sidecars", "native" if native else "regular-container")

    @kopf.index(GROUP, VERSION, PLURAL, id=_INDEX, registry=registry)
    def policy_selectors(
        *, namespace: str | None, name: str | None, uid: str | None, spec: kopf.Spec, **_: Any
    ) -> dict[str, PolicyRef]:
        ref = _policy_ref(namespace=namespace, name=name, uid=uid, spec=spec)
        return {} if ref is None else {ref.namespace: ref}

    @kopf.on.mutate(
        "pods",
        id=HANDLER_ID,
        operations=["CREATE"],
        side_effects=True,
        ignore_failures=options.failure_policy == "Ignore",
        registry=registry,
    )
    async def inject(
        *,
        body: kopf.Body,
        patch: kopf.Patch,
        warnings: list[str],
        dryrun: bool,
        **kwargs: Any,
    ) -> None:
        pod = copy.deepcopy(dict(body))
        namespace = str((pod.get("metadata") or {}).get("namespace") or "")
        try:
            await _admit(
                pod=pod,
                policies=policies.in_namespace(namespace, kwargs[_INDEX]),
                settings=injection.value,
                cluster=cluster,
                dryrun=dryrun,
                patch=patch,
                warnings=warnings,
            )
        except Exception:
            # Never refuse a pod because of the injector itself: admit it unchanged.
            INJECTIONS.labels("Error").inc()
            log.exception("injection failed; the pod is admitted without the sidecar")
            patch.clear()

    return Injector(serving=serving, listed=policies.listed, follow=policies.follow)


@dataclass(slots=True)
class _Holder:
    """The injection settings, refined once at start-up (the sidecar form)."""

    value: InjectionSettings


async def _admit(
    *,
    pod: dict[str, Any],
    policies: Sequence[PolicyRef],
    settings: InjectionSettings,
    cluster: _Cluster,
    dryrun: bool,
    patch: kopf.Patch,
    warnings: list[str],
) -> None:
    namespace = str((pod.get("metadata") or {}).get("namespace") or "")
    outcome = plan(pod, namespace=namespace, policies=policies, settings=settings)
    warnings.extend(outcome.warnings)
    if outcome.pod is None:
        INJECTIONS.labels(str(outcome.skip)).inc()
        log.debug("pod not injected: %s (%s)", outcome.skip, outcome.message)
        return
    assert outcome.policy is not None
    if not dryrun:
        try:
            await cluster.grant(outcome.policy, outcome.service_account)
        except (k8s.ApiException, RuntimeError, OSError) as exc:
            # Inject anyway: the sidecar retries until the RoleBinding exists, and a
            # pod without its sidecar would run unprotected.
            RBAC_ERRORS.inc()
            log.error("could not grant %s access to its config: %s", outcome.service_account, exc)
            warnings.append("powgate: the sidecar may wait for read access to its config")
    INJECTIONS.labels("Injected").inc()
    patch.fns.append(_replacing(outcome.pod))


def _replacing(pod: dict[str, Any]) -> Callable[[Any], None]:
    """A kopf patch function: kopf diffs the result against the request into a JSON patch."""

    def apply(raw: Any) -> None:
        raw.clear()
        raw.update(copy.deepcopy(pod))

    return apply
