"""The in-memory replay cache: single use, expiry, and its cap policy."""

from __future__ import annotations

import pytest

from powgate import Claim, MemoryReplayCache


def test_single_use_until_expiry() -> None:
    cache = MemoryReplayCache()
    assert cache.claim(b"a", expires_at=10, now=0) == Claim.NEW
    assert cache.claim(b"a", expires_at=10, now=5) == Claim.SEEN
    # Still held at its expiry second (the verifier accepts up to it), gone after.
    assert cache.claim(b"a", expires_at=10, now=10) == Claim.SEEN
    assert cache.claim(b"b", expires_at=20, now=10.5) == Claim.NEW
    assert len(cache) == 1
    assert cache.claim(b"a", expires_at=30, now=11) == Claim.NEW


def test_cap_refuses_new_keys_until_entries_expire() -> None:
    cache = MemoryReplayCache(max_entries=2)
    assert cache.claim(b"a", expires_at=10, now=0) == Claim.NEW
    assert cache.claim(b"b", expires_at=20, now=0) == Claim.NEW
    assert cache.claim(b"c", expires_at=20, now=1) == Claim.FULL
    # A full cache still recognises replays: it fails closed, never open.
    assert cache.claim(b"a", expires_at=10, now=1) == Claim.SEEN
    assert cache.claim(b"c", expires_at=30, now=10.5) == Claim.NEW
    assert len(cache) == 2


def test_memory_is_bounded_by_live_entries() -> None:
    cache = MemoryReplayCache()
    for second in range(1000):
        cache.claim(second.to_bytes(4, "big"), expires_at=second + 5, now=second)
    assert len(cache) <= 6


def test_rejects_a_useless_cap() -> None:
    with pytest.raises(ValueError, match="positive"):
        MemoryReplayCache(max_entries=0)


def test_a_released_claim_may_be_claimed_again_and_expires_as_before() -> None:
    """A claim the caller could not complete (a shared store down) spends nothing."""
    cache = MemoryReplayCache(max_entries=10)
    assert cache.claim(b"k", expires_at=100, now=0) == Claim.NEW
    cache.release(b"k")
    assert len(cache) == 0
    assert cache.claim(b"k", expires_at=100, now=1) == Claim.NEW
    assert cache.claim(b"k", expires_at=100, now=2) == Claim.SEEN
    cache.release(b"absent")  # nothing to forget: no error
    assert cache.claim(b"other", expires_at=200, now=101) == Claim.NEW
    assert len(cache) == 1  # b"k" expired and was purged
