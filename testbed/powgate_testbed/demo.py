"""``make demo``: adaptive proof of work defending an AI service from a flood, end to end.

On one machine: a local Kubernetes control plane (or the current cluster with
``--kubeconfig``), Prometheus, the PowPolicy CRD and the operator; the
stand-in AI service with sidecars in front of it; an example PowPolicy whose
signals are the service's load and the sidecars' request metrics. Then the
scripted scenario, quiet → flood (honest bots with a fixed hash budget, at
least 20 times the legitimate rate) → quiet, once with the adaptive policy
and once with each baseline (no proof of work; DeepSeek's fixed difficulty),
with a live view. At the end: ``demo.png`` and ``summary.json`` in the output
folder, and the verdict. Everything started is stopped, on errors and Ctrl-C too.

    python -m powgate_testbed.demo [--quick] [--kubeconfig [PATH]] [--output DIR]
                                   [--pods | --processes]

Where this machine can run containers (root, `make tools`, `make images`),
the operator and the service with its sidecars run as pods on the local
cluster's real node (the chart installs the operator image; the webhook
injects the sidecars); elsewhere, and with ``--processes``, as local
processes on the code paths a pod uses. The demo says which it used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any, Final

import uvloop
from kubernetes import client as k8s

from ._demo_chart import draw_chart, draw_who_pays
from ._demo_monitor import Monitor
from ._demo_scenario import (
    DEFAULT,
    QUICK,
    SCHEME_RUNS,
    WHO_PAYS_RUNS,
    Defence,
    Phases,
    Scenario,
)
from ._demo_stack import DemoStack, Deployment
from ._demo_verdict import TARGETS, Verdict, check_targets, judge, merge_client_rows
from ._demo_view import LiveView, Snapshot, format_verdicts
from ._load_traffic import (
    AttackMode,
    AttackTraffic,
    LegitTraffic,
    LoadGenerator,
    LoadReport,
    RequestShape,
)
from ._netns import node_network_possible
from .cluster import StartupError, ToolsMissingError, cache_dir
from .node import NodeTools, NodeToolsMissingError
from .prometheus import PrometheusError, PrometheusNotFoundError

__all__ = [
    "DEFAULT",
    "QUICK",
    "TARGETS",
    "Defence",
    "DemoResult",
    "LiveView",
    "Scenario",
    "Verdict",
    "format_scheme_comparison",
    "format_who_pays",
    "main",
    "run_demo",
]

#: The adaptive run first (the point of the demo), then the baselines.
RUN_ORDER: Final = (Defence.ADAPTIVE, Defence.STATIC, Defence.NONE)
#: ``make demo``: the runs above, then the scheme and the who-pays comparisons.
ALL_RUNS: Final = (*RUN_ORDER, *SCHEME_RUNS, *WHO_PAYS_RUNS)
#: Bot requests per second before the flood: effectively none (see `_Run`).
_DORMANT: Final = 1e-9
#: Rows shown by the live view (the view averages the last few seconds).
_VIEW_ROWS: Final = 6


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What a demo produced: per run its timeline and verdict, and the adaptive run's targets."""

    scenario: Scenario
    timelines: dict[str, list[dict[str, Any]]]
    verdicts: dict[str, Verdict]
    targets: dict[str, bool]
    chart: Path
    summary: Path
    #: The machine's load averages (1, 5, 15 minutes) at the end: the context of the numbers.
    load_average: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": asdict(self.scenario),
            "machine": {"cores": os.cpu_count(), "load_average": self.load_average},
            "targets": {"goals": TARGETS, "met": self.targets},
            "verdicts": {name: verdict.to_dict() for name, verdict in self.verdicts.items()},
            "timelines": self.timelines,
        }


def _phase(t: int, phases: Phases) -> str:
    if t < phases.quiet:
        return "quiet"
    return "flood" if t < phases.quiet + phases.flood else "after"


def _rows(
    *,
    monitor: Monitor,
    series: Sequence[Sequence[Mapping[str, Any]]],
    phases: Phases,
    start: int,
    stop: int,
) -> list[dict[str, Any]]:
    """Timeline rows: the service side and both client classes, per second."""
    service = monitor.seconds(start, stop)
    return [
        {
            "t": second.t,
            "phase": _phase(second.t, phases),
            "service": second.to_dict(),
            **{
                name: merge_client_rows([rows[second.t][name] for rows in series])
                for name in ("legit", "attack")
            },
        }
        for second in service
    ]


class _Run:
    """One run of the scenario against one deployment: the script, the view, the timeline."""

    def __init__(
        self,
        *,
        stack: DemoStack,
        deployment: Deployment,
        view: LiveView,
        index: int,
        runs: int,
        seed: int | None,
    ) -> None:
        scenario = stack.scenario
        self.phases = scenario.phases(deployment.defence)
        self._scenario = scenario
        self._deployment = deployment
        self._view = view
        self._index, self._runs = index, runs
        share = len(deployment.sidecar_urls)
        # A scheme run prices a browser and the bots in that scheme's unit of work.
        price = scenario.schemes.price(deployment.defence)
        # The who-pays runs name each client's network; every generator uses them
        # all, as a Service spreads each client over the sidecars.
        legit_sources, bot_sources = scenario.who_pays.sources(deployment.defence)
        legit = LegitTraffic(rate=scenario.legit_rate / share, sources=legit_sources)
        budget = scenario.attack_budget
        if price is not None:
            legit = replace(legit, hash_rate=price.browser_rate)
            budget = price.attack_budget
        # One generator per sidecar, each with its share of the traffic and of
        # the bots' budget: clients spread evenly, as a Service would spread them.
        self._generators = [
            LoadGenerator(
                target=url,
                legit=legit,
                # The bots' solver starts with the run only for a rate above zero;
                # this one sends nothing before the flood (one arrival per ~30
                # years), but the bots are ready when it starts, as a botnet is.
                attack=AttackTraffic(
                    rate=_DORMANT,
                    mode=AttackMode.HONEST,
                    budget=budget / share,
                    sources=bot_sources,
                ),
                request=RequestShape(max_tokens=scenario.backend.max_tokens),
                max_in_flight=(
                    scenario.who_pays.bot_in_flight
                    if deployment.defence in WHO_PAYS_RUNS
                    else scenario.max_in_flight
                ),
                # Real pods: the sidecars' pod addresses, inside the network
                # namespace this run made for its node, asked for explicitly.
                allow_remote=stack.node is not None,
                seed=None if seed is None else seed + number,
            )
            for number, url in enumerate(deployment.sidecar_urls)
        ]
        defence = deployment.defence
        self._monitor = Monitor(
            standin_urls=deployment.standin_urls,
            sidecar_metrics=deployment.sidecar_metrics,
            backend=scenario.backend,
            policy_status=lambda: stack.policy_status(defence),
            policy_period=float(scenario.interval),
        )

    async def run(self) -> list[dict[str, Any]]:
        monitor = asyncio.create_task(self._monitor.run())
        self._monitor.start_clock()
        loads = [
            asyncio.create_task(generator.run(duration=self.phases.total))
            for generator in self._generators
        ]
        try:
            await self._script(loads)
            reports: list[LoadReport] = await asyncio.gather(*loads)
        finally:
            for task in (*loads, monitor):
                task.cancel()
            await asyncio.gather(*loads, monitor, return_exceptions=True)
        length = min(len(report.series) for report in reports)
        return _rows(
            monitor=self._monitor,
            series=[report.series for report in reports],
            phases=self.phases,
            start=0,
            stop=length,
        )

    async def _script(self, loads: Sequence[asyncio.Task[LoadReport]]) -> None:
        """quiet → flood → quiet, showing the view until the load ends."""
        flood_rate = self._scenario.flood_rate / len(self._generators)
        changes = [
            (self.phases.quiet, flood_rate),
            (self.phases.quiet + self.phases.flood, 0.0),
        ]
        while not all(task.done() for task in loads):
            elapsed = self._monitor.elapsed
            while changes and elapsed >= changes[0][0]:
                _, rate = changes.pop(0)
                for generator in self._generators:
                    generator.set_attack_rate(rate)
            self._show(elapsed)
            wake = min([self._view.period, *(at - elapsed for at, _ in changes[:1])])
            await asyncio.wait(loads, timeout=max(0.05, wake))

    def _show(self, elapsed: float) -> None:
        series = [generator.series() for generator in self._generators]
        complete = min(len(rows) for rows in series)
        rows = (
            _rows(
                monitor=self._monitor,
                series=series,
                phases=self.phases,
                start=max(0, complete - _VIEW_ROWS),
                stop=complete,
            )
            if complete
            else []
        )
        self._view.show(
            Snapshot(
                run=str(self._deployment.defence),
                run_index=self._index,
                runs=self._runs,
                phase=_phase(int(elapsed), self.phases),
                elapsed=elapsed,
                total=self.phases.total,
                rows=rows,
            )
        )


def run_demo(
    *,
    scenario: Scenario,
    output: Path,
    kubeconfig: Path | None = None,
    defences: Sequence[Defence] = ALL_RUNS,
    view: LiveView | None = None,
    seed: int | None = None,
    real_pods: bool = False,
) -> DemoResult:
    """Bring the stack up, run the scenario once per defence, judge, draw, tear down."""
    if Defence.ADAPTIVE not in defences:
        raise ValueError("the adaptive run is the demo: it cannot be left out")
    view = view or LiveView()
    output.mkdir(parents=True, exist_ok=True)
    timelines: dict[str, list[dict[str, Any]]] = {}
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="powgate-demo-") as scratch,
        DemoStack(
            scenario=scenario,
            workdir=Path(scratch),
            logs=output / "logs",
            kubeconfig=kubeconfig,
            real_pods=real_pods,
        ) as stack,
    ):
        view.note(
            "running on real pods: the operator image and injected sidecars on the local "
            "cluster's real node"
            if real_pods
            else "running as local processes (what pods would run, on the code paths pods use)"
        )
        view.note(
            f"stack up in {time.monotonic() - started:.0f} s: namespace {stack.namespace}, "
            f"Prometheus {stack.prometheus.url}, logs in {output / 'logs'}"
        )
        for index, defence in enumerate(defences, start=1):
            if index > 1 and defence in WHO_PAYS_RUNS:
                # These runs are steered by signals too: the previous run's series
                # must first leave the signals' windows.
                pause = scenario.rate_window + scenario.interval
                view.note(f"{pause} s for the signals to forget the previous run")
                time.sleep(pause)
            with stack.deploy(defence) as deployment:
                view.note(
                    f"run {index}/{len(defences)}: {defence} — {scenario.sidecars} sidecars "
                    f"in front of the stand-in ({scenario.backend.capacity:g} requests/s)"
                )
                run = _Run(
                    stack=stack,
                    deployment=deployment,
                    view=view,
                    index=index,
                    runs=len(defences),
                    seed=seed,
                )
                timelines[str(defence)] = uvloop.run(run.run())
    return _conclude(scenario=scenario, output=output, timelines=timelines)


def format_scheme_comparison(scenario: Scenario, verdicts: Mapping[str, Verdict]) -> str:
    """What each scheme let through at the same browser price (empty without those runs)."""
    schemes = scenario.schemes
    lines = []
    for defence in SCHEME_RUNS:
        verdict, price = verdicts.get(str(defence)), schemes.price(defence)
        if verdict is None or price is None:
            continue
        goodput = "-" if verdict.attack_goodput is None else f"{verdict.attack_goodput:.2f}/s"
        # What the bots really computed: a machine too busy to reach the
        # budget shows here, and the goodput is then not the scheme's doing.
        seconds = max(1, verdict.flood_end - verdict.judged_from)
        achieved = verdict.attack_hashes / seconds / price.browser_rate
        lines.append(
            f"  {price.algorithm:<9} difficulty {price.difficulty(schemes.browser_seconds):>9,}: "
            f"bots at {price.attack_speedup:g}x a browser (reached {achieved:.1f}x) "
            f"got {goodput} through"
        )
    if not lines:
        return ""
    head = f"the same toll for a browser (~{schemes.browser_seconds:g} s), bots solving natively:"
    return "\n".join([head, *lines])


def _shown(value: float | None, fmt: str, *, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, fmt)


def format_who_pays(scenario: Scenario, verdicts: Mapping[str, Verdict]) -> str:
    """The who-pays comparison as a table (empty without those runs)."""
    who = scenario.who_pays
    rows = []
    for defence in WHO_PAYS_RUNS:
        verdict = verdicts.get(str(defence))
        if verdict is None:
            continue
        _, bots = who.sources(defence)
        rows.append(
            f"  {defence!s:<17} {bots:>4} nets  "
            f"legit {_shown(verdict.legit_success, '.0f', scale=100):>3} % "
            f"p95 {_shown(verdict.legit_p95, '.2f'):>5} s  "
            f"paid {_shown(verdict.legit_hashes_per_admitted, '.3g'):>7} h/req  "
            f"bots paid {_shown(verdict.attack_hashes_per_admitted, '.3g'):>7} h/req, "
            f"got {_shown(verdict.attack_goodput, '.2f'):>5}/s  "
            f"backend busy {_shown(verdict.backend_utilisation, '.0f', scale=100):>3} %  "
            f"challenges above 1x {_shown(verdict.priced_share, '.0f', scale=100):>3} %"
        )
    if not rows:
        return ""
    head = (
        f"who pays: the same flood from a few heavy networks, then many light ones, "
        f"{who.legit_sources} legitimate networks; per client: fair {who.fair_rate:g}/s, "
        f"growth {who.growth:g}, cap {who.max_factor:g}x"
    )
    return "\n".join([head, *rows])


def _conclude(
    *, scenario: Scenario, output: Path, timelines: dict[str, list[dict[str, Any]]]
) -> DemoResult:
    verdicts: dict[str, Verdict] = {}
    # Baselines first in the table and the chart, the adaptive run last:
    # the comparison reads from left to right; the scheme comparison after it.
    for defence in (
        d for d in (*reversed(RUN_ORDER), *SCHEME_RUNS, *WHO_PAYS_RUNS) if str(d) in timelines
    ):
        phases = scenario.phases(defence)
        verdicts[str(defence)] = judge(
            timelines[str(defence)],
            defence=str(defence),
            flood_start=math.ceil(phases.quiet),
            flood_end=math.ceil(phases.quiet + phases.flood),
            settle=math.ceil(scenario.settle),
            minimum=scenario.min_difficulty if defence is Defence.ADAPTIVE else None,
        )
    targets = check_targets(verdicts[str(Defence.ADAPTIVE)])
    chart, summary = output / "demo.png", output / "summary.json"
    result = DemoResult(
        scenario=scenario,
        timelines=timelines,
        verdicts=verdicts,
        targets=targets,
        chart=chart,
        summary=summary,
        load_average=os.getloadavg(),
    )
    summary.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    who_pays = [str(d) for d in WHO_PAYS_RUNS if str(d) in timelines]
    if who_pays:
        draw_who_pays(
            output / "who-pays.png",
            runs={name: timelines[name] for name in who_pays},
            verdicts={name: verdicts[name] for name in who_pays},
            capacity=scenario.backend.capacity,
            title=(
                f"who pays ({scenario.name}): {scenario.flood_rate:g} bot req/s from "
                f"{scenario.who_pays.heavy_sources} or {scenario.who_pays.light_sources} "
                f"networks, the global adaptive policy alone and with per-client prices"
            ),
        )
    draw_chart(
        chart,
        # The chart compares the defences; the scheme runs are in the table.
        runs={name: rows for name, rows in timelines.items() if Defence(name) in RUN_ORDER},
        verdicts={name: v for name, v in verdicts.items() if Defence(name) in RUN_ORDER},
        capacity=scenario.backend.capacity,
        title=(
            f"powgate demo ({scenario.name}): {scenario.flood_rate:g} bot req/s "
            f"({scenario.flood_rate / scenario.legit_rate:g}x legit), "
            f"{scenario.attack_budget:.2g} hashes/s, backend {scenario.backend.capacity:g} req/s"
        ),
    )
    return result


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM tears down like Ctrl-C does (a CI timeout, `kill`)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _kubeconfig(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no kubeconfig at {path}")
    return path


def _default_kubeconfig() -> str:
    first = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    return first or str(Path.home() / ".kube" / "config")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def _real_pods_unavailable(kubeconfig: Path | None) -> str | None:
    """Why the demo cannot run on real pods here, or None if it can."""
    if kubeconfig is not None:
        return "a cluster was given with --kubeconfig"
    why = node_network_possible()
    if why is not None:
        return why
    try:
        NodeTools.locate(cache_dir())
    except NodeToolsMissingError as exc:
        return str(exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m powgate_testbed.demo",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--quick", action="store_true", help="the reduced scale of the integration test"
    )
    parser.add_argument(
        "--kubeconfig",
        nargs="?",
        # argparse passes a string `const` through `type` as well.
        const=_default_kubeconfig(),
        type=_kubeconfig,
        metavar="PATH",
        help="use this cluster instead of starting one (alone: $KUBECONFIG or ~/.kube/config)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=cache_dir() / "demo",
        help="folder for demo.png, summary.json and the logs (default .cache/demo)",
    )
    parser.add_argument(
        "--sidecars", type=_positive, help="sidecar processes in front of the service (default 2)"
    )
    parser.add_argument(
        "--no-baselines",
        action="store_true",
        help="run only the adaptive defence (and the scheme comparison unless --no-schemes)",
    )
    parser.add_argument(
        "--no-schemes",
        action="store_true",
        help="leave out the scheme comparison (SHA-256 and Argon2id against native bots)",
    )
    parser.add_argument(
        "--no-who-pays",
        action="store_true",
        help="leave out the who-pays comparison (per-client prices against few heavy and "
        "many light bots)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the arrival processes")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--pods", dest="pods", action="store_true", default=None,
        help="run the stack as pods on the local cluster's real node (default where possible)",
    )  # fmt: skip
    where.add_argument(
        "--processes", dest="pods", action="store_false",
        help="run the parts that would be pods as local processes",
    )  # fmt: skip
    args = parser.parse_args(argv)
    pods = args.pods
    if pods is None:
        why_not = _real_pods_unavailable(args.kubeconfig)
        pods = why_not is None
        if why_not:
            print(f"demo: local processes, not real pods ({why_not})", file=sys.stderr)
    scenario = QUICK if args.quick else DEFAULT
    if args.sidecars is not None:
        scenario = replace(scenario, sidecars=args.sidecars)
    defences = (Defence.ADAPTIVE,) if args.no_baselines else RUN_ORDER
    if not args.no_schemes:
        defences = (*defences, *SCHEME_RUNS)
    if not args.no_who_pays:
        defences = (*defences, *WHO_PAYS_RUNS)
    view = LiveView()
    try:
        with _sigterm_as_interrupt():
            result = run_demo(
                scenario=scenario,
                output=args.output,
                kubeconfig=args.kubeconfig,
                defences=defences,
                view=view,
                seed=args.seed,
                real_pods=pods,
            )
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo started has been stopped", file=sys.stderr)
        return 130
    except (
        StartupError,
        ToolsMissingError,
        NodeToolsMissingError,
        ValueError,
        PrometheusNotFoundError,
        PrometheusError,
    ) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    except k8s.ApiException as exc:
        # A cluster given by --kubeconfig may refuse what the demo needs (RBAC).
        print(f"demo failed: the API server answered {exc.status} {exc.reason}", file=sys.stderr)
        return 1
    view.note("")
    view.note(format_verdicts(list(result.verdicts.values()), result.targets))
    for comparison in (
        format_scheme_comparison(scenario, result.verdicts),
        format_who_pays(scenario, result.verdicts),
    ):
        if comparison:
            view.note("\n" + comparison)
    one, five, fifteen = result.load_average
    view.note(
        f"\nmachine load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1/5/15 min) "
        f"on {os.cpu_count()} cores\nchart: {result.chart}\nsummary: {result.summary}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
