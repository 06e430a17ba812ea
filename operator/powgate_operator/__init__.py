"""powgate_operator: the kopf operator that reconciles PowPolicies.

Run it with ``powgate operator`` (see :mod:`powgate_operator.cli`). The CRD is
generated from :mod:`powgate.policy` by :mod:`powgate_operator.crd`; the
difficulty decisions themselves are :mod:`powgate.controller`'s (pure).
"""

from ._prometheus import Credentials, FailureReason, SignalReader, Signals
from ._reconcile import Reconciler
from .handlers import build_registry

__all__ = [
    "Credentials",
    "FailureReason",
    "Reconciler",
    "SignalReader",
    "Signals",
    "build_registry",
]
