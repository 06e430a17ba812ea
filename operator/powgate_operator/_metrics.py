"""The operator's own metrics (served on ``--metrics-listen``)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ADMISSIONS_REFUSED",
    "CERT_EXPIRY",
    "DECISIONS",
    "DIFFICULTY",
    "EVALUATION_LAG",
    "FOREIGN_OBJECTS",
    "GRANT_ERRORS",
    "INJECTIONS",
    "POLICY_LISTING_ERRORS",
    "QUERIES",
    "QUERY_SECONDS",
    "RECONCILES",
    "RECONCILE_SECONDS",
    "REPUTATION_LABELS",
    "TLS_ERRORS",
    "UNPROTECTED_PODS",
]

_PREFIX: Final = "powgate_operator"

RECONCILES: Final = Counter(
    f"{_PREFIX}_reconciles_total",
    "Reconciles of PowPolicies, by trigger (spec, evaluation) and result (ok or the error).",
    ["trigger", "result"],
)
RECONCILE_SECONDS: Final = Histogram(
    f"{_PREFIX}_reconcile_duration_seconds",
    "Time for one reconcile, from reading the policy to writing its status.",
    ["trigger"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DECISIONS: Final = Counter(
    f"{_PREFIX}_decisions_total",
    "Controller decisions, by reason; `changed` says whether difficulty moved.",
    ["reason", "changed"],
)
QUERIES: Final = Counter(
    f"{_PREFIX}_signal_queries_total",
    "Signal queries to Prometheus, by outcome (OK, Empty or the failure's reason).",
    ["outcome"],
)
QUERY_SECONDS: Final = Histogram(
    f"{_PREFIX}_signal_query_duration_seconds",
    "Time to read all the signals of one policy.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EVALUATION_LAG: Final = Histogram(
    f"{_PREFIX}_evaluation_lag_seconds",
    "How late an evaluation started compared with its schedule (the operator keeping up).",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DIFFICULTY: Final = Gauge(
    f"{_PREFIX}_difficulty",
    "The difficulty the operator last published, per policy (namespace/name).",
    ["policy"],
)

REPUTATION_LABELS: Final = Counter(
    f"{_PREFIX}_reputation_labels_total",
    "Sealed client labels the sidecars reported, by whether the policy's keys opened them.",
    ["result"],
)

# -- the injector ---------------------------------------------------------------------

INJECTIONS: Final = Counter(
    f"{_PREFIX}_injections_total",
    "Pod admissions seen by the injector, by result (Injected, a skip reason, or Error).",
    ["result"],
)
UNPROTECTED_PODS: Final = Gauge(
    f"{_PREFIX}_unprotected_pods",
    "Running pods a policy selects that carry no sidecar (created while the webhook was "
    "down or before the policy, opted out, or on the host's network), per policy.",
    ["policy"],
)
GRANT_ERRORS: Final = Counter(
    f"{_PREFIX}_grant_errors_total",
    "Failures to bind a policy's Role to the service accounts of its injected pods "
    "(retried on the next pod event or evaluation).",
)
FOREIGN_OBJECTS: Final = Counter(
    f"{_PREFIX}_foreign_objects_total",
    "Objects the operator would write but did not create (never adopted; the policy reports "
    "ObjectNotOwned).",
)
ADMISSIONS_REFUSED: Final = Counter(
    f"{_PREFIX}_webhook_refused_total",
    "Admission reviews refused before any handler ran, by reason (an unknown client "
    "certificate, a review whose object's namespace is not the request's).",
    ["reason"],
)
TLS_ERRORS: Final = Counter(
    f"{_PREFIX}_webhook_tls_errors_total",
    "Failed steps of keeping the webhook's certificate and caBundle current, by step.",
    ["step"],
)
POLICY_LISTING_ERRORS: Final = Counter(
    f"{_PREFIX}_webhook_policy_listing_errors_total",
    "Admissions whose PowPolicies could not be read from the API server.",
)
CERT_EXPIRY: Final = Gauge(
    f"{_PREFIX}_webhook_certificate_expiry_timestamp_seconds",
    "When the webhook's serving certificate expires (unix time).",
)
