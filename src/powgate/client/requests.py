"""The ``requests`` adapter: solve the sidecar's challenges for a ``requests.Session``.

Needs the ``requests`` extra (``pip install 'powgate[requests]'``)::

    from powgate.client.requests import pow_session

    session = pow_session()
    session.post("https://ai.example/v1/chat/completions", json=...)

or mount :class:`PowAdapter` on a session of your own.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

try:
    import requests
    from requests.adapters import HTTPAdapter
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "powgate.client.requests needs the 'requests' extra: pip install 'powgate[requests]'"
    ) from exc

from powgate._errors import ChallengeRejected
from powgate._protocol import CHALLENGE_PATH

from ._common import DEFAULT_MAX_DIFFICULTY, Solving, is_challenge, read_challenge

__all__ = ["PowAdapter", "pow_session"]

_STATUS_OK = 200


class PowAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` that solves challenge answers and retries the request.

    Options are those of :class:`powgate.client.PowAuth`. Request bodies must
    be replayable (bytes, str, form or JSON data; not a generator).
    """

    def __init__(
        self,
        *,
        max_attempts: int = 3,
        prefetch: bool = False,
        workers: int = 1,
        max_difficulty: int = DEFAULT_MAX_DIFFICULTY,
        max_hashes_per_second: float | None = None,
        **adapter_options: Any,
    ) -> None:
        super().__init__(**adapter_options)
        self.prefetch = prefetch
        self.solving = Solving(
            max_attempts=max_attempts,
            max_difficulty=max_difficulty,
            workers=workers,
            max_hashes_per_second=max_hashes_per_second,
        )

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        attempts = 0
        if self.prefetch:
            challenge_response = super().send(self._challenge_request(request), **kwargs)
            # As in the httpx flow: a failed prefetch just costs the round trip it meant to save.
            if challenge_response.status_code == _STATUS_OK:
                request = _with_headers(
                    request,
                    self.solving.solution_headers(read_challenge(challenge_response.content)),
                )
                attempts += 1
            challenge_response.close()
        response = super().send(request, **kwargs)
        while is_challenge(response.status_code, response.headers):
            if attempts >= self.solving.max_attempts:
                response.close()
                raise ChallengeRejected(
                    f"the server rejected {attempts} solutions for "
                    f"{request.method} {request.path_url}",
                    attempts=attempts,
                )
            headers = self.solving.solution_headers(read_challenge(response.content))
            response.close()
            request = _with_headers(request, headers)
            attempts += 1
            response = super().send(request, **kwargs)
        return response

    @staticmethod
    def _challenge_request(request: requests.PreparedRequest) -> requests.PreparedRequest:
        parts = urlsplit(request.url or "")
        query = urlencode({"method": request.method or "GET", "path": parts.path or "/"})
        url = urlunsplit((parts.scheme, parts.netloc, CHALLENGE_PATH, query, ""))
        return requests.Request("GET", url, headers={"Accept": "application/json"}).prepare()


def _with_headers(
    request: requests.PreparedRequest, headers: dict[str, str]
) -> requests.PreparedRequest:
    retry = request.copy()
    retry.headers.update(headers)
    return retry


def pow_session(**options: Any) -> requests.Session:
    """A ``requests.Session`` with :class:`PowAdapter` mounted for http and https."""
    session = requests.Session()
    adapter = PowAdapter(**options)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
