"""Interoperability with the ``altcha`` package's PoW v2 API, in all three directions.

* challenges we issue are solved by ``altcha.solve_challenge`` and accepted here;
* challenges ``altcha.create_challenge`` makes with our key are solved by our
  solver and accepted here;
* our solutions pass ``altcha.verify_solution``.
"""

from __future__ import annotations

import time

import altcha
import pytest

from powgate import (
    ChallengeV2,
    Issuer,
    KdfParams,
    KeyRing,
    MemoryReplayCache,
    Reason,
    Verifier,
    parse_challenge,
    solve_challenge,
)

RING = KeyRing.generate()
KEY = RING.signing_key.secret
BINDING = "ns/policy:route"
CASES = {
    "PBKDF2/SHA-256": ("PBKDF2/SHA-256", KdfParams(cost=20)),
    "PBKDF2/SHA-384": ("PBKDF2/SHA-384", KdfParams(cost=20)),
    "PBKDF2/SHA-512": ("PBKDF2/SHA-512", KdfParams(cost=20)),
    "ITERATED/SHA-256": ("SHA-256", KdfParams(cost=5, key_length=32)),
    "ITERATED/SHA-512": ("SHA-512", KdfParams(cost=5, key_length=64)),
    "SCRYPT": ("SCRYPT", KdfParams(cost=32, memory_cost=2, parallelism=1)),
    "ARGON2ID": ("ARGON2ID", KdfParams(cost=1, memory_cost=128, parallelism=1)),
}


def verifier() -> Verifier:
    return Verifier(keyring=RING, replay=MemoryReplayCache())


@pytest.mark.parametrize("name", sorted(CASES))
def test_altcha_solves_our_challenge_and_we_accept_it(name: str) -> None:
    ours = Issuer(keyring=RING, algorithm=name, params=CASES[name][1]).issue(
        difficulty=40, ttl=60, binding=BINDING
    )
    assert isinstance(ours, ChallengeV2)
    theirs = altcha.Challenge.from_dict(ours.to_dict())
    solution = altcha.solve_challenge(theirs, timeout=30)
    assert solution is not None
    payload = altcha.Payload(theirs, solution).to_base64()
    verdict = verifier().verify(payload, binding=BINDING, min_difficulty=40)
    assert verdict.ok, verdict.cause


@pytest.mark.parametrize("name", sorted(CASES))
def test_challenge_altcha_creates_with_our_key_is_accepted(name: str) -> None:
    wire, params = CASES[name]
    created = altcha.create_challenge(
        wire,
        params.cost,
        key_length=params.key_length,
        key_prefix="0",
        memory_cost=params.memory_cost,
        parallelism=params.parallelism,
        expires_at=int(time.time()) + 60,
        data={"kid": RING.active, "max": 32, "bind": BINDING},
        hmac_secret=KEY,
    )
    challenge = parse_challenge(created.to_dict())
    assert isinstance(challenge, ChallengeV2)
    verdict = verifier().verify(solve_challenge(challenge).payload, binding=BINDING)
    assert verdict.ok, verdict.cause
    assert verdict.difficulty == 32


def test_altcha_challenge_without_our_data_uses_the_active_key() -> None:
    created = altcha.create_challenge(
        "PBKDF2/SHA-256", 10, key_prefix="", expires_at=int(time.time()) + 60, hmac_secret=KEY
    )
    payload = solve_challenge(parse_challenge(created.to_dict())).payload
    assert verifier().verify(payload).ok


def test_altcha_challenge_with_another_key_or_no_expiry_is_refused() -> None:
    other = altcha.create_challenge(
        "PBKDF2/SHA-256", 10, key_prefix="", expires_at=int(time.time()) + 60, hmac_secret=b"x" * 32
    )
    forever = altcha.create_challenge("PBKDF2/SHA-256", 10, key_prefix="", hmac_secret=KEY)
    for created, reason in ((other, Reason.BAD_SIGNATURE), (forever, Reason.EXPIRED)):
        payload = solve_challenge(parse_challenge(created.to_dict())).payload
        assert verifier().verify(payload).reason is reason


@pytest.mark.parametrize("name", sorted(CASES))
def test_our_solutions_verify_with_altcha(name: str) -> None:
    ours = Issuer(keyring=RING, algorithm=name, params=CASES[name][1]).issue(
        difficulty=40, ttl=60, binding=BINDING
    )
    solved = solve_challenge(ours)
    result = altcha.verify_solution(solved.payload, KEY)
    assert result.verified, vars(result)
