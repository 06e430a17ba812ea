"""The routing table compiled from a :class:`~powgate.config.SidecarConfig`.

Compiled once per configuration so the hot path does set lookups and one
``str.startswith(tuple)`` (a single C call) per route, never pattern parsing.
"""

from __future__ import annotations

from dataclasses import dataclass

from powgate.config import Mode, RouteConfig, SidecarConfig

__all__ = ["EXEMPT", "Route", "RouteTable"]


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

    def matches_path(self, path: str) -> bool:
        return path in self.exact or (bool(self.prefixes) and path.startswith(self.prefixes))


class _Exempt:
    """Marker: the path is exempt and is never challenged."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "EXEMPT"


EXEMPT = _Exempt()


def _split(patterns: list[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    exact = frozenset(p for p in patterns if not p.endswith("*"))
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))
    return exact, prefixes


def _compile_route(*, config: SidecarConfig, route: RouteConfig) -> Route:
    exact, prefixes = _split(route.paths)
    multiplier = route.difficulty_multiplier
    # Both bounds are scaled alike, so a route's challenges always satisfy its own minimum.
    return Route(
        name=route.name,
        methods=frozenset(route.methods),
        exact=exact,
        prefixes=prefixes,
        difficulty=max(config.min_difficulty, round(config.difficulty * multiplier)),
        min_difficulty=max(config.min_difficulty, round(config.min_difficulty * multiplier)),
        binding=f"{config.policy}:{route.name}",
    )


class RouteTable:
    """Answers "which route pays for (method, path)?" for one configuration."""

    __slots__ = ("_exempt_exact", "_exempt_prefixes", "config", "mode", "routes", "version")

    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.mode = config.mode
        #: The version exported in ``powgate_config_info``: the operator's, else a content hash.
        self.version = config.version or config.content_version()
        self.routes = tuple(_compile_route(config=config, route=route) for route in config.routes)
        self._exempt_exact, self._exempt_prefixes = _split(config.exempt_paths)

    def is_exempt(self, path: str) -> bool:
        return path in self._exempt_exact or (
            bool(self._exempt_prefixes) and path.startswith(self._exempt_prefixes)
        )

    def match(self, *, method: str, path: str) -> Route | _Exempt | None:
        """The first route (in configuration order) for the request, ``EXEMPT``, or ``None``."""
        if self.is_exempt(path):
            return EXEMPT
        for route in self.routes:
            if method in route.methods and route.matches_path(path):
                return route
        return None

    @property
    def enforcing(self) -> bool:
        return self.mode is Mode.ENFORCE

    def difficulties(self) -> dict[str, int]:
        return {route.name: route.difficulty for route in self.routes}
