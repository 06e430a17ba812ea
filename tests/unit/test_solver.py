"""The reference and fast solvers agree; workers, the rate cap and the error paths."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powgate import (
    Challenge,
    HashAlgorithm,
    Issuer,
    KeyRing,
    SolveError,
    Verifier,
    register_algorithm,
    solve,
    solve_reference,
)
from powgate._solver import MIN_PARALLEL_RANGE, _scan

RING = KeyRing.generate()


def made(salt: str, number: int, *, maxnumber: int, algorithm: str = "SHA-256") -> Challenge:
    digest = {"SHA-256": "sha256", "SHA-512": "sha512"}[algorithm]
    work = hashlib.new(digest, f"{salt}{number}".encode()).hexdigest()
    return Challenge(algorithm, work, maxnumber, salt, "00")


@settings(max_examples=60, deadline=None)
@given(
    salt=st.text(min_size=1, max_size=150),
    number=st.integers(0, 400),
    slack=st.integers(0, 50),
    algorithm=st.sampled_from(["SHA-256", "SHA-512"]),
)
def test_fast_solver_agrees_with_the_reference(
    salt: str, number: int, slack: int, algorithm: str
) -> None:
    # Salts up to 150 characters cross the 64- and 128-byte block boundaries,
    # where hashing from a midstate could go wrong.
    challenge = made(salt, number, maxnumber=number + slack, algorithm=algorithm)
    fast, reference = solve(challenge), solve_reference(challenge)
    assert fast.number == reference.number == number
    assert fast.hashes == reference.hashes == number + 1


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, 300), length=st.integers(0, 300), offset=st.integers(0, 299))
def test_scan_finds_the_number_in_any_slice(start: int, length: int, offset: int) -> None:
    # Rate-capped and parallel searches scan slices that start and stop
    # anywhere, not on the decades the hot loop unrolls.
    number = start + offset
    base = hashlib.sha256(b"salt&")
    target = hashlib.sha256(b"salt&%d" % number).digest()
    found = _scan(base=base, target=target, numbers=range(start, start + length))
    assert found == (number if offset < length else None)


def test_lone_surrogates_in_a_salt_solve_and_verify() -> None:
    # JSON can carry them; the verifier hashes them with "surrogatepass" too.
    salt = "\ud800?kid=k1&"
    work = hashlib.sha256(f"{salt}5".encode("utf-8", "surrogatepass")).hexdigest()
    challenge = Challenge("SHA-256", work, 10, salt, "00")
    assert solve(challenge).number == solve_reference(challenge).number == 5


def test_number_may_equal_maxnumber() -> None:
    # ALTCHA draws the number from 0..maxnumber inclusive.
    assert solve(made("s&", 9, maxnumber=9)).number == 9
    assert solve_reference(made("s&", 9, maxnumber=9)).number == 9


def test_solution_of_an_issued_challenge_verifies() -> None:
    challenge = Issuer(keyring=RING).issue(difficulty=5000, ttl=60)
    result = solve(challenge)
    assert result.seconds >= 0
    assert Verifier(keyring=RING, replay=None).verify(challenge.solution(result.number).encode()).ok


@pytest.mark.parametrize(
    ("challenge", "message"),
    [
        (made("s&", 10, maxnumber=9), r"no number in 0\.\.9"),
        (Challenge("SHA-1", "ab", 5, "s", "00"), "unknown algorithm 'SHA-1'"),
        (Challenge("SHA-256", "zz", 5, "s", "00"), "not a hex digest"),
        (Challenge("SHA-256", "abcd", 5, "s", "00"), "not a SHA-256 digest"),
    ],
)
def test_errors(challenge: Challenge, message: str) -> None:
    with pytest.raises(SolveError, match=message):
        solve(challenge)


def test_reference_solver_errors() -> None:
    with pytest.raises(SolveError, match="no number"):
        solve_reference(made("s&", 10, maxnumber=9))
    with pytest.raises(SolveError, match="unknown algorithm"):
        solve_reference(Challenge("nope", "ab", 5, "s", "00"))


def test_option_validation() -> None:
    challenge = made("s&", 1, maxnumber=5)
    with pytest.raises(ValueError, match="workers"):
        solve(challenge, workers=0)
    with pytest.raises(ValueError, match="max_hashes_per_second"):
        solve(challenge, max_hashes_per_second=0)


def test_rate_cap_counts_every_hash() -> None:
    challenge = made("rate&", 2_999, maxnumber=3_000)
    result = solve(challenge, max_hashes_per_second=1e6)
    assert (result.number, result.hashes) == (2_999, 3_000)


class _Reversed(HashAlgorithm):
    """A registered scheme the fast path does not know: solved by the generic path."""

    def work_hex(self, data: bytes) -> str:
        return hashlib.sha256(data[::-1]).hexdigest()


register_algorithm(_Reversed("TEST-REVERSED", "sha256"))


def test_algorithms_without_a_fast_path_use_the_reference() -> None:
    # A subclass overrides work_hex, so the midstate trick would be wrong for it.
    work = hashlib.sha256(b"x&42"[::-1]).hexdigest()
    challenge = Challenge("TEST-REVERSED", work, 100, "x&", "00")
    assert solve(challenge).number == 42


@pytest.mark.slow
def test_workers_split_a_large_search() -> None:
    number = MIN_PARALLEL_RANGE + 12_345
    challenge = made("parallel&", number, maxnumber=MIN_PARALLEL_RANGE * 2)
    result = solve(challenge, workers=2)
    assert result.number == number
    # Both workers hashed; together at least up to the answer's chunk.
    assert result.hashes >= 50_000


@pytest.mark.slow
def test_workers_report_no_solution() -> None:
    challenge = made("none&", MIN_PARALLEL_RANGE + 10, maxnumber=MIN_PARALLEL_RANGE)
    with pytest.raises(SolveError, match="no number"):
        solve(challenge, workers=2)
