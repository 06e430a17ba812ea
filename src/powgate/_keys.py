"""HMAC key rings: several keys by id, one of them signing.

The document format is shared by the ``--key-file`` of the CLI and sidecar
and by the key Secret the operator writes (data key ``keyring.json``)::

    {
      "version": 1,
      "active": "k2",
      "keys": [
        {"id": "k1", "secret": "<base64, ≥ 32 bytes>", "notAfter": 1767225600},
        {"id": "k2", "secret": "<base64, ≥ 32 bytes>"}
      ]
    }

``active`` signs new challenges; every listed key verifies, until its optional
``notAfter`` (unix seconds) passes. Rotation proceeds in phases so that no
challenge that was valid when issued is ever rejected: publish the next key
(listed, not active), switch ``active`` once every verifier has it, and retire
the old key (``notAfter``) a challenge lifetime after the last signer stopped
using it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from ._errors import KeyRingError

__all__ = ["KEYRING_SECRET_KEY", "HmacKey", "KeyRing", "new_secret"]

#: The data key of the Secret (and the file name in a mounted Secret folder).
KEYRING_SECRET_KEY: Final = "keyring.json"  # noqa: S105 - a file name, not a secret
#: HMAC-SHA256 keys shorter than the hash add nothing but risk.
MIN_SECRET_BYTES: Final = 32
_KID = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
_MAX_DOCUMENT_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class HmacKey:
    """One key of a ring. ``not_after`` is when verifiers stop accepting it."""

    kid: str
    secret: bytes = field(repr=False)
    not_after: int | None = None

    def accepts_at(self, now: float) -> bool:
        return self.not_after is None or now <= self.not_after


@dataclass(frozen=True, slots=True)
class KeyRing:
    """An immutable set of keys; rotation produces a new ring."""

    active: str
    keys: tuple[HmacKey, ...]
    _by_id: Mapping[str, HmacKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id = {key.kid: key for key in self.keys}
        if len(by_id) != len(self.keys):
            raise KeyRingError("key ids must be unique")
        if self.active not in by_id:
            raise KeyRingError(f"active key {self.active!r} is not in the ring")
        object.__setattr__(self, "_by_id", by_id)

    # -- use ---------------------------------------------------------------

    @property
    def signing_key(self) -> HmacKey:
        return self._by_id[self.active]

    def verification_key(self, kid: str, *, now: float) -> HmacKey | None:
        """The key ``kid`` if the ring still accepts it at ``now``."""
        key = self._by_id.get(kid)
        if key is None or not key.accepts_at(now):
            return None
        return key

    def __contains__(self, kid: object) -> bool:
        return kid in self._by_id

    # -- rotation (pure: each step returns a new ring) ----------------------

    @classmethod
    def generate(cls, *, kid: str = "k1") -> KeyRing:
        """A ring with one fresh random key, active."""
        return cls(active=kid, keys=(HmacKey(kid, new_secret()),))

    def with_key(self, key: HmacKey) -> KeyRing:
        """Publish ``key`` for verification (phase 1 of a rotation)."""
        if key.kid in self._by_id:
            raise KeyRingError(f"key {key.kid!r} is already in the ring")
        return replace(self, keys=(*self.keys, key))

    def activated(self, kid: str, *, retire_previous_at: int | None) -> KeyRing:
        """Sign with ``kid`` from now on (phase 2); the previous key verifies until then."""
        if kid not in self._by_id:
            raise KeyRingError(f"key {kid!r} is not in the ring")
        keys = tuple(
            replace(k, not_after=retire_previous_at) if k.kid == self.active and kid != k.kid else k
            for k in self.keys
        )
        return KeyRing(active=kid, keys=keys)

    def retired(self, kid: str, *, at: int) -> KeyRing:
        """Stop accepting ``kid`` after ``at`` (phase 3; the active key cannot retire)."""
        if kid == self.active:
            raise KeyRingError(f"key {kid!r} signs: switch to another before retiring it")
        if kid not in self._by_id:
            raise KeyRingError(f"key {kid!r} is not in the ring")
        return replace(
            self, keys=tuple(replace(k, not_after=at) if k.kid == kid else k for k in self.keys)
        )

    def pruned(self, *, now: float) -> KeyRing:
        """Drop keys no verifier accepts any more (phase 3)."""
        return replace(
            self, keys=tuple(k for k in self.keys if k.kid == self.active or k.accepts_at(now))
        )

    # -- documents ----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        keys: list[dict[str, Any]] = []
        for key in self.keys:
            entry: dict[str, Any] = {"id": key.kid, "secret": base64.b64encode(key.secret).decode()}
            if key.not_after is not None:
                entry["notAfter"] = key.not_after
            keys.append(entry)
        return {"version": 1, "active": self.active, "keys": keys}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: object) -> KeyRing:
        if not isinstance(data, dict):
            raise KeyRingError("a key ring must be a JSON object")
        if data.get("version") != 1:
            raise KeyRingError(f"unsupported key ring version {data.get('version')!r} (expected 1)")
        active = data.get("active")
        raw_keys = data.get("keys")
        if not isinstance(active, str):
            raise KeyRingError("'active' must be a key id")
        if not isinstance(raw_keys, list) or not raw_keys:
            raise KeyRingError("'keys' must be a non-empty list")
        return cls(active=active, keys=tuple(_key_from_dict(i, k) for i, k in enumerate(raw_keys)))

    @classmethod
    def from_json(cls, text: str | bytes) -> KeyRing:
        if len(text) > _MAX_DOCUMENT_BYTES:
            raise KeyRingError(f"key ring document larger than {_MAX_DOCUMENT_BYTES} bytes")
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise KeyRingError(f"key ring is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyRing:
        """Load a key file, or a mounted Secret folder holding ``keyring.json``."""
        target = Path(path)
        if target.is_dir():
            target = target / KEYRING_SECRET_KEY
        try:
            text = target.read_bytes()
        except FileNotFoundError:
            raise KeyRingError(f"key file {target} does not exist") from None
        except OSError as exc:
            raise KeyRingError(f"key file {target} cannot be read: {exc.strerror}") from None
        try:
            return cls.from_json(text)
        except KeyRingError as exc:
            raise KeyRingError(f"key file {target}: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the ring, owner-readable only, atomically (a folder gets ``keyring.json``)."""
        target = Path(path)
        if target.is_dir():
            target = target / KEYRING_SECRET_KEY
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(self.to_json())
            tmp.replace(target)
        except OSError as exc:
            raise KeyRingError(f"key file {target} cannot be written: {exc.strerror}") from None


def new_secret() -> bytes:
    """A fresh random HMAC key of the minimum length."""
    return secrets.token_bytes(MIN_SECRET_BYTES)


def _key_from_dict(index: int, entry: object) -> HmacKey:
    where = f"keys[{index}]"
    if not isinstance(entry, dict):
        raise KeyRingError(f"{where} must be an object")
    kid, secret, not_after = entry.get("id"), entry.get("secret"), entry.get("notAfter")
    if not isinstance(kid, str) or not _KID.match(kid):
        raise KeyRingError(f"{where}.id must match {_KID.pattern}")
    if not isinstance(secret, str):
        raise KeyRingError(f"{where}.secret must be a base64 string")
    try:
        raw = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise KeyRingError(f"{where}.secret is not valid base64") from None
    if len(raw) < MIN_SECRET_BYTES:
        raise KeyRingError(f"{where}.secret must be at least {MIN_SECRET_BYTES} bytes")
    if not_after is not None and (not isinstance(not_after, int) or isinstance(not_after, bool)):
        raise KeyRingError(f"{where}.notAfter must be unix seconds")
    return HmacKey(kid, raw, not_after)
