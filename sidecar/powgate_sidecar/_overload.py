"""Overload: what the listener refuses or puts off so that paid requests keep going.

Two defences, both set by the config's ``overload`` (:class:`OverloadConfig`):

- **Connections per client.** One address opening thousands of connections
  would hold the process's file descriptors and memory, and every
  connection is one more read per turn of the loop. Past
  ``maxConnectionsPerClient`` open connections of one client (an IPv4
  address, an IPv6 /64: one subscriber's share), a new one is answered 503
  and closed at once. Trusted proxies are not capped: each carries many
  clients.
- **Deferring refusals while the loop lags.** A flood of requests without a
  solution, one a read from many connections, is answered in arrival order
  with the paid requests among it: every turn of the loop grows with the
  flood. While a timer firing every :data:`TICK` seconds runs late by
  ``lagThresholdMilliseconds`` or more, a request to a protected route that
  carries no solution is not answered in the turn it arrives: its
  connection waits (reading paused: the flood's next requests stay in the
  kernel's buffers) and its refusal, the same fresh challenge as ever, is
  written within the listener's backlog budget, a turn or more later. A
  request carrying a solution is still judged in the turn it arrives.
  Deferring goes on until the loop has been on time for :data:`HOLD`
  seconds and nothing deferred is left, so the relief does not switch
  itself off (deferring shortens the very turns that were late) while the
  flood lasts.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Final

from powgate.config import OverloadConfig

from ._trust import TrustedProxies

__all__ = ["HOLD", "TICK", "Overload", "client_key"]

#: Seconds between two looks at the loop's lateness.
TICK: Final = 0.005
#: Seconds the loop must be on time, after running late, before deferring stops.
HOLD: Final = 0.5
_V4_MAPPED: Final = bytes(10) + b"\xff\xff"


def client_key(peer: str) -> str | bytes:
    """What connections are counted by: an IPv4 address, or the /64 of an IPv6 one."""
    if ":" not in peer:
        return peer
    try:
        packed = socket.inet_pton(socket.AF_INET6, peer.partition("%")[0])
    except OSError:
        return peer
    if packed[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return packed[:8]


class Overload:
    """The overload settings in force, the open connections per client, and what was refused."""

    def __init__(self, config: OverloadConfig | None = None) -> None:
        self.max_per_client = 0
        self.lag_seconds = 0.0
        #: Peers whose connections are not capped (replaced with the config's proxies).
        self.trusted = TrustedProxies()
        self._open: dict[str | bytes, int] = {}
        #: Connections answered 503 and closed for their client's cap.
        self.refused_connections = 0
        #: Requests whose refusal waited for the backlog budget.
        self.deferred = 0
        #: How late the loop last ran the timer, in seconds.
        self.lag = 0.0
        #: Whether refusals are deferred now.
        self.lagging = False
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._late_at = 0.0
        self._backlog_empty = True
        self.configure(config if config is not None else OverloadConfig())

    def configure(self, config: OverloadConfig) -> None:
        self.max_per_client = config.max_connections_per_client
        self.lag_seconds = config.lag_threshold_milliseconds / 1000
        if not self.lag_seconds:
            self.stop()

    # -- connections per client ------------------------------------------------

    def open(self, peer: str) -> str | bytes | None:
        """Count a new connection of ``peer``: its key, ``""`` if uncounted, ``None`` if refused."""
        cap = self.max_per_client
        if not cap or not peer or peer in self.trusted:
            return ""
        key = client_key(peer)
        held = self._open.get(key, 0)
        if held >= cap:
            self.refused_connections += 1
            return None
        self._open[key] = held + 1
        return key

    def close(self, key: str | bytes) -> None:
        """A connection counted under ``key`` is gone."""
        held = self._open.get(key, 0)
        if held > 1:
            self._open[key] = held - 1
        else:
            self._open.pop(key, None)

    @property
    def clients(self) -> int:
        """Clients holding connections (counted ones)."""
        return len(self._open)

    # -- the loop's lateness ---------------------------------------------------

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Look at the loop's lateness every :data:`TICK` seconds (idempotent)."""
        if self._timer is None and self.lag_seconds:
            self._due = loop.time() + TICK
            self._timer = loop.call_at(self._due, self._tick, loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.lagging = False

    def backlog(self, *, empty: bool) -> None:
        """The listener says whether anything deferred is left."""
        self._backlog_empty = empty

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        self.lag = lag = max(0.0, now - self._due)
        if lag >= self.lag_seconds:
            self.lagging = True
            self._late_at = now
        elif self.lagging and self._backlog_empty and now - self._late_at >= HOLD:
            self.lagging = False
        self._due = now + TICK
        self._timer = loop.call_at(self._due, self._tick, loop)
