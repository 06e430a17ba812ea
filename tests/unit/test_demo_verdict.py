"""The demo's verdict, live view, policies and command line, without a cluster."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from powgate.policy import PolicySpec
from powgate_testbed._demo_scenario import (
    DEFAULT,
    QUICK,
    WHO_PAYS_RUNS,
    Defence,
    Scenario,
    policy_manifest,
)
from powgate_testbed._demo_verdict import HOLD, check_targets, judge, merge_client_rows
from powgate_testbed._demo_view import LiveView, Snapshot, format_verdicts
from powgate_testbed._load_stats import COUNTERS
from powgate_testbed.demo import main

MIN = 20_000


def client(**counts: Any) -> dict[str, Any]:
    """One generator's second, as ``LoadGenerator.series`` reports it."""
    row: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
    row.update(latency_p50=None, latency_p95=None, solve_p50=None, solve_p95=None)
    row.update(counts)
    return row


def second(
    t: int,
    *,
    difficulty: int | None = MIN,
    over: bool = False,
    legit: dict[str, Any] | None = None,
    attack: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "t": t,
        "phase": "",
        "service": {
            "difficulty": difficulty,
            "policy_difficulty": difficulty,
            "outcomes": {"admitted/ok": 2.0, "challenged/missing": 30.0},
            "utilisation": 0.5,
            "queued": 0.0,
            "demand": 1.5 if over else 0.5,
            "refused": 0.0,
            "over_capacity": over,
        },
        "legit": merge_client_rows([legit or client()]),
        "attack": merge_client_rows([attack or client()]),
    }


def ok(latency: float) -> dict[str, Any]:
    return client(sent=1, admitted=1, latency_p50=latency, latency_p95=latency)


def test_merge_adds_counters_and_keeps_each_generators_percentiles() -> None:
    merged = merge_client_rows(
        [
            client(sent=3, admitted=2, hashes=10, latency_p50=0.1, latency_p95=0.4),
            client(sent=1, admitted=0, hashes=5),
            client(sent=2, admitted=1, latency_p50=0.9, latency_p95=0.9),
        ]
    )
    assert (merged["sent"], merged["admitted"], merged["hashes"]) == (6, 3, 15)
    assert merged["latency_parts"] == [[2, 0.1, 0.4], [1, 0.9, 0.9]]
    assert merged["latency_p95"] == 0.9


def flood_run(*, adapt_at: int, back_at: int | None) -> list[dict[str, Any]]:
    """Quiet 0-9, flood 10-39 (over capacity until ``adapt_at``), then quiet to 79."""
    rows = []
    for t in range(80):
        raised = 12 < t < 40 or (t >= 40 and (back_at is None or t < back_at))
        difficulty = 400_000 if raised else MIN
        if t in (11, 12):
            difficulty = 100_000  # a first step up, still over capacity
        rows.append(
            second(
                t,
                difficulty=difficulty,
                over=10 <= t < adapt_at,
                legit=ok(0.5 + (t % 3) * 0.1) if t % 2 else client(sent=1, overloaded=1),
                attack=client(sent=30, admitted=2, hashes=800_000),
            )
        )
    return rows


def test_adaptation_is_the_first_raised_second_that_holds_under_capacity() -> None:
    rows = flood_run(adapt_at=17, back_at=70)
    verdict = judge(rows, defence="adaptive", flood_start=10, flood_end=40, settle=15, minimum=MIN)
    assert verdict.time_to_adapt == 7.0
    assert verdict.judged_from == 17
    assert verdict.over_capacity_seconds == 7
    assert verdict.longest_over_capacity == 7
    assert verdict.back_to_min == 30.0
    assert verdict.peak_difficulty == 400_000
    # Up (11, 13), then down after the flood: one change of direction.
    assert verdict.direction_changes == 1
    # Seconds 17..39: odd seconds admitted, even ones overloaded.
    assert verdict.legit_success == pytest.approx(12 / 23)
    assert verdict.attack_goodput == pytest.approx(2.0)
    assert verdict.attack_hashes_per_admitted == pytest.approx(400_000)
    assert verdict.legit_p95 == pytest.approx(0.7)
    assert verdict.legit_p95_quality == "exact"


def test_a_defence_that_never_holds_has_no_adaptation_and_misses_targets() -> None:
    rows = flood_run(adapt_at=40, back_at=None)
    verdict = judge(rows, defence="adaptive", flood_start=10, flood_end=40, settle=15, minimum=MIN)
    assert verdict.time_to_adapt is None
    # Judged like a baseline: the flood after its settling time.
    assert verdict.judged_from == 25
    assert verdict.back_to_min is None
    met = check_targets(verdict)
    assert not met["time_to_adapt"]
    assert not met["backend_capacity"]
    assert not met["back_to_min"]
    assert not met["legit_success"]


def test_adaptation_needs_a_raised_difficulty_not_just_a_quiet_backend() -> None:
    rows = [second(t, difficulty=MIN) for t in range(30)]
    verdict = judge(rows, defence="adaptive", flood_start=5, flood_end=25, settle=15, minimum=MIN)
    assert verdict.time_to_adapt is None


def test_the_hold_window_is_cut_at_the_end_of_the_flood() -> None:
    rows = [second(t, difficulty=50_000, over=t < 27) for t in range(40)]
    verdict = judge(rows, defence="adaptive", flood_start=5, flood_end=30, settle=15, minimum=MIN)
    assert HOLD > 30 - 27  # the backend held for three seconds only
    assert verdict.time_to_adapt == 22.0


def test_flapping_counts_every_change_of_direction() -> None:
    levels = [MIN, 100_000, 100_000, 50_000, 200_000, 200_000, 100_000, MIN]
    rows = [second(t, difficulty=d) for t, d in enumerate(levels)]
    verdict = judge(rows, defence="adaptive", flood_start=1, flood_end=6, settle=1, minimum=MIN)
    assert verdict.direction_changes == 3
    assert not check_targets(verdict)["direction_changes"]


def test_the_share_of_challenges_priced_above_the_base_is_over_the_judged_stretch() -> None:
    rows = [second(t) for t in range(10)]
    for t, row in enumerate(rows):
        # Outside the judged stretch everything is priced; inside, 1 in 4.
        row["service"]["challenges"] = 8.0
        row["service"]["priced_above_base"] = 8.0 if t < 3 else 2.0
    verdict = judge(rows, defence="heavy", flood_start=1, flood_end=9, settle=2, minimum=None)
    assert verdict.judged_from == 3
    assert verdict.priced_share == 0.25
    # Rows from before the counters existed, or no challenge at all: nothing to say.
    assert (
        judge(
            [second(t) for t in range(10)],
            defence="x",
            flood_start=1,
            flood_end=9,
            settle=2,
            minimum=None,
        ).priced_share
        is None
    )


def test_baselines_are_judged_after_the_settling_time_and_have_no_adaptation() -> None:
    rows = flood_run(adapt_at=40, back_at=None)
    verdict = judge(rows, defence="static", flood_start=10, flood_end=40, settle=15, minimum=None)
    assert verdict.judged_from == 25
    assert verdict.time_to_adapt is None
    assert verdict.back_to_min is None


def test_p95_from_busy_seconds_is_an_upper_bound() -> None:
    # Three admitted in one second: p50 0.2 and p95 (the largest) 1.0; the
    # smallest is unknown, so it is counted at p50.
    busy = client(sent=3, admitted=3, latency_p50=0.2, latency_p95=1.0)
    rows = [second(t, legit=busy) for t in range(10)]
    verdict = judge(rows, defence="none", flood_start=0, flood_end=10, settle=0, minimum=None)
    assert verdict.legit_p95 == 1.0
    assert verdict.legit_p95_quality == "upper bound"


def test_targets_met_by_a_good_run() -> None:
    rows = flood_run(adapt_at=17, back_at=70)
    for row in rows:
        row["legit"] = merge_client_rows([ok(0.5)])
    verdict = judge(rows, defence="adaptive", flood_start=10, flood_end=40, settle=15, minimum=MIN)
    assert check_targets(verdict) == dict.fromkeys(check_targets(verdict), True)
    table = format_verdicts([verdict], check_targets(verdict))
    assert "targets met by the adaptive run: 6/6" in table
    assert "7.00s" in table


def test_the_plain_view_prints_one_line_per_snapshot() -> None:
    out = io.StringIO()
    view = LiveView(stream=out)
    assert not view.interactive
    rows = flood_run(adapt_at=17, back_at=70)[10:16]
    view.show(
        Snapshot(
            run="adaptive", run_index=1, runs=3, phase="flood", elapsed=15, total=80, rows=rows
        )
    )
    view.show(
        Snapshot(run="adaptive", run_index=1, runs=3, phase="flood", elapsed=20, total=80, rows=[])
    )
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "difficulty   400k" in lines[0]
    assert "attack 30.0/s admitted 2.0/s" in lines[0]
    assert "\x1b" not in out.getvalue()


def test_the_terminal_view_redraws_its_block_in_place() -> None:
    out = io.StringIO()
    view = LiveView(stream=out, interactive=True)
    rows = flood_run(adapt_at=17, back_at=70)[:5]
    snapshot = Snapshot(
        run="static", run_index=2, runs=3, phase="quiet", elapsed=5, total=80, rows=rows
    )
    view.show(snapshot)
    first = out.getvalue()
    assert "admitted 2.0/s   refused: challenged/missing 30.0/s" in first
    view.show(snapshot)
    block = first.count("\n")
    assert out.getvalue()[len(first) :].startswith(f"\x1b[{block}F")


@pytest.mark.parametrize("scenario", [DEFAULT, QUICK])
def test_policies_are_valid_powpolicies(scenario: Scenario) -> None:
    for defence in Defence:
        manifest = policy_manifest(
            scenario, defence=defence, namespace="demo", prometheus="http://127.0.0.1:9090"
        )
        spec = PolicySpec.model_validate(manifest["spec"])
        assert manifest["metadata"]["name"] == str(defence)
        if defence is Defence.STATIC:
            assert spec.difficulty.min == spec.difficulty.max == scenario.static_difficulty
        if defence is Defence.ADAPTIVE:
            assert [s.name for s in spec.signals] == ["admitted-rate", "backend-load"]
        price = scenario.schemes.price(defence)
        if price is not None:
            fixed = price.difficulty(scenario.schemes.browser_seconds)
            assert spec.challenge.algorithm == price.algorithm
            assert spec.difficulty.min == spec.difficulty.max == fixed
        # Who pays: every run of the comparison has the adaptive policy, half of them
        # with per-client prices on top; nothing else differs.
        if defence in WHO_PAYS_RUNS:
            adaptive = policy_manifest(
                scenario,
                defence=Defence.ADAPTIVE,
                namespace="demo",
                prometheus="http://127.0.0.1:9090",
            )["spec"]
            priced = scenario.who_pays.priced(defence)
            assert spec.pricing.enabled is priced
            # The generator plays the proxy that names each client: trusted as such.
            assert spec.trusted_proxies == ["127.0.0.1/32"]
            extra = {"trustedProxies", *(("pricing", "reputation") if priced else ())}
            assert set(manifest["spec"]) == set(adaptive) | extra
            assert {k: v for k, v in manifest["spec"].items() if k not in extra} == adaptive


def test_the_who_pays_shapes_differ_only_in_how_many_networks_the_bots_use() -> None:
    who = DEFAULT.who_pays
    heavy = who.sources(Defence.HEAVY_GLOBAL)
    assert heavy == who.sources(Defence.HEAVY_PER_CLIENT) == (who.legit_sources, who.heavy_sources)
    light = who.sources(Defence.LIGHT_GLOBAL)
    assert light == who.sources(Defence.LIGHT_PER_CLIENT) == (who.legit_sources, who.light_sources)
    assert who.sources(Defence.ADAPTIVE) == (0, 0)
    # A few bots each far above the fair rate; many, each below it.
    per_heavy = DEFAULT.flood_rate / who.heavy_sources
    per_light = DEFAULT.flood_rate / who.light_sources
    assert per_heavy > 10 * who.fair_rate
    assert 2 * per_light < who.fair_rate  # a request and its solution count twice


def test_the_scheme_runs_cost_a_browser_the_same_and_bots_their_native_speed() -> None:
    schemes = DEFAULT.schemes
    for price in (schemes.sha256, schemes.argon2id):
        # Mean work D / 2 at the browser's rate: the same seconds in either scheme.
        mean_seconds = price.difficulty(schemes.browser_seconds) / 2 / price.browser_rate
        assert mean_seconds == pytest.approx(schemes.browser_seconds, rel=0.01)
        assert price.attack_budget == price.browser_rate * price.attack_speedup
    assert schemes.sha256.attack_speedup == 10.0
    # The same machines gain less over a browser at Argon2id than at SHA-256.
    assert schemes.argon2id.attack_speedup < schemes.sha256.attack_speedup


def test_a_scenario_refuses_a_flood_below_twenty_times_the_legitimate_rate() -> None:
    with pytest.raises(ValueError, match="20 times"):
        Scenario(name="weak", legit_rate=2.0, flood_rate=30.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sidecars", "0"], "must be at least 1"),
        (["--kubeconfig", "/nonexistent/kubeconfig"], "no kubeconfig at /nonexistent/kubeconfig"),
        (["--pods", "--processes"], "not allowed with argument"),
    ],
)
def test_bad_arguments_are_refused_before_anything_starts(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_without_the_real_nodes_parts_the_demo_says_it_runs_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWGATE_CACHE", str(tmp_path / "cache"))
    assert main(["--quick", "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "demo: local processes, not real pods" in err
    assert "make images" in err or "root" in err


def test_real_pods_on_a_given_cluster_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    argv = ["--quick", "--pods", "--kubeconfig", str(kubeconfig), "--output", str(tmp_path)]
    assert main(argv) == 1
    assert "real pods run on the local cluster's own node" in capsys.readouterr().err


def test_missing_tools_are_an_error_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWGATE_CACHE", str(tmp_path / "cache"))
    assert main(["--quick", "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "demo failed: control-plane tools not built" in err
    assert "make tools" in err
