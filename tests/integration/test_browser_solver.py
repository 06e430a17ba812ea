"""The browser solver, interstitial and demo page in headless Chromium.

A loopback stdlib HTTP server plays the sidecar's part for the browser: it
serves ``powgate/static`` under ``/.well-known/powgate/``, issues challenges
with :class:`powgate.Issuer` and judges what the browser sends back with
:class:`powgate.Verifier`. Chromium runs the real files, Web Workers
included; nothing on the browser side is simulated.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import pytest
from _browser import OpenPage, wait_for_page

from powgate import Issuer, KdfParams, KeyRing, MemoryReplayCache, Reason, Verdict, Verifier
from powgate_sidecar._static import ASSETS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

STATIC = resources.files("powgate") / "static"
#: Every family, at parameters that keep a browser solve within a second or two.
SCHEMES: dict[str, tuple[int, KdfParams | None]] = {
    "SHA-256": (300_000, None),
    "PBKDF2/SHA-256": (64, KdfParams(cost=1000)),
    "SCRYPT": (64, KdfParams(cost=1024, memory_cost=8, parallelism=1)),
    "ARGON2ID": (64, KdfParams(cost=1, memory_cost=4096, parallelism=1)),
    "DeepSeekHashV1": (200_000, None),
}
WIDGET_PAGE = """<!doctype html><meta charset="utf-8"><title>widget</title>
<script type="module" src="/vendor/altcha.js"></script>
<script type="module">
// The widget bundles SHA and PBKDF2; Argon2id and scrypt workers are loaded apart.
$altcha.algorithms.set('ARGON2ID', () => new Worker('/vendor/workers/argon2id.js'));
$altcha.algorithms.set('SCRYPT', () => new Worker('/vendor/workers/scrypt.js'));
</script>
<form><altcha-widget challenge="/challenge" auto="onload" workers="2"></altcha-widget></form>
<script type="module">
var widget = document.querySelector('altcha-widget');
widget.addEventListener('statechange', function (ev) {
  var state = ev.detail.state;
  if (state === 'verified' || state === 'error' || state === 'expired') {
    fetch('/report', {method: 'POST', body: JSON.stringify(
      {state: state, payload: ev.detail.payload || null, shown: widget.innerText})});
  }
});
</script>
"""
TEST_PAGE = """<!doctype html><meta charset="utf-8"><title>solve</title>
<script src="/.well-known/powgate/solver.js"></script>
<script>
fetch('/challenge').then((r) => r.json())
  .then((challenge) => powgate.solve(challenge, {workers: 2}))
  .then((result) => ({result}), (err) => ({error: String(err && err.message || err)}))
  .then((report) => fetch('/report', {method: 'POST', body: JSON.stringify(report)}));
</script>
"""


@dataclass
class Site:
    """What the server hands out and what it has seen."""

    issuer: Issuer
    verifier: Verifier
    difficulty: int
    widget: dict[str, bytes] = field(default_factory=dict)
    reports: list[dict[str, object]] = field(default_factory=list)
    verdicts: list[tuple[str, Verdict, dict[str, str]]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def challenge_json(self) -> str:
        return self.issuer.issue(difficulty=self.difficulty, ttl=120).to_json()


class Handler(BaseHTTPRequestHandler):
    site: Site

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: pytest shows the browser's log on failure instead."""

    def _send(self, *, status: int, body: str, content_type: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def _judge(self, *, where: str, payload: str | None) -> Verdict:
        verdict = self.site.verifier.verify(payload)
        extra = {
            name.lower(): value
            for name, value in self.headers.items()
            if name.lower().startswith(("x-powgate", "x-ds-pow"))
        }
        self.site.verdicts.append((where, verdict, extra))
        return verdict

    def do_GET(self) -> None:
        path, _, _ = self.path.partition("?")
        name = path.removeprefix("/.well-known/powgate/")
        if name in ASSETS:
            file, media_type = ASSETS[name]
            body = STATIC.joinpath(*file.split("/")).read_text()
            self._send(status=200, body=body, content_type=media_type)
        elif path.removeprefix("/vendor/") in self.site.widget:
            body = self.site.widget[path.removeprefix("/vendor/")].decode()
            self._send(status=200, body=body, content_type="text/javascript; charset=utf-8")
        elif path == "/widget.html":
            self._send(status=200, body=WIDGET_PAGE, content_type="text/html; charset=utf-8")
        elif path == "/demo.html":
            self._send(
                status=200,
                body=(STATIC / "demo.html").read_text(),
                content_type="text/html; charset=utf-8",
            )
        elif path == "/solve.html":
            self._send(status=200, body=TEST_PAGE, content_type="text/html; charset=utf-8")
        elif path in ("/challenge", "/.well-known/powgate/challenge"):
            self._send(status=200, body=self.site.challenge_json(), content_type="application/json")
        elif path == "/api":
            self._api()
        elif path == "/app/page":
            self._navigation()
        else:
            self._send(status=404, body="not found", content_type="text/plain")

    def do_POST(self) -> None:
        if self.path != "/report":
            self._send(status=404, body="not found", content_type="text/plain")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.site.reports.append(json.loads(body))
        self._send(status=204, body="", content_type="text/plain")
        self.site.done.set()

    def _api(self) -> None:
        payload = self.headers.get("X-Powgate-Solution") or self.headers.get("x-ds-pow-response")
        if payload and self._judge(where="api", payload=payload).ok:
            self._send(
                status=200, body='{"object":"list","data":[]}', content_type="application/json"
            )
            self.site.done.set()
            return
        self._send(status=428, body=self.site.challenge_json(), content_type="application/json")

    def _navigation(self) -> None:
        # What the sidecar does for a browser navigation: the cookie set by
        # the interstitial is a solution; without a valid one, the page.
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        morsel = cookie.get("powgate_solution")
        if morsel is not None and self._judge(where="cookie", payload=morsel.value).ok:
            self._send(
                status=200,
                body="<!doctype html><title>app</title><p>welcome</p>",
                content_type="text/html",
            )
            self.site.done.set()
            return
        # The page is static: its script fetches the challenge.
        self._send(
            status=428,
            body=(STATIC / "interstitial.html").read_text(),
            content_type="text/html; charset=utf-8",
        )


@pytest.fixture(params=["SHA-256"])
def site(request: pytest.FixtureRequest) -> Site:
    """A site issuing challenges of one scheme (parametrize ``site`` indirectly for others)."""
    keyring = KeyRing.generate()
    difficulty, params = SCHEMES[request.param]
    return Site(
        issuer=Issuer(keyring=keyring, algorithm=request.param, params=params),
        verifier=Verifier(keyring=keyring, replay=MemoryReplayCache()),
        difficulty=difficulty,
    )


@pytest.fixture
def base_url(site: Site) -> Iterator[str]:
    handler = type("SiteHandler", (Handler,), {"site": site})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _wait(site: Site, log: Path) -> None:
    wait_for_page(site.done.wait, log=log, what="the page's report")


@pytest.mark.parametrize("site", sorted(SCHEMES), indirect=True)
def test_solver_in_workers_is_accepted_by_the_verifier(
    site: Site, base_url: str, open_page: OpenPage
) -> None:
    log = open_page(f"{base_url}/solve.html")
    _wait(site, log)
    (report,) = site.reports
    assert "error" not in report, report
    result = report["result"]
    assert isinstance(result, dict)
    assert result["workers"] == 2
    assert site.verifier.verify(str(result["payload"])).reason is Reason.OK


@pytest.mark.parametrize("site", ["SHA-256", "ARGON2ID", "DeepSeekHashV1"], indirect=True)
def test_demo_page_pays_the_toll_with_fetch_with_pow(
    site: Site, base_url: str, open_page: OpenPage
) -> None:
    log = open_page(f"{base_url}/demo.html?endpoint=/api")
    _wait(site, log)
    (where, verdict, headers) = site.verdicts[-1]
    assert where == "api"
    assert verdict.reason is Reason.OK
    assert headers["x-powgate-solve-ms"].isdigit()
    carrier = (
        "x-ds-pow-response" if "DeepSeek" in site.issuer.algorithm.name else "x-powgate-solution"
    )
    assert carrier in headers


@pytest.mark.parametrize("site", ["SHA-256", "SCRYPT", "DeepSeekHashV1"], indirect=True)
def test_interstitial_solves_sets_the_cookie_and_reloads(
    site: Site, base_url: str, open_page: OpenPage
) -> None:
    log = open_page(f"{base_url}/app/page")
    _wait(site, log)
    assert [(where, verdict.reason) for where, verdict, _ in site.verdicts] == [
        ("cookie", Reason.OK)
    ]


@pytest.mark.parametrize("site", ["PBKDF2/SHA-256", "SCRYPT", "ARGON2ID"], indirect=True)
def test_altcha_widget_solves_our_v2_challenges(
    site: Site,
    base_url: str,
    open_page: OpenPage,
    altcha_widget: bytes,
    altcha_workers: dict[str, bytes],
) -> None:
    """ALTCHA's own widget (npm), in Chromium, answers our ALTCHA PoW v2 challenge."""
    workers = {f"workers/{name}": body for name, body in altcha_workers.items()}
    site.widget = {"altcha.js": altcha_widget, **workers}
    log = open_page(f"{base_url}/widget.html")
    _wait(site, log)
    (report,) = site.reports
    assert report["state"] == "verified", report
    assert site.verifier.verify(str(report["payload"])).reason is Reason.OK
