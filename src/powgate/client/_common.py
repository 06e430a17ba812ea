"""What every client adapter shares: spotting a challenge answer and solving it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from powgate._altcha2 import ChallengeV2
from powgate._deepseek import DeepSeekChallenge
from powgate._dispatch import parse_challenge, solve_challenge
from powgate._errors import ProtocolError, SolveError
from powgate._protocol import AUTH_SCHEME, SOLVE_MS_HEADER
from powgate._verify import AnyChallenge

__all__ = [
    "DEFAULT_MAX_DIFFICULTY",
    "DEFAULT_V2_TIMEOUT",
    "Solving",
    "is_challenge",
    "read_challenge",
]

#: A server may ask for at most this much work by default: at the pure-Python
#: solver's ~1-2 M hashes/s that is under a minute in the worst case. A
#: hostile or misconfigured server must not be able to pin a client's CPU.
DEFAULT_MAX_DIFFICULTY: Final = 50_000_000
#: An ALTCHA v2 search has no upper bound: past this many seconds it gives up.
#: (What one try may cost is bounded by the algorithm registry.)
DEFAULT_V2_TIMEOUT: Final = 120.0
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


def read_challenge(body: bytes) -> AnyChallenge:
    """The challenge document of a challenge answer, of any family; :class:`ProtocolError`."""
    try:
        return parse_challenge(body)
    except ProtocolError as exc:
        raise ProtocolError(f"the server's challenge answer is unusable: {exc}") from None


@dataclass(frozen=True, slots=True)
class Solving:
    """How a client solves: retry bound, difficulty limit, processes, rate cap, v2 time limit.

    ``max_difficulty`` bounds the bounded searches (ALTCHA v1's ``maxnumber``,
    DeepSeek's ``difficulty``); an ALTCHA v2 search is bounded by
    ``v2_timeout`` seconds and the registry's limits on one try.
    """

    max_attempts: int = 3
    max_difficulty: int = DEFAULT_MAX_DIFFICULTY
    workers: int = 1
    max_hashes_per_second: float | None = None
    v2_timeout: float = DEFAULT_V2_TIMEOUT

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.max_difficulty < 1:
            raise ValueError("max_difficulty must be at least 1")

    def solution_headers(self, challenge: AnyChallenge) -> dict[str, str]:
        """Solve ``challenge`` (blocking) and return the headers of the retry."""
        if not isinstance(challenge, ChallengeV2):
            bound = (
                challenge.difficulty
                if isinstance(challenge, DeepSeekChallenge)
                else challenge.maxnumber
            )
            if bound > self.max_difficulty:
                raise SolveError(
                    f"the server asks for difficulty {bound}, "
                    f"above this client's limit of {self.max_difficulty}"
                )
        solved = solve_challenge(
            challenge,
            workers=self.workers,
            max_hashes_per_second=self.max_hashes_per_second,
            timeout=self.v2_timeout,
        )
        return {solved.header: solved.payload, SOLVE_MS_HEADER: str(round(solved.seconds * 1000))}
