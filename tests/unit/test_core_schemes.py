"""ALTCHA PoW v2 (key derivations) and DeepSeek's format: issue, solve, verify, abuse.

The abuse cases come first: a v2 verification derives a key (milliseconds
and memory), so nothing that fails a cheap check may reach a derivation, and
a valid payload is spent before its derivation runs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import threading

import pytest

from powgate import (
    ChallengeV2,
    DeepSeekChallenge,
    DerivationPool,
    Issuer,
    KdfAlgorithm,
    KdfParams,
    KeyRing,
    MemoryReplayCache,
    PoolFullError,
    Reason,
    Verifier,
    get_algorithm,
    parse_challenge,
    solve_challenge,
    solve_deepseek,
    solve_v2,
)
from powgate import _deepseek_hash as dsh

RING = KeyRing.generate()
BINDING = "ns/policy:route"
#: Cheap parameters of one try, so that tests derive in microseconds.
SMALL = {
    "PBKDF2/SHA-256": KdfParams(cost=10),
    "PBKDF2/SHA-512": KdfParams(cost=10),
    "ITERATED/SHA-256": KdfParams(cost=3, key_length=32),
    "ITERATED/SHA-384": KdfParams(cost=3, key_length=48),
    "SCRYPT": KdfParams(cost=16, memory_cost=1, parallelism=1),
    "ARGON2ID": KdfParams(cost=1, memory_cost=64, parallelism=1),
}


def issuer(algorithm: str, **kwargs: object) -> Issuer:
    return Issuer(keyring=RING, algorithm=algorithm, params=SMALL.get(algorithm), **kwargs)  # type: ignore[arg-type]


def verifier() -> Verifier:
    return Verifier(keyring=RING, replay=MemoryReplayCache())


def v2_payload(challenge: ChallengeV2) -> str:
    found = solve_v2(challenge)
    return challenge.solution(found.counter, found.derived_key).encode()


def edited(payload: str, edit: object) -> str:
    data = json.loads(base64.b64decode(payload))
    edit(data)  # type: ignore[operator]
    return base64.b64encode(json.dumps(data).encode()).decode()


@pytest.fixture
def derivations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every key derivation (by algorithm name) made while a test runs."""
    calls: list[str] = []
    original = KdfAlgorithm.derive

    def counting(self: KdfAlgorithm, params: KdfParams, salt: bytes, password: bytes) -> bytes:
        calls.append(self.name)
        return original(self, params, salt, password)

    monkeypatch.setattr(KdfAlgorithm, "derive", counting)
    return calls


# -- DeepSeekHashV1 ------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 55, 135, 136, 137, 271, 272, 500])
def test_the_sponge_is_sha3_256_with_all_rounds(size: int) -> None:
    data = os.urandom(size)
    assert dsh.reference_hash(data, first_round=0) == hashlib.sha3_256(data).digest()


@pytest.mark.parametrize("size", [0, 1, 60, 135, 136, 137, 300])
def test_native_hash_is_the_reference(size: int) -> None:
    data = os.urandom(size)
    assert dsh.NATIVE, "powgate._native is not built (make venv builds it)"
    assert dsh.hash_v1(data) == dsh.reference_hash(data)
    # Skipping round 0 makes it a different function from SHA3-256.
    assert dsh.hash_v1(data) != hashlib.sha3_256(data).digest()


@pytest.mark.parametrize("prefix_size", [10, 130, 134, 136, 140])
def test_native_search_finds_answers_across_the_block_boundary(prefix_size: int) -> None:
    prefix = b"s" * prefix_size
    target = dsh.reference_hash(prefix + b"123456")
    assert dsh.search(prefix, target, 100_000, 200_000) == 123456
    assert dsh.search(prefix, target, 0, 123456) == -1


# -- DeepSeek format -----------------------------------------------------------


def deepseek(difficulty: int = 2000, **kwargs: object) -> DeepSeekChallenge:
    challenge = issuer("DeepSeekHashV1", **kwargs).issue(
        difficulty=difficulty, ttl=60, binding=BINDING, target_path="/api/v0/chat/completion"
    )
    assert isinstance(challenge, DeepSeekChallenge)
    return challenge


def test_deepseek_challenge_has_deepseeks_shape() -> None:
    challenge = deepseek()
    doc = json.loads(challenge.envelope_json())
    inner = doc["data"]["biz_data"]["challenge"]
    assert doc["code"] == 0
    assert doc["data"]["biz_code"] == 0
    assert set(inner) == {
        "algorithm", "challenge", "salt", "signature", "difficulty", "expire_at",
        "expire_after", "target_path",
    }  # fmt: skip
    assert inner["algorithm"] == "DeepSeekHashV1"
    assert inner["expire_at"] % 1000 == 0
    assert inner["expire_after"] == 60_000
    assert len(inner["salt"]) == 20
    assert parse_challenge(challenge.envelope_json()) == challenge


def test_deepseek_solution_verifies_once() -> None:
    challenge = deepseek()
    solved = solve_challenge(challenge)
    assert solved.header == "x-ds-pow-response"
    check = verifier()
    verdict = check.verify(solved.payload, binding=BINDING, min_difficulty=2000)
    assert verdict.ok, verdict.cause
    assert verdict.difficulty == 2000
    assert check.verify(solved.payload, binding=BINDING).reason is Reason.REPLAYED


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda d: d.update(answer=d["answer"] + 1), Reason.WRONG_NUMBER),
        (lambda d: d.update(target_path="/other"), Reason.BAD_SIGNATURE),
        (lambda d: d.update(salt="0" * 20), Reason.BAD_SIGNATURE),
        (lambda d: d.update(signature=d["signature"].replace("=2000", "=9")), Reason.BAD_SIGNATURE),
        (lambda d: d.update(signature=d["signature"].split("?")[0]), Reason.UNKNOWN_KEY),
        (lambda d: d.update(algorithm="SHA-256"), Reason.UNKNOWN_ALGORITHM),
        (lambda d: d.update(answer="12"), Reason.MALFORMED),
        (lambda d: d.pop("target_path"), Reason.MALFORMED),
    ],
)  # fmt: skip
def test_deepseek_tampering_is_refused(edit: object, reason: Reason) -> None:
    payload = solve_challenge(deepseek()).payload
    assert verifier().verify(edited(payload, edit), binding=BINDING).reason is reason


def test_deepseek_binding_expiry_and_minimum() -> None:
    payload = solve_challenge(deepseek()).payload
    assert verifier().verify(payload, binding="ns/other:route").reason is Reason.WRONG_BINDING
    assert verifier().verify(payload, min_difficulty=2001).reason is Reason.INSUFFICIENT
    old = deepseek(clock=lambda: 1_000_000.0)
    assert verifier().verify(solve_challenge(old).payload).reason is Reason.EXPIRED


def test_deepseek_solver_uses_threads_and_reports_the_answer() -> None:
    challenge = deepseek(difficulty=300_000)
    one, two = solve_deepseek(challenge), solve_deepseek(challenge, workers=2)
    assert one.number == two.number
    assert dsh.hash_v1(f"{challenge.prefix}{one.number}".encode()).hex() == challenge.challenge


# -- ALTCHA v2 -----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", sorted(SMALL))
def test_v2_solution_verifies_once(algorithm: str) -> None:
    challenge = issuer(algorithm).issue(difficulty=40, ttl=60, binding=BINDING)
    assert isinstance(challenge, ChallengeV2)
    assert parse_challenge(challenge.to_json()) == challenge
    payload = solve_challenge(challenge).payload
    check = verifier()
    verdict = check.verify(payload, binding=BINDING, min_difficulty=40)
    assert verdict.ok, verdict.cause
    assert verdict.difficulty == 40
    assert check.verify(payload, binding=BINDING).reason is Reason.REPLAYED


@pytest.mark.parametrize(
    ("difficulty", "prefix", "cost"),
    [(1, "", 10), (2, "", 10), (6, "", 30), (8, "0", 2), (20, "0", 6), (32, "0", 10),
     (40, "0", 12), (600, "00", 12), (8191, "000", 10)],
)  # fmt: skip
def test_v2_difficulty_is_twice_the_mean_tries(difficulty: int, prefix: str, cost: int) -> None:
    """Mean tries x relative cost of a try = difficulty / 2, whatever the prefix length."""
    challenge = issuer("PBKDF2/SHA-256").issue(difficulty=difficulty, ttl=60)
    assert isinstance(challenge, ChallengeV2)
    assert challenge.key_prefix == prefix
    assert challenge.params.cost == cost
    assert challenge.difficulty == difficulty


def test_v2_issuer_refuses_parameters_outside_the_registry_bounds() -> None:
    with pytest.raises(ValueError, match="memoryCost"):
        Issuer(keyring=RING, algorithm="ARGON2ID", params=KdfParams(cost=1, memory_cost=1 << 20))
    with pytest.raises(ValueError, match="power of two"):
        Issuer(
            keyring=RING,
            algorithm="SCRYPT",
            params=KdfParams(cost=1000, memory_cost=8, parallelism=1),
        )
    with pytest.raises(ValueError, match="no key-derivation"):
        Issuer(keyring=RING, algorithm="SHA-256", params=KdfParams(cost=1))


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda d: d["challenge"]["parameters"].update(cost=7), Reason.BAD_SIGNATURE),
        (lambda d: d["challenge"]["parameters"].update(keyPrefix=""), Reason.BAD_SIGNATURE),
        (lambda d: d["challenge"]["parameters"]["data"].update(max=10**6), Reason.BAD_SIGNATURE),
        (lambda d: d["challenge"].update(signature="00" * 32), Reason.BAD_SIGNATURE),
        (lambda d: d["challenge"]["parameters"]["data"].update(kid="nope"), Reason.UNKNOWN_KEY),
        (lambda d: d["challenge"]["parameters"].update(algorithm="MD5"), Reason.UNKNOWN_ALGORITHM),
        (lambda d: d["challenge"]["parameters"].update(extra=1), Reason.MALFORMED),
        (lambda d: d["challenge"]["parameters"].update(cost=1.5), Reason.MALFORMED),
        (lambda d: d["challenge"]["parameters"]["data"].update(x=[1]), Reason.MALFORMED),
        (lambda d: d["solution"].update(counter=-1), Reason.MALFORMED),
        (lambda d: d["solution"].update(counter=2**32), Reason.MALFORMED),
        (lambda d: d["solution"].update(derivedKey="ZZ"), Reason.MALFORMED),
        (lambda d: d["solution"].update(derivedKey="f" * 64), Reason.WRONG_NUMBER),
        (lambda d: d["solution"].update(derivedKey="0" * 62), Reason.WRONG_NUMBER),
    ],
)  # fmt: skip
def test_v2_forgeries_cost_no_derivation(
    edit: object, reason: Reason, derivations: list[str]
) -> None:
    challenge = issuer("ARGON2ID").issue(difficulty=40, ttl=60, binding=BINDING)
    assert isinstance(challenge, ChallengeV2)
    payload = v2_payload(challenge)
    derivations.clear()
    assert verifier().verify(edited(payload, edit), binding=BINDING).reason is reason
    assert derivations == []


def test_v2_expired_wrongly_bound_easy_or_replayed_costs_no_derivation(
    derivations: list[str],
) -> None:
    old = issuer("ARGON2ID", clock=lambda: 1_000_000.0).issue(difficulty=4, ttl=60)
    assert isinstance(old, ChallengeV2)
    fresh = issuer("ARGON2ID").issue(difficulty=4, ttl=60, binding=BINDING)
    assert isinstance(fresh, ChallengeV2)
    old_payload, payload = v2_payload(old), v2_payload(fresh)
    check = verifier()
    derivations.clear()
    assert check.verify(old_payload).reason is Reason.EXPIRED
    assert check.verify(payload, binding="x/y:z").reason is Reason.WRONG_BINDING
    assert check.verify(payload, min_difficulty=5).reason is Reason.INSUFFICIENT
    assert derivations == []
    assert check.verify(payload, binding=BINDING).ok
    assert derivations == ["ARGON2ID"]
    for _ in range(5):
        assert check.verify(payload, binding=BINDING).reason is Reason.REPLAYED
    assert derivations == ["ARGON2ID"]


def test_v2_wrong_counter_is_spent_before_it_is_found_wrong() -> None:
    """The single attempt is claimed before deriving: a wrong key burns the challenge."""
    challenge = issuer("PBKDF2/SHA-256").issue(difficulty=2, ttl=60)
    assert isinstance(challenge, ChallengeV2)
    found = solve_v2(challenge)
    wrong = challenge.solution(found.counter + 1, found.derived_key).encode()
    check = verifier()
    assert check.verify(wrong).reason is Reason.WRONG_NUMBER
    right = challenge.solution(found.counter, found.derived_key).encode()
    assert check.verify(right).reason is Reason.REPLAYED


async def test_v2_async_verification_runs_in_the_pool_and_refuses_when_full() -> None:
    challenge = issuer("SCRYPT").issue(difficulty=4, ttl=60)
    assert isinstance(challenge, ChallengeV2)
    payload = v2_payload(challenge)
    pool = DerivationPool(workers=1, max_pending=1)
    check = verifier()
    held = pool.reserve()
    assert held is not None
    # Full: refused at once, and the solution is not spent.
    busy = await check.verify_async(payload, pool=pool)
    assert busy.reason is Reason.VERIFIER_BUSY
    assert pool.refused == 1
    with pytest.raises(PoolFullError):
        await pool.run(lambda: None)
    held.close()
    verdict = await check.verify_async(payload, pool=pool)
    assert verdict.ok, verdict.cause
    assert (await check.verify_async(payload, pool=pool)).reason is Reason.REPLAYED
    assert pool.pending == 0
    pool.close()


async def test_pool_keeps_its_bound_while_cancelled_derivations_still_run() -> None:
    pool = DerivationPool(workers=1, max_pending=1)
    gate = threading.Event()
    task = asyncio.create_task(pool.run(gate.wait))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The thread still runs: its place is still taken.
    assert pool.pending == 1
    assert pool.reserve() is None
    gate.set()
    for _ in range(200):
        if pool.pending == 0:
            break
        await asyncio.sleep(0.01)
    assert pool.pending == 0
    pool.close()


def test_every_v2_scheme_is_registered_with_its_wire_name() -> None:
    for name in ("PBKDF2/SHA-256", "PBKDF2/SHA-384", "PBKDF2/SHA-512", "SCRYPT", "ARGON2ID"):
        algorithm = get_algorithm(name)
        assert isinstance(algorithm, KdfAlgorithm)
        assert algorithm.wire_name == name
        assert algorithm.check_base(algorithm.default_params) is None
    iterated = get_algorithm("ITERATED/SHA-256")
    assert isinstance(iterated, KdfAlgorithm)
    assert iterated.wire_name == "SHA-256"


# -- per-client prices, in every family ----------------------------------------


@pytest.mark.parametrize("algorithm", ["SHA-256", "DeepSeekHashV1", "ITERATED/SHA-256"])
def test_every_family_signs_who_pays_and_how_much(algorithm: str) -> None:
    """A priced challenge counts for its client at its factor, in each family's wire format."""
    challenge = issuer(algorithm).issue(
        difficulty=20, ttl=60, binding=BINDING, client="c1", factor=2.0
    )
    payload = solve_challenge(challenge).payload
    assert verifier().verify(payload, binding=BINDING, client="c2").reason is Reason.WRONG_CLIENT
    verdict = verifier().verify(payload, binding=BINDING, client="c1", min_difficulty=20)
    assert verdict.ok, verdict.cause
    assert verdict.difficulty == 40
    assert verifier().verify(payload, client="c1", min_difficulty=21).reason is (
        Reason.INSUFFICIENT
    )
