"""``python -m powgate_operator``: the operator without the ``powgate`` front end."""

from __future__ import annotations

import argparse
import sys

from .cli import add_command


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m powgate_operator")
    add_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["operator", *sys.argv[1:]])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
