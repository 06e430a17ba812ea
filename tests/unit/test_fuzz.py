"""The hostile-input harness itself: a short run is clean and exercises every outcome."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from powgate_sidecar import _compiled
from powgate_testbed.fuzz import fuzz_configs, fuzz_payloads, fuzz_priced, main
from powgate_testbed.fuzz_http import Harness
from powgate_testbed.fuzz_parser import DifferenceError, Differential


def test_payloads_reach_every_verdict_and_none_is_forged_or_replayed() -> None:
    counts = fuzz_payloads(4000, seed=7)
    assert counts.clean, counts.examples
    assert counts.accepted > 0
    # Replays of solved challenges are tried, and refused as replays.
    assert counts.reasons["replayed"] > 0
    for reason in ("malformed", "bad_signature", "wrong_number", "oversized", "expired"):
        assert counts.reasons[reason] > 0, reason


def test_config_documents_are_answered_or_refused_never_crash() -> None:
    counts = fuzz_configs(4000, seed=7)
    assert counts.clean, counts.examples
    assert counts.accepted > 0
    assert counts.reasons["invalid"] > 0


def test_priced_challenges_are_never_cheapened() -> None:
    counts = fuzz_priced(3000, seed=7)
    assert counts.clean, counts.examples
    assert counts.accepted > 0
    # Each way a priced challenge can be refused is tried.
    for reason in ("wrong_client", "insufficient", "replayed", "wrong_number"):
        assert counts.reasons[reason] > 0, reason


def test_the_command_reports_and_exits_zero_when_clean(capsys: object) -> None:
    argv = ["--payloads", "300", "--configs", "300", "--priced", "300", "--seed", "3"]
    assert main(argv) == 0


def _fuzzed(module: str, runs: int) -> str:
    """A short coverage-guided run (atheris) of a fuzzer of powgate_testbed: its output."""
    pytest.importorskip("atheris")
    done = subprocess.run(
        [sys.executable, "-m", f"powgate_testbed.{module}", "--runs", str(runs), "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_request_fuzzer_runs_clean() -> None:
    """Through the sidecar's parser and handler, served from their instrumented sources."""
    out = _fuzzed("fuzz_http", 3000)
    assert "fuzz_http: request path from its Python sources" in out, out[-2000:]
    assert "fuzz_http: 3000 inputs checked" in out, out[-2000:]


def test_the_parsers_fuzzed_against_each_other_agree() -> None:
    """The C parser against httptools', random splits, 0 differences."""
    if not _compiled.COMPILED:
        pytest.skip("the request path is not compiled (or POWGATE_PURE_PYTHON=1)")
    out = _fuzzed("fuzz_parser", 5000)
    assert "fuzz_parser: 5000 inputs compared whole and in reads, 0 differences" in out, out


def test_the_differential_harness_sees_a_difference() -> None:
    """Fed a parser that differs (a field's value altered), the harness raises it."""
    if not _compiled.COMPILED:
        pytest.skip("the request path is not compiled (or POWGATE_PURE_PYTHON=1)")
    differential = Differential()
    differential.run(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    compiled = differential.compiled

    class Altered:
        def __init__(self, protocol: Any) -> None:
            self._parser = compiled(protocol)

        def __getattr__(self, name: str) -> Any:
            value = getattr(self._parser, name)
            return [(n, v + b"!") for n, v in value] if name == "fields" else value

    differential.compiled = Altered
    with pytest.raises(DifferenceError, match="Host"):
        differential.run(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")


def test_a_chunked_body_read_before_its_turn_ends_once_upstream() -> None:
    """Found by fuzz_http: a chunked body whole before its request's turn, sent with
    its head on a pooled connection, had its last chunk written a second time."""
    harness = Harness()
    try:
        paid = b"GET /b HTTP/1.1\r\nHost: x\r\nX-Powgate-Solution: @SOL@\r\n"
        chunked = paid + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        for behind in range(4):
            # The upstream's parser refuses a second terminator (an internal error).
            harness.run((paid + b"\r\n") * behind + chunked)
        assert harness.upstream_requests == 4 + 1 + 2 + 3
    finally:
        harness.loop.close()
