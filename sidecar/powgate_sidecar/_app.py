"""The sidecar: its configuration and keys, and the path each request takes.

:class:`Sidecar` holds what is in force (routing table, keys, limits) and
dispatches each parsed request: the sidecar's own endpoints, admission
(:mod:`._admission`) for protected routes, forwarding (:mod:`._forward`)
for what is let through. The HTTP connection itself is
:mod:`._connection`'s; nothing here parses or frames bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from powgate import (
    DEEPSEEK_CHALLENGE_PATH,
    DeepSeekChallenge,
    DerivationPool,
    Issuer,
    KeyRing,
    MemoryReplayCache,
    Reason,
    Verdict,
    Verifier,
    get_algorithm,
)
from powgate.config import Mode, ReplayStoreSpec, SidecarConfig
from powgate.pricing import ApiKeyHashes, PricingConfig
from powgate.reputation import ReputationIndex, ReputationList

from . import _http
from ._admission import Admission, Admit, ReadForm, Refuse
from ._carriers import form_solution
from ._challenges import ChallengeStock
from ._connection import Exchange, Listener
from ._endpoints import WELL_KNOWN, Endpoints, not_configured
from ._forward import Forwarder, Opener, UpstreamPool
from ._limits import Limits
from ._metrics import (
    NO_LABEL,
    KeysCollector,
    Metrics,
    Outcome,
    OverloadCollector,
    PricingCollector,
    PricingView,
)
from ._outbox import Outbox
from ._overload import Overload
from ._pricing import Pricer, Quote, TrustCounts
from ._queue import EffortQueue
from ._replay_store import SharedReplay
from ._routes import EXEMPT, Route, RouteTable, canonical
from ._shared_rates import SharedRates
from ._static import ASSETS, load_asset, load_interstitial
from ._store import RedisStore, SharedStore
from ._trust import TrustedProxies

__all__ = ["WELL_KNOWN", "Limits", "Sidecar"]

log = logging.getLogger("powgate.sidecar")

#: Makes the store a config names (the Redis/Valkey client; a seam for tests).
StoreOpener = Callable[[ReplayStoreSpec], SharedStore]

_BAD_PATH: Final = _http.response(400, b"non-canonical request path\n")
_TOO_LARGE: Final = b"request body too large\n"

#: The algorithm whose challenges DeepSeek's clients fetch from DEEPSEEK_CHALLENGE_PATH.
DEEPSEEK_ALGORITHM: Final = "DeepSeekHashV1"
#: ``{"target_path": "…"}`` is tens of bytes; anything much larger is not one.
_DEEPSEEK_BODY_BYTES: Final = 4096


class Sidecar:
    """The proxy's state and its request dispatcher."""

    def __init__(
        self,
        *,
        upstream: str,
        keyring: KeyRing,
        config: SidecarConfig | None,
        metrics: Metrics | None = None,
        limits: Limits | None = None,
        replay: MemoryReplayCache | None = None,
        trusted_proxies: Sequence[str] = (),
        opener: Opener | None = None,
        replay_store_credentials: Path | None = None,
        open_store: StoreOpener | None = None,
    ) -> None:
        """``replay_store_credentials``: the mounted Secret folder of the shared replay
        store; ``open_store`` (a test seam) makes the store a config names."""
        self.metrics = metrics if metrics is not None else Metrics()
        self.limits = limits if limits is not None else Limits()
        #: Proxies trusted by flag; each config may add its own (its policy's trustedProxies).
        self._flag_proxies = tuple(trusted_proxies)
        self._config_proxies: tuple[str, ...] = ()
        trusted = TrustedProxies(self._flag_proxies)
        #: Connection caps and refusals deferred while the loop lags (the config's overload).
        self.overload = Overload()
        self.overload.trusted = trusted
        #: One outbox for both sides: a turn's answers and upstream requests leave together.
        self._outbox = Outbox()
        self._forwarder = Forwarder(
            pool=UpstreamPool(upstream, limits=self.limits, opener=opener, outbox=self._outbox),
            metrics=self.metrics,
            trusted=trusted,
        )
        self._replay = replay if replay is not None else MemoryReplayCache()
        self._open_store: StoreOpener = open_store or functools.partial(
            RedisStore, credentials=replay_store_credentials
        )
        #: The policy's shared replay store (with its health probe), when the config names one.
        self._shared: SharedReplay | None = None
        self._watcher: asyncio.Task[None] | None = None
        #: Client rates counted across the policy's sidecars, through the same store.
        self._rates: SharedRates | None = None
        self._rates_flusher: asyncio.Task[None] | None = None
        self._keyring = keyring
        self._verifier = Verifier(keyring=keyring, replay=self._replay)
        self._stock = ChallengeStock(Issuer(keyring=keyring))
        #: ALTCHA PoW v2 derivations, off the event loop and bounded.
        self._pool = DerivationPool(
            workers=self.limits.derivation_threads, max_pending=self.limits.derivations_pending
        )
        self._admission = Admission(
            verifier=self._verifier,
            replay=self._replay,
            stock=self._stock,
            metrics=self.metrics,
            page=None,
            trusted=trusted,
        )
        self._endpoints = Endpoints(admission=self._admission, assets={})
        self._table: RouteTable | None = None
        self._queue: EffortQueue | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Replay keys of admitted requests waiting in the queue, not yet spent.
        self._queued_keys: set[bytes] = set()
        #: Per-client pricing's inputs besides the config: trusted API-key digests (the key
        #: folder) and the reputation list (beside the config); the pricer is rebuilt from
        #: them, keeping its counts, whenever one changes.
        self._api_keys = ApiKeyHashes()
        self._reputation = ReputationIndex()
        self._trust_counts = TrustCounts()
        self._pricer: Pricer | None = None
        self.metrics.registry.register(PricingCollector(self._pricing_view, clock=time.monotonic))
        self.metrics.registry.register(KeysCollector(self._keys_view))
        self.metrics.registry.register(OverloadCollector(self.overload))
        self.metrics.replay_cache_entries.set_function(lambda: len(self._replay))
        self.metrics.queue_depth.set_function(lambda: self._queue.depth if self._queue else 0)
        self.metrics.derivations_pending.set_function(lambda: self._pool.pending)
        if config is not None:
            self.apply_config(config, source="initial")

    # -- configuration ------------------------------------------------------

    @property
    def config(self) -> SidecarConfig | None:
        table = self._table
        return table.config if table is not None else None

    @property
    def derivations(self) -> DerivationPool:
        """The bounded pool ALTCHA PoW v2 keys are derived in."""
        return self._pool

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
        if (
            current is None
            or current.config.algorithm != config.algorithm
            or current.config.kdf != config.kdf
        ):
            issuer = Issuer(
                keyring=self._keyring, algorithm=config.algorithm, params=config.kdf_params()
            )
            self._stock.restock(issuer)
        else:
            self._stock.restock()
        # A smaller bound refuses new claims until expiry brings the cache under it.
        self._replay.max_entries = config.replay_cache_entries
        self.metrics.replay_cache_capacity.set(config.replay_cache_entries)
        self._apply_store(config)
        if self._queue is None:
            self._queue = EffortQueue(config.queue)
        else:
            self._queue.set_limits(config.queue)
        self._table = table
        self.overload.configure(config.overload)
        self._trust_proxies(tuple(config.trusted_proxies))
        self._reprice()
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
            config, ignored = SidecarConfig.parse(text)
        except ValidationError as exc:
            errors = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<document>'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            self._refuse(source=source, why=f"invalid configuration document: {errors}")
            return False
        if ignored:
            # A newer operator's fields: applied without them, and said so.
            self.metrics.config_fields_ignored_total.labels(source).inc(len(ignored))
            log.warning(
                "config fields unknown to this version ignored",
                extra={"source": source, "fields": ", ".join(ignored)},
            )
        return self.apply_config(config, source=source)

    def _apply_store(self, config: SidecarConfig) -> None:
        """Use the shared replay store ``config`` names (a new one only when it changed)."""
        spec, current = config.replay_store, self._shared
        if current is not None and current.spec == spec and current.policy == config.policy:
            return
        if current is not None:
            self._retire_store(current)
        shared = rates = None
        if spec is not None:
            store = self._open_store(spec)
            shared = SharedReplay(
                local=self._replay,
                store=store,
                spec=spec,
                policy=config.policy,
                metrics=self.metrics,
            )
            rates = SharedRates(store=store, policy=config.policy)
        self._shared = self._admission.shared = shared
        self._rates = rates
        with contextlib.suppress(RuntimeError):  # no loop yet: start() begins the probe
            asyncio.get_running_loop()
            self._watch_store()

    def _watch_store(self) -> None:
        if self._shared is not None and self._watcher is None:
            self._watcher = asyncio.ensure_future(self._shared.watch())
        if self._rates is not None and self._rates_flusher is None:
            self._rates_flusher = asyncio.ensure_future(self._rates.run(self._rate_settings))

    def _rate_settings(self) -> tuple[PricingConfig | None, KeyRing]:
        pricer = self._pricer
        return (pricer.pricing if pricer is not None else None, self._keyring)

    def _stop_store_tasks(self) -> None:
        for task in (self._watcher, self._rates_flusher):
            if task is not None:
                task.cancel()
        self._watcher = self._rates_flusher = None

    def _retire_store(self, shared: SharedReplay) -> None:
        self._stop_store_tasks()
        with contextlib.suppress(RuntimeError):  # without a loop it never connected
            asyncio.get_running_loop()
            self._spawn(shared.close())

    def _refuse(self, *, source: str, why: str, result: str = "invalid") -> None:
        self.metrics.config_reloads_total.labels(source, result).inc()
        kept = self._table.version if self._table is not None else None
        log.error(
            "%s; keeping the configuration in force", why, extra={"source": source, "version": kept}
        )

    def report_source_error(self, *, source: str, why: str) -> None:
        """A configuration source failed (unreachable, unreadable); nothing changes."""
        self._refuse(source=source, why=why, result="error")

    def apply_api_keys(self, hashes: ApiKeyHashes) -> None:
        """Trust these API-key digests from the next request on."""
        self._api_keys = hashes
        self._reprice()
        self.metrics.config_reloads_total.labels("apikeys", "applied").inc()

    def apply_reputation(self, text: str | bytes | None, *, source: str) -> bool:
        """Apply a reputation list document (None: no list); a bad one keeps the last good."""
        try:
            listed = ReputationList() if text is None else ReputationList.from_json(text)
        except ValueError as exc:
            self.metrics.config_reloads_total.labels(source, "invalid").inc()
            log.error(
                "invalid reputation list (%s); keeping the list in force",
                exc,
                extra={"source": source},
            )
            return False
        self._reputation = ReputationIndex(listed.entries)
        self._reprice()
        self.metrics.config_reloads_total.labels(source, "applied").inc()
        return True

    def _trust_proxies(self, networks: tuple[str, ...]) -> None:
        """Believe forwarding headers from the flag's proxies and the config's, from now on."""
        if networks == self._config_proxies:
            return
        self._config_proxies = networks
        trusted = TrustedProxies((*self._flag_proxies, *networks))
        self._admission.trusted = trusted
        self._forwarder.trusted = trusted
        self.overload.trusted = trusted

    def _reprice(self) -> None:
        """Rebuild the pricer from what is in force; rates counted so far are kept."""
        table = self._table
        if table is None:
            return
        previous = self._pricer
        self._pricer = Pricer(
            config=table.config,
            api_keys=self._api_keys,
            reputation=self._reputation,
            sketch=previous.sketch if previous is not None else None,
            trust=self._trust_counts,
            now=time.monotonic(),
            shared=self._rates,
        )
        # An inactive pricer quotes every request unpriced: the admission skips it.
        self._admission.pricer = self._pricer if self._pricer.active else None

    def _pricing_view(self) -> PricingView | None:
        table, pricer = self._table, self._pricer
        if table is None or pricer is None:
            return None
        return PricingView(
            pricer, self._keyring, table.config.policy, len(self._reputation), self._rates
        )

    def _keys_view(self) -> tuple[str, KeyRing]:
        table = self._table
        return (table.config.policy if table is not None else "", self._keyring)

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
        """Load the browser files (the upstream pool connects on demand)."""
        assets = {}
        for name in ASSETS:
            asset = load_asset(name)
            if asset is not None:
                assets[WELL_KNOWN + name] = asset
        self._endpoints = Endpoints(admission=self._admission, assets=assets)
        self._admission.page = load_interstitial()
        self._watch_store()

    def listener(self, *, header_seconds: float = 15.0) -> Listener:
        """A protocol factory for ``loop.create_server``: connections served by this sidecar."""
        return Listener(
            self,
            limits=self.limits,
            header_seconds=header_seconds,
            overload=self.overload,
            outbox=self._outbox,
        )

    async def close(self) -> None:
        shared = self._shared
        self._stop_store_tasks()
        self._shared = self._admission.shared = None
        self._rates = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if shared is not None:
            await shared.close()
        await self._forwarder.pool.close()
        self._pool.close()

    # -- dispatch -------------------------------------------------------------

    def refused(self, kind: str) -> None:
        self.metrics.client_errors_total.labels(kind).inc()

    def dispatch(self, exchange: Exchange) -> None:
        """Answer or forward one request; called as soon as its head is parsed."""
        request = exchange.request
        path = request.path
        table = self._table
        if path.startswith(WELL_KNOWN):
            exchange.respond(self._endpoints.answer(request, table=table))
            return
        if (
            path == DEEPSEEK_CHALLENGE_PATH
            and table is not None
            and table.config.algorithm == DEEPSEEK_ALGORITHM
        ):
            # DeepSeek's clients ask here, with {"target_path": …} in the body.
            _DeepSeekChallengeReader(self, exchange, table=table).start()
            return
        canon = canonical(path)
        if canon is None:
            self.refused("bad_path")
            exchange.respond(_BAD_PATH)
            return
        if table is None:
            exchange.respond(not_configured())
            return
        target = table.match(method=request.method, path=canon)
        if not isinstance(target, Route) or table.mode is Mode.OFF:
            if target is EXEMPT:
                name, outcome = NO_LABEL, Outcome.EXEMPT
            else:
                name = target.name if isinstance(target, Route) else NO_LABEL
                outcome = Outcome.UNPROTECTED
            self.metrics.count_request(route=name, outcome=outcome, reason=NO_LABEL)
            if not self._body_fits(exchange):
                return
            self._forwarder.forward(exchange, route=name, paid=False, clear_cookie=False)
            return
        if exchange.can_wait() and self._admission.find(request)[0] is None:
            # The loop lags: a request without a solution is refused a turn later,
            # so that those carrying one, judged now, do not wait behind a flood.
            exchange.wait_turn()
            return
        quote = self._admission.quote(request)
        if quote.factor == 0.0:
            # A trusted caller that pays nothing: no challenge, no verification.
            self.metrics.count_request(route=target.name, outcome=Outcome.TRUSTED, reason=NO_LABEL)
            if self._body_fits(exchange):
                self._forwarder.forward(exchange, route=target.name, paid=True, clear_cookie=False)
            return
        decision = self._admission.judge(request, table=table, route=target, quote=quote)
        if isinstance(decision, ReadForm):
            _FormReader(self, exchange, table=table, route=target, quote=quote).start()
        else:
            self._decided(exchange, decision, table=table)

    def _decided(self, exchange: Exchange, decision: Refuse | Admit, *, table: RouteTable) -> None:
        if isinstance(decision, Refuse):
            exchange.respond(decision.response)
            return
        # Local checks first: a solution is spent only on a request that goes on.
        if not self._body_fits(exchange):
            return
        if decision.work is not None:
            self._spawn(self._derived(exchange, decision, table=table))
            return
        self._admitted(exchange, decision, table=table)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _derived(self, exchange: Exchange, admit: Admit, *, table: RouteTable) -> None:
        """ALTCHA v2: a place in the pool, the spend, then the derivation, then on."""
        request = exchange.request
        ticket = self._pool.reserve()
        if ticket is None:
            # Nothing spent: the client's next attempt is not a replay.
            refusal = self._admission.busy(admit, request, table=table)
            if refusal is not None:
                exchange.respond(refusal.response)
            else:
                self._admitted(exchange, admit, table=table, spent=True)
            return
        try:
            # The claim (a round trip with a shared store) before the derivation.
            refusal = await self._admission.spend_async(admit, request, table=table)
            if refusal is not None:
                exchange.respond(refusal.response)
                return
            work = admit.work
            assert work is not None
            right = await ticket.run(work)
        finally:
            ticket.close()
        refusal = self._admission.settle(admit, request, table=table, right=right)
        if refusal is not None:
            exchange.respond(refusal.response)
        elif exchange.alive:
            self._admitted(exchange, admit, table=table, spent=True)

    def _admitted(
        self, exchange: Exchange, decision: Admit, *, table: RouteTable, spent: bool = False
    ) -> None:
        """Into the effort queue, or spent and forwarded (``spent``: the solution is used up)."""
        if spent:
            # Its place in the queue needs no key: the spend is done.
            decision.key = None
        queue = self._queue
        if queue is not None and table.config.queue.max_concurrent > 0:
            self._spawn(self._queued(exchange, decision, table=table, queue=queue))
            return
        if decision.key is not None and self._admission.shared is not None:
            self._spawn(self._spend_shared(exchange, decision, table=table))
            return
        refusal = self._admission.spend(decision, exchange.request, table=table)
        if refusal is not None:
            exchange.respond(refusal.response)
            return
        self._forward(exchange, decision)

    async def _spend_shared(self, exchange: Exchange, admit: Admit, *, table: RouteTable) -> None:
        """Spend through the shared replay store (a bounded round trip), then forward."""
        refusal = await self._admission.spend_async(admit, exchange.request, table=table)
        if refusal is not None:
            exchange.respond(refusal.response)
        elif exchange.alive:
            self._forward(exchange, admit)

    def _forward(self, exchange: Exchange, admit: Admit) -> None:
        self._forwarder.forward(
            exchange, route=admit.route.name, paid=admit.paid, clear_cookie=admit.clear_cookie
        )

    def _body_fits(self, exchange: Exchange) -> bool:
        length = exchange.request.content_length
        if length is not None and length > self.limits.max_body_bytes:
            self.refused("body_too_large")
            exchange.respond(_http.response(413, _TOO_LARGE), close=True)
            return False
        return True

    async def _queued(
        self, exchange: Exchange, admit: Admit, *, table: RouteTable, queue: EffortQueue
    ) -> None:
        request = exchange.request
        route = admit.route
        key = admit.key
        if key is not None and admit.enforcing and key in self._queued_keys:
            # The same solution waits already: one solution holds one place.
            self.metrics.count_request(
                route=route.name, outcome=Outcome.REJECTED, reason=Reason.REPLAYED.value
            )
            exchange.respond(
                self._admission.challenge(request, table=table, route=route, quote=admit.quote)
            )
            return
        if key is not None:
            self._queued_keys.add(key)
        waited = asyncio.get_running_loop().time()
        try:
            refused = await queue.acquire(difficulty=admit.difficulty)
        finally:
            if key is not None:
                self._queued_keys.discard(key)
        if refused is not None:
            self.metrics.queue_dropped_total.labels(route.name, refused).inc()
            exchange.respond(
                self._admission.challenge(
                    request, table=table, route=route, quote=admit.quote, status=503
                )
            )
            return
        self.metrics.queue_wait_seconds.observe(asyncio.get_running_loop().time() - waited)
        refusal = await self._admission.spend_async(admit, request, table=table)
        if refusal is not None or not exchange.alive:
            queue.release()
            if refusal is not None:
                exchange.respond(refusal.response)
            return
        self._forwarder.forward(
            exchange,
            route=route.name,
            paid=admit.paid,
            clear_cookie=admit.clear_cookie,
            on_done=queue.release,
        )


class _BodyReader:
    """Reads a small request body whole (bounded in size and in time), then hands it on."""

    __slots__ = ("_chunks", "_exchange", "_limit", "_sidecar", "_size", "_timer")

    def __init__(self, sidecar: Sidecar, exchange: Exchange, *, limit: int) -> None:
        self._sidecar = sidecar
        self._exchange = exchange
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        length = self._exchange.request.content_length
        if length is not None and length > self._limit:
            self._oversized(length)
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._sidecar.limits.body_read_seconds, self._too_slow)
        self._exchange.consume(self)

    def feed(self, data: bytes) -> None:
        if self._timer is None:
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > self._limit:
            self._stop()
            self._oversized(self._size)

    def end(self) -> None:
        if self._timer is None:
            return
        self._stop()
        self._finish(b"".join(self._chunks))

    def cancel(self, why: str) -> None:
        self._stop()

    def writable(self, ok: bool) -> None:
        pass

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self) -> None:
        self._timer = None
        self._sidecar.refused("slow_client")
        self._exchange.respond(_http.response(408, b"request body too slow\n"), close=True)

    def _oversized(self, size: int) -> None:
        """The body is, or grew, larger than the limit."""
        raise NotImplementedError

    def _finish(self, body: bytes) -> None:
        """The whole body arrived in time."""
        raise NotImplementedError


class _DeepSeekChallengeReader(_BodyReader):
    """Reads ``create_pow_challenge``'s small JSON body, then answers in DeepSeek's envelope."""

    __slots__ = ("_table",)

    def __init__(self, sidecar: Sidecar, exchange: Exchange, *, table: RouteTable) -> None:
        super().__init__(sidecar, exchange, limit=_DEEPSEEK_BODY_BYTES)
        self._table = table

    def start(self) -> None:
        if self._exchange.request.method != "POST":
            self._exchange.respond(_http.response(405, fields=b"Allow: POST\r\n"))
            return
        super().start()

    def _oversized(self, size: int) -> None:
        self._exchange.respond(_deepseek_error(413, "body too large"), close=True)

    def _finish(self, body: bytes) -> None:
        self._exchange.respond(self._answer(body))

    def _answer(self, body: bytes) -> bytes:
        try:
            document = json.loads(body) if body else {}
        except (ValueError, UnicodeDecodeError):
            return _deepseek_error(400, "the body is not JSON")
        target = document.get("target_path") if isinstance(document, dict) else None
        if not isinstance(target, str) or not target.startswith("/") or len(target) > 512:
            return _deepseek_error(400, "target_path must be an absolute request path")
        canon = canonical(target)
        table = self._table
        route = None if canon is None else table.match(method="POST", path=canon)
        if not isinstance(route, Route) or table.mode is Mode.OFF:
            return _deepseek_error(404, f"no protected route for POST {target}")
        challenge = self._sidecar._stock.issuer.issue(
            difficulty=route.difficulty,
            ttl=table.config.challenge_ttl_seconds,
            binding=route.binding,
            target_path=target,
        )
        assert isinstance(challenge, DeepSeekChallenge)
        return _http.response(
            200,
            challenge.envelope_json().encode(),
            content_type=b"application/json",
            fields=b"Cache-Control: no-store\r\n",
        )


def _deepseek_error(status: int, message: str) -> bytes:
    """An error in DeepSeek's envelope, as its clients read one."""
    body = json.dumps({"code": status, "msg": message, "data": None}).encode()
    return _http.response(status, body, content_type=b"application/json")


class _FormReader(_BodyReader):
    """Reads a (bounded) form body to find ALTCHA's ``altcha`` field, then decides."""

    __slots__ = ("_quote", "_route", "_table")

    def __init__(
        self,
        sidecar: Sidecar,
        exchange: Exchange,
        *,
        table: RouteTable,
        route: Route,
        quote: Quote,
    ) -> None:
        super().__init__(sidecar, exchange, limit=sidecar.limits.max_form_bytes)
        self._table = table
        self._route = route
        self._quote = quote

    def _oversized(self, size: int) -> None:
        self._decide(Verdict(Reason.OVERSIZED, f"form body of {size} bytes or more"))

    def _finish(self, body: bytes) -> None:
        request = self._exchange.request
        content_type = (request.header(b"content-type") or b"").decode("latin-1")
        found = form_solution(
            mimetype=content_type.partition(";")[0].strip().lower(),
            header=content_type,
            body=body,
        )
        self._decide(None, payload=found)

    def _decide(self, verdict: Verdict | None, *, payload: str | None = None) -> None:
        exchange = self._exchange
        # What was read goes on as it was (or is dropped with a refusal).
        exchange.unread(self._chunks)
        sidecar = self._sidecar
        decision = sidecar._admission.conclude(
            exchange.request,
            table=self._table,
            route=self._route,
            quote=self._quote,
            payload=payload,
            verdict=verdict,
        )
        sidecar._decided(exchange, decision, table=self._table)
