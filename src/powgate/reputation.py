"""Client keys and the reputation list: which clients are known to send too much.

A *client key* names one client the way a policy groups requests: the
network of its address at the policy's prefix length (``203.0.113.0/24``,
``2001:db8:0:100::/56``) or an identity a trusted proxy asserted
(``id:<value>``). A *reputation list* maps keys to price factors, each entry
with an expiry; the operator publishes one per policy for its sidecars
(what the fleet learnt, merged with the lists the administrator imports)
and exports what its own sidecars learnt in the same format, so that other
clusters can import it. The format is documented in docs/pricing.md.

A list key may be any network (threat feeds name single addresses or wider
ranges): :class:`ReputationIndex` matches an address against every prefix
length the list uses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable
from typing import Annotated, Final, Literal, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from pydantic import AfterValidator, ConfigDict, Field, ValidationError, model_validator

from ._keys import KeyRing
from ._networks import Address, NetworkMap, network_key, parse_address, parse_network
from ._wire import WireModel
from .pricing import MAX_FACTOR

__all__ = [
    "IDENTITY_PREFIX",
    "MAX_DOCUMENT_BYTES",
    "MAX_ENTRIES",
    "MAX_KEY_LENGTH",
    "REPUTATION_DATA_KEY",
    "Address",
    "ReputationEntry",
    "ReputationIndex",
    "ReputationList",
    "canonical_key",
    "identity_key",
    "merge_entries",
    "network_key",
    "open_label",
    "parse_address",
    "seal_label",
]

#: The data key of a reputation list in a ConfigMap or Secret (and the file name).
REPUTATION_DATA_KEY: Final = "reputation.json"
#: Entries of one list: ~100 bytes each, so a list stays well inside one ConfigMap (1 MiB).
MAX_ENTRIES: Final = 5000
MAX_DOCUMENT_BYTES: Final = 900 * 1024
IDENTITY_PREFIX: Final = "id:"
MAX_KEY_LENGTH: Final = 256 + len(IDENTITY_PREFIX)


def identity_key(value: str) -> str | None:
    """The key of an identity asserted by a trusted proxy; None when it cannot be one."""
    if not 0 < len(value) <= MAX_KEY_LENGTH - len(IDENTITY_PREFIX) or not value.isprintable():
        return None
    return IDENTITY_PREFIX + value


def canonical_key(text: str) -> str:
    """A list key in its one spelling; ``ValueError`` says why ``text`` is none.

    Networks lose their host bits (``203.0.113.7/24`` is ``203.0.113.0/24``),
    a bare address is its own network (``/32``, ``/128``).
    """
    if text.startswith(IDENTITY_PREFIX):
        key = identity_key(text[len(IDENTITY_PREFIX) :])
        if key is None:
            raise ValueError("an identity key is 1-256 printable characters after 'id:'")
        return key
    try:
        address, prefix = parse_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text[:64]!r} is neither a network, an address nor 'id:…'") from None
    return network_key(address, prefix)


ClientKey = Annotated[
    str, Field(min_length=1, max_length=MAX_KEY_LENGTH), AfterValidator(canonical_key)
]


class ReputationEntry(WireModel):
    """One client key and the factor it pays until ``expires`` (unix seconds)."""

    # Lists come from other clusters and feeds, possibly newer: unknown fields are ignored.
    model_config = ConfigDict(extra="ignore")

    key: ClientKey
    factor: float = Field(ge=1, le=MAX_FACTOR)
    expires: int = Field(ge=0, lt=1 << 40)


class ReputationList(WireModel):
    """A bounded list of expiring entries, at most one per key."""

    model_config = ConfigDict(extra="ignore")

    version: Literal[1] = 1
    source: str = Field(default="", max_length=253, description="Who wrote the list.")
    generated: int = Field(default=0, ge=0, lt=1 << 40)
    entries: tuple[ReputationEntry, ...] = Field(default=(), max_length=MAX_ENTRIES)

    @model_validator(mode="after")
    def _check(self) -> Self:
        keys = {entry.key for entry in self.entries}
        if len(keys) != len(self.entries):
            raise ValueError("a key appears more than once")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ReputationList:
        """Parse a list; ``ValueError`` with a short reason for anything else."""
        if len(text) > MAX_DOCUMENT_BYTES:
            raise ValueError(f"a reputation list is at most {MAX_DOCUMENT_BYTES} bytes")
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "<document>"
            raise ValueError(f"{where}: {first['msg']} ({exc.error_count()} problem(s))") from None


def merge_entries(
    sources: Iterable[Iterable[ReputationEntry]],
    *,
    now: float,
    max_entries: int,
    max_factor: float,
) -> tuple[ReputationEntry, ...]:
    """One bounded list from several: expired entries dropped, one entry per key.

    A key listed twice keeps its highest factor (then its latest expiry);
    factors are capped at ``max_factor``; past ``max_entries`` the lowest
    factors go (then the soonest to expire), so the list keeps the clients
    that cost most.
    """
    best: dict[str, ReputationEntry] = {}
    for entries in sources:
        for entry in entries:
            if entry.expires <= now:
                continue
            if entry.factor > max_factor:
                entry = entry.model_copy(update={"factor": max_factor})
            kept = best.get(entry.key)
            if kept is None or (entry.factor, entry.expires) > (kept.factor, kept.expires):
                best[entry.key] = entry
    ranked = sorted(best.values(), key=lambda e: (-e.factor, -e.expires, e.key))
    return tuple(ranked[:max_entries])


class ReputationIndex:
    """A reputation list arranged for the request path: one dict lookup per prefix length."""

    __slots__ = ("_identities", "_networks")

    def __init__(self, entries: Iterable[ReputationEntry] = ()) -> None:
        networks: list[tuple[Address, int, tuple[float, int]]] = []
        self._identities: dict[str, tuple[float, int]] = {}
        for entry in entries:
            value = (entry.factor, entry.expires)
            if entry.key.startswith(IDENTITY_PREFIX):
                self._identities[entry.key] = value
            else:
                address, prefix = parse_network(entry.key, strict=True)
                networks.append((address, prefix, value))
        self._networks = NetworkMap(networks)

    def __len__(self) -> int:
        return len(self._identities) + len(self._networks)

    def factor(self, *, address: Address | None, identity: str | None, now: float) -> float:
        """The highest factor listed for the client, 1.0 when none (or all expired)."""
        found = 1.0
        if identity is not None:
            hit = self._identities.get(identity)
            if hit is not None and hit[1] > now:
                found = hit[0]
        if address is not None:
            for factor, expires in self._networks.matches(address):
                if expires > now and factor > found:
                    found = factor
        return found


# -- sealed metric labels -------------------------------------------------------
#
# Sidecars report their heaviest clients to the operator through Prometheus
# (the channel they already share) without putting addresses into labels:
# the label is the key encrypted with AES-SIV under a key derived from the
# policy's HMAC key ring, which only the sidecars and the operator hold.
# SIV is deterministic, so one client is one series while the signing key
# lasts, and authenticated, so a forged label opens to nothing.

_LABEL_INFO: Final = b"powgate reputation label v1"


def _label_cipher(secret: bytes) -> AESSIV:
    return AESSIV(hmac.new(secret, _LABEL_INFO, hashlib.sha512).digest())


def seal_label(ring: KeyRing, key: str) -> str:
    """``<kid>.<base64url>``: ``key`` sealed under the ring's signing key."""
    signing = ring.signing_key
    sealed = _label_cipher(signing.secret).encrypt(key.encode(), None)
    return f"{signing.kid}.{base64.urlsafe_b64encode(sealed).decode().rstrip('=')}"


def open_label(ring: KeyRing, label: str, *, now: float) -> str | None:
    """The client key sealed in ``label``; None when no accepted key opens it (or it is junk)."""
    kid, _, body = label.rpartition(".")
    if not body or len(label) > 4 * MAX_KEY_LENGTH:
        return None
    key = ring.verification_key(kid, now=now)
    if key is None:
        return None
    try:
        sealed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        opened = _label_cipher(key.secret).decrypt(sealed, None).decode()
        return canonical_key(opened)
    except (binascii.Error, InvalidTag, UnicodeDecodeError, ValueError):
        return None
