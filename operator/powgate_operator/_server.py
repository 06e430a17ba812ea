"""The operator's HTTP endpoints: ``/metrics``, and ``/healthz`` and ``/readyz`` for probes."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

__all__ = ["Endpoint", "start_servers"]

Endpoint = tuple[str, int]


async def _metrics(_: web.Request) -> web.Response:
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _health_app(ready: asyncio.Event) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        # Answering at all proves the event loop (and with it every handler) is not stuck.
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if ready.is_set():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="starting\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_servers(
    *, metrics: Endpoint | None, health: Endpoint | None, ready: asyncio.Event
) -> list[web.AppRunner]:
    """Start the listeners asked for; the caller cleans the returned runners up."""
    runners: list[web.AppRunner] = []
    apps: list[tuple[web.Application, Endpoint]] = []
    if metrics is not None:
        metrics_app = web.Application()
        metrics_app.router.add_get("/metrics", _metrics)
        apps.append((metrics_app, metrics))
    if health is not None:
        apps.append((_health_app(ready), health))
    try:
        for app, (host, port) in apps:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, host, port).start()
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        raise
    return runners
