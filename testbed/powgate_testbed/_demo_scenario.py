"""The demo's scenario: how big everything is, how long each phase lasts, and the policies.

Two scales: ``DEFAULT`` (what ``make demo`` runs) and ``QUICK`` (the same
story, shorter, for the integration test). Why the numbers are what they are
is explained in ``docs/demo.md``: in short, everything is sized so that the
hashing of attackers and legitimate clients fits in about one of this
machine's two cores, leaving the other to the control plane and the stack.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Final

from powgate.policy import API_VERSION, KIND

__all__ = [
    "DEEPSEEK_DIFFICULTY",
    "DEFAULT",
    "QUICK",
    "Backend",
    "Defence",
    "Phases",
    "Scenario",
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
        return self.adaptive if defence is Defence.ADAPTIVE else self.baseline


DEFAULT: Final = Scenario(name="default")
QUICK: Final = Scenario(
    name="quick",
    adaptive=Phases(quiet=8, flood=40, after=70),
    baseline=Phases(quiet=5, flood=25, after=3),
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
    scenario: Scenario, *, defence: Defence, namespace: str, prometheus: str
) -> dict[str, Any]:
    """The PowPolicy of one run (its name is the defence's)."""
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": APP_LABEL}},
        "routes": [{"name": "chat", "paths": ["/v1/chat/*"], "methods": ["POST"]}],
        "challenge": {"lifetimeSeconds": 60},
        "prometheus": {"address": prometheus, "timeoutSeconds": 2},
        "evaluationIntervalSeconds": scenario.interval,
    }
    if defence is Defence.NONE:
        spec["mode"] = "off"
    elif defence is Defence.STATIC:
        fixed = scenario.static_difficulty
        spec["difficulty"] = {"min": fixed, "max": fixed}
    else:
        spec["difficulty"] = {"min": scenario.min_difficulty, "max": scenario.max_difficulty}
        spec["signals"] = _signals(scenario)
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
