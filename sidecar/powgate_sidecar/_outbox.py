"""Writes held to the end of the event loop's turn, then sent back to back.

A write to a socket whose reader sleeps wakes that reader: wrk, a browser,
an upstream server — a process on another core, woken by an
inter-processor interrupt (in a virtual machine, a trip through the
hypervisor), and the kernel charges the wake-up to the writer. A turn of
the loop under load handles the reads of many connections; answering each
as it is parsed spreads the writes over the turn, and a fast peer goes back
to sleep between two of them, so that every write pays a wake-up. Held to
the end of the turn, they leave together: the peer woken by the first finds
the others ready. The sidecar's system time per refusal under ``bench
proxy``'s load fell from 7.3-10.1 to 5.5-6.0 µs with it (docs/performance.md).

The cost is latency of at most one turn's work (the reads that came
together), and none for a lone request: its turn ends with its answer.
Every sender's bytes keep their order; a sender that closes sends what it
holds first (:meth:`Sender.send_out`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

__all__ = ["Outbox", "Sender"]

log = logging.getLogger("powgate.sidecar")


class Sender(Protocol):
    def send_out(self) -> None:
        """Write what was held (the outbox calls it once per :meth:`Outbox.post`; a
        sender that closes calls it first itself, and a later call finds nothing)."""


class Outbox:
    """The senders holding writes this turn; each is sent once, at the turn's end."""

    __slots__ = ("_senders",)

    def __init__(self) -> None:
        self._senders: list[Sender] = []

    def post(self, sender: Sender) -> None:
        """Call ``sender.send_out()`` at the end of this turn (callers post once per turn)."""
        senders = self._senders
        senders.append(sender)
        if len(senders) == 1:
            # Ready callbacks run after this turn's reads, before the loop waits again.
            asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        senders, self._senders = self._senders, []
        for sender in senders:
            try:
                sender.send_out()
            except Exception:
                # One sender's failure must not hold the others' answers.
                log.exception("sending held writes failed")
