"""The verifier proxy: one request handler on aiohttp's low-level server.

The handler runs for every request an attacker sends, so it avoids the web
framework's router and middlewares, works on a routing table compiled per
configuration, answers rejections from prebuilt headers, and forwards
admitted requests over a pooled keep-alive session, streaming both bodies.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import socket
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

import aiohttp
from aiohappyeyeballs import AddrInfoType
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy, istr
from pydantic import ValidationError
from yarl import URL

from powgate import (
    AUTH_SCHEME,
    CHALLENGE_PATH,
    Issuer,
    KeyRing,
    MemoryReplayCache,
    Reason,
    Verdict,
    Verifier,
    get_algorithm,
)
from powgate.config import Mode, SidecarConfig

from ._carriers import (
    SOLUTION_COOKIE,
    SOLUTION_HEADER,
    SOLVE_MS_HEADER,
    form_solution,
    is_form,
    parse_solve_ms,
    split_cookie,
)
from ._challenges import ChallengeStock
from ._metrics import NO_LABEL, Metrics, Outcome
from ._queue import EffortQueue
from ._routes import EXEMPT, Route, RouteTable
from ._static import ASSETS, Asset, Interstitial, load_asset, load_interstitial

__all__ = ["WELL_KNOWN", "Limits", "Sidecar"]

log = logging.getLogger("powgate.sidecar")

WELL_KNOWN: Final = "/.well-known/powgate/"
_AUTHENTICATE: Final = f'{AUTH_SCHEME} realm="powgate", algorithm="SHA-256"'
_SMALL_BODY: Final = 64 * 1024
# RFC 9110 §7.6.1 hop-by-hop fields (lower case, as compared), plus the
# solution carriers, which are ours alone.
_HOP_BY_HOP: Final = frozenset(
    (
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    )
)  # fmt: skip
_X_FORWARDED_FOR: Final = istr("X-Forwarded-For")
_X_FORWARDED_PROTO: Final = istr("X-Forwarded-Proto")
_X_FORWARDED_HOST: Final = istr("X-Forwarded-Host")
#: Not copied from the request: the hop-by-hop fields, the solution, and
#: X-Forwarded-For, which is re-written with the peer appended.
_REQUEST_DROP: Final = _HOP_BY_HOP | {
    SOLUTION_HEADER.lower(),
    SOLVE_MS_HEADER.lower(),
    _X_FORWARDED_FOR.lower(),
}
_REJECT_HEADERS: Final = CIMultiDict(
    {
        hdrs.CONTENT_TYPE: "application/json",
        hdrs.WWW_AUTHENTICATE: _AUTHENTICATE,
        hdrs.CACHE_CONTROL: "no-store",
    }
)
_PAGE_HEADERS: Final = CIMultiDict(
    {
        hdrs.CONTENT_TYPE: "text/html; charset=utf-8",
        hdrs.WWW_AUTHENTICATE: _AUTHENTICATE,
        hdrs.CACHE_CONTROL: "no-store",
    }
)
_CHALLENGE_HEADERS: Final = CIMultiDict(
    {hdrs.CONTENT_TYPE: "application/json", hdrs.CACHE_CONTROL: "no-store"}
)
_CLEAR_COOKIE: Final = f"{SOLUTION_COOKIE}=; Max-Age=0; Path=/; SameSite=Strict"


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a client may make the sidecar do, and upstream timeouts."""

    max_body_bytes: int = 32 * 1024 * 1024
    #: Forms are read whole to find ALTCHA's field; larger ones count as ``oversized``.
    max_form_bytes: int = 64 * 1024
    body_read_seconds: float = 10.0
    upstream_connect_seconds: float = 5.0
    #: Between two reads from the upstream: generous, a model may think before its first token.
    upstream_read_seconds: float = 300.0
    upstream_connections: int = 1024


#: A request body to forward: none (stream the request's own), read bytes, or a re-assembled stream.
_Body: TypeAlias = bytes | AsyncIterator[bytes] | None


#: Body-limit refusals by the ``kind`` label they are counted under.
_CLIENT_ERRORS: Final = {
    "slow_client": (408, "request body too slow\n"),
    "body_too_large": (413, "request body too large\n"),
}


class _BodyTooLargeError(Exception):
    """A chunked request body passed ``max_body_bytes`` while being forwarded."""


class Sidecar:
    """The proxy's state and request handler (``handle`` is the aiohttp handler)."""

    def __init__(
        self,
        *,
        upstream: str,
        keyring: KeyRing,
        config: SidecarConfig | None,
        metrics: Metrics | None = None,
        limits: Limits | None = None,
        replay: MemoryReplayCache | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self.limits = limits if limits is not None else Limits()
        self._base = upstream.rstrip("/")
        self._replay = replay if replay is not None else MemoryReplayCache()
        self._keyring = keyring
        self._verifier = Verifier(keyring=keyring, replay=self._replay)
        self._stock = ChallengeStock(Issuer(keyring=keyring))
        self._table: RouteTable | None = None
        self._queue: EffortQueue | None = None
        self._session: aiohttp.ClientSession | None = None
        self._assets: dict[str, Asset] = {}
        self._interstitial: Interstitial | None = None
        self.metrics.replay_cache_entries.set_function(lambda: len(self._replay))
        self.metrics.queue_depth.set_function(lambda: self._queue.depth if self._queue else 0)
        if config is not None:
            self.apply_config(config, source="initial")

    # -- configuration ------------------------------------------------------

    @property
    def config(self) -> SidecarConfig | None:
        table = self._table
        return table.config if table is not None else None

    def apply_config(self, config: SidecarConfig, *, source: str) -> bool:
        """Put ``config`` in force for the next request; ``False`` (old one kept) if unusable."""
        if get_algorithm(config.algorithm) is None:
            self._refuse(source=source, why=f"unknown algorithm {config.algorithm!r}")
            return False
        table = RouteTable(config)
        current = self._table
        if current is not None and current.config == config:
            self.metrics.config_reloads_total.labels(source, "unchanged").inc()
            return True
        # Difficulties and lifetimes may have changed: no challenge issued
        # under the old configuration is handed out under the new one.
        if current is None or current.config.algorithm != config.algorithm:
            self._stock.restock(Issuer(keyring=self._keyring, algorithm=config.algorithm))
        else:
            self._stock.restock()
        if self._queue is None:
            self._queue = EffortQueue(config.queue)
        else:
            self._queue.set_limits(config.queue)
        self._table = table
        self.metrics.set_config(
            policy=config.policy, version=table.version, difficulties=table.difficulties()
        )
        self.metrics.config_reloads_total.labels(source, "applied").inc()
        log.info(
            "configuration applied",
            extra={
                "source": source,
                "version": table.version,
                "mode": str(config.mode),
                "difficulty": config.difficulty,
            },
        )
        return True

    def apply_document(self, text: str | bytes | None, *, source: str) -> bool:
        """Parse and apply a rendered config document; a bad or missing one keeps the last good."""
        if text is None:
            self._refuse(
                source=source, why="the configuration document is missing", result="missing"
            )
            return False
        try:
            config = SidecarConfig.from_json(text)
        except ValidationError as exc:
            errors = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<document>'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            self._refuse(source=source, why=f"invalid configuration document: {errors}")
            return False
        return self.apply_config(config, source=source)

    def _refuse(self, *, source: str, why: str, result: str = "invalid") -> None:
        self.metrics.config_reloads_total.labels(source, result).inc()
        kept = self._table.version if self._table is not None else None
        log.error(
            "%s; keeping the configuration in force", why, extra={"source": source, "version": kept}
        )

    def report_source_error(self, *, source: str, why: str) -> None:
        """A configuration source failed (unreachable, unreadable); nothing changes."""
        self._refuse(source=source, why=why, result="error")

    def apply_keyring(self, keyring: KeyRing) -> None:
        """Rotate keys: new challenges are signed with the new active key at once."""
        self._keyring = keyring
        self._verifier.keyring = keyring
        self._stock.issuer.keyring = keyring
        self._stock.restock()
        self.metrics.config_reloads_total.labels("keyfile", "applied").inc()
        log.info("key ring applied", extra={"source": "keyfile", "active": keyring.active})

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        """Open the upstream pool and load the browser assets (inside the event loop)."""
        limits = self.limits
        connector = aiohttp.TCPConnector(
            limit=limits.upstream_connections,
            limit_per_host=0,
            enable_cleanup_closed=False,
            socket_factory=_upstream_socket,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            # Forward what the client sent, nothing the client library would add.
            request_class=_ForwardRequest,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=limits.upstream_connect_seconds,
                sock_read=limits.upstream_read_seconds,
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        for name in ASSETS:
            asset = load_asset(name)
            if asset is not None:
                self._assets[WELL_KNOWN + name] = asset
        self._interstitial = load_interstitial()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the handler --------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        # One test covers both our own endpoints ("/.well-known/…") and paths
        # that need a closer look, so the common request pays a single scan.
        if "/." in path or "//" in path:
            if path.startswith(WELL_KNOWN):
                return self._well_known(request, path=path)
            # An upstream that normalises "/x/../v1" would serve a protected
            # route under an unprotected name: such paths are refused outright.
            if posixpath.normpath(path) != path.rstrip("/") or "//" in path:
                self.metrics.client_errors_total.labels("bad_path").inc()
                return web.Response(status=400, text="non-canonical request path\n")
        table = self._table
        if table is None:
            return web.Response(
                status=503, text="not configured yet\n", headers={hdrs.RETRY_AFTER: "1"}
            )
        target = table.match(method=request.method, path=path)
        if target is None or (target is not EXEMPT and table.mode is Mode.OFF):
            route_name = target.name if isinstance(target, Route) else NO_LABEL
            self.metrics.count_request(
                route=route_name, outcome=Outcome.UNPROTECTED, reason=NO_LABEL
            )
            return await self._forward(request, route=route_name, body=None, clear_cookie=False)
        if not isinstance(target, Route):
            self.metrics.count_request(route=NO_LABEL, outcome=Outcome.EXEMPT, reason=NO_LABEL)
            return await self._forward(request, route=NO_LABEL, body=None, clear_cookie=False)
        return await self._protected(request, table=table, route=target)

    async def _protected(
        self, request: web.BaseRequest, *, table: RouteTable, route: Route
    ) -> web.StreamResponse:
        headers = request.headers
        payload = headers.get(SOLUTION_HEADER)
        from_cookie = False
        if payload is None and hdrs.COOKIE in headers:
            payload, _ = split_cookie(headers[hdrs.COOKIE])
            from_cookie = payload is not None
        body: _Body = None
        verdict: Verdict | None = None
        if payload is None and request.body_exists and is_form(request.content_type):
            read = await self._read_form(request)
            if isinstance(read, web.StreamResponse):
                return read
            body, payload, verdict = read
        if verdict is None:
            started = time.perf_counter()
            verdict = self._verifier.verify(
                payload, binding=route.binding, min_difficulty=route.min_difficulty
            )
            if payload is not None:
                # Not the flood's commonest request (no solution): there was
                # nothing to verify, and a histogram observation costs locks.
                self.metrics.verify_seconds.observe(time.perf_counter() - started)
        metrics = self.metrics
        if verdict.ok:
            solve_ms = headers.get(SOLVE_MS_HEADER)
            if solve_ms is not None and (seconds := parse_solve_ms(solve_ms)) is not None:
                metrics.client_solve_seconds.observe(seconds)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug(
                "solution refused",
                extra={
                    "route": route.name,
                    "reason": verdict.reason.value,
                    "cause": verdict.cause,
                    "peer": request.remote,
                },
            )
        if table.enforcing:
            if not verdict.ok:
                outcome = (
                    Outcome.CHALLENGED if verdict.reason is Reason.MISSING else Outcome.REJECTED
                )
                metrics.count_request(
                    route=route.name, outcome=outcome, reason=verdict.reason.value
                )
                return self._challenge(request, table=table, route=route, status=428)
            metrics.count_request(
                route=route.name, outcome=Outcome.ADMITTED, reason=Reason.OK.value
            )
        else:
            metrics.count_request(
                route=route.name, outcome=Outcome.OBSERVED, reason=verdict.reason.value
            )
        queue = self._queue
        if queue is None or table.config.queue.max_concurrent == 0:
            return await self._forward(
                request, route=route.name, body=body, clear_cookie=from_cookie
            )
        waited = time.monotonic()
        refused = await queue.acquire(difficulty=verdict.difficulty)
        if refused is not None:
            metrics.queue_dropped_total.labels(route.name, refused).inc()
            response = self._challenge(request, table=table, route=route, status=503)
            response.headers[hdrs.RETRY_AFTER] = "1"
            return response
        metrics.queue_wait_seconds.observe(time.monotonic() - waited)
        try:
            return await self._forward(
                request, route=route.name, body=body, clear_cookie=from_cookie
            )
        finally:
            queue.release()

    async def _read_form(
        self, request: web.BaseRequest
    ) -> web.StreamResponse | tuple[_Body, str | None, Verdict | None]:
        """Buffer a (bounded) form body to find the ``altcha`` field.

        Returns what to forward (the bytes read, or those chained to the rest
        of the stream when the form was too large to search), the payload
        found, and a verdict when the form itself decides one.
        """
        limit = self.limits.max_form_bytes
        length = request.content_length
        if length is not None and length > limit:
            return None, None, Verdict(Reason.OVERSIZED, f"form body of {length} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.limits.body_read_seconds):
                async for chunk in request.content.iter_any():
                    size += len(chunk)
                    chunks.append(chunk)
                    if size > limit:
                        rest = self._bounded(request.content, prefix=chunks)
                        return (
                            rest,
                            None,
                            Verdict(Reason.OVERSIZED, f"form body over {limit} bytes"),
                        )
        except TimeoutError:
            return self._client_error("slow_client")
        body = b"".join(chunks)
        found = form_solution(
            mimetype=request.content_type, header=request.headers[hdrs.CONTENT_TYPE], body=body
        )
        return body, found, None

    def _challenge(
        self, request: web.BaseRequest, *, table: RouteTable, route: Route, status: int
    ) -> web.Response:
        document = self._new_challenge(table=table, route=route)
        page = self._interstitial
        if (
            page is not None
            and request.method == hdrs.METH_GET
            and "text/html" in request.headers.get(hdrs.ACCEPT, "")
        ):
            return web.Response(status=status, body=page.render(document), headers=_PAGE_HEADERS)
        return web.Response(status=status, body=document, headers=_REJECT_HEADERS)

    # -- our own endpoints --------------------------------------------------

    def _well_known(self, request: web.BaseRequest, *, path: str) -> web.StreamResponse:
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            return web.Response(status=405, headers={hdrs.ALLOW: "GET, HEAD"})
        if path == CHALLENGE_PATH:
            return self._issue(request)
        asset = self._assets.get(path)
        if asset is None:
            return web.Response(status=404, text="not found\n")
        headers = {
            hdrs.ETAG: asset.etag,
            hdrs.CACHE_CONTROL: "public, max-age=300, must-revalidate",
        }
        if request.headers.get(hdrs.IF_NONE_MATCH) == asset.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=asset.body,
            content_type=None,
            headers={**headers, hdrs.CONTENT_TYPE: asset.content_type},
        )

    def _issue(self, request: web.BaseRequest) -> web.StreamResponse:
        table = self._table
        if table is None:
            return web.Response(
                status=503, text="not configured yet\n", headers={hdrs.RETRY_AFTER: "1"}
            )
        query = request.query
        method, path = query.get("method", hdrs.METH_POST).upper(), query.get("path")
        if not path or not path.startswith("/") or len(path) > 2048:
            return _json_error(
                status=400, message="query parameter 'path' must be an absolute request path"
            )
        route = table.match(method=method, path=path)
        if not isinstance(route, Route) or table.mode is Mode.OFF:
            return _json_error(status=404, message=f"no protected route for {method} {path}")
        document = self._new_challenge(table=table, route=route)
        return web.Response(body=document, headers=_CHALLENGE_HEADERS)

    def _new_challenge(self, *, table: RouteTable, route: Route) -> bytes:
        """A fresh challenge document for ``route``, as the client receives it."""
        return self._stock.take(
            binding=route.binding,
            difficulty=route.difficulty,
            ttl=table.config.challenge_ttl_seconds,
        )

    # -- forwarding ---------------------------------------------------------

    def _upstream_headers(self, request: web.BaseRequest) -> list[tuple[str, str]]:
        headers = request.headers
        pairs = _forwardable(headers, drop=_REQUEST_DROP)
        cookie = headers.get(hdrs.COOKIE)
        if cookie is not None and SOLUTION_COOKIE in cookie:
            _, rest = split_cookie(cookie)
            pairs = [pair for pair in pairs if pair[0].lower() != "cookie"]
            if rest is not None:
                pairs.append((hdrs.COOKIE, rest))
        peer = request.remote or ""
        prior = headers.getall(_X_FORWARDED_FOR, ())
        pairs.append((_X_FORWARDED_FOR, ", ".join((*prior, peer)) if prior else peer))
        if _X_FORWARDED_PROTO not in headers:
            pairs.append((_X_FORWARDED_PROTO, request.scheme))
        if _X_FORWARDED_HOST not in headers and (host := headers.get(hdrs.HOST)) is not None:
            pairs.append((_X_FORWARDED_HOST, host))
        return pairs

    async def _forward(
        self, request: web.BaseRequest, *, route: str, body: _Body, clear_cookie: bool
    ) -> web.StreamResponse:
        session = self._session
        assert session is not None, "Sidecar.start() was not called"
        data: _Body | aiohttp.StreamReader = body
        if body is None and request.body_exists:
            length = request.content_length
            if length is not None and length > self.limits.max_body_bytes:
                return self._client_error("body_too_large")
            if length is None:
                data = self._bounded(request.content)
            elif length <= _SMALL_BODY:
                # A chat request is a few KiB: handing aiohttp's client the
                # bytes lets it send head and body in one write, where a
                # stream reader costs milliseconds before the upstream sees
                # the whole request.
                try:
                    async with asyncio.timeout(self.limits.body_read_seconds):
                        data = await request.content.readexactly(length)
                except (TimeoutError, asyncio.IncompleteReadError):
                    return self._client_error("slow_client")
            else:
                data = request.content
        url = URL(self._base + request.raw_path, encoded=True)
        metrics = self.metrics
        metrics.inflight += 1
        started = time.perf_counter()
        try:
            try:
                upstream = await session.request(
                    request.method,
                    url,
                    headers=self._upstream_headers(request),
                    data=data,
                    allow_redirects=False,
                )
            except _BodyTooLargeError:
                return self._client_error("body_too_large")
            except (TimeoutError, aiohttp.ServerTimeoutError):
                return self._upstream_failed(kind="timeout", status=504)
            except aiohttp.ClientConnectorError:
                return self._upstream_failed(kind="connect", status=502)
            except aiohttp.ClientError as exc:
                if isinstance(exc.__cause__, _BodyTooLargeError):
                    return self._client_error("body_too_large")
                return self._upstream_failed(kind="protocol", status=502)
            metrics.observe_upstream(
                route=route, status=upstream.status, seconds=time.perf_counter() - started
            )
            try:
                return await self._relay(request, upstream=upstream, clear_cookie=clear_cookie)
            finally:
                upstream.release()
        finally:
            metrics.inflight -= 1

    def _client_error(self, kind: str) -> web.Response:
        """The one answer to a client that broke a body limit: counted, then hung up on."""
        self.metrics.client_errors_total.labels(kind).inc()
        status, text = _CLIENT_ERRORS[kind]
        return web.Response(status=status, text=text, headers={hdrs.CONNECTION: "close"})

    def _upstream_failed(self, *, kind: str, status: int) -> web.Response:
        self.metrics.upstream_errors_total.labels(kind).inc()
        text = "upstream timed out\n" if status == 504 else "upstream unavailable\n"
        return web.Response(status=status, text=text)

    async def _bounded(
        self, content: aiohttp.StreamReader, *, prefix: Sequence[bytes] = ()
    ) -> AsyncIterator[bytes]:
        """Stream a body of unknown length, failing the upstream request past ``max_body_bytes``."""
        limit = self.limits.max_body_bytes
        size = 0
        for chunk in prefix:
            size += len(chunk)
            yield chunk
        async for chunk in content.iter_any():
            size += len(chunk)
            if size > limit:
                raise _BodyTooLargeError
            yield chunk

    async def _relay(
        self, request: web.BaseRequest, *, upstream: aiohttp.ClientResponse, clear_cookie: bool
    ) -> web.StreamResponse:
        headers = _forwardable(upstream.headers, drop=_HOP_BY_HOP)
        if clear_cookie:
            headers.append((hdrs.SET_COOKIE, _CLEAR_COOKIE))
        length = upstream.content_length
        if length is not None and length <= _SMALL_BODY and request.method != hdrs.METH_HEAD:
            # Small bodies go out in one write with their headers.
            try:
                payload = await upstream.read()
            except (aiohttp.ClientError, TimeoutError):
                return self._upstream_failed(kind="reset", status=502)
            return web.Response(
                status=upstream.status, reason=upstream.reason, body=payload, headers=headers
            )
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        await response.prepare(request)
        try:
            # iter_any yields whatever has arrived: Server-Sent Events go out event by event.
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.metrics.upstream_errors_total.labels(
                "timeout" if isinstance(exc, TimeoutError) else "reset"
            ).inc()
            # Headers are out: the only honest signal left is a cut connection,
            # not a clean end of the body.
            transport = request.transport
            if transport is not None:
                transport.abort()
        return response


def _forwardable(headers: CIMultiDictProxy[str], *, drop: frozenset[str]) -> list[tuple[str, str]]:
    """``headers`` as pairs, without ``drop`` (lower-case names) and those ``Connection`` names."""
    if hdrs.CONNECTION in headers:
        drop = drop.union(
            token.strip().lower()
            for value in headers.getall(hdrs.CONNECTION)
            for token in value.split(",")
        )
    return [(name, value) for name, value in headers.items() if name.lower() not in drop]


#: What aiohttp's client must not add to a forwarded request on its own.
_NO_AUTO_HEADERS: Final[CIMultiDict[None]] = CIMultiDict(
    {hdrs.ACCEPT: None, hdrs.ACCEPT_ENCODING: None, hdrs.USER_AGENT: None, hdrs.CONTENT_TYPE: None}
)


class _ForwardRequest(aiohttp.ClientRequest):
    """A client request carrying the caller's headers and none of aiohttp's defaults."""

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        # The base method fills in Accept, Accept-Encoding and User-Agent;
        # naming them all in the session's skip_auto_headers instead costs a
        # sort and two header copies per request. The skip set kept here also
        # stops aiohttp from inventing a Content-Type for a body.
        self._skip_auto_headers = _NO_AUTO_HEADERS


def _upstream_socket(addr_info: AddrInfoType) -> socket.socket:
    """A socket to the upstream with Nagle's algorithm off.

    aiohttp's client leaves it on: a small request written while the last
    segment of the previous one is unacknowledged waits for the peer's
    delayed ACK, which showed as milliseconds of added latency per request.
    """
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=kind, proto=proto)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _json_error(*, status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": message}, status=status, headers={hdrs.CACHE_CONTROL: "no-store"}
    )
