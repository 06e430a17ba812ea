"""The request parser's two builds fuzzed against each other, differences counted.

The compiled build's parser (``_cparse``: llhttp bound in C, the head
collected in C) and the sources' (``_parse``: llhttp through ``httptools``,
the head collected in Python) are one contract. Each input is fed to a
fresh parser of each build, whole and in up to four reads cut where the
input says (the same cuts for both), and what each told its protocol is
written down: the requests begun, each head (target, fields as sent, names
lowered, method, version, keep-alive), the framing inputs (``Content-Length``,
the first ``Transfer-Encoding`` and ``Expect`` fields, ``Host`` fields), the
body, the requests completed, and how it stopped: an upgrade (where its head
ended), a parse error (llhttp's reason), or an error in a callback (what
was raised: a head over the limits is a ``HeadError`` with its status). The
input's last byte may make the protocol raise on one kind of event, as the
connection does to stop a parse.

Any difference between the builds is a finding, raised (libFuzzer reports it
as a crash with the input). The outcome is also checked not to depend on the
cuts (``httptools``' own; counted, for both builds alike).

Inputs are random bytes and mutations of requests well-formed and smuggling,
coverage-guided by atheris. llhttp's and ``_cparse``'s C is not
instrumented: what guides the run is ``_parse``'s Python and the shape of
each outcome (the events' kinds, which framing inputs were present, how the
parse ended and llhttp's reason), hashed onto a tree of 1,024 instrumented
branches, so an input that makes the parsers tell a new kind of story is
kept. ``@K@`` in an input becomes 4,095 bytes, and
``@F@`` 99 header fields, so inputs reach the limits on the target and the
fields without being kilobytes long.

    python -m powgate_testbed.fuzz_parser --runs 1000000 --seed 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from .fuzz_http import run_libfuzzer

__all__ = ["EVENTS", "SEEDS", "DifferenceError", "Differential", "Recorder", "outcome"]

#: The protocol's events, in the order a request tells them.
EVENTS: Final = ("begin", "head", "body", "complete")
#: Expanded before parsing: a long run of bytes, and fields up to the limit's edge.
LONG: Final = (b"@K@", b"k" * 4095)
FIELDS: Final = (b"@F@", b"X-F: v\r\n" * 99)
_GET: Final = b"GET /v1/chat?x=1 HTTP/1.1\r\nHost: a\r\n"
#: Seeds: requests well-formed, smuggling attempts and heads at the limits.
SEEDS: Final = (
    _GET + b"\r\n",
    _GET + b"X-MiXed-Case: Va Lue\r\nX-Empty:\r\n\r\n" + _GET + b"\r\n",
    b"POST /v1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello" + _GET + b"\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"POST / HTTP/1.1\r\nhOsT: a\r\nExpect: 100-continue\r\nHost: b\r\n"
    b"Content-Length: 0002\r\n\r\nok",
    _GET + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX",
    _GET + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n1\r\nZ\r\n0\r\n\r\n",
    _GET + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    _GET + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    _GET + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n",
    _GET + b"X-A: 1\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /open\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\nafter",
    _GET + b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\nafter",
    b"GET /@K@@K@ HTTP/1.1\r\nHost: a\r\n\r\n",
    _GET + b"X: @K@@K@\r\n\r\n",
    _GET + b"@K@@K@: v\r\n\r\n",
    _GET + b"@F@\r\n",
    _GET + b"@F@Z: v\r\n\x01\r\n\r\n",
)


class Recorder:
    """A parser's protocol that writes down what the parser tells it."""

    def __init__(self, *, fail_on: str = "") -> None:
        self.events: list[tuple[Any, ...]] = []
        self.parser: Any = None
        self._fail_on = fail_on

    def _maybe_fail(self, event: str) -> None:
        if event == self._fail_on:
            raise KeyError(event)

    def on_message_begin(self) -> None:
        self.events.append(("begin",))
        self._maybe_fail("begin")

    def on_headers_complete(self) -> None:
        p = self.parser
        self.events.append(
            ("head", p.url, list(p.fields), list(p.names), p.method, p.version, p.keep_alive)
        )
        framing = (p.content_length, p.coding_at, p.expect_at, p.hosts)
        self.events.append(("framing", *framing))
        self._maybe_fail("head")

    def on_body(self, data: bytes) -> None:
        if self.events[-1][0] == "body":
            self.events[-1] = ("body", self.events[-1][1] + data)
        else:
            self.events.append(("body", data))
        self._maybe_fail("body")

    def on_message_complete(self) -> None:
        self.events.append(("complete",))
        self._maybe_fail("complete")


def outcome(
    build: Callable[[Any], Any], reads: Sequence[bytes], *, fail_on: str = ""
) -> list[tuple[Any, ...]]:
    """What a parser of ``build`` told its protocol, fed ``reads`` one after another.

    An upgrade's head ends at an offset into the whole input (not its read).
    """
    import httptools

    from powgate_sidecar._parse import HeadError

    protocol = Recorder(fail_on=fail_on)
    parser = protocol.parser = build(protocol)
    result = protocol.events
    start = 0
    try:
        for data in reads:
            parser.feed_data(data)
            start += len(data)
    except httptools.HttpParserUpgrade as exc:
        result.append(("upgrade", start + exc.args[0]))
    except httptools.HttpParserCallbackError as exc:
        cause = exc.__context__
        detail = (cause.status, cause.text) if isinstance(cause, HeadError) else repr(cause)
        result.append(("callback error", type(cause).__name__, detail))
    except httptools.HttpParserError as exc:
        # The connection answers every parse error alike (httptools' subclasses
        # by llhttp's error code are not read); llhttp's reason must agree.
        result.append(("error", str(exc)))
    return result


class DifferenceError(Exception):
    """The two builds told their protocols different things."""


class Differential:
    """Feeds each input to both builds and counts what was compared."""

    def __init__(self) -> None:
        from powgate_sidecar import _compiled, _parse

        if not _compiled.COMPILED:
            raise RuntimeError(
                "the compiled parser is not in use (make venv, no POWGATE_PURE_PYTHON)"
            )
        from powgate_sidecar import _cparse

        self.reference: Callable[[Any], Any] = _parse.RequestParser
        self.compiled: Callable[[Any], Any] = _cparse.RequestParser
        self.runs = 0
        self.heads = 0
        self.parse_errors = 0
        self.callback_errors = 0
        self.limits = 0
        self.upgrades = 0
        self.cut_dependent = 0

    def run(self, data: bytes) -> None:
        self.runs += 1
        fail_on = EVENTS[data[-1] % 16] if data and data[-1] % 16 < len(EVENTS) else ""
        data = data.replace(*LONG).replace(*FIELDS)
        cuts = sorted({(b * 7919) % (len(data) + 1) for b in data[:3]}) if data else []
        reads = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        whole = self._compare("whole", [data], fail_on)
        in_reads = self._compare("in reads", [r for r in reads if r], fail_on)
        # (A protocol raising on a body raises on its first read's piece.)
        if in_reads != whole and fail_on != "body":
            self.cut_dependent += 1
        _SHAPE(zlib.crc32(repr([_shape(event) for event in whole]).encode()) & 1023)
        self.heads += sum(1 for event in whole if event[0] == "head")
        end = whole[-1][0] if whole else ""
        self.parse_errors += end == "error"
        self.callback_errors += end == "callback error"
        self.limits += end == "callback error" and whole[-1][1] == "HeadError"
        self.upgrades += end == "upgrade"

    def _compare(self, how: str, reads: list[bytes], fail_on: str) -> list[tuple[Any, ...]]:
        expected = outcome(self.reference, reads, fail_on=fail_on)
        got = outcome(self.compiled, reads, fail_on=fail_on)
        if got != expected:
            at = next(
                (
                    i
                    for i, pair in enumerate(zip(got, expected, strict=False))
                    if pair[0] != pair[1]
                ),
                min(len(got), len(expected)),
            )
            raise DifferenceError(
                f"fed {how} ({[len(r) for r in reads]} bytes, protocol raising on "
                f"{fail_on or 'nothing'}): httptools told {expected[at:][:3]}, "
                f"the C parser {got[at:][:3]}"
            )
        return expected

    def report(self) -> str:
        return (
            f"fuzz_parser: {self.runs} inputs compared whole and in reads, 0 differences; "
            f"{self.heads} heads, {self.parse_errors} parse errors, {self.callback_errors} "
            f"callback errors ({self.limits} over the limits), {self.upgrades} upgrades; "
            f"{self.cut_dependent} outcomes depended on the cuts (both builds alike)"
        )


def _shape(event: tuple[Any, ...]) -> tuple[Any, ...]:
    """What kind of event: its kind, and for framing which inputs were present."""
    kind = event[0]
    if kind == "framing":
        return (kind, event[1] is None, event[2] < 0, event[3] < 0, min(event[4], 2))
    if kind in ("error", "callback error"):
        return event[:2]
    return (kind,)


def _tree(depth: int) -> Callable[[int], None]:
    """A function with a branch for each of ``2**depth`` values (coverage sees which)."""
    lines = ["def shape(k):"]

    def node(bit: int, indent: str) -> None:
        if bit == depth:
            lines.append(f"{indent}return None")
            return
        lines.append(f"{indent}if k & {1 << bit}:")
        node(bit + 1, indent + "    ")
        lines.append(f"{indent}else:")
        node(bit + 1, indent + "    ")

    node(0, "    ")
    namespace: dict[str, Any] = {}
    exec("\n".join(lines), namespace)  # noqa: S102  (generated here, from constants)
    shape: Callable[[int], None] = namespace["shape"]
    return shape


#: Outcome shapes, hashed to 10 bits: instrumented when a run starts.
_SHAPE: Final = _tree(10)


def _fuzz(runs: int, seed: int, corpus: Path) -> int:
    import atheris

    with atheris.instrument_imports(include=["powgate_sidecar", "powgate_testbed"]):
        import powgate_sidecar._parse  # noqa: F401
    # The harness itself: which outcomes were reached is the coverage.
    for function in (outcome, Differential.run, _SHAPE):
        atheris.instrument_func(function)
    try:
        differential = Differential()
    except RuntimeError as exc:
        print(f"fuzz_parser: {exc}", file=sys.stderr)
        return 2
    tokens = corpus.parent / (corpus.name + ".dict")
    tokens.write_text(
        "".join(
            f'"{token}"\n'
            for token in (
                "\\x0d\\x0a", "HTTP/1.1", "HTTP/1.0", "Content-Length: ", "Transfer-Encoding: ",
                "chunked", "Expect: 100-continue", "Host: ", "Connection: ", "keep-alive",
                "close", "upgrade", "Upgrade: ", "@K@", "@F@", ": ", "0\\x0d\\x0a\\x0d\\x0a",
            )
        )
    )  # fmt: skip
    return run_libfuzzer(
        differential.run,
        differential.report,
        runs=runs,
        seed=seed,
        corpus=corpus,
        seeds=SEEDS,
        options=[f"-dict={tokens}"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000, help="inputs to try")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    with tempfile.TemporaryDirectory(prefix="fuzz-parser-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        return _fuzz(args.runs, args.seed, corpus)


if __name__ == "__main__":
    raise SystemExit(main())
