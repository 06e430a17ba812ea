"""The live view: what is happening now, refreshed while a run goes on.

On a terminal the view is a small block redrawn in place every second; without
one (CI, a pipe, a log file) it is one plain line every few seconds, so the
output stays readable and bounded. Rates are averaged over the last few
complete seconds, which is what a person can read as it scrolls by.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TextIO

from ._demo_verdict import Verdict
from ._load_stats import ENDINGS

__all__ = ["LiveView", "Snapshot", "format_difficulty", "format_verdicts"]

#: Seconds averaged for the rates shown.
_SMOOTHING: Final = 5
_BAR_WIDTH: Final = 24
_PLAIN_PERIOD: Final = 5.0


def format_difficulty(value: int | None) -> str:
    if value is None:
        return "-"
    if value >= 1_000_000:
        return f"{value / 1e6:.2f}M"
    if value >= 1_000:
        return f"{value / 1e3:.0f}k"
    return str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the view shows at one moment of a run."""

    run: str
    run_index: int
    runs: int
    phase: str
    elapsed: float
    total: float
    #: The last complete seconds of the timeline (``timeline_row`` dicts), oldest first.
    rows: Sequence[Mapping[str, Any]]


def _rate(rows: Sequence[Mapping[str, Any]], pick: str, key: str) -> float:
    return sum(row[pick].get(key, 0) for row in rows) / len(rows) if rows else 0.0


def _outcome_rates(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for row in rows:
        for key, value in row["service"]["outcomes"].items():
            totals[key] = totals.get(key, 0.0) + value
    return {key: value / len(rows) for key, value in sorted(totals.items())} if rows else {}


def _summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    recent = list(rows[-_SMOOTHING:])
    last = recent[-1] if recent else None
    service = last["service"] if last else {}
    legit_ended = sum(row["legit"][name] for row in recent for name in ENDINGS)
    legit_admitted = sum(row["legit"]["admitted"] for row in recent)
    p95s = [
        row["legit"]["latency_p95"] for row in recent if row["legit"]["latency_p95"] is not None
    ]
    outcomes = _outcome_rates(recent)
    # Offered: bots that found their in-flight cap full arrived all the same.
    offered = _rate(recent, "attack", "sent") + _rate(recent, "attack", "dropped")
    refused = [k for k in outcomes if k.startswith(("rejected", "challenged"))]
    # Keys are `outcome/reason`: admitted ones carry the reason `ok`.
    forwarded = sum(
        value
        for key, value in outcomes.items()
        if key.split("/", 1)[0] in ("admitted", "unprotected")
    )
    return {
        "difficulty": format_difficulty(service.get("difficulty")),
        "policy": format_difficulty(service.get("policy_difficulty")),
        "legit_rate": f"{_rate(recent, 'legit', 'sent'):.1f}/s",
        "legit_success": _pct(legit_admitted / legit_ended if legit_ended else None),
        "legit_p95": _seconds(max(p95s) if p95s else None),
        "attack_sent": f"{offered:.1f}/s",
        "attack_admitted": f"{_rate(recent, 'attack', 'admitted'):.1f}/s",
        "attack_hashes": f"{_rate(recent, 'attack', 'hashes') / 1e6:.2f}M/s",
        "admitted": f"{forwarded:.1f}/s",
        "refused": ", ".join(f"{k} {outcomes[k]:.1f}/s" for k in refused) or "none",
        "utilisation": _pct(service.get("utilisation")),
        "demand": _pct(service.get("demand")),
        "queue": "-" if service.get("queued") is None else f"{service['queued']:.1f}",
        "backend_refused": f"{_rate(recent, 'service', 'refused'):.1f}/s",
    }


def _progress(snapshot: Snapshot) -> str:
    done = min(1.0, snapshot.elapsed / snapshot.total) if snapshot.total > 0 else 1.0
    filled = math.floor(done * _BAR_WIDTH)
    bar = "#" * filled + "." * (_BAR_WIDTH - filled)
    return (
        f"run {snapshot.run_index}/{snapshot.runs} {snapshot.run:<8} {snapshot.phase:<5} "
        f"[{bar}] {snapshot.elapsed:4.0f}/{snapshot.total:.0f}s"
    )


class LiveView:
    """Renders snapshots to ``stream``: redrawn in place on a terminal, plain lines otherwise."""

    def __init__(self, *, stream: TextIO | None = None, interactive: bool | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self.interactive = self._stream.isatty() if interactive is None else interactive
        self.period = 1.0 if self.interactive else _PLAIN_PERIOD
        self._drawn = 0

    def show(self, snapshot: Snapshot) -> None:
        s = _summary(snapshot.rows)
        if not self.interactive:
            print(
                f"{snapshot.run:<8} {snapshot.elapsed:4.0f}s {snapshot.phase:<5} "
                f"difficulty {s['difficulty']:>6} | legit {s['legit_rate']} "
                f"ok {s['legit_success']} p95 {s['legit_p95']} | attack {s['attack_sent']} "
                f"admitted {s['attack_admitted']} | backend {s['utilisation']} "
                f"demand {s['demand']} | refused {s['refused']}",
                file=self._stream,
                flush=True,
            )
            return
        lines = [
            _progress(snapshot),
            f"  difficulty  sidecars {s['difficulty']:>7}   policy {s['policy']:>7}",
            f"  legit       {s['legit_rate']:>7} sent   success {s['legit_success']:>5}   "
            f"p95 {s['legit_p95']}",
            f"  attackers   {s['attack_sent']:>7} offered   admitted {s['attack_admitted']:>7}   "
            f"hashing {s['attack_hashes']}",
            f"  sidecars    admitted {s['admitted']}   refused: {s['refused']}",
            f"  backend     busy {s['utilisation']:>5}   demand {s['demand']:>5}   "
            f"queue {s['queue']}   refused {s['backend_refused']}",
        ]
        # Up to the start of the previous block, then overwrite it line by line.
        prefix = f"\x1b[{self._drawn}F" if self._drawn else ""
        self._stream.write(prefix + "".join(f"\x1b[2K{line}\n" for line in lines))
        self._stream.flush()
        self._drawn = len(lines)

    def note(self, text: str) -> None:
        """A line that stays (setup steps, a run's end)."""
        self._drawn = 0
        print(text, file=self._stream, flush=True)


def format_verdicts(verdicts: Sequence[Verdict], targets: Mapping[str, bool]) -> str:
    """The verdict table: one column per run, then the targets of the adaptive run."""
    rows: list[tuple[str, list[str]]] = [
        (
            "time to adapt",
            [_seconds(v.time_to_adapt) if v.defence == "adaptive" else "n/a" for v in verdicts],
        ),
        ("legit success (judged stretch)", [_pct(v.legit_success) for v in verdicts]),
        ("legit p95 end-to-end", [_seconds(v.legit_p95) for v in verdicts]),
        ("backend busy", [_pct(v.backend_utilisation) for v in verdicts]),
        ("backend demand / capacity", [_pct(v.backend_demand) for v in verdicts]),
        ("seconds over capacity (flood)", [str(v.over_capacity_seconds) for v in verdicts]),
        (
            "attacker goodput",
            ["-" if v.attack_goodput is None else f"{v.attack_goodput:.2f}/s" for v in verdicts],
        ),
        (
            "attacker hashes / admitted",
            [
                "-"
                if v.attack_hashes_per_admitted is None
                else f"{v.attack_hashes_per_admitted:,.0f}"
                for v in verdicts
            ],
        ),
        (
            "peak difficulty",
            # Without proof of work there is no difficulty, whatever the gauge says.
            [
                "off" if v.defence == "none" else format_difficulty(v.peak_difficulty)
                for v in verdicts
            ],
        ),
        (
            "back to minimum after flood",
            [_seconds(v.back_to_min) if v.defence == "adaptive" else "n/a" for v in verdicts],
        ),
        ("direction changes", [str(v.direction_changes) for v in verdicts]),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"{'':{width}}  " + "".join(f"{v.defence:>12}" for v in verdicts)]
    lines += [
        f"{label:{width}}  " + "".join(f"{cell:>12}" for cell in cells) for label, cells in rows
    ]
    met = sum(targets.values())
    lines.append("")
    lines.append(f"targets met by the adaptive run: {met}/{len(targets)}")
    lines += [f"  {'met ' if ok else 'MISS'} {name}" for name, ok in targets.items()]
    return "\n".join(lines)
