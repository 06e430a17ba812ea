"""``powgate sidecar``: every flag also read from a ``POWGATE_*`` environment variable.

The injected container is configured through its environment, so each flag
has a variable of the same name (``--upstream`` ↔ ``POWGATE_UPSTREAM``); a
flag on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import multiprocessing
import multiprocessing.connection
import signal
import sys
from dataclasses import replace
from pathlib import Path

from pydantic import ValidationError

from powgate import KeyRingError
from powgate._pool import WAITING_PER_THREAD, default_threads
from powgate.cliargs import add_env_argument, env_name, host_port
from powgate.contract import SidecarFlag

from ._kube import KubeEndpoint
from ._limits import Limits
from ._logging import configure_logging
from ._loop import new_event_loop
from ._server import Settings, serve

__all__ = ["add_command", "run"]


def _object(value: str) -> tuple[str, str]:
    namespace, sep, name = value.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAMESPACE/NAME")
    return namespace, name


def _networks(value: str) -> tuple[str, ...]:
    networks = tuple(part.strip() for part in value.split(",") if part.strip())
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{network!r} is not a network") from None
    return networks


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sidecar",
        help="run the verifier proxy in front of an AI service",
        description="Challenge, verify and forward requests; export metrics; follow the config.",
    )
    add_env_argument(
        parser,
        SidecarFlag.LISTEN,
        type=host_port,
        default="0.0.0.0:8080",
        help="proxy address HOST:PORT",
    )
    add_env_argument(
        parser,
        SidecarFlag.UPSTREAM,
        help="URL of the protected service, e.g. http://127.0.0.1:8000",
    )
    add_env_argument(
        parser,
        SidecarFlag.METRICS_LISTEN,
        type=host_port,
        default="0.0.0.0:9090",
        help="metrics address HOST:PORT",
    )
    add_env_argument(
        parser,
        SidecarFlag.CONFIG_FILE,
        help="rendered config document (JSON), reloaded when it changes",
    )
    add_env_argument(
        parser,
        SidecarFlag.CONFIG_OBJECT,
        type=_object,
        help="ConfigMap NAMESPACE/NAME to watch (data key config.json)",
    )
    add_env_argument(
        parser,
        SidecarFlag.KEY_FILE,
        help="key ring file, or a mounted Secret folder holding keyring.json",
    )
    add_env_argument(
        parser,
        SidecarFlag.REPLAY_STORE_CREDENTIALS,
        help="folder of the shared replay store's credentials (a mounted Secret: username, "
        "password, ca.crt, tls.crt, tls.key), used when the config names a store",
    )
    add_env_argument(
        parser,
        SidecarFlag.WORKERS,
        type=int,
        default="1",
        help="processes sharing the port via SO_REUSEPORT",
    )
    add_env_argument(
        parser,
        SidecarFlag.DERIVATION_THREADS,
        type=int,
        help="threads per process deriving ALTCHA PoW v2 keys (default: the container's CPU "
        "limit rounded up, or without one the CPUs available up to 4, shared among --workers)",
    )
    add_env_argument(
        parser,
        SidecarFlag.DERIVATIONS_PENDING,
        type=int,
        help="ALTCHA PoW v2 derivations admitted at once per process, running or waiting; "
        f"more are refused unspent, verifier_busy (default: {WAITING_PER_THREAD} per thread)",
    )
    add_env_argument(parser, SidecarFlag.KUBE_API_URL, help="API server URL (default: in-cluster)")
    add_env_argument(
        parser,
        SidecarFlag.KUBE_TOKEN_FILE,
        help="bearer token file (default: the service-account token)",
    )
    add_env_argument(
        parser,
        SidecarFlag.KUBE_CA_FILE,
        help="CA bundle of the API server (default: the service-account CA)",
    )
    add_env_argument(
        parser,
        SidecarFlag.TRUSTED_PROXIES,
        type=_networks,
        default="",
        help="comma-separated networks (CIDR) of proxies whose X-Forwarded-* are believed",
    )
    add_env_argument(
        parser,
        SidecarFlag.MAX_BODY_BYTES,
        type=int,
        default=str(Limits().max_body_bytes),
        help="request body limit",
    )
    add_env_argument(
        parser,
        SidecarFlag.HEADER_TIMEOUT,
        type=float,
        default="15",
        help="seconds to send headers / idle keep-alive",
    )
    add_env_argument(
        parser,
        SidecarFlag.UPSTREAM_TIMEOUT,
        type=float,
        default="300",
        help="seconds between two upstream reads",
    )
    add_env_argument(
        parser,
        SidecarFlag.SHUTDOWN_TIMEOUT,
        type=float,
        default="30",
        help="seconds to drain in-flight requests",
    )
    add_env_argument(
        parser,
        SidecarFlag.LOG_LEVEL,
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level",
    )
    parser.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> Settings:
    """Turn parsed flags into :class:`Settings`; raises ``ValueError`` with the user's mistake."""
    missing = [
        flag
        for flag, value in (("--upstream", args.upstream), ("--key-file", args.key_file))
        if not value
    ]
    if missing:
        raise ValueError(
            f"{' and '.join(missing)} required (or {', '.join(env_name(f) for f in missing)})"
        )
    if (args.config_file is None) == (args.config_object is None):
        raise ValueError("give exactly one of --config-file and --config-object")
    if not args.upstream.startswith(("http://", "https://")):
        raise ValueError(f"--upstream {args.upstream!r} must be an http:// or https:// URL")
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    threads = args.derivation_threads
    if threads is None:
        threads = default_threads(processes=args.workers)
    if threads < 1:
        raise ValueError("--derivation-threads must be at least 1")
    pending = args.derivations_pending
    if pending is None:
        pending = threads * WAITING_PER_THREAD
    if pending < threads:
        raise ValueError(
            f"--derivations-pending must be at least the derivation threads ({threads})"
        )
    kube = None
    if args.config_object is not None:
        kube = KubeEndpoint.resolve(
            api_url=args.kube_api_url, token_file=args.kube_token_file, ca_file=args.kube_ca_file
        )
    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        upstream_read_seconds=args.upstream_timeout,
        derivation_threads=threads,
        derivations_pending=pending,
    )
    return Settings(
        listen=args.listen,
        upstream=args.upstream,
        metrics_listen=args.metrics_listen,
        key_file=Path(args.key_file),
        replay_store_credentials=(
            Path(args.replay_store_credentials) if args.replay_store_credentials else None
        ),
        config_file=Path(args.config_file) if args.config_file else None,
        config_object=args.config_object,
        kube=kube,
        limits=limits,
        header_timeout=args.header_timeout,
        trusted_proxies=args.trusted_proxies,
        shutdown_timeout=args.shutdown_timeout,
        reuse_port=args.workers > 1,
    )


def _serve(settings: Settings) -> int:
    # Everything imported so far lives as long as the process. Frozen, it is
    # no longer traversed by the collections that per-request garbage sets
    # off, which under a flood were a visible share of every request. A
    # request leaves hundreds of objects behind; the default threshold of
    # 700 ran a young collection every few requests.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    runner = asyncio.Runner(loop_factory=new_event_loop)
    try:
        with runner:
            runner.run(serve(settings))
    except (KeyRingError, ValidationError, OSError) as exc:
        print(f"powgate sidecar: {exc}", file=sys.stderr)
        return 2
    return 0


def _worker(*, settings: Settings, level: str) -> None:
    configure_logging(level)
    sys.exit(_serve(settings))


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    try:
        settings = _settings(args)
    except ValueError as exc:
        print(f"powgate sidecar: {exc}", file=sys.stderr)
        return 2
    if args.workers == 1:
        return _serve(settings)
    # One process per core. Each worker's metrics listen on their own port
    # (base + index): a shared port would hand each scrape to a random worker.
    context = multiprocessing.get_context("spawn")
    host, port = settings.metrics_listen
    workers = [
        context.Process(
            target=_worker,
            kwargs={
                "settings": replace(settings, metrics_listen=(host, port + i)),
                "level": args.log_level,
            },
        )
        for i in range(args.workers)
    ]
    for process in workers:
        process.start()

    def terminate(*_: object) -> None:
        # Each worker drains its own in-flight requests on SIGTERM.
        for process in workers:
            if process.is_alive():
                process.terminate()

    signal.signal(signal.SIGTERM, terminate)
    try:
        # The first worker to end (a port it could not bind, a crash) ends the rest:
        # half a sidecar serving on the shared port would hide the failure from the
        # kubelet, which restarts a container that exits.
        multiprocessing.connection.wait([process.sentinel for process in workers])
        terminate()
        for process in workers:
            process.join()
    except KeyboardInterrupt:
        for process in workers:
            process.join()
    return max((p.exitcode or 0) for p in workers)
