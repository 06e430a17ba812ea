"""What the fleet learns: the policy's own reputation list, imports, and what sidecars get.

Pure builders, no I/O: :mod:`._reconcile` gathers the sidecars' heaviest
clients (from Prometheus, sealed), reads the imports and the previous lists,
calls these, and writes the results: the policy's export
(``<policy>-powgate-reputation``) and the list its sidecars apply (data key
``reputation.json`` of the config ConfigMap they watch).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from powgate import KeyRing
from powgate.policy import (
    REPUTATION_SOURCE_LABEL,
    PolicySpec,
    ReputationImport,
    ReputationSourceKind,
)
from powgate.pricing import round_factor
from powgate.reputation import (
    ReputationEntry,
    ReputationList,
    merge_entries,
    open_label,
)

__all__ = [
    "Imported",
    "learn",
    "list_from_object",
    "open_rates",
    "published",
    "read_import",
]


def open_rates(
    sealed: Mapping[str, float], *, ring: KeyRing, now: float
) -> tuple[dict[str, float], int]:
    """Client key → rate, from labels the sidecars sealed; also how many labels would not open.

    One client reported under two signing keys (sidecars mid-rotation) is one
    client: its rates add up, as they do over sidecars.
    """
    rates: dict[str, float] = {}
    unreadable = 0
    for label, rate in sealed.items():
        key = open_label(ring, label, now=now)
        if key is None or not rate >= 0:
            unreadable += 1
            continue
        rates[key] = rates.get(key, 0.0) + rate
    return rates, unreadable


def learn(
    previous: Iterable[ReputationEntry],
    rates: Mapping[str, float],
    *,
    spec: PolicySpec,
    now: int,
) -> tuple[ReputationEntry, ...]:
    """The policy's own list after one evaluation.

    A client heavy now gets the factor of its fleet-wide rate, valid for
    ``reputation.ttlSeconds``; one no longer heavy keeps its entry until it
    expires. An entry is renewed only when its factor changed or half its
    lifetime is gone, so a steady heavy hitter does not rewrite the list on
    every evaluation.
    """
    ttl = spec.reputation.ttl_seconds
    own = {entry.key: entry for entry in previous if entry.expires > now}
    for key, rate in rates.items():
        # Two significant digits: a client whose rate wobbles does not rewrite the lists.
        factor = round_factor(spec.pricing.factor(rate))
        if factor <= 1:
            continue
        kept = own.get(key)
        if kept is not None and kept.factor == factor and kept.expires - now > ttl / 2:
            continue
        own[key] = ReputationEntry(key=key, factor=factor, expires=now + ttl)
    return merge_entries(
        [own.values()],
        now=now,
        max_entries=spec.reputation.max_entries,
        max_factor=spec.pricing.max_factor,
    )


@dataclass(frozen=True, slots=True)
class Imported:
    """One import's live entries, or why it gave none."""

    source: ReputationImport
    entries: tuple[ReputationEntry, ...] = ()
    problem: str = ""


def list_from_object(obj: Mapping[str, Any] | None, *, key: str, secret: bool) -> ReputationList:
    """The list stored under ``key`` of a ConfigMap (``data``, text) or a Secret (base64)."""
    if obj is None:
        raise ValueError("does not exist")
    data = obj.get("data") or {}
    if key not in data:
        raise ValueError(f"has no data key {key!r}")
    raw = data[key]
    if secret:
        try:
            raw = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{key} is not base64") from None
    return ReputationList.from_json(raw)


def read_import(
    source: ReputationImport, obj: Mapping[str, Any] | None, *, spec: PolicySpec, now: int
) -> Imported:
    """The entries of one import, capped at its ``maxFactor``; a problem instead of an error.

    The object must opt in with the label: a policy author may name any
    object of the namespace, and whatever parses as a list would reach every
    sidecar's configuration.
    """
    where = f"{source.kind.value} {source.name}"
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    if obj is not None and labels.get(REPUTATION_SOURCE_LABEL) != "true":
        return Imported(source, problem=f"{where} is not labelled {REPUTATION_SOURCE_LABEL}=true")
    try:
        listed = list_from_object(
            obj, key=source.key, secret=source.kind is ReputationSourceKind.SECRET
        )
    except ValueError as exc:
        return Imported(source, problem=f"{where}: {exc}"[:256])
    cap = source.max_factor if source.max_factor is not None else spec.pricing.max_factor
    entries = merge_entries(
        [listed.entries],
        now=now,
        max_entries=len(listed.entries),
        max_factor=min(cap, spec.pricing.max_factor),
    )
    return Imported(source, entries=entries)


def published(
    own: Sequence[ReputationEntry], imports: Sequence[Imported], *, spec: PolicySpec, now: int
) -> tuple[ReputationEntry, ...]:
    """The list the sidecars apply: the policy's own merged with its imports, bounded."""
    return merge_entries(
        [own, *(imported.entries for imported in imports)],
        now=now,
        max_entries=spec.reputation.max_entries,
        max_factor=spec.pricing.max_factor,
    )
