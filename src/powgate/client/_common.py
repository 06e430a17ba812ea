"""What every client adapter shares: spotting a challenge answer and solving it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from powgate._errors import ProtocolError, SolveError
from powgate._protocol import AUTH_SCHEME, SOLUTION_HEADER, SOLVE_MS_HEADER, Challenge
from powgate._solver import solve

__all__ = ["DEFAULT_MAX_DIFFICULTY", "Solving", "is_challenge", "read_challenge"]

#: A server may ask for at most this much work by default: at the pure-Python
#: solver's ~1-2 M hashes/s that is under a minute in the worst case. A
#: hostile or misconfigured server must not be able to pin a client's CPU.
DEFAULT_MAX_DIFFICULTY: Final = 50_000_000
_STATUS_PRECONDITION_REQUIRED: Final = 428
_STATUS_UNAUTHORIZED: Final = 401


def is_challenge(status: int, headers: Mapping[str, str]) -> bool:
    """Whether a response is the sidecar's challenge answer.

    428 always is; 401 only with ``WWW-Authenticate: PoW …``, so that the
    upstream's own 401s (a bad API key) pass through untouched.
    """
    if status == _STATUS_PRECONDITION_REQUIRED:
        return True
    if status != _STATUS_UNAUTHORIZED:
        return False
    scheme = headers.get("www-authenticate", "").split(" ", 1)[0]
    return scheme.lower() == AUTH_SCHEME.lower()


def read_challenge(body: bytes) -> Challenge:
    """The challenge document of a challenge answer; :class:`ProtocolError` if unusable."""
    try:
        return Challenge.from_json(body)
    except ProtocolError as exc:
        raise ProtocolError(f"the server's challenge answer is unusable: {exc}") from None


@dataclass(frozen=True, slots=True)
class Solving:
    """How a client solves: retry bound, difficulty limit, processes, rate cap."""

    max_attempts: int = 3
    max_difficulty: int = DEFAULT_MAX_DIFFICULTY
    workers: int = 1
    max_hashes_per_second: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.max_difficulty < 1:
            raise ValueError("max_difficulty must be at least 1")

    def solution_headers(self, challenge: Challenge) -> dict[str, str]:
        """Solve ``challenge`` (blocking) and return the headers of the retry."""
        if challenge.maxnumber > self.max_difficulty:
            raise SolveError(
                f"the server asks for difficulty {challenge.maxnumber}, "
                f"above this client's limit of {self.max_difficulty}"
            )
        result = solve(
            challenge, workers=self.workers, max_hashes_per_second=self.max_hashes_per_second
        )
        return {
            SOLUTION_HEADER: challenge.solution(result.number).encode(),
            SOLVE_MS_HEADER: str(round(result.seconds * 1000)),
        }
