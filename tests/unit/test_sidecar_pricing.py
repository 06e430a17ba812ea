"""What a request pays: trusted callers, client keys, rates and reputation, abuse first."""

from __future__ import annotations

from typing import Any

import pytest

from powgate.config import SidecarConfig
from powgate.pricing import ApiKeyHashes, api_key_digest, client_tag
from powgate.reputation import ReputationEntry, ReputationIndex
from powgate_sidecar._pricing import EXEMPT, Pricer, Quote, TrustCounts

WALL = 1_800_000_000.0
PARTNER_KEY = "sk-partner-0123456789abcdef"


def pricer(
    *,
    pricing: dict[str, Any] | None = None,
    callers: list[dict[str, Any]] | None = None,
    reputation: list[ReputationEntry] = (),  # type: ignore[assignment]
) -> Pricer:
    config = SidecarConfig.model_validate(
        {
            "pricing": {"enabled": True, "fairRate": 1, "halfLifeSeconds": 10, **(pricing or {})},
            "trustedCallers": callers or [],
        }
    )
    hashes = ApiKeyHashes(callers={"partners": [api_key_digest(PARTNER_KEY)]})
    return Pricer(
        config=config,
        api_keys=hashes,
        reputation=ReputationIndex(reputation),
        sketch=None,
        trust=TrustCounts(),
        now=0.0,
    )


def headers(**fields: str) -> Any:
    found = {
        name.replace("_", "-").lower().encode(): value.encode() for name, value in fields.items()
    }
    return found.get


def quote(
    p: Pricer,
    client: str = "203.0.113.7",
    *,
    from_proxy: bool = False,
    now: float = 0.0,
    **fields: str,
) -> Quote:
    return p.quote(
        client=client, from_proxy=from_proxy, header=headers(**fields), now=now, wall=WALL
    )


CALLERS = [
    {"name": "office", "cidrs": ["10.0.0.0/8"], "multiplier": 0},
    {"name": "lab", "cidrs": ["10.1.0.0/16"], "multiplier": 0.5},
    {"name": "partners", "apiKeys": {"secretName": "keys"}, "multiplier": 0.1},
    {
        "name": "mesh",
        "identity": {"field": "URI", "values": ["spiffe://cluster.local/ns/a/sa/b"]},
        "multiplier": 0,
    },
]


# -- abuse first --------------------------------------------------------------------


def test_an_identity_header_from_a_peer_that_is_no_trusted_proxy_changes_nothing() -> None:
    p = pricer(callers=CALLERS)
    forged = quote(
        p, x_forwarded_client_cert="By=x;URI=spiffe://cluster.local/ns/a/sa/b", from_proxy=False
    )
    assert forged == quote(pricer(callers=CALLERS))
    assert forged.factor == 1.0
    assert p.trust.counts == {("none", "untrusted_identity"): 1}
    # From a trusted proxy the same header exempts.
    assert (
        quote(p, x_forwarded_client_cert="URI=spiffe://cluster.local/ns/a/sa/b", from_proxy=True)
        == EXEMPT
    )


def test_a_client_key_header_from_an_untrusted_peer_does_not_move_the_client() -> None:
    """A bot naming itself someone else (or a new identity per request) keeps its address key."""
    p = pricer(pricing={"clientKey": {"source": "Header", "header": "X-Tenant"}})
    for i in range(200):
        last = quote(p, now=i / 50, x_tenant=f"tenant-{i}")
    assert last.client == client_tag("203.0.113.0/24")
    assert last.factor > 1  # its own rate (50/s after 4 s) priced it
    via_proxy = quote(p, now=4.0, x_tenant="tenant-1", from_proxy=True)
    assert via_proxy.client == client_tag("id:tenant-1")


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer sk-guess",
        f"Bearer {PARTNER_KEY}x",
        f"Basic {PARTNER_KEY}",  # the scheme is part of the proof
        PARTNER_KEY,
        "Bearer " + "A" * 10_000,
        "",
    ],
)
def test_a_bad_key_pays_what_no_key_pays_and_is_counted(authorization: str) -> None:
    """No credential oracle beyond the price itself: same factor, same client, counted."""
    p = pricer(callers=CALLERS)
    assert quote(p, authorization=authorization) == quote(pricer(callers=CALLERS))
    assert p.trust.counts == {("none", "unknown_api_key"): 1}


def test_a_discounted_challenge_names_the_credential_that_earned_it() -> None:
    """The same network without the key is another client: its challenges cannot be shared."""
    p = pricer(callers=CALLERS)
    with_key = quote(p, authorization=f"Bearer {PARTNER_KEY}")
    without = quote(p)
    assert with_key.factor == pytest.approx(0.1)
    assert with_key.client != without.client
    assert with_key.client == client_tag("203.0.113.0/24", "partners")


# -- trusted callers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "fields", "factor", "caller"),
    [
        ("10.9.9.9", {}, 0.0, "office"),
        ("10.1.2.3", {}, 0.0, "office"),  # the lowest multiplier of every match
        ("::ffff:10.1.2.3", {}, 0.0, "office"),
        ("203.0.113.7", {"authorization": f"bearer  {PARTNER_KEY}"}, 0.1, "partners"),
        ("203.0.113.7", {}, 1.0, ""),
    ],
)
def test_trusted_callers_pay_their_multiplier(
    client: str, fields: dict[str, str], factor: float, caller: str
) -> None:
    p = pricer(callers=CALLERS)
    got = quote(p, client, **fields)
    assert got.factor == pytest.approx(factor)
    if factor:
        assert got.caller == caller
    else:
        assert got == EXEMPT
    if caller:
        assert p.trust.counts[(caller, "exempt" if factor == 0 else "discounted")] == 1


def test_a_lab_alone_pays_half() -> None:
    callers = [c for c in CALLERS if c["name"] != "office"]
    assert quote(pricer(callers=callers), "10.1.2.3").factor == pytest.approx(0.5)


def test_a_discounted_heavy_caller_still_pays_its_rate() -> None:
    p = pricer(callers=CALLERS)
    for i in range(1000):
        got = quote(p, "203.0.113.7", now=i / 50, authorization=f"Bearer {PARTNER_KEY}")
    # ~50/s for 20 s (two half-lives): rate ~37/s, times 0.1.
    assert 3.0 < got.factor < 5.0


def test_trust_without_pricing_keeps_plain_prices_for_everyone_else() -> None:
    config = SidecarConfig.model_validate({"trustedCallers": CALLERS})
    p = Pricer(
        config=config,
        api_keys=ApiKeyHashes(),
        reputation=ReputationIndex(),
        sketch=None,
        trust=TrustCounts(),
        now=0.0,
    )
    assert p.active
    assert p.sketch is None
    assert quote(p, "10.0.0.1") == EXEMPT
    for i in range(500):
        got = quote(p, now=i / 100)
    assert got.factor == 1.0
    assert got.client == client_tag("203.0.113.0/24")


# -- heavy hitters and reputation --------------------------------------------------------


def test_a_heavy_hitter_pays_more_and_its_neighbours_in_other_networks_do_not() -> None:
    p = pricer(pricing={"maxFactor": 64})
    for i in range(3000):
        heavy = quote(p, f"198.51.100.{i % 200}", now=i / 50)  # 50/s over a whole /24
    light = quote(p, "198.51.101.1", now=60.0)
    assert heavy.factor == pytest.approx(50 * (1 - 2**-6), rel=0.05)
    assert light.factor == 1.0
    assert p.heaviest(5, now=60.0)[0][0] == "198.51.100.0/24"


def test_the_reputation_list_raises_a_price_its_rate_does_not() -> None:
    listed = [
        ReputationEntry(key="198.51.100.0/24", factor=32, expires=int(WALL) + 60),
        ReputationEntry(key="id:tenant-9", factor=8, expires=int(WALL) + 60),
        ReputationEntry(key="192.0.2.0/24", factor=16, expires=int(WALL) - 1),
    ]
    p = pricer(pricing={"clientKey": {"source": "Header", "header": "X-Tenant"}}, reputation=listed)
    assert quote(p, "198.51.100.9").factor == 32
    assert quote(p, "192.0.2.1").factor == 1  # expired
    assert quote(p, "192.0.2.1", from_proxy=True, x_tenant="tenant-9").factor == 8


def test_without_pricing_nothing_is_counted() -> None:
    config = SidecarConfig()
    p = Pricer(
        config=config,
        api_keys=ApiKeyHashes(),
        reputation=ReputationIndex(),
        sketch=None,
        trust=TrustCounts(),
        now=0.0,
    )
    assert not p.active
    assert p.heaviest(10, now=0) == []
