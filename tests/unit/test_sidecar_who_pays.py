"""Who pays, through the sidecar's request path: abuse first, then prices, trust, metrics.

Clients are named the way a trusted proxy names them (``X-Forwarded-For``
from 127.0.0.1, trusted), except where the test is that an untrusted peer
cannot name anyone.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import generate_latest
from test_sidecar_app import POLICY, Harness, build, make_config

from powgate import Challenge, Issuer, solve
from powgate.pricing import ApiKeyHashes, api_key_digest, client_tag
from powgate.reputation import ReputationEntry, ReputationList, open_label

PROXY = ("127.0.0.1/32",)
PRICING = {"enabled": True, "fairRate": 1, "halfLifeSeconds": 5, "maxFactor": 64}
PARTNER_KEY = "sk-partner-9f8e7d6c5b4a"
CALLERS = [
    {"name": "office", "cidrs": ["10.0.0.0/8"], "multiplier": 0},
    {"name": "partners", "apiKeys": {"secretName": "keys"}, "multiplier": 0.1},
    {"name": "mesh", "identity": {"header": "X-Client-Id", "values": ["batch"]}, "multiplier": 0},
]


@pytest.fixture
async def priced() -> AsyncIterator[Harness]:
    config = make_config(pricing=PRICING, trusted_callers=CALLERS)
    async for harness in build(config=config, trusted_proxies=PROXY):
        harness.sidecar.apply_api_keys(
            ApiKeyHashes(callers={"partners": [api_key_digest(PARTNER_KEY)]})
        )
        yield harness


@pytest.fixture
async def unproxied() -> AsyncIterator[Harness]:
    """Pricing on, and no trusted proxy: every peer is its own client."""
    async for harness in build(config=make_config(pricing=PRICING, trusted_callers=CALLERS)):
        yield harness


async def challenge_for(h: Harness, headers: dict[str, str] | None = None) -> Challenge:
    response = await h.client.post("/v1/chat", json={}, headers=headers or {})
    assert response.status == 428
    return Challenge.from_json(await response.read())


def as_client(address: str, **extra: str) -> dict[str, str]:
    return {"X-Forwarded-For": address, **extra}


async def flood(h: Harness, count: int, headers: Any) -> Challenge:
    last = None
    for i in range(count):
        last = await challenge_for(h, headers(i) if callable(headers) else headers)
    assert last is not None
    return last


# -- abuse first ------------------------------------------------------------------------


async def test_spoofed_forwarding_headers_from_an_untrusted_peer_never_lower_a_price(
    unproxied: Harness,
) -> None:
    """A bot that writes a new X-Forwarded-For, X-Real-IP and Forwarded on every request
    is still the one client its address says it is, and pays for all it sends."""
    h = unproxied

    def spoofed(i: int) -> dict[str, str]:
        fake = f"198.{i % 250}.{i // 250}.1"
        return {
            "X-Forwarded-For": fake,
            "X-Real-IP": fake,
            "Forwarded": f"for={fake}",
            "X-Client-Id": "batch",  # a trusted identity, from a peer no one trusts
        }

    last = await flood(h, 60, spoofed)
    params = last.params
    assert params.client == client_tag("127.0.0.0/24")
    assert params.factor is not None
    assert float(params.factor) > 2
    assert last.maxnumber > make_config().difficulty * 2
    # The identity header proved nothing and was counted as such.
    assert (
        h.sample(
            "powgate_trusted_requests_total", {"caller": "none", "result": "untrusted_identity"}
        )
        == 60
    )


async def test_a_solution_priced_for_one_client_does_not_serve_another(priced: Harness) -> None:
    h = priced
    challenge = await challenge_for(h, as_client("203.0.113.9"))
    payload = challenge.solution(solve(challenge).number).encode()
    response = await h.client.post(
        "/v1/chat", json={}, headers=as_client("198.51.100.4", **{"X-Powgate-Solution": payload})
    )
    assert response.status == 428
    assert h.count("chat", "rejected", "wrong_client") == 1
    response = await h.client.post(
        "/v1/chat", json={}, headers=as_client("203.0.113.77", **{"X-Powgate-Solution": payload})
    )
    assert response.status == 200  # the same /24 is the same client


@pytest.mark.parametrize(
    "authorization",
    ["Bearer sk-guess", f"Bearer {PARTNER_KEY}0", f"Basic {PARTNER_KEY}", PARTNER_KEY],
)
async def test_a_bad_key_pays_the_normal_price_and_is_counted_never_refused(
    priced: Harness, authorization: str
) -> None:
    h = priced
    plain = await challenge_for(h, as_client("203.0.113.9"))
    guessed = await challenge_for(h, as_client("203.0.113.9", Authorization=authorization))
    # Same price, same client: nothing tells a wrong key from no key.
    assert (guessed.maxnumber, guessed.params.client) == (plain.maxnumber, plain.params.client)
    assert (
        h.sample("powgate_trusted_requests_total", {"caller": "none", "result": "unknown_api_key"})
        == 1
    )
    payload = guessed.solution(solve(guessed).number).encode()
    response = await h.client.post(
        "/v1/chat",
        json={},
        headers=as_client(
            "203.0.113.9", Authorization=authorization, **{"X-Powgate-Solution": payload}
        ),
    )
    assert response.status == 200
    assert h.upstream.seen[-1][2]["Authorization"] == authorization


# -- prices ------------------------------------------------------------------------------


async def test_a_heavy_client_pays_more_and_a_light_one_the_base(priced: Harness) -> None:
    h = priced
    heavy = await flood(h, 80, as_client("198.51.100.7"))
    light = await challenge_for(h, as_client("203.0.113.9"))
    base = make_config().difficulty
    assert light.maxnumber == base
    assert light.params.factor == "1"
    factor = float(heavy.params.factor or 0)
    assert factor > 4
    assert heavy.maxnumber == pytest.approx(base * factor, abs=1)
    # And it solves and passes like any other, at its price.
    payload = heavy.solution(solve(heavy).number).encode()
    response = await h.client.post(
        "/v1/chat", json={}, headers=as_client("198.51.100.200", **{"X-Powgate-Solution": payload})
    )
    assert response.status == 200


async def test_the_reputation_list_raises_a_price_and_a_bad_list_changes_nothing(
    priced: Harness,
) -> None:
    h = priced
    listed = ReputationList(
        entries=(ReputationEntry(key="198.51.100.0/24", factor=16, expires=int(time.time()) + 60),)
    )
    assert h.sidecar.apply_reputation(listed.to_json(), source="reputation")
    assert (await challenge_for(h, as_client("198.51.100.3"))).maxnumber == 16 * 200
    assert not h.sidecar.apply_reputation(b'{"entries": [{"key": "x"}]}', source="reputation")
    assert (await challenge_for(h, as_client("198.51.100.3"))).maxnumber == 16 * 200
    assert h.sample("powgate_reputation_entries") == 1
    assert h.sidecar.apply_reputation(None, source="reputation")
    assert (await challenge_for(h, as_client("198.51.100.3"))).maxnumber == 200


async def test_after_a_raise_a_stockpiled_priced_challenge_is_judged_by_its_base() -> None:
    """Issue 14's grace after a raise, for priced challenges: what counts is the base a
    challenge was issued at (``maxnumber / f``), not its ``maxnumber``. A heavy client's
    challenge fetched at base 100 and 4x is as hard as today's base of 400, yet stockpiled."""
    now = int(time.time())
    client = client_tag("198.51.100.0/24")
    # A light client now (factor 1), so a price well above what it owes is no excuse.
    headers = as_client("198.51.100.7")

    def stockpiled(h: Harness, *, base: int, factor: float) -> str:
        # The issuer prices the base itself: maxnumber = ceil(base * factor).
        cheap = Issuer(keyring=h.keyring).issue(
            difficulty=base,
            ttl=300,
            binding=f"{POLICY}:chat",
            client=client,
            factor=factor,
        )
        assert isinstance(cheap, Challenge)
        assert cheap.maxnumber == math.ceil(base * factor)
        return cheap.solution(solve(cheap).number).encode()

    def raised(seconds_ago: int) -> Any:
        return make_config(
            pricing=PRICING, difficulty=400, raised_at=now - seconds_ago, raise_grace_seconds=60
        )

    async for h in build(config=raised(10), trusted_proxies=PROXY):
        payload = stockpiled(h, base=100, factor=4)
        response = await h.client.post(
            "/v1/chat", json={}, headers={**headers, "X-Powgate-Solution": payload}
        )
        assert response.status == 200  # within the grace: in flight when the price rose
    async for h in build(config=raised(120), trusted_proxies=PROXY):
        for base, factor in ((100, 4), (399, 1.5)):
            payload = stockpiled(h, base=base, factor=factor)
            response = await h.client.post(
                "/v1/chat", json={}, headers={**headers, "X-Powgate-Solution": payload}
            )
            assert response.status == 428, (base, factor)
        assert h.count("chat", "rejected", "insufficient") == 2
        # Issued at today's base, priced or not, it pays.
        for factor in (1, 2.5):
            payload = stockpiled(h, base=400, factor=factor)
            response = await h.client.post(
                "/v1/chat", json={}, headers={**headers, "X-Powgate-Solution": payload}
            )
            assert response.status == 200, factor


# -- trusted callers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "caller"),
    [
        (as_client("10.20.30.40"), "office"),
        (as_client("203.0.113.9", **{"X-Client-Id": "batch"}), "mesh"),
    ],
)
async def test_exempt_callers_pass_without_a_challenge(
    priced: Harness, headers: dict[str, str], caller: str
) -> None:
    h = priced
    response = await h.client.post("/v1/chat", json={"q": 1}, headers=headers)
    assert response.status == 200
    assert h.count("chat", "trusted", "none") == 1
    assert h.sample("powgate_trusted_requests_total", {"caller": caller, "result": "exempt"}) == 1
    assert h.sample("powgate_price_factor_bucket", {"le": "0.0"}) == 1


async def test_a_partner_key_pays_a_tenth(priced: Harness) -> None:
    h = priced
    headers = as_client("203.0.113.9", Authorization=f"Bearer {PARTNER_KEY}")
    challenge = await challenge_for(h, headers)
    assert challenge.maxnumber == 20
    assert challenge.params.factor == "0.1"
    payload = challenge.solution(solve(challenge).number).encode()
    response = await h.client.post(
        "/v1/chat", json={}, headers={**headers, "X-Powgate-Solution": payload}
    )
    assert response.status == 200
    # Without the key, the same network cannot spend the discounted challenge.
    challenge = await challenge_for(h, headers)
    payload = challenge.solution(solve(challenge).number).encode()
    response = await h.client.post(
        "/v1/chat", json={}, headers=as_client("203.0.113.9", **{"X-Powgate-Solution": payload})
    )
    assert response.status == 428


# -- metrics --------------------------------------------------------------------------------


async def test_metrics_show_factors_and_concentration_but_no_address(priced: Harness) -> None:
    h = priced
    await flood(h, 50, as_client("198.51.100.7"))
    await flood(h, 3, lambda i: as_client(f"203.0.{113 + i}.9"))
    exposition = generate_latest(h.sidecar.metrics.registry).decode()
    labels = " ".join(re.findall(r"\{[^}]*\}", exposition))
    for address in ("198.51.100", "203.0.113", "203.0.114", "127.0.0.1"):
        assert address not in labels
    assert h.sample("powgate_clients_tracked") == 4
    assert h.sample("powgate_top_clients_share", {"top": "1"}) > 0.8
    assert h.sample("powgate_top_clients_share", {"top": "10"}) == pytest.approx(1.0)
    assert h.sample("powgate_price_factor_count") == 53
    assert h.sample("powgate_price_factor_bucket", {"le": "1.0"}) >= 3
    sealed = re.findall(
        r'powgate_heavy_client_rate\{client="([^"]+)",policy="team/chat"\}', exposition
    )
    assert len(sealed) == 1
    assert open_label(h.keyring, sealed[0], now=0) == "198.51.100.0/24"


@pytest.fixture
async def proxied_by_policy() -> AsyncIterator[Harness]:
    """No --trusted-proxies flag: the policy names the proxy in front."""
    config = make_config(pricing=PRICING, trusted_proxies=["127.0.0.1/32"])
    async for harness in build(config=config):
        yield harness


async def paid_forwarded_for(h: Harness, client: str) -> str:
    """Send a paid request as ``client``; what the upstream saw in X-Forwarded-For."""
    challenge = await challenge_for(h, as_client(client))
    payload = challenge.solution(solve(challenge).number).encode()
    headers = as_client(client, **{"X-Powgate-Solution": payload})
    response = await h.client.post("/v1/chat", json={}, headers=headers)
    assert response.status == 200
    return {k.lower(): v for k, v in h.upstream.seen[-1][2].items()}["x-forwarded-for"]


async def test_the_policy_names_the_proxies_in_front_and_a_reload_moves_the_trust(
    proxied_by_policy: Harness,
) -> None:
    """An injected sidecar has no flags of its own to change: its policy's trustedProxies
    say whose X-Forwarded-For is believed, for pricing and for what goes upstream."""
    h = proxied_by_policy
    named = await challenge_for(h, as_client("198.51.100.4"))
    assert named.params.client == client_tag("198.51.100.0/24")
    # Believed: the proxy's entry is kept and the peer appended to it.
    assert await paid_forwarded_for(h, "198.51.100.4") == "198.51.100.4, 127.0.0.1"
    # The same sidecar, once the policy no longer names the proxy: the peer is the
    # client, and what the peer wrote is replaced.
    assert h.sidecar.apply_config(make_config(pricing=PRICING, version="untrusted"), source="file")
    spoofed = await challenge_for(h, as_client("198.51.100.4"))
    assert spoofed.params.client == client_tag("127.0.0.0/24")
    assert await paid_forwarded_for(h, "198.51.100.4") == "127.0.0.1"
