"""What the shared replay store adds to the sidecar's pass path, in one run.

Two sidecars of one policy before the same upstream (an nginx answering
``200 ok``), alike but for the replay store: one remembers solutions in its
own cache only, the other also claims each in a Redis server on loopback
(``SET NX PX``, Debian's ``redis-server`` started for the run). The sidecars
are pinned to core 0; ``wrk``, the upstream and Redis share core 1. Every
request carries a fresh valid solution. Rows, each the best of ``ROUNDS``
interleaved runs:

* loaded pass throughput (``wrk -c50``) and requests per CPU-second of the
  sidecar, with the ratio store / local;
* unloaded latency (``wrk -c1``): p50 and p99, and what the store adds (the
  difference) — one loopback round trip to Redis plus the client's work;
* the refusal path while the store is down (``whenUnavailable: Refuse``):
  what a request costs when no claim waits for the store.

The store here is on the same host; across a network each claim adds the
round trip to the store on top (typically 0.1 to 0.5 ms inside a cluster).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench import table
from bench.bench_proxy import (
    _UPSTREAM,
    CONFIG,
    CONNECTIONS,
    LOAD_CORE,
    ROUNDS,
    SECONDS,
    TOOLS,
    Processes,
    Run,
    _best,
    _nginx,
    _sidecar,
    _solutions,
    _wrk,
)
from powgate import KeyRing
from powgate.config import REPLAY_STORE_CONTRACT, ReplayStoreSpec, SidecarConfig
from powgate_testbed._process import free_ports
from powgate_testbed.store_server import StoreNotFoundError, StoreServer, find_store_server

#: Solutions per loaded run (more than a sidecar passes in SECONDS) and per unloaded run.
POOL: Final = 60_000
QUIET_POOL: Final = 10_000
QUIET_SECONDS: Final = 3


def store_config(address: str) -> SidecarConfig:
    return CONFIG.model_copy(
        update={
            "contract": REPLAY_STORE_CONTRACT,
            "replay_store": ReplayStoreSpec(address=address, timeout_milliseconds=100),
        }
    )


@dataclass
class Setup:
    upstream: int
    local: int
    local_pid: int
    shared: int
    shared_pid: int
    #: A sidecar whose store is gone (its address answers nothing): the refusal path.
    orphan: int
    orphan_pid: int
    #: Per kind ("local", "shared"): ROUNDS loaded pools, then ROUNDS unloaded ones.
    pools: dict[str, list[Path]]


@contextlib.contextmanager
def _servers() -> Iterator[Setup]:
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        root = Path(tmp)
        procs = Processes(root)
        store = StoreServer(root=root / "store")
        try:
            store.start()
            os.sched_setaffinity(store.pid, {int(LOAD_CORE)})
            keyring = KeyRing.generate()
            keys = root / "keyring.json"
            keyring.save(keys)
            configs = {
                "local": CONFIG,
                "shared": store_config(store.address),
                "orphan": store_config(f"127.0.0.1:{free_ports(1)[0]}"),
            }
            for name, config in configs.items():
                (root / name).mkdir()
                (root / name / "config.json").write_text(config.to_json())
            sizes = [POOL] * ROUNDS + [QUIET_POOL] * ROUNDS
            pools: dict[str, list[Path]] = {}
            for kind in ("local", "shared"):
                solutions = _solutions(keyring, sum(sizes))
                pools[kind], start = [], 0
                for index, size in enumerate(sizes):
                    pools[kind].append(root / f"{kind}-pool-{index}.txt")
                    pools[kind][-1].write_text("\n".join(solutions[start : start + size]) + "\n")
                    start += size
            (upstream,) = free_ports(1)
            _nginx(
                procs,
                name="upstream",
                servers=_UPSTREAM.format(port=upstream),
                core=LOAD_CORE,
                port=upstream,
            )
            started = {
                name: _sidecar(
                    procs,
                    name=f"sidecar-{name}",
                    upstream=f"http://127.0.0.1:{upstream}",
                    keys=keys,
                    config=root / name / "config.json",
                )
                for name in configs
            }
            yield Setup(
                upstream=upstream,
                local=started["local"][0],
                local_pid=started["local"][1],
                shared=started["shared"][0],
                shared_pid=started["shared"][1],
                orphan=started["orphan"][0],
                orphan_pid=started["orphan"][1],
                pools=pools,
            )
        finally:
            procs.close()
            store.stop()


def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def main() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    try:
        find_store_server()
    except StoreNotFoundError:
        missing.append("redis-server")
    if missing:
        print(f"skipped: {', '.join(missing)} not installed (make system-deps)")
        return
    with _servers() as s:
        url = "http://127.0.0.1:{}/v1/chat"
        loaded = functools.partial(_wrk, connections=CONNECTIONS, seconds=SECONDS)
        quiet = functools.partial(_wrk, connections=1, seconds=QUIET_SECONDS)
        loaded(url.format(s.local), seconds=1)  # warm-up (refusals: no pool)
        runs: dict[str, list[Run]] = collections.defaultdict(list)
        ports = {"local": (s.local, s.local_pid), "shared": (s.shared, s.shared_pid)}
        for round_ in range(ROUNDS):
            for kind, (port, pid) in ports.items():
                pool = s.pools[kind][round_]
                runs[kind].append(loaded(url.format(port), proxy=pid, pool=pool))
            for kind, (port, _) in ports.items():
                pool = s.pools[kind][ROUNDS + round_]
                runs[f"quiet_{kind}"].append(quiet(url.format(port), pool=pool))
            # Refusals while the store is down: the local sidecar's pool is spent by now,
            # so its solutions are valid (signature, expiry) and reach the claim.
            runs["down"].append(
                loaded(url.format(s.orphan), proxy=s.orphan_pid, pool=s.pools["local"][round_])
            )
    local, shared, down = _best(runs["local"]), _best(runs["shared"]), _best(runs["down"])
    quiet_local = min(runs["quiet_local"], key=lambda run: run.p50_ms)
    quiet_shared = min(runs["quiet_shared"], key=lambda run: run.p50_ms)
    for name, run in (("local", local), ("shared", shared)):
        if run.status_errors or run.socket_errors:
            print(f"warning: {run.status_errors + run.socket_errors} {name} pass requests failed")
    print(
        f"pass path with and without the shared replay store: wrk -t1 -c{CONNECTIONS} "
        f"-d{SECONDS}s (loaded) and -c1 -d{QUIET_SECONDS}s (unloaded), best of {ROUNDS} "
        f"interleaved runs; sidecars on core 0, wrk + upstream + redis-server on core {LOAD_CORE}"
    )

    def per_cpu(run: Run) -> str:
        value = run.per_cpu_second
        return "-" if value is None else _fmt(value)

    def ratio(run: Run) -> str:
        ours, theirs = run.per_cpu_second, local.per_cpu_second
        return f"{ours / theirs:.2f}" if ours and theirs else "-"

    rows = [
        ("sidecar, local cache only (reference)", _fmt(local.rate), per_cpu(local),
         _fmt(local.p50_ms, 2), _fmt(local.p99_ms, 2), "1.00", str(local.status_errors)),
        ("sidecar, local cache + shared store", _fmt(shared.rate), per_cpu(shared),
         _fmt(shared.p50_ms, 2), _fmt(shared.p99_ms, 2), ratio(shared),
         str(shared.status_errors)),
        ("store down, Refuse: valid solutions refused", _fmt(down.rate), per_cpu(down),
         _fmt(down.p50_ms, 2), _fmt(down.p99_ms, 2), ratio(down),
         str(down.requests - down.status_errors)),
    ]  # fmt: skip
    header = ("loaded", "req/s", "req/CPU-s", "p50 ms", "p99 ms", "x local", "unexpected")
    print(table(header, rows))
    print()
    added_p50 = quiet_shared.p50_ms - quiet_local.p50_ms
    added_p99 = quiet_shared.p99_ms - quiet_local.p99_ms
    print(
        table(
            ("unloaded (one connection)", "p50 ms", "p99 ms", "req/s"),
            [
                (
                    "local cache only",
                    _fmt(quiet_local.p50_ms, 3),
                    _fmt(quiet_local.p99_ms, 3),
                    _fmt(quiet_local.rate),
                ),
                (
                    "local cache + shared store",
                    _fmt(quiet_shared.p50_ms, 3),
                    _fmt(quiet_shared.p99_ms, 3),
                    _fmt(quiet_shared.rate),
                ),
                ("added by the store", f"{added_p50:+.3f}", f"{added_p99:+.3f}", "-"),
            ],
        )
    )
