"""The exception tree of powgate, in one place.

    PowgateError
    ├── KeyRingError        a key file or Secret is missing, unreadable or malformed
    ├── ProtocolError       a challenge document cannot be used (wrong shape or types)
    ├── SolveError          a challenge has no solution in its range, or an unknown algorithm
    ├── PoolFullError       a derivation pool has no free place
    └── ChallengeRejected   (client SDK) the server kept rejecting our solutions

Verification of a client's solution never raises: hostile input is expected
there, so it yields a :class:`powgate.Verdict` with a reason instead.
"""

from __future__ import annotations

__all__ = [
    "ChallengeRejected",
    "KeyRingError",
    "PoolFullError",
    "PowgateError",
    "ProtocolError",
    "SolveError",
]


class PowgateError(Exception):
    """Base class of every error powgate raises."""


class KeyRingError(PowgateError):
    """A key ring document is missing, unreadable or malformed."""


class ProtocolError(PowgateError):
    """A challenge document does not have the shape the protocol requires."""


class SolveError(PowgateError):
    """A challenge could not be solved (no number in range, unknown algorithm)."""


class PoolFullError(PowgateError):
    """A :class:`powgate.DerivationPool` has no free place for one more derivation."""


class ChallengeRejected(PowgateError):  # noqa: N818 - public name, reads as an outcome
    """The server rejected our solutions more often than the client allows."""

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts
