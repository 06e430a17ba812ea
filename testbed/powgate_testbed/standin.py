"""A stand-in AI service: OpenAI-compatible, with a fixed capacity that can be overrun.

It answers ``POST /v1/chat/completions`` (JSON or Server-Sent Events, one
event per token at a fixed pace), ``GET /v1/models``, ``GET /healthz`` and
``GET /metrics``. At most ``concurrency`` requests generate at once, up to
``max_queue`` wait in arrival order, and beyond that it refuses with 429 (or
503) and ``Retry-After``, the way inference servers do. Its load is exported
as Prometheus metrics, so it can drive the operator's signals.

In-process use (tests, the demo)::

    async with Standin(concurrency=2, tokens_per_second=100) as standin:
        ...  # standin.url is "http://127.0.0.1:<port>"

Command line: ``powgate standin --listen 127.0.0.1:8000`` or
``python -m powgate_testbed.standin --listen 127.0.0.1:8000``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from types import TracebackType
from typing import Final, Self

import uvloop
from aiohttp import web

from powgate.cliargs import host_port

from ._standin_api import DEFAULT_MAX_TOKENS, MAX_COMPLETION_TOKENS
from ._standin_app import StandinSettings, build_app
from ._standin_args import non_negative_int, positive_float, positive_int

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MAX_COMPLETION_TOKENS",
    "Standin",
    "StandinSettings",
    "add_command",
    "main",
    "run",
]

#: How long a shutdown waits for streams in progress before closing them.
DRAIN_TIMEOUT: Final = 10.0


class Standin:
    """The stand-in served from the running event loop, as an async context manager."""

    def __init__(
        self,
        settings: StandinSettings | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        drain_timeout: float = DRAIN_TIMEOUT,
    ) -> None:
        self.settings = settings or StandinSettings()
        self._host = host
        self._port = port
        self._runner = web.AppRunner(
            build_app(self.settings), access_log=None, shutdown_timeout=drain_timeout
        )
        self._bound: tuple[str, int] | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:8000``; known once started."""
        if self._bound is None:
            raise RuntimeError("the stand-in is not running")
        host, port = self._bound
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def start(self) -> None:
        await self._runner.setup()
        try:
            # Binding the socket here (rather than letting aiohttp do it) is how
            # port 0 gives back the port the kernel picked.
            family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self._host, self._port))
            except OSError:
                sock.close()
                raise
            site = web.SockSite(self._runner, sock, backlog=1024)
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        self._bound = sock.getsockname()[:2]

    async def close(self) -> None:
        """Stop accepting, let requests in progress finish (up to the drain timeout), then stop."""
        self._bound = None
        await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# -- command line -------------------------------------------------------------


def _configure(parser: argparse.ArgumentParser) -> None:
    defaults = StandinSettings()
    parser.add_argument(
        "--listen",
        type=host_port,
        default=("127.0.0.1", 8000),
        metavar="HOST:PORT",
        help="address to serve on (default 127.0.0.1:8000)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=defaults.concurrency,
        metavar="N",
        help=f"requests generating at once (default {defaults.concurrency})",
    )
    parser.add_argument(
        "--tokens-per-second",
        type=positive_float,
        default=defaults.tokens_per_second,
        metavar="R",
        help=f"generation pace of each request (default {defaults.tokens_per_second:g})",
    )
    parser.add_argument(
        "--max-queue",
        type=non_negative_int,
        default=defaults.max_queue,
        metavar="Q",
        help=f"requests that may wait for a slot; more are refused (default {defaults.max_queue})",
    )
    parser.add_argument(
        "--overload",
        type=int,
        choices=(429, 503),
        default=defaults.overload_status,
        help=f"status of a refusal when the queue is full (default {defaults.overload_status})",
    )
    parser.add_argument(
        "--model",
        default=defaults.model,
        help=f"the one model name served (default {defaults.model})",
    )
    parser.set_defaults(func=run)


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``powgate standin`` subcommand."""
    parser = subparsers.add_parser(
        "standin",
        help="run the stand-in AI service (OpenAI-compatible, fixed capacity)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    _configure(parser)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; returns the exit code."""
    host, port = args.listen
    settings = StandinSettings(
        concurrency=args.concurrency,
        tokens_per_second=args.tokens_per_second,
        max_queue=args.max_queue,
        overload_status=args.overload,
        model=args.model,
    )
    try:
        uvloop.run(_serve(settings, host=host, port=port))
    except OSError as exc:
        print(f"powgate standin: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


async def _serve(settings: StandinSettings, *, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Standin(settings, host=host, port=port) as standin:
        print(
            f"powgate standin: serving {settings.model!r} on {standin.url} "
            f"(concurrency {settings.concurrency}, {settings.tokens_per_second:g} tokens/s, "
            f"queue {settings.max_queue}, overload {settings.overload_status})",
            flush=True,
        )
        await stop.wait()
        print("powgate standin: draining", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m powgate_testbed.standin", description=__doc__)
    _configure(parser)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
