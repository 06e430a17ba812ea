"""An open-loop request flood: a fixed rate whatever the server does.

``bench_overload`` runs it beside the sidecar. Requests go out on
``CONNECTIONS`` keep-alive connections at ``RATE`` per second in total, in
ticks of ``TICK`` seconds: each tick writes the requests its share of the
rate owes, pipelined, without waiting for answers (which are read and
dropped). A server that falls behind does not slow the flood down, as a
closed-loop generator would; its backlog grows in the sockets.

    python -m bench.flood PORT RATE SECONDS [HEADER]

Prints one line: ``SENT requests``.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

CONNECTIONS = 50
TICK = 0.005


async def flood(*, port: int, rate: float, seconds: float, header: str) -> int:
    request = (
        f"GET /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{header}\r\n".encode()
        if header
        else f"GET /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    )
    writers = []
    readers = []

    async def drain(reader: asyncio.StreamReader) -> None:
        while await reader.read(1 << 18):
            pass

    for _ in range(CONNECTIONS):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        readers.append(asyncio.create_task(drain(reader)))
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent = 0.0
    written = 0
    while (now := loop.time()) - started < seconds:
        owed = int((now - started) * rate - sent)
        if owed > 0:
            share, extra = divmod(owed, CONNECTIONS)
            for index, writer in enumerate(writers):
                count = share + (index < extra)
                if count and writer.transport.get_write_buffer_size() < (1 << 20):
                    writer.write(request * count)
                    written += count
            sent += owed
        await asyncio.sleep(TICK)
    for writer in writers:
        writer.close()
    for task in readers:
        task.cancel()
    return written


if __name__ == "__main__":
    port, rate, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    header = sys.argv[4] if len(sys.argv) > 4 else ""
    written = uvloop.run(flood(port=port, rate=rate, seconds=seconds, header=header))
    print(f"SENT {written}")
