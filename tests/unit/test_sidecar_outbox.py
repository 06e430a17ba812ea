"""The outbox: writes held to the end of the loop's turn, then sent back to back."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from powgate_sidecar import Limits
from powgate_sidecar._forward import UpstreamConnection, UpstreamPool
from powgate_sidecar._outbox import Outbox
from powgate_testbed.fuzz_http import ClientTransport


class _Sender:
    def __init__(self, name: str, sent: list[str], *, fails: bool = False) -> None:
        self.name = name
        self.sent = sent
        self.fails = fails

    def send_out(self) -> None:
        self.sent.append(self.name)
        if self.fails:
            raise RuntimeError("broken sender")


async def test_senders_posted_in_a_turn_are_sent_once_each_in_order_at_its_end() -> None:
    outbox = Outbox()
    sent: list[str] = []
    for name in ("a", "b", "c"):
        outbox.post(_Sender(name, sent))
    assert sent == []
    await asyncio.sleep(0)
    assert sent == ["a", "b", "c"]
    await asyncio.sleep(0)
    assert sent == ["a", "b", "c"]  # nothing is sent twice
    outbox.post(_Sender("d", sent))  # a later turn gets its own send
    await asyncio.sleep(0)
    assert sent == ["a", "b", "c", "d"]


async def test_a_failing_sender_does_not_hold_the_others(caplog: pytest.LogCaptureFixture) -> None:
    outbox = Outbox()
    sent: list[str] = []
    outbox.post(_Sender("broken", sent, fails=True))
    outbox.post(_Sender("after", sent))
    with caplog.at_level(logging.ERROR, logger="powgate.sidecar"):
        await asyncio.sleep(0)
    assert sent == ["broken", "after"]
    assert "sending held writes failed" in caplog.text
    outbox.post(_Sender("next", sent))  # the outbox still works
    await asyncio.sleep(0)
    assert sent[-1] == "next"


class _Upstream(ClientTransport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))


async def test_upstream_requests_of_a_turn_leave_at_its_end_one_write_each_in_order() -> None:
    outbox = Outbox()
    pool = UpstreamPool("http://127.0.0.1:9", limits=Limits(), outbox=outbox)
    transports = []
    for _ in range(2):
        conn = UpstreamConnection(pool)
        transport = _Upstream()
        conn.connection_made(transport)
        transports.append((conn, transport))
    for index, (conn, _) in enumerate(transports):
        conn.write(b"head %d|" % index)
        conn.write(b"body %d" % index)
    assert [transport.written for _, transport in transports] == [[], []]
    await asyncio.sleep(0)
    assert [transport.written for _, transport in transports] == [
        [b"head 0|body 0"],
        [b"head 1|body 1"],
    ]
    # Closed before its turn ended: what it held is dropped, not written.
    conn, transport = transports[0]
    conn.write(b"late")
    conn.close()
    await asyncio.sleep(0)
    assert transport.written == [b"head 0|body 0"]
