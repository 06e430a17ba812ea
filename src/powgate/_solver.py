"""Solvers: find ``number`` in ``0..maxnumber`` with ``H(salt + number) == challenge``.

Two implementations of the same search:

* :func:`solve_reference` states the definition and nothing more; tests use
  it as the oracle for the fast one.
* :func:`solve` is what clients run. The solver's speed is the legitimate
  user's cost, so it hashes from a precomputed midstate: the salt is absorbed
  once and each candidate costs one ``copy()`` + ``update(b"%d" % n)`` and a
  raw digest comparison (and the prefix of each decade is absorbed once too,
  see :func:`_scan`). hashlib's OpenSSL objects are used: CPython's
  built-in SHA-2 copies its state three times faster, but OpenSSL compresses
  a block several times faster (SHA extensions, AVX2). Measured on issued
  salts (62 bytes, so candidates spill into a second block) OpenSSL was
  about 1.3x faster, and equal on 89-byte salts (``bench/bench_core.py``
  reports the rate).
  ``workers=`` spreads large searches over processes;
  ``max_hashes_per_second=`` caps the rate to model slower clients (browsers)
  in load tests.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.queues import Queue as ProcessQueue
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any, Final

from . import _altcha2, _deepseek_hash
from ._algorithms import HashAlgorithm, get_algorithm, get_v2_algorithm
from ._deepseek import DeepSeekChallenge
from ._errors import SolveError
from ._protocol import Challenge

__all__ = ["SolveResult", "solve", "solve_deepseek", "solve_reference", "solve_v2"]

HashFactory = Callable[[bytes], Any]
#: Below this many candidates, starting worker processes costs more than it saves.
MIN_PARALLEL_RANGE: Final = 200_000
#: Candidates per worker task: large enough to amortise the stop check.
_WORKER_CHUNK: Final = 50_000
_DIGITS: Final = tuple(b"%d" % digit for digit in range(10))
#: Rate-capped searches sleep this often, so the cap holds on short timescales.
_RATE_SLICES_PER_SECOND: Final = 50
# As the verifier encodes: JSON may carry lone surrogates, which must not raise.
_ENCODING: Final = "utf-8"
_ERRORS: Final = "surrogatepass"


@dataclass(frozen=True, slots=True)
class SolveResult:
    """The number found, how many candidates were hashed, and the wall time it took."""

    number: int
    hashes: int
    seconds: float


def solve_reference(challenge: Challenge) -> SolveResult:
    """The definition of a solution, one candidate at a time (slow; the oracle)."""
    algorithm = _algorithm(challenge)
    target = challenge.challenge
    started = time.perf_counter()
    for number in range(challenge.maxnumber + 1):
        if algorithm.work_hex(f"{challenge.salt}{number}".encode(_ENCODING, _ERRORS)) == target:
            return SolveResult(number, number + 1, time.perf_counter() - started)
    raise SolveError(f"no number in 0..{challenge.maxnumber} solves the challenge")


def solve(
    challenge: Challenge, *, workers: int = 1, max_hashes_per_second: float | None = None
) -> SolveResult:
    """Solve ``challenge`` as fast as CPython allows (or no faster than the given rate).

    ``workers`` > 1 searches in that many processes when the range is large
    enough to pay for them; a rate cap is then shared between them.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if max_hashes_per_second is not None and max_hashes_per_second <= 0:
        raise ValueError("max_hashes_per_second must be positive")
    algorithm = _algorithm(challenge)
    # Exactly HashAlgorithm: a subclass may hash differently from the midstate trick.
    if type(algorithm) is not HashAlgorithm:
        return solve_reference(challenge)
    target = _target(challenge, algorithm)
    salt = challenge.salt.encode(_ENCODING, _ERRORS)
    end = challenge.maxnumber + 1
    started = time.perf_counter()
    if workers > 1 and end >= MIN_PARALLEL_RANGE:
        rate = None if max_hashes_per_second is None else max_hashes_per_second / workers
        number, hashes = _solve_parallel(
            digest=algorithm.digest_name,
            salt=salt,
            target=target,
            end=end,
            workers=workers,
            rate=rate,
        )
    else:
        number, hashes = _search(
            factory=algorithm.new,
            salt=salt,
            target=target,
            ranges=(range(end),),
            rate=max_hashes_per_second,
        )
    if number is None:
        raise SolveError(f"no number in 0..{challenge.maxnumber} solves the challenge")
    return SolveResult(number, hashes, time.perf_counter() - started)


def _algorithm(challenge: Challenge) -> HashAlgorithm:
    algorithm = get_algorithm(challenge.algorithm)
    if not isinstance(algorithm, HashAlgorithm):
        raise SolveError(f"unknown algorithm {challenge.algorithm[:32]!r}")
    return algorithm


#: DeepSeek candidates per native call: the stop check runs between calls.
_DEEPSEEK_CHUNK: Final = 20_000
#: A solver refuses v2 challenges asking for more tries than this on average.
MAX_V2_TRIES: Final = 16**7


def solve_deepseek(challenge: DeepSeekChallenge, *, workers: int = 1) -> SolveResult:
    """Find the answer of a DeepSeek challenge (``0 … difficulty - 1``).

    The native search releases the GIL, so ``workers`` threads search
    interleaved chunks in parallel.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    try:
        target = bytes.fromhex(challenge.challenge)
    except ValueError:
        raise SolveError("challenge is not a hex digest") from None
    if len(target) != _deepseek_hash.DIGEST_SIZE:
        raise SolveError("challenge is not a DeepSeekHashV1 digest")
    prefix = challenge.prefix.encode(_ENCODING, _ERRORS)
    end = challenge.difficulty
    started = time.perf_counter()

    def scan(first: int) -> tuple[int, int]:
        hashes = 0
        for lo in range(first * _DEEPSEEK_CHUNK, end, workers * _DEEPSEEK_CHUNK):
            if found_any:
                break
            hi = min(end, lo + _DEEPSEEK_CHUNK)
            found = _deepseek_hash.search(prefix, target, lo, hi)
            if found >= 0:
                found_any.append(found)
                return found, hashes + found - lo + 1
            hashes += hi - lo
        return -1, hashes

    found_any: list[int] = []
    if workers == 1:
        results = [scan(0)]
    else:
        with ThreadPoolExecutor(workers) as threads:
            results = list(threads.map(scan, range(workers)))
    answers = [number for number, _ in results if number >= 0]
    if not answers:
        raise SolveError(f"no answer in 0..{end - 1} solves the challenge")
    hashes = sum(count for _, count in results)
    return SolveResult(answers[0], hashes, time.perf_counter() - started)


@dataclass(frozen=True, slots=True)
class SolveResultV2:
    """The counter found, its derived key, how many tries it took and the wall time."""

    counter: int
    derived_key: bytes
    tries: int
    seconds: float


def solve_v2(
    challenge: _altcha2.ChallengeV2, *, workers: int = 1, timeout: float | None = None
) -> SolveResultV2:
    """Find a counter whose derived key starts with the challenge's ``keyPrefix``.

    ALTCHA's search: counters 0, 1, 2, … (``workers`` threads take every
    ``workers``-th counter; the derivations release the GIL). The search is
    unbounded in principle; ``timeout`` (seconds) ends it with
    :class:`SolveError`, and challenges whose parameters are outside what
    powgate verifies, or whose mean work is above ``16^7`` tries, are refused
    before any work.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    algorithm = get_v2_algorithm(challenge.algorithm)
    if algorithm is None:
        raise SolveError(f"unknown algorithm {challenge.algorithm[:32]!r}")
    problem = algorithm.check(challenge.params)
    if problem:
        raise SolveError(f"refusing the challenge's parameters: {problem}")
    if challenge.expected_tries > MAX_V2_TRIES:
        raise SolveError(f"refusing a key prefix of {len(challenge.key_prefix)} digits")
    nonce, salt = bytes.fromhex(challenge.nonce), bytes.fromhex(challenge.salt)
    prefix = challenge.key_prefix
    started = time.perf_counter()
    deadline = None if timeout is None else started + timeout
    done: list[tuple[int, bytes]] = []

    def scan(first: int) -> int:
        tries = 0
        for counter in range(first, _altcha2.MAX_COUNTER + 1, workers):
            if done or (deadline is not None and time.perf_counter() > deadline):
                break
            key = algorithm.derive(challenge.params, salt, _altcha2.password(nonce, counter))
            tries += 1
            if key.hex().startswith(prefix):
                done.append((counter, key))
                break
        return tries

    if workers == 1:
        tries = scan(0)
    else:
        with ThreadPoolExecutor(workers) as threads:
            tries = sum(threads.map(scan, range(workers)))
    if not done:
        raise SolveError("no counter found in time")
    counter, key = min(done)
    return SolveResultV2(counter, key, tries, time.perf_counter() - started)


def _target(challenge: Challenge, algorithm: HashAlgorithm) -> bytes:
    try:
        target = bytes.fromhex(challenge.challenge)
    except ValueError:
        raise SolveError("challenge is not a hex digest") from None
    if len(target) != algorithm.new(b"").digest_size:
        raise SolveError(f"challenge is not a {algorithm.name} digest")
    return target


def _scan(*, base: Any, target: bytes, numbers: range) -> int | None:
    """The hot loop: a state copy, a short update and a digest per candidate.

    Numbers sharing all but their last digit share a prefix state too, so
    the inner loop appends one pre-made digit instead of formatting the
    number: about 1.5x faster than ``update(b"%d" % n)`` per candidate.
    """
    start, stop = numbers.start, numbers.stop
    # 0..9 have no prefix, and a range may start or stop between decades.
    head_stop = min(stop, 10 if start < 10 else -(-start // 10) * 10)
    tail_start = max(head_stop, stop // 10 * 10)
    found = _scan_each(base=base, target=target, numbers=range(start, head_stop))
    if found is not None:
        return found
    copy = base.copy
    for prefix in range(head_stop // 10, tail_start // 10):
        state = copy()
        state.update(b"%d" % prefix)
        copy_prefix = state.copy
        for digit in _DIGITS:
            candidate = copy_prefix()
            candidate.update(digit)
            if candidate.digest() == target:
                return prefix * 10 + int(digit)
    return _scan_each(base=base, target=target, numbers=range(tail_start, stop))


def _scan_each(*, base: Any, target: bytes, numbers: range) -> int | None:
    copy = base.copy
    for number in numbers:
        state = copy()
        state.update(b"%d" % number)
        if state.digest() == target:
            return number
    return None


def _search(
    *,
    factory: HashFactory,
    salt: bytes,
    target: bytes,
    ranges: Iterable[range],
    rate: float | None,
    stop: ProcessEvent | None = None,
) -> tuple[int | None, int]:
    """Scan ``ranges`` in order; returns (number or None, hashes computed).

    ``stop`` (an Event shared with other workers) is checked between ranges.
    """
    base = factory(salt)
    hashes = 0
    started = time.monotonic()
    for numbers in ranges:
        for part in _rate_slices(numbers, rate):
            if stop is not None and stop.is_set():
                return None, hashes
            found = _scan(base=base, target=target, numbers=part)
            if found is not None:
                return found, hashes + found - part.start + 1
            hashes += len(part)
            if rate is not None:
                # Sleep off whatever this slice ran ahead of the allowed rate.
                ahead = started + hashes / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
    return None, hashes


def _rate_slices(numbers: range, rate: float | None) -> Iterator[range]:
    # Lazily: a hostile maxnumber must not become a list of billions of slices.
    if rate is None:
        yield numbers
        return
    step = max(1, int(rate / _RATE_SLICES_PER_SECOND))
    for start in range(0, len(numbers), step):
        yield numbers[start : start + step]


def _worker(
    digest: str,
    salt: bytes,
    target: bytes,
    starts: range,
    end: int,
    rate: float | None,
    stop: ProcessEvent,
    results: ProcessQueue[tuple[int | None, int]],
) -> None:
    # Runs in a child process: report exactly once, found or not.
    number, hashes = _search(
        factory=HashAlgorithm(digest, digest).new,
        salt=salt,
        target=target,
        ranges=(range(lo, min(lo + _WORKER_CHUNK, end)) for lo in starts),
        rate=rate,
        stop=stop,
    )
    if number is not None:
        stop.set()
    results.put((number, hashes))


def _solve_parallel(
    *, digest: str, salt: bytes, target: bytes, end: int, workers: int, rate: float | None
) -> tuple[int | None, int]:
    # Interleaved chunks: every worker starts near 0, so the expected time to
    # the answer shrinks with the number of workers whatever the answer is.
    stride = _WORKER_CHUNK * workers
    # "spawn" is safe from any thread (the async client solves in a thread pool).
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    results: ProcessQueue[tuple[int | None, int]] = context.Queue()
    processes = [
        context.Process(
            target=_worker,
            args=(
                digest,
                salt,
                target,
                range(index * _WORKER_CHUNK, end, stride),
                end,
                rate,
                stop,
                results,
            ),
            daemon=True,
        )
        for index in range(workers)
    ]
    for process in processes:
        process.start()
    found: int | None = None
    hashes = 0
    pending = workers
    try:
        while pending:
            try:
                number, done = results.get(timeout=0.5)
            except queue.Empty:
                if not any(process.is_alive() for process in processes) and results.empty():
                    raise SolveError("a solver process died") from None
                continue
            pending -= 1
            hashes += done
            if number is not None and found is None:
                found = number
    finally:
        stop.set()
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
        results.close()
    return found, hashes
