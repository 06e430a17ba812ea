"""Per-client pricing and trusted callers: the models, the factor, credentials' formats."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from powgate.pricing import (
    MAX_API_KEYS,
    ApiKeyHashes,
    PricingConfig,
    TrustedCaller,
    api_key_digest,
    client_tag,
    format_factor,
    parse_api_key_digests,
    parse_factor,
    xfcc_field,
)

# -- the factor ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "rate", "factor"),
    [
        # The issue's example: one request a minute pays the base, 50 a second up to the cap.
        ({}, 1 / 60, 1.0),
        ({}, 1.0, 1.0),
        ({}, 50.0, 50.0),
        ({}, 500.0, 64.0),
        ({"maxFactor": 16}, 50.0, 16.0),
        ({"growth": 2}, 4.0, 16.0),
        ({"growth": 0.5}, 16.0, 4.0),
        ({"fairRate": 10}, 20.0, 2.0),
        ({"fairRate": 10}, 9.0, 1.0),
        ({}, 0.0, 1.0),
        ({}, math.nan, 1.0),
        ({}, math.inf, 64.0),
    ],
)
def test_factor(settings: dict[str, Any], rate: float, factor: float) -> None:
    assert PricingConfig.model_validate(settings).factor(rate) == pytest.approx(factor)


@given(
    rate=st.floats(min_value=0, max_value=1e9),
    fair=st.floats(min_value=1e-3, max_value=1e5),
    growth=st.floats(min_value=0.01, max_value=4),
    cap=st.floats(min_value=1, max_value=1e6),
)
def test_factor_is_bounded_and_grows_with_the_rate(
    rate: float, fair: float, growth: float, cap: float
) -> None:
    config = PricingConfig(fair_rate=fair, growth=growth, max_factor=cap)
    factor = config.factor(rate)
    assert 1.0 <= factor <= cap
    assert config.factor(rate * 2) >= factor


@pytest.mark.parametrize(
    ("factor", "text"),
    [(1.0, "1"), (2.5, "2.5"), (0.1, "0.1"), (0.0004, "0"), (64.0001, "64"), (1.23456, "1.235")],
)
def test_factor_formatting(factor: float, text: str) -> None:
    assert format_factor(factor) == text
    assert parse_factor(text) == float(text)


@pytest.mark.parametrize(
    "text", [None, "", "-1", "1e3", "1.2345", ".5", "5.", "nan", "inf", "1,5", "٣", "9" * 13]
)
def test_unreadable_factors(text: str | None) -> None:
    assert parse_factor(text) is None


# -- the models ------------------------------------------------------------------


BAD: list[tuple[str, type[Any], dict[str, Any], str]] = [
    ("zero fair rate", PricingConfig, {"fairRate": 0}, "fairRate"),
    ("factor cap below 1", PricingConfig, {"maxFactor": 0.5}, "maxFactor"),
    ("no growth", PricingConfig, {"growth": 0}, "growth"),
    ("tiny sketch", PricingConfig, {"trackedClients": 3}, "trackedClients"),
    ("header key without header", PricingConfig, {"clientKey": {"source": "Header"}}, "header"),
    ("IPv4 prefix /33", PricingConfig, {"clientKey": {"ipv4PrefixLength": 33}}, "ipv4"),
    ("unknown field", PricingConfig, {"fairrate": 1}, "fairrate"),
    ("no proof", TrustedCaller, {"name": "x"}, "exactly one of"),
    (
        "two proofs",
        TrustedCaller,
        {"name": "x", "cidrs": ["10.0.0.0/8"], "apiKeys": {"secretName": "k"}},
        "exactly one of",
    ),
    ("host bits", TrustedCaller, {"name": "x", "cidrs": ["10.0.0.1/8"]}, "host bits"),
    ("not a CIDR", TrustedCaller, {"name": "x", "cidrs": ["10.0.0/8"]}, "CIDR"),
    ("paying more", TrustedCaller, {"name": "x", "cidrs": ["::/0"], "multiplier": 2}, "less"),
    (
        "multiplier too fine",
        TrustedCaller,
        {"name": "x", "cidrs": ["::/0"], "multiplier": 0.0001},
        "at least 0.001",
    ),
    ("bad name", TrustedCaller, {"name": "X_Y", "cidrs": ["::/0"]}, "name"),
    (
        "identity without values",
        TrustedCaller,
        {"name": "x", "identity": {"values": []}},
        "values",
    ),
    (
        "header with a space",
        TrustedCaller,
        {"name": "x", "apiKeys": {"secretName": "k", "header": "X Key"}},
        "header",
    ),
]


@pytest.mark.parametrize(
    ("model", "document", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_invalid_settings_are_refused(
    model: type[Any], document: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        model.model_validate(document)


def test_cidrs_are_kept_in_one_spelling() -> None:
    caller = TrustedCaller.model_validate(
        {"name": "office", "cidrs": ["10.0.0.0/8", "2001:DB8:0::/32"], "multiplier": 0.25}
    )
    assert caller.cidrs == ["10.0.0.0/8", "2001:db8::/32"]


# -- credentials -----------------------------------------------------------------


def test_api_key_digests_from_a_secret_value() -> None:
    one, two = api_key_digest("sk-one"), api_key_digest("sk-two")
    assert parse_api_key_digests(f"# partners\n{one}\n\n  {two}  \n") == [one, two]
    with pytest.raises(ValueError, match="line 2"):
        parse_api_key_digests(f"{one}\nsk-two\n")
    with pytest.raises(ValueError, match="line 1"):
        parse_api_key_digests(one.upper())


def test_api_key_hashes_document_is_bounded() -> None:
    digest = api_key_digest("k")
    ApiKeyHashes(callers={"a": [digest] * MAX_API_KEYS})
    with pytest.raises(ValidationError, match="at most"):
        ApiKeyHashes(callers={"a": [digest] * MAX_API_KEYS, "b": [digest]})
    with pytest.raises(ValidationError):
        ApiKeyHashes.model_validate({"callers": {"a": ["sk-plain-key"]}})


XFCC = [
    ("URI=spiffe://a/ns/x/sa/y", "URI", "spiffe://a/ns/x/sa/y"),
    (
        'By=spiffe://b;Hash=ab;Subject="CN=foo, O=bar;x";URI=spiffe://c',
        "subject",
        "CN=foo, O=bar;x",
    ),
    # The last element is the nearest proxy's.
    ("URI=spiffe://first,URI=spiffe://second", "URI", "spiffe://second"),
    ("URI=spiffe://first,Hash=ab", "URI", None),
    ('Subject="a \\"quoted\\" name"', "Subject", 'a "quoted" name'),
    ('Subject="unterminated', "Subject", None),
    ("", "URI", None),
    ("URI", "URI", None),
    ("DNS=a;DNS=b", "DNS", "b"),
]


@pytest.mark.parametrize(("value", "field", "expected"), XFCC)
def test_xfcc_field(value: str, field: str, expected: str | None) -> None:
    assert xfcc_field(value, field) == expected


@given(st.text(max_size=300), st.sampled_from(["URI", "Subject", "By"]))
def test_xfcc_never_raises(value: str, field: str) -> None:
    found = xfcc_field(value, field)
    assert found is None or len(found) <= len(value)


def test_client_tags_tell_clients_and_callers_apart() -> None:
    tags = {
        client_tag(key, caller)
        for key in ("203.0.113.0/24", "203.0.114.0/24", "id:a")
        for caller in ("", "partners")
    }
    assert len(tags) == 6
    assert all(len(tag) == 16 and tag.isascii() for tag in tags)
    assert client_tag("203.0.113.0/24") == client_tag("203.0.113.0/24", "")
