"""Run every ``bench/bench_*.py`` module's ``main()`` in name order, or the ones named.

python -m bench            # all of them
python -m bench core js    # bench_core and bench_js
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

_PREFIX = "bench_"


def available() -> list[str]:
    """Names of the benchmark modules, without the prefix, in name order."""
    return sorted(
        path.stem.removeprefix(_PREFIX) for path in Path(__file__).parent.glob(f"{_PREFIX}*.py")
    )


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of: {', '.join(names)}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)} (have: {', '.join(names)})")
    for index, name in enumerate(args.names or names):
        if index:
            print()
        title = f"== bench_{name} "
        print(title.ljust(72, "="), flush=True)
        importlib.import_module(f"bench.{_PREFIX}{name}").main()
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
