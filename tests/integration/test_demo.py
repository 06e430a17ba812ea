"""`make demo` at reduced scale: the real stack, the scripted flood, the verdict's direction.

Everything is real: the control plane (the session's cluster), Prometheus, the
operator, the stand-in and the sidecars as processes, the traffic generator
with real hashing. Only the direction of the verdict is checked (difficulty
rose during the flood, legitimate clients kept being served, difficulty came
back down afterwards, the baselines did worse); the issue's numeric targets
belong to the default scale, reported by `make demo` (docs/performance.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from powgate_testbed._demo_scenario import WHO_PAYS_RUNS
from powgate_testbed.cluster import ClusterAccess
from powgate_testbed.demo import (
    QUICK,
    Defence,
    DemoResult,
    LiveView,
    format_scheme_comparison,
    format_who_pays,
    run_demo,
)

# The whole quick demo runs in the first test's fixture: its runs take minutes, more
# than the suite's per-test limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def result(
    cluster: ClusterAccess, prometheus_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> DemoResult:
    output = tmp_path_factory.mktemp("demo")
    with (output / "view.txt").open("w") as stream:
        return run_demo(
            scenario=QUICK,
            output=output,
            kubeconfig=cluster.kubeconfig,
            view=LiveView(stream=stream),
            seed=7,
        )


def test_difficulty_rises_during_the_flood_and_the_backend_recovers(result: DemoResult) -> None:
    adaptive = result.verdicts["adaptive"]
    timeline = result.timelines["adaptive"]
    flood = timeline[adaptive.flood_start : adaptive.flood_end]
    assert max(row["service"]["difficulty"] or 0 for row in flood) > QUICK.min_difficulty * 4
    # Adapted within the flood: raised, and the backend under capacity afterwards.
    assert adaptive.time_to_adapt is not None
    assert adaptive.time_to_adapt < adaptive.flood_end - adaptive.flood_start
    # The sidecars enforced what the operator decided.
    assert any(
        row["service"]["policy_difficulty"] == row["service"]["difficulty"] > QUICK.min_difficulty
        for row in flood
    )


def test_legitimate_clients_stay_served_after_adaptation(result: DemoResult) -> None:
    adaptive = result.verdicts["adaptive"]
    assert adaptive.legit_success is not None
    assert adaptive.legit_success >= 0.9
    # Every admitted bot request cost real hashes, many times the minimum's worth.
    assert adaptive.attack_hashes_per_admitted is not None
    assert adaptive.attack_hashes_per_admitted > QUICK.min_difficulty


def test_difficulty_comes_back_down_after_the_flood(result: DemoResult) -> None:
    adaptive = result.verdicts["adaptive"]
    levels = [row["service"]["difficulty"] for row in result.timelines["adaptive"]]
    last = next(level for level in reversed(levels) if level is not None)
    assert adaptive.peak_difficulty is not None
    assert last <= adaptive.peak_difficulty / 2


def test_the_baselines_do_worse_than_the_adaptive_defence(result: DemoResult) -> None:
    adaptive, static, none = (result.verdicts[name] for name in ("adaptive", "static", "none"))
    # Without proof of work the bots go straight to the backend.
    assert none.over_capacity_seconds > adaptive.over_capacity_seconds
    assert none.attack_goodput is not None
    assert adaptive.attack_goodput is not None
    assert none.attack_goodput > adaptive.attack_goodput
    # A fixed toll below what the flood needs lets more bots through than the adaptive one.
    assert static.attack_goodput is not None
    assert static.attack_goodput > adaptive.attack_goodput


def test_the_scheme_runs_enforce_their_scheme_and_serve_browsers(result: DemoResult) -> None:
    """SHA-256 and Argon2id, priced alike for a browser, both under a flood of native bots."""
    schemes = QUICK.schemes
    for name in ("sha256", "argon2id"):
        price = schemes.price(Defence(name))
        assert price is not None
        fixed = price.difficulty(schemes.browser_seconds)
        verdict, timeline = result.verdicts[name], result.timelines[name]
        assert verdict.peak_difficulty == fixed
        # Browsers paid and got in. (How many depends on the machine's spare
        # CPU: every Argon2id solve and check is a real derivation.)
        assert sum(row["legit"]["admitted"] for row in timeline) > 0
        # Every bot request admitted was paid for, in the scheme's unit of work.
        assert verdict.attack_hashes_per_admitted is not None
        assert verdict.attack_hashes_per_admitted >= fixed / 20
        assert sum(row["attack"]["admitted"] for row in timeline) > 0
    comparison = format_scheme_comparison(QUICK, result.verdicts)
    assert "SHA-256" in comparison
    assert "ARGON2ID" in comparison


def test_per_client_prices_price_the_heavy_bots_and_only_with_pricing_on(
    result: DemoResult,
) -> None:
    """Who pays: 4 bot networks far above the fair rate are priced above the route's
    price by the per-client policy; the global policy alone prices no one apart."""
    heavy = result.verdicts["heavy-per-client"]
    assert heavy.priced_share is not None
    assert heavy.priced_share > 0.2
    for name in ("heavy-global", "light-global"):
        assert result.verdicts[name].priced_share == 0.0
    # Both shapes met the same global policy, and everyone was served.
    for name in ("heavy-global", "heavy-per-client", "light-global", "light-per-client"):
        verdict = result.verdicts[name]
        assert verdict.peak_difficulty is not None
        assert verdict.peak_difficulty > QUICK.min_difficulty
    assert "heavy-per-client" in format_who_pays(QUICK, result.verdicts)


def test_chart_and_summary_are_written(result: DemoResult) -> None:
    assert result.chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(result.summary.read_text())
    assert set(summary["verdicts"]) == {
        "none",
        "static",
        "adaptive",
        "sha256",
        "argon2id",
        *(str(run) for run in WHO_PAYS_RUNS),
    }
    assert (result.chart.parent / "who-pays.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        summary["verdicts"]["adaptive"]["time_to_adapt"]
        == result.verdicts["adaptive"].time_to_adapt
    )
    assert len(summary["timelines"]["adaptive"]) >= QUICK.adaptive.total
    view = (result.chart.parent / "view.txt").read_text()
    assert "\x1b" not in view  # no terminal: plain lines
    assert "adaptive" in view
    assert "static" in view
