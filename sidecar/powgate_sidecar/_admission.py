"""Admission: does a request to a protected route carry a solution worth forwarding?

Judging happens in steps, each answering with a small record rather than
a response object: :meth:`Admission.judge` finds the solution (header,
cookie, or a form it asks to read), checks it and says :class:`Refuse`
(the answer is ready, bytes and all), :class:`Admit` or :class:`ReadForm`.
An :class:`Admit` carries the solution's replay key unspent: the caller
runs its local checks (body limits, the effort queue) first and only then
:meth:`Admission.spend`\\ s it, so a solution is never used up by a request
the sidecar itself turns away. With a shared replay store the spend is a
round trip (:meth:`Admission.spend_async`), still before any key derivation.

Checking is synchronous for the hash schemes, a few microseconds. An
ALTCHA PoW v2 solution's check is a key derivation (milliseconds, MiB): its
:class:`Admit` carries the derivation as ``work``, which the dispatcher runs
in the bounded derivation pool after spending the solution, and then
:meth:`Admission.settle` counts the outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final, NamedTuple

from powgate import AUTH_SCHEME, DEEPSEEK_HEADER, Claim, Reason, Verdict, Verifier, claim_reason
from powgate._replay import ReplayCache
from powgate._verify import MISSING
from powgate.config import Mode

from . import _http
from ._carriers import SOLUTION_COOKIE, is_form, parse_solve_ms, split_cookie
from ._challenges import ChallengeStock
from ._http import Request
from ._metrics import Metrics, Outcome
from ._pricing import UNPRICED, Pricer, Quote
from ._replay_store import SharedReplay
from ._routes import Route, RouteTable
from ._trust import TrustedProxies

__all__ = ["Admission", "Admit", "ReadForm", "Refuse"]

log = logging.getLogger("powgate.sidecar")

_SOLUTION: Final = b"x-powgate-solution"
_DEEPSEEK: Final = DEEPSEEK_HEADER.lower().encode()
_SOLVE_MS: Final = b"x-powgate-solve-ms"
_COOKIE_NAME: Final = SOLUTION_COOKIE.encode()
_AUTHENTICATE: Final = f'WWW-Authenticate: {AUTH_SCHEME} realm="powgate", algorithm="SHA-256"\r\n'
#: Everything of a JSON refusal but its status line, date, length and body.
_JSON_FIELDS: Final = (
    b"Content-Type: application/json\r\n" + _AUTHENTICATE.encode() + b"Cache-Control: no-store\r\n"
)
_PAGE_FIELDS: Final = (
    b"Content-Type: text/html; charset=utf-8\r\n"
    + _AUTHENTICATE.encode()
    + b"Cache-Control: no-store\r\n"
)
_RETRY: Final = b"Retry-After: 1\r\n"
#: Reasons are ``StrEnum`` members, labels as they are: ``.value`` is a Python-level
#: property on every request (``enum.property``), the member itself is the string.
_OK: Final = Reason.OK.value
_MISSING: Final = Reason.MISSING.value
#: Builds a named tuple without its Python-level ``__new__``.
_new_tuple: Final = tuple.__new__


class Refuse(NamedTuple):
    """The sidecar answers the request itself, with ``response``.

    (A named tuple: the refusals of a flood build it with ``tuple.__new__``,
    no Python frame.)
    """

    response: bytes


class Admit:
    """Forward the request once local checks pass and the solution is spent."""

    __slots__ = (
        "clear_cookie",
        "difficulty",
        "enforcing",
        "expires",
        "key",
        "paid",
        "quote",
        "route",
        "work",
    )

    def __init__(
        self,
        *,
        route: Route,
        paid: bool,
        clear_cookie: bool,
        enforcing: bool,
        verdict: Verdict,
        key: bytes | None,
        quote: Quote,
        work: Callable[[], bool] | None = None,
    ) -> None:
        self.route = route
        #: What the client pays: a refusal after all (replayed, queue full) is priced alike.
        self.quote = quote
        #: A valid solution: the request may use the upstream connections kept for paid ones.
        self.paid = paid
        self.clear_cookie = clear_cookie
        self.enforcing = enforcing
        #: Priority in the effort queue.
        self.difficulty = verdict.difficulty
        #: The replay key to spend (``None``: nothing to spend).
        self.key = key
        self.expires = verdict.expires
        #: ALTCHA v2: the key derivation still to run once the key is spent
        #: (blocking; true when the solution is right).
        self.work = work


class ReadForm:
    """The solution may be in the body (ALTCHA's form field): read it, then judge again."""

    __slots__ = ()


READ_FORM: Final = ReadForm()


class Admission:
    """Judges requests to protected routes and writes the refusals."""

    def __init__(
        self,
        *,
        verifier: Verifier,
        replay: ReplayCache,
        stock: ChallengeStock,
        metrics: Metrics,
        page: bytes | None,
        trusted: TrustedProxies,
    ) -> None:
        self.verifier = verifier
        #: Proxies whose word about the client is believed; replaced on reconfiguration.
        self.trusted = trusted
        self._replay = replay
        self._stock = stock
        self._metrics = metrics
        #: The interstitial's static body, or ``None`` (browsers get JSON).
        self.page = page
        #: Prices per client; replaced by the sidecar with each change of its inputs
        #: (``None`` while no price depends on the client: every quote is unpriced).
        self.pricer: Pricer | None = None
        #: The policy's shared replay store, when it has one; replaced with the config.
        self.shared: SharedReplay | None = None
        #: (Date line, a JSON 428's head up to its Content-Length) for :meth:`challenge`.
        self._head = (b"", b"")

    # -- pricing --------------------------------------------------------------

    def quote(self, request: Request) -> Quote:
        """What ``request`` pays (counting it towards its client's rate): once per request."""
        pricer = self.pricer
        if pricer is None:
            return UNPRICED
        quote = pricer.quote(
            client=self.client(request),
            from_proxy=request.peer in self.trusted,
            header=request.header,
            now=time.monotonic(),
            wall=time.time(),
        )
        if quote.factor == 0.0:
            self._metrics.price_factor.observe(0.0)
        return quote

    # -- judging -------------------------------------------------------------

    def find(self, request: Request) -> tuple[bytes | None, bool]:
        """The solution of the header or cookie carrier, and whether it came in a cookie."""
        payload = request.header(_SOLUTION)
        if payload is not None:
            return payload, False
        # DeepSeek's clients answer in their own header.
        payload = request.header(_DEEPSEEK)
        if payload is not None:
            return payload, False
        if b"cookie" in request.names:
            for cookie in request.headers(b"cookie"):
                # Several Cookie fields are one list (RFC 6265 §5.4): search them all.
                if _COOKIE_NAME in cookie:
                    found, _ = split_cookie(cookie.decode("latin-1"))
                    if found is not None:
                        return found.encode("latin-1"), True
        return None, False

    def judge(
        self, request: Request, *, table: RouteTable, route: Route, quote: Quote
    ) -> Refuse | Admit | ReadForm:
        payload, from_cookie = self.find(request)
        if payload is None:
            if request.has_body:
                content_type = request.header(b"content-type")
                if content_type is not None and is_form(_media_type(content_type)):
                    return READ_FORM
            if table.mode is Mode.ENFORCE:
                # Nothing to verify, weigh or log: the refusal at once (a flood's usual case).
                return self._challenged(request, table=table, route=route, quote=quote)
        return self.conclude(
            request,
            table=table,
            route=route,
            quote=quote,
            payload=payload,
            from_cookie=from_cookie,
        )

    def conclude(
        self,
        request: Request,
        *,
        table: RouteTable,
        route: Route,
        quote: Quote,
        payload: bytes | str | None,
        from_cookie: bool = False,
        verdict: Verdict | None = None,
    ) -> Refuse | Admit:
        """Check ``payload`` (unless a ``verdict`` was reached already) and decide."""
        metrics = self._metrics
        key: bytes | None = None
        work: Callable[[], bool] | None = None
        if verdict is None:
            if payload is None:
                # What the verifier answers for no solution, without asking it.
                verdict = MISSING
            else:
                started = time.perf_counter()
                # Every cheap check; a key derivation is left for after the spend.
                verdict, key, work = self.verifier.begin(
                    payload,
                    binding=route.binding,
                    min_difficulty=route.minimum(time.time()),
                    client=quote.client,
                    owed=quote.factor,
                )
                # Requests without a solution are not timed: there was nothing to verify.
                metrics.verify_seconds.observe(time.perf_counter() - started)
        ok = verdict.reason is Reason.OK
        if ok:
            solve_ms = request.header(_SOLVE_MS)
            if solve_ms is not None and (seconds := parse_solve_ms(solve_ms.decode("latin-1"))):
                metrics.client_solve_seconds.observe(seconds)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug(
                "solution refused",
                extra={
                    "route": route.name,
                    "reason": verdict.reason.value,
                    "cause": verdict.cause,
                    "client": self.client(request),
                },
            )
        enforcing = table.enforcing
        if not ok:
            if enforcing:
                if verdict.reason is Reason.MISSING:
                    return self._challenged(request, table=table, route=route, quote=quote)
                metrics.count_request(
                    route=route.name, outcome=Outcome.REJECTED, reason=verdict.reason
                )
                return _new_tuple(
                    Refuse, (self.challenge(request, table=table, route=route, quote=quote),)
                )
            metrics.count_request(route=route.name, outcome=Outcome.OBSERVED, reason=verdict.reason)
        return Admit(
            route=route,
            paid=ok,
            clear_cookie=from_cookie,
            enforcing=enforcing,
            verdict=verdict,
            key=key,
            quote=quote,
            work=work if ok else None,
        )

    def _challenged(
        self, request: Request, *, table: RouteTable, route: Route, quote: Quote
    ) -> Refuse:
        """A request to an enforced route that carries no solution: counted, and its challenge."""
        self._metrics.count_request(route=route.name, outcome=Outcome.CHALLENGED, reason=_MISSING)
        return _new_tuple(Refuse, (self.challenge(request, table=table, route=route, quote=quote),))

    def spend(self, admit: Admit, request: Request, *, table: RouteTable) -> Refuse | None:
        """Use the solution up in this process's cache; ``None`` when the request may go on.

        With a shared store (:attr:`shared`) callers use :meth:`spend_async`.
        """
        key = admit.key
        if key is None:
            return None  # observe mode, an invalid solution: counted already
        outcome = self._replay.claim(key, expires_at=admit.expires, now=time.time())
        return self._spent(outcome, admit, request, table=table)

    async def spend_async(
        self, admit: Admit, request: Request, *, table: RouteTable
    ) -> Refuse | None:
        """:meth:`spend` through the shared store when there is one (cluster-wide single use)."""
        key = admit.key
        shared = self.shared
        if key is None or shared is None:
            return self.spend(admit, request, table=table)
        outcome = await shared.claim(key, expires_at=admit.expires, now=time.time())
        return self._spent(outcome, admit, request, table=table)

    def _spent(
        self, outcome: str, admit: Admit, request: Request, *, table: RouteTable
    ) -> Refuse | None:
        route = admit.route
        metrics = self._metrics
        if outcome == Claim.NEW and admit.work is not None:
            return None  # counted by settle() once the derivation has run
        if outcome == Claim.NEW:
            metrics.count_request(
                route=route.name,
                outcome=Outcome.ADMITTED if admit.enforcing else Outcome.OBSERVED,
                reason=_OK,
            )
            return None
        reason = claim_reason(outcome).value
        if not admit.enforcing:
            metrics.count_request(route=route.name, outcome=Outcome.OBSERVED, reason=reason)
            return None
        metrics.count_request(route=route.name, outcome=Outcome.REJECTED, reason=reason)
        # The store could not be asked: the solution was not spent, the client may retry it.
        status = 503 if outcome == Claim.UNAVAILABLE else 428
        return Refuse(
            self.challenge(request, table=table, route=route, quote=admit.quote, status=status)
        )

    def busy(self, admit: Admit, request: Request, *, table: RouteTable) -> Refuse | None:
        """The derivation pool is full: refuse without spending (observe mode: let through)."""
        route = admit.route
        reason = Reason.VERIFIER_BUSY.value
        if not admit.enforcing:
            self._metrics.count_request(route=route.name, outcome=Outcome.OBSERVED, reason=reason)
            return None
        self._metrics.count_request(route=route.name, outcome=Outcome.REJECTED, reason=reason)
        return Refuse(
            self.challenge(request, table=table, route=route, status=503, quote=admit.quote)
        )

    def settle(
        self, admit: Admit, request: Request, *, table: RouteTable, right: bool
    ) -> Refuse | None:
        """Count a spent v2 solution by what its derivation showed; ``None``: go on."""
        route = admit.route
        if right:
            outcome = Outcome.ADMITTED if admit.enforcing else Outcome.OBSERVED
            self._metrics.count_request(route=route.name, outcome=outcome, reason=_OK)
            return None
        reason = Reason.WRONG_NUMBER.value
        if not admit.enforcing:
            self._metrics.count_request(route=route.name, outcome=Outcome.OBSERVED, reason=reason)
            return None
        self._metrics.count_request(route=route.name, outcome=Outcome.REJECTED, reason=reason)
        return Refuse(self.challenge(request, table=table, route=route, quote=admit.quote))

    def client(self, request: Request) -> str:
        """Who sent ``request``: the peer, or what a trusted proxy in front says."""
        if not self.trusted:
            return request.peer
        forwarded_for = [
            entry.decode("latin-1")
            for value in request.headers(b"x-forwarded-for")
            for entry in value.split(b",")
        ]
        return self.trusted.client(peer=request.peer, forwarded_for=forwarded_for)

    # -- refusals ------------------------------------------------------------

    def challenge(
        self,
        request: Request,
        *,
        table: RouteTable,
        route: Route,
        quote: Quote,
        status: int = 428,
    ) -> bytes:
        """A refusal with a fresh challenge: JSON, or the interstitial for a browser navigation."""
        retry = _RETRY if status == 503 else b""
        page = self.page
        if page is not None and request.method == "GET":
            accept = request.header(b"accept")
            if accept is not None and b"text/html" in accept:
                # The page is static: it fetches its challenge, so a refused
                # navigation costs no challenge and no per-request bytes.
                return b"".join(
                    (
                        _http.status_line(status),
                        _http.date_line(),
                        _PAGE_FIELDS,
                        retry,
                        b"Content-Length: %d\r\n\r\n" % len(page),
                        page,
                    )
                )
        document = self.new_challenge(table=table, route=route, quote=quote)
        date = _http.date_line()
        if status == 428:
            # A flood's refusal: all but the document and its length prebuilt
            # (the head changes with the Date line, once a second).
            head = self._head
            if head[0] is not date:
                head = self._head = (date, _http.status_line(428) + date + _JSON_FIELDS)
            return b"%sContent-Length: %d\r\n\r\n%s" % (head[1], len(document), document)
        return b"".join(
            (
                _http.status_line(status),
                date,
                _JSON_FIELDS,
                retry,
                b"Content-Length: %d\r\n\r\n" % len(document),
                document,
            )
        )

    def new_challenge(self, *, table: RouteTable, route: Route, quote: Quote) -> bytes:
        """A fresh challenge document for ``route`` at ``quote``, as the client receives it."""
        self._metrics.price_factor.observe(quote.factor)
        return self._stock.take(
            binding=route.binding,
            difficulty=route.difficulty,
            ttl=table.config.challenge_ttl_seconds,
            client=quote.client,
            factor=quote.factor,
        )


def _media_type(content_type: bytes) -> str:
    return content_type.partition(b";")[0].strip().lower().decode("latin-1")
