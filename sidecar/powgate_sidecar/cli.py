"""``powgate sidecar``: every flag also read from a ``POWGATE_*`` environment variable.

The injected container is configured through its environment, so each flag
has a variable of the same name (``--upstream`` ↔ ``POWGATE_UPSTREAM``); a
flag on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from powgate import KeyRingError

from ._app import Limits
from ._kube import KubeEndpoint
from ._logging import configure_logging
from ._server import Settings, serve

__all__ = ["add_command", "run"]


def _env_name(flag: str) -> str:
    return "POWGATE_" + flag.lstrip("-").replace("-", "_").upper()


def _add(parser: argparse.ArgumentParser, *, flag: str, help: str, **kwargs: Any) -> None:
    # argparse applies ``type`` to string defaults, so values from the environment are checked too.
    env = _env_name(flag)
    default = os.environ.get(env, kwargs.pop("default", None))
    parser.add_argument(flag, default=default, help=f"{help} [env {env}]", **kwargs)


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - an empty host means every interface


def _object(value: str) -> tuple[str, str]:
    namespace, sep, name = value.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAMESPACE/NAME")
    return namespace, name


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sidecar",
        help="run the verifier proxy in front of an AI service",
        description="Challenge, verify and forward requests; export metrics; follow the config.",
    )
    _add(
        parser,
        flag="--listen",
        type=_host_port,
        default="0.0.0.0:8080",
        help="proxy address HOST:PORT",
    )
    _add(parser, flag="--upstream", help="URL of the protected service, e.g. http://127.0.0.1:8000")
    _add(
        parser,
        flag="--metrics-listen",
        type=_host_port,
        default="0.0.0.0:9090",
        help="metrics address HOST:PORT",
    )
    _add(
        parser,
        flag="--config-file",
        help="rendered config document (JSON), reloaded when it changes",
    )
    _add(
        parser,
        flag="--config-object",
        type=_object,
        help="ConfigMap NAMESPACE/NAME to watch (data key config.json)",
    )
    _add(
        parser,
        flag="--key-file",
        help="key ring file, or a mounted Secret folder holding keyring.json",
    )
    _add(
        parser,
        flag="--workers",
        type=int,
        default="1",
        help="processes sharing the port via SO_REUSEPORT",
    )
    _add(parser, flag="--kube-api-url", help="API server URL (default: in-cluster)")
    _add(
        parser,
        flag="--kube-token-file",
        help="bearer token file (default: the service-account token)",
    )
    _add(
        parser,
        flag="--kube-ca-file",
        help="CA bundle of the API server (default: the service-account CA)",
    )
    _add(
        parser,
        flag="--max-body-bytes",
        type=int,
        default=str(Limits().max_body_bytes),
        help="request body limit",
    )
    _add(
        parser,
        flag="--header-timeout",
        type=float,
        default="15",
        help="seconds to send headers / idle keep-alive",
    )
    _add(
        parser,
        flag="--upstream-timeout",
        type=float,
        default="300",
        help="seconds between two upstream reads",
    )
    _add(
        parser,
        flag="--shutdown-timeout",
        type=float,
        default="30",
        help="seconds to drain in-flight requests",
    )
    _add(
        parser,
        flag="--log-level",
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
            f"{' and '.join(missing)} required (or {', '.join(_env_name(f) for f in missing)})"
        )
    if (args.config_file is None) == (args.config_object is None):
        raise ValueError("give exactly one of --config-file and --config-object")
    if not args.upstream.startswith(("http://", "https://")):
        raise ValueError(f"--upstream {args.upstream!r} must be an http:// or https:// URL")
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    kube = None
    if args.config_object is not None:
        kube = KubeEndpoint.resolve(
            api_url=args.kube_api_url, token_file=args.kube_token_file, ca_file=args.kube_ca_file
        )
    limits = Limits(max_body_bytes=args.max_body_bytes, upstream_read_seconds=args.upstream_timeout)
    return Settings(
        listen=args.listen,
        upstream=args.upstream,
        metrics_listen=args.metrics_listen,
        key_file=Path(args.key_file),
        config_file=Path(args.config_file) if args.config_file else None,
        config_object=args.config_object,
        kube=kube,
        limits=limits,
        header_timeout=args.header_timeout,
        shutdown_timeout=args.shutdown_timeout,
        reuse_port=args.workers > 1,
    )


def _serve(settings: Settings) -> int:
    try:
        import uvloop  # optional: absent on Windows

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
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
        for process in workers:
            process.join()
    except KeyboardInterrupt:
        for process in workers:
            process.join()
    return max((p.exitcode or 0) for p in workers)
