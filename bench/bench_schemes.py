"""Challenge schemes side by side: what one costs a browser, Python, native code and a verifier.

For every scheme at its default parameters of one try, on one core each:

* **browser**: powgate's ``solver.js`` in Debian's headless Chromium, in one
  Web Worker, measured in the page (tries between the first and the last
  progress report, over their time: worker start-up is left out);
* **Python**: powgate's Python solver (ALTCHA v1: ``solve``, from a
  midstate; DeepSeek: ``solve_deepseek``, the C extension; v2: the key
  derivation ``solve_v2`` makes per try);
* **native**: the C extension's search loops: for SHA-256 a native ALTCHA v1
  solver's (``sha256_search``: OpenSSL's SHA-256, SHA extensions where the
  CPU has them, from a midstate of the salt, the decimal counter incremented
  in place; ``openssl speed -bytes 64 sha256``, two compressions a hash, is
  printed beside it for reference), DeepSeekHashV1's, and for v2 the C
  libraries themselves (OpenSSL's PBKDF2 and scrypt, libargon2 through
  argon2-cffi), which are what the Python solver calls, so its two columns
  agree there.

Machines are shared and noisy: every rate is the best of two rounds
(browser: the page measures every scheme twice; Python and native: once
before and once after the browser), so load drifts hit all alike.

Then, at the difficulty that costs the browser about one second on average
(``D = 2 * browser rate``, the mean work being ``D / 2`` in every scheme),
the expected solve time of each, the native/browser ratio, and what one
verification of a valid payload costs the server (best of five; the payload
is solved here by the Python solver).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Final

from bench import best_seconds, openssl_sha256_rate, table
from powgate import (
    Challenge,
    ChallengeV2,
    DeepSeekChallenge,
    Issuer,
    KdfAlgorithm,
    KdfParams,
    KeyRing,
    Verifier,
    _altcha2,
    _deepseek_hash,
    _native,
    solve,
    solve_challenge,
    solve_deepseek,
)
from powgate_sidecar._static import ASSETS
from powgate_testbed._process import stop_all
from powgate_testbed.chromium import chromium_binary, open_headless

#: The schemes: label → (algorithm, parameters of one try; None: the registry's defaults).
SCHEMES: Final[dict[str, tuple[str, KdfParams | None]]] = {
    "SHA-256": ("SHA-256", None),
    "DeepSeekHashV1": ("DeepSeekHashV1", None),
    "PBKDF2/SHA-256": ("PBKDF2/SHA-256", None),
    "ITERATED/SHA-256": ("ITERATED/SHA-256", None),
    "SCRYPT": ("SCRYPT", None),
    "ARGON2ID": ("ARGON2ID", None),
    # OWASP's first-listed variant, for comparison with the default.
    "ARGON2ID 19 MiB x 2": ("ARGON2ID", KdfParams(cost=2, memory_cost=19_456, parallelism=1)),
}
ROUNDS: Final = 2
#: Each browser measurement lasts at least this long and covers at least this many tries.
BROWSER_SECONDS: Final = 3.0
BROWSER_MIN_TRIES: Final = 12
#: Candidates of the Python and native bounded searches (v1, DeepSeek).
SEARCH_RANGE: Final = 1_000_000
#: v2: derivations are timed for at least this long.
KDF_SECONDS: Final = 2.0
BROWSER_TIMEOUT: Final = 300.0
#: The browser's budget that sets the difficulty of the comparison.
TARGET_SECONDS: Final = 1.0
STATIC = resources.files("powgate") / "static"
PAGE: Final = """<!doctype html><meta charset="utf-8"><title>bench</title>
<script src="/.well-known/powgate/solver.js"></script>
<script>
async function measure(c) {
  var ctrl = new AbortController();
  var points = [];
  var run = powgate.solve(c.challenge, {
    workers: 1,
    signal: ctrl.signal,
    onProgress: function (p) {
      points.push([performance.now(), p.hashes]);
      var first = points[0];
      if (points.length > 2 && performance.now() - first[0] >= c.seconds * 1000 &&
          p.hashes - first[1] >= c.min_tries) ctrl.abort();
    },
  });
  try {
    await run;
    return {name: c.name, error: 'solved an unsolvable challenge'};
  } catch (err) {
    if (err.name !== 'AbortError') return {name: c.name, error: String(err.message || err)};
  }
  var a = points[0], b = points[points.length - 1];
  return {name: c.name, tries: b[1] - a[1], seconds: (b[0] - a[0]) / 1000,
          agent: navigator.userAgent};
}
fetch('/cases').then((r) => r.json()).then(async (cases) => {
  var results = [];
  for (var round = 0; round < %(rounds)d; round++) {
    for (var c of cases) results.push(await measure(c));
  }
  await fetch('/report', {method: 'POST', body: JSON.stringify(results)});
});
</script>
"""


@dataclasses.dataclass
class Rates:
    """Tries per second on one core."""

    browser: float
    python: float
    native: float


def main() -> None:
    ring = KeyRing.generate()
    issuers = {
        label: Issuer(keyring=ring, algorithm=name, params=params)
        for label, (name, params) in SCHEMES.items()
    }
    before = {label: _local_rates(issuer) for label, issuer in issuers.items()}
    browser = _browser_rates(issuers)
    after = {label: _local_rates(issuer) for label, issuer in issuers.items()}
    rates = {
        label: Rates(
            browser[label],
            max(before[label][0], after[label][0]),
            max(before[label][1], after[label][1]),
        )
        for label in issuers
    }
    verifier = Verifier(keyring=ring, replay=None)
    print(f"one core each, best of {ROUNDS} rounds; browser: {browser['agent']}")
    print(table(("scheme", "one try", "browser /s", "Python /s", "native /s", "native/browser"),
                [(label, _one_try(issuers[label]), _rate(r.browser), _rate(r.python),
                  _rate(r.native), f"{r.native / r.browser:.1f}x")
                 for label, r in rates.items()]))  # fmt: skip
    openssl = openssl_sha256_rate()
    if openssl is not None:
        print(f"reference: openssl speed -bytes 64 sha256 (two compressions) {openssl:,.0f}/s")
    print()
    print(f"at the difficulty D that costs the browser ~{TARGET_SECONDS:.0f} s on average:")
    rows = []
    for label, r in rates.items():
        difficulty = max(2, round(2 * r.browser * TARGET_SECONDS))
        work = difficulty / 2
        verify = _verify_seconds(issuers[label], verifier, difficulty)
        rows.append((
            label, f"{difficulty:,}", f"{work / r.browser:.2f} s", f"{work / r.python:.3f} s",
            f"{work / r.native:.3f} s", _duration(verify), f"{work / r.native / verify:,.0f}x",
        ))  # fmt: skip
    header = ("scheme", "D", "browser", "Python", "native", "verify", "native solve/verify")
    print(table(header, rows))


def _one_try(issuer: Issuer) -> str:
    p = issuer.params
    if p is None:
        return "1 hash"
    if issuer.algorithm.name == "ARGON2ID":
        return f"t={p.cost} m={p.memory_cost} KiB p={p.parallelism}"
    if issuer.algorithm.name == "SCRYPT":
        return f"N={p.cost} r={p.memory_cost} p={p.parallelism}"
    return f"{p.cost} iterations"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _duration(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.1f} ms"


# -- the browser ---------------------------------------------------------------


def _unsolvable(issuer: Issuer) -> dict[str, Any]:
    """A real issued challenge that no search finishes: only its rate is of interest."""
    name = issuer.algorithm.name
    if name == "DeepSeekHashV1":
        issued = issuer.issue(difficulty=10**9, ttl=600, target_path="/api/v0/chat/completion")
        assert isinstance(issued, DeepSeekChallenge)
        return dataclasses.replace(issued, challenge="00" * 32).to_dict()
    if isinstance(issuer.algorithm, KdfAlgorithm):
        # Tries at the policy's parameters (D = 32: one prefix digit, factor 1)
        # with a prefix no derived key is likely to have in time.
        issued = issuer.issue(difficulty=32, ttl=600)
        assert isinstance(issued, ChallengeV2)
        raw = {**issued.raw, "keyPrefix": "fffffff"}
        return {"parameters": raw, "signature": issued.signature}
    issued = issuer.issue(difficulty=10**9, ttl=600)
    assert isinstance(issued, Challenge)
    return dataclasses.replace(issued, challenge="00" * 32).to_dict()


def _browser_rates(issuers: dict[str, Issuer]) -> dict[str, Any]:
    binary = chromium_binary()
    if binary is None:
        raise SystemExit("bench_schemes needs Debian's chromium (make system-deps)")
    cases = [
        {
            "name": label,
            "challenge": _unsolvable(issuer),
            "seconds": BROWSER_SECONDS,
            "min_tries": BROWSER_MIN_TRIES,
        }
        for label, issuer in issuers.items()
    ]
    reports: list[list[dict[str, Any]]] = []
    done = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

        def _send(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            name = self.path.removeprefix("/.well-known/powgate/")
            if name in ASSETS:
                file, media_type = ASSETS[name]
                self._send(STATIC.joinpath(*file.split("/")).read_bytes(), media_type)
            elif self.path == "/cases":
                self._send(json.dumps(cases).encode(), "application/json")
            else:
                self._send((PAGE % {"rounds": ROUNDS}).encode(), "text/html; charset=utf-8")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            reports.append(json.loads(body))
            self._send(b"", "text/plain")
            done.set()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="powgate-bench-") as folder:
        log = Path(folder) / "chromium.log"
        browser = open_headless(
            binary, f"http://127.0.0.1:{server.server_address[1]}/", log=log,
            profile=Path(folder) / "profile",
        )  # fmt: skip
        try:
            if not done.wait(BROWSER_TIMEOUT):
                raise SystemExit(f"the browser never reported; its log:\n{log.read_text()[-2000:]}")
        finally:
            stop_all([browser], grace=10)
            server.shutdown()
            server.server_close()
    rates: dict[str, Any] = {}
    for result in reports[0]:
        if "error" in result:
            raise SystemExit(f"browser, {result['name']}: {result['error']}")
        rate = result["tries"] / result["seconds"]
        rates[result["name"]] = max(rate, rates.get(result["name"], 0.0))
        rates["agent"] = result["agent"]
    return rates


# -- Python and native -----------------------------------------------------------


def _local_rates(issuer: Issuer) -> tuple[float, float]:
    """(Python solver, native) tries per second for one scheme."""
    algorithm = issuer.algorithm
    if isinstance(algorithm, KdfAlgorithm):
        assert issuer.params is not None
        rate = _kdf_rate(algorithm, issuer.params)
        return rate, rate
    if algorithm.name == "DeepSeekHashV1":
        issued = issuer.issue(difficulty=SEARCH_RANGE, ttl=600)
        assert isinstance(issued, DeepSeekChallenge)
        last = SEARCH_RANGE - 1
        work = _deepseek_hash.hash_v1(f"{issued.prefix}{last}".encode())
        worst = dataclasses.replace(issued, challenge=work.hex())
        python = SEARCH_RANGE / best_seconds(lambda: solve_deepseek(worst), repeat=3)
        prefix = issued.prefix.encode()
        native = SEARCH_RANGE / best_seconds(
            lambda: _deepseek_hash.search(prefix, work, 0, SEARCH_RANGE), repeat=3
        )
        return python, native
    issued = issuer.issue(difficulty=SEARCH_RANGE, ttl=600)
    assert isinstance(issued, Challenge)
    work_hex = hashlib.sha256(f"{issued.salt}{SEARCH_RANGE}".encode()).hexdigest()
    worst_v1 = dataclasses.replace(issued, challenge=work_hex)
    python = (SEARCH_RANGE + 1) / best_seconds(lambda: solve(worst_v1), repeat=3)
    search = getattr(_native, "sha256_search", None)
    if search is None:
        raise SystemExit("bench_schemes needs powgate._native built with OpenSSL (make venv)")
    salt, work = issued.salt.encode(), bytes.fromhex(work_hex)
    native = (SEARCH_RANGE + 1) / best_seconds(
        lambda: search(salt, work, 0, SEARCH_RANGE + 1), repeat=3
    )
    return python, native


def _kdf_rate(algorithm: KdfAlgorithm, params: KdfParams) -> float:
    """Derivations per second at ``params``, as ``solve_v2`` makes them."""
    nonce, salt = b"\x01" * 16, b"\x02" * 16
    tries = 0
    started = time.perf_counter()
    while time.perf_counter() - started < KDF_SECONDS or tries < 3:
        algorithm.derive(params, salt, _altcha2.password(nonce, tries))
        tries += 1
    return tries / (time.perf_counter() - started)


def _verify_seconds(issuer: Issuer, verifier: Verifier, difficulty: int) -> float:
    """What verifying one valid payload at ``difficulty`` costs (no replay cache: repeatable)."""
    challenge = issuer.issue(difficulty=difficulty, ttl=600)
    payload = solve_challenge(challenge, workers=2).payload
    verify: Callable[[], object] = lambda: verifier.verify(payload)  # noqa: E731
    assert verifier.verify(payload).ok
    return best_seconds(verify, repeat=5)


if __name__ == "__main__":
    main()
