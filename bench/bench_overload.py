"""Paid requests while the sidecar is flooded at twice its refusal capacity.

The sidecar is pinned to core 0 in front of an nginx upstream, with the
config's default ``overload`` settings. Its refusal capacity is measured
first (``wrk`` without solutions, closed loop). Then, for each scenario, an
open-loop flood (``bench/flood.py``) offers twice that rate for
``SECONDS``, and a legitimate client sends one request a second with a
fresh valid solution on a connection of its own, from another loopback
address: its success rate and latency are the result, next to the same
client without a flood in the same run. The floods: 50 pipelining
connections without a solution, the same with a forged one, 2,000
connections from one address (one request a write: the per-client cap),
and 2,000 connections from 200 addresses (one request a write, under every
cap: deferring while the loop lags).

    python -m bench overload
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from bench import table
from bench.bench_proxy import (
    _UPSTREAM,
    CONFIG,
    LOAD_CORE,
    TOOLS,
    Processes,
    _nginx,
    _sidecar,
    _solutions,
    _wrk,
)
from powgate import KeyRing
from powgate._protocol import decode_solution
from powgate_testbed._process import free_ports

SECONDS: Final = 20
#: Paid requests: one a second, each with a solution of its own.
PAID_RATE: Final = 1.0
#: The legitimate client's own loopback address (the flood comes from 127.0.0.1).
CLIENT_ADDRESS: Final = "127.0.0.2"


@dataclasses.dataclass
class Outcome:
    name: str
    sent: int
    ok: int
    latencies_ms: list[float]
    flood_offered: int
    flood_written: int
    connections: int
    held: int

    def row(self) -> tuple[str, ...]:
        lat = sorted(self.latencies_ms) or [float("nan")]
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        return (
            self.name,
            f"{self.flood_offered:,}",
            f"{self.flood_written:,}",
            f"{self.held:,}/{self.connections:,}" if self.connections else "-",
            f"{self.ok}/{self.sent}",
            f"{100 * self.ok / max(1, self.sent):.1f}%",
            f"{statistics.median(lat):.2f}",
            f"{p99:.2f}",
        )


def _paid(port: int, payloads: list[str]) -> tuple[int, int, list[float]]:
    """One paid request a second on a keep-alive connection of its own; (sent, ok, latencies)."""
    ok, latencies = 0, []
    sock: socket.socket | None = None
    started = time.monotonic()
    for index, payload in enumerate(payloads):
        time.sleep(max(0.0, started + index / PAID_RATE - time.monotonic()))
        request = (
            f"GET /v1/chat HTTP/1.1\r\nHost: bench\r\nX-Powgate-Solution: {payload}\r\n\r\n"
        ).encode()
        begun = time.perf_counter()
        try:
            if sock is None:
                sock = socket.create_connection(
                    ("127.0.0.1", port), timeout=5, source_address=(CLIENT_ADDRESS, 0)
                )
            sock.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"ok\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                answer += chunk
            latencies.append((time.perf_counter() - begun) * 1000)
            ok += answer.startswith(b"HTTP/1.1 200")
        except OSError:
            if sock is not None:
                sock.close()
            sock = None
    if sock is not None:
        sock.close()
    return len(payloads), ok, latencies


def _scenario(
    name: str,
    *,
    port: int,
    rate: float,
    header: str,
    payloads: list[str],
    connections: int = 50,
    addresses: int = 1,
) -> Outcome:
    flood = None
    if rate:
        flood = subprocess.Popen(
            ["taskset", "-c", LOAD_CORE, sys.executable, "-m", "bench.flood", str(port),
             str(rate), str(SECONDS), header, f"--connections={connections}",
             f"--addresses={addresses}"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )  # fmt: skip
        time.sleep(1.0)  # the flood is under way before the first paid request
    sent, ok, latencies = _paid(port, payloads)
    written = held = 0
    if flood is not None:
        out, _ = flood.communicate(timeout=60)
        words = out.split()
        written, held = int(words[1]), int(words[3])
    else:
        connections = 0
    return Outcome(name, sent, ok, latencies, int(rate * SECONDS), written, connections, held)


def main() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed (make system-deps)")
        return
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        root = Path(tmp)
        procs = Processes(root)
        try:
            keyring = KeyRing.generate()
            keys, config = root / "keyring.json", root / "config.json"
            keyring.save(keys)
            config.write_text(CONFIG.to_json())
            count = int(SECONDS * PAID_RATE)
            payloads = _solutions(keyring, 5 * count + 1)
            forged = dataclasses.replace(decode_solution(payloads[-1]), signature="0" * 64).encode()
            (upstream,) = free_ports(1)
            _nginx(
                procs,
                name="upstream",
                servers=_UPSTREAM.format(port=upstream),
                core=LOAD_CORE,
                port=upstream,
            )
            port, pid = _sidecar(
                procs, name="sidecar", upstream=f"http://127.0.0.1:{upstream}", keys=keys,
                config=config,
            )  # fmt: skip
            url = f"http://127.0.0.1:{port}/v1/chat"
            capacity = max(_wrk(url, connections=50, seconds=5, proxy=pid).rate for _ in range(2))
            junk, forged_field = "", f"X-Powgate-Solution: {forged}\r\n"
            # name, header, connections, addresses
            floods = [
                ("junk flood (no solution)", junk, 50, 1),
                ("forged-solution flood", forged_field, 50, 1),
                ("2,000 connections, one address", junk, 2000, 1),
                ("2,000 connections, 200 addresses", junk, 2000, 200),
            ]
            outcomes = [
                _scenario("no flood", port=port, rate=0, header="", payloads=payloads[:count])
            ]
            for index, (name, header, connections, addresses) in enumerate(floods, start=1):
                outcomes.append(
                    _scenario(
                        name,
                        port=port,
                        rate=2 * capacity,
                        header=header,
                        payloads=payloads[index * count : (index + 1) * count],
                        connections=connections,
                        addresses=addresses,
                    )
                )
        finally:
            procs.close()
    print(
        f"refusal capacity (wrk -c50, closed loop): {capacity:,.0f} req/s; floods offer twice "
        f"that for {SECONDS} s, open loop"
    )
    print(f"paid requests: {PAID_RATE:g}/s from {CLIENT_ADDRESS}, a fresh solution each")
    print(
        table(
            (
                "scenario",
                "flood offered",
                "flood written",
                "flood conns held",
                "paid ok",
                "success",
                "p50 ms",
                "p99 ms",
            ),
            [outcome.row() for outcome in outcomes],
        )
    )
    print("goal: during each flood, success >= 99 % and p99 <= 50 ms")
