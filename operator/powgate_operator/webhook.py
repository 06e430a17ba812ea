"""The sidecar injector: a mutating admission webhook served by the operator through kopf.

:func:`install` adds to the operator's registry an index of PowPolicy
selectors, the Pod CREATE handler (which runs :func:`._inject.plan`) and a
kopf admission server that manages its own TLS: a CA and serving certificate
kept in a Secret, renewed before expiry, with the CA bundle written into the
MutatingWebhookConfiguration the operator also owns (kopf's own managed
configuration cannot express the namespace selector, the short timeout or
the failure policy this webhook needs).

The handler never refuses a pod: whatever goes wrong, the pod is admitted
(unchanged, or injected with a warning) and the reason is logged and
counted. Whether an *outage* of the webhook blocks pods is the
configuration's ``failurePolicy`` (default Ignore: deployments keep working
and pods created meanwhile run without the sidecar — see docs/injection.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import datetime as dt
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Callable
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
from ._webhook_certs import WebhookTLS, not_after, renewed

__all__ = [
    "HANDLER_ID",
    "WebhookOptions",
    "add_arguments",
    "install",
    "options_from_args",
    "webhook_configuration_body",
]

log = logging.getLogger("powgate.operator.webhook")

#: kopf routes ``<server>/<handler id>`` to the handler: the path in the client config.
HANDLER_ID: Final = "inject"
_WEBHOOK_NAME: Final = "inject.powgate.dev"
_SA_NAMESPACE_FILE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: How often the certificates are checked; renewal starts weeks before expiry.
_RENEW_CHECK_SECONDS: Final = 3600.0
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
    failure_policy: str = "Ignore"
    timeout_seconds: int = 5
    cert_dir: Path | None = None
    #: "auto" asks the API server's version; "native" or "container" force the form.
    sidecar_mode: str = "auto"

    @property
    def tls_secret(self) -> str:
        return f"{self.configuration}-tls"

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
                "name": _WEBHOOK_NAME,
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

    def sync_tls(self, now: dt.datetime) -> WebhookTLS:
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
            wanted = renewed(current, hosts=self._options.hosts(), now=now)
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
        """Create or update the MutatingWebhookConfiguration (with the current CA bundle)."""
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


def _resource_version(obj: Any) -> str:
    """The resourceVersion of an object read with the official client."""
    return str(obj.metadata.resource_version)


class _InjectorServer(kopf.WebhookServer):
    """kopf's HTTPS server, fed with certificates this operator issues and renews.

    kopf reloads the certificate files when they change; the CA bundle goes
    into the webhook configuration before a certificate from a new CA is served.
    """

    def __init__(self, *, cluster: _Cluster, options: WebhookOptions, cert_dir: Path) -> None:
        host, port = options.listen
        super().__init__(
            addr=host,
            port=port,
            certfile=cert_dir / "tls.crt",
            pkeyfile=cert_dir / "tls.key",
            cafile=cert_dir / "ca.crt",
            file_check_interval=10.0,
        )
        self._cluster = cluster
        self._cert_dir = cert_dir

    async def _refresh(self) -> None:
        tls = await asyncio.to_thread(self._cluster.sync_tls, dt.datetime.now(dt.UTC))
        # Trust first, serve second: the bundle holds the new CA before the files change.
        await asyncio.to_thread(self._cluster.register, tls.ca_bundle)
        _write_private(self._cert_dir / "ca.crt", tls.ca_bundle)
        _write_private(self._cert_dir / "tls.key", tls.key)
        _write_private(self._cert_dir / "tls.crt", tls.cert)
        CERT_EXPIRY.set(not_after(tls.cert).timestamp())

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(_RENEW_CHECK_SECONDS)
            try:
                await self._refresh()
            except Exception:
                # The current certificate is valid for weeks yet: retry on the next check.
                log.exception("webhook certificate renewal failed")

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        await self._refresh()
        renewal = asyncio.create_task(self._renew_forever())
        try:
            async for client_config in super().__call__(fn):
                yield client_config
        finally:
            renewal.cancel()


def _write_private(path: Path, data: bytes) -> None:
    # Write then rename: kopf never reads a half-written file.
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_bytes(data)
    tmp.replace(path)


# -- kopf wiring ------------------------------------------------------------------


def install(
    registry: kopf.OperatorRegistry,
    settings: kopf.OperatorSettings,
    *,
    options: WebhookOptions,
    api: k8s.ApiClient,
) -> None:
    """Register the injector's index, admission handler and server with the operator."""
    cluster = _Cluster(api, options)
    cert_dir = options.cert_dir or Path(tempfile.mkdtemp(prefix="powgate-webhook-"))
    cert_dir.mkdir(parents=True, exist_ok=True)
    settings.admission.server = _InjectorServer(cluster=cluster, options=options, cert_dir=cert_dir)
    settings.admission.managed = None  # the configuration is ours: see webhook_configuration_body
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
        try:
            selector = LabelSelector.model_validate(spec.get("selector"))
        except ValidationError as exc:
            # The CRD rejects such selectors; an invalid one selects nothing.
            log.warning("PowPolicy %s/%s: unusable selector: %s", namespace, name, exc)
            return {}
        if namespace is None or name is None or uid is None:
            return {}
        return {namespace: PolicyRef(namespace=namespace, name=name, uid=uid, selector=selector)}

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
        try:
            await _admit(
                pod=copy.deepcopy(dict(body)),
                index=kwargs[_INDEX],
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


@dataclass(slots=True)
class _Holder:
    """The injection settings, refined once at start-up (the sidecar form)."""

    value: InjectionSettings


async def _admit(
    *,
    pod: dict[str, Any],
    index: kopf.Index[str, PolicyRef],
    settings: InjectionSettings,
    cluster: _Cluster,
    dryrun: bool,
    patch: kopf.Patch,
    warnings: list[str],
) -> None:
    namespace = str((pod.get("metadata") or {}).get("namespace") or "")
    outcome = plan(pod, namespace=namespace, policies=index.get(namespace, []), settings=settings)
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


# -- command line ------------------------------------------------------------------


def _operator_namespace() -> str:
    if namespace := os.environ.get("POD_NAMESPACE"):
        return namespace
    try:
        return _SA_NAMESPACE_FILE.read_text().strip()
    except OSError:
        return "powgate-system"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The injector's flags on ``powgate operator`` (off unless ``--webhook-listen`` is given)."""
    group = parser.add_argument_group("sidecar injection (mutating webhook)")
    group.add_argument(
        "--webhook-listen",
        metavar="HOST:PORT",
        help="serve the injection webhook here (in a pod, 0.0.0.0:9443); off when absent",
    )
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--webhook-service",
        metavar="NAMESPACE/NAME[:PORT]",
        help="the Service in front of the operator that the API server calls (port 443)",
    )
    where.add_argument(
        "--webhook-url",
        metavar="URL",
        help="call the webhook at this https URL instead (an operator outside the cluster)",
    )
    group.add_argument(
        "--webhook-configuration",
        default="powgate-sidecar-injector",
        metavar="NAME",
        help="the MutatingWebhookConfiguration the operator owns",
    )
    group.add_argument("--webhook-failure-policy", choices=["Ignore", "Fail"], default="Ignore")
    group.add_argument(
        "--webhook-timeout", type=int, default=5, metavar="SECONDS", help="1 to 30 (default 5)"
    )
    group.add_argument("--webhook-cert-dir", type=Path, metavar="DIR")
    group.add_argument(
        "--operator-namespace",
        default=None,
        metavar="NS",
        help="never injected (default: $POD_NAMESPACE or the service account's namespace)",
    )
    group.add_argument("--sidecar-image", default="powgate/sidecar:0.1.0", metavar="IMAGE")
    group.add_argument("--sidecar-mode", choices=["auto", "native", "container"], default="auto")
    group.add_argument(
        "--sidecar-port-name",
        default="http",
        metavar="NAME",
        help="the app port the sidecar takes over (per pod: annotation powgate.dev/port)",
    )


def options_from_args(args: argparse.Namespace) -> WebhookOptions | None:
    """The options, or None when the webhook is off; ``ValueError`` names the bad flag."""
    if args.webhook_listen is None:
        return None
    host, sep, port = str(args.webhook_listen).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--webhook-listen {args.webhook_listen!r} is not HOST:PORT")
    if not 1 <= args.webhook_timeout <= 30:
        raise ValueError("--webhook-timeout must be between 1 and 30 seconds")
    service: tuple[str, str, int] | None = None
    if args.webhook_service:
        ref, _, service_port = str(args.webhook_service).partition(":")
        namespace, slash, name = ref.partition("/")
        if not slash or not namespace or not name or (service_port and not service_port.isdigit()):
            raise ValueError(f"--webhook-service {args.webhook_service!r} is not NS/NAME[:PORT]")
        service = (namespace, name, int(service_port or 443))
    elif args.webhook_url:
        if (
            not str(args.webhook_url).startswith("https://")
            or not urlsplit(args.webhook_url).hostname
        ):
            raise ValueError(f"--webhook-url {args.webhook_url!r} must be an https:// URL")
    else:
        raise ValueError("--webhook-listen needs --webhook-service or --webhook-url")
    operator_namespace = args.operator_namespace or _operator_namespace()
    return WebhookOptions(
        listen=(host.strip("[]"), int(port)),
        configuration=args.webhook_configuration,
        operator_namespace=operator_namespace,
        injection=InjectionSettings(
            image=args.sidecar_image,
            operator_namespace=operator_namespace,
            port_name=args.sidecar_port_name,
            native_sidecar=args.sidecar_mode != "container",
        ),
        url=args.webhook_url,
        service=service,
        failure_policy=args.webhook_failure_policy,
        timeout_seconds=args.webhook_timeout,
        cert_dir=args.webhook_cert_dir,
        sidecar_mode=args.sidecar_mode,
    )
