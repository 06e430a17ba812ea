"""The browser solver (``powgate/static/solver.js``) under Node.

Runs the Node test suite in ``tests/js/`` and a round trip with the Python
code: challenges from :class:`powgate.Issuer` are solved by the JavaScript
solver in Node and its payloads judged by :class:`powgate.Verifier`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from powgate import (
    Challenge,
    DeepSeekChallenge,
    Issuer,
    KdfParams,
    KeyRing,
    MemoryReplayCache,
    Reason,
    Verifier,
)
from powgate._deepseek_hash import hash_v1

pytestmark = pytest.mark.node

JS_TESTS = Path(__file__).resolve().parents[1] / "js"
BINDING = "POST /v1/chat/completions"


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("node is required in CI (make system-deps installs it)")
        pytest.skip("node is not installed (make system-deps installs it)")
    return path


def test_node_suite_passes(node: str) -> None:
    proc = subprocess.run(
        [node, "--test", str(JS_TESTS)], capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "# fail 0" in proc.stdout


def _solve_in_node(
    *, node: str, tmp_path: Path, cases: list[dict[str, object]]
) -> dict[str, dict[str, object]]:
    challenges = tmp_path / "challenges.json"
    solutions = tmp_path / "solutions.json"
    challenges.write_text(json.dumps(cases))
    env = {
        **os.environ,
        "POWGATE_JS_CHALLENGES": str(challenges),
        "POWGATE_JS_SOLUTIONS": str(solutions),
    }
    proc = subprocess.run(
        [node, "--test", str(JS_TESTS / "roundtrip.test.js")],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {entry["name"]: entry for entry in json.loads(solutions.read_text())}


def test_round_trip_with_python_issuer_and_verifier(node: str, tmp_path: Path) -> None:
    keyring = KeyRing.generate()
    issuer = Issuer(keyring=keyring)
    verifier = Verifier(keyring=keyring, replay=MemoryReplayCache())
    plans = {
        "trivial": (1, 0, "js"),
        "inline": (50_000, 0, "js"),
        "two-workers": (400_000, 2, "js"),
        "webcrypto": (2_000, 0, "webcrypto"),
    }
    issued = {
        name: issuer.issue(difficulty=d, ttl=300, binding=BINDING)
        for name, (d, _, _) in plans.items()
    }
    cases: list[dict[str, object]] = [
        {"name": name, "challenge": issued[name].to_dict(), "workers": w, "engine": e}
        for name, (_, w, e) in plans.items()
    ]
    results = _solve_in_node(node=node, tmp_path=tmp_path, cases=cases)

    for name, (difficulty, workers, _) in plans.items():
        result = results[name]
        assert "error" not in result, result
        assert result["workers"] == workers
        payload = str(result["payload"])
        verdict = verifier.verify(payload, binding=BINDING, min_difficulty=difficulty)
        assert verdict.reason is Reason.OK, (name, verdict)
        assert verdict.difficulty == difficulty
        # Single use holds for browser payloads as for any other.
        assert verifier.verify(payload, binding=BINDING).reason is Reason.REPLAYED


def test_every_scheme_round_trips_through_node(node: str, tmp_path: Path) -> None:
    """v2 key derivations (WebCrypto, hash-wasm) and DeepSeekHashV1 in JavaScript."""
    keyring = KeyRing.generate()
    verifier = Verifier(keyring=keyring, replay=MemoryReplayCache())
    plans: dict[str, tuple[str, int, KdfParams | None, int]] = {
        "pbkdf2": ("PBKDF2/SHA-512", 64, KdfParams(cost=200), 2),
        "iterated": ("ITERATED/SHA-256", 64, KdfParams(cost=20), 0),
        "scrypt": ("SCRYPT", 64, KdfParams(cost=256, memory_cost=4, parallelism=1), 0),
        "argon2id": ("ARGON2ID", 64, KdfParams(cost=1, memory_cost=512, parallelism=1), 2),
        "deepseek": ("DeepSeekHashV1", 20_000, None, 0),
        "deepseek-workers": ("DeepSeekHashV1", 250_000, None, 2),
    }
    issued = {
        name: Issuer(keyring=keyring, algorithm=algorithm, params=params).issue(
            difficulty=difficulty, ttl=300, binding=BINDING
        )
        for name, (algorithm, difficulty, params, _) in plans.items()
    }
    # A DeepSeek salt longer than a Keccak block: the number spills into a
    # second block. Not signed: only the answer is compared.
    long_salt = DeepSeekChallenge(
        challenge=hash_v1(f"{'s' * 150}_1000_4321".encode()).hex(),
        salt="s" * 150,
        signature="unsigned",
        difficulty=5000,
        expire_at=1000,
        expire_after=0,
        target_path="/",
    )
    cases: list[dict[str, object]] = [
        {
            "name": name,
            "challenge": json.loads(issued[name].to_json()),
            "workers": w,
            "engine": None,
        }
        for name, (_, _, _, w) in plans.items()
    ]
    cases.append({"name": "long-salt", "challenge": long_salt.to_dict(), "workers": 0})
    results = _solve_in_node(node=node, tmp_path=tmp_path, cases=cases)

    for name, (_, difficulty, _, _) in plans.items():
        result = results[name]
        assert "error" not in result, result
        verdict = verifier.verify(str(result["payload"]), binding=BINDING)
        assert verdict.reason is Reason.OK, (name, verdict)
        assert verdict.difficulty == difficulty
    assert results["long-salt"]["number"] == 4321


def test_tampered_challenges_do_not_yield_accepted_payloads(node: str, tmp_path: Path) -> None:
    keyring = KeyRing.generate()
    issuer = Issuer(keyring=keyring)
    verifier = Verifier(keyring=keyring, replay=MemoryReplayCache())
    genuine = issuer.issue(difficulty=1_000, ttl=300)
    # The solver does not judge signatures: a forged one yields a payload
    # that the verifier refuses. A changed hash has no number in range, which
    # the solver reports as such.
    resigned = dataclasses.replace(genuine, signature="0" * 64)
    wrong_hash: Challenge = dataclasses.replace(genuine, challenge="ab" * 32)
    cases: list[dict[str, object]] = [
        {"name": "resigned", "challenge": resigned.to_dict(), "workers": 0, "engine": "js"},
        {"name": "wrong-hash", "challenge": wrong_hash.to_dict(), "workers": 0, "engine": "js"},
    ]
    results = _solve_in_node(node=node, tmp_path=tmp_path, cases=cases)

    assert verifier.verify(str(results["resigned"]["payload"])).reason is Reason.BAD_SIGNATURE
    assert results["wrong-hash"] == {
        "name": "wrong-hash",
        "error": "powgate: no number in 0..1000 solves this challenge",
    }
