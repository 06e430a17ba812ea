"""powgate: adaptive proof-of-work admission for AI services.

The public API of the core library: what a client, a server embedding the
verifier, or a custom algorithm needs. Contracts between powgate's own
components live in :mod:`powgate.contract`. Everything here is pure Python with no
server dependencies: the sidecar, the operator and the clients build on it.
"""

from ._algorithms import (
    Algorithm,
    HashAlgorithm,
    algorithm_names,
    get_algorithm,
    register_algorithm,
)
from ._errors import ChallengeRejected, KeyRingError, PowgateError, ProtocolError, SolveError
from ._keys import HmacKey, KeyRing
from ._protocol import (
    AUTH_SCHEME,
    CHALLENGE_PATH,
    MAX_PAYLOAD_BYTES,
    SOLUTION_HEADER,
    SOLVE_MS_HEADER,
    Challenge,
    Solution,
    parse_salt,
)
from ._replay import AsyncReplayCache, Claim, MemoryReplayCache, ReplayCache
from ._solver import SolveResult, solve, solve_reference
from ._verify import Issuer, Reason, Verdict, Verifier

__version__ = "0.1.0"

__all__ = [
    "AUTH_SCHEME",
    "CHALLENGE_PATH",
    "MAX_PAYLOAD_BYTES",
    "SOLUTION_HEADER",
    "SOLVE_MS_HEADER",
    "Algorithm",
    "AsyncReplayCache",
    "Challenge",
    "ChallengeRejected",
    "Claim",
    "HashAlgorithm",
    "HmacKey",
    "Issuer",
    "KeyRing",
    "KeyRingError",
    "MemoryReplayCache",
    "PowgateError",
    "ProtocolError",
    "Reason",
    "ReplayCache",
    "Solution",
    "SolveError",
    "SolveResult",
    "Verdict",
    "Verifier",
    "__version__",
    "algorithm_names",
    "get_algorithm",
    "parse_salt",
    "register_algorithm",
    "solve",
    "solve_reference",
]
