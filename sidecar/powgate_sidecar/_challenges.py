"""Challenge documents issued in batches and handed out once each.

Under a flood every refusal carries a fresh challenge. Issuing them one at a
time interleaves the hashing, signing and formatting with the network work
of each request; a batch runs that code back to back, and costs a fraction
per challenge. A batch is only kept for a moment, so a challenge loses at
most that moment of its lifetime, and its size follows demand: a batch that
runs dry while fresh doubles the next one, a batch that went stale halves it, so a quiet
route issues one challenge at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from powgate import Issuer

__all__ = ["ChallengeStock"]

#: How long issued challenges wait to be handed out: what they may lose of their lifetime.
FRESH_SECONDS: Final = 1.0
MAX_BATCH: Final = 64
#: Shelves kept at once. With per-client prices a shelf is a (route, client, price): a
#: flood from many clients must not grow them without bound; the oldest goes first.
MAX_SHELVES: Final = 1024


class _Shelf:
    __slots__ = ("documents", "made_at", "size")

    def __init__(self) -> None:
        self.documents: list[bytes] = []
        self.made_at = 0.0
        self.size = 1


class ChallengeStock:
    """Per-route shelves of ready challenge documents (the JSON a client receives)."""

    __slots__ = ("_clock", "_shelves", "issuer")

    def __init__(self, issuer: Issuer, *, clock: Callable[[], float] = time.monotonic) -> None:
        #: Replace (or rotate its keys) only through :meth:`restock`.
        self.issuer = issuer
        self._clock = clock
        self._shelves: dict[tuple[str, str | None, float], _Shelf] = {}

    def take(
        self,
        *,
        binding: str,
        difficulty: int,
        ttl: float,
        client: str | None = None,
        factor: float = 1.0,
    ) -> bytes:
        """A challenge document never handed out before.

        ``binding``, ``client`` and ``factor`` name the shelf (a client's
        challenges are priced for it alone): callers :meth:`restock`
        whenever the difficulty or lifetime a binding is issued with may
        have changed.
        """
        name = (binding, client, factor)
        shelves = self._shelves
        shelf = shelves.get(name)
        if shelf is None:
            if len(shelves) >= MAX_SHELVES:
                del shelves[next(iter(shelves))]
            shelf = shelves[name] = _Shelf()
        documents = shelf.documents
        now = self._clock()
        if documents and now - shelf.made_at <= FRESH_SECONDS:
            return documents.pop()
        # Demand sizes the next batch: left over, smaller; emptied while fresh, bigger.
        if documents:
            shelf.size = max(1, shelf.size // 2)
        elif now - shelf.made_at <= FRESH_SECONDS:
            shelf.size = min(MAX_BATCH, shelf.size * 2)
        shelf.documents = documents = self.issuer.issue_documents(
            shelf.size,
            difficulty=difficulty,
            ttl=ttl,
            binding=binding,
            client=client,
            factor=factor,
        )
        shelf.made_at = now
        return documents.pop()

    def restock(self, issuer: Issuer | None = None) -> None:
        """Drop every shelf (new configuration or keys), optionally with a new issuer."""
        if issuer is not None:
            self.issuer = issuer
        self._shelves.clear()
