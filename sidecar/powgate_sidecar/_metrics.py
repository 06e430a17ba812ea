"""The sidecar's Prometheus metrics, in a registry of their own.

A dedicated :class:`CollectorRegistry` (not the process-global default) keeps
the exposition to exactly what is documented in ``docs/sidecar.md`` and lets
tests build several sidecars in one process.

Metrics touched by every request live in plain Python containers read at
scrape time by one collector. ``prometheus_client``'s own types take a lock on
every update so that threads may share them; the sidecar updates and scrapes
its metrics on one event loop thread only, and under a flood those locks, the
label lookups and the bucket scans were a measurable share of each refusal.
Metrics that change only on reconfiguration or errors keep the library types.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from typing import Final, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from powgate import KeyRing
from powgate.contract import HEAVY_CLIENTS_METRIC, KEY_INFO_METRIC, REPLAY_STORE_UP_METRIC
from powgate.reputation import seal_label

from ._overload import Overload
from ._pricing import Pricer
from ._shared_rates import SharedRates

__all__ = [
    "NO_LABEL",
    "KeysCollector",
    "LoopHistogram",
    "Metrics",
    "Outcome",
    "OverloadCollector",
    "PricingCollector",
    "PricingView",
]

#: Label value for "not applicable" (no route matched, no failure reason).
NO_LABEL: Final = "none"


class Outcome:
    """Values of the ``outcome`` label of ``powgate_requests_total``."""

    ADMITTED: Final = "admitted"  # enforce mode, valid solution: forwarded
    CHALLENGED: Final = "challenged"  # enforce mode, no solution: answered with a challenge
    REJECTED: Final = "rejected"  # enforce mode, invalid solution: answered with a challenge
    OBSERVED: Final = "observed"  # observe mode: verified, counted, forwarded whatever the verdict
    EXEMPT: Final = "exempt"  # an exempt path: forwarded without looking
    UNPROTECTED: Final = "unprotected"  # no route pays for this method/path, or mode off
    TRUSTED: Final = "trusted"  # a trusted caller that pays nothing: forwarded unchallenged


_FAST_BUCKETS: Final = (5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3, 0.02)
_UPSTREAM_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
_STORE_BUCKETS: Final = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
_SOLVE_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_WAIT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Price factors: discounts, the base, and up to the largest caps in use.
_FACTOR_BUCKETS: Final = (0.0, 0.1, 0.5, 1.0, 1.5, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 256.0, 1024.0)
#: The heaviest clients whose share of all requests is exported.
_TOP: Final = (1, 10, 100)
_STATUS_CLASSES: Final = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class _Series:
    """One histogram series: per-bucket (not cumulative) counts and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.total = 0.0


class LoopHistogram:
    """A histogram for one event loop thread: no lock, one C bisection per observation."""

    __slots__ = ("_bounds", "_series", "documentation", "labelnames", "name")

    def __init__(
        self,
        name: str,
        documentation: str,
        *,
        buckets: Sequence[float],
        labelnames: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._bounds = tuple(buckets)
        self._series: dict[tuple[str, ...], _Series] = {}
        if not self.labelnames:
            # A series without labels exists from the start, zeros included.
            self._series[()] = _Series(len(self._bounds) + 1)

    def observe(self, value: float, labels: tuple[str, ...] = ()) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series(len(self._bounds) + 1)
        # Prometheus buckets are "less than or equal": bisect_left finds the
        # first bound >= value; past the last bound is the +Inf bucket.
        series.counts[bisect.bisect_left(self._bounds, value)] += 1
        series.total += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        # The library's own rendering of "le", so the exposition reads as before.
        edges = [floatToGoString(bound) for bound in self._bounds]  # type: ignore[no-untyped-call]
        edges.append("+Inf")
        for labels, series in self._series.items():
            cumulative, buckets = 0, []
            for edge, count in zip(edges, series.counts, strict=True):
                cumulative += count
                buckets.append((edge, cumulative))
            family.add_metric(list(labels), buckets, series.total)
        return family


class _HotPath(Collector):
    """Exposes the per-request metrics kept by :class:`Metrics` at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        # Names only, so the registry can refuse duplicates at registration.
        yield CounterMetricFamily(
            "powgate_requests", _REQUESTS_HELP, labels=("route", "outcome", "reason")
        )
        yield GaugeMetricFamily("powgate_inflight", _INFLIGHT_HELP)
        for histogram in self._metrics.histograms:
            yield HistogramMetricFamily(histogram.name, histogram.documentation)

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        requests = CounterMetricFamily(
            "powgate_requests", _REQUESTS_HELP, labels=("route", "outcome", "reason")
        )
        for key, count in metrics.requests.items():
            requests.add_metric(list(key), count)
        yield requests
        yield GaugeMetricFamily("powgate_inflight", _INFLIGHT_HELP, value=metrics.inflight)
        for histogram in metrics.histograms:
            yield histogram.family()


_REQUESTS_HELP: Final = "Requests by route, outcome and verification reason."
_INFLIGHT_HELP: Final = "Requests being forwarded upstream."


class Metrics:
    """Every metric the sidecar exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        #: ``powgate_requests_total`` by ``(route, outcome, reason)``.
        self.requests: dict[tuple[str, str, str], int] = {}
        #: ``powgate_inflight``: requests being forwarded upstream.
        self.inflight = 0
        self.verify_seconds = LoopHistogram(
            "powgate_verify_seconds", "Time to verify one solution.", buckets=_FAST_BUCKETS
        )
        self.upstream_seconds = LoopHistogram(
            "powgate_upstream_seconds",
            "Time from forwarding a request to the upstream's response headers.",
            buckets=_UPSTREAM_BUCKETS,
            labelnames=("route", "status_class"),
        )
        self.queue_wait_seconds = LoopHistogram(
            "powgate_queue_wait_seconds",
            "Time admitted requests waited for an upstream slot.",
            buckets=_WAIT_BUCKETS,
        )
        self.client_solve_seconds = LoopHistogram(
            "powgate_client_solve_seconds",
            "Solve time reported by clients in X-Powgate-Solve-Ms.",
            buckets=_SOLVE_BUCKETS,
        )
        self.price_factor = LoopHistogram(
            "powgate_price_factor",
            "Price factors of the challenges handed out, times the route's price "
            "(0: trusted callers let through without one).",
            buckets=_FACTOR_BUCKETS,
        )
        self.replay_store_seconds = LoopHistogram(
            "powgate_replay_store_seconds",
            "Time of the shared replay store's answer to one claim (SET NX).",
            buckets=_STORE_BUCKETS,
        )
        self.histograms = (
            self.price_factor,
            self.replay_store_seconds,
            self.verify_seconds,
            self.upstream_seconds,
            self.queue_wait_seconds,
            self.client_solve_seconds,
        )
        reg.register(_HotPath(self))
        self.difficulty = Gauge(
            "powgate_difficulty",
            "Difficulty (maxnumber) of new challenges per route.",
            ["route"],
            registry=reg,
        )
        self.config_info = Gauge(
            "powgate_config_info",
            "The configuration in force: always 1, one series per process.",
            ["policy", "version"],
            registry=reg,
        )
        self.config_reloads_total = Counter(
            "powgate_config_reloads",
            "Configuration and key reload attempts by source and result.",
            ["source", "result"],
            registry=reg,
        )
        self.config_fields_ignored_total = Counter(
            "powgate_config_fields_ignored",
            "Fields of applied config documents this version does not know (a newer operator's), "
            "by source.",
            ["source"],
            registry=reg,
        )
        self.queue_depth = Gauge(
            "powgate_queue_depth", "Requests waiting for an upstream slot.", registry=reg
        )
        self.queue_dropped_total = Counter(
            "powgate_queue_dropped",
            "Admitted requests turned away by the queue (full or waited too long).",
            ["route", "cause"],
            registry=reg,
        )
        self.derivations_pending = Gauge(
            "powgate_derivations_pending",
            "ALTCHA PoW v2 key derivations admitted to the pool (waiting or running).",
            registry=reg,
        )
        self.replay_cache_entries = Gauge(
            "powgate_replay_cache_entries", "Solutions remembered against replay.", registry=reg
        )
        self.replay_cache_capacity = Gauge(
            "powgate_replay_cache_capacity",
            "The replay cache's bound: beyond it valid solutions are refused (replay_cache_full).",
            registry=reg,
        )
        self.replay_store_claims_total = Counter(
            "powgate_replay_store_claims",
            "Claims the shared replay store answered, by result (new: this sidecar spent the "
            "solution; seen: another one had).",
            ["result"],
            registry=reg,
        )
        self.replay_store_errors_total = Counter(
            "powgate_replay_store_errors",
            "Claims and health probes the shared replay store did not answer, by kind (timeout, "
            "unreachable, auth, tls, protocol, server, credentials).",
            ["kind"],
            registry=reg,
        )
        self.replay_store_unavailable_total = Counter(
            "powgate_replay_store_unavailable",
            "Valid solutions decided without the shared replay store, by action (refused: "
            "whenUnavailable Refuse; fallback: admitted by this process's cache alone).",
            ["action"],
            registry=reg,
        )
        self.replay_store_up = Gauge(
            REPLAY_STORE_UP_METRIC,
            "1 while the shared replay store answers, 0 while it does not; one series per "
            "process that uses a store, labelled with the policy and its whenUnavailable.",
            ["policy", "when_unavailable"],
            registry=reg,
        )
        self.upstream_errors_total = Counter(
            "powgate_upstream_errors",
            "Failures talking to the upstream, by kind.",
            ["kind"],
            registry=reg,
        )
        self.client_errors_total = Counter(
            "powgate_client_errors",
            "Requests refused before routing: unparsable, too large or too slow.",
            ["kind"],
            registry=reg,
        )

    def count_request(self, *, route: str, outcome: str, reason: str) -> None:
        key = (route, outcome, reason)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1

    def observe_upstream(self, *, route: str, status: int, seconds: float) -> None:
        self.upstream_seconds.observe(seconds, (route, _STATUS_CLASSES.get(status // 100, "other")))

    def set_config(self, *, policy: str, version: str, difficulties: dict[str, int]) -> None:
        """Publish the configuration now in force (replacing the previous series)."""
        self.config_info.clear()
        self.config_info.labels(policy, version).set(1)
        self.difficulty.clear()
        for route, value in difficulties.items():
            self.difficulty.labels(route).set(value)


class OverloadCollector(Collector):
    """What the overload defences refused or put off (``_overload``), read at scrape time.

    The listener counts in plain integers: a flood is when counting costs most.
    """

    def __init__(self, overload: Overload) -> None:
        self._overload = overload

    def describe(self) -> Iterator[Metric]:
        return self._families()

    def collect(self) -> Iterator[Metric]:
        return self._families(self._overload)

    @staticmethod
    def _families(overload: Overload | None = None) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            "powgate_connections_refused",
            "Connections answered 503 and closed on arrival, by reason (client_connections: "
            "its client held overload.maxConnectionsPerClient already).",
            labels=("reason",),
        )
        deferred = CounterMetricFamily(
            "powgate_requests_deferred",
            "Requests without a solution whose refusal waited for a later turn of the event "
            "loop because it lagged (overload.lagThresholdMilliseconds).",
        )
        lag = GaugeMetricFamily(
            "powgate_event_loop_lag_seconds",
            "How late the event loop last ran a timer due every 5 ms.",
        )
        clients = GaugeMetricFamily(
            "powgate_clients_connected",
            "Client addresses (IPv6: /64s) holding connections counted against their cap.",
        )
        if overload is not None:
            refused.add_metric(["client_connections"], overload.refused_connections)
            deferred.add_metric([], overload.deferred)
            lag.add_metric([], overload.lag)
            clients.add_metric([], overload.clients)
        return iter([refused, deferred, lag, clients])


class KeysCollector(Collector):
    """``powgate_key_info``: the key ids this process holds, read at scrape time.

    The operator reads it to switch signing to a new key only once every
    sidecar of the policy holds it, and to retire the previous key once none
    signs with it (a mounted Secret reaches pods whenever their kubelet syncs).
    """

    def __init__(self, view: Callable[[], tuple[str, KeyRing]]) -> None:
        self._view = view

    def describe(self) -> Iterator[Metric]:
        return iter([self._family()])

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        policy, ring = self._view()
        for key in ring.keys:
            active = "true" if key.kid == ring.active else "false"
            family.add_metric([policy, key.kid, active], 1)
        return iter([family])

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            KEY_INFO_METRIC,
            "Keys of the ring in force: always 1, one series per key id (active: signs).",
            labels=("policy", "kid", "active"),
        )


class PricingView(NamedTuple):
    """What the pricing metrics are read from at scrape time."""

    pricer: Pricer
    keyring: KeyRing
    policy: str
    reputation_entries: int
    #: Rates counted across the policy's sidecars (with a shared store).
    rates: SharedRates | None = None


class PricingCollector(Collector):
    """Per-client pricing at scrape time: how concentrated the traffic is, who is heaviest.

    No address reaches a label: the heaviest clients are reported under
    their key sealed with the policy's key ring (powgate.reputation), which
    only the operator opens; everything else is counts and shares.
    """

    def __init__(
        self, view: Callable[[], PricingView | None], *, clock: Callable[[], float]
    ) -> None:
        self._view = view
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        return iter(self._families(None))

    def collect(self) -> Iterator[Metric]:
        return iter(self._families(self._view()))

    def _families(self, view: PricingView | None) -> list[Metric]:
        tracked = GaugeMetricFamily(
            "powgate_clients_tracked", "Clients whose rate the sidecar keeps count of."
        )
        evictions = CounterMetricFamily(
            "powgate_client_evictions",
            "Clients that lost their place in the count to another (a flood of new clients).",
        )
        share = GaugeMetricFamily(
            "powgate_top_clients_share",
            "Share of recent requests sent by the heaviest clients.",
            labels=("top",),
        )
        heavy = GaugeMetricFamily(
            HEAVY_CLIENTS_METRIC,
            "Requests per second of the heaviest clients, by policy and sealed client key.",
            labels=("policy", "client"),
        )
        trusted = CounterMetricFamily(
            "powgate_trusted_requests",
            "Requests of trusted callers (caller, exempt or discounted) and credentials that "
            "proved nothing (caller none: unknown_api_key, untrusted_identity, "
            "unknown_identity).",
            labels=("caller", "result"),
        )
        entries = GaugeMetricFamily(
            "powgate_reputation_entries", "Entries of the reputation list in force."
        )
        rates_up = GaugeMetricFamily(
            "powgate_shared_rates_up",
            "1 while client rates are counted across the policy's sidecars through the shared "
            "store, 0 while the store does not answer (each sidecar prices by its own counts).",
            labels=("policy",),
        )
        flushes = CounterMetricFamily(
            "powgate_shared_rate_flushes",
            "Flushes of client counts to the shared store (one a second), by result: ok or why "
            "the store did not answer (timeout, unreachable, auth, tls, protocol, server, "
            "credentials).",
            labels=("result",),
        )
        keys = CounterMetricFamily(
            "powgate_shared_rate_keys",
            "Client keys of flushes, by fate: sent; dropped (beyond the busiest sent per "
            "flush); untallied (requests of new light keys while the tally was full); lost "
            "(their flush failed).",
            labels=("result",),
        )
        fallback = CounterMetricFamily(
            "powgate_shared_rate_fallback_requests",
            "Requests priced by this sidecar's counts alone because the shared store did not "
            "answer.",
        )
        families: list[Metric] = [
            tracked,
            evictions,
            share,
            heavy,
            trusted,
            entries,
            rates_up,
            flushes,
            keys,
            fallback,
        ]
        if view is None:
            return families
        rates = view.rates
        if rates is not None:
            rates_up.add_metric([rates.policy], 1 if rates.up else 0)
            for result, count in rates.flushes.items():
                flushes.add_metric([result], count)
            for result, count in rates.keys.items():
                keys.add_metric([result], count)
            fallback.add_metric([], rates.fallback_requests)
        pricer = view.pricer
        for (caller, result), count in pricer.trust.counts.items():
            trusted.add_metric([caller, result], count)
        entries.add_metric([], view.reputation_entries)
        sketch = pricer.sketch
        if sketch is None or pricer.pricing is None:
            return families
        now = self._clock()
        tracked.add_metric([], len(sketch))
        evictions.add_metric([], sketch.evictions)
        total = sketch.total_rate(now=now)
        top = sketch.top(max(_TOP), now=now)
        for size in _TOP:
            part = sum(rate for _, rate in top[:size])
            share.add_metric([str(size)], part / total if total > 0 else 0.0)
        for key, rate in pricer.heaviest(pricer.pricing.shared_clients, now=now):
            heavy.add_metric([view.policy, seal_label(view.keyring, key)], rate)
        return families
