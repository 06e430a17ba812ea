"""The ``powgate`` command line: challenges, solving, verification and keys for scripts.

Built-in subcommands cover the core library. The components (sidecar,
operator, testbed) add theirs through the ``powgate.commands`` entry-point
group; only the one being run is imported, so a client-only install keeps
working and stays fast, and a missing extra is named rather than shown as a
traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Final, TextIO

from powgate import __version__
from powgate._algorithms import KdfAlgorithm, KdfParams, algorithm_names, get_algorithm
from powgate._dispatch import parse_challenge, solve_challenge
from powgate._errors import PowgateError
from powgate._keys import HmacKey, KeyRing, new_secret
from powgate._verify import Issuer, Verifier

__all__ = ["main"]

ENTRY_POINT_GROUP: Final = "powgate.commands"
_PROG: Final = "powgate"
# Exit codes: 1 for a negative answer (verification failed), 2 for usage or input errors.
_EXIT_REJECTED: Final = 1
_EXIT_ERROR: Final = 2
_MAX_STDIN_CHARS: Final = 64 * 1024

Run = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``powgate`` with ``argv`` (default: the process arguments); returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    return run(args_list, commands=entry_points(group=ENTRY_POINT_GROUP))


def run(argv: list[str], *, commands: Iterable[EntryPoint]) -> int:
    """:func:`main` with the plug-in subcommands given (tests pass their own)."""
    parser = argparse.ArgumentParser(prog=_PROG, description="Proof-of-work admission tools.")
    parser.add_argument("--version", action="version", version=f"{_PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_builtin_commands(subparsers)
    wanted = next((arg for arg in argv if not arg.startswith("-")), None)
    for entry in commands:
        if entry.name != wanted:
            # Listed for --help without importing it (components pull in servers).
            subparsers.add_parser(entry.name, help=f"(from {entry.value.split(':')[0]})")
            continue
        failure = _load_command(entry, subparsers)
        if failure is not None:
            print(f"{_PROG} {entry.name}: {failure}", file=sys.stderr)
            return _EXIT_ERROR
    args = parser.parse_args(argv)
    command: Run = args.func
    try:
        return command(args)
    except PowgateError as exc:
        print(f"{_PROG} {args.command}: {exc}", file=sys.stderr)
        return _EXIT_ERROR


def _load_command(
    entry: EntryPoint, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]
) -> str | None:
    """Import and register one plug-in subcommand; a message when it cannot be."""
    package = entry.value.split(":")[0].split(".")[0]
    try:
        add_command = entry.load()
    except ImportError as exc:
        missing = exc.name or "a module"
        if missing.split(".")[0] == package:
            return f"not available: {entry.value} cannot be imported ({exc})"
        # Component packages are named powgate_<extra>; the extra pulls in their dependencies.
        extra = package.removeprefix("powgate_")
        return (
            f"needs the '{extra}' extra (missing module {missing!r}): "
            f"pip install 'powgate[{extra}]'"
        )
    add_command(subparsers)
    return None


# -- built-in commands --------------------------------------------------------


def _add_builtin_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    challenge = subparsers.add_parser("challenge", help="print a signed challenge as JSON")
    _add_key_file(challenge)
    challenge.add_argument(
        "--algorithm",
        default="SHA-256",
        choices=algorithm_names(),
        metavar="NAME",
        help=f"the scheme (SHA-256); one of {', '.join(algorithm_names())}",
    )
    challenge.add_argument(
        "--difficulty",
        type=int,
        default=50_000,
        help="maxnumber for ALTCHA v1 and DeepSeek, twice the mean tries for v2 (50000)",
    )
    challenge.add_argument("--ttl", type=float, default=300.0, help="lifetime in seconds (300)")
    challenge.add_argument("--binding", help="bind the challenge to a policy/route")
    challenge.add_argument(
        "--target-path", default="/", help="DeepSeekHashV1: the target_path it names (/)"
    )
    kdf = challenge.add_argument_group("ALTCHA PoW v2: one try (defaults: the scheme's)")
    kdf.add_argument("--cost", type=int, help="iterations, scrypt's N or Argon2id's passes")
    kdf.add_argument("--memory-cost", type=int, help="Argon2id KiB or scrypt's r")
    kdf.add_argument("--parallelism", type=int, help="Argon2id lanes or scrypt's p")
    kdf.add_argument("--key-length", type=int, help="derived key bytes")
    challenge.set_defaults(func=_challenge)

    solve_parser = subparsers.add_parser(
        "solve",
        help="read a challenge JSON on stdin (any scheme), print the solution payload",
        description="Prints the payload; for a DeepSeekHashV1 challenge it is the value of "
        "the x-ds-pow-response header, otherwise of X-Powgate-Solution.",
    )
    solve_parser.add_argument("--workers", type=int, default=1, help="solver processes (1)")
    solve_parser.add_argument(
        "--timeout", type=float, default=120.0, help="ALTCHA v2: give up after seconds (120)"
    )
    solve_parser.set_defaults(func=_solve)

    verify = subparsers.add_parser(
        "verify", help="read a payload on stdin; exit 0 when valid, 1 with the reason otherwise"
    )
    _add_key_file(verify)
    verify.add_argument("--binding", help="the binding the challenge must carry")
    verify.add_argument("--min-difficulty", type=int, default=0, help="reject easier challenges")
    verify.set_defaults(func=_verify)

    keys = subparsers.add_parser("keys", help="create and rotate key-ring files")
    key_commands = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    generate = key_commands.add_parser("generate", help="write a new ring with one active key")
    generate.add_argument("--out", type=Path, required=True, help="file to create")
    generate.add_argument("--kid", default="k1", help="id of the key (k1)")
    generate.add_argument("--force", action="store_true", help="overwrite an existing file")
    generate.set_defaults(func=_keys_generate)
    rotate = key_commands.add_parser(
        "rotate",
        help="one rotation phase: publish a new key, activate it, or prune retired keys",
    )
    _add_key_file(rotate)
    rotate.add_argument("phase", choices=("publish", "activate", "prune"))
    rotate.add_argument("--kid", help="id of the key to publish or activate (default: newest)")
    rotate.add_argument(
        "--grace",
        type=float,
        default=600.0,
        help="activate: seconds the previous key keeps verifying; at least the challenge TTL",
    )
    rotate.set_defaults(func=_keys_rotate)


def _add_key_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key-file",
        type=Path,
        required=True,
        help="key-ring JSON, or a mounted Secret folder holding keyring.json",
    )


def _challenge(args: argparse.Namespace) -> int:
    if args.difficulty < 1:
        raise PowgateError("--difficulty must be a positive integer")
    if args.ttl <= 0:
        raise PowgateError("--ttl must be positive")
    try:
        issuer = Issuer(
            keyring=KeyRing.load(args.key_file),
            algorithm=args.algorithm,
            params=_kdf_params(args),
        )
        challenge = issuer.issue(
            difficulty=args.difficulty,
            ttl=args.ttl,
            binding=args.binding,
            target_path=args.target_path,
        )
    except ValueError as exc:
        raise PowgateError(str(exc)) from None
    print(challenge.to_json())
    return 0


def _kdf_params(args: argparse.Namespace) -> KdfParams | None:
    """The v2 options over the scheme's defaults; ``None`` when none were given."""
    given = {
        field: getattr(args, field)
        for field in ("cost", "memory_cost", "parallelism", "key_length")
        if getattr(args, field) is not None
    }
    if not given:
        return None
    algorithm = get_algorithm(args.algorithm)
    if not isinstance(algorithm, KdfAlgorithm):
        raise PowgateError(f"--cost and the other v2 options do not apply to {args.algorithm}")
    return dataclasses.replace(algorithm.default_params, **given)


def _solve(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise PowgateError("--workers must be at least 1")
    challenge = parse_challenge(_read_stdin(sys.stdin))
    print(solve_challenge(challenge, workers=args.workers, timeout=args.timeout).payload)
    return 0


def _verify(args: argparse.Namespace) -> int:
    verifier = Verifier(keyring=KeyRing.load(args.key_file), replay=None)
    verdict = verifier.verify(
        _read_stdin(sys.stdin).strip(), binding=args.binding, min_difficulty=args.min_difficulty
    )
    if verdict.ok:
        print(f"ok (difficulty {verdict.difficulty})")
        return 0
    print(f"rejected: {verdict.reason} ({verdict.cause})", file=sys.stderr)
    return _EXIT_REJECTED


def _keys_generate(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not args.force:
        raise PowgateError(f"{out} exists; pass --force to overwrite it")
    ring = KeyRing(active=args.kid, keys=(HmacKey(args.kid, new_secret()),))
    ring.save(out)
    print(f"wrote {out} (active key {args.kid})")
    return 0


def _keys_rotate(args: argparse.Namespace) -> int:
    ring = KeyRing.load(args.key_file)
    now = time.time()
    if args.phase == "publish":
        kid = args.kid or _next_kid(ring)
        ring = ring.with_key(HmacKey(kid, new_secret()))
        message = f"published {kid}; activate it once every verifier has the new ring"
    elif args.phase == "activate":
        kid = args.kid or ring.keys[-1].kid
        if kid == ring.active:
            raise PowgateError(f"{kid} is already active; publish a new key first")
        previous = ring.active
        ring = ring.activated(kid, retire_previous_at=int(now + args.grace))
        message = f"{kid} signs now; {previous} verifies for {args.grace:.0f}s more"
    else:
        before = {key.kid for key in ring.keys}
        ring = ring.pruned(now=now)
        dropped = sorted(before - {key.kid for key in ring.keys})
        message = f"dropped {', '.join(dropped)}" if dropped else "nothing to prune"
    ring.save(args.key_file)
    print(message)
    return 0


def _next_kid(ring: KeyRing) -> str:
    numbers = [
        int(key.kid[1:]) for key in ring.keys if key.kid[:1] == "k" and key.kid[1:].isdigit()
    ]
    return f"k{max(numbers, default=0) + 1}"


def _read_stdin(stream: TextIO) -> str:
    # A challenge or payload is a few hundred bytes; refuse to slurp a runaway pipe.
    text = stream.read(_MAX_STDIN_CHARS + 1)
    if len(text) > _MAX_STDIN_CHARS:
        raise PowgateError(f"input larger than {_MAX_STDIN_CHARS} characters")
    return text
