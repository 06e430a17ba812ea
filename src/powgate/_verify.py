"""Issuing challenges and verifying solutions.

Verification order (docs/protocol.md): parse with hard limits → known algorithm →
signature under a key the ring still accepts (constant time) → not expired →
the work → bound to this policy/route → enough difficulty → not seen before.
Each failure has its own :class:`Reason` for logs and metrics; clients are
meant to see one uniform rejection (no oracle), which is the caller's job.
"""

from __future__ import annotations

import enum
import hmac
import os
import time
from collections.abc import Callable
from typing import Final, NamedTuple

from ._algorithms import Algorithm, get_algorithm
from ._keys import KeyRing
from ._protocol import (
    PARAM_BINDING,
    PARAM_DIFFICULTY,
    PARAM_EXPIRES,
    PARAM_KID,
    Challenge,
    MalformedPayloadError,
    format_salt,
    salt_fields,
    solution_fields,
)
from ._replay import Claim, ReplayCache

__all__ = ["Issuer", "Reason", "Verdict", "Verifier"]

Clock = Callable[[], float]
#: Difficulty is ``maxnumber``; above this a browser would search for minutes.
MAX_DIFFICULTY: Final = 1 << 40
_NONCE_BYTES: Final = 12
_RANDOM_BYTES: Final = _NONCE_BYTES + 8
_MAX_SUFFIXES: Final = 256


class Reason(enum.StrEnum):
    """Why a solution was admitted or not. Values are metric label values."""

    OK = "ok"
    MISSING = "missing"
    OVERSIZED = "oversized"
    MALFORMED = "malformed"
    UNKNOWN_ALGORITHM = "unknown_algorithm"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    WRONG_NUMBER = "wrong_number"
    WRONG_BINDING = "wrong_binding"
    INSUFFICIENT = "insufficient"
    REPLAYED = "replayed"
    REPLAY_CACHE_FULL = "replay_cache_full"


class Verdict(NamedTuple):
    """The outcome of one verification.

    ``reason`` is safe to count; ``cause`` is the private detail for logs and
    must never be sent to the client. (A named tuple rather than a frozen
    dataclass: one is built per request, and it is four times cheaper.)
    """

    reason: Reason
    cause: str = ""
    difficulty: int = 0
    expires: int = 0

    @property
    def ok(self) -> bool:
        return self.reason is Reason.OK


MISSING: Final = Verdict(Reason.MISSING, "no solution sent")


class Issuer:
    """Creates signed challenges with the ring's active key."""

    __slots__ = ("_algorithm", "_clock", "_suffixes", "keyring")

    def __init__(
        self, *, keyring: KeyRing, algorithm: str = "SHA-256", clock: Clock = time.time
    ) -> None:
        found = get_algorithm(algorithm)
        if found is None:
            raise ValueError(f"unknown algorithm {algorithm!r}")
        self._algorithm: Algorithm = found
        self._clock = clock
        self._suffixes: dict[tuple[str, int, str | None], str] = {}
        #: Replace to rotate; issuing reads it once per challenge.
        self.keyring = keyring

    def issue(self, *, difficulty: int, ttl: float, binding: str | None = None) -> Challenge:
        """A fresh challenge of ``difficulty`` (its ``maxnumber``), valid for ``ttl`` seconds."""
        return self.issue_many(1, difficulty=difficulty, ttl=ttl, binding=binding)[0]

    def issue_many(
        self, count: int, *, difficulty: int, ttl: float, binding: str | None = None
    ) -> list[Challenge]:
        """``count`` fresh challenges alike but for their nonce and number.

        A batch shares one clock reading, one read of the system's randomness
        and one lookup of the salt's fixed part: a server that refuses a flood
        issues challenges in batches for that reason.
        """
        if not 1 <= difficulty <= MAX_DIFFICULTY:
            raise ValueError(f"difficulty must be within 1..{MAX_DIFFICULTY}")
        key = self.keyring.signing_key
        suffix = self._suffixes.get((key.kid, difficulty, binding))
        if suffix is None:
            suffix = self._suffix(kid=key.kid, difficulty=difficulty, binding=binding)
        head = f"?{PARAM_EXPIRES}={int(self._clock() + ttl)}&{suffix}"
        algorithm, secret, name = self._algorithm, key.secret, self._algorithm.name
        work_hex, sign = algorithm.work_hex, algorithm.sign
        # Each challenge takes a nonce and a number from the same read. The
        # number is uniform below maxnumber (mean work difficulty/2, worst case
        # difficulty); the modulo bias of 64 random bits over at most 2**40 is
        # below 2**-24.
        raw = os.urandom(_RANDOM_BYTES * count)
        challenges = []
        for offset in range(0, len(raw), _RANDOM_BYTES):
            nonce = raw[offset : offset + _NONCE_BYTES].hex()
            number = (
                int.from_bytes(raw[offset + _NONCE_BYTES : offset + _RANDOM_BYTES]) % difficulty
            )
            salt = nonce + head
            challenge = work_hex(f"{salt}{number}".encode())
            challenges.append(
                Challenge(name, challenge, difficulty, salt, sign(secret, challenge.encode()))
            )
        return challenges

    def _suffix(self, *, kid: str, difficulty: int, binding: str | None) -> str:
        """The salt's parameters after ``expires``: the same for every challenge of a route."""
        params = {PARAM_KID: kid, PARAM_DIFFICULTY: str(difficulty)}
        if binding is not None:
            params[PARAM_BINDING] = binding
        # format_salt with an empty nonce gives "?k=v&...&"; drop the "?".
        suffix = format_salt("", params)[1:]
        if len(self._suffixes) >= _MAX_SUFFIXES:
            # Difficulty moves with the operator: old entries are dead weight.
            self._suffixes.clear()
        self._suffixes[(kid, difficulty, binding)] = suffix
        return suffix


class Verifier:
    """Checks solution payloads against a key ring and a replay cache."""

    __slots__ = ("_clock", "keyring", "replay")

    def __init__(
        self, *, keyring: KeyRing, replay: ReplayCache | None, clock: Clock = time.time
    ) -> None:
        #: Replace to rotate; each verification reads it once.
        self.keyring = keyring
        self.replay = replay
        self._clock = clock

    def verify(
        self, payload: str | bytes | None, *, binding: str | None = None, min_difficulty: int = 0
    ) -> Verdict:
        """Verify and, when valid, claim the solution in the replay cache.

        ``binding`` (when given) must equal the one the challenge was issued
        for; ``min_difficulty`` rejects challenges easier than that. Never
        raises on hostile input.
        """
        now = self._clock()
        verdict, replay_key = self._check(
            payload, binding=binding, min_difficulty=min_difficulty, now=now
        )
        if replay_key is None or self.replay is None:
            return verdict
        outcome = self.replay.claim(replay_key, expires_at=verdict.expires, now=now)
        if outcome == Claim.NEW:
            return verdict
        if outcome == Claim.SEEN:
            return Verdict(
                Reason.REPLAYED, "solution already used", verdict.difficulty, verdict.expires
            )
        return Verdict(
            Reason.REPLAY_CACHE_FULL, "replay cache at its cap", verdict.difficulty, verdict.expires
        )

    def check(
        self, payload: str | bytes | None, *, binding: str | None = None, min_difficulty: int = 0
    ) -> tuple[Verdict, bytes | None]:
        """Verify everything but single use; returns the verdict and the replay key.

        For callers whose replay store is asynchronous (a shared store): they
        claim the key themselves when the verdict is ok.
        """
        return self._check(
            payload, binding=binding, min_difficulty=min_difficulty, now=self._clock()
        )

    def _check(
        self, payload: str | bytes | None, *, binding: str | None, min_difficulty: int, now: float
    ) -> tuple[Verdict, bytes | None]:
        if not payload:
            return MISSING, None
        try:
            name, challenge, number, salt, signature = solution_fields(payload)
        except MalformedPayloadError as exc:
            return Verdict(Reason(exc.reason), exc.cause), None
        algorithm = get_algorithm(name)
        if algorithm is None:
            return Verdict(Reason.UNKNOWN_ALGORITHM, f"algorithm {name[:32]!r}"), None
        expires, kid, difficulty, bound_to = salt_fields(salt)
        ring = self.keyring
        # A challenge without a key id was made by a plain ALTCHA server with
        # our active key: the signature check below still applies.
        key = ring.verification_key(kid if kid is not None else ring.active, now=now)
        if key is None:
            return Verdict(Reason.UNKNOWN_KEY, f"key id {str(kid)[:40]!r} not accepted"), None
        # JSON may carry lone surrogates; "surrogatepass" keeps them from raising.
        expected = algorithm.sign(key.secret, challenge.encode("utf-8", "surrogatepass"))
        if not signature.isascii() or not hmac.compare_digest(expected, signature):
            return Verdict(Reason.BAD_SIGNATURE, f"signature under key {key.kid}"), None
        difficulty = difficulty or 0
        if expires is None:
            return Verdict(Reason.EXPIRED, "challenge has no expires parameter", difficulty), None
        if now > expires:
            return Verdict(Reason.EXPIRED, f"expired {now - expires:.0f}s ago", difficulty), None
        # ALTCHA's delimiter against splicing: hash as if the salt ended in "&".
        if not salt.endswith("&"):
            salt += "&"
        work = algorithm.work_hex(f"{salt}{number}".encode("utf-8", "surrogatepass"))
        if work != challenge:
            return Verdict(Reason.WRONG_NUMBER, "hash of salt and number differs", difficulty), None
        if binding is not None and bound_to != binding:
            cause = f"issued for {bound_to!r}, used for {binding!r}"
            return Verdict(Reason.WRONG_BINDING, cause, difficulty), None
        if difficulty < min_difficulty:
            return Verdict(
                Reason.INSUFFICIENT, f"difficulty {difficulty} < {min_difficulty}", difficulty
            ), None
        # The challenge is our own digest here, so it is valid hex.
        return Verdict(Reason.OK, "", difficulty, expires), bytes.fromhex(work)
