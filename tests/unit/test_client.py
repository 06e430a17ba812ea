"""The client SDK against a sidecar double built on a real Issuer and Verifier.

The double speaks the sidecar's protocol (428 or 401 + challenge document,
the prefetch endpoint, the solution header); httpx reaches it through
``MockTransport`` and ``requests`` through a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import httpx2
import openai
import pytest

from powgate import (
    CHALLENGE_PATH,
    DEEPSEEK_HEADER,
    SOLUTION_HEADER,
    SOLVE_MS_HEADER,
    HashAlgorithm,
    Issuer,
    KdfParams,
    KeyRing,
    MemoryReplayCache,
    Verifier,
    register_algorithm,
)
from powgate.client import ChallengeRejected, PowAuth, ProtocolError, SolveError


@dataclass
class SidecarDouble:
    """Challenges every request to a protected path until it carries a valid solution."""

    difficulty: int = 2000
    algorithm: str = "SHA-256"
    params: KdfParams | None = None
    status: int = 428
    prefetch_status: int = 200
    reject_all: bool = False
    challenge_body: bytes | None = None
    ring: KeyRing = field(default_factory=KeyRing.generate)
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.issuer = Issuer(keyring=self.ring, algorithm=self.algorithm, params=self.params)
        self.verifier = Verifier(keyring=self.ring, replay=MemoryReplayCache())

    def handle(
        self, *, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        self.seen.append((method, target, headers, body))
        url = urlsplit(target)
        if url.path == CHALLENGE_PATH:
            if self.prefetch_status != 200:
                return self.prefetch_status, {}, b"not here"
            query = parse_qs(url.query)
            return 200, {}, self._challenge(f"{query['method'][0]} {query['path'][0]}")
        binding = f"{method} {url.path}"
        payload = headers.get(SOLUTION_HEADER.lower()) or headers.get(DEEPSEEK_HEADER)
        verdict = self.verifier.verify(payload, binding=binding)
        if verdict.ok and not self.reject_all:
            return (
                200,
                {"content-type": "application/json"},
                json.dumps({"echo": body.decode()}).encode(),
            )
        extra = {"www-authenticate": 'PoW realm="powgate"'} if self.status == 401 else {}
        return self.status, {"content-type": "application/json", **extra}, self._challenge(binding)

    def _challenge(self, binding: str) -> bytes:
        if self.challenge_body is not None:
            return self.challenge_body
        return (
            self.issuer.issue(difficulty=self.difficulty, ttl=60, binding=binding)
            .to_json()
            .encode()
        )

    def respond(self, request: httpx.Request) -> tuple[int, dict[str, str], bytes]:
        return self.handle(
            method=request.method,
            target=request.url.raw_path.decode(),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=request.read(),
        )

    # Byte iterators keep responses streams, as on the network: the flow must
    # read challenge answers itself and leave every other response unread.

    def client(self, auth: PowAuth) -> httpx.Client:
        def handler(request: httpx.Request) -> httpx.Response:
            status, headers, body = self.respond(request)
            return httpx.Response(status, headers=headers, content=iter([body]))

        transport = httpx.MockTransport(handler)
        return httpx.Client(base_url="http://sidecar.test", auth=auth, transport=transport)

    def async_client(self, auth: PowAuth) -> httpx.AsyncClient:
        async def handler(request: httpx.Request) -> httpx.Response:
            status, headers, body = self.respond(request)
            return httpx.Response(status, headers=headers, content=_chunks(body))

        transport = httpx.MockTransport(handler)
        return httpx.AsyncClient(base_url="http://sidecar.test", auth=auth, transport=transport)

    @property
    def statuses(self) -> list[tuple[str, str, bool]]:
        carriers = (SOLUTION_HEADER.lower(), DEEPSEEK_HEADER)
        return [(m, urlsplit(t).path, any(c in h for c in carriers)) for m, t, h, _ in self.seen]


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    yield body


def test_sync_flow_solves_and_retries_with_the_body() -> None:
    sidecar = SidecarDouble()
    with sidecar.client(PowAuth()) as client:
        response = client.post("/v1/chat", json={"q": "hi"})
    assert response.status_code == 200
    assert response.json() == {"echo": '{"q":"hi"}'}
    assert sidecar.statuses == [("POST", "/v1/chat", False), ("POST", "/v1/chat", True)]
    retried = sidecar.seen[1][2]
    assert int(retried[SOLVE_MS_HEADER.lower()]) >= 0
    assert [r.status_code for r in response.history] == [428]


#: Every family, at cheap parameters: the SDK reads the document and answers in its header.
SCHEMES = {
    "SHA-256": (None, SOLUTION_HEADER.lower()),
    "PBKDF2/SHA-256": (KdfParams(cost=10), SOLUTION_HEADER.lower()),
    "SCRYPT": (KdfParams(cost=16, memory_cost=1, parallelism=1), SOLUTION_HEADER.lower()),
    "ARGON2ID": (KdfParams(cost=1, memory_cost=64, parallelism=1), SOLUTION_HEADER.lower()),
    "DeepSeekHashV1": (None, DEEPSEEK_HEADER),
}


@pytest.mark.parametrize("algorithm", sorted(SCHEMES))
def test_every_scheme_is_solved_and_answered_in_its_header(algorithm: str) -> None:
    params, header = SCHEMES[algorithm]
    sidecar = SidecarDouble(algorithm=algorithm, params=params, difficulty=40)
    with sidecar.client(PowAuth()) as client:
        assert client.post("/v1/chat", json={"q": 1}).status_code == 200
    assert header in sidecar.seen[1][2]
    assert sidecar.statuses == [("POST", "/v1/chat", False), ("POST", "/v1/chat", True)]


@pytest.mark.parametrize("algorithm", ["ARGON2ID", "DeepSeekHashV1"])
async def test_async_flow_solves_every_scheme(algorithm: str) -> None:
    params, _ = SCHEMES[algorithm]
    sidecar = SidecarDouble(algorithm=algorithm, params=params, difficulty=40)
    async with sidecar.async_client(PowAuth(prefetch=True)) as client:
        assert (await client.post("/v1/chat")).status_code == 200


def test_streamed_request_bodies_are_replayed() -> None:
    sidecar = SidecarDouble()
    with sidecar.client(PowAuth()) as client:
        response = client.post("/v1/upload", content=iter([b"part1-", b"part2"]))
    assert response.json() == {"echo": "part1-part2"}


def test_401_with_pow_scheme_is_a_challenge() -> None:
    sidecar = SidecarDouble(status=401)
    with sidecar.client(PowAuth()) as client:
        assert client.post("/v1/chat").status_code == 200


def test_other_401s_pass_through_untouched() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"www-authenticate": "Bearer"}, json={"error": "key"})

    with httpx.Client(auth=PowAuth(), transport=httpx.MockTransport(handler)) as client:
        response = client.post("http://sidecar.test/v1/chat")
    assert response.status_code == 401
    assert response.history == []


def test_success_is_handed_back_unread() -> None:
    # Streamed completions must reach the caller as a stream.
    sidecar = SidecarDouble()
    with sidecar.client(PowAuth()) as client, client.stream("POST", "/v1/chat") as response:
        assert response.status_code == 200
        assert not response.is_stream_consumed
        assert b"echo" in response.read()


def test_retries_are_bounded() -> None:
    sidecar = SidecarDouble(reject_all=True, difficulty=50)
    with (
        sidecar.client(PowAuth(max_attempts=2)) as client,
        pytest.raises(ChallengeRejected) as caught,
    ):
        client.post("/v1/chat")
    assert caught.value.attempts == 2
    assert len(sidecar.seen) == 3


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"maxnumber": 5}'])
def test_unusable_challenge_answer_is_a_protocol_error(body: bytes) -> None:
    sidecar = SidecarDouble(challenge_body=body)
    with sidecar.client(PowAuth()) as client, pytest.raises(ProtocolError, match="unusable"):
        client.post("/v1/chat")


def test_difficulty_above_the_client_limit_is_refused() -> None:
    sidecar = SidecarDouble(difficulty=10_000)
    with (
        sidecar.client(PowAuth(max_difficulty=9_999)) as client,
        pytest.raises(SolveError, match="above this client's limit of 9999"),
    ):
        client.post("/v1/chat")


def test_prefetch_saves_the_rejection() -> None:
    sidecar = SidecarDouble()
    with sidecar.client(PowAuth(prefetch=True)) as client:
        assert client.post("/v1/chat?x=1").status_code == 200
    assert sidecar.statuses == [("GET", CHALLENGE_PATH, False), ("POST", "/v1/chat", True)]
    assert parse_qs(urlsplit(sidecar.seen[0][1]).query) == {
        "method": ["POST"],
        "path": ["/v1/chat"],
    }


def test_failed_prefetch_falls_back_to_the_challenge_answer() -> None:
    sidecar = SidecarDouble(prefetch_status=404)
    with sidecar.client(PowAuth(prefetch=True)) as client:
        assert client.post("/v1/chat").status_code == 200
    assert [path for _, path, _ in sidecar.statuses] == [CHALLENGE_PATH, "/v1/chat", "/v1/chat"]


def test_option_validation() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        PowAuth(max_attempts=0)
    with pytest.raises(ValueError, match="max_difficulty"):
        PowAuth(max_difficulty=0)


# -- async ---------------------------------------------------------------------

_solver_threads: set[int] = set()


class _ThreadRecording(HashAlgorithm):
    """SHA-256 that notes which thread hashes (it takes the solver's generic path)."""

    def work_hex(self, data: bytes) -> str:
        _solver_threads.add(threading.get_ident())
        return super().work_hex(data)


register_algorithm(_ThreadRecording("TEST-THREADS", "sha256"))


async def test_async_flow_solves_off_the_event_loop() -> None:
    sidecar = SidecarDouble(algorithm="TEST-THREADS")
    _solver_threads.clear()
    async with sidecar.async_client(PowAuth()) as client:
        response = await client.post("/v1/chat", json={"q": 1})
    assert response.status_code == 200
    # The sidecar double hashes on this thread too; the solver must not.
    assert _solver_threads - {threading.get_ident()}


async def test_async_flows_run_concurrently() -> None:
    sidecar = SidecarDouble()
    async with sidecar.async_client(PowAuth()) as client:
        responses = await asyncio.gather(*(client.post(f"/v1/chat/{i}") for i in range(4)))
    assert [r.status_code for r in responses] == [200] * 4


async def test_async_retries_are_bounded() -> None:
    sidecar = SidecarDouble(reject_all=True, difficulty=50)
    async with sidecar.async_client(PowAuth(max_attempts=1)) as client:
        with pytest.raises(ChallengeRejected):
            await client.post("/v1/chat")


async def test_async_prefetch() -> None:
    sidecar = SidecarDouble()
    async with sidecar.async_client(PowAuth(prefetch=True)) as client:
        assert (await client.post("/v1/chat")).status_code == 200
    assert len(sidecar.seen) == 2


# -- the OpenAI SDK on top of the httpx flow ----------------------------------


_COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "created": 0,
    "model": "standin",
    "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}
    ],
}


def _ask(client: openai.OpenAI) -> str | None:
    reply = client.chat.completions.create(
        model="standin", messages=[{"role": "user", "content": "hi"}]
    )
    return reply.choices[0].message.content


def test_openai_sdk_with_an_httpx_client() -> None:
    sidecar = SidecarDouble()

    def handler(request: httpx.Request) -> httpx.Response:
        status, headers, body = sidecar.respond(request)
        if status == 200:
            return httpx.Response(200, json=_COMPLETION)
        return httpx.Response(status, headers=headers, content=body)

    http_client = httpx.Client(auth=PowAuth(), transport=httpx.MockTransport(handler))
    client = openai.OpenAI(
        base_url="http://sidecar.test/v1",
        api_key="unused",
        # Typed for httpx2 from openai 3, and documented to take httpx clients too.
        http_client=http_client,  # type: ignore[arg-type]
        max_retries=0,
    )
    assert _ask(client) == "ok"
    assert sidecar.statuses[-1] == ("POST", "/v1/chat/completions", True)


def test_openai_sdk_with_an_httpx2_client() -> None:
    from powgate.client.httpx2 import PowAuth as PowAuth2

    sidecar = SidecarDouble()

    def handler(request: httpx2.Request) -> httpx2.Response:
        status, headers, body = sidecar.handle(
            method=request.method,
            target=request.url.raw_path.decode(),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=request.read(),
        )
        if status == 200:
            return httpx2.Response(200, json=_COMPLETION)
        return httpx2.Response(status, headers=headers, content=body)

    http_client = httpx2.Client(auth=PowAuth2(), transport=httpx2.MockTransport(handler))
    client = openai.OpenAI(
        base_url="http://sidecar.test/v1", api_key="unused", http_client=http_client, max_retries=0
    )
    assert _ask(client) == "ok"
    assert [has for _, _, has in sidecar.statuses] == [False, True]


# -- httpx2 (the OpenAI SDK's client from version 3) ----------------------------


def _httpx2_handler(sidecar: SidecarDouble) -> httpx2.MockTransport:
    def handler(request: httpx2.Request) -> httpx2.Response:
        status, headers, body = sidecar.handle(
            method=request.method,
            target=request.url.raw_path.decode(),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=request.read(),
        )
        return httpx2.Response(status, headers=headers, content=body)

    return httpx2.MockTransport(handler)


def test_httpx2_client() -> None:
    from powgate.client.httpx2 import PowAuth as PowAuth2

    sidecar = SidecarDouble()
    transport = _httpx2_handler(sidecar)
    with httpx2.Client(base_url="http://sidecar.test", auth=PowAuth2(), transport=transport) as c:
        assert c.post("/v1/chat", json={"q": 2}).json() == {"echo": '{"q":2}'}
    assert [has for _, _, has in sidecar.statuses] == [False, True]


async def test_httpx2_async_client_with_prefetch() -> None:
    from powgate.client.httpx2 import PowAuth as PowAuth2

    sidecar = SidecarDouble()
    auth = PowAuth2(prefetch=True)
    async with httpx2.AsyncClient(auth=auth, transport=_httpx2_handler(sidecar)) as client:
        assert (await client.post("http://sidecar.test/v1/chat")).status_code == 200
    assert sidecar.statuses == [("GET", CHALLENGE_PATH, False), ("POST", "/v1/chat", True)]


# -- requests, through a real HTTP server -------------------------------------


@pytest.fixture(params=["SHA-256", "ARGON2ID"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[SidecarDouble, str]]:
    algorithm = request.param
    sidecar = SidecarDouble(algorithm=algorithm, params=SCHEMES[algorithm][0], difficulty=40)

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            status, headers, body = sidecar.handle(
                method=self.command,
                target=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=self.rfile.read(length),
            )
            self.send_response(status)
            for name, value in {**headers, "content-length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _serve  # noqa: N815 - the names http.server dispatches to

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test asserts on what the double recorded."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sidecar, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("prefetch", [False, True])
def test_requests_adapter(served: tuple[SidecarDouble, str], prefetch: bool) -> None:
    from powgate.client.requests import pow_session

    sidecar, base = served
    with pow_session(prefetch=prefetch) as session:
        response = session.post(f"{base}/v1/chat", data=b"payload", timeout=30)
    assert response.status_code == 200
    assert response.json() == {"echo": "payload"}
    first = ("GET", CHALLENGE_PATH, False) if prefetch else ("POST", "/v1/chat", False)
    assert sidecar.statuses == [first, ("POST", "/v1/chat", True)]


def test_requests_adapter_bounds_retries(served: tuple[SidecarDouble, str]) -> None:
    from powgate.client.requests import pow_session

    sidecar, base = served
    sidecar.reject_all = True
    with pow_session(max_attempts=2) as session, pytest.raises(ChallengeRejected) as caught:
        session.post(f"{base}/v1/chat", timeout=30)
    assert caught.value.attempts == 2
