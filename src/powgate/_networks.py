"""Addresses and networks as integers: parsing, keys, and lookups by prefix.

Client keys, trusted ranges and reputation lists all ask "which of these
networks holds this address?" on the request path. Addresses are kept as
``(bits, value)`` integers, and a :class:`NetworkMap` answers with one dict
lookup per prefix length it holds, never a scan of its networks.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Final, Generic, TypeVar

__all__ = ["Address", "NetworkMap", "network_key", "parse_address", "parse_network"]

#: An address as ``(bits, value)``: ``(32, int)`` for IPv4, ``(128, int)`` for IPv6.
Address = tuple[int, int]

_FAMILIES: Final = {32: socket.AF_INET, 128: socket.AF_INET6}
_MAPPED_V4: Final = 0xFFFF

V = TypeVar("V")


def parse_address(text: str) -> Address | None:
    """An address as the kernel reports it (``1.2.3.4``, ``2001:db8::1``, ``fe80::1%eth0``).

    IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``, what a dual-stack socket
    reports for an IPv4 peer) read as IPv4, so one client has one key.
    """
    try:
        if ":" in text:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text.partition("%")[0]))
            if value >> 32 == _MAPPED_V4:
                return 32, value & 0xFFFFFFFF
            return 128, value
        return 32, int.from_bytes(socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError):
        return None


def network_key(address: Address, prefix: int) -> str:
    """The network of ``address`` at ``prefix`` bits, in one spelling (``203.0.113.0/24``)."""
    bits, value = address
    prefix = max(0, min(prefix, bits))
    shift = bits - prefix
    masked = (value >> shift) << shift
    return f"{socket.inet_ntop(_FAMILIES[bits], masked.to_bytes(bits // 8))}/{prefix}"


def parse_network(text: str, *, strict: bool) -> tuple[Address, int]:
    """``(address, prefix)`` of a network or a bare address; ``ValueError`` otherwise.

    ``strict`` refuses host bits (``10.0.0.1/8``); otherwise they are
    dropped. IPv4-mapped IPv6 networks read as the IPv4 networks they are.
    """
    network = ipaddress.ip_network(text, strict=strict)
    address = parse_address(str(network.network_address))
    assert address is not None
    prefix = network.prefixlen
    if address[0] == 32 and network.version == 6:
        prefix = max(0, prefix - 96)
    shift = address[0] - prefix
    return (address[0], (address[1] >> shift) << shift), prefix


class NetworkMap(Generic[V]):
    """Networks of both families with a value each; immutable once built."""

    __slots__ = ("_size", "_tables")

    def __init__(self, items: list[tuple[Address, int, V]]) -> None:
        tables: dict[tuple[int, int], dict[int, V]] = {}
        for (bits, value), prefix, item in items:
            shift = bits - prefix
            tables.setdefault((bits, shift), {})[value >> shift] = item
        #: ``((bits, shift), {address >> shift: value})``, longest prefixes first.
        self._tables = tuple(sorted(tables.items(), key=lambda entry: entry[0][1]))
        self._size = sum(len(table) for table in tables.values())

    def __len__(self) -> int:
        return self._size

    def matches(self, address: Address) -> Iterator[V]:
        """The values of every network holding ``address``, most specific first."""
        bits, value = address
        for (family, shift), table in self._tables:
            if family == bits:
                found = table.get(value >> shift)
                if found is not None:
                    yield found
