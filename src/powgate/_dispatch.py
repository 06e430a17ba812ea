"""Any challenge document to its solution, whatever the family: what clients call.

A challenge answer is an ALTCHA v1 document (``maxnumber``), an ALTCHA v2
one (``parameters``) or a DeepSeek one (bare or in DeepSeek's response
envelope); each is solved by its own solver and answered in its own header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from ._altcha2 import ChallengeV2
from ._deepseek import DEEPSEEK_HEADER, DeepSeekChallenge
from ._errors import ProtocolError
from ._protocol import SOLUTION_HEADER, Challenge
from ._solver import solve, solve_deepseek, solve_v2
from ._verify import AnyChallenge

__all__ = ["CHALLENGE_TYPES", "Solved", "expected_work", "parse_challenge", "solve_challenge"]

_DEEPSEEK: Final = "DeepSeekHashV1"
#: The classes of :data:`powgate.AnyChallenge`, for ``isinstance``.
CHALLENGE_TYPES: Final = (Challenge, ChallengeV2, DeepSeekChallenge)


def parse_challenge(document: object) -> AnyChallenge:
    """Validate a challenge document of any family; :class:`ProtocolError` if unusable."""
    if isinstance(document, str | bytes):
        try:
            document = json.loads(document)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"a challenge must be JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ProtocolError("a challenge must be a JSON object")
    if "parameters" in document:
        return ChallengeV2.from_dict(document)
    if document.get("algorithm") == _DEEPSEEK or "biz_data" in str(document.get("data", ""))[:64]:
        return DeepSeekChallenge.from_dict(document)
    return Challenge.from_dict(document)


def expected_work(challenge: AnyChallenge) -> float:
    """Mean work of a solve, in the unit difficulty counts (``difficulty / 2`` in every scheme).

    Hashes for ALTCHA v1 and DeepSeek; for ALTCHA v2, tries at the policy's
    parameters ("base tries"): a challenge whose tries were scaled by the
    issuer counts each try as that fraction or multiple of a base try.
    """
    if isinstance(challenge, ChallengeV2):
        return challenge.difficulty / 2
    if isinstance(challenge, DeepSeekChallenge):
        return challenge.difficulty / 2
    return (challenge.maxnumber + 1) / 2


@dataclass(frozen=True, slots=True)
class Solved:
    """A solution ready to send: its header and payload, the work it took, the solve time.

    ``work`` counts hashes (ALTCHA v1, DeepSeek) or, for ALTCHA v2, tries
    in base tries (see :func:`expected_work`).
    """

    header: str
    payload: str
    seconds: float
    work: int = 0


def solve_challenge(
    challenge: AnyChallenge,
    *,
    workers: int = 1,
    max_hashes_per_second: float | None = None,
    timeout: float | None = None,
) -> Solved:
    """Solve a challenge of any family (blocking).

    ``max_hashes_per_second`` caps ALTCHA v1 searches only (load tests model
    slow clients with it); ``timeout`` bounds ALTCHA v2's unbounded search.
    """
    if isinstance(challenge, ChallengeV2):
        found = solve_v2(challenge, workers=workers, timeout=timeout)
        ms = round(found.seconds * 1000)
        payload = challenge.solution(found.counter, found.derived_key, ms=ms).encode()
        base_tries = found.tries * expected_work(challenge) / challenge.expected_tries
        return Solved(SOLUTION_HEADER, payload, found.seconds, max(1, round(base_tries)))
    if isinstance(challenge, DeepSeekChallenge):
        result = solve_deepseek(challenge, workers=workers)
        payload = challenge.solution(result.number).encode()
        return Solved(DEEPSEEK_HEADER, payload, result.seconds, result.hashes)
    result = solve(challenge, workers=workers, max_hashes_per_second=max_hashes_per_second)
    payload = challenge.solution(result.number).encode()
    return Solved(SOLUTION_HEADER, payload, result.seconds, result.hashes)
