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
import json.encoder
import json.scanner
import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote

from ._errors import ProtocolError

__all__ = [
    "AUTH_SCHEME",
    "CHALLENGE_PATH",
    "MAX_FACTOR",
    "MAX_PAYLOAD_BYTES",
    "SOLUTION_HEADER",
    "SOLVE_MS_HEADER",
    "CanonicalV1",
    "Challenge",
    "SaltParams",
    "Solution",
    "canonical_v1_fields",
    "decode_object",
    "decode_solution",
    "format_factor",
    "format_salt",
    "parse_factor",
    "parse_salt",
    "salt_fields",
    "solution_fields",
    "v1_fields",
]

#: Hard cap on an encoded solution (header value or form field). A genuine
#: payload is ~300 bytes; anything far larger is junk and is not decoded.
MAX_PAYLOAD_BYTES: Final = 2048
#: The request header carrying a solution payload.
SOLUTION_HEADER: Final = "X-Powgate-Solution"
#: The request header in which clients report how long solving took (integer ms).
SOLVE_MS_HEADER: Final = "X-Powgate-Solve-Ms"
#: Where a sidecar hands out challenges ahead of a request (``?method=M&path=P``).
CHALLENGE_PATH: Final = "/.well-known/powgate/challenge"
#: The ``WWW-Authenticate`` scheme of a challenge answered with status 401.
AUTH_SCHEME: Final = "PoW"
#: Salt parameters with meaning to powgate.
PARAM_EXPIRES: Final = "expires"
PARAM_KID: Final = "kid"
PARAM_DIFFICULTY: Final = "max"
PARAM_BINDING: Final = "bind"
#: Per-client pricing: who the challenge was priced for (a digest of the client's
#: key and trust) and the factor it paid over the route's price.
PARAM_CLIENT: Final = "ck"
PARAM_FACTOR: Final = "f"

#: The highest price factor a challenge may carry (policies and lists are bounded by it).
MAX_FACTOR: Final = 1_000_000.0
_FACTOR_DIGITS: Final = 3

#: What :func:`salt_fields` returns: ``(expires, kid, difficulty, binding, client, factor)``.
SaltFields = tuple[int | None, str | None, int | None, str | None, str | None, str | None]


@dataclass(frozen=True, slots=True)
class SaltParams:
    """The parameters powgate reads from a salt; others are kept but ignored."""

    expires: int | None
    kid: str | None
    difficulty: int | None
    binding: str | None
    client: str | None = None
    factor: str | None = None


#: JSON string quoting as json.dumps does it (ASCII output), in C.
_quote_json: Final = json.encoder.encode_basestring_ascii
# What quote() would leave as it is: checking first skips its slow path.
_UNRESERVED: Final = re.compile(r"[A-Za-z0-9._~/:-]*")


#: The salt exactly as :class:`powgate.Issuer` writes it, values needing no
#: decoding: one C match instead of the general parse below, same result.
_CANONICAL_SALT: Final = re.compile(
    rf"[^?]*\?{PARAM_EXPIRES}=([0-9]{{1,18}})&{PARAM_KID}=([A-Za-z0-9._~/:-]*)"
    rf"&{PARAM_DIFFICULTY}=([0-9]{{1,18}})&(?:{PARAM_BINDING}=([A-Za-z0-9._~/:-]*)&)?"
    rf"(?:{PARAM_CLIENT}=([A-Za-z0-9_-]*)&{PARAM_FACTOR}=([0-9.]*)&)?"
)


#: An ALTCHA v1 payload (decoded from base64) exactly as powgate's clients write
#: it (:meth:`Solution.encode`, solver.js): these keys in this order, no
#: whitespace, no escapes, lowercase hex, the salt as the issuer writes it.
#: Whatever the general decoder would read from such bytes, these groups hold
#: too; anything else takes the general path (:func:`canonical_v1_fields`).
_CANONICAL_V1: Final = re.compile(
    rb'\{"algorithm":"([A-Za-z0-9-]{1,32})","challenge":"([0-9a-f]{1,128})",'
    rb'"number":(0|[1-9][0-9]{0,15}),"salt":"([0-9a-f]*\?'
    + rf"{PARAM_EXPIRES}=([0-9]{{1,18}})&{PARAM_KID}=([A-Za-z0-9._~/:-]*)"
    rf"&{PARAM_DIFFICULTY}=([0-9]{{1,18}})&(?:{PARAM_BINDING}=([A-Za-z0-9._~/:-]*)&)?"
    rf"(?:{PARAM_CLIENT}=([A-Za-z0-9_-]*)&{PARAM_FACTOR}=([0-9.]*)&)?".encode()
    + rb')","signature":"([0-9a-f]{1,128})"\}'
)
_MAX_NUMBER: Final = 2**53


def format_salt(nonce: str, params: dict[str, str]) -> str:
    """``nonce?k=v&k=v&`` with values percent-encoded, as ALTCHA writes it.

    ``/`` and ``:`` are legal in a query and common in bindings
    (``namespace/policy:route``); leaving them as they are spares the
    verifier a percent-decoding pass.
    """
    query = "&".join(
        f"{k}={v if _UNRESERVED.fullmatch(v) else quote(v, safe='/:')}" for k, v in params.items()
    )
    return f"{nonce}?{query}&" if query else f"{nonce}&"


def format_factor(factor: float) -> str:
    """A factor as it is signed into a challenge: a decimal with at most three places."""
    text = f"{factor:.{_FACTOR_DIGITS}f}".rstrip("0").rstrip(".")
    return text or "0"


def parse_factor(text: str | None) -> float | None:
    """The value :func:`format_factor` wrote, or None for anything else (absent, malformed)."""
    if text is None or not 0 < len(text) <= 12 or not text.isascii():
        return None
    whole, dot, fraction = text.partition(".")
    if not whole.isdigit() or (dot and not (fraction.isdigit() and len(fraction) <= 3)):
        return None
    value = float(text)
    return value if value <= MAX_FACTOR else None


def parse_salt(salt: str) -> SaltParams:
    """Read powgate's parameters from a salt; malformed values read as absent.

    A duplicated parameter makes the salt ambiguous, so it reads as an empty
    value (no key id, binding or number is empty, so it fails whatever check
    needs it), rather than first-wins or last-wins, which a forger could pick
    between, or absent, which would make a key id fall back to the active key.
    """
    return SaltParams(*salt_fields(salt))


def salt_fields(salt: str) -> SaltFields:
    """:func:`parse_salt` as a plain tuple ``(expires, kid, difficulty, binding, client, factor)``.

    The verifier's hot path uses this form: building a frozen dataclass costs
    more than the parsing.
    """
    canonical = _CANONICAL_SALT.fullmatch(salt)
    if canonical is not None:
        expires, kid, difficulty, binding, client, factor = canonical.groups()
        return int(expires), kid, int(difficulty), binding, client, factor
    return _any_salt_fields(salt)


def _any_salt_fields(salt: str) -> SaltFields:
    """:func:`salt_fields` for salts of any shape: other writers', other orders, encoded values."""
    _, sep, query = salt.partition("?")
    if not sep:
        return None, None, None, None, None, None
    found: dict[str, str] = {}
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        # Percent-decoding only when needed (our issuer rarely needs it).
        found[key] = "" if key in found else (unquote(value) if "%" in value else value)
    get = found.get
    return (
        _int_or_none(get(PARAM_EXPIRES)),
        get(PARAM_KID),
        _int_or_none(get(PARAM_DIFFICULTY)),
        get(PARAM_BINDING),
        get(PARAM_CLIENT),
        get(PARAM_FACTOR),
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
        # What json.dumps(self.to_dict(), separators=(",", ":")) gives, without
        # its generic machinery: every refusal on the reject path renders one.
        return (
            f'{{"algorithm":{_quote_json(self.algorithm)},'
            f'"challenge":{_quote_json(self.challenge)},"maxnumber":{self.maxnumber:d},'
            f'"salt":{_quote_json(self.salt)},"signature":{_quote_json(self.signature)}}}'
        )

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


class MalformedPayloadError(Exception):
    """Internal: why a payload could not be decoded (becomes a verdict reason)."""

    def __init__(self, reason: str, cause: str) -> None:
        super().__init__(cause)
        self.reason = reason
        self.cause = cause


def decode_solution(payload: str | bytes) -> Solution:
    """Decode a payload with hard limits; raises :class:`MalformedPayloadError`."""
    return Solution(*solution_fields(payload))


def solution_fields(payload: str | bytes) -> tuple[str, str, int, str, str]:
    """:func:`decode_solution` as a tuple ``(algorithm, challenge, number, salt, signature)``."""
    return v1_fields(decode_object(payload))


def decode_object(payload: str | bytes) -> dict[str, Any]:
    """Base64 → UTF-8 → one JSON object, with the size limit; raises :class:`MalformedPayloadError`.

    Every check is about shape only. Nothing here trusts the content: the
    verifier decides whether the solution is valid. This is the verifier's
    hot path, so it calls the C base64 and JSON scanners directly instead of
    going through ``base64.b64decode`` and ``json.loads`` (which add a regex
    pass and encoding detection).
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MalformedPayloadError("oversized", f"payload of {len(payload)} bytes")
    try:
        raw = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        # ALTCHA's widget and some clients send URL-safe base64.
        try:
            raw = base64.urlsafe_b64decode(payload)
        except (binascii.Error, ValueError) as exc:
            raise MalformedPayloadError("malformed", f"not base64: {exc}") from None
    try:
        text = raw.decode()
        data, end = _scan_json(text, 0)
    except UnicodeDecodeError:
        raise MalformedPayloadError("malformed", "not UTF-8") from None
    except StopIteration:
        raise MalformedPayloadError("malformed", "not JSON: no value at the start") from None
    except (ValueError, RecursionError) as exc:
        raise MalformedPayloadError("malformed", f"not JSON: {exc}") from None
    if end != len(text):
        raise MalformedPayloadError("malformed", "not JSON: trailing data")
    if type(data) is not dict:
        raise MalformedPayloadError("malformed", "not a JSON object")
    return data


#: What :func:`canonical_v1_fields` returns: ``(algorithm, challenge, signature,
#: work input, salt parameters)``; the work input is ``salt + str(number)`` encoded.
CanonicalV1 = tuple[str, str, str, bytes, SaltFields]


def canonical_v1_fields(payload: str | bytes) -> CanonicalV1 | None:
    """An ALTCHA v1 payload of the canonical shape read with one match, else ``None``.

    The verifier's fast path: base64, one regular expression over the bytes
    (instead of the JSON scanner, the type checks and the salt's own match),
    and the values as :func:`decode_object`, :func:`v1_fields` and
    :func:`salt_fields` would give them. ``None`` for anything else, including
    every malformed payload: the general path then decides, and explains.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        raw = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    match = _CANONICAL_V1.fullmatch(raw)
    if match is None:
        return None
    name, challenge, number, salt, expires, kid, difficulty, binding, client, factor, sig = (
        match.groups()
    )
    if int(number) >= _MAX_NUMBER:
        return None
    # ASCII by the pattern: decoding cannot fail, and reads as JSON would.
    return (
        name.decode(),
        challenge.decode(),
        sig.decode(),
        # The salt ends in "&" by the pattern, and the number has no leading zero.
        salt + number,
        (
            int(expires),
            kid.decode(),
            int(difficulty),
            None if binding is None else binding.decode(),
            None if client is None else client.decode(),
            None if factor is None else factor.decode(),
        ),
    )


def v1_fields(data: dict[str, Any]) -> tuple[str, str, int, str, str]:
    """The fields of an ALTCHA v1 payload object, checked for type."""
    number = data.get("number")
    # ``type(...) is int`` also rejects booleans, which are ints to isinstance.
    if type(number) is not int or not 0 <= number < 2**53:
        raise MalformedPayloadError("malformed", "number is not a non-negative integer")
    algorithm, challenge, salt, signature = fields = (
        data.get("algorithm"),
        data.get("challenge"),
        data.get("salt"),
        data.get("signature"),
    )
    # Spelled out rather than a loop: this runs for every request.
    if not (
        type(algorithm) is str
        and type(challenge) is str
        and type(salt) is str
        and type(signature) is str
        and algorithm
        and challenge
        and salt
        and signature
    ):
        names = ("algorithm", "challenge", "salt", "signature")
        bad = next(n for n, v in zip(names, fields, strict=True) if type(v) is not str or not v)
        raise MalformedPayloadError("malformed", f"{bad} is not a non-empty string")
    return algorithm, challenge, number, salt, signature


# The C scanner behind json.loads, without its per-call encoding detection.
# (typeshed types its argument as the scanner itself; it is the decoder.)
_scan_json: Final = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
