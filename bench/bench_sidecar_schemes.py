"""A real ``powgate sidecar`` under each scheme: what passing and refusing cost it.

For ``SHA-256`` (ALTCHA v1), ``ARGON2ID`` (ALTCHA PoW v2 at the registry's
default try) and ``DeepSeekHashV1``, one sidecar process in front of a
loopback upstream that answers ``200 ok``, and this process as the client
(16 requests in flight, aiohttp; the client shares the machine's 2 cores
with the sidecar, so rates are relative). Rows, each over a fixed number of
requests:

* **pass**: a fresh valid solution per request (solved here beforehand, at
  the scheme's smallest difficulty, so that for v2 the verification is one
  try at the policy's parameters);
* **reject, missing**: no solution (a 428 with a fresh challenge);
* **reject, forged**: a tampered signature (refused before any derivation);
* **reject, replayed**: a spent valid solution again (also before any
  derivation);
* **reject, made-up key** (v2 only): a genuine fresh challenge with a key
  that only has the right prefix — the one refusal that costs a derivation.

The sidecar's pool is its default (2 threads, 16 places): what it cannot
take at once it refuses as ``verifier_busy``, counted in the last column
from the sidecar's own metrics.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Final

import aiohttp

from bench import table
from powgate import ChallengeV2, Issuer, KeyRing, solve_challenge
from powgate.config import RouteConfig, SidecarConfig
from powgate_testbed._process import free_ports

SCHEMES: Final = ("SHA-256", "ARGON2ID", "DeepSeekHashV1")
POLICY: Final = "bench/schemes"
BINDING: Final = f"{POLICY}:chat"
REQUESTS: Final = 400
#: v2 payloads cost a derivation each to make: fewer of them.
V2_PASSES: Final = 120
CONCURRENCY: Final = 16


def _config(algorithm: str) -> SidecarConfig:
    return SidecarConfig(
        policy=POLICY,
        algorithm=algorithm,
        difficulty=2,
        min_difficulty=1,
        routes=[RouteConfig(name="chat", paths=["/v1/*"], methods=["POST"])],
    )


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")


def _tampered(payload: str) -> str:
    doc = json.loads(base64.b64decode(payload))
    if "solution" in doc:
        doc["challenge"]["signature"] = "0" * 64
    else:
        mac, sep, query = doc["signature"].partition("?")
        doc["signature"] = "0" * len(mac) + sep + query
    return base64.b64encode(json.dumps(doc).encode()).decode()


def _made_up(challenge: ChallengeV2) -> str:
    key = bytes.fromhex(challenge.key_prefix.ljust(2 * challenge.params.key_length, "0"))
    return challenge.solution(0, key).encode()


async def _drive(port: int, headers: list[dict[str, str]]) -> tuple[float, dict[int, int]]:
    """Send one request per header set, ``CONCURRENCY`` at a time; (requests/s, statuses)."""
    statuses: dict[int, int] = {}
    queue = list(reversed(headers))
    url = f"http://127.0.0.1:{port}/v1/chat"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:

        async def worker() -> None:
            while queue:
                extra = queue.pop()
                async with session.post(url, data=b"{}", headers=extra) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return len(headers) / (time.perf_counter() - started), statuses


def _busy(metrics_port: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith("powgate_requests_total{") and 'reason="verifier_busy"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _rows(algorithm: str, ring: KeyRing, folder: Path, upstream: int) -> list[tuple[str, ...]]:
    issuer = Issuer(keyring=ring, algorithm=algorithm)

    def fresh(count: int) -> list[str]:
        out = []
        for _ in range(count):
            solved = solve_challenge(issuer.issue(difficulty=2, ttl=600, binding=BINDING))
            out.append(solved.payload)
        return out

    header = "x-ds-pow-response" if algorithm == "DeepSeekHashV1" else "X-Powgate-Solution"
    passes = fresh(V2_PASSES if algorithm == "ARGON2ID" else REQUESTS)
    spent = passes[0]
    cases: dict[str, list[dict[str, str]]] = {
        "pass": [{header: p} for p in passes],
        "reject, missing": [{} for _ in range(REQUESTS)],
        "reject, forged": [{header: _tampered(p)} for p in fresh(REQUESTS // 4)] * 4,
        "reject, replayed": [{header: spent} for _ in range(REQUESTS)],
    }
    if algorithm == "ARGON2ID":
        made_up = []
        for _ in range(V2_PASSES):
            challenge = issuer.issue(difficulty=2, ttl=600, binding=BINDING)
            assert isinstance(challenge, ChallengeV2)
            made_up.append({header: _made_up(challenge)})
        cases["reject, made-up key"] = made_up
    config = folder / f"{algorithm.replace('/', '-')}.json"
    config.write_text(_config(algorithm).to_json())
    keys = folder / "keyring.json"
    ring.save(keys)
    port, metrics = free_ports(2)
    env = {
        **os.environ,
        "POWGATE_LISTEN": f"127.0.0.1:{port}",
        "POWGATE_UPSTREAM": f"http://127.0.0.1:{upstream}",
        "POWGATE_METRICS_LISTEN": f"127.0.0.1:{metrics}",
        "POWGATE_KEY_FILE": str(keys),
        "POWGATE_CONFIG_FILE": str(config),
        "POWGATE_LOG_LEVEL": "warning",
    }
    powgate = str(Path(sys.executable).with_name("powgate"))
    log = (folder / f"sidecar-{algorithm.replace('/', '-')}.log").open("wb")
    process = subprocess.Popen([powgate, "sidecar"], env=env, stdout=log, stderr=log)
    rows = []
    try:
        _wait_ready(metrics)
        # The first pass request is the spent one of the replay row.
        asyncio.run(_drive(port, [{header: spent}]))
        busy_before = _busy(metrics)
        for name, headers in cases.items():
            if name == "pass":
                headers = headers[1:]
            rate, statuses = asyncio.run(_drive(port, headers))
            busy = _busy(metrics)
            seen = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items()))
            rows.append((algorithm, name, f"{rate:,.0f}", seen, str(busy - busy_before)))
            busy_before = busy
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
    return rows


def _wait_ready(metrics_port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the sidecar never became ready")


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    upstream = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ring = KeyRing.generate()
    rows: list[tuple[str, ...]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="powgate-bench-") as folder:
            for algorithm in SCHEMES:
                rows += _rows(algorithm, ring, Path(folder), upstream)
    finally:
        server.shutdown()
        server.server_close()
    print(f"{CONCURRENCY} requests in flight from this process; rates are requests/s")
    header = ("scheme", "requests", "rate", "statuses", "verifier_busy")
    print(table(header, rows))


if __name__ == "__main__":
    main()
