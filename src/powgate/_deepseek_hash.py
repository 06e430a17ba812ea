"""DeepSeekHashV1: the hash behind DeepSeek's proof-of-work challenges.

It is Keccak-f[1600] as SHA3-256 uses it (rate 136 bytes, the SHA-3 domain
padding ``0x06 … 0x80``, a 32-byte digest) with one change: the permutation
runs 23 rounds, rounds 1 to 23 of the standard 24, so round 0 is skipped.
A solution hashes ``f"{salt}_{expire_at}_{answer}"``.

:func:`reference_hash` states the definition in plain Python (the oracle);
:func:`hash_v1` and :func:`search` use the C extension ``powgate._native``
when it is built and fall back to the reference otherwise (a pure-Python
search is some hundred times slower, which matters to solvers only: a
verifier hashes once per request).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

__all__ = ["NATIVE", "RATE", "hash_v1", "keccak_f", "reference_hash", "search"]

#: Bytes absorbed per permutation (SHA3-256's rate).
RATE: Final = 136
DIGEST_SIZE: Final = 32
#: The standard round constants; DeepSeekHashV1 uses entries 1..23.
_ROUND_CONSTANTS: Final = (
    0x0000000000000001, 0x0000000000008082, 0x800000000000808A, 0x8000000080008000,
    0x000000000000808B, 0x0000000080000001, 0x8000000080008081, 0x8000000000008009,
    0x000000000000008A, 0x0000000000000088, 0x0000000080008009, 0x000000008000000A,
    0x000000008000808B, 0x800000000000008B, 0x8000000000008089, 0x8000000000008003,
    0x8000000000008002, 0x8000000000000080, 0x000000000000800A, 0x800000008000000A,
    0x8000000080008081, 0x8000000000008080, 0x0000000080000001, 0x8000000080008008,
)  # fmt: skip
#: Rotation offsets of the rho step, by lane index x + 5y.
_RHO: Final = (
    0, 1, 62, 28, 27,
    36, 44, 6, 55, 20,
    3, 10, 43, 25, 39,
    41, 45, 15, 21, 8,
    18, 2, 61, 56, 14,
)  # fmt: skip
_MASK: Final = (1 << 64) - 1
#: DeepSeekHashV1 skips the first round.
FIRST_ROUND: Final = 1


def _rotl(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (64 - shift))) & _MASK if shift else value


def keccak_f(lanes: list[int], *, first_round: int = 0) -> None:
    """Keccak-f[1600] on 25 lanes in place, rounds ``first_round`` … 23."""
    for constant in _ROUND_CONSTANTS[first_round:]:
        # theta
        columns = [
            lanes[x] ^ lanes[x + 5] ^ lanes[x + 10] ^ lanes[x + 15] ^ lanes[x + 20]
            for x in range(5)
        ]
        for x in range(5):
            d = columns[(x - 1) % 5] ^ _rotl(columns[(x + 1) % 5], 1)
            for y in range(0, 25, 5):
                lanes[x + y] ^= d
        # rho and pi: lane (x, y) moves to (y, 2x + 3y)
        moved = [0] * 25
        for x in range(5):
            for y in range(5):
                moved[y + 5 * ((2 * x + 3 * y) % 5)] = _rotl(lanes[x + 5 * y], _RHO[x + 5 * y])
        # chi
        for y in range(0, 25, 5):
            row = moved[y : y + 5]
            for x in range(5):
                lanes[x + y] = row[x] ^ (~row[(x + 1) % 5] & row[(x + 2) % 5])
        # iota
        lanes[0] ^= constant


def reference_hash(data: bytes, *, first_round: int = FIRST_ROUND) -> bytes:
    """The definition: a SHA3-256 sponge over Keccak-f rounds ``first_round`` … 23.

    With ``first_round=0`` this is SHA3-256 itself, which is how the tests
    check the sponge against :mod:`hashlib`.
    """
    padded = bytearray(data)
    padded.append(0x06)
    padded.extend(bytes(-len(padded) % RATE))
    padded[-1] |= 0x80
    lanes = [0] * 25
    for offset in range(0, len(padded), RATE):
        block = padded[offset : offset + RATE]
        for index in range(RATE // 8):
            lanes[index] ^= int.from_bytes(block[index * 8 : index * 8 + 8], "little")
        keccak_f(lanes, first_round=first_round)
    return b"".join(lane.to_bytes(8, "little") for lane in lanes[: DIGEST_SIZE // 8])


def _reference_search(prefix: bytes, target: bytes, start: int, stop: int) -> int:
    for answer in range(start, stop):
        if reference_hash(prefix + b"%d" % answer) == target:
            return answer
    return -1


_hash: Callable[[bytes], bytes]
_search: Callable[[bytes, bytes, int, int], int]
try:
    from powgate import _native
except ImportError:  # pragma: no cover - a build without a C compiler
    NATIVE = False
    _hash, _search = reference_hash, _reference_search
else:
    NATIVE = True
    _hash, _search = _native.deepseek_hash, _native.deepseek_search


def hash_v1(data: bytes) -> bytes:
    """DeepSeekHashV1 of ``data`` (32 bytes)."""
    return _hash(data)


def search(prefix: bytes, target: bytes, start: int, stop: int) -> int:
    """The first ``answer`` in ``start … stop - 1`` hashing with ``prefix`` to ``target``.

    The message is ``prefix + str(answer)``; ``-1`` when there is none. The native
    search releases the GIL.
    """
    return _search(prefix, target, start, stop)
