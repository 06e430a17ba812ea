"""The traffic generator: open-loop arrivals of legitimate clients and bots.

Each class has its own arrival process (Poisson or evenly spaced) at a rate
that can be changed while the run goes on (the demo's scenario does). An
arrival starts one logical request as its own task, unless the class already
has ``max_in_flight`` requests outstanding: then the arrival is counted as
dropped, so a stalled target cannot make the generator grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import ipaddress
import json
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import aiohttp

from powgate import (
    DEEPSEEK_HEADER,
    SOLUTION_HEADER,
    SOLVE_MS_HEADER,
    AnyChallenge,
    ChallengeV2,
    DeepSeekChallenge,
    ProtocolError,
    SolveError,
    parse_challenge,
)
from powgate._dispatch import expected_work

from ._load_stats import OUTCOMES, ClassStats, Counter
from ._load_work import HashBudget, SolverPool, Work

__all__ = [
    "DEFAULT_ATTACK_BUDGET",
    "DEFAULT_BROWSER_HASH_RATE",
    "AttackMode",
    "AttackTraffic",
    "LegitTraffic",
    "LoadGenerator",
    "LoadReport",
    "RequestShape",
    "check_target",
    "client_address",
]

#: Hashes per second of a browser solver on a typical laptop (SHA-256 in a Web Worker).
DEFAULT_BROWSER_HASH_RATE: Final = 1.5e6
#: The bots' shared compute by default: several legitimate clients' worth.
DEFAULT_ATTACK_BUDGET: Final = 4 * DEFAULT_BROWSER_HASH_RATE
#: Answers that carry a challenge to solve (428, or 401 with ``WWW-Authenticate: PoW``).
_CHALLENGE_STATUSES: Final = frozenset({401, 428})
_OVERLOAD_STATUSES: Final = frozenset({429, 503})
#: A challenge document is a few hundred bytes; a larger error body is not one.
_MAX_CHALLENGE_BYTES: Final = 16 * 1024
Arrivals = Literal["poisson", "uniform"]
ClassName = Literal["legit", "attack"]


class AttackMode(enum.StrEnum):
    """What bots do with a challenge."""

    NONE = "none"  # never solve
    REPLAY = "replay"  # solve once, then send that same payload every time
    FORGE = "forge"  # send payloads with random numbers or random signatures
    HONEST = "honest"  # solve every challenge at native speed, within the hash budget


def _check_rate(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number ≥ 0")


#: The most networks one class can come from (a /24 each, see :func:`client_address`).
MAX_SOURCES: Final = 1 << 14
#: The header a proxy in front names the client in; the sidecar believes it from a
#: trusted proxy only (its ``--trusted-proxies``).
FORWARDED_FOR: Final = "X-Forwarded-For"


def _check_sources(name: str, value: int) -> None:
    if not 0 <= value <= MAX_SOURCES:
        raise ValueError(f"{name} sources must be within 0..{MAX_SOURCES}")


def client_address(name: ClassName, index: int) -> str:
    """The address of client ``index`` of a class, each in a /24 of its own.

    Legitimate clients come from 198.18.0.0/15 and bots from 100.64.0.0/10
    (ranges reserved for benchmarks and carrier-grade NAT, never routed to
    anyone else); the generator names them in ``X-Forwarded-For`` as the
    proxy in front of a service would.
    """
    if not 0 <= index < MAX_SOURCES:
        raise ValueError(f"client index must be within 0..{MAX_SOURCES - 1}")
    if name == "legit":
        return f"198.{18 + index // 256 % 2}.{index % 256}.{7 + index // 512}"
    return f"100.{64 + index // 256}.{index % 256}.9"


@dataclass(frozen=True, slots=True)
class LegitTraffic:
    """Legitimate clients: ``rate`` requests per second, solving no faster than ``hash_rate``."""

    rate: float = 1.0
    hash_rate: float = DEFAULT_BROWSER_HASH_RATE
    #: Solutions a client sends for one request before it gives up.
    max_attempts: int = 3
    #: Networks the clients come from (see :func:`client_address`); 0: all from this host.
    sources: int = 0

    def __post_init__(self) -> None:
        _check_rate("legit rate", self.rate)
        _check_sources("legit", self.sources)
        if not math.isfinite(self.hash_rate) or self.hash_rate <= 0:
            raise ValueError("legit hash rate must be a positive number")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")


@dataclass(frozen=True, slots=True)
class AttackTraffic:
    """Bots: ``rate`` requests per second in ``mode``, sharing ``budget`` hashes per second."""

    rate: float = 0.0
    mode: AttackMode = AttackMode.NONE
    budget: float = DEFAULT_ATTACK_BUDGET
    #: Networks the bots come from (see :func:`client_address`); 0: all from this host.
    sources: int = 0

    def __post_init__(self) -> None:
        _check_rate("attack rate", self.rate)
        _check_sources("attack", self.sources)
        if not math.isfinite(self.budget) or self.budget <= 0:
            raise ValueError("attack budget must be a positive number of hashes per second")


@dataclass(frozen=True, slots=True)
class RequestShape:
    """The chat completion every client asks for."""

    path: str = "/v1/chat/completions"
    model: str = "powgate-standin"
    max_tokens: int = 16
    stream: bool = False

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError("path must start with '/'")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")

    def body(self) -> bytes:
        return json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": "Say something."}],
                "max_tokens": self.max_tokens,
                "stream": self.stream,
            }
        ).encode()


def check_target(url: str, *, allow_remote: bool) -> str:
    """``url`` without a trailing slash; refuses anything but loopback unless ``allow_remote``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"target must be an http(s) URL with a host, got {url!r}")
    if not allow_remote and not _is_loopback(parts.hostname):
        raise ValueError(
            f"target host {parts.hostname!r} is not a loopback address; "
            "load against other hosts must be asked for explicitly (allow_remote / --allow-remote)"
        )
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    # Names other than localhost are not resolved: what they resolve to can change.
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What a run measured: one row per second per class, and totals."""

    #: Seconds during which arrivals were launched (the series also covers the drain after).
    duration: float
    config: dict[str, Any]
    series: list[dict[str, Any]]
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Class:
    """One client class's arrivals, in-flight tasks and statistics."""

    def __init__(self, *, name: ClassName, rate: float) -> None:
        self.name = name
        self.rate = rate
        self.stats = ClassStats()
        self.tasks: set[asyncio.Task[None]] = set()
        self.rate_changed = asyncio.Event()

    def set_rate(self, rate: float) -> None:
        _check_rate(f"{self.name} rate", rate)
        self.rate = rate
        self.rate_changed.set()


class LoadGenerator:
    """Drives legitimate clients and bots against ``target`` (the sidecar's base URL)."""

    def __init__(
        self,
        *,
        target: str,
        legit: LegitTraffic | None = None,
        attack: AttackTraffic | None = None,
        request: RequestShape | None = None,
        arrivals: Arrivals = "poisson",
        max_in_flight: int = 256,
        timeout: float = 30.0,
        allow_remote: bool = False,
        seed: int | None = None,
    ) -> None:
        if arrivals not in ("poisson", "uniform"):
            raise ValueError("arrivals must be 'poisson' or 'uniform'")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        self.target = check_target(target, allow_remote=allow_remote)
        self.legit = legit or LegitTraffic()
        self.attack = attack or AttackTraffic()
        self.request = request or RequestShape()
        self._arrivals = arrivals
        self._max_in_flight = max_in_flight
        self._timeout = timeout
        self._rng = random.Random(seed)
        self._body = self.request.body()
        self._classes: dict[ClassName, _Class] = {}
        self._started: float | None = None
        self._legit_solver = SolverPool()
        self._attack_solver = SolverPool()
        self._budget = HashBudget(rate=self.attack.budget)
        # What bots keep between requests: the payload they replay, the challenge they forge from.
        self._replay_payload: Work | None = None
        self._replay_lock = asyncio.Lock()
        self._last_challenge: AnyChallenge | None = None

    # -- live control and observation (the demo's scenario and live view) ----

    def set_legit_rate(self, rate: float) -> None:
        self._class("legit").set_rate(rate)

    def set_attack_rate(self, rate: float) -> None:
        self._class("attack").set_rate(rate)

    @property
    def elapsed(self) -> float:
        return 0.0 if self._started is None else time.monotonic() - self._started

    def series(self) -> list[dict[str, Any]]:
        """Rows for the seconds completed so far: ``{"t": s, "legit": {...}, "attack": {...}}``."""
        return self._series(seconds=int(self.elapsed))

    def _series(self, *, seconds: int) -> list[dict[str, Any]]:
        columns = {
            name: group.stats.series(seconds=seconds) for name, group in self._classes.items()
        }
        return [
            {"t": t, **{name: rows[t] for name, rows in columns.items()}} for t in range(seconds)
        ]

    def _class(self, name: ClassName) -> _Class:
        if name not in self._classes:
            initial = self.legit.rate if name == "legit" else self.attack.rate
            self._classes[name] = _Class(name=name, rate=initial)
        return self._classes[name]

    # -- the run ---------------------------------------------------------------

    async def run(
        self, *, duration: float, max_requests: int | None = None, drain: float = 5.0
    ) -> LoadReport:
        """Generate load for ``duration`` seconds (or until ``max_requests`` per class have
        been sent), give requests in flight up to ``drain`` seconds to finish, and report.
        """
        if not math.isfinite(duration) or duration <= 0:
            raise ValueError("duration must be a positive number of seconds")
        if max_requests is not None and max_requests < 1:
            raise ValueError("max_requests must be at least 1")
        groups = [self._class("legit"), self._class("attack")]
        if self.legit.rate > 0:
            self._legit_solver.start()
        if self.attack.mode in (AttackMode.HONEST, AttackMode.REPLAY) and self.attack.rate > 0:
            self._attack_solver.start()
        connector = aiohttp.TCPConnector(limit=2 * self._max_in_flight, force_close=False)
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                self._started = time.monotonic()
                schedulers = [
                    asyncio.create_task(
                        self._schedule(group, session=session, max_requests=max_requests)
                    )
                    for group in groups
                ]
                # With max_requests, the run ends early once every class that has
                # traffic to send has sent that many; otherwise it lasts `duration`.
                finite = [
                    task for task, group in zip(schedulers, groups, strict=True) if group.rate > 0
                ]
                if max_requests is not None and finite:
                    await asyncio.wait(finite, timeout=duration)
                else:
                    await asyncio.wait(schedulers, timeout=duration)
                for scheduler in schedulers:
                    scheduler.cancel()
                for result in await asyncio.gather(*schedulers, return_exceptions=True):
                    if isinstance(result, Exception):
                        raise result
                ended = self.elapsed
                await self._drain(groups, grace=drain)
        finally:
            self._legit_solver.close()
            self._attack_solver.close()
        # The series runs to the end of the drain: answers and searches that end
        # after the last arrival belong to it too.
        seconds = math.ceil(self.elapsed)
        return LoadReport(
            duration=ended,
            config=self._config(),
            series=self._series(seconds=seconds),
            summary={group.name: group.stats.summary() for group in groups},
        )

    def _config(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "legit": {**asdict(self.legit), "rate": self._class("legit").rate},
            "attack": {**asdict(self.attack), "rate": self._class("attack").rate},
            "request": asdict(self.request),
            "arrivals": self._arrivals,
            "max_in_flight": self._max_in_flight,
        }

    async def _drain(self, groups: list[_Class], *, grace: float) -> None:
        pending = {task for group in groups for task in group.tasks}
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()
            # Cancelled requests record themselves as aborted.
            await asyncio.gather(*still, return_exceptions=True)

    def _gap(self, rate: float) -> float:
        return self._rng.expovariate(rate) if self._arrivals == "poisson" else 1 / rate

    async def _schedule(
        self, group: _Class, *, session: aiohttp.ClientSession, max_requests: int | None
    ) -> None:
        loop = asyncio.get_running_loop()
        launched = 0
        next_at = loop.time()
        rate = group.rate
        if rate > 0:
            next_at += self._gap(rate)
        while max_requests is None or launched < max_requests:
            group.rate_changed.clear()
            delay = math.inf if rate <= 0 else next_at - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        group.rate_changed.wait(), None if math.isinf(delay) else delay
                    )
                if group.rate_changed.is_set():
                    # A new rate applies from now on, not after the old gap.
                    rate = group.rate
                    next_at = loop.time() + (self._gap(rate) if rate > 0 else 0)
                    continue
            # Behind schedule (a busy loop), arrivals are launched back to back:
            # an open-loop generator must not slow down because the target does.
            if len(group.tasks) >= self._max_in_flight:
                group.stats.count("dropped", at=self.elapsed)
            else:
                task = asyncio.create_task(self._request(group, session=session))
                group.tasks.add(task)
                task.add_done_callback(group.tasks.discard)
            launched += 1
            next_at += self._gap(rate)

    # -- one logical request -----------------------------------------------------

    async def _request(self, group: _Class, *, session: aiohttp.ClientSession) -> None:
        stats = group.stats
        begun = time.monotonic()
        stats.count("sent", at=self.elapsed)
        outcome: Counter = "aborted"
        # One logical request comes from one client: its challenge is priced for it.
        sources = self.legit.sources if group.name == "legit" else self.attack.sources
        source = client_address(group.name, self._rng.randrange(sources)) if sources else None
        try:
            if group.name == "legit":
                outcome = await self._legit(stats, session=session, begun=begun, source=source)
            else:
                outcome = await self._bot(stats, session=session, begun=begun, source=source)
        except (aiohttp.ClientError, TimeoutError, ProtocolError, SolveError):
            outcome = "errors"
        finally:
            if outcome != "admitted":
                assert outcome in OUTCOMES
                stats.count(outcome, at=self.elapsed)

    async def _legit(
        self,
        stats: ClassStats,
        *,
        session: aiohttp.ClientSession,
        begun: float,
        source: str | None,
    ) -> Counter:
        hash_rate = self.legit.hash_rate

        async def browser_speed(challenge: AnyChallenge) -> Work:
            started = time.monotonic()
            work = await self._legit_solver.solve(challenge)
            # Solve natively, then wait out the difference to the browser's pace.
            await asyncio.sleep(max(0.0, work.hashes / hash_rate - (time.monotonic() - started)))
            return work

        return await self._solving_flow(
            stats,
            session=session,
            begun=begun,
            solver=browser_speed,
            attempts=self.legit.max_attempts,
            source=source,
        )

    async def _bot(
        self,
        stats: ClassStats,
        *,
        session: aiohttp.ClientSession,
        begun: float,
        source: str | None,
    ) -> Counter:
        mode = self.attack.mode
        if mode is AttackMode.HONEST:
            return await self._solving_flow(
                stats,
                session=session,
                begun=begun,
                solver=self._budgeted_solve,
                attempts=1,
                source=source,
            )
        if mode is AttackMode.REPLAY:
            payload = await self._replayable(stats, session=session, source=source)
        elif mode is AttackMode.FORGE and self._last_challenge is not None:
            payload = self._forged(self._last_challenge)
        else:
            payload = None
        status, challenge = await self._post(session, payload=payload, source=source)
        return self._settle(
            stats,
            status=status,
            challenge=challenge,
            sent_solution=payload is not None,
            begun=begun,
        )

    async def _budgeted_solve(self, challenge: AnyChallenge) -> Work:
        expected = round(expected_work(challenge))
        await self._budget.reserve(expected)
        spent = 0
        try:
            work = await self._attack_solver.solve(challenge)
            spent = work.hashes
            return work
        finally:
            self._budget.settle(expected=expected, spent=spent)

    async def _replayable(
        self, stats: ClassStats, *, session: aiohttp.ClientSession, source: str | None
    ) -> Work | None:
        """The one payload replay bots reuse: solved honestly once (within the budget)."""
        async with self._replay_lock:
            if self._replay_payload is None:
                _, challenge = await self._post(session, payload=None, source=source)
                if challenge is None:
                    return None
                self._last_challenge = challenge
                stats.count("challenges", at=self.elapsed)
                started = time.monotonic()
                work = await self._budgeted_solve(challenge)
                stats.solved(
                    at=self.elapsed, hashes=work.hashes, seconds=time.monotonic() - started
                )
                self._replay_payload = work
            return self._replay_payload

    def _forged(self, challenge: AnyChallenge) -> Work:
        # Half wrong answers under a genuine signature, half forged signatures:
        # both must fail, for different counted reasons. Answers are drawn from
        # above the challenge's range, where the issued one never is: a guess
        # inside it would be right once in `difficulty` tries, a solve, not a forgery.
        genuine = self._rng.random() < 0.5
        signature = challenge.signature if genuine else secrets.token_hex(32)
        if isinstance(challenge, ChallengeV2):
            # A made-up key with the right prefix: the most a forger can do for free.
            key = bytes.fromhex(challenge.key_prefix.ljust(2 * challenge.params.key_length, "0"))
            v2 = dataclasses.replace(challenge, signature=signature)
            counter = self._rng.randrange(1 << 32)
            return Work(SOLUTION_HEADER, v2.solution(counter, key).encode(), 0)
        if isinstance(challenge, DeepSeekChallenge):
            # The signature carries its parameters after "?": forge the MAC only.
            _, _, query = challenge.signature.partition("?")
            deepseek = dataclasses.replace(
                challenge, signature=challenge.signature if genuine else f"{signature}?{query}"
            )
            answer = self._rng.randrange(challenge.difficulty, 2 * challenge.difficulty)
            return Work(DEEPSEEK_HEADER, deepseek.solution(answer).encode(), 0)
        forged = dataclasses.replace(challenge, signature=signature)
        number = self._rng.randrange(challenge.maxnumber + 1, 2 * challenge.maxnumber + 2)
        return Work(SOLUTION_HEADER, forged.solution(number).encode(), 0)

    async def _solving_flow(
        self,
        stats: ClassStats,
        *,
        session: aiohttp.ClientSession,
        begun: float,
        solver: Callable[[AnyChallenge], Awaitable[Work]],
        attempts: int,
        source: str | None,
    ) -> Counter:
        """Ask; on a challenge, solve and ask again, sending up to ``attempts`` solutions."""
        payload: Work | None = None
        solve_ms: int | None = None
        sent = 0
        while True:
            status, challenge = await self._post(
                session, payload=payload, solve_ms=solve_ms, source=source
            )
            outcome = self._settle(
                stats,
                status=status,
                challenge=challenge,
                sent_solution=payload is not None,
                begun=begun,
            )
            if outcome not in ("unsolved", "rejected") or challenge is None or sent >= attempts:
                return outcome
            started = time.monotonic()
            work = await solver(challenge)
            seconds = time.monotonic() - started
            stats.solved(at=self.elapsed, hashes=work.hashes, seconds=seconds)
            payload, solve_ms, sent = work, round(seconds * 1000), sent + 1

    def _settle(
        self,
        stats: ClassStats,
        *,
        status: int,
        challenge: AnyChallenge | None,
        sent_solution: bool,
        begun: float,
    ) -> Counter:
        """Count one HTTP answer and say what it means for the logical request."""
        if challenge is not None:
            self._last_challenge = challenge
        if 200 <= status < 300:
            stats.admitted(at=self.elapsed, latency=time.monotonic() - begun)
            return "admitted"
        if status in _CHALLENGE_STATUSES or (sent_solution and status == 403):
            stats.count("refusals" if sent_solution else "challenges", at=self.elapsed)
            return "rejected" if sent_solution else "unsolved"
        if status in _OVERLOAD_STATUSES:
            return "overloaded"
        return "errors"

    async def _post(
        self,
        session: aiohttp.ClientSession,
        *,
        payload: Work | None,
        solve_ms: int | None = None,
        source: str | None = None,
    ) -> tuple[int, AnyChallenge | None]:
        """One HTTP exchange, body read to the end (every event of a stream)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if source is not None:
            headers[FORWARDED_FOR] = source
        if payload is not None:
            headers[payload.header] = payload.payload
        if solve_ms is not None:
            headers[SOLVE_MS_HEADER] = str(solve_ms)
        async with session.post(
            self.target + self.request.path, data=self._body, headers=headers
        ) as response:
            if response.status not in _CHALLENGE_STATUSES and response.status != 403:
                async for _ in response.content.iter_any():
                    pass
                return response.status, None
            body = await response.content.read(_MAX_CHALLENGE_BYTES + 1)
        if response.status == 403 or len(body) > _MAX_CHALLENGE_BYTES:
            return response.status, None
        # A challenge answer that is not a usable challenge is the server's error:
        # it surfaces as ProtocolError and counts as an error.
        return response.status, parse_challenge(body)
