"""Hostile input, counted: generated solution payloads and config documents, and what they did.

``python -m powgate_testbed.fuzz --payloads 1000000 --configs 1000000`` feeds
the verifier and the sidecar's config loader with generated input and checks
three things of every case: nothing raised where a verdict or a validation
error was due (a *crash*), no solution of a challenge this run did not issue
was accepted (a *forgery*), and no challenge's solution was accepted twice (a
*replay*). It prints the counts and exits non-zero when any of them is not 0.

Payloads are drawn from a mix of generators: random bytes; valid solutions
mutated at the byte, the JSON and the salt-parameter level (numbers,
signatures, expiry, key id, difficulty, binding, algorithm, types, sizes,
surrogates); solutions re-sent (replays); and solutions signed with a key
the verifier does not hold. Config documents are a valid rendered config
mutated likewise, plus random JSON, parsed as a sidecar parses them (fields
it does not know are ignored and counted); an accepted document is also compiled
into the sidecar's routing table and every route issues a challenge, and a
replay store it names is made into the sidecar's store client (no
connection), which is what the sidecar does with it. Priced payloads (``--priced``) are
challenges priced per client, verified under random clients and debts,
with a fourth check: none is accepted *cheapened* (see :func:`fuzz_priced`).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError

from powgate import (
    Challenge,
    Issuer,
    KeyRing,
    MemoryReplayCache,
    Reason,
    Verifier,
    solve,
)
from powgate.config import REPLAY_STORE_CONTRACT, SidecarConfig
from powgate_sidecar._routes import RouteTable
from powgate_sidecar._store import RedisStore

__all__ = ["Counts", "fuzz_configs", "fuzz_payloads", "fuzz_priced", "main"]

_BINDING: Final = "ai/chat:default"
_DIFFICULTY: Final = 20
_TTL: Final = 600.0
#: Interesting values for numbers, strings and salt parameters.
_NUMBERS: Final = (0, -1, 1, 2**31, 2**40, 2**40 + 1, 2**63, 2**64 + 7, 10**400, 1.5, float("nan"))
_STRINGS: Final = ("", " ", "\x00", "\ud800", "é", "A" * 5000, "../", "%00", "&", "?", "=")
_PARAMS: Final = ("expires", "kid", "max", "bind", "x")


@dataclass
class Counts:
    """What a run tried and found."""

    cases: int = 0
    crashes: int = 0
    forged: int = 0
    replayed: int = 0
    #: Priced challenges accepted for another client, or below what their client owed.
    cheapened: int = 0
    accepted: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def record_crash(self, case: object, exc: BaseException) -> None:
        self.crashes += 1
        if len(self.examples) < 5:
            self.examples.append(f"{type(exc).__name__}: {str(exc)[:200]} on {str(case)[:200]!r}")

    @property
    def clean(self) -> bool:
        return self.crashes == self.forged == self.replayed == self.cheapened == 0


# -- solution payloads --------------------------------------------------------------


def _encode(document: Any) -> bytes:
    return base64.b64encode(
        json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")
    )


def _issue(issuer: Issuer) -> Challenge:
    issued = issuer.issue(difficulty=_DIFFICULTY, ttl=_TTL, binding=_BINDING)
    # These issuers run the default SHA-256: ALTCHA v1 challenges.
    assert isinstance(issued, Challenge)
    return issued


def _document(challenge: Challenge, number: int) -> dict[str, Any]:
    return {
        "algorithm": challenge.algorithm,
        "challenge": challenge.challenge,
        "number": number,
        "salt": challenge.salt,
        "signature": challenge.signature,
    }


class _Payloads:
    """A pool of solved challenges and the mutators that turn them into hostile input."""

    def __init__(self, rng: random.Random, *, issuer: Issuer, stranger: Issuer) -> None:
        self._rng = rng
        self._issuer = issuer
        self._stranger = stranger
        self._pool: list[tuple[Challenge, int]] = []
        self.issued: set[str] = set()
        self._mutators: list[Callable[[], bytes | str]] = [
            self._random_bytes,
            self._fresh_valid,
            self._replay,
            self._byte_flip,
            self._field_value,
            self._salt_param,
            self._stranger_signed,
            self._json_shapes,
            self._truncated,
        ]

    def _solved(self) -> tuple[Challenge, int]:
        if len(self._pool) < 64 or self._rng.random() < 0.02:
            challenge = _issue(self._issuer)
            self.issued.add(challenge.challenge)
            self._pool.append((challenge, solve(challenge).number))
            if len(self._pool) > 256:
                self._pool.pop(0)
        return self._rng.choice(self._pool)

    def next(self) -> bytes | str:
        return self._rng.choice(self._mutators)()

    def _random_bytes(self) -> bytes:
        size = self._rng.choice((0, 1, 8, 64, 512, 2048, 2049, 4096))
        raw = self._rng.randbytes(size)
        return base64.b64encode(raw) if self._rng.random() < 0.5 else raw

    def _fresh_valid(self) -> bytes:
        challenge = _issue(self._issuer)
        self.issued.add(challenge.challenge)
        return _encode(_document(challenge, solve(challenge).number))

    def _replay(self) -> bytes:
        return _encode(_document(*self._solved()))

    def _byte_flip(self) -> bytes:
        raw = bytearray(json.dumps(_document(*self._solved())).encode())
        for _ in range(self._rng.randint(1, 4)):
            raw[self._rng.randrange(len(raw))] = self._rng.randrange(256)
        return base64.b64encode(bytes(raw))

    def _field_value(self) -> bytes:
        document: dict[str, Any] = _document(*self._solved())
        key = self._rng.choice(list(document))
        document[key] = self._rng.choice(
            [*_NUMBERS, *_STRINGS, None, True, [], {}, [document[key]], {"$": document[key]}]
        )
        return _encode(document)

    def _salt_param(self) -> bytes:
        challenge, number = self._solved()
        salt = challenge.salt
        param = self._rng.choice(_PARAMS)
        value = self._rng.choice([str(v) for v in _NUMBERS] + list(_STRINGS) + ["k0", _BINDING])
        match self._rng.randrange(3):
            case 0:  # append, or repeat, a parameter
                salt = f"{salt}{param}={value}&"
            case 1:  # replace one in place
                salt = salt.replace(f"{param}=", f"{param}={value}&{param}=", 1)
            case _:  # drop the parameter section altogether
                salt = salt.split("?", 1)[0]
        document = _document(challenge, number)
        document["salt"] = salt
        return _encode(document)

    def _stranger_signed(self) -> bytes:
        challenge = _issue(self._stranger)
        return _encode(_document(challenge, solve(challenge).number))

    def _json_shapes(self) -> bytes:
        document = _document(*self._solved())
        text = self._rng.choice(
            [
                json.dumps([document]),
                json.dumps(document) + json.dumps(document),
                json.dumps({**document, "number": str(document["number"])}),
                json.dumps(document).replace("{", "{" + '"number": 0, ', 1),  # duplicate key
                "[" * 10_000,
                json.dumps(document, indent=self._rng.randint(0, 40)),
                "null",
                '"' + "A" * 3000 + '"',
            ]
        )
        return base64.b64encode(text.encode())

    def _truncated(self) -> bytes:
        payload = _encode(_document(*self._solved()))
        return payload[: self._rng.randrange(len(payload))]


def fuzz_payloads(count: int, *, seed: int) -> Counts:
    """Verify ``count`` generated payloads; a fresh verifier keeps single use across them."""
    rng = random.Random(seed)
    ring = KeyRing.generate(kid="k1")
    verifier = Verifier(keyring=ring, replay=MemoryReplayCache(max_entries=max(1024, count)))
    payloads = _Payloads(
        rng,
        issuer=Issuer(keyring=ring),
        stranger=Issuer(keyring=KeyRing.generate(kid="k1")),
    )
    counts = Counts()
    accepted: set[str] = set()
    for _ in range(count):
        payload = payloads.next()
        counts.cases += 1
        try:
            verdict = verifier.verify(payload, binding=_BINDING, min_difficulty=_DIFFICULTY)
        except Exception as exc:  # the verifier must never raise: counted, not propagated
            counts.record_crash(payload, exc)
            continue
        counts.reasons[verdict.reason.value] = counts.reasons.get(verdict.reason.value, 0) + 1
        if verdict.reason is not Reason.OK:
            continue
        counts.accepted += 1
        challenge = _accepted_challenge(payload)
        if challenge not in payloads.issued:
            counts.forged += 1
        elif challenge in accepted:
            counts.replayed += 1
        accepted.add(challenge)
    return counts


# -- priced challenges ------------------------------------------------------------------

_CLIENTS: Final = ("c1", "c2", "c3")
_FACTORS: Final = (0.001, 0.1, 0.5, 1.0, 1.5, 4.0, 64.0)


def fuzz_priced(count: int, *, seed: int) -> Counts:
    """Verify ``count`` payloads of per-client priced challenges under random scopes.

    Challenges are priced for one of a few clients at a factor (discounts
    included), solved, then re-sent, edited at their ``ck``/``f``
    parameters, or sent unpriced; each is verified as a random client owing
    a random factor, or where prices are not per client. An accepted
    solution must be one this run issued (else *forged*), accepted once
    (else *replayed*), and must not be *cheapened*: priced for the client
    presenting it and at least the minimum times its factor; honoured as a
    discount only by a verifier that prices per client; unpriced only for
    a client owing no more than the base price.
    """
    rng = random.Random(seed)
    ring = KeyRing.generate(kid="k1")
    issuer = Issuer(keyring=ring)
    verifier = Verifier(keyring=ring, replay=MemoryReplayCache(max_entries=max(1024, count)))
    #: challenge digest → (client it was priced for or None, factor, difficulty)
    issued: dict[str, tuple[str | None, float, int]] = {}
    pool: list[tuple[Challenge, int]] = []
    counts = Counts()
    accepted: set[str] = set()

    def fresh() -> tuple[Challenge, int]:
        client = rng.choice((*_CLIENTS, None))
        factor = rng.choice(_FACTORS)
        extra: dict[str, Any] = {} if client is None else {"client": client, "factor": factor}
        challenge = issuer.issue(difficulty=_DIFFICULTY, ttl=_TTL, binding=_BINDING, **extra)
        assert isinstance(challenge, Challenge)
        signed = challenge.params
        read = float(signed.factor) if signed.factor is not None else 1.0
        issued[challenge.challenge] = (signed.client, read, challenge.maxnumber)
        solved = (challenge, solve(challenge).number)
        pool.append(solved)
        if len(pool) > 256:
            pool.pop(0)
        return solved

    for _ in range(count):
        challenge, number = fresh() if not pool or rng.random() < 0.6 else rng.choice(pool)
        document = _document(challenge, number)
        if rng.random() < 0.3:
            param = rng.choice(("ck", "f", "max"))
            value = rng.choice(("c1", "c2", "0", "0.001", "64", "", "1e3", "-1"))
            salt = document["salt"]
            document["salt"] = rng.choice(
                (
                    f"{salt}{param}={value}&",
                    salt.replace(f"{param}=", f"{param}={value}&{param}=", 1),
                    salt.replace(f"&{param}=", "&x=", 1),
                )
            )
        payload = _encode(document)
        client = rng.choice((*_CLIENTS, None))
        owed = rng.choice((0.1, 1.0, 2.0, 8.0))
        floor = rng.choice((0, _DIFFICULTY, 2 * _DIFFICULTY))
        counts.cases += 1
        try:
            verdict = verifier.verify(
                payload, binding=_BINDING, min_difficulty=floor, client=client, owed=owed
            )
        except Exception as exc:  # the verifier must never raise: counted, not propagated
            counts.record_crash(payload, exc)
            continue
        counts.reasons[verdict.reason.value] = counts.reasons.get(verdict.reason.value, 0) + 1
        if verdict.reason is not Reason.OK:
            continue
        counts.accepted += 1
        digest = _accepted_challenge(payload)
        record = issued.get(digest)
        if record is None:
            counts.forged += 1
            continue
        if digest in accepted:
            counts.replayed += 1
        accepted.add(digest)
        priced_for, factor, difficulty = record
        if priced_for is None:
            fair = client is None or owed <= 1.0
        elif client is not None:
            fair = client == priced_for and difficulty >= floor * factor
        else:
            fair = difficulty >= floor * max(factor, 1.0)
        if not fair:
            counts.cheapened += 1
    return counts


def _accepted_challenge(payload: bytes | str) -> str:
    raw = base64.b64decode(payload)
    return str(json.loads(raw)["challenge"])


# -- config documents ---------------------------------------------------------------


def _valid_config() -> dict[str, Any]:
    config = SidecarConfig.from_dict(
        {
            "policy": "ai/chat",
            "difficulty": 50_000,
            "minDifficulty": 1000,
            "routes": [
                {"name": "chat", "paths": ["/v1/chat/*"], "difficultyMultiplier": 2},
                {"name": "rest", "paths": ["/*"], "methods": ["POST", "PUT"]},
            ],
            "queue": {"maxConcurrent": 8},
            "contract": REPLAY_STORE_CONTRACT,
            "replayStore": {"address": "valkey.cache.svc:6379", "timeoutMilliseconds": 50},
        }
    )
    document: dict[str, Any] = json.loads(config.to_json())
    return document


def _paths(document: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    yield prefix
    if isinstance(document, dict):
        for key, value in document.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from _paths(value, (*prefix, index))


def _mutated_config(rng: random.Random, base: dict[str, Any]) -> bytes:
    document = json.loads(json.dumps(base))
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(list(_paths(document))[1:])
        parent: Any = document
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        match rng.randrange(4):
            case 0 if isinstance(parent, dict):
                parent.pop(last, None)
            case 1 if isinstance(parent, dict):
                parent[rng.choice([*map(str, _PARAMS), "unknownField", "version"])] = rng.choice(
                    _NUMBERS
                )
            case 2:
                parent[last] = rng.choice(
                    [*_NUMBERS, *_STRINGS, None, True, [], {}, ["/*"] * 100, [{}] * 3]
                )
            case _:
                value = parent[last]
                if isinstance(value, int | float) and not isinstance(value, bool):
                    factor = rng.choice((-1, 0, 2**20, 2**40, 1e300))
                    parent[last] = value * factor if abs(value) < 2**500 else -value
                elif isinstance(value, str):
                    parent[last] = value + rng.choice(_STRINGS)
    text = json.dumps(document, allow_nan=True, ensure_ascii=False)
    if rng.random() < 0.05:
        raw = bytearray(text.encode("utf-8", "surrogatepass"))
        raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    return text.encode("utf-8", "surrogatepass")


def fuzz_configs(count: int, *, seed: int) -> Counts:
    """Load ``count`` generated documents as the sidecar does, and use the accepted ones."""
    rng = random.Random(seed)
    base = _valid_config()
    issuer = Issuer(keyring=KeyRing.generate(kid="k1"))
    counts = Counts()
    for _ in range(count):
        document = _mutated_config(rng, base)
        counts.cases += 1
        try:
            config, ignored = SidecarConfig.parse(document)
        except ValidationError:
            counts.reasons["invalid"] = counts.reasons.get("invalid", 0) + 1
            continue
        except Exception as exc:  # only a ValidationError is an answer
            counts.record_crash(document, exc)
            continue
        counts.accepted += 1
        if ignored:
            counts.reasons["fields ignored"] = counts.reasons.get("fields ignored", 0) + 1
        try:
            table = RouteTable(config)
            issuer_for = Issuer(
                keyring=issuer.keyring, algorithm=config.algorithm, params=config.kdf_params()
            )
            for route in table.routes:
                issuer_for.issue(difficulty=route.difficulty, ttl=1, binding=route.binding)
            if config.replay_store is not None:
                counts.reasons["with a store"] = counts.reasons.get("with a store", 0) + 1
                RedisStore(config.replay_store, credentials=None)
        except Exception as exc:  # an accepted document must be usable: a crash is a 500
            counts.record_crash(document, exc)
    return counts


# -- command line -------------------------------------------------------------------


def _report(name: str, counts: Counts, seconds: float) -> None:
    print(
        f"{name}: {counts.cases} cases in {seconds:.1f} s, {counts.crashes} crashes, "
        f"{counts.forged} forged accepted, {counts.replayed} replays accepted, "
        f"{counts.cheapened} cheapened, {counts.accepted} accepted"
    )
    print("  outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.reasons.items())))
    for example in counts.examples:
        print(f"  crash: {example}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m powgate_testbed.fuzz", description=__doc__)
    parser.add_argument("--payloads", type=int, default=100_000, help="solution payloads")
    parser.add_argument("--configs", type=int, default=100_000, help="config documents")
    parser.add_argument(
        "--priced", type=int, default=100_000, help="payloads of per-client priced challenges"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seeds the mix of generated cases (challenges themselves are random)",
    )
    args = parser.parse_args(argv)
    clean = True
    for name, run, count in (
        ("payloads", fuzz_payloads, args.payloads),
        ("configs", fuzz_configs, args.configs),
        ("priced", fuzz_priced, args.priced),
    ):
        started = time.perf_counter()
        counts = run(count, seed=args.seed)
        _report(name, counts, time.perf_counter() - started)
        clean = clean and counts.clean
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
