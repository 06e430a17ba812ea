"""The sidecar's Prometheus metrics, in a registry of their own.

A dedicated :class:`CollectorRegistry` (not the process-global default) keeps
the exposition to exactly what is documented in ``docs/sidecar.md`` and lets
tests build several sidecars in one process. Label children used on the hot
path are resolved once and cached: ``Counter.labels`` hashes and locks on
every call, a dict lookup of a tuple does not.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["NO_LABEL", "Metrics", "Outcome"]

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


_FAST_BUCKETS: Final = (5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3, 0.02)
_UPSTREAM_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
_SOLVE_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_WAIT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Every metric the sidecar exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests_total = Counter(
            "powgate_requests",
            "Requests by route, outcome and verification reason.",
            ["route", "outcome", "reason"],
            registry=reg,
        )
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
        self.verify_seconds = Histogram(
            "powgate_verify_seconds",
            "Time to verify one solution.",
            buckets=_FAST_BUCKETS,
            registry=reg,
        )
        self.upstream_seconds = Histogram(
            "powgate_upstream_seconds",
            "Time from forwarding a request to the upstream's response headers.",
            ["route", "status_class"],
            buckets=_UPSTREAM_BUCKETS,
            registry=reg,
        )
        self.queue_depth = Gauge(
            "powgate_queue_depth", "Requests waiting for an upstream slot.", registry=reg
        )
        self.queue_wait_seconds = Histogram(
            "powgate_queue_wait_seconds",
            "Time admitted requests waited for an upstream slot.",
            buckets=_WAIT_BUCKETS,
            registry=reg,
        )
        self.queue_dropped_total = Counter(
            "powgate_queue_dropped",
            "Admitted requests turned away by the queue (full or waited too long).",
            ["route", "cause"],
            registry=reg,
        )
        self.inflight = Gauge(
            "powgate_inflight", "Requests being forwarded upstream.", registry=reg
        )
        self.client_solve_seconds = Histogram(
            "powgate_client_solve_seconds",
            "Solve time reported by clients in X-Powgate-Solve-Ms.",
            buckets=_SOLVE_BUCKETS,
            registry=reg,
        )
        self.replay_cache_entries = Gauge(
            "powgate_replay_cache_entries", "Solutions remembered against replay.", registry=reg
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
        self._request_children: dict[tuple[str, str, str], Counter] = {}
        self._upstream_children: dict[tuple[str, str], Histogram] = {}

    def count_request(self, *, route: str, outcome: str, reason: str) -> None:
        key = (route, outcome, reason)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests_total.labels(*key)
        child.inc()

    def observe_upstream(self, *, route: str, status: int, seconds: float) -> None:
        key = (route, _STATUS_CLASSES.get(status // 100, "other"))
        child = self._upstream_children.get(key)
        if child is None:
            child = self._upstream_children[key] = self.upstream_seconds.labels(*key)
        child.observe(seconds)

    def set_config(self, *, policy: str, version: str, difficulties: dict[str, int]) -> None:
        """Publish the configuration now in force (replacing the previous series)."""
        self.config_info.clear()
        self.config_info.labels(policy, version).set(1)
        self.difficulty.clear()
        for route, value in difficulties.items():
            self.difficulty.labels(route).set(value)


_STATUS_CLASSES: Final = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
