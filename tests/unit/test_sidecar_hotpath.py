"""The sidecar's hot-path pieces: loop metrics, the challenge stock, the event loop, memory."""

from __future__ import annotations

import asyncio
import gc
import socket
from typing import Any

import pytest

from powgate import Challenge, Issuer, KeyRing, MemoryReplayCache, Reason, Verifier, solve
from powgate_sidecar._challenges import FRESH_SECONDS, MAX_BATCH, MAX_SHELVES, ChallengeStock
from powgate_sidecar._loop import new_event_loop
from powgate_sidecar._metrics import LoopHistogram, Metrics
from powgate_testbed.fuzz_http import Harness

# -- loop-local metrics ---------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], [0, 0, 0, 0]),
        # "le": a value equal to a bound lands in that bound's bucket.
        ([0.1], [1, 1, 1, 1]),
        ([0.1000001], [0, 1, 1, 1]),
        ([0.0, -1.0], [2, 2, 2, 2]),
        ([1.0, 5.0], [0, 1, 2, 2]),
        ([5.0000001, float("inf")], [0, 0, 0, 2]),
        ([0.05, 0.5, 3.0, 50.0], [1, 2, 3, 4]),
    ],
)
def test_loop_histogram_buckets_are_cumulative_less_or_equal(
    values: list[float], expected: list[int]
) -> None:
    histogram = LoopHistogram("h_seconds", "h", buckets=(0.1, 1.0, 5.0))
    for value in values:
        histogram.observe(value)
    samples = histogram.family().samples
    buckets = [s.value for s in samples if s.name == "h_seconds_bucket"]
    assert buckets == expected
    count = next(s.value for s in samples if s.name == "h_seconds_count")
    assert count == len(values)


def test_metrics_expose_hot_path_series_like_library_types() -> None:
    metrics = Metrics()
    registry = metrics.registry
    # Unlabelled histograms exist before their first observation, as before.
    assert registry.get_sample_value("powgate_verify_seconds_count") == 0
    assert registry.get_sample_value("powgate_inflight") == 0
    metrics.count_request(route="chat", outcome="challenged", reason="missing")
    metrics.count_request(route="chat", outcome="challenged", reason="missing")
    metrics.observe_upstream(route="chat", status=503, seconds=0.004)
    metrics.observe_upstream(route="chat", status=999, seconds=0.004)
    metrics.inflight += 3
    labels = {"route": "chat", "outcome": "challenged", "reason": "missing"}
    assert registry.get_sample_value("powgate_requests_total", labels) == 2
    assert registry.get_sample_value("powgate_inflight") == 3
    for status_class in ("5xx", "other"):
        labels = {"route": "chat", "status_class": status_class, "le": "0.005"}
        assert registry.get_sample_value("powgate_upstream_seconds_bucket", labels) == 1


# -- the challenge stock --------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _stock() -> tuple[ChallengeStock, Clock, Verifier]:
    keyring = KeyRing.generate()
    clock = Clock()
    stock = ChallengeStock(Issuer(keyring=keyring), clock=clock)
    return stock, clock, Verifier(keyring=keyring, replay=MemoryReplayCache())


def test_stock_hands_out_each_challenge_once_and_each_verifies() -> None:
    stock, _, verifier = _stock()
    documents = [stock.take(binding="p:r", difficulty=20, ttl=60) for _ in range(3 * MAX_BATCH)]
    assert len(set(documents)) == len(documents)
    for document in documents[:: MAX_BATCH // 2]:
        challenge = Challenge.from_json(document)
        assert challenge.maxnumber == 20
        payload = challenge.solution(solve(challenge).number).encode()
        assert verifier.verify(payload, binding="p:r").reason is Reason.OK


#: The shelf of unpriced challenges of route binding "p:r".
SHELF = ("p:r", None, 1.0)


def test_stock_batches_follow_demand_and_go_stale() -> None:
    stock, clock, _ = _stock()
    sizes = []
    for _ in range(8):
        before = len(stock._shelves[SHELF].documents) if SHELF in stock._shelves else 0
        stock.take(binding="p:r", difficulty=20, ttl=60)
        shelf = stock._shelves[SHELF]
        if before == 0:
            sizes.append(shelf.size)
        # Drain the shelf while it is fresh: demand outruns the batch.
        while shelf.documents:
            stock.take(binding="p:r", difficulty=20, ttl=60)
    # A quiet start issues one; each batch emptied while fresh doubles, up to the cap.
    assert sizes == [1, 2, 4, 8, 16, 32, MAX_BATCH, MAX_BATCH]
    # A stale shelf is not served from; what was left over halves the next batch.
    stock.take(binding="p:r", difficulty=20, ttl=60)
    left = set(stock._shelves[SHELF].documents)
    assert left
    clock.now += FRESH_SECONDS + 0.5
    assert stock.take(binding="p:r", difficulty=20, ttl=60) not in left
    assert stock._shelves[SHELF].size == MAX_BATCH // 2


def test_each_client_has_its_shelf_and_the_shelves_are_bounded() -> None:
    """A flood from many clients, each priced for itself, cannot grow the stock without bound."""
    stock, _, verifier = _stock()
    for i in range(MAX_SHELVES + 100):
        stock.take(binding="p:r", difficulty=20, ttl=60, client=f"c{i}", factor=2.0)
    assert len(stock._shelves) == MAX_SHELVES
    mine = Challenge.from_json(
        stock.take(binding="p:r", difficulty=20, ttl=60, client="me", factor=2.0)
    )
    assert (mine.params.client, mine.params.factor, mine.maxnumber) == ("me", "2", 40)
    payload = mine.solution(solve(mine).number).encode()
    assert verifier.verify(payload, binding="p:r", client="c1").reason is Reason.WRONG_CLIENT


def test_restock_drops_challenges_of_the_old_configuration_and_keys() -> None:
    stock, _, old_keys = _stock()
    stock.take(binding="p:r", difficulty=20, ttl=60)
    rotated = KeyRing.generate()
    stock.restock(Issuer(keyring=rotated))
    new = Challenge.from_json(stock.take(binding="p:r", difficulty=40, ttl=60))
    assert new.maxnumber == 40
    payload = new.solution(solve(new).number).encode()
    assert old_keys.verify(payload, binding="p:r").reason is Reason.BAD_SIGNATURE
    assert Verifier(keyring=rotated, replay=None).verify(payload).reason is Reason.OK


# -- the event loop -------------------------------------------------------------


def test_loop_connects_to_numeric_addresses_without_resolving() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def no_resolving(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"getaddrinfo{args} was called")

        loop.getaddrinfo = no_resolving  # type: ignore[method-assign]
        async with server:
            with socket.socket() as sock:
                sock.setblocking(False)
                await loop.sock_connect(sock, ("127.0.0.1", port))
                assert sock.getpeername() == ("127.0.0.1", port)
            with socket.socket() as free:
                free.bind(("127.0.0.1", 0))
                closed = free.getsockname()[1]
            with socket.socket() as sock:
                sock.setblocking(False)
                with pytest.raises(ConnectionRefusedError):
                    await loop.sock_connect(sock, ("127.0.0.1", closed))

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(scenario())


def test_the_sidecars_loop_turns_nagle_off_on_the_connections_it_accepts() -> None:
    """The client connection does not set TCP_NODELAY itself: the loop does it.

    A refusal or an answer's head leaves in one small write; with Nagle's
    algorithm on it would wait for the client's ACK of the previous one.
    """
    seen: list[int] = []
    accepted = asyncio.Event()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()
            accepted.set()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Probe, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.wait_for(accepted.wait(), timeout=10)
            writer.close()
        finally:
            server.close()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(scenario())
    assert seen == [1]


# -- memory -----------------------------------------------------------------------


def test_forwarded_requests_leave_nothing_for_the_cycle_collector() -> None:
    """An exchange and the forward consuming its body refer to each other: the pair
    (with the request and their lists) must be freed when the answer is done, not
    left for the cycle collector, whose passes a busy sidecar pays for."""
    harness = Harness()
    paid = b"GET /b HTTP/1.1\r\nHost: x\r\nX-Powgate-Solution: @SOL@\r\n\r\n"
    try:
        harness.run(paid)  # warm: what is made once is not counted
        found = {}
        for count in (1, 20):
            gc.collect()
            gc.disable()
            try:
                harness.run(paid * count)
                found[count] = gc.collect()
            finally:
                gc.enable()
        assert harness.upstream_requests == 1 + 1 + 20
        # The connection itself (it and its parser) is a cycle, once per connection.
        assert found[20] == found[1]
    finally:
        harness.loop.close()
