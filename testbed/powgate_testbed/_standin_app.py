"""The stand-in's aiohttp application: routes, pacing, overload answers and metrics."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ._standin_api import ApiError, ChatRequest, Completion, parse_chat_request
from ._standin_capacity import CapacityGate, OverloadedError

__all__ = ["StandinSettings", "build_app"]

#: A chat request is a few KiB at most; far larger bodies are refused unread.
MAX_BODY_BYTES: Final = 1 << 20
#: Label for streams the client abandoned, nginx's convention for "client closed request".
CLIENT_CLOSED: Final = "499"
_DONE: Final = b"data: [DONE]\n\n"
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class StandinSettings:
    """How much the stand-in can serve, and how it says no."""

    concurrency: int = 4
    tokens_per_second: float = 50.0
    max_queue: int = 16
    overload_status: int = 429
    model: str = "powgate-standin"

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not math.isfinite(self.tokens_per_second) or self.tokens_per_second <= 0:
            raise ValueError("tokens_per_second must be a positive number")
        if self.max_queue < 0:
            raise ValueError("max_queue must not be negative")
        if self.overload_status not in (429, 503):
            raise ValueError("overload_status must be 429 or 503")
        if not self.model:
            raise ValueError("model must be a non-empty name")


class _Metrics:
    """The stand-in's load, exported so that it can serve as a backend signal."""

    def __init__(self, gate: CapacityGate) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        in_flight = Gauge(
            "powgate_standin_in_flight_requests", "Requests generating now", registry=r
        )
        in_flight.set_function(lambda: gate.in_flight)
        queued = Gauge("powgate_standin_queued_requests", "Requests waiting for a slot", registry=r)
        queued.set_function(lambda: gate.queued)
        Gauge("powgate_standin_concurrency", "Generation slots (capacity)", registry=r).set(
            gate.concurrency
        )
        Gauge("powgate_standin_max_queue", "Waiting room size", registry=r).set(gate.max_queue)
        self.requests = Counter(
            "powgate_standin_requests",
            "API requests answered, by HTTP status",
            ["status"],
            registry=r,
        )
        self.tokens = Counter(
            "powgate_standin_completion_tokens", "Completion tokens generated", registry=r
        )
        self.queue_wait = Histogram(
            "powgate_standin_queue_wait_seconds",
            "Time admitted requests waited for a slot",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )


def build_app(settings: StandinSettings) -> web.Application:
    """The stand-in as an aiohttp application (each instance has its own metrics)."""
    gate = CapacityGate(concurrency=settings.concurrency, max_queue=settings.max_queue)
    metrics = _Metrics(gate)
    service = _Service(settings=settings, gate=gate, metrics=metrics)
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[service.api_errors])
    app.router.add_get("/v1/models", service.models)
    app.router.add_post("/v1/chat/completions", service.chat_completions)
    app.router.add_get("/healthz", service.healthz)
    app.router.add_get("/metrics", service.metrics)
    return app


class _Service:
    def __init__(self, *, settings: StandinSettings, gate: CapacityGate, metrics: _Metrics) -> None:
        self._settings = settings
        self._gate = gate
        self._metrics = metrics
        self._models = frozenset({settings.model})
        self._created = int(time.time())

    @web.middleware
    async def api_errors(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Answer API errors in the OpenAI shape and count every API answer by status."""
        if not request.path.startswith("/v1/"):
            return await handler(request)
        try:
            response = await handler(request)
        except ApiError as exc:
            response = web.json_response(exc.body(), status=exc.status, headers=exc.headers)
        except web.HTTPException as exc:
            # Unknown routes and wrong methods, said the way the API says them.
            error = ApiError(
                exc.status,
                exc.reason,
                headers={k: v for k, v in exc.headers.items() if k == "Allow"},
            )
            response = web.json_response(error.body(), status=exc.status, headers=error.headers)
        label = (
            CLIENT_CLOSED
            if isinstance(response, _EventStream) and response.abandoned
            else str(response.status)
        )
        self._metrics.requests.labels(status=label).inc()
        return response

    async def models(self, _request: web.Request) -> web.Response:
        model = {
            "id": self._settings.model,
            "object": "model",
            "created": self._created,
            "owned_by": "powgate",
        }
        return web.json_response({"object": "list", "data": [model]})

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(
                413, f"The request body is larger than {MAX_BODY_BYTES} bytes."
            ) from None
        chat = parse_chat_request(raw, models=self._models)
        duration = chat.max_tokens / self._settings.tokens_per_second
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        try:
            await self._gate.acquire()
        except OverloadedError:
            raise self._overloaded(duration) from None
        try:
            self._metrics.queue_wait.observe(loop.time() - arrived)
            completion = Completion(chat, created=int(time.time()))
            if chat.stream:
                return await self._stream(request, chat=chat, completion=completion)
            await asyncio.sleep(duration)
            self._metrics.tokens.inc(chat.max_tokens)
            return web.json_response(completion.document())
        finally:
            self._gate.release()

    def _overloaded(self, duration: float) -> ApiError:
        # A slot frees within one generation time at the latest; say so, as
        # Retry-After, in whole seconds.
        headers = {"Retry-After": str(max(1, math.ceil(duration)))}
        if self._settings.overload_status == 429:
            return ApiError(
                429,
                "The server has more requests than it can queue. Please retry after a short wait.",
                type_="requests",
                code="rate_limit_exceeded",
                headers=headers,
            )
        return ApiError(
            503,
            "The server is overloaded. Please retry after a short wait.",
            type_="server_error",
            code="overloaded",
            headers=headers,
        )

    async def _stream(
        self, request: web.Request, *, chat: ChatRequest, completion: Completion
    ) -> web.StreamResponse:
        response = _EventStream(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        interval = 1 / self._settings.tokens_per_second
        start = loop.time()
        try:
            await response.write(completion.chunk({"role": "assistant", "content": ""}))
            for index in range(chat.max_tokens):
                # Pace against the start, not the previous token, so delays do not add up.
                await asyncio.sleep(max(0.0, start + (index + 1) * interval - loop.time()))
                # Each write goes to the socket at once: one event per token.
                await response.write(completion.chunk({"content": completion.token(index)}))
                self._metrics.tokens.inc()
            await response.write(completion.chunk({}, finish_reason=completion.finish_reason))
            if chat.include_usage:
                await response.write(completion.usage_chunk())
            await response.write(_DONE)
            await response.write_eof()
        except ConnectionError:
            # The client went away mid-stream; its slot is freed by the caller.
            response.abandoned = True
        return response


class _EventStream(web.StreamResponse):
    """A Server-Sent Events answer that remembers whether the client left before the end."""

    abandoned = False
