"""Challenge algorithms behind one small interface, and their registry.

Every algorithm has a registry ``name`` (what a policy names), a ``family``
(which wire format carries it) and signs challenges (``sign``). The families:

* ``altcha-v1`` (:class:`HashAlgorithm`): search ``0..maxnumber`` for the
  number whose ``H(salt + number)`` is the challenge (``work_hex``);
* ``altcha-v2`` (:class:`KdfAlgorithm`): find a counter whose derived key
  (PBKDF2, scrypt, Argon2id or iterated SHA) starts with a key prefix;
* ``deepseek`` (:class:`DeepSeekAlgorithm`): DeepSeek's bounded search with
  DeepSeekHashV1 over ``salt_expireAt_answer``.

The registry is the single source of the names: the policy model's enum, the
issuer, the verifier and the solvers all read it.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol, runtime_checkable

from . import _deepseek_hash, _fastpath

__all__ = [
    "Algorithm",
    "DeepSeekAlgorithm",
    "Family",
    "HashAlgorithm",
    "KdfAlgorithm",
    "KdfKind",
    "KdfParams",
    "algorithm_names",
    "get_algorithm",
    "get_v2_algorithm",
    "register_algorithm",
]


class Family(enum.StrEnum):
    """The wire format a scheme travels in."""

    ALTCHA_V1 = "altcha-v1"
    ALTCHA_V2 = "altcha-v2"
    DEEPSEEK = "deepseek"


@runtime_checkable
class Algorithm(Protocol):
    """What the issuer, verifier and solvers need from any challenge scheme."""

    @property
    def name(self) -> str:
        """The registry name, which policies use (``"SHA-256"``, ``"ARGON2ID"``)."""
        ...

    @property
    def family(self) -> Family:
        """The wire format of its challenges and payloads."""
        ...

    @property
    def wire_name(self) -> str:
        """The ``algorithm`` value on the wire (``"SHA-256"`` for ``ITERATED/SHA-256``)."""
        ...

    def sign(self, key: bytes, message: bytes) -> str:
        """The lowercase hex signature of ``message`` under ``key``."""
        ...


class _Keyed:
    """HMAC signing from keyed states (:func:`._fastpath.hmac_state`), per key of the ring."""

    __slots__ = ("_digest", "_keyed")

    def __init__(self, digest: str) -> None:
        self._digest = digest
        #: Keyed HMAC states by key; a ring holds a handful of keys at most.
        self._keyed: dict[bytes, _fastpath.HmacState] = {}

    def state(self, key: bytes) -> _fastpath.HmacState:
        keyed = self._keyed.get(key)
        if keyed is None:
            if len(self._keyed) >= _MAX_KEYED_STATES:
                # Rotated-out keys are dead weight.
                self._keyed.clear()
            keyed = self._keyed[key] = _fastpath.hmac_state(key, self._digest)
        return keyed

    def sign(self, key: bytes, message: bytes) -> str:
        return self.state(key).hexdigest(message)


class HashAlgorithm:
    """ALTCHA v1 schemes: a plain hash for the work, HMAC of the same hash to sign."""

    __slots__ = ("_digest", "_hex", "_keyed", "_name", "new")

    family: Final = Family.ALTCHA_V1

    def __init__(self, name: str, digest: str) -> None:
        self._name = name
        self._digest = digest
        #: hashlib's constructor, ``new(data)``; solvers copy its states. The
        #: named constructors skip hashlib.new's lookup by name, which the
        #: verifier would pay on every request.
        self.new: Callable[[bytes], Any] = getattr(hashlib, digest, None) or (
            lambda data: hashlib.new(digest, data)
        )
        self._keyed = _Keyed(digest)
        # SHA-256, the work of nearly every challenge issued or checked: in C where built.
        self._hex: Callable[[bytes], str] = (
            _fastpath.sha256_hex if digest == "sha256" else self._hashlib_hex
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def wire_name(self) -> str:
        return self._name

    @property
    def digest_name(self) -> str:
        """The hashlib name, for solvers that hash from a precomputed state."""
        return self._digest

    def work_hex(self, data: bytes) -> str:
        """The work: the lowercase hex digest of ``data``."""
        return self._hex(data)

    def _hashlib_hex(self, data: bytes) -> str:
        return self.new(data).hexdigest()  # type: ignore[no-any-return]

    def sign(self, key: bytes, message: bytes) -> str:
        return self._keyed.sign(key, message)

    def keyed(self, key: bytes) -> _fastpath.HmacState:
        """The signing state of ``key``: signs, and issues batches of challenge documents."""
        return self._keyed.state(key)


class KdfKind(enum.StrEnum):
    """The key derivations of ALTCHA PoW v2."""

    PBKDF2 = "pbkdf2"
    SCRYPT = "scrypt"
    ARGON2ID = "argon2id"
    ITERATED = "iterated"


@dataclass(frozen=True, slots=True)
class KdfParams:
    """The price of one try of an ALTCHA v2 challenge, in ALTCHA's terms.

    ``cost``: PBKDF2 and iterated-SHA iterations, scrypt's N, Argon2id's
    passes. ``memory_cost``: scrypt's r (block size), Argon2id's memory in
    KiB. ``parallelism``: scrypt's p, Argon2id's lanes. ``key_length``:
    bytes of the derived key.
    """

    cost: int
    memory_cost: int | None = None
    parallelism: int | None = None
    key_length: int = 32


@dataclass(frozen=True, slots=True)
class _Limits:
    cost: tuple[int, int]
    memory_cost: tuple[int, int] | None = None
    parallelism: tuple[int, int] | None = None
    #: Highest memory one derivation may take, in bytes (scrypt: 128 N r).
    max_memory_bytes: int = 0


#: One try may ask for at most this much memory (a browser tab has a few GiB).
MAX_KDF_MEMORY_BYTES: Final = 256 * 1024 * 1024
#: The cost knob makes one try at most this many times the policy's (and at
#: least its inverse): the key prefix covers the powers of 16, the knob what
#: lies between, centred so that a verifier never derives more than this
#: many base tries for one payload.
MAX_SCALE: Final = 4


class KdfAlgorithm:
    """ALTCHA PoW v2: find a counter whose derived key starts with ``keyPrefix``.

    The password is the challenge's nonce followed by the counter as a
    big-endian uint32, the salt is the challenge's salt (both hex-decoded),
    as ALTCHA's libraries define it. HMAC-SHA256 signs the parameters.
    """

    __slots__ = ("_default", "_digest", "_keyed", "_kind", "_limits", "_name", "_wire")

    family: Final = Family.ALTCHA_V2

    def __init__(
        self,
        name: str,
        *,
        wire_name: str,
        kind: KdfKind,
        digest: str = "sha256",
        default: KdfParams,
        limits: _Limits,
    ) -> None:
        self._name = name
        self._wire = wire_name
        self._kind = kind
        self._digest = digest
        self._default = default
        self._limits = limits
        self._keyed = _Keyed("sha256")

    @property
    def name(self) -> str:
        return self._name

    @property
    def wire_name(self) -> str:
        return self._wire

    @property
    def kind(self) -> KdfKind:
        return self._kind

    @property
    def default_params(self) -> KdfParams:
        """Parameters of one try when a policy names none (see docs/performance.md)."""
        return self._default

    def sign(self, key: bytes, message: bytes) -> str:
        return self._keyed.sign(key, message)

    def check(self, params: KdfParams) -> str | None:
        """Why ``params`` are outside what powgate issues, verifies or solves; ``None`` if fine.

        The bounds cap what one derivation costs a verifier (time and memory)
        and what a server may ask of a client.
        """
        limits = self._limits
        problems = []
        if not limits.cost[0] <= params.cost <= limits.cost[1]:
            problems.append(f"cost must lie within {limits.cost[0]}..{limits.cost[1]}")
        for field, bounds in (
            ("memoryCost", limits.memory_cost),
            ("parallelism", limits.parallelism),
        ):
            value = params.memory_cost if field == "memoryCost" else params.parallelism
            if bounds is None:
                if value is not None:
                    problems.append(f"{field} does not apply to {self._name}")
            elif value is None or not bounds[0] <= value <= bounds[1]:
                problems.append(f"{field} must lie within {bounds[0]}..{bounds[1]}")
        size = hashlib.new(self._digest).digest_size
        if self._kind is KdfKind.ITERATED and params.key_length != size:
            # ALTCHA's JavaScript truncates every round to keyLength, its
            # Python the last one only: they agree at the digest's size only.
            problems.append(f"keyLength must be {size} for {self._name}")
        elif not 16 <= params.key_length <= 64:
            problems.append("keyLength must lie within 16..64")
        if self._kind is KdfKind.SCRYPT and params.cost & (params.cost - 1):
            problems.append("cost (scrypt's N) must be a power of two")
        if self._kind is KdfKind.ARGON2ID and (params.memory_cost or 0) < 8 * (
            params.parallelism or 1
        ):
            problems.append("memoryCost must be at least 8 KiB per lane")
        if problems:
            return "; ".join(problems)
        if self.memory_bytes(params) > limits.max_memory_bytes:
            return f"one try would take more than {limits.max_memory_bytes >> 20} MiB"
        return None

    def check_base(self, params: KdfParams) -> str | None:
        """:meth:`check` for a policy's parameters: also once scaled to the most an issuer asks."""
        # The extremes of the knob: the most passes, and (Argon2id) the most
        # memory, where the factor just fails to round up to a second pass.
        factors = (MAX_SCALE, 1 / MAX_SCALE, 1.499 / max(1, params.cost))
        return self.check(params) or next(
            (problem for f in factors if (problem := self.check(self.scaled(params, f)))), None
        )

    def memory_bytes(self, params: KdfParams) -> int:
        """Memory one derivation takes."""
        if self._kind is KdfKind.SCRYPT:
            return 128 * params.cost * (params.memory_cost or 8)
        if self._kind is KdfKind.ARGON2ID:
            return 1024 * (params.memory_cost or 0)
        return 0

    def scaled(self, params: KdfParams, factor: float) -> KdfParams:
        """``params`` with one try made ``factor`` (1/4 … 4) times as long.

        The knob is the parameter that scales time alone: iterations for
        PBKDF2 and iterated SHA, p for scrypt (its N and r set the memory),
        rounded to a whole value and never below 1. Argon2id's time is
        passes * memory: the passes take the factor, rounded, and the memory
        the rest, so the work is exact and the memory stays near the
        policy's, below it only where one pass is already too much.
        """
        if self._kind is KdfKind.SCRYPT:
            return replace(params, parallelism=max(1, round((params.parallelism or 1) * factor)))
        if self._kind is KdfKind.ARGON2ID:
            lanes = params.parallelism or 1
            work = params.cost * (params.memory_cost or 0) * factor
            passes = max(1, round(params.cost * factor))
            return replace(params, cost=passes, memory_cost=max(8 * lanes, round(work / passes)))
        return replace(params, cost=max(1, round(params.cost * factor)))

    def derive(self, params: KdfParams, salt: bytes, password: bytes) -> bytes:
        """The derived key of one try (blocking; C code that releases the GIL)."""
        kind = self._kind
        if kind is KdfKind.PBKDF2:
            return hashlib.pbkdf2_hmac(self._digest, password, salt, params.cost, params.key_length)
        if kind is KdfKind.SCRYPT:
            n, r, p = params.cost, params.memory_cost or 8, params.parallelism or 1
            return hashlib.scrypt(
                password,
                salt=salt,
                n=n,
                r=r,
                p=p,
                dklen=params.key_length,
                maxmem=128 * r * (n + p + 2) + (1 << 20),
            )
        if kind is KdfKind.ARGON2ID:
            return _argon2id(params, salt, password)
        data = salt + password
        new = getattr(hashlib, self._digest)
        for _ in range(max(1, params.cost)):
            data = new(data).digest()
        return data[: params.key_length]


def _argon2id(params: KdfParams, salt: bytes, password: bytes) -> bytes:
    # Imported on first use: only Argon2id challenges need the C library.
    from argon2.low_level import Type, hash_secret_raw

    return hash_secret_raw(
        secret=password,
        salt=salt,
        time_cost=params.cost,
        memory_cost=params.memory_cost or 0,
        parallelism=params.parallelism or 1,
        hash_len=params.key_length,
        type=Type.ID,
    )


class DeepSeekAlgorithm:
    """DeepSeek's ``DeepSeekHashV1`` bounded search (see :mod:`powgate._deepseek_hash`)."""

    __slots__ = ("_keyed",)

    family: Final = Family.DEEPSEEK
    name: Final = "DeepSeekHashV1"
    wire_name: Final = "DeepSeekHashV1"

    def __init__(self) -> None:
        self._keyed = _Keyed("sha256")

    def sign(self, key: bytes, message: bytes) -> str:
        return self._keyed.sign(key, message)

    @staticmethod
    def work(data: bytes) -> bytes:
        """DeepSeekHashV1 of ``data``."""
        return _deepseek_hash.hash_v1(data)


_MAX_KEYED_STATES: Final = 16
_REGISTRY: dict[str, Algorithm] = {}
_BY_WIRE: dict[tuple[Family, str], Algorithm] = {}


def register_algorithm(algorithm: Algorithm) -> None:
    """Make ``algorithm`` available to issuers, verifiers and solvers by its name."""
    key = (algorithm.family, algorithm.wire_name)
    if algorithm.name in _REGISTRY or key in _BY_WIRE:
        raise ValueError(f"algorithm {algorithm.name!r} is already registered")
    _REGISTRY[algorithm.name] = _BY_WIRE[key] = algorithm


def get_algorithm(name: str) -> Algorithm | None:
    """The registered algorithm called ``name``, or ``None``."""
    return _REGISTRY.get(name)


def get_wire_algorithm(family: Family, wire_name: str) -> Algorithm | None:
    """The algorithm a payload of ``family`` names ``wire_name``, or ``None``."""
    return _BY_WIRE.get((family, wire_name))


def get_v2_algorithm(wire_name: str) -> KdfAlgorithm | None:
    """The ALTCHA v2 scheme a challenge's ``parameters.algorithm`` names, or ``None``."""
    found = _BY_WIRE.get((Family.ALTCHA_V2, wire_name))
    return found if isinstance(found, KdfAlgorithm) else None


def algorithm_names() -> tuple[str, ...]:
    """Names of every registered algorithm."""
    return tuple(_REGISTRY)


# ALTCHA v1 also names SHA-1; it is left out on purpose (collision-broken).
# SHA-256 is the default everywhere.
for _name, _digest in (("SHA-256", "sha256"), ("SHA-512", "sha512")):
    register_algorithm(HashAlgorithm(_name, _digest))

# ALTCHA PoW v2. Defaults cost a browser tens of milliseconds per try
# (docs/performance.md); bounds cap what one derivation costs a verifier.
_MIB: Final = 1 << 20
for _bits in (256, 384, 512):
    register_algorithm(
        KdfAlgorithm(
            f"PBKDF2/SHA-{_bits}",
            wire_name=f"PBKDF2/SHA-{_bits}",
            kind=KdfKind.PBKDF2,
            digest=f"sha{_bits}",
            default=KdfParams(cost=5_000),
            limits=_Limits(cost=(1, 1_000_000)),
        )
    )
for _bits in (256, 384, 512):
    register_algorithm(
        KdfAlgorithm(
            f"ITERATED/SHA-{_bits}",
            wire_name=f"SHA-{_bits}",
            kind=KdfKind.ITERATED,
            digest=f"sha{_bits}",
            default=KdfParams(cost=5_000, key_length=_bits // 8),
            limits=_Limits(cost=(1, 1_000_000)),
        )
    )
register_algorithm(
    KdfAlgorithm(
        "SCRYPT",
        wire_name="SCRYPT",
        kind=KdfKind.SCRYPT,
        # 8 MiB a try (128 N r); p = 4 leaves the knob room to go down.
        default=KdfParams(cost=8_192, memory_cost=8, parallelism=4),
        limits=_Limits(
            cost=(2, 1 << 20),
            memory_cost=(1, 32),
            parallelism=(1, 16 * MAX_SCALE),
            max_memory_bytes=MAX_KDF_MEMORY_BYTES,
        ),
    )
)
register_algorithm(
    KdfAlgorithm(
        "ARGON2ID",
        wire_name="ARGON2ID",
        kind=KdfKind.ARGON2ID,
        # One pass over 32 MiB: measured, the narrowest gap between a
        # browser (hash-wasm) and native code (libargon2) of the variants
        # OWASP lists (docs/performance.md).
        default=KdfParams(cost=1, memory_cost=32_768, parallelism=1),
        limits=_Limits(
            cost=(1, 10 * MAX_SCALE),
            memory_cost=(8, MAX_KDF_MEMORY_BYTES // 1024),
            parallelism=(1, 8),
            max_memory_bytes=MAX_KDF_MEMORY_BYTES,
        ),
    )
)
register_algorithm(DeepSeekAlgorithm())
