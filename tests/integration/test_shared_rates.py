"""Client rates counted across a policy's sidecars, through a real Redis server.

The attack first: a client spreading its requests over the sidecars, below
the fair rate at each, pays for its total at every one (and, without the
store, the base at each: what the store is for). Then what the store holds
(keyed digests, windows that expire), the store failing (each sidecar
falls back to its own counts, counted, and recovers), an ACL without the
commands, the arithmetic of the sliding window, and the bound on a flush's
work under a flood of new keys. In-process sidecars share the test's event
loop and one key ring, as a policy's sidecars do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from test_replay_store import Fleet
from test_replay_store import fleet as replay_fleet

from powgate import Challenge, solve
from powgate.config import (
    REPLAY_STORE_CONTRACT,
    ReplayStoreSpec,
    RouteConfig,
    SidecarConfig,
    StoreOutage,
)
from powgate.pricing import PricingConfig
from powgate_sidecar._shared_rates import MAX_KEYS_PER_FLUSH, MAX_PENDING, SharedRates
from powgate_sidecar._store import RedisStore
from powgate_testbed.store_server import StoreServer
from waiting import eventually_async

POLICY = "team/chat"
BASE = 200
#: Window = half-life = 10 s; fair rate 1/s. Eight requests in a moment read as
#: 8 * ln 2 / 10 = 0.55/s in a sidecar's own sketch: the base price there.
PRICING = {"enabled": True, "fairRate": 1, "halfLifeSeconds": 10, "maxFactor": 64}
SPREAD = "198.51.100.7"
LIGHT = "203.0.113.9"


def config(store: StoreServer | None, *, address: str | None = None) -> SidecarConfig:
    spec = None
    if store is not None or address is not None:
        spec = ReplayStoreSpec(
            address=address or (store.address if store else ""),
            timeout_milliseconds=300,
            when_unavailable=StoreOutage.FALL_BACK_TO_LOCAL,
        )
    return SidecarConfig.model_validate(
        {
            "contract": REPLAY_STORE_CONTRACT if spec is not None else 1,
            "policy": POLICY,
            "difficulty": BASE,
            "min_difficulty": 1,
            "routes": [RouteConfig(name="chat", paths=["/v1/*"])],
            "replay_store": spec,
            "pricing": PRICING,
        }
    )


class Priced:
    """A fleet of sidecars (test_replay_store's) whose clients the test names."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.sidecars = fleet.sidecars
        self.clients = fleet.clients
        self.sample = fleet.sample

    async def challenge(self, index: int, client: str) -> Challenge:
        """A challenge from sidecar ``index`` for ``client`` (named by the trusted proxy)."""
        response = await self.clients[index].post(
            "/v1/chat", json={}, headers={"X-Forwarded-For": client}
        )
        assert response.status == 428
        return Challenge.from_json(await response.read())

    async def factor(self, index: int, client: str) -> float:
        return float((await self.challenge(index, client)).params.factor or 0)

    def flushed(self, index: int) -> float:
        return self.sample(index, "powgate_shared_rate_flushes_total", {"result": "ok"})

    def flushes(self) -> list[float]:
        """Each sidecar's successful flushes so far: a mark taken *before* the requests
        whose tallies a test waits for. A sidecar flushes only when it has tallies, so a
        mark taken after them may miss the one flush that carried them (a slow machine
        takes more than a flush interval to send them all) and then waits for nothing."""
        return [self.flushed(index) for index in range(len(self.sidecars))]

    async def flushed_since(self, marks: list[float]) -> None:
        """Until every sidecar has flushed (to the store, with success) since ``marks``.

        Bounded by the suite's wait: a flush follows tallies within ``FLUSH_SECONDS``
        (no backoff, also after an outage), so only a store or sidecar that is broken
        outlasts it."""
        await eventually_async(
            lambda: all(self.flushed(i) > mark for i, mark in enumerate(marks)),
            what="a flush at every sidecar",
            interval=0.1,
        )

    async def priced_at_each(
        self, client: str, *, least: float, flushed_after: list[float]
    ) -> list[float]:
        """Once the tallies are in (every sidecar flushed since ``flushed_after``, the
        marks from before the requests): ``client``'s factor at each sidecar, asked until
        it reaches ``least`` (a sidecar reads a key's total back when it flushes a tally
        of it: each question is one)."""
        await self.flushed_since(flushed_after)
        factors = []
        for index in range(len(self.sidecars)):

            async def reached(index: int = index) -> float | None:
                factor = await self.factor(index, client)
                return factor if factor >= least else None

            factors.append(
                await eventually_async(reached, what=f"{least}x at sidecar {index}", interval=0.5)
            )
        return factors


@contextlib.asynccontextmanager
async def fleet(
    cfg: SidecarConfig, *, size: int, credentials: Path | None = None
) -> AsyncIterator[Priced]:
    async with replay_fleet(
        cfg, size=size, credentials=credentials, trusted_proxies=("127.0.0.1/32",)
    ) as f:
        yield Priced(f)


async def spread(f: Priced, client: str, *, each: int) -> list[float]:
    """``each`` challenge fetches of ``client`` at every sidecar: below the fair rate at each.

    Returns the sidecars' flush marks from before the first fetch (for ``priced_at_each``).
    """
    marks = f.flushes()
    for index in range(len(f.sidecars)):
        for _ in range(each):
            await f.challenge(index, client)
    return marks


# -- the attack ----------------------------------------------------------------------------


async def test_a_client_spread_over_the_sidecars_pays_for_its_total_at_each(
    store: StoreServer,
) -> None:
    async with fleet(config(store), size=3) as f:
        sent = await spread(f, SPREAD, each=8)
        # 24 requests in the last window of 10 s: 2.4/s; read up to 3 s after a window's
        # turn, the previous window counts 0.7 of its requests: 1.7/s. Alone, each
        # sidecar saw 0.55/s: the base (the next test).
        await f.priced_at_each(SPREAD, least=1.5, flushed_after=sent)
        assert [await f.factor(i, LIGHT) for i in range(3)] == [1.0, 1.0, 1.0]
        assert f.sample(0, "powgate_shared_rates_up", {"policy": POLICY}) == 1
        assert f.sample(0, "powgate_shared_rate_keys_total", {"result": "sent"}) >= 1
        # What the store holds: one hash per window under the policy's prefix, fields
        # are keyed digests (no client network in it), gone two windows after the last write.
        redis = store.client()
        names = redis.keys(b"powgate:rates:team/chat:10:*")
        assert names
        for name in names:
            fields = redis.hgetall(name)
            assert all(len(field) == 12 for field in fields)
            assert b"198.51.100" not in name + b"".join(fields)
            assert 0 < redis.pttl(name) <= (2 * 10 + 30) * 1000
        # A solution at the fleet's price pays like any other.
        challenge = await f.challenge(1, SPREAD)
        assert challenge.maxnumber >= 1.5 * BASE
        payload = challenge.solution(solve(challenge).number).encode()
        response = await f.clients[2].post(
            "/v1/chat",
            json={},
            headers={"X-Forwarded-For": SPREAD, "X-Powgate-Solution": payload},
        )
        assert response.status == 200


async def test_without_a_store_each_sidecar_prices_by_what_it_sees_alone() -> None:
    """The weakness the store closes: spread thin, the client pays the base everywhere."""
    async with fleet(config(None), size=3) as f:
        await spread(f, SPREAD, each=8)
        for _ in range(4):  # as many questions as the test above may ask, as often
            await asyncio.sleep(0.5)
            assert [await f.factor(i, SPREAD) for i in range(3)] == [1.0, 1.0, 1.0]


# -- the store failing ------------------------------------------------------------------------


async def test_store_down_each_sidecar_falls_back_to_its_own_counts_and_recovers(
    store: StoreServer,
) -> None:
    async with fleet(config(store), size=3) as f:
        sent = await spread(f, SPREAD, each=8)
        await f.priced_at_each(SPREAD, least=1.5, flushed_after=sent)
        store.stop()
        # The next flush with tallies finds the store gone: the fleet's rates are
        # forgotten at once and this sidecar prices by its own counts.
        await f.factor(0, SPREAD)
        await eventually_async(
            lambda: f.sample(0, "powgate_shared_rates_up", {"policy": POLICY}) == 0,
            what="the store seen down",
            interval=0.1,
        )
        assert f.sample(0, "powgate_shared_rate_flushes_total", {"result": "unreachable"}) >= 1
        assert f.sample(0, "powgate_shared_rate_keys_total", {"result": "lost"}) >= 1
        # A dozen requests seen here, seconds ago: under 0.9/s by its own sketch, the base.
        assert await f.factor(0, SPREAD) == 1.0
        assert f.sample(0, "powgate_shared_rate_fallback_requests_total") >= 1
        # Back (empty: the test server keeps nothing): counting across sidecars resumes.
        store.start()
        sent = await spread(f, SPREAD, each=8)
        await f.priced_at_each(SPREAD, least=1.5, flushed_after=sent)
        assert f.sample(0, "powgate_shared_rates_up", {"policy": POLICY}) == 1


@pytest.fixture
def acl_store(tmp_path: Path, store_binary: Path) -> Iterator[StoreServer]:
    """Two users: `replay` may do what the replay store needs only; `powgate` has the
    least ACL docs/sidecar.md gives (replay and client rates)."""
    users = {
        "replay": "on >pw ~powgate:replay:* resetchannels -@all +set +ping",
        "powgate": "on >pw ~powgate:replay:* ~powgate:rates:* resetchannels -@all "
        "+set +ping +hincrby +pexpire +hmget",
    }
    with StoreServer(root=tmp_path / "acl", binary=store_binary, users=users) as server:
        yield server


@pytest.mark.parametrize(("user", "counted"), [("replay", False), ("powgate", True)])
async def test_a_user_without_the_rate_commands_keeps_the_replay_store_and_falls_back(
    acl_store: StoreServer, tmp_path: Path, user: str, counted: bool
) -> None:
    folder = tmp_path / "secret"
    folder.mkdir()
    (folder / "username").write_text(user)
    (folder / "password").write_text("pw")
    async with fleet(config(acl_store), size=3, credentials=folder) as f:
        sent = await spread(f, SPREAD, each=8)
        if counted:
            await f.priced_at_each(SPREAD, least=1.5, flushed_after=sent)
        else:
            await eventually_async(
                lambda: f.sample(0, "powgate_shared_rate_flushes_total", {"result": "auth"}) > 0,
                what="a flush refused",
                interval=0.1,
            )
            assert f.sample(0, "powgate_shared_rates_up", {"policy": POLICY}) == 0
            assert await f.factor(0, SPREAD) == 1.0
        # Single use across the fleet works either way.
        challenge = await f.challenge(0, LIGHT)
        payload = challenge.solution(solve(challenge).number).encode()
        statuses = []
        for index in (0, 1):
            response = await f.clients[index].post(
                "/v1/chat",
                json={},
                headers={"X-Forwarded-For": LIGHT, "X-Powgate-Solution": payload},
            )
            statuses.append(response.status)
        assert statuses == [200, 428]


# -- the arithmetic and the bounds, on the store directly ------------------------------------


@pytest.fixture
async def redis_store(store: StoreServer) -> AsyncIterator[RedisStore]:
    opened = RedisStore(
        ReplayStoreSpec(address=store.address, timeout_milliseconds=2000), credentials=None
    )
    yield opened
    await opened.close()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


SECRET = b"s" * 32
TEN = PricingConfig.model_validate(PRICING)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # (wall time, requests at sidecar a, at sidecar b), ...; a's rate read at the end.
        # One window: everyone's requests over the window's 10 s.
        ([(100.0, 50, 30)], 8.0),
        # The next window, half-way: half the previous window still counts.
        ([(100.0, 50, 30), (115.0, 10, 0)], (80 * 0.5 + 10) / 10),
        # A window with nothing in between: the old counts are out of the sliding window.
        ([(100.0, 50, 30), (131.0, 20, 0)], 2.0),
        # Below the fair rate: read back as unknown (the base price).
        ([(100.0, 5, 4)], 0.0),
    ],
    ids=["one-window", "half-way-into-the-next", "a-window-later", "below-fair"],
)
async def test_the_sliding_window_sums_every_sidecar(
    redis_store: RedisStore, steps: list[tuple[float, int, int]], expected: float
) -> None:
    clock = Clock(0.0)
    a = SharedRates(store=redis_store, policy=POLICY, clock=clock)
    b = SharedRates(store=redis_store, policy=POLICY, clock=clock)
    for now, at_a, at_b in steps:
        clock.now = now
        for _ in range(at_b):
            b.note("v4:198.51.100.0/24", 0.0)
        await b.flush(pricing=TEN, secret=SECRET)
        for _ in range(at_a):
            a.note("v4:198.51.100.0/24", 0.0)
        await a.flush(pricing=TEN, secret=SECRET)
    assert a.note("v4:198.51.100.0/24", 0.0) == pytest.approx(expected)
    assert a.flushes == {"ok": len(steps)}


async def test_a_flood_of_new_keys_costs_one_bounded_flush_and_keeps_the_heavy_key(
    redis_store: RedisStore, store: StoreServer
) -> None:
    clock = Clock(1000.0)
    rates = SharedRates(store=redis_store, policy=POLICY, clock=clock)
    await rates.flush(pricing=TEN, secret=SECRET)  # learns the floor: half the fair rate
    flood = MAX_PENDING + 5_000
    for i in range(flood):
        rates.note(f"v4:10.{i >> 8 & 255}.{i & 255}.0/24", 0.07)
    # Late in the second, the tally full: a key the sketch sees at the fair rate still counts.
    for _ in range(40):
        rates.note("v4:198.51.100.0/24", 1.0)
    await rates.flush(pricing=TEN, secret=SECRET)
    assert rates.keys == {
        "sent": MAX_KEYS_PER_FLUSH,
        "dropped": MAX_PENDING + 1 - MAX_KEYS_PER_FLUSH,
        "untallied": flood - MAX_PENDING,
        "lost": 0,
    }
    # The heaviest went, and reads back at 40 requests over the window.
    assert rates.note("v4:198.51.100.0/24", 1.0) == pytest.approx(4.0)
    (name,) = store.client().keys(b"powgate:rates:*")
    assert store.client().hlen(name) == MAX_KEYS_PER_FLUSH
