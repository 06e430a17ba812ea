"""The sidecar's own endpoints under ``/.well-known/powgate/``: challenges and browser files."""

from __future__ import annotations

import json
from typing import Final
from urllib.parse import parse_qs

from powgate import CHALLENGE_PATH
from powgate.config import Mode

from . import _http
from ._admission import Admission
from ._http import Request
from ._pricing import UNPRICED
from ._routes import Route, RouteTable, canonical
from ._static import Asset

__all__ = ["WELL_KNOWN", "Endpoints"]

WELL_KNOWN: Final = "/.well-known/powgate/"
_NO_STORE: Final = b"Cache-Control: no-store\r\n"
_ASSET_CACHE: Final = b"Cache-Control: public, max-age=300, must-revalidate\r\n"
_NOT_CONFIGURED: Final = b"Retry-After: 1\r\n"


def not_configured() -> bytes:
    return _http.response(503, b"not configured yet\n", fields=_NOT_CONFIGURED)


class Endpoints:
    """Answers requests for ``WELL_KNOWN`` paths; nothing under it is forwarded."""

    def __init__(self, *, admission: Admission, assets: dict[str, Asset]) -> None:
        self._admission = admission
        self._assets = assets

    def answer(self, request: Request, *, table: RouteTable | None) -> bytes:
        if request.method not in ("GET", "HEAD"):
            return _http.response(405, fields=b"Allow: GET, HEAD\r\n")
        path = request.path
        if path == CHALLENGE_PATH:
            return self._issue(request, table=table)
        asset = self._assets.get(path)
        if asset is None:
            return _http.response(404, b"not found\n")
        fields = b"ETag: " + asset.etag.encode() + b"\r\n" + _ASSET_CACHE
        if request.header(b"if-none-match") == asset.etag.encode():
            return _http.response(304, fields=fields)
        return _http.response(
            200, asset.body, content_type=asset.content_type.encode(), fields=fields
        )

    def _issue(self, request: Request, *, table: RouteTable | None) -> bytes:
        if table is None:
            return not_configured()
        query = parse_qs(request.query, max_num_fields=16)
        method = query.get("method", ["POST"])[0].upper()
        path = query.get("path", [""])[0]
        if not path.startswith("/") or len(path) > 2048:
            return _json_error(400, "query parameter 'path' must be an absolute request path")
        canon = canonical(path)
        if canon is None:
            return _json_error(400, "query parameter 'path' is not a canonical request path")
        route = table.match(method=method, path=canon)
        if not isinstance(route, Route) or table.mode is Mode.OFF:
            return _json_error(404, f"no protected route for {method} {path}")
        quote = self._admission.quote(request)
        # A trusted caller that pays nothing needs no challenge; asked anyway, it gets the
        # route's own (its requests pass without one).
        document = self._admission.new_challenge(
            table=table, route=route, quote=quote if quote.factor else UNPRICED
        )
        return _http.response(200, document, content_type=b"application/json", fields=_NO_STORE)


def _json_error(status: int, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return _http.response(status, body, content_type=b"application/json", fields=_NO_STORE)
