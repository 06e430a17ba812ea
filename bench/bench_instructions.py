"""Instructions per request of the sidecar's request path, counted by valgrind.

The benchmarks that time the sidecar (``bench proxy``) spread by up to 1.5x
between runs on a loaded machine; a count of executed instructions does not.
This runs a real ``Sidecar`` and ``Listener`` in one process on uvloop, with
a fake client transport (no system calls: what is counted is the sidecar's
own work), under ``valgrind --tool=cachegrind --cache-sim=no``: once with
:data:`REQUESTS` requests, once with none, and reports the difference
divided by the requests. The requests come as under load: each turn of the
loop reads one request on each of :data:`PER_TURN` keep-alive connections,
and waits for their answers (which leave together at the end of a turn,
``_outbox``), so that a turn's own cost is shared as in a busy sidecar.
Cases:

- ``reject`` — wrk's request without a solution (``bench proxy``'s "reject:
  no solution"): a 428 with a fresh challenge;
- ``forged`` — the same request with a solution whose signature is wrong;
- ``pass`` — a fresh valid solution per request, forwarded to an upstream
  faked through the ``opener`` seam (an in-memory connection answering 200);
- ``reject-browser`` — a refusal of a request with a browser's dozen fields.

Time is taken out of the count: the overload defences' lag watch is off
(valgrind's slowness would trip it and defer the refusals) and the challenge
stock's clock stands still (its batches are then always of the largest size,
as in a busy sidecar, rather than sized by how fast valgrind ran). The count
covers the request path only as far as this process goes: the kernel's read
and write and the loop's wait are not in it (``bench proxy`` measures those).

    python -m bench instructions                 # every case, the build in use
    python -m bench.bench_instructions reject    # some cases
    POWGATE_PURE_PYTHON=1 python -m bench.bench_instructions   # the Python sources
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

from powgate_testbed.fuzz_http import ClientTransport

#: Requests per counted run (the baseline run sends none).
REQUESTS: Final = 4000
#: Connections read in one turn of the loop (``bench proxy``'s wrk keeps 50 busy;
#: under its refusal load ``strace -c`` counted one ``epoll_pwait`` per ~11 requests).
PER_TURN: Final = 16
CASES: Final = ("reject", "forged", "pass", "reject-browser")
#: wrk's request, as ``bench proxy`` sends it.
WRK_HEAD: Final = b"GET /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
#: A browser's navigation-like request (fields as Chromium sends them).
BROWSER_HEAD: Final = (
    b"GET /v1/chat/completions HTTP/1.1\r\n"
    b"Host: chat.example.com\r\n"
    b"Connection: keep-alive\r\n"
    b'sec-ch-ua: "Chromium";v="131", "Not_A Brand";v="24"\r\n'
    b"sec-ch-ua-mobile: ?0\r\n"
    b'sec-ch-ua-platform: "Linux"\r\n'
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/131.0.0.0 Safari/537.36\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Sec-Fetch-Site: none\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
)
_UPSTREAM_ANSWER: Final = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
_SUMMARY: Final = re.compile(rb"^summary:\s+(\d+)", re.MULTILINE)


class _Answers:
    """What the clients were answered: a count, the status lines, and a wait for a number."""

    def __init__(self) -> None:
        self.count = 0
        #: The status lines answered, each once.
        self.statuses: set[bytes] = set()
        self._awaited = 0
        self._waiter: asyncio.Future[None] | None = None

    def add(self, data: Any) -> None:
        self.count += 1
        self.statuses.add(bytes(data[:12]))
        if self._waiter is not None and self.count >= self._awaited:
            self._waiter.set_result(None)
            self._waiter = None

    async def reach(self, count: int) -> None:
        if self.count < count:
            self._awaited = count
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter


class _Client(ClientTransport):
    """The client's side of one connection: its answers go to the shared tally."""

    def __init__(self, answers: _Answers) -> None:
        super().__init__()
        self._answers = answers

    def write(self, data: Any) -> None:
        self._answers.add(data)


class _Upstream(ClientTransport):
    """The faked upstream: every request written to it is answered 200 in the next turn."""

    def __init__(self, protocol: Any) -> None:
        super().__init__()
        self._protocol = protocol

    def write(self, data: Any) -> None:
        asyncio.get_running_loop().call_soon(self._protocol.data_received, _UPSTREAM_ANSWER)


def _requests(case: str, count: int) -> list[bytes]:
    from powgate import Issuer, KeyRing, solve

    from .bench_proxy import BINDING, CONFIG

    if case == "reject":
        return [WRK_HEAD + b"\r\n"] * count
    if case == "reject-browser":
        return [BROWSER_HEAD + b"\r\n"] * count
    issuer = Issuer(keyring=KeyRing.generate())  # another key: every signature is wrong
    if case == "forged":
        challenge = issuer.issue(difficulty=CONFIG.difficulty, ttl=3600, binding=BINDING)
        header = challenge.solution(solve(challenge).number).encode().encode()
        return [WRK_HEAD + b"X-Powgate-Solution: " + header + b"\r\n\r\n"] * count
    return []  # pass: made against the sidecar's own keys (see _run)


async def _run(case: str, count: int) -> None:
    from powgate import Issuer, KeyRing, solve
    from powgate_sidecar import Sidecar
    from powgate_sidecar._forward import UpstreamConnection, UpstreamPool

    from .bench_proxy import BINDING, CONFIG

    keyring = KeyRing.generate()
    # Every case makes REQUESTS of its requests, counted or not: only sending them differs.
    requests = _requests(case, REQUESTS)
    if case == "pass":
        issuer = Issuer(keyring=keyring)
        for _ in range(REQUESTS):
            challenge = issuer.issue(difficulty=CONFIG.difficulty, ttl=3600, binding=BINDING)
            header = challenge.solution(solve(challenge).number).encode().encode()
            requests.append(WRK_HEAD + b"X-Powgate-Solution: " + header + b"\r\n\r\n")

    async def opener(pool: UpstreamPool) -> UpstreamConnection:
        conn = UpstreamConnection(pool)
        conn.connection_made(_Upstream(conn))
        return conn

    sidecar = Sidecar(upstream="http://127.0.0.1:9", keyring=keyring, config=CONFIG, opener=opener)
    await sidecar.start()
    # Under valgrind a request takes ~50 times as long, and the count would
    # depend on the machine's load: no lag watch (it would defer refusals), and
    # the challenge stock's shelves stay fresh, as at any rate worth counting
    # (batches of its maximum: the steady state of a busy sidecar).
    sidecar.overload.lag_seconds = 0.0
    sidecar._stock._clock = lambda: 0.0
    answers = _Answers()
    listener = sidecar.listener()
    clients = [_Client(answers) for _ in range(PER_TURN)]
    conns = [listener() for _ in clients]
    for conn, client in zip(conns, clients, strict=True):
        conn.connection_made(client)
    sent = requests[:count]
    for at in range(0, len(sent), PER_TURN):
        # One read per connection this turn; the answers leave at its end (a
        # forwarded request's turns later), and the next reads wait for them.
        for conn, data in zip(conns, sent[at : at + PER_TURN], strict=False):
            conn.data_received(data)
        await answers.reach(min(at + PER_TURN, len(sent)))
    closed = any(client.closing for client in clients)
    for conn in conns:
        conn.connection_lost(None)
    await sidecar.close()
    expected = {b"HTTP/1.1 200"} if case == "pass" else {b"HTTP/1.1 428"}
    if count and (answers.count != count or closed or answers.statuses != expected):
        raise SystemExit(
            f"{case}: {answers.count} answers to {count} requests, {sorted(answers.statuses)}"
            f" (closed: {closed})"
        )


def _count(case: str, requests: int) -> int:
    """Instructions of one child run under cachegrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "cachegrind.out")
        subprocess.run(
            [
                "valgrind",
                "--tool=cachegrind",
                "--cache-sim=no",
                f"--cachegrind-out-file={out}",
                sys.executable,
                "-m",
                "bench.bench_instructions",
                "--child",
                case,
                str(requests),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same hashes in every run
        )
        match = _SUMMARY.search(out.read_bytes())
        if match is None:
            raise RuntimeError(f"no summary in cachegrind's output for {case}")
        return int(match.group(1))


def _build() -> str:
    from powgate_sidecar._compiled import COMPILED

    return "compiled" if COMPILED else "Python sources"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_instructions")
    parser.add_argument("cases", nargs="*", metavar="CASE", help=f"any of: {', '.join(CASES)}")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "REQUESTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv if argv is not None else [])
    if args.child:
        from powgate_sidecar._loop import new_event_loop

        case, requests = args.child
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_run(case, int(requests)))
        return
    if shutil.which("valgrind") is None:
        print("valgrind not found: skipped (Debian: apt-get install valgrind)")
        return
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case {', '.join(unknown)} (have: {', '.join(CASES)})")
    print(f"request path: {_build()}; {REQUESTS:,} requests, {PER_TURN} a turn, minus none")
    print(f"{'case':<16} {'instructions/request':>20}")
    for case in args.cases or CASES:
        # Both runs of a case check their answers outside valgrind first (fast, and
        # a failure shows its traceback).
        env_check = subprocess.run(
            [sys.executable, "-m", "bench.bench_instructions", "--child", case, "50"],
            capture_output=True,
            text=True,
        )
        if env_check.returncode:
            raise SystemExit(f"{case} failed:\n{env_check.stderr}")
        per_request = (_count(case, REQUESTS) - _count(case, 0)) / REQUESTS
        print(f"{case:<16} {per_request:>20,.0f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
