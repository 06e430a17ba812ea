"""What per-client pricing adds to one request, next to what verification costs anyway.

* quoting a request (the sidecar's ``Pricer.quote``): client key, trusted
  callers, the sketch's update, the reputation list; for a few clients
  (the sketch's hit path) and for a flood of new keys (every request
  evicts: key-space exhaustion), with and without trusted callers and a
  full reputation list;
* the same quotes when rates are also counted across sidecars (a policy
  with a shared store): the request path adds a tally and a lookup;
* issuing and verifying a priced challenge against an unpriced one;
* the reference, measured in the same run: one SHA-256 and one HMAC-SHA256
  (the irreducible work of one verification, as in ``bench core``).

``python -m bench proxy`` measures the whole request path; this isolates
the part pricing adds. Every figure is the best of several interleaved runs.

Then, with Debian's ``redis-server`` (started for the run, on loopback):
what the once-a-second flush of those tallies costs, for a few keys and
for the most one flush sends (``MAX_KEYS_PER_FLUSH``): wall time (one
pipelined round trip) and the sidecar's CPU time, which is its share of
one core per second.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import best_seconds, table
from powgate import Issuer, KeyRing, MemoryReplayCache, Verifier, solve
from powgate.config import ReplayStoreSpec, SidecarConfig
from powgate.pricing import ApiKeyHashes, api_key_digest, client_tag
from powgate.reputation import MAX_ENTRIES, ReputationEntry, ReputationIndex, network_key
from powgate_sidecar._pricing import Pricer, TrustCounts
from powgate_sidecar._shared_rates import MAX_KEYS_PER_FLUSH, SharedRates
from powgate_sidecar._store import RedisStore
from powgate_testbed.store_server import StoreNotFoundError, StoreServer

#: Requests per timed run.
REQUESTS = 20_000
REPEAT = 7
#: Flushes per timed run of the flush rows.
FLUSHES = 200
#: A store nobody talks to on the request path (quotes only tally and look up).
_UNUSED_STORE = ReplayStoreSpec(address="127.0.0.1:9")
BINDING = "default/policy:chat"
WALL = time.time()

TRUSTED = [
    {"name": "office", "cidrs": ["10.0.0.0/8", "172.16.0.0/12", "fd00::/8"], "multiplier": 0},
    {"name": "partners", "apiKeys": {"secretName": "keys"}, "multiplier": 0.1},
    {
        "name": "mesh",
        "identity": {"field": "URI", "values": ["spiffe://cluster.local/ns/a/sa/b"]},
        "multiplier": 0,
    },
]


def _pricer(*, trusted: bool, listed: int, shared: bool = False) -> Pricer:
    config = SidecarConfig.model_validate(
        {"pricing": {"enabled": True}, "trustedCallers": TRUSTED if trusted else []}
    )
    entries = [
        ReputationEntry(
            key=network_key((32, (100 << 24) + (i << 8)), 24), factor=8, expires=int(WALL) + 3600
        )
        for i in range(listed)
    ]
    return Pricer(
        config=config,
        api_keys=ApiKeyHashes(callers={"partners": [api_key_digest("sk-partner")]}),
        reputation=ReputationIndex(entries),
        sketch=None,
        trust=TrustCounts(),
        now=0.0,
        shared=(
            SharedRates(store=RedisStore(_UNUSED_STORE, credentials=None), policy="bench")
            if shared
            else None
        ),
    )


def _no_headers(_: bytes) -> bytes | None:
    return None


def _bearer(name: bytes) -> bytes | None:
    # A customer's own key, unknown to the policy: the common case on an API.
    return b"Bearer sk-customer-0123456789" if name == b"authorization" else None


def main() -> None:
    few = [f"203.0.113.{i}" for i in range(50)]
    flood = [f"{(i >> 16) % 200 + 20}.{(i >> 8) & 255}.{i & 255}.9" for i in range(REQUESTS)]

    def quoting(pricer: Pricer, clients: list[str], header: Callable[[bytes], bytes | None]):
        now = [0.0]

        def run() -> None:
            quote = pricer.quote
            t = now[0]
            for index in range(REQUESTS):
                quote(
                    client=clients[index % len(clients)],
                    from_proxy=False,
                    header=header,
                    now=t,
                    wall=WALL,
                )
                t += 1e-4
            now[0] = t

        return run

    ring = KeyRing.generate()
    issuer = Issuer(keyring=ring)
    tag = client_tag("203.0.113.0/24")

    def issue(priced: bool) -> Callable[[], None]:
        def run() -> None:
            for _ in range(REQUESTS):
                if priced:
                    issuer.issue(
                        difficulty=50_000, ttl=300, binding=BINDING, client=tag, factor=3.5
                    )
                else:
                    issuer.issue(difficulty=50_000, ttl=300, binding=BINDING)

        return run

    def payloads(priced: bool) -> list[str]:
        out = []
        for _ in range(REQUESTS):
            extra = {"client": tag, "factor": 1.5} if priced else {}
            challenge = issuer.issue(difficulty=20, ttl=3600, binding=BINDING, **extra)  # type: ignore[arg-type]
            out.append(challenge.solution(solve(challenge).number).encode())  # type: ignore[union-attr]
        return out

    plain_payloads, priced_payloads = payloads(False), payloads(True)

    def verify(priced: bool) -> Callable[[], None]:
        def run() -> None:
            check = Verifier(keyring=ring, replay=MemoryReplayCache()).verify
            if priced:
                for payload in priced_payloads:
                    check(payload, binding=BINDING, min_difficulty=10, client=tag, owed=1.5)
            else:
                for payload in plain_payloads:
                    check(payload, binding=BINDING, min_difficulty=10)

        return run

    key, message, work = ring.signing_key.secret, b"0" * 64, b"9a1c0e6f3b2d7a8e4c5b6d7e?e&" * 3

    def primitives() -> None:
        sha256, digest = hashlib.sha256, hmac.digest
        for _ in range(REQUESTS):
            sha256(work).digest()
            digest(key, message, "sha256")

    runs: dict[str, Callable[[], object]] = {
        "quote: 50 clients, pricing only": quoting(
            _pricer(trusted=False, listed=0), few, _no_headers
        ),
        "quote: 50 clients, trusted callers, a customer's key": quoting(
            _pricer(trusted=True, listed=0), few, _bearer
        ),
        f"quote: 50 clients, {MAX_ENTRIES}-entry reputation list": quoting(
            _pricer(trusted=False, listed=MAX_ENTRIES), few, _no_headers
        ),
        "quote: every request a new /24 (sketch full, evicting)": quoting(
            _pricer(trusted=False, listed=0), flood, _no_headers
        ),
        "quote: new /24s, trusted callers and full list": quoting(
            _pricer(trusted=True, listed=MAX_ENTRIES), flood, _bearer
        ),
        "quote: 50 clients, counted across sidecars": quoting(
            _pricer(trusted=False, listed=0, shared=True), few, _no_headers
        ),
        "quote: new /24s, counted across sidecars": quoting(
            _pricer(trusted=False, listed=0, shared=True), flood, _no_headers
        ),
        "issue a challenge": issue(False),
        "issue a priced challenge (ck, f)": issue(True),
        "verify a valid payload": verify(False),
        "verify a valid priced payload": verify(True),
        "reference: 1 SHA-256 + 1 HMAC-SHA256": primitives,
    }
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(REPEAT):
        for name, run in runs.items():
            best[name] = min(best[name], best_seconds(run, repeat=1))
    reference = best["reference: 1 SHA-256 + 1 HMAC-SHA256"]
    rows = [
        (name, f"{seconds / REQUESTS * 1e6:.2f}", f"{seconds / reference:.2f}x")
        for name, seconds in best.items()
    ]
    print(f"Per-client pricing, best of {REPEAT} interleaved runs of {REQUESTS} requests")
    print(table(("operation", "us/request", "vs reference"), rows))
    print()
    _flushes()


def _flushes() -> None:
    """The once-a-second flush of tallies to a real Redis server, and reading totals back."""
    with tempfile.TemporaryDirectory(prefix="powgate-bench-") as root:
        try:
            server = StoreServer(root=Path(root) / "store")
            server.start()
        except StoreNotFoundError:
            print("flush rows skipped: redis-server not installed (make system-deps)")
            return
        try:
            rows = asyncio.run(_time_flushes(server.address))
        finally:
            server.stop()
    print(
        f"Flushing tallies to the shared store (redis-server on loopback), best of {REPEAT} "
        f"runs of {FLUSHES} flushes"
    )
    print(table(("flush", "ms wall", "ms CPU", "CPU share at 1/s"), rows))


async def _time_flushes(address: str) -> list[tuple[str, str, str, str]]:
    store = RedisStore(
        ReplayStoreSpec(address=address, timeout_milliseconds=2000), credentials=None
    )
    pricing = SidecarConfig.model_validate({"pricing": {"enabled": True}}).pricing
    secret = KeyRing.generate().signing_key.secret
    rows = []
    try:
        for keys in (50, MAX_KEYS_PER_FLUSH):
            rates = SharedRates(store=store, policy="bench")
            names = [f"v4:198.{i >> 8}.{i & 255}.0/24" for i in range(keys)]
            wall = cpu = float("inf")
            for _ in range(REPEAT):
                started, started_cpu = time.perf_counter(), time.process_time()
                for _ in range(FLUSHES):
                    for name in names:
                        rates.note(name, 0.0)
                    await rates.flush(pricing=pricing, secret=secret)
                wall = min(wall, (time.perf_counter() - started) / FLUSHES)
                cpu = min(cpu, (time.process_time() - started_cpu) / FLUSHES)
            assert rates.flushes == {"ok": REPEAT * FLUSHES}, rates.flushes
            rows.append(
                (
                    f"{keys} keys (tally included)",
                    f"{wall * 1e3:.2f}",
                    f"{cpu * 1e3:.2f}",
                    f"{cpu:.2%}",
                )
            )
    finally:
        await store.close()
    return rows
