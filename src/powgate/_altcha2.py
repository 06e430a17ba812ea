"""ALTCHA PoW v2's wire format: challenges, payloads and the canonical JSON they sign.

As ALTCHA's libraries (``altcha`` on PyPI, ``altcha``/``altcha-lib`` on npm)
define it:

* challenge: ``{"parameters": {algorithm, nonce, salt, cost, keyLength,
  keyPrefix, memoryCost?, parallelism?, expiresAt?, keySignature?, data?},
  "signature": hex(HMAC-SHA256(key, canonicalJSON(parameters)))}``;
* payload: base64 of ``{"challenge": <the challenge>, "solution": {"counter",
  "derivedKey", "time"?}}``;
* a solution: ``derivedKey = KDF(password = nonce ‖ uint32be(counter), salt)``
  starting with ``keyPrefix`` (nonce and salt hex-decoded).

``canonicalJSON`` is ``JSON.stringify`` with object keys sorted. powgate
reproduces it for the values it accepts in signed parameters: strings without
lone surrogates, integers within ±2^53, booleans, null, and one flat ``data``
object whose keys are identifiers (so that JavaScript's ordering of
integer-like keys never differs from a plain sort).

powgate's own parameters ride in ``data``: ``kid`` (signing key id), ``max``
(the difficulty, see docs/protocol.md) and ``bind`` (the route binding).
"""

from __future__ import annotations

import base64
import json
import re
import struct
from dataclasses import dataclass
from typing import Any, Final

from ._algorithms import KdfParams
from ._errors import ProtocolError
from ._protocol import MalformedPayloadError

__all__ = [
    "MAX_COUNTER",
    "ChallengeV2",
    "SolutionV2",
    "canonical_json",
    "parse_payload",
    "password",
]

MAX_COUNTER: Final = 0xFFFFFFFF
_SAFE_INT: Final = 2**53
_PARAMETER_KEYS: Final = frozenset(
    {
        "algorithm",
        "nonce",
        "salt",
        "cost",
        "keyLength",
        "keyPrefix",
        "keySignature",
        "memoryCost",
        "parallelism",
        "expiresAt",
        "data",
    }
)
_HEX: Final = re.compile(r"(?:[0-9a-f]{2}){1,64}")
_PREFIX: Final = re.compile(r"[0-9a-f]{0,16}")
_DATA_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_MAX_DATA_ITEMS: Final = 16
_MAX_STRING: Final = 512
_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")


def password(nonce: bytes, counter: int) -> bytes:
    """The KDF password of one try: the nonce, then the counter as a big-endian uint32."""
    return nonce + struct.pack(">I", counter)


def canonical_json(parameters: dict[str, Any]) -> str:
    """ALTCHA's ``canonicalJSON`` of values :func:`parse_parameters` accepted."""
    return json.dumps(parameters, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True, slots=True)
class ChallengeV2:
    """A v2 challenge as issued or received; ``raw`` is the signed parameters object."""

    algorithm: str
    nonce: str
    salt: str
    params: KdfParams
    key_prefix: str
    expires_at: int | None
    data: dict[str, Any]
    signature: str
    raw: dict[str, Any]

    @classmethod
    def build(
        cls,
        *,
        algorithm: str,
        nonce: str,
        salt: str,
        params: KdfParams,
        key_prefix: str,
        expires_at: int,
        data: dict[str, Any],
        signature: str = "",
    ) -> ChallengeV2:
        raw: dict[str, Any] = {
            "algorithm": algorithm,
            "nonce": nonce,
            "salt": salt,
            "cost": params.cost,
            "keyLength": params.key_length,
            "keyPrefix": key_prefix,
            "expiresAt": expires_at,
            "data": data,
        }
        if params.memory_cost is not None:
            raw["memoryCost"] = params.memory_cost
        if params.parallelism is not None:
            raw["parallelism"] = params.parallelism
        return cls(algorithm, nonce, salt, params, key_prefix, expires_at, data, signature, raw)

    @property
    def difficulty(self) -> int:
        """The signed difficulty (``data.max``); ``2 * 16^len(keyPrefix)`` when absent."""
        value: object = self.data.get("max")
        return value if type(value) is int else 2 * self.expected_tries

    @property
    def expected_tries(self) -> int:
        """Mean derivations a solver makes: ``16^len(keyPrefix)``."""
        return 1 << (4 * len(self.key_prefix))

    def canonical(self) -> str:
        return canonical_json(self.raw)

    def to_dict(self) -> dict[str, Any]:
        return {"parameters": self.raw, "signature": self.signature}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: object) -> ChallengeV2:
        """Validate a challenge document (as a client receives it); :class:`ProtocolError`."""
        try:
            return _challenge(data)
        except MalformedPayloadError as exc:
            raise ProtocolError(f"not a usable ALTCHA v2 challenge: {exc.cause}") from None

    def solution(self, counter: int, derived_key: bytes, *, ms: int | None = None) -> SolutionV2:
        return SolutionV2(self, counter, derived_key.hex(), ms)


@dataclass(frozen=True, slots=True)
class SolutionV2:
    """A client's answer: the challenge, the counter found and its derived key."""

    challenge: ChallengeV2
    counter: int
    derived_key: str
    ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        solution: dict[str, Any] = {"counter": self.counter, "derivedKey": self.derived_key}
        if self.ms is not None:
            solution["time"] = self.ms
        return {"challenge": self.challenge.to_dict(), "solution": solution}

    def encode(self) -> str:
        """The base64 payload (``X-Powgate-Solution``, or the ALTCHA widget's form field)."""
        raw = json.dumps(self.to_dict(), separators=(",", ":")).encode()
        return base64.b64encode(raw).decode("ascii")


def parse_payload(data: dict[str, Any]) -> tuple[ChallengeV2, int, str]:
    """``(challenge, counter, derivedKey)`` of a decoded v2 payload.

    Raises :class:`MalformedPayloadError`.
    """
    solution = data.get("solution")
    if type(solution) is not dict:
        raise MalformedPayloadError("malformed", "solution is not an object")
    counter = solution.get("counter")
    if type(counter) is not int or not 0 <= counter <= MAX_COUNTER:
        raise MalformedPayloadError("malformed", "counter is not a uint32")
    derived = solution.get("derivedKey")
    if type(derived) is not str or _HEX.fullmatch(derived) is None:
        raise MalformedPayloadError("malformed", "derivedKey is not lowercase hex")
    return _challenge(data.get("challenge")), counter, derived


def _challenge(doc: object) -> ChallengeV2:
    if type(doc) is not dict:
        raise MalformedPayloadError("malformed", "challenge is not an object")
    signature = doc.get("signature")
    if type(signature) is not str or not signature:
        raise MalformedPayloadError("malformed", "signature is not a non-empty string")
    raw = doc.get("parameters")
    if type(raw) is not dict:
        raise MalformedPayloadError("malformed", "parameters is not an object")
    unknown = raw.keys() - _PARAMETER_KEYS
    if unknown:
        raise MalformedPayloadError("malformed", f"unknown parameter {sorted(unknown)[0][:32]!r}")
    algorithm, nonce, salt, prefix = (
        raw.get(k) for k in ("algorithm", "nonce", "salt", "keyPrefix")
    )
    if type(algorithm) is not str or not 0 < len(algorithm) <= 32:
        raise MalformedPayloadError("malformed", "algorithm is not a short string")
    for name, value in (("nonce", nonce), ("salt", salt)):
        if type(value) is not str or _HEX.fullmatch(value) is None:
            raise MalformedPayloadError("malformed", f"{name} is not lowercase hex")
    if type(prefix) is not str or _PREFIX.fullmatch(prefix) is None:
        raise MalformedPayloadError("malformed", "keyPrefix is not up to 16 lowercase hex digits")
    cost = _int(raw, "cost")
    key_length = _int(raw, "keyLength")
    if cost is None or key_length is None:
        raise MalformedPayloadError("malformed", "cost and keyLength must be integers")
    key_signature = raw.get("keySignature")
    if key_signature is not None and (
        type(key_signature) is not str
        or len(key_signature) > 256
        or _SURROGATE.search(key_signature)
    ):
        raise MalformedPayloadError("malformed", "keySignature is not a short string")
    data = raw.get("data")
    if data is None:
        data = {}
    elif not _flat_data(data):
        raise MalformedPayloadError("malformed", "data is not a flat object of simple values")
    assert isinstance(data, dict)  # checked by _flat_data
    params = KdfParams(cost, _int(raw, "memoryCost"), _int(raw, "parallelism"), key_length)
    return ChallengeV2(
        algorithm,
        str(nonce),
        str(salt),
        params,
        prefix,
        _int(raw, "expiresAt"),
        data,
        signature,
        raw,
    )


def _int(raw: dict[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if type(value) is not int or not -_SAFE_INT <= value <= _SAFE_INT:
        raise MalformedPayloadError("malformed", f"{key} is not an integer")
    return value


def _flat_data(data: object) -> bool:
    if type(data) is not dict or len(data) > _MAX_DATA_ITEMS:
        return False
    for key, value in data.items():
        if _DATA_KEY.fullmatch(key) is None:
            return False
        if value is None or type(value) is bool:
            continue
        if type(value) is int:
            if not -_SAFE_INT <= value <= _SAFE_INT:
                return False
        elif type(value) is str:
            if len(value) > _MAX_STRING or _SURROGATE.search(value):
                return False
        else:
            return False
    return True
