"""The sidecar's event loop: uvloop, connecting to numeric addresses directly.

uvloop's ``sock_connect`` resolves the address it is given with
``getaddrinfo`` on libuv's thread pool, numeric or not (it passes no socket
type, which its in-line fast path needs). aiohttp connects through
``sock_connect``, so every new upstream connection waited for a pool thread
to wake up and hand the answer back: 0.2 to 4 ms here, paid again after
each client that hangs up mid-stream, since that connection cannot be
reused. The upstream is an IP address on the same host, so nothing needs
resolving.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

__all__ = ["new_event_loop"]


def _is_numeric(host: object) -> bool:
    try:
        ipaddress.ip_address(host)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


try:
    import uvloop
except ImportError:  # pragma: no cover - Windows: the standard loop has no such detour
    new_event_loop = asyncio.new_event_loop
else:

    class _Loop(uvloop.Loop):
        async def sock_connect(self, sock: socket.socket, address: Any) -> None:
            if sock.family not in (socket.AF_INET, socket.AF_INET6) or not _is_numeric(address[0]):
                await super().sock_connect(sock, address)
                return
            try:
                sock.connect(address)
                return
            except (BlockingIOError, InterruptedError):
                pass
            # In progress: wait until the socket is writable, then read the outcome.
            fd = sock.fileno()
            done: asyncio.Future[None] = self.create_future()

            def writable() -> None:
                if not done.done():
                    done.set_result(None)

            self.add_writer(fd, writable)
            try:
                await done
            finally:
                self.remove_writer(fd)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, f"Connect call failed {address}")

    def new_event_loop() -> asyncio.AbstractEventLoop:
        return _Loop()
