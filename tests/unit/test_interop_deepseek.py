"""Interoperability with ``deepseekpowsolver``, a DeepSeek solver from PyPI.

It solves with DeepSeek's own WebAssembly build of DeepSeekHashV1 (run by
Node.js) and encodes the ``x-ds-pow-response`` answer itself: a challenge we
issue, solved and encoded by it, verifies here. Only its solving and encoding
methods are called; its methods that talk to DeepSeek's servers are not.
"""

from __future__ import annotations

import shutil

import pytest
from deepseekpowsolver import DeepSeekPowSolver

from powgate import (
    DeepSeekChallenge,
    Issuer,
    KeyRing,
    MemoryReplayCache,
    Reason,
    Verifier,
    parse_challenge,
    solve_deepseek,
)
from powgate._deepseek_hash import hash_v1

pytestmark = [
    pytest.mark.node,
    pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js"),
]
RING = KeyRing.generate()
BINDING = "ns/policy:chat"


def challenge(difficulty: int) -> DeepSeekChallenge:
    issuer = Issuer(keyring=RING, algorithm="DeepSeekHashV1")
    while True:
        issued = issuer.issue(
            difficulty=difficulty, ttl=60, binding=BINDING, target_path="/api/v0/chat/completion"
        )
        assert isinstance(issued, DeepSeekChallenge)
        # That solver reports answer 0 as "not found": draw again in that case.
        if hash_v1(f"{issued.prefix}0".encode()).hex() != issued.challenge:
            return issued


def test_deepseekpowsolver_answers_our_challenge_and_we_accept_it() -> None:
    issued = challenge(50_000)
    # The solver takes the challenge as DeepSeek's API returns it.
    doc = parse_challenge(issued.envelope_json())
    assert doc == issued
    solver = DeepSeekPowSolver(token="unused")
    answer = solver.SleviS(issued.to_dict())
    assert isinstance(answer, int)
    header = solver.create_Fis(issued.to_dict(), answer)
    verifier = Verifier(keyring=RING, replay=MemoryReplayCache())
    verdict = verifier.verify(header, binding=BINDING, min_difficulty=50_000)
    assert verdict.ok, verdict.cause
    assert verifier.verify(header, binding=BINDING).reason is Reason.REPLAYED


def test_deepseekpowsolver_finds_the_answer_our_solver_finds() -> None:
    issued = challenge(20_000)
    answer = DeepSeekPowSolver(token="unused").SleviS(issued.to_dict())
    assert answer == solve_deepseek(issued).number
