"""An open-loop request flood: a fixed rate whatever the server does.

``bench_overload`` runs it beside the sidecar. Requests go out on
``--connections`` keep-alive connections at ``RATE`` per second in total, in
ticks of ``TICK`` seconds: each tick writes the requests its share of the
rate owes, taking the connections in turn, pipelined, without waiting for
answers (which are read and dropped). A server that falls behind does not
slow the flood down, as a closed-loop generator would; its backlog grows in
the sockets. With few connections and a high rate each write holds several
requests (a pipelining flood); with many, one request a write (a flood of
connections). ``--addresses`` spreads the connections over that many
loopback source addresses (127.2.x.y), as many clients' would be; a
connection the server closes (a cap per client) is not reopened, and its
share goes to the others.

    python -m bench.flood PORT RATE SECONDS [HEADER] [--connections N] [--addresses K]

Prints one line: ``SENT requests HELD connections-still-open-at-the-end``.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop

CONNECTIONS = 50
TICK = 0.005


async def flood(
    *, port: int, rate: float, seconds: float, header: str, connections: int, addresses: int
) -> tuple[int, int]:
    request = (
        f"GET /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{header}\r\n".encode()
        if header
        else f"GET /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    )
    writers: list[asyncio.StreamWriter] = []
    readers = []

    async def drain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1 << 18):
            pass
        writer.close()  # closed by the server: no more writes to it

    for index in range(connections):
        source = None
        if addresses > 1:
            client = index % addresses
            source = (f"127.2.{client // 250}.{client % 250 + 1}", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=source)
        writers.append(writer)
        readers.append(asyncio.create_task(drain(reader, writer)))
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent = 0.0
    written = 0
    turn = 0
    while (now := loop.time()) - started < seconds:
        owed = int((now - started) * rate - sent)
        open_ = [writer for writer in writers if not writer.transport.is_closing()]
        if owed > 0 and open_:
            share, extra = divmod(owed, len(open_))
            for index, writer in enumerate(open_):
                count = share + ((index - turn) % len(open_) < extra)
                if count and writer.transport.get_write_buffer_size() < (1 << 20):
                    writer.write(request * count)
                    written += count
            turn += extra
            sent += owed
        await asyncio.sleep(TICK)
    held = sum(not writer.transport.is_closing() for writer in writers)
    for writer in writers:
        writer.close()
    for task in readers:
        task.cancel()
    return written, held


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flood")
    parser.add_argument("port", type=int)
    parser.add_argument("rate", type=float)
    parser.add_argument("seconds", type=float)
    parser.add_argument("header", nargs="?", default="")
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--addresses", type=int, default=1)
    args = parser.parse_args()
    written, held = uvloop.run(
        flood(
            port=args.port,
            rate=args.rate,
            seconds=args.seconds,
            header=args.header,
            connections=args.connections,
            addresses=args.addresses,
        )
    )
    print(f"SENT {written} HELD {held}")


if __name__ == "__main__":
    main()
