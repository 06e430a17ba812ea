"""Headless Chromium through a real ``powgate sidecar`` process.

Everything the browser talks to is the real thing: the sidecar process
(started like ``test_sidecar_e2e.py`` starts it) issues challenges, serves the
browser solver and the interstitial, verifies and forwards; Chromium runs the
files it serves, and the ALTCHA widget from npm (``tests/js/package.json``,
``make js-deps``). Behind the sidecar, a loopback upstream plays the protected
application: it serves a few pages and records every request that reaches it,
so each test asserts what was let through, not only what the browser saw.

A page tells the test it is done through the upstream itself: a report
request, or the request under test arriving there.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from _browser import OpenPage, wait_for_page
from _sidecar_process import SidecarEndpoints, start_sidecar

from powgate import CHALLENGE_PATH, Challenge, ChallengeV2, KeyRing, parse_challenge, parse_salt
from powgate.config import KdfSpec, RouteConfig, SidecarConfig
from powgate_testbed._process import ManagedProcess, stop_all

pytestmark = [pytest.mark.browser, pytest.mark.slow]

POLICY = "web/shop"
# ALTCHA's widget hashes with one WebCrypto call per candidate, an engine an
# order of magnitude slower than solver.js: a smaller toll keeps its test quick.
SUBMIT_MULTIPLIER = 0.2
CONFIG = SidecarConfig(
    policy=POLICY,
    difficulty=100_000,
    routes=[
        # Browser navigations pay through the interstitial.
        RouteConfig(name="page", paths=["/app/*"], methods=["GET"]),
        RouteConfig(name="api", paths=["/api/*"], methods=["POST"]),
        RouteConfig(
            name="submit",
            paths=["/submit"],
            methods=["POST"],
            difficulty_multiplier=SUBMIT_MULTIPLIER,
        ),
    ],
)
#: Sends what the page saw to the upstream's /report (unprotected, so it passes the sidecar).
REPORT_JS = """function report(data) {
  return fetch('/report', {method: 'POST', headers: {'Content-Type': 'application/json'},
                           body: JSON.stringify(data)});
}"""
APP_PAGE = f"""<!doctype html><meta charset="utf-8"><title>app</title>
<link rel="icon" href="data:,">
<p id="welcome">welcome to the app</p>
<script>
{REPORT_JS}
report({{text: document.getElementById('welcome').textContent, cookie: document.cookie}});
</script>
"""
API_PROMPT = {"model": "standin", "prompt": "hello through the sidecar"}
FETCH_PAGE = f"""<!doctype html><meta charset="utf-8"><title>fetch</title>
<link rel="icon" href="data:,">
<script src="/.well-known/powgate/solver.js"></script>
<script>
{REPORT_JS}
var solved = null;
powgate
  .fetchWithPow('/api/complete', {{
    method: 'POST',
    headers: {{'Content-Type': 'application/json'}},
    body: JSON.stringify({json.dumps(API_PROMPT)}),
  }}, {{workers: 2, onSolved: function (result) {{ solved = result; }}}})
  .then(function (response) {{
    return response.text().then(function (body) {{
      return {{status: response.status, body: body, solved: solved}};
    }});
  }}, function (err) {{
    return {{error: String(err && err.message || err)}};
  }})
  .then(report);
</script>
"""
FORM_MESSAGE = "hello from the form"
#: The widget's challenge URL: the sidecar's issuing endpoint for the protected form target.
ALTCHA_CHALLENGE_URL = f"{CHALLENGE_PATH}?path=/submit&amp;method=POST"
ALTCHA_PAGE = f"""<!doctype html><meta charset="utf-8"><title>form</title>
<link rel="icon" href="data:,">
<script type="module" src="/vendor/altcha.js"></script>
<form id="form" method="post" action="/submit">
  <input name="message" value="{FORM_MESSAGE}">
  <altcha-widget challenge="{ALTCHA_CHALLENGE_URL}" auto="onload" workers="2"></altcha-widget>
  <button type="submit">Send</button>
</form>
<script type="module">
{REPORT_JS}
// Module scripts run in document order: this one right after the widget's
// defined the element, long before the widget can report 'verified' (its
// minimum duration alone is 500 ms).
var widget = document.querySelector('altcha-widget');
widget.addEventListener('statechange', function (ev) {{
  var state = ev.detail.state;
  if (state === 'verified') {{
    document.getElementById('form').requestSubmit();
  }} else if (state === 'error' || state === 'expired') {{
    // The event carries no error; the widget shows it once it has rendered.
    setTimeout(function () {{ report({{state: state, shown: widget.innerText}}); }}, 0);
  }}
}});
</script>
"""


@dataclass(frozen=True)
class Seen:
    """One request as the upstream received it (header names lower-cased)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


@dataclass
class Upstream:
    """The protected application: fixed pages for GET, an echo for the rest, and a record."""

    pages: Mapping[str, tuple[str, bytes]]
    seen: list[Seen] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def record(self, request: Seen) -> None:
        with self.changed:
            self.seen.append(request)
            self.changed.notify_all()

    def until(self, predicate: Callable[[list[Seen]], bool]) -> Callable[[float], bool]:
        """A wait (for :func:`wait_for_page`) until ``predicate`` holds for what was seen."""

        def wait(timeout: float) -> bool:
            with self.changed:
                return self.changed.wait_for(lambda: predicate(self.seen), timeout)

        return wait

    def requests(self) -> list[tuple[str, str]]:
        with self.changed:
            return [(seen.method, seen.path) for seen in self.seen]

    def one(self, method: str, path: str) -> Seen:
        with self.changed:
            (match,) = (s for s in self.seen if (s.method, s.path) == (method, path))
        return match


class UpstreamHandler(BaseHTTPRequestHandler):
    upstream: Upstream

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the upstream's record is what the tests look at."""

    def _receive(self) -> Seen:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        seen = Seen(
            method=self.command,
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        self.upstream.record(seen)
        return seen

    def _send(self, *, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        seen = self._receive()
        page = self.upstream.pages.get(seen.path)
        if page is None:
            self._send(status=404, content_type="text/plain", body=b"not found\n")
        else:
            content_type, body = page
            self._send(status=200, content_type=content_type, body=body)

    def do_POST(self) -> None:
        seen = self._receive()
        if seen.path == "/report":
            self._send(status=204, content_type="text/plain", body=b"")
            return
        echo = {"path": seen.path, "received": seen.body.decode()}
        self._send(status=200, content_type="application/json", body=json.dumps(echo).encode())


@dataclass(frozen=True)
class Site:
    """The sidecar in front of the upstream, as the browser sees them."""

    sidecar: SidecarEndpoints
    upstream: Upstream

    @property
    def url(self) -> str:
        return self.sidecar.url

    def reports(self) -> list[object]:
        with self.upstream.changed:
            return [s.json() for s in self.upstream.seen if s.path == "/report"]


def _html(text: str) -> tuple[str, bytes]:
    return "text/html; charset=utf-8", text.encode()


def _start(
    tmp_path: Path, pages: Mapping[str, tuple[str, bytes]], config: SidecarConfig = CONFIG
) -> Iterator[Site]:
    upstream = Upstream(pages=pages)
    handler = type("Handler", (UpstreamHandler,), {"upstream": upstream})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config_file, key_file = tmp_path / "config.json", tmp_path / "keyring.json"
    config_file.write_text(config.to_json())
    KeyRing.generate().save(key_file)
    processes: list[ManagedProcess] = []
    try:
        process, sidecar = start_sidecar(
            tmp_path=tmp_path,
            upstream=f"http://127.0.0.1:{server.server_address[1]}",
            key_file=key_file,
            config_args=["--config-file", str(config_file)],
        )
        processes.append(process)
        sidecar.wait_ready(watch=processes)
        yield Site(sidecar=sidecar, upstream=upstream)
    finally:
        stop_all(processes, grace=10)
        server.shutdown()
        server.server_close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    yield from _start(
        tmp_path, {"/app/page": _html(APP_PAGE), "/static/fetch.html": _html(FETCH_PAGE)}
    )


@pytest.fixture
def altcha_site(tmp_path: Path, altcha_widget: bytes) -> Iterator[Site]:
    yield from _start(
        tmp_path,
        {
            "/static/form.html": _html(ALTCHA_PAGE),
            "/vendor/altcha.js": ("text/javascript; charset=utf-8", altcha_widget),
        },
    )


#: ALTCHA PoW v2 with Argon2id: one try over 4 MiB, 4 tries on average at the submit route.
V2_CONFIG = CONFIG.model_copy(
    update={
        "algorithm": "ARGON2ID",
        "kdf": KdfSpec(cost=1, memory_cost=4096, parallelism=1),
        "difficulty": 40,
    }
)
#: The widget bundles SHA and PBKDF2; its Argon2id worker is loaded apart, as its README says.
ALTCHA_V2_PAGE = ALTCHA_PAGE.replace(
    '<script type="module" src="/vendor/altcha.js"></script>',
    '<script type="module" src="/vendor/altcha.js"></script>\n'
    '<script type="module">\n'
    "$altcha.algorithms.set('ARGON2ID', () => new Worker('/vendor/workers/argon2id.js'));\n"
    "</script>",
)


@pytest.fixture
def altcha_v2_site(
    tmp_path: Path, altcha_widget: bytes, altcha_workers: dict[str, bytes]
) -> Iterator[Site]:
    yield from _start(
        tmp_path,
        {
            "/static/form.html": _html(ALTCHA_V2_PAGE),
            "/vendor/altcha.js": ("text/javascript; charset=utf-8", altcha_widget),
            "/vendor/workers/argon2id.js": (
                "text/javascript; charset=utf-8",
                altcha_workers["argon2id.js"],
            ),
        },
        config=V2_CONFIG,
    )


def test_navigation_pays_through_the_interstitial(site: Site, open_page: OpenPage) -> None:
    log = open_page(site.url + "/app/page")
    wait_for_page(
        site.upstream.until(lambda seen: any(s.path == "/report" for s in seen)),
        log=log,
        what="the app page's report",
    )
    # The navigation without a solution got the interstitial and never reached
    # the upstream; the reload with the cookie did, once, without the cookie.
    # (The upstream's own page names no icon, so Chromium may ask for
    # /favicon.ico after it: an unprotected path, forwarded, not part of the toll.)
    forwarded = [r for r in site.upstream.requests() if r != ("GET", "/favicon.ico")]
    assert forwarded == [("GET", "/app/page"), ("POST", "/report")]
    admitted = site.upstream.one("GET", "/app/page")
    assert "text/html" in admitted.headers["accept"]
    assert "powgate_solution" not in admitted.headers.get("cookie", "")
    # The browser rendered the upstream's page, and the sidecar expired the
    # single-use cookie in the same answer.
    assert site.reports() == [{"text": "welcome to the app", "cookie": ""}]
    assert site.sidecar.requests(route="page", outcome="challenged", reason="missing") == 1
    assert site.sidecar.requests(route="page", outcome="admitted", reason="ok") == 1


def test_fetch_with_pow_posts_to_a_protected_api(site: Site, open_page: OpenPage) -> None:
    log = open_page(site.url + "/static/fetch.html")
    wait_for_page(
        site.upstream.until(lambda seen: any(s.path == "/report" for s in seen)),
        log=log,
        what="the fetch page's report",
    )
    (report,) = site.reports()
    assert isinstance(report, dict)
    assert "error" not in report, report
    assert report["status"] == 200
    # The sidecar's challenge was for this route, at its difficulty, and was
    # solved by Web Workers running the sidecar's worker.js.
    assert report["solved"]["maxnumber"] == CONFIG.difficulty
    assert report["solved"]["workers"] == 2
    # The page got the upstream's answer to the body it sent.
    echo = json.loads(report["body"])
    assert echo["path"] == "/api/complete"
    assert json.loads(echo["received"]) == API_PROMPT
    assert site.upstream.requests() == [
        ("GET", "/static/fetch.html"),
        ("POST", "/api/complete"),
        ("POST", "/report"),
    ]
    admitted = site.upstream.one("POST", "/api/complete")
    assert admitted.json() == API_PROMPT
    assert not {"x-powgate-solution", "x-powgate-solve-ms"} & admitted.headers.keys()
    assert site.sidecar.requests(route="api", outcome="challenged", reason="missing") == 1
    assert site.sidecar.requests(route="api", outcome="admitted", reason="ok") == 1
    # The solve time the helper reported was recorded with the admission.
    assert site.sidecar.metric("powgate_client_solve_seconds_count") == 1


@pytest.mark.node
def test_altcha_widget_form_is_admitted_once(altcha_site: Site, open_page: OpenPage) -> None:
    site = altcha_site
    log = open_page(site.url + "/static/form.html")
    wait_for_page(
        site.upstream.until(lambda seen: any(s.path in ("/submit", "/report") for s in seen)),
        log=log,
        what="the form's submission",
    )
    assert site.reports() == [], "the widget failed instead of submitting"
    submitted = site.upstream.one("POST", "/submit")
    assert submitted.headers["content-type"] == "application/x-www-form-urlencoded"
    # The sidecar forwards the form bytes it read as they were: the widget's
    # field is still there, beside the form's own.
    form = parse_qs(submitted.body.decode(), strict_parsing=True)
    assert form["message"] == [FORM_MESSAGE]
    (payload,) = form["altcha"]
    solution = json.loads(base64.b64decode(payload))
    # ALTCHA's v1 payload, answering a challenge the sidecar issued for this route.
    params = parse_salt(solution["salt"])
    assert params.binding == f"{POLICY}:submit"
    assert params.difficulty == round(CONFIG.difficulty * SUBMIT_MULTIPLIER)
    assert 0 <= solution["number"] <= params.difficulty
    assert site.sidecar.requests(route="submit", outcome="admitted", reason="ok") == 1
    assert site.sidecar.requests(route="submit", outcome="challenged", reason="missing") == 0

    # The same form again, byte for byte: the payload is spent.
    replay = httpx.post(
        site.url + "/submit",
        content=submitted.body,
        headers={"Content-Type": submitted.headers["content-type"]},
        timeout=30,
    )
    assert replay.status_code == 428
    Challenge.from_json(replay.content)  # a fresh challenge, as for any refusal
    assert site.sidecar.requests(route="submit", outcome="rejected", reason="replayed") == 1
    assert [path for _, path in site.upstream.requests()].count("/submit") == 1


@pytest.mark.node
def test_altcha_widget_answers_the_sidecars_argon2id_challenge(
    altcha_v2_site: Site, open_page: OpenPage
) -> None:
    """ALTCHA's widget solves an ALTCHA PoW v2 (Argon2id) challenge of a real sidecar."""
    site = altcha_v2_site
    log = open_page(site.url + "/static/form.html")
    wait_for_page(
        site.upstream.until(lambda seen: any(s.path in ("/submit", "/report") for s in seen)),
        log=log,
        what="the form's submission",
    )
    assert site.reports() == [], "the widget failed instead of submitting"
    submitted = site.upstream.one("POST", "/submit")
    (payload,) = parse_qs(submitted.body.decode(), strict_parsing=True)["altcha"]
    solution = json.loads(base64.b64decode(payload))
    parameters = solution["challenge"]["parameters"]
    assert parameters["algorithm"] == "ARGON2ID"
    assert parameters["data"]["bind"] == f"{POLICY}:submit"
    assert site.sidecar.requests(route="submit", outcome="admitted", reason="ok") == 1
    # Spent: the same form again is a replay, refused before any derivation.
    replay = httpx.post(
        site.url + "/submit",
        content=submitted.body,
        headers={"Content-Type": submitted.headers["content-type"]},
        timeout=30,
    )
    assert replay.status_code == 428
    assert isinstance(parse_challenge(replay.content), ChallengeV2)
    assert site.sidecar.requests(route="submit", outcome="rejected", reason="replayed") == 1
    assert [path for _, path in site.upstream.requests()].count("/submit") == 1
