"""The floor's stack alone: aiohttp's low-level server and client on uvloop, no PoW.

``bench_proxy`` runs this beside the sidecar as a second reference: what the
framework itself costs for the same rows (a keep-alive proxy, and a static
428 of the sidecar's size at ``/reject``), so the sidecar's own share shows.

    python -m bench.aiohttp_bare PORT UPSTREAM_URL REJECT_BODY_FILE
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import uvloop
from aiohttp import web

REJECT_HEADERS = {
    "Content-Type": "application/json",
    "WWW-Authenticate": 'PoW realm="powgate", algorithm="SHA-256"',
    "Cache-Control": "no-store",
}


async def serve(*, port: int, upstream: str, reject_body: bytes) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1024), auto_decompress=False
    )

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/reject":
            return web.Response(status=428, body=reject_body, headers=REJECT_HEADERS)
        body = await request.read() if request.body_exists else None
        async with session.request(
            request.method, upstream + request.raw_path, headers=request.headers, data=body
        ) as answer:
            payload = await answer.read()
            return web.Response(status=answer.status, body=payload, headers=answer.headers)

    runner = web.ServerRunner(web.Server(handle, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    port, upstream, body_file = sys.argv[1:4]
    uvloop.run(serve(port=int(port), upstream=upstream, reject_body=Path(body_file).read_bytes()))
