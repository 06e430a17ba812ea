"""ALTCHA v1 over SHA-256, the scheme of every refusal: in C where built, in Python otherwise.

Every refused request carries a freshly issued challenge (one SHA-256, one
HMAC and its JSON), and every paid one a payload to read and check (the
same two primitives). Called from Python, each primitive costs more in
calls and objects than in hashing, so :mod:`powgate._native` (built with
OpenSSL, see ``setup.py``) does them without the interpreter:

* :func:`sha256_hex`, the work of a v1 challenge;
* :func:`hmac_state`, a key with its HMAC pads hashed once, whose
  ``hexdigest(message)`` signs and whose ``issue_v1(...)`` writes a batch of
  challenge documents;
* :func:`canonical_v1`, a payload of the canonical shape read in one pass
  (:func:`powgate._protocol.canonical_v1_fields`);
* :data:`check_v1`, such a payload over SHA-256 read *and* checked in one
  call (key, signature, expiry, work: :meth:`powgate.Verifier._check_v1`'s
  checks in its order); ``None`` without the C build, where the verifier
  reads with :func:`canonical_v1` and checks in Python.

The Python definitions below give the same bytes (``tests/unit/test_core_native.py``
compares both on the same inputs); :data:`NATIVE` says which is in use.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any, Final, Protocol

from ._protocol import CanonicalV1, Challenge, canonical_v1_fields

__all__ = [
    "NATIVE",
    "CheckV1",
    "HmacState",
    "PythonHmac",
    "canonical_v1",
    "check_v1",
    "hmac_state",
    "issue_v1_challenges",
    "native_signing_state",
    "new_keyed",
    "sha256_hex",
]

#: Makes a keyed HMAC state, ``new_keyed(key, digestmod=name)``, to be copied per message.
new_keyed: Callable[..., Any]
try:
    # OpenSSL's HMAC object without hmac.HMAC's Python wrapper: copying a
    # keyed state costs half of a one-shot hmac.digest, which re-derives the
    # key pads every call. (CPython-internal, hence the fallback.)
    from _hashlib import hmac_new as new_keyed
except ImportError:  # pragma: no cover - builds without OpenSSL
    new_keyed = hmac.new

#: Bytes of randomness per v1 challenge: a 12-byte nonce, then 8 for the number.
NONCE_BYTES: Final = 12
RANDOM_BYTES: Final = NONCE_BYTES + 8


class HmacState(Protocol):
    """HMAC under one key, its pads hashed once (:class:`PythonHmac`, or the C twin)."""

    def hexdigest(self, message: bytes, /) -> str:
        """The lowercase hex HMAC of ``message``."""
        ...

    def issue_v1(self, name: str, head: str, difficulty: int, random: bytes, /) -> list[bytes]:
        """ALTCHA v1 challenge documents signed with this key (:func:`issue_v1_challenges`)."""
        ...


def issue_v1_challenges(
    *,
    sign: Callable[[bytes], str],
    work_hex: Callable[[bytes], str],
    name: str,
    head: str,
    difficulty: int,
    random: bytes,
) -> list[Challenge]:
    """One challenge per :data:`RANDOM_BYTES` of ``random``, alike but for those bytes.

    The salt is the nonce's hex then ``head`` (``?expires=…&…&``); the number is
    the next 8 bytes, big-endian, modulo ``difficulty``: uniform below
    ``maxnumber`` (mean work difficulty/2, worst case difficulty; the modulo
    bias of 64 random bits over at most 2**40 is below 2**-24).
    """
    challenges = []
    for offset in range(0, len(random), RANDOM_BYTES):
        salt = random[offset : offset + NONCE_BYTES].hex() + head
        number = int.from_bytes(random[offset + NONCE_BYTES : offset + RANDOM_BYTES]) % difficulty
        challenge = work_hex(f"{salt}{number}".encode())
        challenges.append(Challenge(name, challenge, difficulty, salt, sign(challenge.encode())))
    return challenges


def _python_sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PythonHmac:
    """:class:`HmacState` in Python: OpenSSL's keyed state, copied per message."""

    __slots__ = ("_digest", "_keyed")

    def __init__(self, key: bytes, digest: str = "sha256") -> None:
        self._digest = digest
        self._keyed = new_keyed(key, digestmod=digest)

    def hexdigest(self, message: bytes, /) -> str:
        mac = self._keyed.copy()
        mac.update(message)
        return mac.hexdigest()  # type: ignore[no-any-return]

    def issue_v1(self, name: str, head: str, difficulty: int, random: bytes, /) -> list[bytes]:
        digest = self._digest
        challenges = issue_v1_challenges(
            sign=self.hexdigest,
            work_hex=lambda data: hashlib.new(digest, data).hexdigest(),
            name=name,
            head=head,
            difficulty=difficulty,
            random=random,
        )
        return [challenge.to_json().encode() for challenge in challenges]


#: ``check_v1(payload, signers, now)``: see ``powgate._native.check_v1``.
CheckV1 = Callable[[str | bytes, dict[str, tuple[Any, float, Any, Any]], float], object]

sha256_hex: Callable[[bytes], str]
canonical_v1: Callable[[str | bytes], CanonicalV1 | None]
check_v1: CheckV1 | None
_native_hmac: type | None
try:
    from . import _native

    sha256_hex = _native.sha256_hex
    canonical_v1 = _native.canonical_v1
    check_v1 = _native.check_v1
    _native_hmac = _native.HmacSha256
except (ImportError, AttributeError):  # no C compiler, or no OpenSSL headers, at build time
    NATIVE = False
    sha256_hex = _python_sha256_hex
    canonical_v1 = canonical_v1_fields
    check_v1 = None
    _native_hmac = None
else:
    NATIVE = True


def native_signing_state(state: HmacState) -> bool:
    """Whether ``state`` is the C HMAC-SHA256 state :data:`check_v1` signs with."""
    return _native_hmac is not None and type(state) is _native_hmac


def hmac_state(key: bytes, digest: str) -> HmacState:
    """HMAC under ``key`` with the hash called ``digest`` (hashlib's name)."""
    if digest == "sha256" and _native_hmac is not None:
        return _native_hmac(key)  # type: ignore[no-any-return]
    return PythonHmac(key, digest)
