"""``powgate operator``: run the PowPolicy operator.

Examples::

    powgate operator --namespace ai               # one namespace, a single replica
    powgate operator --all-namespaces --peering powgate   # cluster-wide, HA replicas
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import sys
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from pydantic import ValidationError

from powgate.cliargs import add_env_argument, host_port, parse_host_port
from powgate.config import ReplayStoreSpec

from ._kube_client import KubeCluster
from ._options import add_webhook_arguments, webhook_options
from ._prometheus import CredentialAddresses, SignalReader
from ._reconcile import Reconciler, StoreAddresses
from ._server import start_servers
from .handlers import build_registry
from .webhook import Injector
from .webhook import install as install_webhook

__all__ = ["add_command", "kopf_settings", "peering_priority", "run"]

log = logging.getLogger("powgate.operator")

_PREFIX: Final = "powgate.dev"
_KUBE_THREADS: Final = 32
_LOG_FORMATS: Final = {"json": kopf.LogFormat.JSON, "plain": kopf.LogFormat.FULL}
#: Derived peering priorities stay below this; an explicit ``--priority`` may exceed it.
_PRIORITY_RANGE: Final = 2**31


def _replay_store(value: str) -> ReplayStoreSpec | None:
    """A ``replay.store`` document (JSON); an empty value means none."""
    if not value.strip():
        return None
    try:
        return ReplayStoreSpec.model_validate_json(value)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<document>'}: {e['msg']}"
            for e in exc.errors()[:5]
        )
        raise argparse.ArgumentTypeError(f"not a replay store: {errors}") from None


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "operator",
        help="run the PowPolicy operator",
        description="Reconcile PowPolicies: keys, rendered sidecar config, adaptive difficulty.",
    )
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable)",
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    parser.add_argument(
        "--metrics-listen",
        type=host_port,
        default=parse_host_port("127.0.0.1:9090"),
        metavar="HOST:PORT",
        help="serve /metrics here (default 127.0.0.1:9090; the chart passes $(POD_IP):9090)",
    )
    parser.add_argument(
        "--health-listen",
        type=host_port,
        default=parse_host_port("127.0.0.1:8081"),
        metavar="HOST:PORT",
        help="serve /healthz and /readyz here (default 127.0.0.1:8081; the chart: $(POD_IP):8081)",
    )
    parser.add_argument(
        "--peering",
        metavar="NAME",
        help="coordinate replicas through this KopfPeering object (one active); "
        "without it the operator runs standalone",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority: the highest one is active (default: derived from $POD_ID, "
        "else random, so that no two replicas tie — kopf pauses replicas that tie)",
    )
    add_env_argument(
        parser,
        "--prometheus-credential-addresses",
        type=CredentialAddresses.parse,
        default="",
        metavar="URL[,URL...]",
        help="the only Prometheus addresses a policy's authSecretRef credentials are sent to "
        "(same scheme, host and port; a path below); empty: none",
    )
    add_env_argument(
        parser,
        "--default-replay-store",
        type=_replay_store,
        default=None,
        metavar="JSON",
        help="the shared replay store of every policy that names none in spec.replay.store "
        '(a replay.store object: {"address": "HOST:PORT", "whenUnavailable": "Refuse", …}); '
        "unset: such policies' sidecars keep single use per process",
    )
    add_env_argument(
        parser,
        "--replay-store-addresses",
        type=StoreAddresses.parse,
        default="",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="the only replay-store addresses a policy may name in spec.replay.store (its "
        "sidecars send the store's credentials there); a policy naming another is not "
        "rendered (Ready=False ReplayStoreNotAllowed); empty: any",
    )
    parser.add_argument("--log-format", choices=sorted(_LOG_FORMATS), default="plain")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    add_webhook_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        args.webhook = webhook_options(args)
    except ValueError as exc:
        print(f"powgate operator: {exc}", file=sys.stderr)
        return 2
    kopf.configure(verbose=args.verbose, log_format=_LOG_FORMATS[args.log_format])
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        return 130
    return 0


def peering_priority(*, explicit: int | None, pod_id: str | None) -> int:
    """This replica's peering priority: ``explicit``, or one no other replica shares.

    kopf pauses every replica that shares the highest priority, so equal
    defaults would leave no replica active. A hash of the pod's name is stable
    across restarts of the same pod; without one, a random number does.
    """
    if explicit is not None:
        return explicit
    if pod_id:
        digest = hashlib.sha256(pod_id.encode()).digest()
        return int.from_bytes(digest[:8], "big") % _PRIORITY_RANGE
    return secrets.randbelow(_PRIORITY_RANGE)


def kopf_settings(*, peering: str | None, priority: int) -> kopf.OperatorSettings:
    """Production settings: state in annotations, bounded timeouts, optional peering."""
    result = kopf.OperatorSettings()
    # Status belongs to the CRD's schema; kopf's own bookkeeping goes to annotations.
    result.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=_PREFIX)
    result.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=_PREFIX, key="last-handled-configuration"
    )
    result.persistence.finalizer = f"{_PREFIX}/operator"
    # Watches end server-side before the client gives up; a silent connection is noticed.
    result.watching.server_timeout = 300
    result.watching.client_timeout = 330
    result.watching.connect_timeout = 10
    result.networking.request_timeout = 30
    result.networking.connect_timeout = 10
    result.posting.level = logging.INFO
    result.peering.standalone = peering is None
    if peering is not None:
        result.peering.name = peering
        result.peering.priority = priority
        result.peering.mandatory = True
    return result


# The kubernetes package leaves its config loaders unannotated, hence the ignores below.
def _api_client() -> k8s.ApiClient:
    """In a pod, its service account; elsewhere ``$KUBECONFIG`` or ``~/.kube/config``."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    # One kept-alive connection per worker thread: a smaller pool would discard
    # connections and pay a TLS handshake on most requests.
    configuration.connection_pool_maxsize = _KUBE_THREADS
    return k8s.ApiClient(configuration)


async def _serve(args: argparse.Namespace) -> None:
    # Kubernetes calls run in threads (the official client blocks); the default pool of
    # a few threads would queue them behind each other with many policies.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=_KUBE_THREADS, thread_name_prefix="kube")
    )
    api = _api_client()
    reader = SignalReader()
    started = asyncio.Event()  # kopf's: start-up handlers done
    ready = asyncio.Event()  # /readyz
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(api.close)
        stack.callback(reader.close)
        runners = await start_servers(
            metrics=args.metrics_listen, health=args.health_listen, ready=ready
        )
        for runner in runners:
            stack.push_async_callback(runner.cleanup)
        cluster = KubeCluster(api)
        reconciler = Reconciler(
            cluster=cluster,
            reader=reader,
            credential_addresses=args.prometheus_credential_addresses,
            default_store=args.default_replay_store,
            store_addresses=args.replay_store_addresses,
        )
        registry = build_registry(reconciler)
        priority = peering_priority(explicit=args.priority, pod_id=os.environ.get("POD_ID"))
        operator_settings = kopf_settings(peering=args.peering, priority=priority)
        if args.peering is not None:
            log.info("peering %s with priority %d", args.peering, priority)
        injector: Injector | None = None
        if args.webhook is not None:
            injector = install_webhook(
                registry,
                operator_settings,
                options=args.webhook,
                cluster=cluster,
                namespaces=None if args.all_namespaces else args.namespace,
            )
        _background(stack, _readiness(started, injector, ready), name="readiness")
        await kopf.operator(
            registry=registry,
            settings=operator_settings,
            clusterwide=args.all_namespaces,
            namespaces=args.namespace,
            peering_name=args.peering,
            standalone=args.peering is None,
            ready_flag=started,
        )


def _background(
    stack: contextlib.AsyncExitStack, work: Coroutine[Any, Any, None], *, name: str
) -> None:
    """Run ``work`` until the stack unwinds, then cancel it."""
    task = asyncio.create_task(work, name=name)

    async def cancel() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(cancel)


async def _readiness(
    started: asyncio.Event, injector: Injector | None, ready: asyncio.Event
) -> None:
    """Ready once kopf has started and, with the webhook, it serves its certificate.

    Before that, a pod admitted by this replica could miss its sidecar.
    """
    await started.wait()
    if injector is not None:
        await injector.serving.wait()
    ready.set()
