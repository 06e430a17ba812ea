"""Client side of powgate: answer a sidecar's challenges without changing your code.

``PowAuth`` plugs into ``httpx`` (sync and async, and so into SDKs built on
it, such as OpenAI's); :mod:`powgate.client.requests` does the same for
``requests`` (install the ``requests`` extra).
"""

from powgate._errors import ChallengeRejected, ProtocolError, SolveError

from ._common import DEFAULT_MAX_DIFFICULTY
from ._httpx import PowAuth

__all__ = ["DEFAULT_MAX_DIFFICULTY", "ChallengeRejected", "PowAuth", "ProtocolError", "SolveError"]
