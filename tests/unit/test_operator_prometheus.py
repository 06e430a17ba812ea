"""Signal reading: every answer Prometheus (or its absence) can give becomes an explicit reading.

The server here is a small scripted HTTP server on 127.0.0.1 speaking the
Prometheus query API, so the real client library and its HTTP stack run.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from powgate.controller import Empty, Failure, Sample
from powgate.policy import Aggregate, PrometheusSpec, SignalSpec
from powgate_operator._prometheus import (
    Credentials,
    SidecarKeys,
    SignalReader,
    reading_from_result,
)


@dataclass
class Script:
    """What the fake answers: status, body and delay; and what it was asked."""

    status: int = 200
    body: bytes = b""
    delay: float = 0.0
    seen: list[dict[str, Any]] = field(default_factory=list)


def vector(*values: str) -> bytes:
    result = [
        {"metric": {"pod": f"p{i}"}, "value": [1700000000.0, v]} for i, v in enumerate(values)
    ]
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": result}}
    ).encode()


@pytest.fixture
def prometheus() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            script.seen.append(
                {
                    "path": url.path,
                    "query": parse_qs(url.query),
                    "authorization": self.headers.get("Authorization"),
                }
            )
            time.sleep(script.delay)
            self.send_response(script.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(script.body)))
            self.end_headers()
            # A client that gave up (the timeout test) has nobody left to answer.
            with contextlib.suppress(BrokenPipeError):
                self.wfile.write(script.body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test asserts on what it needs."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script
    finally:
        server.shutdown()
        server.server_close()


async def read_one(
    address: str,
    *,
    aggregate: Aggregate = Aggregate.FAIL,
    credentials: Credentials | None = None,
    deadline: float = 5.0,
) -> Any:
    reader = SignalReader(max_workers=2)
    try:
        readings = await reader.read(
            prometheus=PrometheusSpec(address=address, timeout_seconds=deadline),
            credentials=credentials,
            signals=[
                SignalSpec(
                    name="s", query='up{namespace="$namespace"}', target=1, aggregate=aggregate
                )
            ],
            namespace="ai",
            name="chat",
        )
    finally:
        reader.close()
    return readings["s"]


ANSWERS = [
    ("one series", 200, vector("42.5"), Aggregate.FAIL, Sample(42.5)),
    ("empty vector", 200, vector(), Aggregate.FAIL, Empty()),
    ("several series, fail", 200, vector("1", "5"), Aggregate.FAIL, Failure("MultipleSeries")),
    ("several series, max", 200, vector("1", "5"), Aggregate.MAX, Sample(5.0)),
    ("several series, sum", 200, vector("1", "5"), Aggregate.SUM, Sample(6.0)),
    ("several series, mean", 200, vector("1", "5"), Aggregate.MEAN, Sample(3.0)),
    ("NaN", 200, vector("NaN"), Aggregate.FAIL, Failure("NotANumber")),
    ("+Inf", 200, vector("+Inf"), Aggregate.MAX, Failure("NotANumber")),
    ("-Inf among several", 200, vector("1", "-Inf"), Aggregate.SUM, Failure("NotANumber")),
    ("unauthorized", 401, b"Unauthorized", Aggregate.FAIL, Failure("AuthFailed")),
    ("forbidden", 403, b"Forbidden", Aggregate.FAIL, Failure("AuthFailed")),
    (
        "bad query",
        400,
        b'{"status":"error","errorType":"bad_data"}',
        Aggregate.FAIL,
        Failure("BadQuery"),
    ),
    ("unavailable", 503, b"busy", Aggregate.FAIL, Failure("HTTPError")),
    ("not JSON", 200, b"<html>proxy login</html>", Aggregate.FAIL, Failure("BadResponse")),
    ("JSON without data", 200, b'{"status":"success"}', Aggregate.FAIL, Failure("BadResponse")),
]


@pytest.mark.parametrize(
    ("status", "body", "aggregate", "expected"),
    [a[1:] for a in ANSWERS],
    ids=[a[0] for a in ANSWERS],
)
async def test_answers(
    prometheus: tuple[str, Script], status: int, body: bytes, aggregate: Aggregate, expected: Any
) -> None:
    address, script = prometheus
    script.status, script.body = status, body
    reading = await read_one(address, aggregate=aggregate)
    if isinstance(expected, Failure):
        assert isinstance(reading, Failure)
        assert reading.reason == expected.reason
        assert reading.message
    else:
        assert reading == expected


LEAK = b"token=eyJhbGciOiJSUzI1NiJ9.SECRET"


@pytest.mark.parametrize("status", [200, 400, 404, 422, 500, 503], ids=lambda s: f"HTTP {s}")
async def test_what_a_server_answers_never_reaches_the_policys_status(
    prometheus: tuple[str, Script], status: int
) -> None:
    """Failure messages go into status, which anyone who edits the policy reads.

    A policy may point ``prometheus.address`` at any in-cluster endpoint: its
    answer must not come back through the status.
    """
    address, script = prometheus
    script.status, script.body = status, b"<html>" + LEAK + b"</html>"
    reading = await read_one(address)
    assert isinstance(reading, Failure)
    assert b"SECRET" not in reading.message.encode()
    assert "token" not in reading.message


async def test_query_is_templated_and_carries_the_timeout(prometheus: tuple[str, Script]) -> None:
    address, script = prometheus
    script.body = vector("1")
    await read_one(address, deadline=2.5)
    (request,) = script.seen
    assert request["path"] == "/api/v1/query"
    assert request["query"]["query"] == ['up{namespace="ai"}']
    assert request["query"]["timeout"] == ["2500ms"]
    assert request["authorization"] is None


async def test_bearer_token_is_sent(prometheus: tuple[str, Script]) -> None:
    address, script = prometheus
    script.body = vector("1")
    await read_one(address, credentials=Credentials.from_secret_data({"token": "t0k\n"}))
    assert script.seen[0]["authorization"] == "Bearer t0k"


async def test_basic_auth_is_sent(prometheus: tuple[str, Script]) -> None:
    address, script = prometheus
    script.body = vector("1")
    credentials = Credentials.from_secret_data({"username": "u", "password": "p"})
    await read_one(address, credentials=credentials)
    assert script.seen[0]["authorization"] == "Basic dTpw"


def test_credentials_need_token_or_user_and_password() -> None:
    with pytest.raises(ValueError, match="neither"):
        Credentials.from_secret_data({"username": "u"})


async def test_timeout(prometheus: tuple[str, Script]) -> None:
    address, script = prometheus
    script.body, script.delay = vector("1"), 2.0
    reading = await read_one(address, deadline=0.2)
    assert isinstance(reading, Failure)
    assert reading.reason == "Timeout"


async def test_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The port was free a moment ago and nothing listens on it now.
    reading = await read_one(f"http://127.0.0.1:{port}")
    assert isinstance(reading, Failure)
    assert reading.reason == "Unreachable"


def test_scalar_results() -> None:
    assert reading_from_result([1700000000.0, "3"], aggregate=Aggregate.FAIL) == Sample(3.0)
    failure = reading_from_result({"oops": 1}, aggregate=Aggregate.FAIL)
    assert isinstance(failure, Failure)
    assert failure.reason == "BadResponse"


def labelled(*series: tuple[str, str]) -> bytes:
    result = [{"metric": {"client": c}, "value": [1700000000.0, v]} for c, v in series]
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": result}}
    ).encode()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, labelled(("k1.a", "12.5"), ("k1.b", "0.25")), {"k1.a": 12.5, "k1.b": 0.25}),
        (200, labelled(), {}),
        # A series without the label, or with a value that is no rate, is left out.
        (200, labelled(("", "3"), ("k1.c", "NaN"), ("k1.d", "+Inf")), {}),
        (503, b"busy", Failure("HTTPError")),
        (200, b"<html>", Failure("BadResponse")),
    ],
)
async def test_heavy_clients_are_read_by_label(
    prometheus: tuple[str, Script], status: int, body: bytes, expected: Any
) -> None:
    address, script = prometheus
    script.status, script.body = status, body
    reader = SignalReader(max_workers=1)
    try:
        found = await reader.heavy_clients(
            prometheus=PrometheusSpec(address=address), credentials=None, policy="ai/chat"
        )
    finally:
        reader.close()
    if isinstance(expected, Failure):
        assert isinstance(found, Failure)
        assert found.reason == expected.reason
    else:
        assert found == expected
    assert script.seen[-1]["query"]["query"] == [
        'sum by (client) (powgate_heavy_client_rate{namespace="ai",policy="ai/chat"})'
    ]


def key_rows(*rows: tuple[str, str, str]) -> bytes:
    result = [
        {"metric": {"kid": kid, "active": active}, "value": [1700000000.0, count]}
        for kid, active, count in rows
    ]
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": result}}
    ).encode()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, key_rows(), SidecarKeys()),
        # Three sidecars hold k1 and sign with it; two of them hold k2 already.
        (
            200,
            key_rows(("k1", "true", "3"), ("k2", "false", "2")),
            SidecarKeys(held={"k1": 3, "k2": 2}, signing={"k1": 3}),
        ),
        # Mid-switch: one signs with k2 already.
        (
            200,
            key_rows(("k1", "true", "2"), ("k1", "false", "1"), ("k2", "true", "1")),
            SidecarKeys(held={"k1": 3, "k2": 1}, signing={"k1": 2, "k2": 1}),
        ),
        # No key id, or a count that is no number, counts for nothing.
        (200, key_rows(("", "true", "3"), ("k1", "true", "NaN")), SidecarKeys()),
        (503, b"busy", Failure("HTTPError")),
        (200, b"<html>", Failure("BadResponse")),
    ],
)
async def test_the_keys_sidecars_hold_are_counted_by_key_and_role(
    prometheus: tuple[str, Script], status: int, body: bytes, expected: Any
) -> None:
    address, script = prometheus
    script.status, script.body = status, body
    reader = SignalReader(max_workers=1)
    try:
        found = await reader.sidecar_keys(
            prometheus=PrometheusSpec(address=address), credentials=None, policy="ai/chat"
        )
    finally:
        reader.close()
    if isinstance(expected, Failure):
        assert isinstance(found, Failure)
        assert found.reason == expected.reason
    else:
        assert found == expected
    assert script.seen[-1]["query"]["query"] == [
        'count by (kid, active) (powgate_key_info{namespace="ai",policy="ai/chat"})'
    ]
