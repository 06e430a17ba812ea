"""The traffic generator's scheduling and accounting, against a small challenge server.

The server issues real challenges with ``powgate.Issuer`` and verifies with
``powgate.Verifier`` (a stand-in for the sidecar, which is tested on its own),
and records what it saw, so every client-side count is cross-checked with
the server side.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from powgate import Challenge, Issuer, KdfParams, KeyRing, MemoryReplayCache, Verifier
from powgate_testbed._load_traffic import MAX_SOURCES, client_address
from powgate_testbed.load import (
    AttackMode,
    AttackTraffic,
    LegitTraffic,
    LoadGenerator,
    check_target,
    format_summary,
    main,
)

SOLUTION = "X-Powgate-Solution"
DEEPSEEK = "x-ds-pow-response"
#: A difficulty at which a made-up answer is right once in a billion tries.
UNGUESSABLE = 2**30


class ChallengeServer:
    """Answers 428 + challenge without a valid solution, ``answer`` with one."""

    def __init__(
        self, *, difficulty: int, algorithm: str = "SHA-256", params: KdfParams | None = None
    ) -> None:
        keyring = KeyRing.generate()
        self.difficulty = difficulty
        self.issuer = Issuer(keyring=keyring, algorithm=algorithm, params=params)
        self.verifier = Verifier(keyring=keyring, replay=MemoryReplayCache())
        self.reasons: Counter[str] = Counter()
        self.admitted_numbers: list[int] = []
        self.solve_ms: list[int] = []
        self.answer = 200
        self.challenge_body: bytes | None = None
        self.hold = asyncio.Event()
        self.hold.set()
        #: X-Forwarded-For of every request (None: the header was not sent).
        self.forwarded_for: list[str | None] = []
        #: Who each challenge was handed to, and solutions that came back from someone else.
        self.handed_to: dict[str, str | None] = {}
        self.moved = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        await self.hold.wait()
        self.forwarded_for.append(request.headers.get("X-Forwarded-For"))
        payload = request.headers.get(SOLUTION) or request.headers.get(DEEPSEEK)
        verdict = self.verifier.verify(payload)
        self.reasons[verdict.reason.value] += 1
        if not verdict.ok:
            body = self.challenge_body
            if body is None:
                challenge = self.issuer.issue(difficulty=self.difficulty, ttl=60)
                if isinstance(challenge, Challenge):
                    self.handed_to[challenge.challenge] = self.forwarded_for[-1]
                body = challenge.to_json().encode()
            return web.Response(status=428, body=body, content_type="application/json")
        assert payload is not None
        decoded = json.loads(base64.b64decode(payload))
        digest = decoded.get("challenge")
        if isinstance(digest, str) and self.handed_to.get(digest) != self.forwarded_for[-1]:
            self.moved += 1
        self.admitted_numbers.append(decoded.get("number", decoded.get("answer", -1)))
        if "X-Powgate-Solve-Ms" in request.headers:
            self.solve_ms.append(int(request.headers["X-Powgate-Solve-Ms"]))
        return web.json_response({"ok": True}, status=self.answer)


@pytest.fixture
async def server() -> AsyncIterator[tuple[ChallengeServer, str]]:
    fake = ChallengeServer(difficulty=2000)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield fake, f"http://127.0.0.1:{port}"
    fake.hold.set()
    await runner.cleanup()


def totals(report: Any, name: str) -> dict[str, Any]:
    summary: dict[str, Any] = report.summary[name]
    return summary


async def test_legitimate_clients_solve_and_every_hash_is_accounted(
    server: tuple[ChallengeServer, str],
) -> None:
    fake, url = server
    hash_rate = 200_000.0
    generator = LoadGenerator(
        target=url, legit=LegitTraffic(rate=20, hash_rate=hash_rate), arrivals="uniform"
    )
    report = await generator.run(duration=60, max_requests=6)
    legit = totals(report, "legit")
    assert legit["sent"] == legit["admitted"] == legit["challenges"] == 6
    assert legit["refusals"] == legit["errors"] == legit["dropped"] == 0
    assert legit["success_rate"] == 1.0
    # The client's hash count is exactly the work behind the numbers the server admitted.
    assert legit["hashes"] == sum(number + 1 for number in fake.admitted_numbers)
    assert fake.reasons == {"missing": 6, "ok": 6}
    # Solving is paced at the capped hash rate, and the client says how long it took.
    assert legit["solve_seconds_total"] >= legit["hashes"] / hash_rate
    assert len(fake.solve_ms) == 6
    assert totals(report, "attack")["sent"] == 0
    assert sum(row["legit"]["sent"] for row in report.series) == 6
    assert sum(row["legit"]["hashes"] for row in report.series) == legit["hashes"]


@pytest.mark.parametrize(
    ("algorithm", "params", "header"),
    [
        ("ARGON2ID", KdfParams(cost=1, memory_cost=64, parallelism=1), SOLUTION),
        ("SCRYPT", KdfParams(cost=16, memory_cost=1, parallelism=1), SOLUTION),
        ("DeepSeekHashV1", None, DEEPSEEK),
    ],
)
async def test_every_scheme_is_solved_forged_and_refused(
    algorithm: str, params: KdfParams | None, header: str
) -> None:
    """Legitimate clients and forging bots speak each family's format and header."""
    fake = ChallengeServer(difficulty=64, algorithm=algorithm, params=params)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        legit = LegitTraffic(rate=20, hash_rate=1e6)
        report = await LoadGenerator(target=url, legit=legit, arrivals="uniform").run(
            duration=60, max_requests=4
        )
        assert totals(report, "legit")["admitted"] == 4
        assert totals(report, "legit")["hashes"] >= 4
        # Forgers send made-up answers; at difficulty 64 one in 64 of them is right (a
        # lucky guess, not a forgery), so they meet a difficulty nobody guesses.
        fake.difficulty = UNGUESSABLE
        attack = AttackTraffic(rate=200, mode=AttackMode.FORGE)
        forger = LoadGenerator(target=url, legit=LegitTraffic(rate=0), attack=attack, seed=3)
        # Bots forge from a challenge they were given. At 200/s all 30 requests of a
        # round may leave before the first challenge comes back (busy cores), so a
        # round of one gets them one first.
        first = await forger.run(duration=60, max_requests=1, drain=60)
        assert totals(first, "attack")["challenges"] == 1
        forged = await forger.run(duration=60, max_requests=30)
        assert totals(forged, "attack")["admitted"] == 0
        assert fake.reasons["bad_signature"] > 0
        assert fake.reasons["wrong_number"] > 0
    finally:
        await runner.cleanup()


async def test_clients_from_many_networks_keep_theirs_for_the_whole_request(
    server: tuple[ChallengeServer, str],
) -> None:
    """Each logical request comes from one client's network, challenge and solution alike."""
    fake, url = server
    generator = LoadGenerator(
        target=url,
        legit=LegitTraffic(rate=20, hash_rate=1e7, sources=3),
        arrivals="uniform",
        seed=5,
    )
    await generator.run(duration=60, max_requests=12)
    sent = [value for value in fake.forwarded_for if value is not None]
    assert len(sent) == len(fake.forwarded_for) == 24
    assert set(sent) <= {client_address("legit", i) for i in range(3)}
    assert len(set(sent)) > 1
    assert fake.reasons["ok"] == 12
    assert fake.moved == 0


def test_client_addresses_are_a_network_each_in_reserved_ranges() -> None:
    legit = {client_address("legit", i).rsplit(".", 1)[0] for i in range(512)}
    bots = {client_address("attack", i).rsplit(".", 1)[0] for i in range(MAX_SOURCES)}
    assert len(legit) == 512
    assert len(bots) == MAX_SOURCES
    assert all(a.startswith(("198.18.", "198.19.")) for a in legit)
    assert all(b.startswith("100.") and 64 <= int(b.split(".")[1]) < 128 for b in bots)
    with pytest.raises(ValueError, match="sources"):
        AttackTraffic(sources=MAX_SOURCES + 1)


async def test_bots_that_never_solve_spend_no_hashes(server: tuple[ChallengeServer, str]) -> None:
    fake, url = server
    attack = AttackTraffic(rate=200, mode=AttackMode.NONE)
    report = await LoadGenerator(target=url, legit=LegitTraffic(rate=0), attack=attack).run(
        duration=60, max_requests=30
    )
    bots = totals(report, "attack")
    assert bots["sent"] == bots["challenges"] == bots["unsolved"] == 30
    assert bots["admitted"] == bots["hashes"] == 0
    assert fake.reasons == {"missing": 30}


async def test_forging_bots_are_refused_for_both_reasons(
    server: tuple[ChallengeServer, str],
) -> None:
    fake, url = server
    fake.difficulty = 1_000_000  # a forged number is right once in a million
    attack = AttackTraffic(rate=200, mode=AttackMode.FORGE)
    report = await LoadGenerator(target=url, legit=LegitTraffic(rate=0), attack=attack, seed=7).run(
        duration=60, max_requests=40
    )
    bots = totals(report, "attack")
    assert bots["admitted"] == bots["hashes"] == 0
    assert bots["sent"] == 40
    assert bots["refusals"] + bots["challenges"] == 40
    assert fake.reasons["bad_signature"] > 0
    assert fake.reasons["wrong_number"] > 0
    assert fake.reasons["bad_signature"] + fake.reasons["wrong_number"] == bots["refusals"]


async def test_replaying_bots_get_in_once(server: tuple[ChallengeServer, str]) -> None:
    fake, url = server
    attack = AttackTraffic(rate=100, mode=AttackMode.REPLAY)
    report = await LoadGenerator(
        target=url, legit=LegitTraffic(rate=0), attack=attack, arrivals="uniform"
    ).run(duration=60, max_requests=12)
    bots = totals(report, "attack")
    assert bots["admitted"] == 1
    assert bots["rejected"] == bots["refusals"] == 11
    assert fake.reasons["replayed"] == 11
    assert bots["hashes"] == fake.admitted_numbers[0] + 1


async def test_honest_bots_stay_within_their_hash_budget(
    server: tuple[ChallengeServer, str],
) -> None:
    fake, url = server
    fake.difficulty = 20_000
    budget = 40_000.0
    attack = AttackTraffic(rate=50, mode=AttackMode.HONEST, budget=budget)
    generator = LoadGenerator(target=url, legit=LegitTraffic(rate=0), attack=attack)
    started = time.monotonic()
    report = await generator.run(duration=2.0, drain=0.5)
    elapsed = time.monotonic() - started  # searches may still start while requests drain
    bots = totals(report, "attack")
    assert bots["admitted"] >= 1
    assert bots["hashes"] == sum(number + 1 for number in fake.admitted_numbers)
    # Spent <= budget * time + the initial burst (one second's worth) + what the
    # searches in progress cost beyond their reservation (each at most a difficulty).
    # Unbudgeted, 100 requests would have cost about 1e6 hashes.
    assert bots["hashes"] <= budget * elapsed + budget + 2 * fake.difficulty
    # Most bots are still waiting for budget when the run ends.
    assert bots["aborted"] > bots["admitted"]


async def test_upstream_overload_and_errors_are_told_apart(
    server: tuple[ChallengeServer, str],
) -> None:
    fake, url = server
    fake.answer = 503
    first = await LoadGenerator(target=url, legit=LegitTraffic(rate=50), arrivals="uniform").run(
        duration=60, max_requests=3
    )
    fake.answer = 500
    second = await LoadGenerator(target=url, legit=LegitTraffic(rate=50), arrivals="uniform").run(
        duration=60, max_requests=3
    )
    assert totals(first, "legit")["overloaded"] == 3
    assert totals(second, "legit")["errors"] == 3
    assert totals(first, "legit")["admitted"] == totals(second, "legit")["admitted"] == 0


async def test_a_challenge_that_is_not_one_is_an_error(server: tuple[ChallengeServer, str]) -> None:
    fake, url = server
    fake.challenge_body = b'{"algorithm": "SHA-256", "maxnumber": -1}'
    report = await LoadGenerator(target=url, legit=LegitTraffic(rate=50), arrivals="uniform").run(
        duration=60, max_requests=3
    )
    legit = totals(report, "legit")
    assert legit["errors"] == 3
    assert legit["hashes"] == 0


async def test_client_side_cap_drops_arrivals_and_the_run_stays_bounded(
    server: tuple[ChallengeServer, str],
) -> None:
    fake, url = server
    fake.hold.clear()  # the server never answers
    attack = AttackTraffic(rate=100, mode=AttackMode.NONE)
    generator = LoadGenerator(
        target=url, legit=LegitTraffic(rate=0), attack=attack, max_in_flight=2
    )
    report = await generator.run(duration=60, max_requests=10, drain=0.2)
    bots = totals(report, "attack")
    assert bots["sent"] == bots["aborted"] == 2
    assert bots["dropped"] == 8


async def test_rates_can_change_during_a_run(server: tuple[ChallengeServer, str]) -> None:
    _, url = server
    generator = LoadGenerator(
        target=url, legit=LegitTraffic(rate=0), attack=AttackTraffic(rate=0), arrivals="uniform"
    )
    run = asyncio.create_task(generator.run(duration=1.0))
    await asyncio.sleep(0.2)
    generator.set_attack_rate(50)
    report = await run
    assert totals(report, "attack")["sent"] > 0
    assert totals(report, "legit")["sent"] == 0
    assert report.config["attack"]["rate"] == 50
    with pytest.raises(ValueError, match="rate"):
        generator.set_legit_rate(-1)
    assert "attack" in format_summary(report)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:1", "http://localhost:80", "http://[::1]:8080/", "http://127.9.9.9"]
)
def test_loopback_targets_are_accepted(url: str) -> None:
    assert check_target(url, allow_remote=False) == url.rstrip("/")


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1", "http://example.test", "ftp://127.0.0.1", "127.0.0.1:80"]
)
def test_other_targets_need_an_explicit_flag(url: str) -> None:
    with pytest.raises(ValueError, match=r"loopback|http"):
        check_target(url, allow_remote=False)


def test_remote_target_allowed_when_asked() -> None:
    assert check_target("http://10.0.0.1:80", allow_remote=True) == "http://10.0.0.1:80"


def test_command_line_refuses_remote_targets_and_bad_values(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--target", "http://10.1.2.3:80", "--duration", "1"]) == 2
    assert "loopback" in capsys.readouterr().err
    for argv in (
        ["--duration", "0"],
        ["--duration", "99999"],
        ["--legit-rate", "-1"],
        ["--attack-mode", "x"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["--target", "http://127.0.0.1:1", *argv])
        assert exit_info.value.code == 2
