"""The ``httpx`` authentication flow: solve the sidecar's challenges transparently.

One flow drives both clients. It is a generator that yields either a request
to send or a challenge to solve; the sync driver solves in place, the async
driver in a worker thread so that the event loop keeps running.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import TypeAlias, cast

import anyio.to_thread
import httpx

from powgate._dispatch import CHALLENGE_TYPES
from powgate._errors import ChallengeRejected
from powgate._protocol import CHALLENGE_PATH
from powgate._verify import AnyChallenge

from ._common import DEFAULT_MAX_DIFFICULTY, Solving, is_challenge, read_challenge

__all__ = ["PowAuth"]

_Step: TypeAlias = httpx.Request | AnyChallenge
_Flow: TypeAlias = Generator[_Step, httpx.Response | dict[str, str], None]
_STATUS_OK = 200


class PowAuth(httpx.Auth):
    """Answers the sidecar's proof-of-work challenges for an ``httpx`` client.

    Works with ``httpx.Client`` and ``httpx.AsyncClient`` (and so with SDKs
    that accept one, such as ``OpenAI(http_client=...)``)::

        client = httpx.Client(auth=PowAuth())

    ``prefetch`` asks the sidecar for a challenge before each request,
    saving the round trip of the first rejection. After ``max_attempts``
    rejected solutions for one request it raises :class:`ChallengeRejected`.
    """

    def __init__(
        self,
        *,
        max_attempts: int = 3,
        prefetch: bool = False,
        workers: int = 1,
        max_difficulty: int = DEFAULT_MAX_DIFFICULTY,
        max_hashes_per_second: float | None = None,
    ) -> None:
        self.prefetch = prefetch
        self.solving = Solving(
            max_attempts=max_attempts,
            max_difficulty=max_difficulty,
            workers=workers,
            max_hashes_per_second=max_hashes_per_second,
        )

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        # The body must be replayable: a rejected request is sent again.
        request.read()
        flow = self._flow(request)
        step = next(flow)
        try:
            while True:
                if isinstance(step, CHALLENGE_TYPES):
                    step = flow.send(self.solving.solution_headers(step))
                    continue
                response = yield step
                if _needs_body(response):
                    response.read()
                step = flow.send(response)
        except StopIteration:
            return

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        flow = self._flow(request)
        step = next(flow)
        try:
            while True:
                if isinstance(step, CHALLENGE_TYPES):
                    # Solving is CPU-bound for up to seconds: keep the loop free.
                    headers = await anyio.to_thread.run_sync(self.solving.solution_headers, step)
                    step = flow.send(headers)
                    continue
                response = yield step
                if _needs_body(response):
                    await response.aread()
                step = flow.send(response)
        except StopIteration:
            return

    def _flow(self, request: httpx.Request) -> _Flow:
        attempts = 0
        if self.prefetch:
            url = request.url.copy_with(
                path=CHALLENGE_PATH, params={"method": request.method, "path": request.url.path}
            )
            # type(request): an httpx2 client (see powgate.client.httpx2) needs its own class.
            prefetch = type(request)("GET", url, headers={"Accept": "application/json"})
            response = _response((yield prefetch))
            # Prefetching only saves a round trip: without it the request
            # itself fetches the challenge, so a failure here is not an error.
            if response.status_code == _STATUS_OK:
                request.headers.update(_headers((yield read_challenge(response.content))))
                attempts += 1
        while True:
            response = _response((yield request))
            if not _is_challenge(response):
                return
            if attempts >= self.solving.max_attempts:
                raise ChallengeRejected(
                    f"the server rejected {attempts} solutions for "
                    f"{request.method} {request.url.path}",
                    attempts=attempts,
                )
            request.headers.update(_headers((yield read_challenge(response.content))))
            attempts += 1


# The drivers answer a yielded Challenge with its headers and a yielded
# request with its response, always; these only tell the type checker so.


def _headers(answer: httpx.Response | dict[str, str]) -> dict[str, str]:
    return cast(dict[str, str], answer)


def _response(answer: httpx.Response | dict[str, str]) -> httpx.Response:
    return cast(httpx.Response, answer)


def _is_challenge(response: httpx.Response) -> bool:
    return is_challenge(response.status_code, response.headers)


def _needs_body(response: httpx.Response) -> bool:
    # Only challenge documents are read here; any other response (a streamed
    # completion above all) is handed back to the caller unread.
    return _is_challenge(response) or response.request.url.path == CHALLENGE_PATH
