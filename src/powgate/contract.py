"""What the operator's injector, the sidecar and the Helm chart agree on, defined once.

The injector configures the sidecar container through ``POWGATE_*``
variables named after the sidecar's flags (:class:`SidecarFlag`), names its
ports, and marks injected pods with labels that the chart's PodMonitor and
the operator's rollout queries select. Each side reads these names from
here; contract tests render both sides and compare them.
"""

from __future__ import annotations

import enum
from typing import Final

from ._keys import KEYRING_SECRET_KEY
from .cliargs import env_name

__all__ = [
    "HEAVY_CLIENTS_METRIC",
    "INJECTED_ANNOTATION",
    "KEYRING_SECRET_KEY",
    "KEY_INFO_METRIC",
    "METRICS_PORT_NAME",
    "NAMESPACE_LABEL",
    "NAMESPACE_LABEL_REQUIRED",
    "NAMESPACE_LABEL_VALUE",
    "OPT_OUT_LABEL",
    "POLICY_LABEL",
    "PORT_ANNOTATION",
    "REPLAY_STORE_UP_METRIC",
    "SIDECAR_NAME",
    "SidecarFlag",
]

#: A namespace opts in to injection with this label (the webhook's namespaceSelector):
#: ``enabled`` (a webhook outage admits pods unprotected, the chart's failurePolicy) or
#: ``required`` (failurePolicy Fail: no selected pod is created without the sidecar).
NAMESPACE_LABEL: Final = "powgate.dev/injection"
NAMESPACE_LABEL_VALUE: Final = "enabled"
NAMESPACE_LABEL_REQUIRED: Final = "required"
#: A pod opts out with ``powgate.dev/inject: "false"`` (the webhook's objectSelector).
OPT_OUT_LABEL: Final = "powgate.dev/inject"
#: Names the app's port to take over when it is not the injector's default (``http``).
PORT_ANNOTATION: Final = "powgate.dev/port"
#: Set on injected pods: the policy whose sidecar they carry (and the idempotency mark).
INJECTED_ANNOTATION: Final = "powgate.dev/injected"
#: Set on injected pods and on every object the operator owns for a policy: the policy's
#: name. The chart's PodMonitor selects pods that carry it.
POLICY_LABEL: Final = "powgate.dev/policy"
#: The injected container, and the name of its metrics port (scraped by the PodMonitor).
SIDECAR_NAME: Final = "powgate-sidecar"
METRICS_PORT_NAME: Final = "powgate-metrics"


#: The gauge in which each sidecar reports its heaviest clients (requests per second), by
#: ``policy`` and ``client`` (the client key sealed, powgate.reputation.seal_label); the
#: operator sums it over sidecars into the policy's reputation list.
HEAVY_CLIENTS_METRIC: Final = "powgate_heavy_client_rate"
#: The gauge in which each sidecar process with a shared replay store says whether the store
#: answers (1) or not (0), by ``policy`` and ``when_unavailable``; the operator counts it
#: into the policy's ``ReplayStoreAvailable`` condition.
REPLAY_STORE_UP_METRIC: Final = "powgate_replay_store_up"


#: The gauge in which each sidecar reports the key ids it holds: 1 per key of its ring,
#: by ``policy``, ``kid`` and ``active`` ("true" for the key it signs with). The operator
#: switches signing to a new key only once every sidecar of the policy holds it, and
#: retires the previous key once none signs with it any more.
KEY_INFO_METRIC: Final = "powgate_key_info"


class SidecarFlag(enum.StrEnum):
    """The flags of ``powgate sidecar``; each is also read from :attr:`env`."""

    LISTEN = "--listen"
    UPSTREAM = "--upstream"
    METRICS_LISTEN = "--metrics-listen"
    CONFIG_FILE = "--config-file"
    CONFIG_OBJECT = "--config-object"
    KEY_FILE = "--key-file"
    REPLAY_STORE_CREDENTIALS = "--replay-store-credentials"
    WORKERS = "--workers"
    DERIVATION_THREADS = "--derivation-threads"
    DERIVATIONS_PENDING = "--derivations-pending"
    KUBE_API_URL = "--kube-api-url"
    KUBE_TOKEN_FILE = "--kube-token-file"  # noqa: S105 - a flag's name
    KUBE_CA_FILE = "--kube-ca-file"
    TRUSTED_PROXIES = "--trusted-proxies"
    MAX_BODY_BYTES = "--max-body-bytes"
    HEADER_TIMEOUT = "--header-timeout"
    UPSTREAM_TIMEOUT = "--upstream-timeout"
    SHUTDOWN_TIMEOUT = "--shutdown-timeout"
    LOG_LEVEL = "--log-level"

    @property
    def env(self) -> str:
        """The ``POWGATE_*`` variable the flag falls back to."""
        return env_name(self.value)
