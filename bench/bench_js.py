"""Browser solver speed: the JavaScript engines in Node next to native hashing.

The JavaScript solver (``powgate/static/solver.js``) is what a legitimate
browser user pays with, so its hashes/s define "browser speed" for the
traffic generator. Measured in one run, on one challenge whose number is
``maxnumber`` (the worst case, so every engine hashes the whole range):

* pure-JS SHA-256 from a midstate, one thread, and the same across all cores
  in worker threads (as a page does with Web Workers);
* WebCrypto ``crypto.subtle.digest`` per candidate (the naive approach);
* the Python fast solver (``powgate.solve``) on one core;
* ``openssl speed -bytes 64 sha256`` as the native reference.

Ratios are to OpenSSL's 64-byte hash rate.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

from powgate import Challenge, Issuer, KeyRing, solve

#: Candidates for the JS and Python runs: a few seconds each.
DIFFICULTY = 3_000_000
#: WebCrypto is two orders of magnitude slower; a smaller range suffices.
WEBCRYPTO_RANGE = 60_000
OPENSSL_SECONDS = 3
NODE_SCRIPT = Path(__file__).with_name("bench_js_node.js")


def _worst_case_challenge() -> Challenge:
    """A real issued salt, with the work set to ``maxnumber`` itself."""
    issued = Issuer(keyring=KeyRing.generate()).issue(difficulty=DIFFICULTY, ttl=600)
    work = hashlib.sha256(f"{issued.salt}{DIFFICULTY}".encode()).hexdigest()
    # Solvers do not check the signature, so the issued one can stay.
    return Challenge(issued.algorithm, work, DIFFICULTY, issued.salt, issued.signature)


def _openssl_rate() -> float | None:
    """SHA-256 hashes/s of 64-byte messages by ``openssl speed``."""
    if shutil.which("openssl") is None:
        return None
    cmd = ["openssl", "speed", "-seconds", str(OPENSSL_SECONDS), "-bytes", "64", "sha256"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    # The result row: "sha256   123456.78k" (thousands of bytes per second).
    match = re.search(r"^sha256\s+([\d.]+)k\s*$", out, re.MULTILINE)
    return None if match is None else float(match.group(1)) * 1000 / 64


def _node_rates(challenge: Challenge) -> dict[str, float]:
    node = shutil.which("node")
    if node is None:
        return {}
    cmd = [node, str(NODE_SCRIPT), challenge.to_json(), str(WEBCRYPTO_RANGE)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {f"Node {row['name']}": row["hashes"] / row["seconds"] for row in rows}


def main() -> None:
    challenge = _worst_case_challenge()
    reference = _openssl_rate()
    rates = _node_rates(challenge)
    if not rates:
        print("node not found: the JS rows are missing (make system-deps installs it)")
    python = solve(challenge)
    rates["Python fast solver, 1 core"] = python.hashes / python.seconds
    print(f"salt {len(challenge.salt)} bytes, {DIFFICULTY:,} candidates per run")
    print(f"{'solver':<34} {'hashes/s':>14} {'vs openssl':>11}")
    for name, rate in rates.items():
        ratio = f"{rate / reference:10.3f}x" if reference else "          -"
        print(f"{name:<34} {rate:>14,.0f} {ratio}")
    if reference is None:
        print("openssl not found: no reference row")
    else:
        print(f"{'openssl speed sha256, 64 B':<34} {reference:>14,.0f} {1:10.3f}x")


if __name__ == "__main__":
    main()
