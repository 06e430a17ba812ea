"""What one request's client pays: its key, its trust, its rate, its reputation.

Compiled once per configuration (and per key-folder or reputation-list
change) from :class:`powgate.config.SidecarConfig`, so the request path
does a few dict lookups and one sketch update. docs/pricing.md is the
description; the order of decisions is:

1. a trusted caller the request proves to be (a CIDR of the client
   address, a known API key, an identity a trusted proxy asserts) pays its
   multiplier, the lowest when several match; 0 pays nothing at all;
2. otherwise, and for multipliers above 0, the client key's factor: the
   highest of its own rate's (:class:`RateSketch`), its rate across the
   policy's sidecars (:class:`SharedRates`, with a shared store) and the
   reputation list's, when pricing is on.

Credentials that prove nothing (an unknown API key, an identity header from
a peer that is not a trusted proxy, an identity not listed) change nothing:
the request pays what any other would, and the attempt is counted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Final, NamedTuple

from powgate._networks import Address, NetworkMap, network_key, parse_address, parse_network
from powgate.config import SidecarConfig
from powgate.pricing import ApiKeyHashes, ClientKeySource, PricingConfig, client_tag, xfcc_field
from powgate.reputation import ReputationIndex, identity_key

from ._shared_rates import SharedRates
from ._sketch import RateSketch

__all__ = ["EXEMPT", "UNPRICED", "Pricer", "Quote", "TrustCounts"]

#: Reads one request header by its lower-case name (the data path's ``Request.header``).
Header = Callable[[bytes], bytes | None]

#: The longest credential or identity value looked at; longer ones prove nothing.
_MAX_VALUE: Final = 8 * 1024
#: Addresses and client tags remembered between requests (parsing and hashing them is
#: most of a quote); cleared when full, so a flood of new addresses costs only misses.
_CACHED: Final = 16_384


class Quote(NamedTuple):
    """What a request pays: ``factor`` times the route's price, for ``client`` (a tag).

    ``client`` is None where prices are not per client (a plain challenge);
    ``factor`` 0 means the caller is exempt: no challenge at all.
    """

    factor: float
    client: str | None
    caller: str = ""


UNPRICED: Final = Quote(1.0, None)
EXEMPT: Final = Quote(0.0, None)


class TrustCounts:
    """Trusted-caller outcomes by ``(caller, result)``, read at scrape time."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def count(self, caller: str, result: str) -> None:
        key = (caller, result)
        self.counts[key] = self.counts.get(key, 0) + 1


class _Callers:
    """The trusted callers of one configuration, arranged by the proof each asks for."""

    __slots__ = ("any", "api_keys", "identities", "networks")

    def __init__(self, config: SidecarConfig, hashes: ApiKeyHashes) -> None:
        networks: list[tuple[Address, int, tuple[float, str]]] = []
        #: header → (scheme prefix in lower case, digest → (multiplier, caller))
        self.api_keys: dict[bytes, list[tuple[bytes, dict[str, tuple[float, str]]]]] = {}
        #: header → list of (XFCC field or None, value → (multiplier, caller))
        self.identities: dict[bytes, list[tuple[str | None, dict[str, tuple[float, str]]]]] = {}
        for caller in config.trusted_callers:
            price = (caller.multiplier, caller.name)
            for cidr in caller.cidrs:
                networks.append((*parse_network(cidr, strict=True), price))
            if caller.api_keys is not None:
                spec = caller.api_keys
                prefix = f"{spec.scheme} ".lower().encode() if spec.scheme else b""
                digests = dict.fromkeys(hashes.callers.get(caller.name, ()), price)
                self.api_keys.setdefault(spec.header.lower().encode(), []).append((prefix, digests))
            if caller.identity is not None:
                spec_id = caller.identity
                values = dict.fromkeys(spec_id.values, price)
                self.identities.setdefault(spec_id.header.lower().encode(), []).append(
                    (spec_id.field, values)
                )
        self.networks: NetworkMap[tuple[float, str]] = NetworkMap(networks)
        #: Whether any caller is trusted at all (asked on every request).
        self.any = bool(networks or self.api_keys or self.identities)


class Pricer:
    """Quotes requests for one configuration; keeps counting rates across reloads."""

    __slots__ = (
        "_addresses",
        "_callers",
        "_identity_header",
        "_pricing",
        "_reputation",
        "_shared",
        "_tags",
        "_v4_prefix",
        "_v6_prefix",
        "sketch",
        "trust",
    )

    def __init__(
        self,
        *,
        config: SidecarConfig,
        api_keys: ApiKeyHashes,
        reputation: ReputationIndex,
        sketch: RateSketch | None,
        trust: TrustCounts,
        now: float,
        shared: SharedRates | None = None,
    ) -> None:
        pricing = config.pricing
        self._pricing: PricingConfig | None = pricing if pricing.enabled else None
        self._callers = _Callers(config, api_keys)
        #: None when the list is empty: most requests then skip the lookup.
        self._reputation = reputation if len(reputation) else None
        key = pricing.client_key
        self._v4_prefix = key.ipv4_prefix_length
        self._v6_prefix = key.ipv6_prefix_length
        self._identity_header = (
            key.header.lower().encode()
            if key.source is ClientKeySource.HEADER and key.header
            else None
        )
        self.trust = trust
        self._shared = shared if self._pricing is not None else None
        self._addresses: dict[str, tuple[Address | None, str]] = {}
        self._tags: dict[tuple[str, str], str] = {}
        #: The rates of this sidecar's clients: a new pricer takes over its predecessor's
        #: unless the sketch's size or half-life changed.
        self.sketch = sketch
        if self._pricing is not None and (
            sketch is None
            or sketch.capacity != pricing.tracked_clients
            or sketch.half_life != pricing.half_life_seconds
        ):
            self.sketch = RateSketch(
                capacity=pricing.tracked_clients, half_life=pricing.half_life_seconds, now=now
            )

    @property
    def active(self) -> bool:
        """Whether prices depend on the client at all (else every quote is :data:`UNPRICED`)."""
        return self._pricing is not None or self._callers.any

    @property
    def pricing(self) -> PricingConfig | None:
        return self._pricing

    def quote(
        self, *, client: str, from_proxy: bool, header: Header, now: float, wall: float
    ) -> Quote:
        """What the request of ``client`` (its address) pays; counts it towards its rate.

        ``from_proxy``: the peer is a trusted proxy, so identity headers are
        believed. ``now`` is monotonic time (rates), ``wall`` unix time
        (reputation expiry).
        """
        known = self._addresses.get(client)
        if known is None:
            known = self._address(client)
        address, address_key = known
        multiplier, caller = self._trusted(address, from_proxy=from_proxy, header=header)
        if multiplier == 0.0:
            return EXEMPT
        pricing = self._pricing
        identity = None
        if self._identity_header is not None and from_proxy:
            raw = header(self._identity_header)
            if raw is not None and len(raw) <= _MAX_VALUE:
                identity = identity_key(raw.decode("latin-1").strip())
        key = address_key if identity is None else identity
        factor = 1.0
        if pricing is not None and self.sketch is not None:
            rate = self.sketch.add(key, now=now)
            shared = self._shared
            if shared is not None:
                rate = max(rate, shared.note(key, rate))
            factor = pricing.factor(rate)
            listed = self._reputation
            if listed is not None:
                factor = max(factor, listed.factor(address=address, identity=identity, now=wall))
        tag = self._tags.get((key, caller))
        if tag is None:
            if len(self._tags) >= _CACHED:
                self._tags.clear()
            tag = self._tags[key, caller] = client_tag(key, caller)
        return Quote(factor * multiplier, tag, caller)

    def _address(self, client: str) -> tuple[Address | None, str]:
        """``client`` parsed, and its key by address; remembered for the next request."""
        address = parse_address(client)
        if address is None:
            # No address this sidecar can read (a trusted proxy passed garbage on):
            # such requests share one key, so they are priced together.
            key = "id:unparsed-client"
        else:
            key = network_key(address, self._v4_prefix if address[0] == 32 else self._v6_prefix)
        if len(self._addresses) >= _CACHED:
            # Bounded whatever a flood of addresses does; the next ones are cached anew.
            self._addresses.clear()
        self._addresses[client] = (address, key)
        return address, key

    def _trusted(
        self, address: Address | None, *, from_proxy: bool, header: Header
    ) -> tuple[float, str]:
        """The lowest multiplier of the trusted callers the request proves to be (1.0: none)."""
        callers = self._callers
        if not callers.any:
            return 1.0, ""
        found = (1.0, "")
        if address is not None:
            for price in callers.networks.matches(address):
                found = min(found, price)
        for name, options in callers.api_keys.items():
            value = header(name)
            if value is None:
                continue
            matched = False
            for prefix, digests in options:
                credential = _credential(value, prefix)
                if credential is None:
                    continue
                hit = digests.get(hashlib.sha256(credential).hexdigest())
                if hit is not None:
                    found, matched = min(found, hit), True
            if not matched:
                self.trust.count("none", "unknown_api_key")
        for name, choices in callers.identities.items():
            value = header(name)
            if value is None:
                continue
            if not from_proxy:
                # Anyone can write the header; only a trusted proxy's word counts.
                self.trust.count("none", "untrusted_identity")
                continue
            text = value.decode("latin-1") if len(value) <= _MAX_VALUE else ""
            matched = False
            for field, values in choices:
                asserted = xfcc_field(text, field) if field else text.strip()
                named = values.get(asserted) if asserted else None
                if named is not None:
                    found, matched = min(found, named), True
            if not matched:
                self.trust.count("none", "unknown_identity")
        if found[1]:
            self.trust.count(found[1], "exempt" if found[0] == 0 else "discounted")
        return found

    def heaviest(self, count: int, *, now: float) -> list[tuple[str, float]]:
        """This sidecar's ``count`` heaviest clients at half their fair rate or more."""
        pricing, sketch = self._pricing, self.sketch
        if pricing is None or sketch is None or count <= 0:
            return []
        floor = pricing.fair_rate / 2
        return [(key, rate) for key, rate in sketch.top(count, now=now) if rate >= floor]


def _credential(value: bytes, prefix: bytes) -> bytes | None:
    """The key in a header value after its scheme (compared without case); None without it."""
    if len(value) > _MAX_VALUE:
        return None
    value = value.strip()
    if prefix:
        if value[: len(prefix)].lower() != prefix:
            return None
        value = value[len(prefix) :].lstrip()
    return value or None
