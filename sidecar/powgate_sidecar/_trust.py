"""Which peers are proxies whose word about the client is believed (``--trusted-proxies``).

A client can write ``X-Forwarded-For``, ``Forwarded`` and ``X-Real-IP`` as
well as a proxy can: they are believed only from peers in networks the
operator names, and the same trust picks the client out of
``X-Forwarded-For``.
"""

from __future__ import annotations

from collections.abc import Iterable

from powgate._networks import NetworkMap, parse_address, parse_network

__all__ = ["TrustedProxies"]


class TrustedProxies:
    """Peers whose ``X-Forwarded-*``, ``Forwarded`` and ``X-Real-IP`` are believed."""

    __slots__ = ("_networks",)

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self._networks: NetworkMap[bool] = NetworkMap(
            [(*parse_network(network, strict=False), True) for network in networks]
        )

    def __bool__(self) -> bool:
        return bool(len(self._networks))

    def __contains__(self, address: object) -> bool:
        if not len(self._networks) or not isinstance(address, str):
            return False
        parsed = parse_address(address.strip())
        return parsed is not None and next(self._networks.matches(parsed), False)

    def client(self, *, peer: str, forwarded_for: list[str]) -> str:
        """The client's address: the nearest ``X-Forwarded-For`` entry not of a trusted proxy."""
        if peer not in self:
            return peer
        for entry in reversed(forwarded_for):
            address = entry.strip()
            if address not in self:
                return address
        return peer
