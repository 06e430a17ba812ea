"""The demo's scenario: how big everything is, how long each phase lasts, and the policies.

Two scales: ``DEFAULT`` (what ``make demo`` runs) and ``QUICK`` (the same
story, shorter, for the integration test). Why the numbers are what they are
is explained in ``docs/demo.md``: in short, everything is sized so that the
hashing of attackers and legitimate clients fits in about one of this
machine's two cores, leaving the other to the control plane and the stack.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Final

from powgate.policy import API_VERSION, KIND

__all__ = [
    "DEEPSEEK_DIFFICULTY",
    "DEFAULT",
    "QUICK",
    "SCHEME_RUNS",
    "WHO_PAYS_RUNS",
    "Backend",
    "Defence",
    "Phases",
    "Scenario",
    "SchemeComparison",
    "SchemePrice",
    "WhoPays",
    "policy_manifest",
]

#: The fixed difficulty DeepSeek's ``create_pow_challenge`` hands out: the static baseline.
DEEPSEEK_DIFFICULTY: Final = 144_000
#: The label that every pod of the demo's service would carry.
APP_LABEL: Final = "powgate-demo"


class Defence(enum.StrEnum):
    """What stands in front of the service in one run of the scenario."""

    NONE = "none"  # the sidecar forwards everything (policy mode off): no proof of work
    STATIC = "static"  # a fixed difficulty, DeepSeek-style
    ADAPTIVE = "adaptive"  # the operator steers difficulty from Prometheus signals
    # The scheme comparison: a fixed price that costs a browser the same time
    # in each, against bots that solve natively (SchemeComparison).
    SHA256 = "sha256"
    ARGON2ID = "argon2id"
    # Who pays (WhoPays): the adaptive policy alone, and with per-client prices,
    # against the flood from a few heavy networks, then from many light ones.
    HEAVY_GLOBAL = "heavy-global"
    HEAVY_PER_CLIENT = "heavy-per-client"
    LIGHT_GLOBAL = "light-global"
    LIGHT_PER_CLIENT = "light-per-client"


#: The runs of the scheme comparison, in order.
SCHEME_RUNS: Final = (Defence.SHA256, Defence.ARGON2ID)
#: The runs of the who-pays comparison, in order: each shape, global then per client.
WHO_PAYS_RUNS: Final = (
    Defence.HEAVY_GLOBAL,
    Defence.HEAVY_PER_CLIENT,
    Defence.LIGHT_GLOBAL,
    Defence.LIGHT_PER_CLIENT,
)
#: Native/browser speed per core from ``python -m bench schemes``
#: (docs/performance.md): SHA-256 estimated as twice OpenSSL's 64-byte rate
#: (the native search measured since is faster, ≈ 7x: these bots understate
#: SHA-256's gap), Argon2id (one pass over 32 MiB) against libargon2.
SHA256_NATIVE_RATIO: Final = 5.6
ARGON2ID_NATIVE_RATIO: Final = 2.7


@dataclass(frozen=True, slots=True)
class SchemePrice:
    """One scheme of the comparison: what a browser does per second, and the bots' speed-up.

    ``browser_rate`` is in the scheme's unit of work (hashes; Argon2id: tries
    at the policy's parameters); the bots, solving natively, do
    ``attack_speedup`` times that.
    """

    algorithm: str
    browser_rate: float
    attack_speedup: float

    def difficulty(self, browser_seconds: float) -> int:
        """The fixed difficulty that costs a browser ``browser_seconds`` on average."""
        return max(2, round(2 * self.browser_rate * browser_seconds))

    @property
    def attack_budget(self) -> float:
        return self.browser_rate * self.attack_speedup


def _sha256_price() -> SchemePrice:
    # A fiftieth of a real browser's SHA-256 rate, so that the bots' 10x
    # (300 000 hashes/s) stays within reach of CPython on a busy 2-core machine.
    return SchemePrice("SHA-256", browser_rate=3e4, attack_speedup=10.0)


def _argon2id_price() -> SchemePrice:
    # A tenth of a real browser's rate at the default parameters (~10 tries/s
    # a core), like SHA-256's; the same native machines that are 10x a
    # browser at SHA-256 are 10 x 2.7 / 5.6 at Argon2id.
    speedup = round(10.0 * ARGON2ID_NATIVE_RATIO / SHA256_NATIVE_RATIO, 1)
    return SchemePrice("ARGON2ID", browser_rate=1.0, attack_speedup=speedup)


@dataclass(frozen=True, slots=True)
class SchemeComparison:
    """SHA-256 and Argon2id priced alike for a browser, flooded by natively solving bots."""

    #: What a fixed toll costs a browser on average, in either scheme.
    browser_seconds: float = 4.0
    sha256: SchemePrice = field(default_factory=_sha256_price)
    argon2id: SchemePrice = field(default_factory=_argon2id_price)

    def price(self, defence: Defence) -> SchemePrice | None:
        """The price of a scheme run; ``None`` for the other runs."""
        return {Defence.SHA256: self.sha256, Defence.ARGON2ID: self.argon2id}.get(defence)


@dataclass(frozen=True, slots=True)
class WhoPays:
    """Per-client pricing against the global adaptive policy, for two shapes of one flood.

    Clients come from networks of their own (a /24 each, named by the
    generator as the proxy in front of a service does): the legitimate
    clients from ``legit_sources`` networks, the bots from
    ``heavy_sources`` (a few, each far above the fair rate) or
    ``light_sources`` (many, each below it). The flood's rate and the bots'
    budget are the scenario's in both shapes.
    """

    legit_sources: int = 64
    heavy_sources: int = 4
    light_sources: int = 600
    #: Bot requests outstanding per sidecar: bots send what they offer and then wait
    #: for their budget, as a flood does (the other runs cap them at 8, so that
    #: challenges do not pile up); each request they send counts towards their rate.
    bot_in_flight: int = 64
    #: Longer than the baselines': the global policy comes down only after its
    #: decrease window, and what it does once the bots are priced is part of the story.
    phases: Phases = field(default_factory=lambda: Phases(quiet=10, flood=75, after=5))
    #: The per-client policy: requests per second at the base price, growth, cap.
    fair_rate: float = 0.5
    growth: float = 1.0
    max_factor: float = 64.0
    half_life_seconds: float = 5.0

    def sources(self, defence: Defence) -> tuple[int, int]:
        """Networks of the legitimate clients and of the bots (0, 0: all from one host)."""
        if defence in (Defence.HEAVY_GLOBAL, Defence.HEAVY_PER_CLIENT):
            return self.legit_sources, self.heavy_sources
        if defence in (Defence.LIGHT_GLOBAL, Defence.LIGHT_PER_CLIENT):
            return self.legit_sources, self.light_sources
        return 0, 0

    @staticmethod
    def priced(defence: Defence) -> bool:
        return defence in (Defence.HEAVY_PER_CLIENT, Defence.LIGHT_PER_CLIENT)


@dataclass(frozen=True, slots=True)
class Backend:
    """The stand-in AI service: a fixed capacity of ``capacity`` requests per second."""

    concurrency: int = 2
    tokens_per_second: float = 32.0
    max_tokens: int = 16
    max_queue: int = 8

    @property
    def service_seconds(self) -> float:
        return self.max_tokens / self.tokens_per_second

    @property
    def capacity(self) -> float:
        """Requests per second the backend completes when it is always busy."""
        return self.concurrency / self.service_seconds


@dataclass(frozen=True, slots=True)
class Phases:
    """Seconds of each phase of one run: quiet, flood, quiet again."""

    quiet: float
    flood: float
    after: float

    @property
    def total(self) -> float:
        return self.quiet + self.flood + self.after


@dataclass(frozen=True, slots=True)
class Scenario:
    """Everything that sizes a demo run."""

    name: str
    backend: Backend = field(default_factory=Backend)
    sidecars: int = 2
    legit_rate: float = 1.0
    #: Bot requests per second during the flood.
    flood_rate: float = 30.0
    #: Hashes per second shared by all bots (honest solvers: the strongest attack).
    attack_budget: float = 3.0e5
    #: Outstanding requests per class and sidecar: a bot waiting for its budget
    #: does not stack up hundreds of requests that would flood on after the flood.
    max_in_flight: int = 8
    #: Phases of the adaptive run, and of each baseline run (which needs no recovery).
    adaptive: Phases = field(default_factory=lambda: Phases(quiet=15, flood=60, after=240))
    baseline: Phases = field(default_factory=lambda: Phases(quiet=10, flood=40, after=5))
    #: The scheme comparison's runs have the baselines' phases.
    schemes: SchemeComparison = field(default_factory=SchemeComparison)
    #: The who-pays comparison's runs too (judged, like them, after ``settle``).
    who_pays: WhoPays = field(default_factory=WhoPays)
    #: Seconds at the start of the flood excluded from the baselines' steady state:
    #: the adaptation budget, so every defence is judged on the same stretch.
    settle: float = 15.0
    #: Prometheus scrape interval and the operator's evaluation interval.
    interval: int = 2
    #: Window of the signals' rate() and avg_over_time(): long enough that
    #: legitimate traffic alone never looks like the target (Poisson noise).
    rate_window: int = 10
    min_difficulty: int = 50_000
    max_difficulty: int = 500_000
    static_difficulty: int = DEEPSEEK_DIFFICULTY
    #: Difficulty decreases only after this long without a higher recommendation:
    #: about as long as the flood lasts, so a defence that adapted holds (no flapping).
    decrease_window: int = 40
    #: At most halving per this many seconds on the way down.
    decrease_period: int = 6

    def __post_init__(self) -> None:
        if self.sidecars < 1:
            raise ValueError("a demo needs at least one sidecar")
        if self.flood_rate < 20 * self.legit_rate:
            raise ValueError("the flood must be at least 20 times the legitimate rate")
        if not self.min_difficulty <= self.static_difficulty <= self.max_difficulty:
            raise ValueError("the static difficulty must lie within [min, max]")

    @property
    def admitted_target(self) -> float:
        """Admitted requests per second the policy steers to: 65 % of the backend's capacity."""
        return round(0.65 * self.backend.capacity, 3)

    def phases(self, defence: Defence) -> Phases:
        if defence is Defence.ADAPTIVE:
            return self.adaptive
        return self.who_pays.phases if defence in WHO_PAYS_RUNS else self.baseline


DEFAULT: Final = Scenario(name="default")
QUICK: Final = Scenario(
    name="quick",
    adaptive=Phases(quiet=8, flood=40, after=70),
    baseline=Phases(quiet=5, flood=25, after=3),
    who_pays=WhoPays(phases=Phases(quiet=5, flood=40, after=3)),
    decrease_window=20,
    decrease_period=4,
)


def _signals(scenario: Scenario) -> list[dict[str, Any]]:
    window = f"{scenario.rate_window}s"
    return [
        {
            # Valid solutions per second across the sidecars: honest bots are
            # admitted at about budget / (difficulty / 2) per second, so this
            # signal is proportional to what difficulty has to correct.
            "name": "admitted-rate",
            "query": 'sum(rate(powgate_requests_total{namespace="$namespace",'
            f'outcome="admitted"}}[{window}]))',
            "target": scenario.admitted_target,
        },
        {
            # Requests generating or waiting per slot, averaged over the window so
            # one instant of a Poisson queue does not move difficulty.
            "name": "backend-load",
            "query": 'sum(avg_over_time(powgate_standin_in_flight_requests{namespace="$namespace"}'
            f"[{window}]) + avg_over_time("
            f'powgate_standin_queued_requests{{namespace="$namespace"}}[{window}]))'
            ' / sum(powgate_standin_concurrency{namespace="$namespace"})',
            "target": 1.0,
        },
    ]


def policy_manifest(
    scenario: Scenario,
    *,
    defence: Defence,
    namespace: str,
    prometheus: str,
    generator: str = "127.0.0.1",
) -> dict[str, Any]:
    """The PowPolicy of one run (its name is the defence's).

    ``generator`` is the traffic generator's address as the sidecars see it:
    in the who-pays runs it plays the proxy in front of the service, naming
    each client in X-Forwarded-For, and the policy trusts it as such.
    """
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": APP_LABEL}},
        "routes": [{"name": "chat", "paths": ["/v1/chat/*"], "methods": ["POST"]}],
        "challenge": {"lifetimeSeconds": 60},
        "prometheus": {"address": prometheus, "timeoutSeconds": 2},
        "evaluationIntervalSeconds": scenario.interval,
    }
    if defence is Defence.NONE:
        spec["mode"] = "off"
    elif (price := scenario.schemes.price(defence)) is not None:
        fixed = price.difficulty(scenario.schemes.browser_seconds)
        spec["challenge"]["algorithm"] = price.algorithm
        spec["difficulty"] = {"min": fixed, "max": fixed}
    elif defence is Defence.STATIC:
        fixed = scenario.static_difficulty
        spec["difficulty"] = {"min": fixed, "max": fixed}
    else:
        spec["difficulty"] = {"min": scenario.min_difficulty, "max": scenario.max_difficulty}
        spec["signals"] = _signals(scenario)
        who = scenario.who_pays
        if who.priced(defence):
            spec["pricing"] = {
                "enabled": True,
                "fairRate": who.fair_rate,
                "growth": who.growth,
                "maxFactor": who.max_factor,
                "halfLifeSeconds": who.half_life_seconds,
            }
            spec["reputation"] = {"share": True, "ttlSeconds": 120}
        if defence in WHO_PAYS_RUNS:
            host = ipaddress.ip_address(generator)
            spec["trustedProxies"] = [f"{host}/{host.max_prefixlen}"]
        spec["behavior"] = {
            "tolerance": 0.1,
            # Up fast: no stabilization, at most x5 per evaluation. The signals lag
            # by a rate window, so the first steps overshoot what the flood needs;
            # `max` bounds what that costs legitimate clients.
            "increase": {
                "stabilizationWindowSeconds": 0,
                "policies": [{"type": "Percent", "value": 400, "periodSeconds": scenario.interval}],
            },
            # Down slowly: only once every recommendation of the window is lower.
            "decrease": {
                "stabilizationWindowSeconds": scenario.decrease_window,
                "policies": [
                    {"type": "Percent", "value": 50, "periodSeconds": scenario.decrease_period}
                ],
            },
        }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": str(defence), "namespace": namespace},
        "spec": spec,
    }
