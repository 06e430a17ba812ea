"""Running the sidecar: the proxy listener, the metrics listener, the reload tasks, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from powgate import KeyRing
from powgate.config import SidecarConfig

from ._app import Sidecar
from ._connection import Listener
from ._files import key_path, poll_files
from ._kube import ConfigMapWatcher, KubeClient, KubeEndpoint
from ._limits import Limits

__all__ = ["Settings", "serve"]

log = logging.getLogger("powgate.sidecar")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``powgate sidecar`` is told on its command line or environment."""

    listen: tuple[str, int]
    upstream: str
    metrics_listen: tuple[str, int]
    key_file: Path
    config_file: Path | None = None
    #: ``(namespace, name)`` of the rendered config object to watch.
    config_object: tuple[str, str] | None = None
    kube: KubeEndpoint | None = None
    limits: Limits = field(default_factory=Limits)
    #: Time a client has to send its request headers (and to idle between requests).
    header_timeout: float = 15.0
    #: Networks of proxies in front whose ``X-Forwarded-*`` are believed.
    trusted_proxies: tuple[str, ...] = ()
    shutdown_timeout: float = 30.0
    poll_interval: float = 1.0
    reuse_port: bool = False
    #: The shared replay store's credentials (a mounted Secret folder).
    replay_store_credentials: Path | None = None


def _metrics_app(sidecar: Sidecar) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(sidecar.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if sidecar.config is None:
            return web.Response(status=503, text="no configuration yet\n")
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT), then drain in-flight requests.

    Raises :class:`powgate.KeyRingError` or :class:`pydantic.ValidationError`
    when the key file or config file is unusable at start: a sidecar that
    cannot verify must not start.
    """
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    keyring = KeyRing.load(key_path(settings.key_file))
    config = (
        SidecarConfig.from_json(settings.config_file.read_bytes()) if settings.config_file else None
    )
    sidecar = Sidecar(
        upstream=settings.upstream,
        keyring=keyring,
        config=config,
        limits=settings.limits,
        trusted_proxies=settings.trusted_proxies,
        replay_store_credentials=settings.replay_store_credentials,
    )
    await sidecar.start()
    listener = sidecar.listener(header_seconds=settings.header_timeout)
    metrics_runner = web.AppRunner(_metrics_app(sidecar), access_log=None)
    tasks: list[asyncio.Task[None]] = []
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(sidecar.close)
        await metrics_runner.setup()
        stack.push_async_callback(metrics_runner.cleanup)
        await web.TCPSite(
            metrics_runner, *settings.metrics_listen, reuse_port=settings.reuse_port
        ).start()
        host, port = settings.listen
        # Connections are asyncio protocols by their methods, not by their
        # class (compiled, they cannot derive from asyncio.Protocol).
        factory = cast("Callable[[], asyncio.Protocol]", listener)
        server = await loop.create_server(
            factory, host, port, backlog=4096, reuse_port=settings.reuse_port
        )
        stack.push_async_callback(_drain, server, listener, settings.shutdown_timeout)
        tasks.append(
            asyncio.create_task(
                poll_files(
                    sidecar,
                    key_file=settings.key_file,
                    config_file=settings.config_file,
                    interval=settings.poll_interval,
                )
            )
        )
        if settings.config_object is not None and settings.kube is not None:
            client = await stack.enter_async_context(KubeClient(settings.kube))
            namespace, name = settings.config_object
            watcher = ConfigMapWatcher(client=client, namespace=namespace, name=name, sink=sidecar)
            tasks.append(asyncio.create_task(watcher.run()))
        log.info(
            "sidecar listening",
            extra={
                "listen": "{}:{}".format(*settings.listen),
                "upstream": settings.upstream,
                "metrics": "{}:{}".format(*settings.metrics_listen),
                "derivation_threads": sidecar.derivations.workers,
                "derivations_pending": sidecar.derivations.max_pending,
            },
        )
        await stop.wait()
        log.info(
            "shutting down: draining in-flight requests",
            extra={"timeout": settings.shutdown_timeout},
        )
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _drain(server: asyncio.Server, listener: Listener, grace: float) -> None:
    """Stop accepting, let exchanges in flight finish (up to ``grace`` seconds), then close."""
    server.close()
    await listener.drain(grace)
    await server.wait_closed()
