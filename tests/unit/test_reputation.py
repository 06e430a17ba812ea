"""Client keys and reputation lists: one spelling per key, bounded lists, sealed labels."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powgate import KeyRing
from powgate.reputation import (
    MAX_DOCUMENT_BYTES,
    MAX_ENTRIES,
    ReputationEntry,
    ReputationIndex,
    ReputationList,
    canonical_key,
    identity_key,
    merge_entries,
    network_key,
    open_label,
    parse_address,
    seal_label,
)

NOW = 1_800_000_000


def entry(key: str, factor: float = 8.0, expires: int = NOW + 600) -> ReputationEntry:
    return ReputationEntry(key=key, factor=factor, expires=expires)


# -- client keys -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "v4", "v6", "key"),
    [
        ("203.0.113.77", 24, 56, "203.0.113.0/24"),
        ("203.0.113.77", 32, 56, "203.0.113.77/32"),
        ("203.0.113.77", 8, 56, "203.0.0.0/8"),
        ("::ffff:203.0.113.77", 24, 56, "203.0.113.0/24"),  # a dual-stack socket's IPv4 peer
        ("2001:db8:1234:5678::1", 24, 56, "2001:db8:1234:5600::/56"),
        ("2001:db8:1234:5678::1", 24, 64, "2001:db8:1234:5678::/64"),
        ("fe80::1%eth0", 24, 16, "fe80::/16"),
        ("::1", 24, 128, "::1/128"),
    ],
)
def test_address_keys(address: str, v4: int, v6: int, key: str) -> None:
    parsed = parse_address(address)
    assert parsed is not None
    assert network_key(parsed, v4 if parsed[0] == 32 else v6) == key
    assert canonical_key(key) == key


@pytest.mark.parametrize("text", ["", "1.2.3", "1.2.3.4.5", "01.2.3.4", "::g", "1.2.3.4/24", "x"])
def test_not_an_address(text: str) -> None:
    assert parse_address(text) is None


@given(st.ip_addresses(), st.integers(min_value=0, max_value=128))
def test_network_keys_agree_with_ipaddress(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: int
) -> None:
    parsed = parse_address(str(address))
    assert parsed is not None
    key = network_key(parsed, prefix)
    network = ipaddress.ip_network(key)
    assert address in network or parsed[0] == 32  # mapped IPv6 reads as its IPv4 address
    assert canonical_key(key) == key


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("203.0.113.7/24", "203.0.113.0/24"),  # feeds write hosts inside networks
        ("203.0.113.7", "203.0.113.7/32"),
        ("2001:DB8::/32", "2001:db8::/32"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("id:spiffe://cluster.local/ns/a/sa/b", "id:spiffe://cluster.local/ns/a/sa/b"),
    ],
)
def test_list_keys_are_canonical(text: str, key: str) -> None:
    assert canonical_key(text) == key


@pytest.mark.parametrize("text", ["bad", "id:", "id:" + "x" * 257, "id:tab\there", "10.0.0.0/33"])
def test_bad_list_keys(text: str) -> None:
    with pytest.raises(ValueError, match=r"key|network"):
        canonical_key(text)


def test_identity_keys_are_bounded_and_printable() -> None:
    assert identity_key("tenant-a") == "id:tenant-a"
    assert identity_key("") is None
    assert identity_key("a\nb") is None
    assert identity_key("x" * 257) is None


# -- the list format -------------------------------------------------------------


def test_list_round_trips_and_ignores_fields_it_does_not_know() -> None:
    listed = ReputationList(source="c1/ns/p", generated=NOW, entries=(entry("1.2.3.0/24"),))
    assert ReputationList.from_json(listed.to_json()) == listed
    newer = json.loads(listed.to_json())
    newer["signedBy"] = "someone"
    newer["entries"][0]["reason"] = "flood"
    assert ReputationList.from_json(json.dumps(newer)).entries == listed.entries


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("not json", "Invalid JSON"),
        ('{"version": 2}', "version"),
        ('{"entries": [{"key": "bad", "factor": 2, "expires": 1}]}', "entries.0.key"),
        ('{"entries": [{"key": "1.2.3.4", "factor": 0.5, "expires": 1}]}', "factor"),
        ('{"entries": [{"key": "1.2.3.4", "factor": 2}]}', "expires"),
        (
            '{"entries": [{"key": "1.2.3.4", "factor": 2, "expires": 1},'
            ' {"key": "1.2.3.4/32", "factor": 3, "expires": 1}]}',
            "more than once",
        ),
    ],
)
def test_bad_lists_are_refused_with_a_reason(document: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReputationList.from_json(document)


def test_a_list_is_bounded_in_entries_and_bytes() -> None:
    entries = [
        {"key": f"10.{i // 256}.{i % 256}.0/24", "factor": 2, "expires": 1}
        for i in range(MAX_ENTRIES + 1)
    ]
    with pytest.raises(ValueError, match="at most"):
        ReputationList.from_json(json.dumps({"entries": entries}))
    with pytest.raises(ValueError, match="bytes"):
        ReputationList.from_json(" " * (MAX_DOCUMENT_BYTES + 1))


def test_merge_keeps_one_bounded_list_of_live_entries() -> None:
    mine = [entry("1.1.1.0/24", 4), entry("2.2.2.0/24", 2), entry("3.3.3.0/24", 9, NOW - 1)]
    theirs = [entry("1.1.1.0/24", 6, NOW + 60), entry("4.4.4.0/24", 5000)]
    merged = merge_entries([mine, theirs], now=NOW, max_entries=2, max_factor=64)
    # Expired entries go, a key keeps its highest factor, factors are capped, the cheapest go first.
    assert [(e.key, e.factor) for e in merged] == [("4.4.4.0/24", 64), ("1.1.1.0/24", 6)]


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=2**24 - 1),
            st.floats(min_value=1, max_value=1e6),
            st.integers(min_value=NOW - 100, max_value=NOW + 100),
        ),
        max_size=200,
    ),
    st.integers(min_value=1, max_value=50),
)
def test_merged_lists_never_outgrow_their_bound(
    raw: list[tuple[int, float, int]], bound: int
) -> None:
    entries = [entry(network_key((32, n << 8), 24), f, e) for n, f, e in raw]
    merged = merge_entries([entries, entries[::-1]], now=NOW, max_entries=bound, max_factor=64)
    assert len(merged) <= bound
    assert len({e.key for e in merged}) == len(merged)
    assert all(e.expires > NOW and 1 <= e.factor <= 64 for e in merged)


# -- the index on the request path -------------------------------------------------


def test_index_matches_every_prefix_length_and_keeps_the_highest_factor() -> None:
    index = ReputationIndex(
        [
            entry("203.0.113.0/24", 4),
            entry("203.0.0.0/16", 2),
            entry("203.0.113.9/32", 16, NOW - 1),  # expired
            entry("2001:db8::/32", 3),
            entry("id:tenant-a", 5),
        ]
    )
    assert len(index) == 5

    def factor(address: str | None, identity: str | None = None) -> float:
        parsed = parse_address(address) if address else None
        return index.factor(address=parsed, identity=identity, now=NOW)

    assert factor("203.0.113.9") == 4
    assert factor("203.0.200.1") == 2
    assert factor("203.1.0.1") == 1
    assert factor("::ffff:203.0.113.9") == 4
    assert factor("2001:db8:1::1") == 3
    assert factor("2001:db9::1") == 1
    assert factor(None, "id:tenant-a") == 5
    assert factor("203.0.113.9", "id:tenant-a") == 5
    assert factor(None, "id:tenant-b") == 1
    assert index.factor(address=parse_address("203.0.113.9"), identity=None, now=NOW + 601) == 1


# -- sealed labels ---------------------------------------------------------------


def test_labels_open_only_with_the_ring_that_sealed_them() -> None:
    ring = KeyRing.generate(kid="k.1")
    label = seal_label(ring, "203.0.113.0/24")
    assert "203" not in label
    assert label == seal_label(ring, "203.0.113.0/24")  # one client, one series
    assert open_label(ring, label, now=NOW) == "203.0.113.0/24"
    assert open_label(KeyRing.generate(kid="k.1"), label, now=NOW) is None
    assert open_label(ring, label[:-2] + ("AA" if label[-2:] != "AA" else "BB"), now=NOW) is None


@given(st.text(max_size=200))
def test_junk_labels_open_to_nothing(label: str) -> None:
    assert open_label(KeyRing.generate(), label, now=NOW) is None
