"""Every verification reason, driven through a real Issuer, Verifier and replay cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from powgate import (
    MAX_PAYLOAD_BYTES,
    Challenge,
    Issuer,
    KeyRing,
    MemoryReplayCache,
    Reason,
    Verifier,
    solve,
)

NOW = 1_800_000_000.0
BINDING = "team/chat:completions"


@dataclass
class Bench:
    """An issuer and a verifier sharing a ring and a clock the test moves."""

    ring: KeyRing = field(default_factory=KeyRing.generate)
    now: float = NOW
    cache: MemoryReplayCache = field(default_factory=MemoryReplayCache)

    def clock(self) -> float:
        return self.now

    @property
    def issuer(self) -> Issuer:
        return Issuer(keyring=self.ring, clock=self.clock)

    @property
    def verifier(self) -> Verifier:
        return Verifier(keyring=self.ring, replay=self.cache, clock=self.clock)

    def challenge(
        self,
        *,
        difficulty: int = 500,
        binding: str | None = BINDING,
        client: str | None = None,
        factor: float = 1.0,
    ) -> Challenge:
        issued = self.issuer.issue(
            difficulty=difficulty, ttl=60, binding=binding, client=client, factor=factor
        )
        assert isinstance(issued, Challenge)
        return issued

    def payload(self, **options: Any) -> str:
        challenge = self.challenge(**options)
        return challenge.solution(solve(challenge).number).encode()

    def signed(self, *, salt: str, number: int = 7) -> str:
        """A payload for an arbitrary salt, signed with the active key (a server's privilege)."""
        work = hashlib.sha256(f"{salt}{number}".encode()).hexdigest()
        signature = hmac.new(self.ring.signing_key.secret, work.encode(), "sha256").hexdigest()
        return Challenge("SHA-256", work, 1000, salt, signature).solution(number).encode()


def edit(payload: str, **changes: Any) -> str:
    """Re-encode ``payload`` with some fields replaced (``None`` removes a field)."""
    data = json.loads(base64.b64decode(payload))
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return b64json(data)


def b64json(data: Any) -> str:
    return base64.b64encode(json.dumps(data).encode()).decode()


def field_of(payload: str, name: str) -> Any:
    return json.loads(base64.b64decode(payload))[name]


Case = Callable[[Bench], tuple[str | bytes | None, dict[str, Any]]]

CASES: list[tuple[str, Reason, Case]] = [
    ("valid", Reason.OK, lambda b: (b.payload(), {"binding": BINDING})),
    ("valid, binding not checked", Reason.OK, lambda b: (b.payload(), {})),
    ("valid bytes payload", Reason.OK, lambda b: (b.payload().encode(), {"binding": BINDING})),
    ("none", Reason.MISSING, lambda b: (None, {})),
    ("empty", Reason.MISSING, lambda b: ("", {})),
    ("oversized", Reason.OVERSIZED, lambda b: ("A" * (MAX_PAYLOAD_BYTES + 1), {})),
    ("not base64", Reason.MALFORMED, lambda b: ("***", {})),
    ("non-ascii", Reason.MALFORMED, lambda b: ("é" * 8, {})),
    ("base64 of junk", Reason.MALFORMED, lambda b: (base64.b64encode(b"\xff\xfe").decode(), {})),
    ("not JSON", Reason.MALFORMED, lambda b: (base64.b64encode(b"hello").decode(), {})),
    ("trailing data", Reason.MALFORMED, lambda b: (base64.b64encode(b"{} {}").decode(), {})),
    ("JSON list", Reason.MALFORMED, lambda b: (b64json([1, 2]), {})),
    ("deep nesting", Reason.MALFORMED, lambda b: (base64.b64encode(b"[" * 1500).decode(), {})),
    ("number missing", Reason.MALFORMED, lambda b: (edit(b.payload(), number=None), {})),
    ("number is a bool", Reason.MALFORMED, lambda b: (edit(b.payload(), number=True), {})),
    ("number negative", Reason.MALFORMED, lambda b: (edit(b.payload(), number=-1), {})),
    ("number too big", Reason.MALFORMED, lambda b: (edit(b.payload(), number=2**53), {})),
    ("number a float", Reason.MALFORMED, lambda b: (edit(b.payload(), number=1.5), {})),
    ("salt missing", Reason.MALFORMED, lambda b: (edit(b.payload(), salt=None), {})),
    ("salt empty", Reason.MALFORMED, lambda b: (edit(b.payload(), salt=""), {})),
    ("challenge a number", Reason.MALFORMED, lambda b: (edit(b.payload(), challenge=5), {})),
    ("signature a list", Reason.MALFORMED, lambda b: (edit(b.payload(), signature=["a"]), {})),
    ("algorithm null", Reason.MALFORMED, lambda b: (edit(b.payload(), algorithm=None), {})),
    ("SHA-1", Reason.UNKNOWN_ALGORITHM, lambda b: (edit(b.payload(), algorithm="SHA-1"), {})),
    ("made up", Reason.UNKNOWN_ALGORITHM, lambda b: (edit(b.payload(), algorithm="X" * 99), {})),
    (
        "unknown kid",
        Reason.UNKNOWN_KEY,
        lambda b: (edit(b.payload(), salt=f"ab?expires={int(NOW) + 60}&kid=nope&"), {}),
    ),
    (
        "ambiguous kid",
        Reason.UNKNOWN_KEY,
        lambda b: (b.signed(salt=f"ab?expires={int(NOW) + 60}&kid=k1&kid=k1&"), {}),
    ),
    (
        "signature flipped",
        Reason.BAD_SIGNATURE,
        lambda b: (edit((p := b.payload()), signature=field_of(p, "signature")[::-1]), {}),
    ),
    (
        "signature non-ascii",
        Reason.BAD_SIGNATURE,
        lambda b: (edit(b.payload(), signature="ü" * 64), {}),
    ),
    (
        "challenge swapped",
        Reason.BAD_SIGNATURE,
        lambda b: (edit(b.payload(), challenge="0" * 64), {}),
    ),
    (
        "salt edited (difficulty lowered)",
        Reason.WRONG_NUMBER,
        lambda b: (
            edit((p := b.payload()), salt=field_of(p, "salt").replace("max=500", "max=5")),
            {},
        ),
    ),
    ("no expires", Reason.EXPIRED, lambda b: (b.signed(salt="ab?kid=k1&"), {})),
    (
        "ambiguous expires",
        Reason.EXPIRED,
        lambda b: (b.signed(salt=f"ab?expires={int(NOW) + 60}&expires=9999999999&"), {}),
    ),
    ("expired", Reason.EXPIRED, lambda b: (b.signed(salt=f"ab?expires={int(NOW) - 1}&"), {})),
    (
        "wrong number",
        Reason.WRONG_NUMBER,
        lambda b: (edit((p := b.payload()), number=field_of(p, "number") + 1), {}),
    ),
    ("other route", Reason.WRONG_BINDING, lambda b: (b.payload(), {"binding": "team/chat:other"})),
    ("unbound", Reason.WRONG_BINDING, lambda b: (b.payload(binding=None), {"binding": BINDING})),
    ("too easy", Reason.INSUFFICIENT, lambda b: (b.payload(), {"min_difficulty": 501})),
    ("exactly enough", Reason.OK, lambda b: (b.payload(), {"min_difficulty": 500})),
    (
        "no max parameter",
        Reason.INSUFFICIENT,
        lambda b: (b.signed(salt=f"ab?expires={int(NOW) + 60}&"), {"min_difficulty": 1}),
    ),
    # Per-client prices (docs/pricing.md): a priced challenge counts for its client only,
    # at its factor; where prices are per client, an unpriced one only for clients owing 1x.
    (
        "priced, spent by its client",
        Reason.OK,
        lambda b: (b.payload(client="c1", factor=4), {"client": "c1", "min_difficulty": 500}),
    ),
    (
        "priced, spent by another client",
        Reason.WRONG_CLIENT,
        lambda b: (b.payload(client="c1", factor=4), {"client": "c2"}),
    ),
    (
        "priced, factor times the minimum not met",
        Reason.INSUFFICIENT,
        lambda b: (b.payload(client="c1", factor=4), {"client": "c1", "min_difficulty": 501}),
    ),
    (
        "discounted, spent by its client",
        Reason.OK,
        lambda b: (b.payload(client="c1", factor=0.1), {"client": "c1", "min_difficulty": 500}),
    ),
    (
        "discounted, spent by another client",
        Reason.WRONG_CLIENT,
        lambda b: (b.payload(client="c1", factor=0.1), {"client": "c2", "min_difficulty": 500}),
    ),
    (
        "discounted, spent where prices are not per client",
        Reason.INSUFFICIENT,
        lambda b: (b.payload(client="c1", factor=0.1), {"min_difficulty": 500}),
    ),
    (
        "penalised, spent where prices are not per client",
        Reason.OK,
        lambda b: (b.payload(client="c1", factor=4), {"min_difficulty": 500}),
    ),
    (
        "unpriced, spent by a client owing more",
        Reason.INSUFFICIENT,
        lambda b: (b.payload(), {"client": "c1", "owed": 2.0}),
    ),
    (
        "unpriced, spent by a client owing the base price",
        Reason.OK,
        lambda b: (b.payload(), {"client": "c1", "owed": 1.0}),
    ),
    (
        "unreadable factor",
        Reason.MALFORMED,
        lambda b: (b.signed(salt=f"ab?expires={int(NOW) + 60}&max=1000&ck=c1&f=1e3&"), {}),
    ),
    (
        "client without a factor",
        Reason.MALFORMED,
        lambda b: (b.signed(salt=f"ab?expires={int(NOW) + 60}&max=1000&ck=c1&"), {"client": "c1"}),
    ),
]


@pytest.mark.parametrize(("reason", "case"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reason(reason: Reason, case: Case) -> None:
    bench = Bench()
    payload, options = case(bench)
    verdict = bench.verifier.verify(payload, **options)
    assert verdict.reason is reason, verdict.cause
    assert verdict.ok is (reason is Reason.OK)


def test_a_priced_challenge_signs_who_pays_and_how_much() -> None:
    challenge = Bench().challenge(difficulty=500, client="c1", factor=2.5004)
    params = challenge.params
    assert (params.client, params.factor, params.difficulty) == ("c1", "2.5", 1250)
    assert challenge.maxnumber == 1250


@pytest.mark.parametrize(
    ("difficulty", "factor", "expected"),
    [
        (500, 1.0, 500),
        (500, 0.0, 1),  # never below 1 (an exempt caller gets no challenge at all)
        (3, 0.5, 2),  # rounded up: the client pays at least its share
        (2**40, 64.0, 2**40),  # never above what the verifier accepts
        (1000, 0.0004, 1),  # factors are signed with three decimals
    ],
)
def test_priced_difficulty(difficulty: int, factor: float, expected: int) -> None:
    challenge = Bench().challenge(difficulty=difficulty, client="c1", factor=factor)
    assert challenge.maxnumber == expected


def test_every_reason_is_covered() -> None:
    # VERIFIER_BUSY (a full derivation pool) is covered in test_core_schemes.py,
    # REPLAY_STORE_UNAVAILABLE (a shared store down) in integration/test_replay_store.py.
    others = {
        Reason.REPLAYED,
        Reason.REPLAY_CACHE_FULL,
        Reason.VERIFIER_BUSY,
        Reason.REPLAY_STORE_UNAVAILABLE,
    }
    assert {case[1] for case in CASES} | others == set(Reason)


def test_ok_verdict_carries_difficulty_and_expiry() -> None:
    bench = Bench()
    verdict = bench.verifier.verify(bench.payload(difficulty=1234))
    assert (verdict.reason, verdict.difficulty, verdict.expires) == (Reason.OK, 1234, NOW + 60)


def test_expiry_is_inclusive_of_the_last_second() -> None:
    bench = Bench()
    payload = bench.payload()
    bench.now = NOW + 60
    assert bench.verifier.check(payload)[0].ok
    bench.now = NOW + 61
    assert bench.verifier.check(payload)[0].reason is Reason.EXPIRED


def test_replayed() -> None:
    bench = Bench()
    payload = bench.payload()
    assert bench.verifier.verify(payload).ok
    assert bench.verifier.verify(payload).reason is Reason.REPLAYED
    # The same solution in URL-safe base64 is still the same solution.
    urlsafe = base64.urlsafe_b64encode(base64.b64decode(payload)).decode()
    assert bench.verifier.verify(urlsafe).reason is Reason.REPLAYED


def test_replay_cache_full_fails_closed() -> None:
    bench = Bench(cache=MemoryReplayCache(max_entries=1))
    first, second = bench.payload(), bench.payload()
    assert bench.verifier.verify(first).ok
    assert bench.verifier.verify(second).reason is Reason.REPLAY_CACHE_FULL
    assert bench.verifier.verify(first).reason is Reason.REPLAYED


def test_without_a_replay_cache_a_solution_verifies_again() -> None:
    bench = Bench()
    verifier = Verifier(keyring=bench.ring, replay=None, clock=bench.clock)
    payload = bench.payload()
    assert verifier.verify(payload).ok
    assert verifier.verify(payload).ok


def test_check_returns_the_replay_key_only_when_valid() -> None:
    bench = Bench()
    payload = bench.payload()
    verdict, key = bench.verifier.check(payload)
    assert verdict.ok
    assert key == bytes.fromhex(field_of(payload, "challenge"))
    rejected, no_key = bench.verifier.check(edit(payload, number=10**6))
    assert (rejected.reason, no_key) == (Reason.WRONG_NUMBER, None)
    # check() does not claim: verify() still admits the solution once.
    assert bench.verifier.verify(payload).ok


def test_challenge_with_percent_encoded_binding() -> None:
    bench = Bench()
    binding = "ns/pol:route with space&more=1"
    payload = bench.payload(binding=binding)
    assert "%26" in field_of(payload, "salt")
    assert bench.verifier.verify(payload, binding=binding).ok


def test_issuer_rejects_out_of_range_difficulty_and_unknown_algorithm() -> None:
    bench = Bench()
    with pytest.raises(ValueError, match="difficulty"):
        bench.issuer.issue(difficulty=0, ttl=60)
    with pytest.raises(ValueError, match="difficulty"):
        bench.issuer.issue(difficulty=(1 << 40) + 1, ttl=60)
    with pytest.raises(ValueError, match="unknown algorithm"):
        Issuer(keyring=bench.ring, algorithm="MD5")


def test_sha512_challenges_verify() -> None:
    bench = Bench()
    challenge = Issuer(keyring=bench.ring, algorithm="SHA-512", clock=bench.clock).issue(
        difficulty=300, ttl=60
    )
    assert len(challenge.challenge) == 128
    assert bench.verifier.verify(challenge.solution(solve(challenge).number).encode()).ok
