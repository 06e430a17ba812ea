"""The traffic generator: legitimate clients and bots against a powgate sidecar.

Legitimate clients arrive at a configurable rate (open loop), answer each
challenge with real hashing capped to a browser-like hash rate, and retry
with the solution. Bots arrive at their own rate and either never solve
(``none``), replay one valid payload (``replay``), forge payloads
(``forge``), or solve honestly at native speed within a shared budget of
hashes per second (``honest``). Everything is counted per second from the
client side; the run is bounded in time and, unless asked otherwise, only
targets loopback addresses.

In-process use (tests, the demo)::

    generator = LoadGenerator(target=sidecar_url, legit=LegitTraffic(rate=2),
                              attack=AttackTraffic(rate=50, mode=AttackMode.HONEST))
    report = await generator.run(duration=30)   # generator.set_attack_rate(...) meanwhile

Command line: ``powgate load --target http://127.0.0.1:8080 --duration 30 ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import uvloop

from ._load_traffic import (
    DEFAULT_ATTACK_BUDGET,
    DEFAULT_BROWSER_HASH_RATE,
    AttackMode,
    AttackTraffic,
    LegitTraffic,
    LoadGenerator,
    LoadReport,
    RequestShape,
    check_target,
)
from ._standin_args import non_negative_float, positive_float, positive_int

__all__ = [
    "DEFAULT_ATTACK_BUDGET",
    "DEFAULT_BROWSER_HASH_RATE",
    "AttackMode",
    "AttackTraffic",
    "LegitTraffic",
    "LoadGenerator",
    "LoadReport",
    "RequestShape",
    "add_command",
    "check_target",
    "format_summary",
    "main",
    "run",
]

#: A load run is a test, not a service: an hour is the most it may last.
MAX_DURATION = 3600.0


def _duration(value: str) -> float:
    seconds = positive_float(value)
    if seconds > MAX_DURATION:
        raise argparse.ArgumentTypeError(f"at most {MAX_DURATION:g} seconds, got {value}")
    return seconds


def _configure(parser: argparse.ArgumentParser) -> None:
    legit, attack, shape = LegitTraffic(), AttackTraffic(), RequestShape()
    parser.add_argument(
        "--target", required=True, help="base URL of the sidecar, e.g. http://127.0.0.1:8080"
    )
    parser.add_argument(
        "--duration", type=_duration, default=30.0, help="seconds of load (default 30)"
    )
    parser.add_argument(
        "--max-requests",
        type=positive_int,
        default=None,
        help="end early once each class with traffic has sent this many requests",
    )
    parser.add_argument(
        "--legit-rate",
        type=non_negative_float,
        default=legit.rate,
        help="legitimate requests per second",
    )
    parser.add_argument(
        "--legit-hash-rate",
        type=positive_float,
        default=legit.hash_rate,
        help=f"a legitimate client's hash rate cap (default {legit.hash_rate:g}, browser-like)",
    )
    parser.add_argument(
        "--attack-rate",
        type=non_negative_float,
        default=attack.rate,
        help="bot requests per second (default 0)",
    )
    parser.add_argument(
        "--attack-mode",
        choices=[mode.value for mode in AttackMode],
        default=attack.mode.value,
        help="what bots do with challenges (default none)",
    )
    parser.add_argument(
        "--attack-budget",
        type=positive_float,
        default=attack.budget,
        help=f"hashes per second shared by all bots (default {attack.budget:g})",
    )
    parser.add_argument("--path", default=shape.path, help=f"request path (default {shape.path})")
    parser.add_argument(
        "--model", default=shape.model, help=f"model asked for (default {shape.model})"
    )
    parser.add_argument(
        "--max-tokens",
        type=positive_int,
        default=shape.max_tokens,
        help="max_tokens of each request",
    )
    parser.add_argument("--stream", action="store_true", help="ask for streamed (SSE) answers")
    parser.add_argument(
        "--arrivals",
        choices=("poisson", "uniform"),
        default="poisson",
        help="arrival process (default poisson)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=positive_int,
        default=256,
        help="outstanding requests per class; later arrivals are dropped and counted (default 256)",
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=30.0, help="per HTTP request, seconds"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the arrival process")
    parser.add_argument(
        "--output", type=Path, help="write the report (config, series, summary) as JSON here"
    )
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow a target that is not loopback"
    )
    parser.set_defaults(func=run)


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``powgate load`` subcommand."""
    parser = subparsers.add_parser(
        "load",
        help="generate legitimate and attack traffic against a sidecar",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    _configure(parser)


def run(args: argparse.Namespace) -> int:
    try:
        generator = LoadGenerator(
            target=args.target,
            legit=LegitTraffic(rate=args.legit_rate, hash_rate=args.legit_hash_rate),
            attack=AttackTraffic(
                rate=args.attack_rate, mode=AttackMode(args.attack_mode), budget=args.attack_budget
            ),
            request=RequestShape(
                path=args.path, model=args.model, max_tokens=args.max_tokens, stream=args.stream
            ),
            arrivals=args.arrivals,
            max_in_flight=args.max_in_flight,
            timeout=args.timeout,
            allow_remote=args.allow_remote,
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"powgate load: {exc}", file=sys.stderr)
        return 2
    report = uvloop.run(generator.run(duration=args.duration, max_requests=args.max_requests))
    if args.output is not None:
        args.output.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    print(format_summary(report))
    return 0


def format_summary(report: LoadReport) -> str:
    """The totals of a run as a small table."""
    columns = (
        "sent",
        "admitted",
        "challenges",
        "refusals",
        "rejected",
        "overloaded",
        "errors",
        "dropped",
        "hashes",
        "success_rate",
        "latency_p50",
        "latency_p95",
    )
    lines = [
        f"{report.duration:.1f} s against {report.config['target']}",
        f"{'':8}" + "".join(f"{c:>13}" for c in columns),
    ]
    for name, totals in report.summary.items():
        lines.append(f"{name:8}" + "".join(f"{_cell(totals[c]):>13}" for c in columns))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m powgate_testbed.load", description=__doc__)
    _configure(parser)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
