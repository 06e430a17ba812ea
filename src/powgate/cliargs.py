"""Command-line conventions shared by every ``powgate`` command.

Each flag of a server command also reads an environment variable
(``--metrics-listen`` ↔ ``POWGATE_METRICS_LISTEN``; the command line wins):
that is how a container is configured. Addresses are ``HOST:PORT``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["add_env_argument", "env_name", "host_port", "parse_host_port"]


def env_name(flag: str) -> str:
    """The environment variable ``flag`` falls back to."""
    return "POWGATE_" + flag.lstrip("-").replace("-", "_").upper()


def add_env_argument(
    container: argparse._ActionsContainer, flag: str, *, help: str, **kwargs: Any
) -> None:
    """``add_argument`` whose default comes from the flag's environment variable.

    argparse applies ``type`` to a string default, so a value from the
    environment is checked exactly like one from the command line.
    """
    env = env_name(flag)
    default = os.environ.get(env, kwargs.pop("default", None))
    container.add_argument(flag, default=default, help=f"{help} [env {env}]", **kwargs)


def parse_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:80`` for IPv6; port 0 asks for any free port)."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host, int(port)


def host_port(value: str) -> tuple[str, int]:
    """:func:`parse_host_port` as an argparse ``type``."""
    try:
        return parse_host_port(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
