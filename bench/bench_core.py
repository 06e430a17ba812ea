"""The PoW core's costs next to the primitives they are made of.

* verification of a valid payload (replay cache on), against one SHA-256 and
  one HMAC-SHA256 of the same sizes: the irreducible cryptographic work.
  The target is within 2.5x; the component rows show where the rest goes;
* issuing a challenge, alone and in the batches a refusing sidecar issues;
* the Python solvers' hashes/s (reference and fast, one process) against
  ``openssl speed -bytes 64 sha256`` on the same machine.

Every figure is the best of several runs, so background load inflates it as
little as possible; references are measured in the same run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import time
from collections.abc import Callable

from bench import best_seconds, openssl_sha256_rate, table
from powgate import Challenge, Issuer, KeyRing, MemoryReplayCache, Verifier, solve, solve_reference
from powgate._fastpath import NATIVE, canonical_v1, check_v1
from powgate._protocol import decode_solution, salt_fields, solution_fields

#: Distinct valid payloads per timed run (each is admitted once, as in production).
PAYLOADS = 20_000
#: Repeats of each timing; the best counts.
REPEAT = 7
#: The sidecar issues challenges in batches of up to this many under a flood.
BATCH = 64
#: Candidates per solver run; the number sought is the last one (worst case).
FAST_RANGE = 400_000
REFERENCE_RANGE = 100_000
SOLVER_REPEAT = 3
BINDING = "default/policy:chat"


def _payloads(issuer: Issuer, count: int) -> list[str]:
    payloads = []
    for _ in range(count):
        challenge = issuer.issue(difficulty=20, ttl=3600, binding=BINDING)
        payloads.append(challenge.solution(solve(challenge).number).encode())
    return payloads


def _worst_case(issuer: Issuer, maxnumber: int) -> Challenge:
    issued = issuer.issue(difficulty=maxnumber, ttl=600)
    work = hashlib.sha256(f"{issued.salt}{maxnumber}".encode()).hexdigest()
    return Challenge(issued.algorithm, work, maxnumber, issued.salt, issued.signature)


def _interleaved_best(runs: dict[str, Callable[[], object]], *, repeat: int) -> dict[str, float]:
    """Best seconds of each run, taking turns so that load drifts hit all alike."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, run in runs.items():
            best[name] = min(best[name], best_seconds(run, repeat=1))
    return best


def main() -> None:
    ring = KeyRing.generate()
    issuer = Issuer(keyring=ring)
    payloads = _payloads(issuer, PAYLOADS)
    sample = solution_fields(payloads[0])
    key = ring.signing_key.secret
    work_input = f"{sample[3]}{sample[2]}".encode()
    message = sample[1].encode()
    salt = sample[3]
    checker = Verifier(keyring=ring, replay=None)
    check = checker.check
    forged = dataclasses.replace(decode_solution(payloads[0]), signature="0" * 64).encode()
    check(payloads[0], binding=BINDING)  # the key's signer made, as in a running verifier
    signers = checker._native_signers

    def verify_fresh() -> None:
        # A new cache per run: every payload is admitted, as the first time.
        verify = Verifier(keyring=ring, replay=MemoryReplayCache()).verify
        for payload in payloads:
            verify(payload, binding=BINDING)

    def check_all() -> None:
        for payload in payloads:
            check(payload, binding=BINDING)

    def check_forged() -> None:
        for _ in range(PAYLOADS):
            check(forged, binding=BINDING)

    def one_call() -> None:
        if check_v1 is None:
            return
        now = time.time()
        for payload in payloads:
            check_v1(payload, signers, now)

    def read_all() -> None:
        for payload in payloads:
            canonical_v1(payload)

    def decode_all() -> None:
        for payload in payloads:
            solution_fields(payload)

    def salts() -> None:
        for _ in range(PAYLOADS):
            salt_fields(salt)

    def issue_all() -> None:
        for _ in range(PAYLOADS):
            issuer.issue(difficulty=50_000, ttl=300, binding=BINDING)

    def issue_batches() -> None:
        for _ in range(PAYLOADS // BATCH):
            issuer.issue_documents(BATCH, difficulty=50_000, ttl=300, binding=BINDING)

    def primitives() -> None:
        sha256, digest = hashlib.sha256, hmac.digest
        for _ in range(PAYLOADS):
            sha256(work_input).digest()
            digest(key, message, "sha256")

    runs: dict[str, Callable[[], object]] = {
        "verify, valid payload, replay cache on": verify_fresh,
        "verify without replay cache (check)": check_all,
        "  of which: the one C call (read, key, signature, expiry, work)": one_call,
        "refuse a forged payload (check, bad signature)": check_forged,
        "reading the payload alone (one pass, C)": read_all,
        "other shapes: base64 + JSON decode": decode_all,
        "other shapes: salt parameters": salts,
        "issue a challenge": issue_all,
        f"issue documents in batches of {BATCH} (each)": issue_batches,
        "reference: 1 SHA-256 + 1 HMAC-SHA256": primitives,
    }
    best = _interleaved_best(runs, repeat=REPEAT)
    reference = best["reference: 1 SHA-256 + 1 HMAC-SHA256"]
    rows = [
        (name, f"{seconds / PAYLOADS * 1e6:.2f}", f"{seconds / reference:.2f}x")
        for name, seconds in best.items()
    ]
    print(f"Verification and issuing, best of {REPEAT} runs over {PAYLOADS} distinct payloads")
    print(f"SHA-256 hot path (powgate._native with OpenSSL): {'C' if NATIVE else 'Python'}")
    print(table(("operation", "us/op", "vs reference"), rows))
    verify = best["verify, valid payload, replay cache on"] / reference
    print(f"goal: verify a valid payload <= 2.50x the reference; measured {verify:.2f}x")
    print()

    fast_challenge = _worst_case(issuer, FAST_RANGE)
    reference_challenge = _worst_case(issuer, REFERENCE_RANGE)
    fast_best = slow_best = float("inf")
    for _ in range(SOLVER_REPEAT):
        fast_best = min(fast_best, solve(fast_challenge).seconds)
        slow_best = min(slow_best, solve_reference(reference_challenge).seconds)
    fast_rate = (FAST_RANGE + 1) / fast_best
    slow_rate = (REFERENCE_RANGE + 1) / slow_best
    openssl = openssl_sha256_rate()

    def vs_openssl(rate: float) -> str:
        return "n/a" if openssl is None else f"{rate / openssl:.3f}"

    solver_rows = [
        ("powgate.solve (fast, 1 process)", f"{fast_rate / 1e6:.2f}", vs_openssl(fast_rate)),
        ("powgate.solve_reference", f"{slow_rate / 1e6:.2f}", vs_openssl(slow_rate)),
        (
            "openssl speed -seconds 3 -bytes 64 sha256",
            "n/a" if openssl is None else f"{openssl / 1e6:.2f}",
            "n/a" if openssl is None else "1.000",
        ),
    ]
    print(f"Solver hash rate, one core, best of {SOLVER_REPEAT} (worst case: the whole range)")
    print(table(("solver", "M hashes/s", "vs openssl"), solver_rows))
