"""The wire format: challenges, solution payloads and the parameters in the salt.

The format is ALTCHA v1's, so ALTCHA's widget and libraries interoperate:

* challenge: ``{"algorithm", "challenge", "maxnumber", "salt", "signature"}``
  where ``challenge = H(salt + str(number))`` and ``signature = HMAC(key, challenge)``;
* solution payload: base64 of the JSON ``{"algorithm", "challenge", "number",
  "salt", "signature"}``.

Parameters ride in the salt as a query string (``<nonce>?expires=…&kid=…&``),
so they are covered by the hash and therefore by the signature. The trailing
``&`` is ALTCHA's delimiter against parameter splicing.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote

from ._errors import ProtocolError

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "Challenge",
    "SaltParams",
    "Solution",
    "decode_solution",
    "format_salt",
    "parse_salt",
]

#: Hard cap on an encoded solution (header value or form field). A genuine
#: payload is ~300 bytes; anything far larger is junk and is not decoded.
MAX_PAYLOAD_BYTES: Final = 2048
#: Salt parameters with meaning to powgate.
PARAM_EXPIRES: Final = "expires"
PARAM_KID: Final = "kid"
PARAM_DIFFICULTY: Final = "max"
PARAM_BINDING: Final = "bind"


@dataclass(frozen=True, slots=True)
class SaltParams:
    """The parameters powgate reads from a salt; others are kept but ignored."""

    expires: int | None
    kid: str | None
    difficulty: int | None
    binding: str | None


def format_salt(nonce: str, params: dict[str, str]) -> str:
    """``nonce?k=v&k=v&`` with values percent-encoded, as ALTCHA writes it."""
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    return f"{nonce}?{query}&" if query else f"{nonce}&"


def parse_salt(salt: str) -> SaltParams:
    """Read powgate's parameters from a salt; malformed values read as absent.

    A duplicated parameter makes the salt ambiguous, so it reads as absent too
    (and then fails whatever check needs it), rather than first-wins or
    last-wins, which a forger could pick between.
    """
    _, sep, query = salt.partition("?")
    found: dict[str, str | None] = {}
    if sep:
        for part in query.split("&"):
            if not part:
                continue
            key, _, value = part.partition("=")
            found[key] = None if key in found else unquote(value)
    return SaltParams(
        expires=_int_or_none(found.get(PARAM_EXPIRES)),
        kid=found.get(PARAM_KID),
        difficulty=_int_or_none(found.get(PARAM_DIFFICULTY)),
        binding=found.get(PARAM_BINDING),
    )


def _int_or_none(value: str | None) -> int | None:
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 18:
        return None
    return int(value)


@dataclass(frozen=True, slots=True)
class Challenge:
    """A signed puzzle: find ``number`` ≤ ``maxnumber`` with ``H(salt + number) == challenge``."""

    algorithm: str
    challenge: str
    maxnumber: int
    salt: str
    signature: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "challenge": self.challenge,
            "maxnumber": self.maxnumber,
            "salt": self.salt,
            "signature": self.signature,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @property
    def params(self) -> SaltParams:
        return parse_salt(self.salt)

    @classmethod
    def from_dict(cls, data: object) -> Challenge:
        """Validate a challenge document (as a client receives it).

        ALTCHA's own libraries write ``maxNumber``; both spellings are read.
        """
        if not isinstance(data, dict):
            raise ProtocolError("a challenge must be a JSON object")
        maxnumber = data.get("maxnumber", data.get("maxNumber"))
        fields = {k: data.get(k) for k in ("algorithm", "challenge", "salt", "signature")}
        for key, value in fields.items():
            if not isinstance(value, str) or not value:
                raise ProtocolError(f"challenge field {key!r} must be a non-empty string")
        if not isinstance(maxnumber, int) or isinstance(maxnumber, bool) or maxnumber < 1:
            raise ProtocolError("challenge field 'maxnumber' must be a positive integer")
        return cls(maxnumber=maxnumber, **fields)  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, text: str | bytes) -> Challenge:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"a challenge must be JSON: {exc}") from None
        return cls.from_dict(data)

    def solution(self, number: int) -> Solution:
        """The payload that answers this challenge with ``number``."""
        return Solution(self.algorithm, self.challenge, number, self.salt, self.signature)


@dataclass(frozen=True, slots=True)
class Solution:
    """A client's answer: the challenge echoed back with the number found."""

    algorithm: str
    challenge: str
    number: int
    salt: str
    signature: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "challenge": self.challenge,
            "number": self.number,
            "salt": self.salt,
            "signature": self.signature,
        }

    def encode(self) -> str:
        """The base64 payload sent in ``X-Powgate-Solution`` (or ALTCHA's ``altcha`` field)."""
        raw = json.dumps(self.to_dict(), separators=(",", ":")).encode()
        return base64.b64encode(raw).decode("ascii")


class MalformedPayload(Exception):
    """Internal: why a payload could not be decoded (becomes a verdict reason)."""

    def __init__(self, reason: str, cause: str) -> None:
        super().__init__(cause)
        self.reason = reason
        self.cause = cause


def decode_solution(payload: str | bytes) -> Solution:
    """Decode a payload with hard limits; raises :class:`MalformedPayload`.

    Every check is about shape only. Nothing here trusts the content: the
    verifier decides whether the solution is valid.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MalformedPayload("oversized", f"payload of {len(payload)} bytes")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        # ALTCHA's widget and some clients send URL-safe base64.
        try:
            raw = base64.urlsafe_b64decode(payload)
        except (binascii.Error, ValueError) as exc:
            raise MalformedPayload("malformed", f"not base64: {exc}") from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedPayload("malformed", f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedPayload("malformed", "not a JSON object")
    number = data.get("number")
    if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < 2**53:
        raise MalformedPayload("malformed", "number is not a non-negative integer")
    strings = []
    for key in ("algorithm", "challenge", "salt", "signature"):
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise MalformedPayload("malformed", f"{key} is not a non-empty string")
        strings.append(value)
    algorithm, challenge, salt, signature = strings
    return Solution(algorithm, challenge, number, salt, signature)
