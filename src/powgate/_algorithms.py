"""Challenge algorithms behind one small interface, and their registry.

An algorithm defines how the work is checked (``work_hex``: the digest of
``salt + number`` the client searches for) and how the server signs a
challenge (``sign``). The verifier's flow does not change when a scheme is
added: it looks the algorithm up by the name the payload carries.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any, Final, Protocol, runtime_checkable

#: Makes a keyed HMAC state, ``new_keyed(key, digestmod=name)``, to be copied per message.
_new_keyed: Callable[..., Any]
try:
    # OpenSSL's HMAC object without hmac.HMAC's Python wrapper: copying a
    # keyed state costs half of a one-shot hmac.digest, which re-derives the
    # key pads every call. (CPython-internal, hence the fallback.)
    from _hashlib import hmac_new as _new_keyed
except ImportError:  # pragma: no cover - builds without OpenSSL
    _new_keyed = hmac.new

__all__ = ["Algorithm", "HashAlgorithm", "algorithm_names", "get_algorithm", "register_algorithm"]


@runtime_checkable
class Algorithm(Protocol):
    """What the issuer, verifier and solvers need from a challenge scheme."""

    @property
    def name(self) -> str:
        """The name carried in challenges and payloads (``"SHA-256"``)."""
        ...

    def work_hex(self, data: bytes) -> str:
        """The lowercase hex digest a solver searches for."""
        ...

    def sign(self, key: bytes, message: bytes) -> str:
        """The lowercase hex signature of ``message`` under ``key``."""
        ...


class HashAlgorithm:
    """ALTCHA v1 schemes: a plain hash for the work, HMAC of the same hash to sign."""

    __slots__ = ("_digest", "_keyed", "_name", "new")

    def __init__(self, name: str, digest: str) -> None:
        self._name = name
        self._digest = digest
        #: hashlib's constructor, ``new(data)``; solvers copy its states. The
        #: named constructors skip hashlib.new's lookup by name, which the
        #: verifier would pay on every request.
        self.new: Callable[[bytes], Any] = getattr(hashlib, digest, None) or (
            lambda data: hashlib.new(digest, data)
        )
        #: Keyed HMAC states by key; a ring holds a handful of keys at most.
        self._keyed: dict[bytes, Any] = {}

    @property
    def name(self) -> str:
        return self._name

    @property
    def digest_name(self) -> str:
        """The hashlib name, for solvers that hash from a precomputed state."""
        return self._digest

    def work_hex(self, data: bytes) -> str:
        return self.new(data).hexdigest()  # type: ignore[no-any-return]

    def sign(self, key: bytes, message: bytes) -> str:
        keyed = self._keyed.get(key)
        if keyed is None:
            keyed = self._keyed_state(key)
        mac = keyed.copy()
        mac.update(message)
        return mac.hexdigest()  # type: ignore[no-any-return]

    def _keyed_state(self, key: bytes) -> Any:
        if len(self._keyed) >= _MAX_KEYED_STATES:
            # Rotated-out keys are dead weight.
            self._keyed.clear()
        state = self._keyed[key] = _new_keyed(key, digestmod=self._digest)
        return state


_MAX_KEYED_STATES: Final = 16
_REGISTRY: dict[str, Algorithm] = {}


def register_algorithm(algorithm: Algorithm) -> None:
    """Make ``algorithm`` available to issuers, verifiers and solvers by its name."""
    if algorithm.name in _REGISTRY:
        raise ValueError(f"algorithm {algorithm.name!r} is already registered")
    _REGISTRY[algorithm.name] = algorithm


def get_algorithm(name: str) -> Algorithm | None:
    """The registered algorithm called ``name``, or ``None``."""
    return _REGISTRY.get(name)


def algorithm_names() -> tuple[str, ...]:
    """Names of every registered algorithm."""
    return tuple(_REGISTRY)


# ALTCHA v1 also names SHA-1; it is left out on purpose (collision-broken).
# SHA-256 is the default everywhere.
for _name, _digest in (("SHA-256", "sha256"), ("SHA-512", "sha512")):
    register_algorithm(HashAlgorithm(_name, _digest))
