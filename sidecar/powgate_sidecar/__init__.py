"""powgate_sidecar: the verifier proxy in front of an AI service.

``powgate sidecar`` runs it (see :mod:`powgate_sidecar.cli`); the classes
below are for embedding it and for tests.
"""

# First: it decides whether the request path's modules load compiled or from source.
from . import _compiled  # noqa: F401  (imported for that decision)
from ._app import WELL_KNOWN, Sidecar
from ._files import FileWatch
from ._kube import ConfigMapWatcher, ConfigSink, KubeClient, KubeEndpoint
from ._limits import Limits
from ._metrics import Metrics, Outcome
from ._queue import EffortQueue, QueueVerdict
from ._server import Settings, serve

__all__ = [
    "WELL_KNOWN",
    "ConfigMapWatcher",
    "ConfigSink",
    "EffortQueue",
    "FileWatch",
    "KubeClient",
    "KubeEndpoint",
    "Limits",
    "Metrics",
    "Outcome",
    "QueueVerdict",
    "Settings",
    "Sidecar",
    "serve",
]
