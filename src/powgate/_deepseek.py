"""DeepSeek's proof-of-work wire format, as clients written for DeepSeek's gate expect it.

* challenge (``POST /api/v0/chat/create_pow_challenge`` with
  ``{"target_path": …}``, inside ``{"code": 0, "msg": "", "data": {"biz_code":
  0, "biz_msg": "", "biz_data": {"challenge": …}}}``):
  ``{algorithm: "DeepSeekHashV1", challenge, salt, signature, difficulty,
  expire_at, expire_after, target_path}`` with ``expire_at`` and
  ``expire_after`` in milliseconds;
* work: ``challenge = DeepSeekHashV1(f"{salt}_{expire_at}_{answer}")`` for a
  secret ``answer`` below ``difficulty``;
* answer: header ``x-ds-pow-response``, base64 of the JSON ``{algorithm,
  challenge, salt, answer, signature, target_path}``.

The answer does not echo ``expire_at`` or ``difficulty``, and DeepSeek's
signature is opaque. powgate keeps verification stateless by making the
signature carry what it needs: ``<hex HMAC-SHA256>?expires=…&kid=…&max=…&
bind=…&``, the parameters in the same form as ALTCHA v1 salts, with the HMAC
over the algorithm, challenge, salt, target path and those parameters.
``expire_at`` is always a whole second (``expires * 1000``).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Final

from ._errors import ProtocolError
from ._protocol import MalformedPayloadError

__all__ = [
    "DEEPSEEK_CHALLENGE_PATH",
    "DEEPSEEK_HEADER",
    "DeepSeekChallenge",
    "DeepSeekSolution",
    "mac_message",
    "parse_payload",
]

#: The request header carrying an answer.
DEEPSEEK_HEADER: Final = "x-ds-pow-response"
#: Where DeepSeek's clients ask for a challenge (``POST`` with ``{"target_path": …}``).
DEEPSEEK_CHALLENGE_PATH: Final = "/api/v0/chat/create_pow_challenge"
ALGORITHM: Final = "DeepSeekHashV1"
_FIELDS: Final = ("algorithm", "challenge", "salt", "signature", "target_path")
_MAX_TARGET_PATH: Final = 512


def mac_message(*, challenge: str, salt: str, target_path: str, query: str) -> bytes:
    """What the HMAC in a signature covers (``query`` is the part after ``?``)."""
    return f"{ALGORITHM}\n{challenge}\n{salt}\n{target_path}\n{query}".encode(
        "utf-8", "surrogatepass"
    )


@dataclass(frozen=True, slots=True)
class DeepSeekChallenge:
    """A DeepSeek-shaped challenge: find ``answer`` < ``difficulty`` hashing to ``challenge``."""

    challenge: str
    salt: str
    signature: str
    difficulty: int
    expire_at: int
    expire_after: int
    target_path: str
    algorithm: str = ALGORITHM

    @property
    def prefix(self) -> str:
        """What precedes the answer in the hashed message."""
        return f"{self.salt}_{self.expire_at}_"

    def to_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "challenge": self.challenge,
            "salt": self.salt,
            "signature": self.signature,
            "difficulty": self.difficulty,
            "expire_at": self.expire_at,
            "expire_after": self.expire_after,
            "target_path": self.target_path,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def envelope_json(self) -> str:
        """The whole ``create_pow_challenge`` response body, as DeepSeek wraps it."""
        body = {
            "code": 0,
            "msg": "",
            "data": {"biz_code": 0, "biz_msg": "", "biz_data": {"challenge": self.to_dict()}},
        }
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: object) -> DeepSeekChallenge:
        """Validate a challenge, bare or in DeepSeek's response envelope; :class:`ProtocolError`."""
        if isinstance(data, dict) and "data" in data and "algorithm" not in data:
            try:
                data = data["data"]["biz_data"]["challenge"]
            except (KeyError, TypeError):
                raise ProtocolError("a DeepSeek envelope without data.biz_data.challenge") from None
        if not isinstance(data, dict):
            raise ProtocolError("a challenge must be a JSON object")
        if data.get("algorithm") != ALGORITHM:
            raise ProtocolError(f"challenge field 'algorithm' must be {ALGORITHM!r}")
        fields = {key: data.get(key) for key in _FIELDS}
        for key, value in fields.items():
            if not isinstance(value, str) or not value:
                raise ProtocolError(f"challenge field {key!r} must be a non-empty string")
        numbers = {key: data.get(key) for key in ("difficulty", "expire_at")}
        for key, value in numbers.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ProtocolError(f"challenge field {key!r} must be a positive integer")
        expire_after = data.get("expire_after", 0)
        if not isinstance(expire_after, int) or isinstance(expire_after, bool):
            raise ProtocolError("challenge field 'expire_after' must be an integer")
        return cls(
            challenge=fields["challenge"],  # type: ignore[arg-type]
            salt=fields["salt"],  # type: ignore[arg-type]
            signature=fields["signature"],  # type: ignore[arg-type]
            difficulty=numbers["difficulty"],  # type: ignore[arg-type]
            expire_at=numbers["expire_at"],  # type: ignore[arg-type]
            expire_after=expire_after,
            target_path=fields["target_path"],  # type: ignore[arg-type]
        )

    def solution(self, answer: int) -> DeepSeekSolution:
        return DeepSeekSolution(self, answer)


@dataclass(frozen=True, slots=True)
class DeepSeekSolution:
    """The ``x-ds-pow-response`` answer to a challenge."""

    challenge: DeepSeekChallenge
    answer: int

    def to_dict(self) -> dict[str, Any]:
        c = self.challenge
        return {
            "algorithm": c.algorithm,
            "challenge": c.challenge,
            "salt": c.salt,
            "answer": self.answer,
            "signature": c.signature,
            "target_path": c.target_path,
        }

    def encode(self) -> str:
        raw = json.dumps(self.to_dict(), separators=(",", ":")).encode()
        return base64.b64encode(raw).decode("ascii")


def parse_payload(data: dict[str, Any]) -> tuple[str, str, str, int, str, str]:
    """``(algorithm, challenge, salt, answer, signature, target_path)`` of a decoded answer.

    Raises :class:`MalformedPayloadError`.
    """
    answer = data.get("answer")
    if type(answer) is not int or not 0 <= answer < 2**53:
        raise MalformedPayloadError("malformed", "answer is not a non-negative integer")
    values = [data.get(key) for key in _FIELDS]
    for key, value in zip(_FIELDS, values, strict=True):
        if type(value) is not str or not value:
            raise MalformedPayloadError("malformed", f"{key} is not a non-empty string")
    algorithm, challenge, salt, signature, target_path = values
    if len(str(target_path)) > _MAX_TARGET_PATH:
        raise MalformedPayloadError("malformed", "target_path is too long")
    return algorithm, challenge, salt, answer, signature, target_path  # type: ignore[return-value]
