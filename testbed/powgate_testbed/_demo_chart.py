"""The demo's chart: the adaptive run over time, and the three defences side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

# No display: the chart is a file (CI and servers have no screen).
matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from ._demo_verdict import Verdict
from ._load_stats import ENDINGS

__all__ = ["draw_chart", "draw_who_pays"]

_SMOOTH = 3


def _smooth(values: Sequence[float]) -> list[float]:
    """A trailing mean over a few seconds: per-second counts of Poisson arrivals jump."""
    out = []
    for index in range(len(values)):
        window = values[max(0, index - _SMOOTH + 1) : index + 1]
        out.append(sum(window) / len(window))
    return out


def _shade(ax: Axes, verdict: Verdict) -> None:
    ax.axvspan(verdict.flood_start, verdict.flood_end, color="tab:red", alpha=0.08, lw=0)
    if verdict.time_to_adapt is not None:
        ax.axvline(verdict.judged_from, color="tab:green", lw=0.8, ls="--")
    ax.grid(True, alpha=0.3)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _series(rows: Sequence[Mapping[str, Any]], pick: str, key: str) -> list[float]:
    return [float(row[pick].get(key) or 0) for row in rows]


def draw_chart(
    path: Path,
    *,
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    verdicts: Mapping[str, Verdict],
    capacity: float,
    title: str,
) -> None:
    """Write the PNG: five panels for the adaptive run, one comparing every run."""
    rows = runs["adaptive"]
    verdict = verdicts["adaptive"]
    t = [row["t"] for row in rows]
    fig, axes = plt.subplots(
        6, 1, figsize=(11, 17), gridspec_kw={"height_ratios": [1.2, 1, 1, 1, 1, 1.1]}
    )
    fig.suptitle(title, fontsize=12)

    ax = axes[0]
    enforced = [row["service"]["difficulty"] for row in rows]
    decided = [row["service"]["policy_difficulty"] for row in rows]
    ax.step(
        t,
        [_nan(v) for v in enforced],
        where="post",
        label="enforced by sidecars",
    )
    ax.step(
        t,
        [_nan(v) for v in decided],
        where="post",
        ls=":",
        label="decided by the operator",
    )
    ax.set_yscale("log")
    ax.set_ylabel("difficulty (maxnumber)")
    ax.set_title("adaptive run: flood shaded, adapted from the dashed line")
    ax.legend(loc="upper right", fontsize=8)
    _shade(ax, verdict)

    ax = axes[1]
    keys = sorted({key for row in rows for key in row["service"]["outcomes"]})
    for key in keys:
        ax.plot(t, _smooth([row["service"]["outcomes"].get(key, 0.0) for row in rows]), label=key)
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylabel("sidecar outcomes / s")
    ax.legend(loc="upper right", fontsize=7, ncol=2)
    _shade(ax, verdict)

    ax = axes[2]
    ax.plot(t, [_nan(row["service"]["demand"]) for row in rows], label="demand / capacity")
    ax.plot(t, [_nan(row["service"]["utilisation"]) for row in rows], label="slots busy")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_ylabel("backend (1 = capacity)")
    twin = ax.twinx()
    refused = _smooth([row["service"]["refused"] for row in rows])
    twin.plot(t, refused, color="tab:red", lw=0.8, label="refused by the backend / s")
    twin.set_ylabel("refused / s")
    ax.legend(loc="upper left", fontsize=8)
    twin.legend(loc="upper right", fontsize=8)
    _shade(ax, verdict)

    ax = axes[3]
    ended = [sum(row["legit"][k] for k in ENDINGS) for row in rows]
    admitted = _smooth(_series(rows, "legit", "admitted"))
    ok = [a / e if e else float("nan") for a, e in zip(admitted, _smooth(ended), strict=True)]
    ax.plot(t, [100 * v for v in ok], label="legit success % (3 s)")
    ax.set_ylim(-5, 105)
    ax.set_ylabel("legit success %")
    twin = ax.twinx()
    twin.plot(
        t,
        [
            row["legit"]["latency_p95"] if row["legit"]["latency_p95"] is not None else float("nan")
            for row in rows
        ],
        color="tab:orange",
        lw=0.8,
        label="legit p95 latency (s)",
    )
    twin.set_ylabel("legit p95 latency (s)")
    ax.legend(loc="lower left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)
    _shade(ax, verdict)

    ax = axes[4]
    offered = [
        a + b
        for a, b in zip(
            _series(rows, "attack", "sent"), _series(rows, "attack", "dropped"), strict=True
        )
    ]
    ax.plot(t, _smooth(offered), label="attack offered / s (sent + dropped)")
    ax.plot(t, _smooth(_series(rows, "attack", "admitted")), label="attack admitted / s (goodput)")
    ax.plot(t, _smooth(_series(rows, "legit", "admitted")), label="legit admitted / s")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylabel("requests / s")
    ax.set_xlabel("seconds")
    ax.legend(loc="upper right", fontsize=8)
    _shade(ax, verdict)

    ax = axes[5]
    names = list(verdicts)
    metrics = {
        "legit success %": [100 * (verdicts[n].legit_success or 0) for n in names],
        "backend demand %": [100 * (verdicts[n].backend_demand or 0) for n in names],
        "attacker goodput, % of capacity": [
            100 * (verdicts[n].attack_goodput or 0) / capacity for n in names
        ],
    }
    width = 0.8 / len(metrics)
    for offset, (label, values) in enumerate(metrics.items()):
        xs = [i + offset * width for i in range(len(names))]
        bars = ax.bar(xs, values, width=width, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks([i + width for i in range(len(names))], names)
    ax.set_title("during the flood (judged stretch): every defence in the same run", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def draw_who_pays(
    path: Path,
    *,
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    verdicts: Mapping[str, Verdict],
    capacity: float,
    title: str,
) -> None:
    """Write the who-pays PNG: what each side paid and got, global policy against per client.

    ``runs`` and ``verdicts`` hold the comparison's runs in order (a shape's
    global run, then its per-client run).
    """
    names = list(verdicts)
    fig, axes = plt.subplots(4, 1, figsize=(11, 15))
    fig.suptitle(title, fontsize=12)
    xs = list(range(len(names)))

    ax = axes[0]
    width = 0.4
    for offset, (label, key) in enumerate(
        (("legit hashes / admitted", "legit"), ("bot hashes / admitted", "attack"))
    ):
        values = [
            _nan(
                verdicts[n].legit_hashes_per_admitted
                if key == "legit"
                else verdicts[n].attack_hashes_per_admitted
            )
            for n in names
        ]
        bars = ax.bar([x + offset * width for x in xs], values, width=width, label=label)
        ax.bar_label(bars, fmt="%.2g", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks([x + width / 2 for x in xs], names)
    ax.set_ylabel("hashes per admitted request")
    ax.set_title(
        "what a legitimate client and a bot paid (judged stretch of the flood)", fontsize=10
    )
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)

    ax = axes[1]
    metrics = {
        "legit success %": [100 * (verdicts[n].legit_success or 0) for n in names],
        "backend busy %": [100 * (verdicts[n].backend_utilisation or 0) for n in names],
        "attacker goodput, % of capacity": [
            100 * (verdicts[n].attack_goodput or 0) / capacity for n in names
        ],
    }
    width = 0.8 / len(metrics)
    for offset, (label, values) in enumerate(metrics.items()):
        bars = ax.bar([x + offset * width for x in xs], values, width=width, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks([x + width for x in xs], names)
    ax.set_title("what each side got", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    twin = ax.twinx()
    twin.plot(
        [x + width for x in xs],
        [_nan(verdicts[n].legit_p95) for n in names],
        "kD",
        label="legit p95 (s)",
    )
    twin.set_ylabel("legit p95 latency (s)")
    twin.legend(loc="upper left", fontsize=8)

    ax = axes[2]
    for name in names:
        rows = runs[name]
        ax.plot(
            [row["t"] for row in rows],
            _smooth(_series(rows, "attack", "admitted")),
            label=f"{name}: bots admitted / s",
        )
    verdict = verdicts[names[0]]
    ax.axvspan(verdict.flood_start, verdict.flood_end, color="tab:red", alpha=0.08, lw=0)
    ax.axvline(verdict.judged_from, color="tab:green", lw=0.8, ls="--")
    ax.axhline(capacity, color="black", lw=0.8)
    ax.set_ylabel("requests / s (line: capacity)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(True, alpha=0.3)

    ax = axes[3]
    for name in names:
        rows = runs[name]
        ax.step(
            [row["t"] for row in rows],
            [_nan(row["service"]["difficulty"]) for row in rows],
            where="post",
            label=f"{name}: route difficulty (before per-client factors)",
        )
    ax.axvspan(verdict.flood_start, verdict.flood_end, color="tab:red", alpha=0.08, lw=0)
    ax.set_yscale("log")
    ax.set_ylabel("difficulty the global policy set")
    ax.set_xlabel("seconds")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, alpha=0.3)

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
