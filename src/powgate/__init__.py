"""powgate: adaptive proof-of-work admission for AI services.

The public API of the core library: what a client, a server embedding the
verifier, or a custom algorithm needs. Contracts between powgate's own
components live in :mod:`powgate.contract`. Everything here is pure Python with no
server dependencies: the sidecar, the operator and the clients build on it.
"""

from ._algorithms import (
    Algorithm,
    DeepSeekAlgorithm,
    Family,
    HashAlgorithm,
    KdfAlgorithm,
    KdfKind,
    KdfParams,
    algorithm_names,
    get_algorithm,
    register_algorithm,
)
from ._altcha2 import ChallengeV2, SolutionV2
from ._deepseek import DEEPSEEK_CHALLENGE_PATH, DEEPSEEK_HEADER, DeepSeekChallenge, DeepSeekSolution
from ._dispatch import Solved, parse_challenge, solve_challenge
from ._errors import (
    ChallengeRejected,
    KeyRingError,
    PoolFullError,
    PowgateError,
    ProtocolError,
    SolveError,
)
from ._keys import HmacKey, KeyRing
from ._pool import DerivationPool
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
from ._solver import SolveResult, SolveResultV2, solve, solve_deepseek, solve_reference, solve_v2
from ._verify import AnyChallenge, Attempt, Issuer, Reason, Verdict, Verifier, claim_reason

__version__ = "0.1.0"

__all__ = [
    "AUTH_SCHEME",
    "CHALLENGE_PATH",
    "DEEPSEEK_CHALLENGE_PATH",
    "DEEPSEEK_HEADER",
    "MAX_PAYLOAD_BYTES",
    "SOLUTION_HEADER",
    "SOLVE_MS_HEADER",
    "Algorithm",
    "AnyChallenge",
    "AsyncReplayCache",
    "Attempt",
    "Challenge",
    "ChallengeRejected",
    "ChallengeV2",
    "Claim",
    "DeepSeekAlgorithm",
    "DeepSeekChallenge",
    "DeepSeekSolution",
    "DerivationPool",
    "Family",
    "HashAlgorithm",
    "HmacKey",
    "Issuer",
    "KdfAlgorithm",
    "KdfKind",
    "KdfParams",
    "KeyRing",
    "KeyRingError",
    "MemoryReplayCache",
    "PoolFullError",
    "PowgateError",
    "ProtocolError",
    "Reason",
    "ReplayCache",
    "Solution",
    "SolutionV2",
    "SolveError",
    "SolveResult",
    "SolveResultV2",
    "Solved",
    "Verdict",
    "Verifier",
    "__version__",
    "algorithm_names",
    "claim_reason",
    "get_algorithm",
    "parse_challenge",
    "parse_salt",
    "register_algorithm",
    "solve",
    "solve_challenge",
    "solve_deepseek",
    "solve_reference",
    "solve_v2",
]
