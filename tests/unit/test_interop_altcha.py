"""Interoperability with the ``altcha`` package (v1 API), in all three directions.

The names come from ``altcha.v1``; the package re-exports them with a
``_v1``/``V1`` suffix (``altcha.create_challenge_v1`` is ``create_challenge``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from altcha.v1 import (
    AlgoType,
    ChallengeOptions,
    Payload,
    create_challenge,
    solve_challenge,
    verify_solution,
)
from altcha.v1 import Challenge as AltchaChallenge

from powgate import Challenge, Issuer, KeyRing, MemoryReplayCache, Reason, Verifier, solve

RING = KeyRing.generate()
KEY = RING.signing_key.secret


def soon() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=60)


def verifier() -> Verifier:
    return Verifier(keyring=RING, replay=MemoryReplayCache())


@pytest.mark.parametrize("algorithm", ["SHA-256", "SHA-512"])
def test_altcha_solves_our_challenge_and_we_accept_it(algorithm: AlgoType) -> None:
    ours = Issuer(keyring=RING, algorithm=algorithm).issue(
        difficulty=2000, ttl=60, binding="ns/policy:route"
    )
    theirs = AltchaChallenge(
        algorithm=algorithm,
        challenge=ours.challenge,
        max_number=ours.maxnumber,
        salt=ours.salt,
        signature=ours.signature,
    )
    solved = solve_challenge(theirs)
    assert solved is not None
    payload = Payload(
        algorithm=algorithm,
        challenge=ours.challenge,
        number=solved.number,
        salt=ours.salt,
        signature=ours.signature,
    ).to_base64()
    verdict = verifier().verify(payload, binding="ns/policy:route")
    assert verdict.ok, verdict.cause
    assert verdict.difficulty == 2000


def test_challenge_altcha_creates_with_our_key_is_accepted() -> None:
    created = create_challenge(
        ChallengeOptions(
            hmac_key=KEY,
            max_number=3000,
            expires=soon(),
            params={"kid": RING.active, "max": "3000", "bind": "ns/p:r"},
        )
    )
    # Their document, parsed by our client side, solved by our solver.
    challenge = Challenge.from_dict(created.to_dict())
    assert challenge.maxnumber == 3000
    payload = challenge.solution(solve(challenge).number).encode()
    verdict = verifier().verify(payload, binding="ns/p:r", min_difficulty=3000)
    assert verdict.ok, verdict.cause


def test_plain_altcha_challenge_without_key_id_uses_the_active_key() -> None:
    created = create_challenge(ChallengeOptions(hmac_key=KEY, max_number=1000, expires=soon()))
    challenge = Challenge.from_dict(created.to_dict())
    payload = challenge.solution(solve(challenge).number).encode()
    assert verifier().verify(payload).ok


def test_challenge_altcha_signs_with_another_key_is_rejected() -> None:
    created = create_challenge(ChallengeOptions(hmac_key=b"x" * 32, max_number=100, expires=soon()))
    challenge = Challenge.from_dict(created.to_dict())
    payload = challenge.solution(solve(challenge).number).encode()
    assert verifier().verify(payload).reason is Reason.BAD_SIGNATURE


def test_our_solutions_verify_with_altcha() -> None:
    challenge = Issuer(keyring=RING).issue(difficulty=5000, ttl=60, binding="a/b:c")
    payload = challenge.solution(solve(challenge).number).encode()
    assert verify_solution(payload, KEY) == (True, None)
    # altcha refuses what we refuse: a wrong number, or an expired challenge.
    wrong = challenge.solution(solve(challenge).number + 1).encode()
    assert verify_solution(wrong, KEY)[0] is False
    expired = Issuer(keyring=RING, clock=lambda: time.time() - 120).issue(difficulty=50, ttl=60)
    expired_payload = expired.solution(solve(expired).number).encode()
    assert verify_solution(expired_payload, KEY) == (False, "Altcha payload expired")
    assert verifier().verify(expired_payload).reason is Reason.EXPIRED
