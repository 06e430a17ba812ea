"""The routing table compiled from a :class:`~powgate.config.SidecarConfig`.

Compiled once per configuration so the hot path does set lookups and one
``str.startswith(tuple)`` (a single C call) per route, never pattern parsing.

Paths are matched in a canonical form (:func:`canonical`), because the
upstream decides what a path means, not the sidecar: an upstream that
ignores a trailing slash, strips ``;parameters`` or decodes ``%2F`` would
otherwise serve a protected handler under a name no route matches.
Protected routes match case-insensitively (an upstream on a case-folding
file system or framework serves ``/V1/Chat`` as ``/v1/chat``); exempt paths
match case-sensitively. Both err on the side of a challenge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from powgate.config import Mode, RouteConfig, SidecarConfig

__all__ = ["EXEMPT", "Route", "RouteTable", "canonical"]

#: Decoded, these mean something else to some upstream, or nothing good:
#: control characters, space, backslash (a separator to some servers).
_REFUSED: Final = re.compile(r"[\x00-\x20\x7f\\]")
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


def canonical(path: str) -> str | None:
    """The path routes are matched against, or ``None`` if it must be refused.

    Percent-escapes are decoded, ``;parameters`` dropped from each segment
    and a trailing slash removed; dot segments, empty segments, NUL, control
    characters, space, backslash and broken escapes are refused. The
    request is forwarded as it was sent: only matching sees this form.
    """
    if (
        "%" not in path
        and ";" not in path
        and "/." not in path
        and "//" not in path
        and "\\" not in path
        and (not path.endswith("/") or path == "/")
    ):
        return path
    if _BAD_ESCAPE.search(path):
        return None
    decoded = unquote(path, encoding="latin-1") if "%" in path else path
    if _REFUSED.search(decoded):
        return None
    segments = decoded.split("/")
    if segments[0]:
        return None
    if len(segments) > 2 and not segments[-1]:
        segments.pop()  # one trailing slash
    kept = [""]
    for segment in segments[1:]:
        name = segment.partition(";")[0] if ";" in segment else segment
        if name in (".", "..") or (not name and len(segments) > 2):
            return None
        kept.append(name)
    return "/".join(kept) or "/"


@dataclass(frozen=True, slots=True)
class Route:
    """A protected route with its difficulties worked out."""

    name: str
    methods: frozenset[str]
    exact: frozenset[str]
    prefixes: tuple[str, ...]
    #: ``maxnumber`` of new challenges for this route.
    difficulty: int
    #: Solutions of easier challenges are refused (``insufficient``).
    min_difficulty: int
    #: What challenges of this route are bound to (``policy:route``).
    binding: str
    #: From this unix time on, challenges easier than ``difficulty`` are refused too
    #: (a raise's grace has passed: no stockpiling); 0 never.
    strict_after: float = 0.0

    def minimum(self, now: float) -> int:
        """The least difficulty a solution's challenge must have at ``now``."""
        if self.strict_after and now >= self.strict_after:
            return self.difficulty
        return self.min_difficulty


class _Exempt:
    """Marker: the path is exempt and is never challenged."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "EXEMPT"


EXEMPT = _Exempt()


def _fold(pattern: str) -> str:
    """A route pattern as canonical paths are compared with it: lower case, no trailing slash."""
    prefix = pattern.endswith("*")
    body = pattern[:-1] if prefix else pattern
    if not prefix and len(body) > 1:
        body = body.rstrip("/") or "/"
    return body.lower() + ("*" if prefix else "")


def _split(patterns: list[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    exact = frozenset(p for p in patterns if not p.endswith("*"))
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))
    return exact, prefixes


def _compile_route(*, config: SidecarConfig, route: RouteConfig) -> Route:
    exact, prefixes = _split([_fold(path) for path in route.paths])
    multiplier = route.difficulty_multiplier
    methods = set(route.methods)
    if "GET" in methods:
        # Frameworks answer HEAD with their GET handler: it must pay alike.
        methods.add("HEAD")
    # Both bounds are scaled alike, so a route's challenges always satisfy its own minimum.
    return Route(
        name=route.name,
        methods=frozenset(methods),
        exact=exact,
        prefixes=prefixes,
        difficulty=max(config.min_difficulty, round(config.difficulty * multiplier)),
        min_difficulty=max(config.min_difficulty, round(config.min_difficulty * multiplier)),
        binding=f"{config.policy}:{route.name}",
        strict_after=(config.raised_at + config.raise_grace_seconds if config.raised_at else 0.0),
    )


class RouteTable:
    """Answers "which route pays for (method, path)?" for one configuration."""

    __slots__ = (
        "_exempt_exact",
        "_exempt_prefixes",
        "config",
        "enforcing",
        "mode",
        "routes",
        "version",
    )

    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.mode = config.mode
        #: Refusing, not only observing (a table is never changed, only replaced).
        self.enforcing = self.mode is Mode.ENFORCE
        #: The version exported in ``powgate_config_info``: the operator's, else a content hash.
        self.version = config.version or config.content_version()
        self.routes = tuple(_compile_route(config=config, route=route) for route in config.routes)
        self._exempt_exact, self._exempt_prefixes = _split(config.exempt_paths)

    def match(self, *, method: str, path: str) -> Route | _Exempt | None:
        """The first route (in configuration order) for the request, ``EXEMPT``, or ``None``.

        ``path`` is canonical (:func:`canonical`); exemptions compare it as it is,
        routes lower-cased. (One frame per request: every request is matched.)
        """
        prefixes = self._exempt_prefixes
        if path in self._exempt_exact or (prefixes and path.startswith(prefixes)):
            return EXEMPT
        folded = path.lower()
        for route in self.routes:
            if method in route.methods and (
                folded in route.exact or (route.prefixes and folded.startswith(route.prefixes))
            ):
                return route
        return None

    def difficulties(self) -> dict[str, int]:
        return {route.name: route.difficulty for route in self.routes}
