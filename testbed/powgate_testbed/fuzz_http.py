"""Requests fuzzed through the sidecar's parser and handler, and what they did, counted.

Coverage-guided (atheris, libFuzzer's engine) over the bytes a client
sends: each input is fed, in up to four pieces, to a fresh client
connection of a real :class:`powgate_sidecar.Sidecar` (enforce mode, every
path of the common methods protected), whose upstream is played in memory
through the pool's transport seam: an ``httptools`` request parser that
counts each request reaching it and answers ``200``. The token ``@SOL@`` in
an input is replaced by a fresh valid solution of the input's route, so
paid paths are explored too.

Every input is checked for:

* a *crash*: an exception out of the connection, or an internal error the
  sidecar counted (``client_errors_total{kind="internal"}``);
* a *hang*: a connection still open, or a task still pending, after the
  input was fed, the client hung up and the loop ran its callbacks (and
  libFuzzer's own per-input timeout);
* a *bypass*: an upstream request of a protected method beyond the fresh
  valid solutions the input carried.

A failed check is raised, which libFuzzer reports as a crash with the input
that caused it; the run prints ``Done N runs`` and the counts.

What the coverage sees: atheris instruments Python bytecode, not the C that
Cython compiles, so a run on the compiled request path (``_connection``,
``_http``, ``_cparse``) would be guided by nothing inside it. The run
therefore serves the request path from its Python sources
(``POWGATE_PURE_PYTHON=1``: ``_connection.py`` and ``_http.py``, the parser
``_parse.py`` on ``httptools``) and instruments them, which is the same
contract the compiled build is built from. The C parser itself is fuzzed
against ``_parse.py`` by :mod:`powgate_testbed.fuzz_parser`; ``--compiled``
runs these checks on the compiled modules instead (without coverage from
inside them). The run says which it did.

    python -m powgate_testbed.fuzz_http --runs 1000000 --seed 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

__all__ = ["ClientTransport", "Harness", "main", "run_libfuzzer"]

#: Methods a route of the fuzzed configuration protects (a route lists at most 16).
PROTECTED: Final = (
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
    "PROPFIND", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "PURGE",
)  # fmt: skip
TOKEN: Final = b"@SOL@"
#: Seeds: what a client sends, well-formed, each path of the handler once.
SEEDS: Final = (
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nX-Powgate-Solution: @SOL@\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nX-Powgate-Solution: @SOL@\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"GET /app/p HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n"
    b"Cookie: a=1; powgate_solution=@SOL@\r\n\r\n",
    b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: 17\r\n\r\naltcha=@SOL@&a=1",
    b"GET /.well-known/powgate/challenge?method=GET&path=/x HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nabcd",
    b"HEAD /v1/x;a=b/../%2e HTTP/1.0\r\nX-Forwarded-For: 1.2.3.4\r\nConnection: close\r\n\r\n",
)


#: Turns of the loop given to each request of an input to be answered.
TURNS_PER_REQUEST: Final = 4


class CheckFailedError(Exception):
    """An input broke one of the run's checks."""


class Harness:
    """One sidecar and an in-memory upstream, reused across inputs."""

    def __init__(self) -> None:
        from powgate import Issuer, KeyRing
        from powgate.config import RouteConfig, SidecarConfig
        from powgate_sidecar import Sidecar
        from powgate_sidecar._connection import Exchange, Listener
        from powgate_sidecar._forward import UpstreamConnection, UpstreamPool

        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        keyring = KeyRing.generate()
        config = SidecarConfig(
            policy="fuzz/http",
            difficulty=2,
            min_difficulty=1,
            routes=[RouteConfig(name="all", paths=["/*"], methods=list(PROTECTED))],
            exempt_paths=[],
        )
        self.issuer = Issuer(keyring=keyring)
        self.binding = f"{config.policy}:all"
        self.upstream_requests = 0
        self.protected_requests = 0
        self.runs = 0
        self.solutions = 0

        harness = self

        async def opener(pool: UpstreamPool) -> UpstreamConnection:
            conn = UpstreamConnection(pool)
            conn.connection_made(_UpstreamTransport(harness, conn))
            return conn

        self.sidecar = Sidecar(
            upstream="http://upstream.invalid:80",
            keyring=keyring,
            config=config,
            opener=opener,
        )
        self.loop.run_until_complete(self.sidecar.start())
        self.internal = 0
        sidecar = self.sidecar

        class Counting:
            """The sidecar as the connections' dispatcher, counting internal errors on the way."""

            def dispatch(self, exchange: Exchange) -> None:
                sidecar.dispatch(exchange)

            def refused(self, kind: str) -> None:
                if kind == "internal":
                    harness.internal += 1
                sidecar.refused(kind)

        self.listener = Listener(Counting(), limits=sidecar.limits, header_seconds=5)

    def solution(self) -> bytes:
        from powgate import Challenge, solve

        challenge = self.issuer.issue(difficulty=2, ttl=600, binding=self.binding)
        assert isinstance(challenge, Challenge)  # the configuration's SHA-256
        return challenge.solution(solve(challenge).number).encode().encode()

    def report(self) -> str:
        return (
            f"fuzz_http: {self.runs} inputs checked, {self.solutions} valid solutions embedded, "
            f"{self.upstream_requests} upstream requests ({self.protected_requests} of protected "
            "methods, none beyond the solutions); 0 crashes, 0 hangs, 0 bypasses"
        )

    def run(self, data: bytes) -> None:
        self.runs += 1
        paid = data.count(TOKEN)
        if paid:
            parts = data.split(TOKEN)
            pieces = [parts[0]]
            for part in parts[1:]:
                pieces += (self.solution(), part)
            data = b"".join(pieces)
            self.solutions += paid
        before = self.protected_requests
        errors = self.internal
        self.loop.run_until_complete(self._feed(data))
        if self.internal != errors:
            raise CheckFailedError("the sidecar counted an internal error")
        if self.protected_requests - before > paid:
            raise CheckFailedError(
                f"{self.protected_requests - before} upstream requests of protected methods "
                f"for {paid} valid solutions"
            )

    async def _feed(self, data: bytes) -> None:
        conn = self.listener()
        transport = ClientTransport()
        conn.connection_made(transport)
        # The same bytes in up to four reads, cut where the input says: the
        # parser must give the same answer whatever the cuts.
        cuts = sorted({(b * 7919) % (len(data) + 1) for b in data[:3]}) if data else []
        start = 0
        for cut in [*cuts, len(data)]:
            if cut > start and not transport.closing:
                conn.data_received(data[start:cut])
                start = cut
            # A read is parsed a slice per turn of the loop: let every slice come.
            for _ in range(1 + len(data) // 512):
                if not conn.backlog or transport.closing:
                    break
                await asyncio.sleep(0)
            await asyncio.sleep(0)
        # A forwarded request takes turns: it leaves at the end of its turn, the
        # upstream answers in the next, and the answer leaves at the end of that.
        for _ in range(TURNS_PER_REQUEST * (1 + data.count(b"HTTP/"))):
            await asyncio.sleep(0)
        if not transport.closing:
            conn.eof_received()
        conn.connection_lost(None)
        for _ in range(3):
            await asyncio.sleep(0)
        if self.listener.connections:
            raise CheckFailedError("a connection outlived its client")
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        if pending:
            raise CheckFailedError(f"{len(pending)} tasks outlived the input: {pending[:2]}")


class ClientTransport(asyncio.Transport):
    """What the sidecar writes to the client; answers are dropped, closing is noted."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def write(self, data: Any) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


class _UpstreamTransport(asyncio.Transport):
    """The upstream in memory: llhttp reads what the sidecar sends, each request is answered 200."""

    def __init__(self, harness: Harness, conn: Any) -> None:
        import httptools

        super().__init__()
        self._harness = harness
        self._conn = conn
        self._parser = httptools.HttpRequestParser(self)
        self.closing = False

    def on_message_complete(self) -> None:
        harness = self._harness
        harness.upstream_requests += 1
        if self._parser.get_method().decode() in PROTECTED:
            harness.protected_requests += 1
        conn = self._conn
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        asyncio.get_running_loop().call_soon(self._answer, conn, answer)

    def _answer(self, conn: Any, answer: bytes) -> None:
        if not self.closing:
            conn.data_received(answer)

    def write(self, data: Any) -> None:
        import httptools

        if self.closing:
            return
        try:
            self._parser.feed_data(bytes(data))
        except httptools.HttpParserError as exc:
            raise CheckFailedError(f"the sidecar sent the upstream malformed HTTP: {exc}") from exc

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self._conn.connection_lost, None)


def _fuzz(runs: int, seed: int, corpus: Path, *, compiled: bool) -> int:
    import atheris

    # Decided at the package's import (powgate_sidecar._compiled).
    os.environ["POWGATE_PURE_PYTHON"] = "0" if compiled else "1"
    with atheris.instrument_imports():
        import powgate_sidecar._admission
        import powgate_sidecar._app
        import powgate_sidecar._connection
        import powgate_sidecar._endpoints
        import powgate_sidecar._forward
        import powgate_sidecar._routes  # noqa: F401
    from powgate_sidecar import _compiled

    if compiled != _compiled.COMPILED:
        print("fuzz_http: the compiled request path is not built (make venv)", file=sys.stderr)
        return 2
    print(f"fuzz_http: {_request_path(atheris, _compiled.MODULES)}", flush=True)

    harness = Harness()
    return run_libfuzzer(
        harness.run, harness.report, runs=runs, seed=seed, corpus=corpus, seeds=SEEDS
    )


def run_libfuzzer(
    check: Callable[[bytes], None],
    report: Callable[[], str],
    *,
    runs: int,
    seed: int,
    corpus: Path,
    seeds: Sequence[bytes],
    options: Sequence[str] = (),
) -> int:
    """libFuzzer (atheris) over ``check`` from ``seeds``; ``report`` every 100,000 inputs."""
    import atheris

    done = 0

    def one_input(data: bytes) -> None:
        nonlocal done
        check(data)
        done += 1
        if done % 100_000 == 0 or done == runs:
            print(report(), flush=True)

    for index, seed_input in enumerate(seeds):
        (corpus / f"seed-{index}").write_bytes(seed_input)
    atheris.Setup(
        [sys.argv[0], f"-runs={runs}", f"-seed={seed}", "-max_len=4096", "-timeout=10",
         *options, "-print_final_stats=1", str(corpus)],
        one_input,
    )  # fmt: skip
    atheris.Fuzz()
    return 0


def _request_path(atheris: Any, modules: tuple[str, ...]) -> str:
    """Instrument the request path's sources; say what the coverage sees."""
    compiled = []
    for name in modules:
        module = sys.modules.get(name)
        if module is None:
            continue  # the sources' build has no _cparse: _parse serves
        if not str(module.__file__).endswith(".py"):
            compiled.append(name.rpartition(".")[2])
            continue
        # _compiled's source finder stands ahead of atheris' import hook: its
        # modules arrive uninstrumented (instrumenting twice is a no-op).
        for function in _functions(module):
            atheris.instrument_func(function)
    if compiled:
        return (
            f"request path compiled ({', '.join(compiled)}): no coverage from inside it, "
            "the checks only"
        )
    return (
        "request path from its Python sources (_connection.py, _http.py, _parse.py on "
        "httptools), instrumented; the C parser is fuzzed against them by fuzz_parser"
    )


def _functions(module: types.ModuleType) -> Iterator[types.FunctionType]:
    """The functions and methods a module defines."""
    for value in vars(module).values():
        if getattr(value, "__module__", None) != module.__name__:
            continue
        if isinstance(value, types.FunctionType):
            yield value
        elif isinstance(value, type):
            for attr in vars(value).values():
                if isinstance(attr, (staticmethod, classmethod)):
                    attr = attr.__func__
                if isinstance(attr, property):
                    attr = attr.fget
                if isinstance(attr, types.FunctionType):
                    yield attr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000, help="inputs to try")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="run on the compiled request path (no coverage from inside it)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    with tempfile.TemporaryDirectory(prefix="fuzz-http-") as corpus:
        return _fuzz(args.runs, args.seed, Path(corpus), compiled=args.compiled)


if __name__ == "__main__":
    raise SystemExit(main())
