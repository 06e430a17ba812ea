"""Who pays how much: per-client pricing and trusted callers, as a policy declares them.

These models are part of both the PowPolicy spec and the rendered sidecar
configuration (one model per concept; the CRD is generated from them). The
sidecar measures each client's request rate and multiplies the route's
difficulty by :meth:`PricingConfig.factor` of it; trusted callers pay their
:attr:`TrustedCaller.multiplier` of the price instead (0: nothing at all).
docs/pricing.md describes the whole scheme.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import ipaddress
import math
from typing import Annotated, Any, Final, Literal, Self

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from ._protocol import MAX_FACTOR, format_factor, parse_factor
from ._wire import WireModel

__all__ = [
    "API_KEYS_DATA_KEY",
    "API_KEYS_LABEL",
    "MAX_API_KEYS",
    "MAX_FACTOR",
    "MIN_MULTIPLIER",
    "ApiKeyConfig",
    "ApiKeyHashes",
    "Cidr",
    "ClientKeyConfig",
    "ClientKeySource",
    "IdentityConfig",
    "PricingConfig",
    "TrustedCaller",
    "api_key_digest",
    "client_tag",
    "format_factor",
    "parse_api_key_digests",
    "parse_factor",
    "round_factor",
    "xfcc_field",
]

#: The smallest non-zero price multiplier of a trusted caller; factors are signed
#: into challenges with three decimals.
MIN_MULTIPLIER: Final = 0.001
#: A Secret of API-key hashes opts in to being read by the operator with this label = "true".
API_KEYS_LABEL: Final = "powgate.dev/api-keys"
#: Where the operator puts the trusted API-key hashes for the sidecar: a file in
#: the policy's key Secret, mounted into the sidecar container only.
API_KEYS_DATA_KEY: Final = "apikeys.json"

_DNS_LABEL: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": rule, "message": msg} for rule, msg in rules]}


HeaderName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
        description="An HTTP header name (RFC 9110 token).",
    ),
]


def _canonical_cidr(value: str) -> str:
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a CIDR range without host bits: {exc}") from None
    return str(network)


Cidr = Annotated[
    str,
    Field(
        min_length=2,
        max_length=49,
        # The API server checks the shape; the models (and so the operator) check the rest.
        pattern=r"^[0-9A-Fa-f:.]+/[0-9]{1,3}$",
        description="An IPv4 or IPv6 range (`10.0.0.0/8`, `fd00::/8`), host bits zero.",
    ),
    AfterValidator(_canonical_cidr),
]


class ClientKeySource(enum.StrEnum):
    """What identifies one client."""

    ADDRESS = "Address"  # the client's address, grouped by prefix
    HEADER = "Header"  # an identity header set by a trusted proxy


class ClientKeyConfig(WireModel):
    """How requests are grouped into clients.

    By address, a client is the network of its address at the prefix length
    (one home or office is one client, however many addresses it rotates
    through); which address is the client's follows the sidecar's
    trusted-proxy rules. By header, a trusted proxy names the client; from
    any other peer, and without the header, the address is the key.
    """

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("self.source != 'Header' || has(self.header)", "clientKey.header is required")
        )
    )

    source: ClientKeySource = ClientKeySource.ADDRESS
    ipv4_prefix_length: int = Field(
        default=24, ge=8, le=32, description="IPv4 addresses in one network are one client."
    )
    ipv6_prefix_length: int = Field(
        default=56, ge=16, le=128, description="IPv6 addresses in one network are one client."
    )
    header: HeaderName | None = Field(
        default=None, description="Source Header: the header naming the client."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.source is ClientKeySource.HEADER and self.header is None:
            raise ValueError("clientKey.header is required")
        return self


class PricingConfig(WireModel):
    """Per-client difficulty: a client sending more than its fair share pays more.

    The factor is `(rate / fairRate) ** growth`, at least 1 and at most
    `maxFactor`; the rate is the client's recent requests per second to
    protected routes and challenge fetches, forgetting with `halfLifeSeconds`.
    """

    enabled: bool = Field(default=False, description="Off: every client pays the route's price.")
    client_key: ClientKeyConfig = Field(default_factory=ClientKeyConfig)
    fair_rate: float = Field(
        default=1.0,
        gt=0,
        le=100_000,
        description="Requests per second a client may send at the route's price.",
    )
    growth: float = Field(
        default=1.0,
        gt=0,
        le=4,
        description="How steeply the price rises above the fair rate: doubling the rate "
        "multiplies the price by 2^growth.",
    )
    max_factor: float = Field(
        default=64.0, ge=1, le=MAX_FACTOR, description="The most a client pays, times the base."
    )
    half_life_seconds: float = Field(
        default=10.0,
        ge=0.5,
        le=3600,
        description="How fast a client's rate is forgotten (and how long a new flood takes "
        "to be priced fully).",
    )
    tracked_clients: int = Field(
        default=4096,
        ge=16,
        le=1_000_000,
        description="Clients each sidecar keeps count of: fixed memory, whatever the number "
        "of clients. A client keeps its price as long as it sends more than the total rate "
        "divided by this.",
    )
    shared_clients: int = Field(
        default=20,
        ge=0,
        le=200,
        description="How many of its heaviest clients each sidecar reports for the policy's "
        "reputation list (0: none).",
    )

    def factor(self, rate: float) -> float:
        """What a client sending `rate` requests per second pays, times the base."""
        fair = self.fair_rate
        if not rate > fair:  # also NaN
            return 1.0
        return min(self.max_factor, math.pow(rate / fair, self.growth))


class ApiKeyConfig(WireModel):
    """Callers presenting an API key whose SHA-256 is in a Secret.

    The Secret, in the policy's namespace, must carry the label
    `powgate.dev/api-keys: "true"`; each data value is one or more
    lowercase hex SHA-256 digests of keys, one per line. Only digests are
    stored; an unknown key pays the normal price.
    """

    secret_name: str = Field(
        min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    header: HeaderName = Field(default="Authorization", description="Where the key travels.")
    scheme: str = Field(
        default="Bearer",
        max_length=32,
        pattern=r"^[A-Za-z0-9._-]*$",
        description="An authentication scheme before the key (`Bearer sk-…`), matched "
        "case-insensitively; empty: the whole value is the key.",
    )


class IdentityConfig(WireModel):
    """Callers named by a mesh or gateway that authenticated them.

    Honoured only from a trusted proxy: the same header from any other peer
    is ignored. With `field`, the value is read as Envoy's
    `X-Forwarded-Client-Cert` (`Key=value;…`, elements separated by
    commas) and the field of its last element (the nearest proxy's) is
    compared; without, the whole value.
    """

    header: HeaderName = "X-Forwarded-Client-Cert"
    field: str | None = Field(
        default=None,
        max_length=32,
        pattern=r"^[A-Za-z]+$",
        description="An element of an XFCC value: `URI`, `Subject`, `DNS`, `By`, `Hash`.",
    )
    values: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(
        min_length=1, max_length=256, description="Identities that match, compared exactly."
    )


class TrustedCaller(WireModel):
    """Callers who pay less (`multiplier`) or nothing (0), recognised by one kind of proof."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "(has(self.cidrs) && size(self.cidrs) > 0 ? 1 : 0) + (has(self.apiKeys) ? 1 : 0)"
                " + (has(self.identity) ? 1 : 0) == 1",
                "a trusted caller names exactly one of cidrs, apiKeys, identity",
            ),
            (
                f"!has(self.multiplier) || self.multiplier == 0.0"
                f" || self.multiplier >= {MIN_MULTIPLIER}",
                f"a multiplier is 0 or at least {MIN_MULTIPLIER}",
            ),
        )
    )

    name: str = Field(min_length=1, max_length=63, pattern=_DNS_LABEL)
    multiplier: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="What these callers pay, times the normal price: 0 exempts them.",
    )
    cidrs: list[Cidr] = Field(
        default_factory=list,
        max_length=256,
        description="Client addresses (after the trusted-proxy rules) in these ranges.",
    )
    api_keys: ApiKeyConfig | None = None
    identity: IdentityConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        kinds = bool(self.cidrs) + (self.api_keys is not None) + (self.identity is not None)
        if kinds != 1:
            raise ValueError("a trusted caller names exactly one of cidrs, apiKeys, identity")
        if 0 < self.multiplier < MIN_MULTIPLIER:
            raise ValueError(f"a multiplier is 0 or at least {MIN_MULTIPLIER}")
        return self


def round_factor(factor: float) -> float:
    """``factor`` to two significant digits (1 … 64 in steps of at most 5 %), at least 0.001.

    Prices move in these steps: a client whose rate wobbles keeps its price
    (and its batch of ready challenges, and the lists their entries), and
    every factor fits the three decimals a challenge signs.
    """
    if not factor > 0:
        return 0.0
    return max(MIN_MULTIPLIER, float(round(factor, 1 - math.floor(math.log10(factor)))))


def client_tag(key: str, caller: str = "") -> str:
    """Who a challenge is priced for: a digest of the client key and its trusted caller.

    Signed into the challenge (`ck`), it makes a price count for that
    client only: a discounted challenge cannot serve another network, nor the
    same network without the credential that earned the discount. 96 bits:
    finding two clients with one tag is out of reach. The challenge goes to
    the client it names, so the digest hides nothing from anyone who could see it.
    """
    digest = hashlib.sha256(f"powgate client\0{key}\0{caller}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:12]).decode()


class ApiKeyHashes(WireModel):
    """The trusted API-key digests of a policy, by trusted caller (the sidecar's `apikeys.json`).

    Written by the operator into the policy's key Secret, which only the
    sidecar container mounts.
    """

    model_config = ConfigDict(extra="ignore")

    version: Literal[1] = 1
    callers: dict[
        Annotated[str, Field(max_length=63, pattern=_DNS_LABEL)],
        list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]],
    ] = Field(default_factory=dict, max_length=64)

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        if sum(len(digests) for digests in self.callers.values()) > MAX_API_KEYS:
            raise ValueError(f"at most {MAX_API_KEYS} API keys in all")
        return self


#: Trusted API keys per policy, in all: a Secret holds at most 1 MiB.
MAX_API_KEYS: Final = 10_000


def api_key_digest(key: str) -> str:
    """What the Secret of a trusted caller stores for `key`: lowercase hex SHA-256."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def parse_api_key_digests(text: str) -> list[str]:
    """The digests in one Secret value (one per line); `ValueError` names a bad line."""
    digests = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) != 64 or any(c not in "0123456789abcdef" for c in line):
            raise ValueError(f"line {number} is not a lowercase hex SHA-256 digest")
        digests.append(line)
    return digests


def xfcc_field(value: str, field: str) -> str | None:
    """`field` of the last element of an `X-Forwarded-Client-Cert` value, or None.

    Envoy's format: elements separated by `,`, each `Key=value` pairs
    separated by `;`, values optionally in double quotes (with `\\"`
    escapes) that may contain `,` `;` and `=`. The last element is the
    one the nearest proxy added. Keys compare case-insensitively.
    """
    if len(value) > _MAX_XFCC:
        return None
    element: dict[str, str] = {}
    key: list[str] = []
    current: list[str] = []
    in_key, quoted, escaped = True, False, False
    for char in value:
        if quoted:
            if escaped:
                current.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
            else:
                current.append(char)
        elif char == '"' and not in_key:
            quoted = True
        elif char == "=" and in_key:
            in_key = False
        elif char in ";,":
            if not in_key:
                element["".join(key).strip().lower()] = "".join(current)
            key, current, in_key = [], [], True
            if char == ",":
                element = {}
        elif in_key:
            key.append(char)
        else:
            current.append(char)
    if quoted:
        return None
    if not in_key:
        element["".join(key).strip().lower()] = "".join(current)
    # A pair without "=" is no pair; an empty value names no one.
    return element.get(field.lower()) or None


_MAX_XFCC: Final = 16 * 1024
