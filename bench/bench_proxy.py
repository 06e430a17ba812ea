"""The sidecar's throughput and added latency, next to nginx, in one run.

Load comes from ``wrk`` on loopback. The proxy under test (the sidecar, or
nginx as the industry reference) is pinned to core 0; ``wrk`` and the
upstream (an nginx that answers ``200 ok``) share core 1. Rows:

* direct to the upstream, through nginx (``proxy_pass`` with upstream
  keep-alive), through the sidecar with a valid fresh solution per request
  (a pre-solved pool, so the replay cache works as in production);
* rejections: the sidecar without a solution and with a forged signature,
  against nginx answering a static 428 (the cheapest an HTTP server can
  refuse);
* the pass and no-solution rows again with per-client prices on (every
  request quoted: client key, sketch, trusted callers; challenges priced for
  the client, solutions verified for it): what ``pricing`` adds end to end;
* unloaded latency (one connection): p50 added over the direct path;

every throughput and latency row is the best of ``ROUNDS`` runs interleaved
with the others (timings on a shared machine are noisy; the best run is the
one least disturbed, as ``timeit`` takes the minimum), and each pass-path
run gets solutions of its own;
* time to the first Server-Sent Event of a streamed chat completion from the
  stand-in AI service, direct, through nginx (``proxy_buffering off``) and
  through the sidecar;
* ``--workers 2`` against one worker on the refusal path, with nginx's static
  428 on two workers against one as the same run's reference (wrk shares
  the two cores with them: what a second core can show here).

``python -m bench.bench_proxy --profile`` samples the sidecar with py-spy
under the pass load and prints where its time goes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench import table
from powgate import Issuer, KeyRing, solve
from powgate._protocol import decode_solution
from powgate.config import RouteConfig, SidecarConfig
from powgate.pricing import ApiKeyConfig, PricingConfig, TrustedCaller, client_tag
from powgate_testbed._process import free_ports

PROXY_CORE: Final = "0"
LOAD_CORE: Final = "1"
SECONDS: Final = 5
CONNECTIONS: Final = 50
#: Every measurement runs this many times, interleaved, and the best run counts.
ROUNDS: Final = 3
#: Distinct solutions per pass-path run: each run gets a pool of its own (wrk
#: starts a pool from its top), sized from the fastest pass rate measured so
#: far with this margin (a run past the end of its pool would mix in replays,
#: refused cheaply, and inflate the pass rate), starting from a one-second
#: calibration run. A run that used up its pool anyway is run again.
POOL_MARGIN: Final = 2.0
FIRST_POOL: Final = 20_000
SSE_SAMPLES: Final = 200
LUA: Final = Path(__file__).with_name("proxy_wrk.lua")
CONFIG: Final = SidecarConfig(
    policy="bench/proxy",
    version="bench",
    difficulty=10,
    challenge_ttl_seconds=3600,
    routes=[RouteConfig(name="chat", paths=["/v1/*"], methods=["GET", "POST"])],
)
BINDING: Final = f"{CONFIG.policy}:chat"
#: The same sidecar with per-client prices and a few trusted callers (none of which
#: wrk's requests prove to be): the quote runs on every request.
PRICED: Final = CONFIG.model_copy(
    update={
        "pricing": PricingConfig(enabled=True),
        "trusted_callers": [
            TrustedCaller(name="office", cidrs=["10.0.0.0/8", "fd00::/8"]),
            TrustedCaller(
                name="partners",
                api_keys=ApiKeyConfig(secret_name="k"),  # noqa: S106 - a Secret's name
                multiplier=0.1,
            ),
        ],
    }
)
#: wrk's client as the priced sidecar keys it: its solutions are priced for it.
WRK_CLIENT: Final = client_tag("127.0.0.0/24")
TOOLS: Final = ("wrk", "nginx", "taskset")


@dataclass(frozen=True, slots=True)
class Run:
    requests: int
    seconds: float
    status_errors: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    #: CPU time the proxy process(es) used during the run (None: no proxy measured).
    cpu_seconds: float | None

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def per_cpu_second(self) -> float | None:
        """Requests per CPU-second of the proxy: its capacity per core, whatever else runs."""
        return self.requests / self.cpu_seconds if self.cpu_seconds else None


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its children (nginx's workers), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for each in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _wait_port(
    port: int, *, name: str, process: subprocess.Popen[bytes], logs: Sequence[Path]
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            # nginx writes why it stopped to its error log, not to its output.
            said = "\n".join(
                f"{log.name}:\n{log.read_text(errors='replace')[-2000:]}"
                for log in logs
                if log.exists()
            )
            raise RuntimeError(f"{name} (port {port}) exited early with code {code}:\n{said}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after 30 s")


class Processes:
    """Background servers pinned to cores, stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._started: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        name: str,
        *,
        argv: Sequence[str],
        core: str,
        port: int,
        env: dict[str, str] | None = None,
    ) -> int:
        log = self.root / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["taskset", "-c", core, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._started.append(process)
        _wait_port(port, name=name, process=process, logs=[log, self.root / name / "error.log"])
        return process.pid

    def close(self) -> None:
        for process in reversed(self._started):
            process.terminate()
        for process in self._started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _nginx(
    procs: Processes, *, name: str, servers: str, core: str, port: int, workers: int = 1
) -> int:
    root = procs.root / name
    root.mkdir()
    temp = "\n".join(
        f"  {kind}_temp_path {root}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = root / "nginx.conf"
    conf.write_text(
        f"""
worker_processes {workers};
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
{temp}
{servers}
}}
"""
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return procs.start(
        name,
        argv=[nginx, "-p", str(root), "-c", str(conf), "-e", f"{root}/error.log"],
        core=core,
        port=port,
    )


def _wrk(
    url: str,
    *,
    connections: int,
    seconds: int,
    proxy: int | None = None,
    pool: Path | None = None,
    header: str | None = None,
    cores: str = LOAD_CORE,
    threads: int = 1,
) -> Run:
    env = {**os.environ, "POWGATE_POOL": str(pool or ""), "POWGATE_SOLUTION": header or ""}
    argv = [
        "taskset",
        "-c",
        cores,
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
    ]
    before = _cpu_seconds(proxy) if proxy is not None else 0.0
    out = subprocess.run(
        [*argv, "-s", str(LUA), url], capture_output=True, text=True, check=True, env=env
    ).stdout
    cpu = _cpu_seconds(proxy) - before if proxy is not None else None
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    requests, duration_us, status, sockets, p50, p99 = (int(v) for v in line.split()[1:])
    return Run(requests, duration_us / 1e6, status, sockets, p50 / 1000, p99 / 1000, cpu)


def _solutions(keyring: KeyRing, count: int, *, client: str | None = None) -> list[str]:
    issuer = Issuer(keyring=keyring)
    out = []
    for _ in range(count):
        challenge = issuer.issue(
            difficulty=CONFIG.difficulty,
            ttl=CONFIG.challenge_ttl_seconds,
            binding=BINDING,
            client=client,
        )
        out.append(challenge.solution(solve(challenge).number).encode())
    return out


class Pools:
    """Files of fresh solutions for wrk, each used by one run only, sized by the pass rate."""

    def __init__(self, keyring: KeyRing, root: Path) -> None:
        self._keyring = keyring
        self._root = root
        self._made = 0
        #: Fastest pass rate seen, per kind of run (requests a second).
        self._rates: dict[str, float] = {}

    def file(self, count: int, *, client: str | None = None) -> Path:
        self._made += 1
        path = self._root / f"pool-{self._made}.txt"
        path.write_text("\n".join(_solutions(self._keyring, count, client=client)) + "\n")
        return path

    def run(
        self, kind: str, *, seconds: float, client: str | None = None, load: Callable[[Path], Run]
    ) -> Run:
        """``load`` with a pool big enough for ``seconds`` at the fastest rate of ``kind`` seen."""
        size = max(FIRST_POOL, int(self._rates.get(kind, 0.0) * seconds * POOL_MARGIN))
        run = load(self.file(size, client=client))
        if run.requests >= size:
            # Past the end of its pool: replays were mixed in. Again, with room.
            size = int(run.requests * POOL_MARGIN)
            run = load(self.file(size, client=client))
            if run.requests >= size:
                raise RuntimeError(f"{kind}: {run.requests:,} requests used up {size:,} solutions")
        self._rates[kind] = max(self._rates.get(kind, 0.0), run.rate)
        return run


def _first_event_ms(port: int, *, headers: str = "") -> float:
    """Milliseconds from sending a streamed chat completion to its first ``data:`` line."""
    body = json.dumps(
        {
            "model": "standin",
            "stream": True,
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "x"}],
        }
    ).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{headers}\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.perf_counter()
        sock.sendall(request)
        seen = b""
        while b"data:" not in seen:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"stream ended before its first event: {seen[:300]!r}")
            seen += chunk
        return (time.perf_counter() - started) * 1000


def _sidecar(
    procs: Processes,
    *,
    name: str,
    upstream: str,
    keys: Path,
    config: Path,
    workers: int = 1,
    core: str = PROXY_CORE,
) -> tuple[int, int]:
    port, metrics = free_ports(1)[0], free_ports(1)[0]
    env = {
        **os.environ,
        "POWGATE_LISTEN": f"127.0.0.1:{port}",
        "POWGATE_UPSTREAM": upstream,
        "POWGATE_METRICS_LISTEN": f"127.0.0.1:{metrics}",
        "POWGATE_KEY_FILE": str(keys),
        "POWGATE_CONFIG_FILE": str(config),
        "POWGATE_LOG_LEVEL": "warning",
        "POWGATE_WORKERS": str(workers),
    }
    powgate = str(Path(sys.executable).with_name("powgate"))
    pid = procs.start(name, argv=[powgate, "sidecar"], core=core, port=port, env=env)
    return port, pid


#: The upstream of the throughput rows: the cheapest answer an HTTP server gives.
_UPSTREAM: Final = '  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }}'
#: The reference rejection: a static 428 of the sidecar's size and headers.
_REJECT: Final = """
    location = /reject {{
      add_header WWW-Authenticate 'PoW realm="powgate", algorithm="SHA-256"' always;
      add_header Cache-Control no-store always;
      default_type application/json;
      return 428 '{body}';
    }}"""
#: nginx as the reference proxy: keep-alive to both upstreams, no response buffering (SSE),
#: and the reference rejection.
_PROXY: Final = (
    """
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_buffering off;
  upstream backend {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  upstream standin {{ server 127.0.0.1:{standin}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{port};"""
    + _REJECT
    + """
    location / {{ proxy_pass http://backend; }}
  }}
  server {{ listen 127.0.0.1:{sse}; location / {{ proxy_pass http://standin; }} }}
"""
)
#: The reference for the ``--workers`` row: the same rejection from nginx with two
#: workers on both cores (what this machine lets any server gain from a second core
#: with wrk on the same two).
_REJECT_ONLY: Final = "  server {{\n    listen 127.0.0.1:{port};" + _REJECT + "\n  }}"


@dataclass
class Setup:
    upstream: int
    nginx_proxy: int
    nginx_proxy_pid: int
    bare: int
    bare_pid: int
    sidecar: int
    sidecar_pid: int
    nginx_sse: int
    standin: int
    sidecar_sse: int
    sidecar_sse_pid: int
    #: The same sidecar with ``--workers 2``, on both cores.
    sidecar_workers: int
    sidecar_workers_pid: int
    #: nginx's static 428 with two workers, on both cores.
    nginx_workers: int
    nginx_workers_pid: int
    priced: int
    priced_pid: int
    #: Fresh solutions for the pass runs.
    pools: Pools
    forged: str
    issuer: Issuer


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # The servers run in sessions of their own: only a normal exit stops them.
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _setup() -> Iterator[Setup]:
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with _servers() as setup:
            yield setup
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _servers() -> Iterator[Setup]:
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        root = Path(tmp)
        procs = Processes(root)
        try:
            keyring = KeyRing.generate()
            keys, config = root / "keyring.json", root / "config.json"
            keyring.save(keys)
            config.write_text(CONFIG.to_json())
            priced_config = root / "priced" / "config.json"
            priced_config.parent.mkdir()
            priced_config.write_text(PRICED.to_json())
            solutions = _solutions(keyring, 1)
            forged_payload = dataclasses.replace(
                decode_solution(solutions[0]), signature="0" * 64
            ).encode()
            upstream, nginx_proxy, nginx_sse, standin = (free_ports(1)[0] for _ in range(4))
            _nginx(
                procs,
                name="upstream",
                servers=_UPSTREAM.format(port=upstream),
                core=LOAD_CORE,
                port=upstream,
            )
            proxy = _PROXY.format(
                upstream=upstream,
                standin=standin,
                port=nginx_proxy,
                sse=nginx_sse,
                body=solutions[0][:280],
            )
            nginx_workers = free_ports(1)[0]
            nginx_workers_pid = _nginx(
                procs,
                name="reject-workers",
                servers=_REJECT_ONLY.format(port=nginx_workers, body=solutions[0][:280]),
                core=f"{PROXY_CORE},{LOAD_CORE}",
                port=nginx_workers,
                workers=2,
            )
            bare = free_ports(1)[0]
            reject_body = root / "reject.json"
            reject_body.write_text(Issuer(keyring=keyring).issue(difficulty=10, ttl=60).to_json())
            bare_pid = procs.start(
                "aiohttp-bare",
                argv=[sys.executable, "-m", "bench.aiohttp_bare", str(bare),
                      f"http://127.0.0.1:{upstream}", str(reject_body)],
                core=PROXY_CORE,
                port=bare,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            )  # fmt: skip
            powgate = str(Path(sys.executable).with_name("powgate"))
            procs.start(
                "standin",
                argv=[powgate, "standin", "--listen", f"127.0.0.1:{standin}", "--model", "standin",
                 "--tokens-per-second", "1000", "--concurrency", "64"],
                core=LOAD_CORE,
                port=standin,
            )  # fmt: skip
            nginx_pid = _nginx(
                procs, name="proxy", servers=proxy, core=PROXY_CORE, port=nginx_proxy
            )
            sidecar, pid = _sidecar(
                procs,
                name="sidecar",
                upstream=f"http://127.0.0.1:{upstream}",
                keys=keys,
                config=config,
            )
            priced, priced_pid = _sidecar(
                procs,
                name="sidecar-priced",
                upstream=f"http://127.0.0.1:{upstream}",
                keys=keys,
                config=priced_config,
            )
            sidecar_sse, sidecar_sse_pid = _sidecar(
                procs,
                name="sidecar-sse",
                upstream=f"http://127.0.0.1:{standin}",
                keys=keys,
                config=config,
            )
            sidecar_workers, sidecar_workers_pid = _sidecar(
                procs,
                name="sidecar-workers",
                upstream=f"http://127.0.0.1:{upstream}",
                keys=keys,
                config=config,
                workers=2,
                core=f"{PROXY_CORE},{LOAD_CORE}",
            )
            yield Setup(
                upstream=upstream,
                nginx_proxy=nginx_proxy,
                nginx_proxy_pid=nginx_pid,
                bare=bare,
                bare_pid=bare_pid,
                sidecar=sidecar,
                sidecar_pid=pid,
                nginx_sse=nginx_sse,
                standin=standin,
                sidecar_sse=sidecar_sse,
                sidecar_sse_pid=sidecar_sse_pid,
                sidecar_workers=sidecar_workers,
                sidecar_workers_pid=sidecar_workers_pid,
                nginx_workers=nginx_workers,
                nginx_workers_pid=nginx_workers_pid,
                priced=priced,
                priced_pid=priced_pid,
                pools=Pools(keyring, root),
                forged=forged_payload,
                issuer=Issuer(keyring=keyring),
            )
        finally:
            procs.close()


def _sse_median(port: int, *, issuer: Issuer | None) -> float:
    samples = []
    for _ in range(SSE_SAMPLES):
        headers = ""
        if issuer is not None:
            challenge = issuer.issue(difficulty=CONFIG.difficulty, ttl=600, binding=BINDING)
            headers = (
                f"X-Powgate-Solution: {challenge.solution(solve(challenge).number).encode()}\r\n"
            )
        samples.append(_first_event_ms(port, headers=headers))
    return statistics.median(samples)


def _fmt(value: float, *, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def main() -> None:
    missing = [
        tool
        for tool in TOOLS
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()
    ]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed (make system-deps)")
        return
    with _setup() as s:
        url = "http://127.0.0.1:{}/v1/chat"
        _wrk(url.format(s.nginx_proxy), connections=CONNECTIONS, seconds=1)  # warm-up
        loaded = functools.partial(_wrk, connections=CONNECTIONS, seconds=SECONDS)
        quiet = functools.partial(_wrk, connections=1, seconds=3)
        nginx_pid, sidecar_pid = s.nginx_proxy_pid, s.sidecar_pid
        runs: dict[str, list[Run]] = collections.defaultdict(list)
        # Interleaved rounds: a slow moment of the shared machine hits one run
        # of each kind rather than every run of one kind.
        pools = s.pools
        priced_url = url.format(s.priced)
        # Calibration: the pass rate sizes the first round's pools.
        pools.run(
            "pass",
            seconds=1,
            load=lambda pool: _wrk(
                url.format(s.sidecar), connections=CONNECTIONS, seconds=1, pool=pool
            ),
        )
        for _ in range(ROUNDS):
            runs["direct"].append(loaded(url.format(s.upstream)))
            runs["nginx"].append(loaded(url.format(s.nginx_proxy), proxy=nginx_pid))
            runs["bare"].append(loaded(url.format(s.bare), proxy=s.bare_pid))
            runs["pass"].append(
                pools.run(
                    "pass",
                    seconds=SECONDS,
                    load=lambda pool: loaded(url.format(s.sidecar), proxy=sidecar_pid, pool=pool),
                )
            )
            reject_url = f"http://127.0.0.1:{s.nginx_proxy}/reject"
            runs["nginx_reject"].append(loaded(reject_url, proxy=nginx_pid))
            bare_reject_url = f"http://127.0.0.1:{s.bare}/reject"
            runs["bare_reject"].append(loaded(bare_reject_url, proxy=s.bare_pid))
            runs["missing"].append(loaded(url.format(s.sidecar), proxy=sidecar_pid))
            runs["forged"].append(loaded(url.format(s.sidecar), proxy=sidecar_pid, header=s.forged))
            runs["priced_pass"].append(
                pools.run(
                    "priced_pass",
                    seconds=SECONDS,
                    client=WRK_CLIENT,
                    load=lambda pool: loaded(priced_url, proxy=s.priced_pid, pool=pool),
                )
            )
            runs["priced_missing"].append(loaded(priced_url, proxy=s.priced_pid))
            runs["quiet_direct"].append(quiet(url.format(s.upstream)))
            runs["quiet_nginx"].append(quiet(url.format(s.nginx_proxy)))
            runs["quiet_bare"].append(quiet(url.format(s.bare)))
            runs["quiet_sidecar"].append(
                pools.run(
                    "quiet", seconds=3, load=lambda pool: quiet(url.format(s.sidecar), pool=pool)
                )
            )
        sse_direct = _sse_median(s.standin, issuer=None)
        sse_nginx = _sse_median(s.nginx_sse, issuer=None)
        sse_sidecar = _sse_median(s.sidecar_sse, issuer=s.issuer)
        # Scaling: one worker pinned to one core against two workers on both,
        # the same wrk (on both cores) in front of each, best of ROUNDS.
        scaling = functools.partial(
            _wrk,
            connections=2 * CONNECTIONS,
            seconds=SECONDS,
            cores=f"{PROXY_CORE},{LOAD_CORE}",
            threads=2,
        )
        # The processes' CPU time too: per CPU-second, two workers should refuse what
        # one does (each worker's own cost does not grow), whatever cores are left.
        one_worker = max(
            (scaling(url.format(s.sidecar), proxy=sidecar_pid) for _ in range(ROUNDS)), key=_rate
        )
        two_workers = max(
            (
                scaling(url.format(s.sidecar_workers), proxy=s.sidecar_workers_pid)
                for _ in range(ROUNDS)
            ),
            key=_rate,
        )
        reject = "http://127.0.0.1:{}/reject"
        nginx_one = max(
            (scaling(reject.format(s.nginx_proxy), proxy=nginx_pid) for _ in range(ROUNDS)),
            key=_rate,
        )
        nginx_two = max(
            (
                scaling(reject.format(s.nginx_workers), proxy=s.nginx_workers_pid)
                for _ in range(ROUNDS)
            ),
            key=_rate,
        )
        # The connections' cost is taken on the sidecar that served only the SSE
        # streams (same config): the one that served the pass rows also holds every
        # solution they spent until its challenge expires (the bench's live an hour).
        loaded_rss = _rss(s.sidecar_pid)
        idle_rss, base_rss = _idle_rss(s.sidecar_sse, pid=s.sidecar_sse_pid, count=IDLE_CONNECTIONS)
        amplification = _amplification(s.sidecar)
    best = {name: _best(found) for name, found in runs.items() if not name.startswith("quiet")}
    quiet_direct, quiet_nginx, quiet_bare, quiet_sidecar = (
        min(runs[name], key=lambda run: run.p50_ms)
        for name in ("quiet_direct", "quiet_nginx", "quiet_bare", "quiet_sidecar")
    )
    if quiet_sidecar.status_errors or quiet_sidecar.socket_errors:
        print(f"warning: {quiet_sidecar.status_errors} unloaded pass requests were refused")

    def row(
        name: str, run: Run, *, nginx: Run, bare: Run | None, expect_ok: bool
    ) -> tuple[str, ...]:
        wrong = run.status_errors if expect_ok else run.requests - run.status_errors
        per_cpu = run.per_cpu_second
        if per_cpu is None:
            return (name, _fmt(run.rate), "-", _fmt(run.p50_ms, digits=2),
                    _fmt(run.p99_ms, digits=2), "-", "-", "-")  # fmt: skip
        return (
            name, _fmt(run.rate), _fmt(per_cpu),
            _fmt(run.p50_ms, digits=2), _fmt(run.p99_ms, digits=2),
            _per_cpu_ratio(run, nginx), _per_cpu_ratio(run, bare) if bare else "-",
            str(wrong + run.socket_errors),
        )  # fmt: skip

    print(
        f"throughput: wrk -t1 -c{CONNECTIONS} -d{SECONDS}s, best of {ROUNDS} interleaved runs",
        end="; ",
    )
    print(f"proxy on core {PROXY_CORE}, wrk + upstream on core {LOAD_CORE}")
    print("req/CPU-s: requests per CPU-second the proxy process used (its capacity per core,")
    print("robust to other load on the machine); x nginx and x aiohttp compare that figure")
    print("with nginx and with aiohttp + uvloop doing the same without PoW (python -m")
    print("bench.aiohttp_bare), both measured in the same run.")
    header = (
        "path", "req/s", "req/CPU-s", "p50 ms", "p99 ms", "x nginx", "x aiohttp", "unexpected"
    )  # fmt: skip
    forward, refuse = best["nginx"], best["nginx_reject"]
    bare, bare_reject = best["bare"], best["bare_reject"]
    rows = [
        row("direct to upstream", best["direct"], nginx=forward, bare=None, expect_ok=True),
        row("nginx proxy_pass (reference)", forward, nginx=forward, bare=None, expect_ok=True),
        row("aiohttp + uvloop proxy (reference)", bare, nginx=forward, bare=bare, expect_ok=True),
        row("sidecar, pass (fresh solution each)", best["pass"], nginx=forward, bare=bare,
            expect_ok=True),
        row("nginx static 428 (reference)", refuse, nginx=refuse, bare=None, expect_ok=False),
        row("aiohttp + uvloop static 428 (reference)", bare_reject, nginx=refuse,
            bare=bare_reject, expect_ok=False),
        row("sidecar, reject: no solution", best["missing"], nginx=refuse, bare=bare_reject,
            expect_ok=False),
        row("sidecar, reject: bad signature", best["forged"], nginx=refuse, bare=bare_reject,
            expect_ok=False),
        row("sidecar + per-client prices, pass", best["priced_pass"], nginx=forward, bare=bare,
            expect_ok=True),
        row("sidecar + per-client prices, reject: no solution", best["priced_missing"],
            nginx=refuse, bare=bare_reject, expect_ok=False),
    ]  # fmt: skip
    print(table(header, rows))
    print()
    print(
        f"unloaded latency (wrk -c1, 3 s, best p50 of {ROUNDS}) and time to first SSE event",
        f"(median of {SSE_SAMPLES} streams)",
    )
    nginx_added = quiet_nginx.p50_ms - quiet_direct.p50_ms

    def latency(name: str, run: Run, sse: float | None) -> tuple[str, ...]:
        added = run.p50_ms - quiet_direct.p50_ms
        return (
            name, _fmt(run.p50_ms, digits=3), _fmt(added, digits=3),
            _ratio(added, reference=nginx_added),
            "-" if sse is None else _fmt(sse, digits=3),
            "-" if sse is None else _fmt(sse - sse_direct, digits=3),
        )  # fmt: skip

    direct_row = ("direct", _fmt(quiet_direct.p50_ms, digits=3), "-", "-",
                  _fmt(sse_direct, digits=3), "-")  # fmt: skip
    print(
        table(
            ("path", "p50 ms", "added ms", "x nginx added", "first event ms", "added ms"),
            [
                direct_row,
                latency("nginx (reference)", quiet_nginx, sse_nginx),
                latency("aiohttp + uvloop (reference)", quiet_bare, None),
                latency("sidecar (pass)", quiet_sidecar, sse_sidecar),
            ],
        )
    )
    print()
    added = quiet_sidecar.p50_ms - quiet_direct.p50_ms
    goals = [
        ("reject, no solution: x nginx", _per_cpu_ratio(best["missing"], refuse), ">= 0.50"),
        ("reject, forged: x nginx", _per_cpu_ratio(best["forged"], refuse), ">= 0.40"),
        ("pass: x nginx", _per_cpu_ratio(best["pass"], forward), ">= 0.35"),
        ("added p50 minus nginx's added, ms", f"{added - nginx_added:+.3f}", "<= +0.100"),
        ("SSE first event, added ms", f"{sse_sidecar - sse_direct:.3f}", "<= 0.300"),
        (
            f"RSS holding {IDLE_CONNECTIONS:,} idle keep-alive connections, MiB",
            f"{idle_rss / 2**20:.0f} (idle: {base_rss / 2**20:.0f})",
            "<= 150",
        ),
        (
            "RSS of the sidecar after the pass rows (their spent solutions held), MiB",
            f"{loaded_rss / 2**20:.0f}",
            "-",
        ),
        (
            "--workers 2 / 1 worker, reject req/s (wrk on both cores)",
            f"{two_workers.rate / one_worker.rate:.2f} "
            f"({two_workers.rate:,.0f} / {one_worker.rate:,.0f})",
            ">= 1.70",
        ),
        (
            "nginx 2 workers / 1, static 428 req/s (the same wrk): the reference",
            f"{nginx_two.rate / nginx_one.rate:.2f} "
            f"({nginx_two.rate:,.0f} / {nginx_one.rate:,.0f})",
            "-",
        ),
        (
            "--workers 2 / 1 worker, reject req per CPU-second (1.00: no loss per worker)",
            _per_cpu_ratio(two_workers, one_worker),
            "-",
        ),
        (
            "nginx 2 workers / 1, static 428 req per CPU-second: the reference",
            _per_cpu_ratio(nginx_two, nginx_one),
            "-",
        ),
        ("bytes out per byte in: JSON 428 to wrk's request", f"{amplification[0]:.1f}", "-"),
        ("bytes out per byte in: page to a navigation", f"{amplification[1]:.2f}", "-"),
    ]
    print("goals of the sidecar's data plane, from the runs above")
    print(table(("goal", "measured", "target"), goals))


def _rate(run: Run) -> float:
    return run.rate


#: Idle keep-alive connections held open for the memory row.
IDLE_CONNECTIONS: Final = 10_000
#: Idle connections per client address (well under the default cap of 256).
IDLE_PER_ADDRESS: Final = 100
#: What Chromium sends for a navigation, for the amplification row.
NAVIGATION: Final = (
    b"GET /v1/chat HTTP/1.1\r\nHost: shop.example.com\r\nConnection: keep-alive\r\n"
    b'sec-ch-ua: "Chromium";v="131", "Not_A Brand";v="24"\r\nsec-ch-ua-mobile: ?0\r\n'
    b'sec-ch-ua-platform: "Linux"\r\nUpgrade-Insecure-Requests: 1\r\n'
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/131.0.0.0 Safari/537.36\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    b"image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7\r\n"
    b"Sec-Fetch-Site: none\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-User: ?1\r\n"
    b"Sec-Fetch-Dest: document\r\nAccept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n\r\n"
)


def _rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its children (workers), from /proc."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for each in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def _idle_rss(port: int, *, pid: int, count: int) -> tuple[int, int]:
    """The sidecar's RSS holding ``count`` keep-alive connections that each asked once.

    They come from :data:`IDLE_PER_ADDRESS` connections per loopback address,
    as many clients' would (one address is capped at the config's
    ``overload.maxConnectionsPerClient``).
    """
    before = _rss(pid)
    request = b"GET /.well-known/powgate/none HTTP/1.1\r\nHost: bench\r\n\r\n"
    sockets = []
    try:
        for index in range(count):
            client = index // IDLE_PER_ADDRESS
            source = f"127.1.{client // 250}.{client % 250 + 1}"
            sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
            sock.sendall(request)
            sockets.append(sock)
        for sock in sockets:
            if not sock.recv(4096).startswith(b"HTTP/1.1 404"):
                raise RuntimeError("an idle connection was not answered")
        return _rss(pid), before
    finally:
        for sock in sockets:
            sock.close()


def _amplification(port: int) -> tuple[float, float]:
    """Bytes answered per byte asked: wrk's refused request, and a refused navigation."""
    ratios = []
    wrk_request = b"GET /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port
    for request in (wrk_request, NAVIGATION):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(65536)
            head, _, body = answer.partition(b"\r\n\r\n")
            fields = dict(
                line.lower().split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line
            )
            length = int(fields[b"content-length"])
            while len(body) < length:
                body += sock.recv(65536)
        ratios.append((len(head) + 4 + length) / len(request))
    return ratios[0], ratios[1]


def _per_cpu_ratio(run: Run, reference: Run) -> str:
    ours, theirs = run.per_cpu_second, reference.per_cpu_second
    return f"{ours / theirs:.2f}" if ours and theirs else "-"


def _best(runs: list[Run]) -> Run:
    """The run least disturbed by the rest of the machine: most requests per CPU-second."""
    return max(runs, key=lambda run: run.per_cpu_second or run.rate)


def _ratio(value: float, *, reference: float) -> str:
    return f"{value / reference:.2f}" if reference > 0 else "-"


def profile(*, load: str, seconds: int = 10) -> None:
    """Sample the sidecar with py-spy under ``load`` ("pass" or "reject", or either with
    per-client prices: "priced-pass", "priced-reject"); print where time goes."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with _setup() as s, tempfile.TemporaryDirectory() as tmp:
        priced = load.startswith("priced-")
        pid, port = (s.priced_pid, s.priced) if priced else (s.sidecar_pid, s.sidecar)
        out = Path(tmp) / "profile.txt"
        argv = [py_spy, "record", "--pid", str(pid), "--duration", str(seconds)]
        # C frames too (--native; py-spy then pauses the process for each sample
        # instead of reading it running): the compiled request path, uvloop and
        # llhttp have no Python frames of their own.
        argv += ["--rate", "250", "--format", "raw", "--output", str(out), "--native"]
        url = f"http://127.0.0.1:{port}/v1/chat"
        pool = None
        if load.endswith("pass"):
            # Sized by a calibration run before sampling, so no replay is sampled.
            client = WRK_CLIENT if priced else None
            rate = s.pools.run(
                load,
                seconds=1,
                client=client,
                load=lambda pool: _wrk(url, connections=CONNECTIONS, seconds=1, pool=pool),
            ).rate
            pool = s.pools.file(int(rate * (seconds + 2) * POOL_MARGIN), client=client)
        sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wrk(url, connections=CONNECTIONS, seconds=seconds + 2, pool=pool)
        sampler.wait(timeout=60)
        own: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        total = 0
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            # "function (path/file.py:line)" → "file.py:function", lines merged.
            names = [_frame_name(frame) for frame in stack.split(";")]
            own[names[-1]] += int(count)
            for name in set(names):
                inclusive[name] += int(count)
            total += int(count)
    print(f"py-spy: {total} samples of the sidecar under {load} load")
    rows = [
        (name, f"{n / total:.1%}", f"{inclusive[name] / total:.1%}")
        for name, n in own.most_common(20)
    ]
    print(table(("function (top own time)", "own", "incl."), rows))
    print()
    busiest = [
        (name, f"{n / total:.1%}") for name, n in inclusive.most_common(40) if n < total * 0.95
    ]
    print(table(("function (top inclusive time)", "incl."), busiest))


def _frame_name(frame: str) -> str:
    function, _, where = frame.partition(" (")
    return f"{where.rsplit('/', 1)[-1].split(':')[0]}:{function}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profile",
        choices=["pass", "reject", "priced-pass", "priced-reject"],
        help="sample the sidecar with py-spy under this load instead",
    )
    args = parser.parse_args()
    if args.profile:
        profile(load=args.profile)
    else:
        main()
