"""The injector's options: what they are (:class:`WebhookOptions`) and their flags.

Each flag of ``powgate operator`` is also read from a ``POWGATE_*``
variable, the same convention as ``powgate sidecar``: ``--webhook-listen`` ↔
``POWGATE_WEBHOOK_LISTEN``, and a flag given on the command line wins. The
Helm chart configures the operator through these variables (its Deployment's
``env``); a unit test parses the rendered Deployment with this parser.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from powgate.cliargs import add_env_argument, env_name, parse_host_port

from ._inject import SidecarTemplate
from ._objects import Hook, webhook_configuration_body
from ._webhook_certs import SERVING_LIFETIME

__all__ = ["WebhookOptions", "add_webhook_arguments", "webhook_options"]


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    """How the webhook is served and registered."""

    listen: tuple[str, int]
    configuration: str
    operator_namespace: str
    sidecar: SidecarTemplate
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
    #: CA bundle of the API server's client certificate: callers without one are refused.
    client_ca: Path | None = None
    #: Names (CN or DNS) that certificate may carry; empty: any the CA issued.
    client_names: tuple[str, ...] = ()

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

    def configuration_body(self, *, ca_bundle: bytes) -> dict[str, Any]:
        """The whole MutatingWebhookConfiguration, when the operator owns it."""
        bundle = base64.b64encode(ca_bundle).decode()

        def client(hook: Hook) -> dict[str, Any]:
            if self.url is not None:
                return {"caBundle": bundle, "url": f"{self.url.rstrip('/')}/{hook.handler}"}
            assert self.service is not None
            namespace, name, port = self.service
            service = {"namespace": namespace, "name": name, "port": port}
            return {"caBundle": bundle, "service": {**service, "path": f"/{hook.handler}"}}

        return webhook_configuration_body(
            name=self.configuration,
            client_config=client,
            excluded_namespaces=self.sidecar.excluded_namespaces,
            failure_policy=self.failure_policy,
            timeout_seconds=self.timeout_seconds,
        )


_SA_NAMESPACE_FILE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})
_CHOICES: Final = {
    "webhook_failure_policy": ("Ignore", "Fail"),
    "sidecar_mode": ("auto", "native", "container"),
    "sidecar_pull_policy": ("Always", "IfNotPresent", "Never"),
    "sidecar_log_level": ("debug", "info", "warning", "error"),
}


def add_webhook_arguments(parser: argparse.ArgumentParser) -> None:
    """The injector's flags (the webhook is off unless ``--webhook-listen`` is given)."""
    group = parser.add_argument_group("sidecar injection (mutating webhook)")
    add_env_argument(
        group,
        "--webhook-listen",
        metavar="HOST:PORT",
        help="serve the injection webhook here (the chart: $(POD_IP):8443); off when absent",
    )
    add_env_argument(
        group,
        "--webhook-service",
        metavar="NAMESPACE/NAME[:PORT]",
        help="the Service in front of the operator that the API server calls (port 443)",
    )
    add_env_argument(
        group,
        "--webhook-url",
        metavar="URL",
        help="call the webhook at this https URL instead (an operator outside the cluster)",
    )
    add_env_argument(
        group,
        "--webhook-configuration",
        default="powgate-sidecar-injector",
        metavar="NAME",
        help="the MutatingWebhookConfiguration whose caBundle the operator keeps current",
    )
    add_env_argument(
        group,
        "--webhook-create-configuration",
        action=argparse.BooleanOptionalAction,
        help="create and update the whole configuration (without the chart); "
        "otherwise only its caBundle is patched",
    )
    add_env_argument(
        group,
        "--webhook-failure-policy",
        default="Ignore",
        metavar="|".join(_CHOICES["webhook_failure_policy"]),
        help="with --webhook-create-configuration (the chart sets its own)",
    )
    add_env_argument(
        group,
        "--webhook-timeout",
        type=int,
        default=5,
        metavar="SECONDS",
        help="1 to 30, with --webhook-create-configuration",
    )
    add_env_argument(
        group,
        "--webhook-cert-dir",
        type=Path,
        metavar="DIR",
        help="certificate files: written here (default: a temporary folder), "
        "or read from here with --webhook-cert-manager",
    )
    add_env_argument(
        group,
        "--webhook-cert-secret",
        metavar="NAME",
        help="the Secret of the self-managed CA and certificate (default <configuration>-tls)",
    )
    add_env_argument(
        group,
        "--webhook-cert-manager",
        action=argparse.BooleanOptionalAction,
        help="serve tls.crt/tls.key of --webhook-cert-dir (reloaded on change) and leave "
        "certificates and caBundle to cert-manager",
    )
    add_env_argument(
        group,
        "--webhook-cert-validity-days",
        type=int,
        default=90,
        metavar="DAYS",
        help="lifetime of the self-managed serving certificate; renewed with a third left",
    )
    add_env_argument(
        group,
        "--webhook-client-ca",
        type=Path,
        metavar="FILE",
        help="PEM bundle of the CA that issues the API server's client certificate "
        "(its admission-plugin kubeconfig): callers without such a certificate are refused. "
        "Without it, anyone reaching the port may send reviews (they grant nothing)",
    )
    add_env_argument(
        group,
        "--webhook-client-names",
        metavar="NAME[,NAME…]",
        help="with --webhook-client-ca: the common or DNS names the API server's certificate "
        "may carry (default: any certificate of that CA)",
    )
    add_env_argument(
        group,
        "--operator-namespace",
        metavar="NS",
        help="never injected (default: the service account's namespace)",
    )
    add_env_argument(
        group, "--sidecar-image", default="powgate/sidecar:0.1.0", metavar="IMAGE", help="image"
    )
    add_env_argument(
        group,
        "--sidecar-pull-policy",
        default="IfNotPresent",
        metavar="|".join(_CHOICES["sidecar_pull_policy"]),
        help="imagePullPolicy",
    )
    add_env_argument(
        group,
        "--sidecar-resources",
        metavar="JSON",
        help='resources, e.g. {"requests": {"cpu": "100m"}, "limits": {"memory": "256Mi"}}',
    )
    add_env_argument(
        group,
        "--sidecar-metrics-port",
        type=int,
        default=9480,
        metavar="PORT",
        help="the sidecar's /metrics and probes (moved up when the pod uses it)",
    )
    add_env_argument(
        group,
        "--sidecar-log-level",
        default="info",
        metavar="|".join(_CHOICES["sidecar_log_level"]),
        help="the injected sidecar's log level",
    )
    add_env_argument(
        group,
        "--sidecar-derivation-threads",
        type=int,
        metavar="N",
        help="ALTCHA PoW v2 derivation threads per sidecar process (default: the sidecar's, "
        "from its CPU limit)",
    )
    add_env_argument(
        group,
        "--sidecar-derivations-pending",
        type=int,
        metavar="N",
        help="ALTCHA PoW v2 derivations a sidecar process admits at once (default: the "
        "sidecar's, 8 per thread)",
    )
    add_env_argument(
        group,
        "--sidecar-mode",
        default="auto",
        metavar="|".join(_CHOICES["sidecar_mode"]),
        help="native sidecar (init container), regular container, or auto (1.29+: native)",
    )
    add_env_argument(
        group,
        "--sidecar-port-name",
        default="http",
        metavar="NAME",
        help="the app port the sidecar takes over (per pod: annotation powgate.dev/port)",
    )


def _flag(value: object, flag: str) -> bool:
    """A boolean flag: True/False from the command line, a string from the environment."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"{env_name(flag)}={value!r} is not true or false")


def _resources(text: str | None) -> dict[str, dict[str, str]] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--sidecar-resources is not JSON: {exc}") from exc
    if not isinstance(value, dict) or not set(value) <= {"requests", "limits"}:
        raise ValueError("--sidecar-resources must be an object with requests and/or limits")
    result: dict[str, dict[str, str]] = {}
    for key, amounts in value.items():
        if not isinstance(amounts, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
            for k, v in amounts.items()
        ):
            raise ValueError(f"--sidecar-resources: {key} must map resource names to quantities")
        result[key] = {k: str(v) for k, v in amounts.items()}
    return result


def _operator_namespace() -> str:
    try:
        return _SA_NAMESPACE_FILE.read_text().strip()
    except OSError:
        return "powgate-system"


def webhook_options(args: argparse.Namespace) -> WebhookOptions | None:
    """The options, or None when the webhook is off; ``ValueError`` names the bad flag."""
    if not args.webhook_listen:
        return None
    for dest, allowed in _CHOICES.items():
        if getattr(args, dest) not in allowed:
            flag = "--" + dest.replace("_", "-")
            raise ValueError(f"{flag} {getattr(args, dest)!r} is not one of {', '.join(allowed)}")
    try:
        host, port = parse_host_port(str(args.webhook_listen))
    except ValueError as exc:
        raise ValueError(f"--webhook-listen {exc}") from None
    if port == 0:
        raise ValueError("--webhook-listen needs a fixed port: the API server dials it")
    if not 1 <= args.webhook_timeout <= 30:
        raise ValueError("--webhook-timeout must be between 1 and 30 seconds")
    if not 1 <= args.webhook_cert_validity_days <= 3650:
        raise ValueError("--webhook-cert-validity-days must be between 1 and 3650")
    if not 0 < args.sidecar_metrics_port < 65536:
        raise ValueError("--sidecar-metrics-port must be between 1 and 65535")
    threads, pending = args.sidecar_derivation_threads, args.sidecar_derivations_pending
    if threads is not None and threads < 1:
        raise ValueError("--sidecar-derivation-threads must be at least 1")
    if pending is not None and pending < (threads or 1):
        raise ValueError(
            "--sidecar-derivations-pending must be at least --sidecar-derivation-threads"
        )
    client_names = tuple(
        n.strip() for n in str(args.webhook_client_names or "").split(",") if n.strip()
    )
    if client_names and args.webhook_client_ca is None:
        raise ValueError("--webhook-client-names needs --webhook-client-ca")
    if args.webhook_client_ca is not None and not args.webhook_client_ca.is_file():
        raise ValueError(f"--webhook-client-ca {args.webhook_client_ca} is not a file")
    cert_manager = _flag(args.webhook_cert_manager, "--webhook-cert-manager")
    if cert_manager and args.webhook_cert_dir is None:
        raise ValueError("--webhook-cert-manager needs --webhook-cert-dir (the mounted Secret)")
    service: tuple[str, str, int] | None = None
    if args.webhook_service and args.webhook_url:
        raise ValueError("give --webhook-service or --webhook-url, not both")
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
    resources = _resources(args.sidecar_resources)
    sidecar = SidecarTemplate(
        image=args.sidecar_image,
        operator_namespace=operator_namespace,
        image_pull_policy=args.sidecar_pull_policy,
        port_name=args.sidecar_port_name,
        metrics_port=args.sidecar_metrics_port,
        native_sidecar=args.sidecar_mode != "container",
        log_level=args.sidecar_log_level,
        derivation_threads=threads,
        derivations_pending=pending,
    )
    if resources is not None:
        sidecar = replace(sidecar, resources=resources)
    return WebhookOptions(
        listen=(host, port),
        configuration=args.webhook_configuration,
        operator_namespace=operator_namespace,
        sidecar=sidecar,
        url=args.webhook_url,
        service=service,
        create_configuration=_flag(
            args.webhook_create_configuration, "--webhook-create-configuration"
        ),
        failure_policy=args.webhook_failure_policy,
        timeout_seconds=args.webhook_timeout,
        cert_dir=args.webhook_cert_dir,
        cert_secret=args.webhook_cert_secret,
        cert_manager=cert_manager,
        cert_lifetime=dt.timedelta(days=args.webhook_cert_validity_days),
        sidecar_mode=args.sidecar_mode,
        client_ca=args.webhook_client_ca,
        client_names=client_names,
    )
