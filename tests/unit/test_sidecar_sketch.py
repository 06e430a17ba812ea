"""The heavy-hitters sketch: fixed memory, decaying rates, lower bounds that hold under attack."""

from __future__ import annotations

import math
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powgate_sidecar._sketch import RateSketch

HALF_LIFE = 10.0


def steady(sketch: RateSketch, key: str, *, rate: float, start: float, seconds: float) -> float:
    """Feed ``key`` at ``rate`` requests per second; returns the end time."""
    step = 1 / rate
    now = start
    for _ in range(int(seconds * rate)):
        now += step
        sketch.add(key, now=now)
    return now


# -- abuse first ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "heavy_rate", "flood_rate", "keeps_price"),
    [
        # The guarantee: a client keeps its place while it sends more than the
        # decayed total divided by the capacity.
        (1024, 50.0, 10_000.0, True),
        (256, 50.0, 10_000.0, True),
        (64, 50.0, 10_000.0, False),  # 10k/64 = 156/s of churn per slot: the heavy hitter drowns
    ],
)
def test_a_flood_of_new_keys_cannot_wash_out_a_heavy_hitter(
    capacity: int, heavy_rate: float, flood_rate: float, keeps_price: bool
) -> None:
    """Key-space exhaustion: every request of the flood comes from a key never seen before."""
    sketch = RateSketch(capacity=capacity, half_life=HALF_LIFE, now=0.0)
    now = steady(sketch, "heavy", rate=heavy_rate, start=0.0, seconds=30)
    # Interleave: the heavy hitter keeps sending while the flood churns through keys.
    flood_per_heavy = int(flood_rate / heavy_rate)
    fresh = 0
    for _ in range(int(heavy_rate * 30)):
        now += 1 / heavy_rate
        for _ in range(flood_per_heavy):
            sketch.add(f"flood-{fresh}", now=now)
            fresh += 1
        sketch.add("heavy", now=now)
    assert len(sketch) <= capacity
    assert sketch.evictions >= fresh - capacity
    rate = sketch.rate("heavy", now=now)
    if keeps_price:
        assert rate == pytest.approx(heavy_rate * (1 - 2 ** (-60 / HALF_LIFE)), rel=0.05)
    else:
        assert rate < heavy_rate / 2
    # A flood key is never priced for more than it sent: one request, so at most its weight.
    assert max(r for key, r in sketch.top(capacity, now=now) if key != "heavy") < 1.0


def test_memory_is_fixed_whatever_the_number_of_clients() -> None:
    sketch = RateSketch(capacity=512, half_life=HALF_LIFE, now=0.0)
    for i in range(200_000):
        sketch.add(f"client-{i}", now=i / 1000)
    assert len(sketch) == 512
    assert len(sketch._heap) == 512
    # The structure holds 512 keys: its size does not depend on the 200,000 seen.
    size = sys.getsizeof(sketch._counts) + sys.getsizeof(sketch._heap)
    fresh = RateSketch(capacity=512, half_life=HALF_LIFE, now=0.0)
    for i in range(512):
        fresh.add(f"client-{i}", now=0.0)
    assert size <= 2 * (sys.getsizeof(fresh._counts) + sys.getsizeof(fresh._heap))


# -- rates ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "seconds", "expected"),
    [
        # After many half-lives a steady client reads as its rate.
        (50.0, 200, 50.0),
        (1.0, 200, 1.0),
        # A client far rarer than the half-life reads as one request's worth: ln 2 / half-life.
        (1 / 60, 1200, math.log(2) / HALF_LIFE),
        # After one half-life, half of it: the price takes a half-life to follow a new flood.
        (50.0, HALF_LIFE, 25.0),
    ],
)
def test_steady_clients_read_as_their_rate(rate: float, seconds: float, expected: float) -> None:
    sketch = RateSketch(capacity=16, half_life=HALF_LIFE, now=0.0)
    now = steady(sketch, "c", rate=rate, start=0.0, seconds=seconds)
    assert sketch.rate("c", now=now) == pytest.approx(expected, rel=0.08)


def test_a_client_that_stops_is_forgotten_by_half_lives() -> None:
    sketch = RateSketch(capacity=16, half_life=HALF_LIFE, now=0.0)
    now = steady(sketch, "c", rate=20, start=0.0, seconds=200)
    at_stop = sketch.rate("c", now=now)
    assert sketch.rate("c", now=now + HALF_LIFE) == pytest.approx(at_stop / 2)
    assert sketch.rate("c", now=now + 10 * HALF_LIFE) == pytest.approx(at_stop / 1024)
    assert sketch.rate("unknown", now=now) == 0.0


def test_days_of_traffic_neither_overflow_nor_lose_precision() -> None:
    sketch = RateSketch(capacity=16, half_life=1.0, now=0.0)
    now = 0.0
    for _ in range(5):
        now = steady(sketch, "c", rate=10, start=now + 86_400, seconds=30)
    assert math.isfinite(sketch.total_rate(now=now))
    assert sketch.rate("c", now=now) == pytest.approx(10.0, rel=0.05)


def test_top_lists_the_heaviest_first_and_the_total_counts_everyone() -> None:
    sketch = RateSketch(capacity=4, half_life=HALF_LIFE, now=0.0)
    now = 0.0
    for second in range(100):
        now = float(second)
        for key, per_second in (("a", 30), ("b", 10), ("c", 1)):
            for _ in range(per_second):
                sketch.add(key, now=now)
        sketch.add(f"once-{second}", now=now)
    top = sketch.top(2, now=now)
    assert [key for key, _ in top] == ["a", "b"]
    assert top[0][1] == pytest.approx(30, rel=0.1)
    assert sketch.total_rate(now=now) == pytest.approx(42, rel=0.1)


def test_a_clock_that_steps_back_does_no_harm() -> None:
    sketch = RateSketch(capacity=4, half_life=HALF_LIFE, now=1000.0)
    sketch.add("c", now=1000.0)
    assert sketch.add("c", now=0.0) > 0
    assert math.isfinite(sketch.rate("c", now=1000.0))


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RateSketch(capacity=0, half_life=1, now=0)
    with pytest.raises(ValueError, match="half_life"):
        RateSketch(capacity=1, half_life=0, now=0)


# -- the guarantees, on random streams --------------------------------------------


def exact_rates(stream: list[tuple[str, float]], now: float) -> dict[str, float]:
    decay = math.log(2) / HALF_LIFE
    rates: dict[str, float] = {}
    for key, at in stream:
        rates[key] = rates.get(key, 0.0) + decay * 2 ** (-(now - at) / HALF_LIFE)
    return rates


@settings(max_examples=100, deadline=None)
@given(
    keys=st.lists(st.sampled_from([f"k{i}" for i in range(40)]), min_size=1, max_size=400),
    gaps=st.lists(st.floats(min_value=0, max_value=5), min_size=400, max_size=400),
    capacity=st.integers(min_value=1, max_value=30),
)
def test_rates_are_lower_bounds_and_heavy_hitters_are_always_kept(
    keys: list[str], gaps: list[float], capacity: int
) -> None:
    sketch = RateSketch(capacity=capacity, half_life=HALF_LIFE, now=0.0)
    stream = []
    now = 0.0
    for key, gap in zip(keys, gaps, strict=False):
        now += gap
        stream.append((key, now))
        sketch.add(key, now=now)
    exact = exact_rates(stream, now)
    total = sum(exact.values())
    assert sketch.total_rate(now=now) == pytest.approx(total, rel=1e-9)
    assert len(sketch) <= capacity
    for key, true_rate in exact.items():
        estimate = sketch.rate(key, now=now)
        # Never priced for traffic it did not send ...
        assert estimate <= true_rate * (1 + 1e-9) + 1e-12
        # ... and any client above the total / capacity is monitored, within that of its rate.
        if true_rate > total / capacity * (1 + 1e-9):
            assert key in sketch
            assert estimate >= true_rate - total / capacity - 1e-9
