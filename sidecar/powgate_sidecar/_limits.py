"""Bounds on what a client may make the sidecar do, and how long the upstream may take."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a client may make the sidecar do, and upstream timeouts."""

    max_body_bytes: int = 32 * 1024 * 1024
    #: Forms are read whole to find ALTCHA's field; larger ones count as ``oversized``.
    max_form_bytes: int = 64 * 1024
    #: Longest silence while a request body arrives; a form must arrive whole within it.
    body_read_seconds: float = 10.0
    #: After ``body_read_seconds``, a body must average at least this many bytes/s.
    body_min_rate: float = 1024.0
    #: Longest a client may leave an answer unread.
    write_seconds: float = 60.0
    upstream_connect_seconds: float = 5.0
    #: Between two reads from the upstream: generous, a model may think before its first token.
    upstream_read_seconds: float = 300.0
    #: Upstream connections lent at once (a quarter of them kept for paid requests).
    upstream_connections: int = 1024
    #: ALTCHA PoW v2: threads deriving keys (the derivations release the GIL);
    #: ``None``: one per CPU of the container's limit (powgate.DerivationPool).
    derivation_threads: int | None = None
    #: ALTCHA PoW v2: derivations admitted at once, running or waiting; past
    #: that a solution is refused unspent (``verifier_busy``). ``None``: 8 per thread.
    derivations_pending: int | None = None
