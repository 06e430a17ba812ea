"""The PowPolicy resource: spec and status models, and rendering the sidecar config.

These models are the one source of truth for the CRD: the operator generates
the OpenAPI schema of ``crds/powpolicy.yaml`` from them (``python -m
powgate_operator.crd``), including the CEL rules declared here next to the
validators that enforce the same rules in Python. Field names are camelCase
on the wire, as everywhere in Kubernetes.
"""

from __future__ import annotations

import enum
import string
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Final, Self

from pydantic import ConfigDict, Field, model_validator

from ._verify import MAX_DIFFICULTY
from ._wire import WireModel
from .config import (
    BASE_CONTRACT,
    DEFAULT_EXEMPT_PATHS,
    MAX_CHALLENGE_LIFETIME_SECONDS,
    MAX_REPLAY_ENTRIES,
    MIN_REPLAY_ENTRIES,
    REPLAY_STORE_CONTRACT,
    AlgorithmName,
    KdfSpec,
    Mode,
    OverloadConfig,
    PathPattern,
    QueueConfig,
    ReplayStoreSpec,
    RouteConfig,
    SidecarConfig,
    check_scheme,
    default_routes,
)
from .pricing import MAX_FACTOR, Cidr, PricingConfig, TrustedCaller
from .reputation import MAX_ENTRIES, REPUTATION_DATA_KEY

__all__ = [
    "API_VERSION",
    "CREDENTIALS_LABEL",
    "GROUP",
    "KIND",
    "MAX_HISTORY",
    "MAX_RECOMMENDATIONS",
    "MAX_WINDOW_SECONDS",
    "PLURAL",
    "REPUTATION_SOURCE_LABEL",
    "SHORT_NAME",
    "VERSION",
    "Aggregate",
    "Behavior",
    "ChallengeSpec",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "DecisionReason",
    "DifficultyChange",
    "DifficultyRange",
    "FallbackAction",
    "FallbackSpec",
    "KeyRotationSpec",
    "KeyStatus",
    "LabelSelector",
    "LabelSelectorRequirement",
    "LastDecision",
    "NetworkPolicyMode",
    "NetworkPolicySpec",
    "OnEmpty",
    "PolicySpec",
    "PolicyStatus",
    "PricingStatus",
    "PrometheusSpec",
    "ProtectionStatus",
    "Recommendation",
    "ReplaySpec",
    "ReputationImport",
    "ReputationSourceKind",
    "ReputationSpec",
    "RolloutStatus",
    "SecretKeyRef",
    "SelectPolicy",
    "SignalHealth",
    "SignalSpec",
    "SignalStatus",
    "StepPolicy",
    "StepPolicyType",
    "StepRules",
    "UnprotectedPod",
    "config_map_name",
    "key_secret_name",
    "last_raise",
    "network_policy_name",
    "render_config",
    "replay_store_secret_name",
    "reputation_name",
]

GROUP: Final = "powgate.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "PowPolicy"
PLURAL: Final = "powpolicies"
SHORT_NAME: Final = "pow"

#: Status lists are bounded so that a long-lived policy never grows its object.
MAX_HISTORY: Final = 20
MAX_RECOMMENDATIONS: Final = 240
#: The longest window or period a behavior may use (one hour, as the HPA allows).
MAX_WINDOW_SECONDS: Final = 3600

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """Attach CEL rules (rule, message) to a model's schema for the API server."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": msg} for rule, msg in rules]}


def _list_map(key: str) -> dict[str, Any]:
    """Mark a list as a map keyed by ``key``: the API server rejects duplicate keys."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}


# -- spec ---------------------------------------------------------------------


class LabelSelectorRequirement(WireModel):
    """One ``matchExpressions`` entry of a Kubernetes label selector."""

    key: str = Field(min_length=1, max_length=317)
    operator: str = Field(pattern=r"^(In|NotIn|Exists|DoesNotExist)$")
    values: list[Annotated[str, Field(max_length=63)]] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _check(self) -> Self:
        wants_values = self.operator in ("In", "NotIn")
        if wants_values != bool(self.values):
            raise ValueError(
                "values must be non-empty for In/NotIn and empty for Exists/DoesNotExist"
            )
        return self


class LabelSelector(WireModel):
    """Which pods a policy protects (a standard Kubernetes label selector)."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "(has(self.matchLabels) && size(self.matchLabels) > 0)"
                " || (has(self.matchExpressions) && size(self.matchExpressions) > 0)",
                "selector must not be empty: a policy never selects every pod by accident",
            )
        )
    )

    match_labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=64
    )
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.match_labels and not self.match_expressions:
            raise ValueError(
                "selector must not be empty: a policy never selects every pod by accident"
            )
        return self


class DifficultyRange(WireModel):
    """The bounds of the difficulty and where it starts.

    Difficulty is linear in the client's expected work, in every scheme: the
    ``maxnumber`` of an ALTCHA v1 or DeepSeek challenge (mean work
    ``difficulty / 2`` hashes), and for ALTCHA PoW v2 twice the mean number of
    tries at the policy's ``challenge.kdf`` (docs/protocol.md). Bounds are
    therefore chosen per scheme.
    """

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("self.min <= self.max", "difficulty.min must not exceed difficulty.max"),
            (
                "!has(self.initial) || (self.min <= self.initial && self.initial <= self.max)",
                "difficulty.initial must lie within [difficulty.min, difficulty.max]",
            ),
        )
    )

    min: int = Field(
        default=10_000,
        ge=1,
        le=MAX_DIFFICULTY,
        description="Lowest difficulty; sidecars also refuse solutions of easier challenges.",
    )
    max: int = Field(default=5_000_000, ge=1, le=MAX_DIFFICULTY, description="Highest difficulty.")
    initial: int | None = Field(
        default=None,
        ge=1,
        le=MAX_DIFFICULTY,
        description="Difficulty of a new policy; `min` when unset.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.min > self.max:
            raise ValueError("difficulty.min must not exceed difficulty.max")
        if self.initial is not None and not self.min <= self.initial <= self.max:
            raise ValueError("difficulty.initial must lie within [difficulty.min, difficulty.max]")
        return self

    @property
    def start(self) -> int:
        return self.min if self.initial is None else self.initial

    def clamp(self, value: int) -> int:
        return max(self.min, min(self.max, value))


class ChallengeSpec(WireModel):
    """What each challenge looks like."""

    algorithm: AlgorithmName = "SHA-256"
    kdf: KdfSpec | None = Field(
        default=None,
        description="ALTCHA PoW v2 schemes only: the time and memory one try costs. "
        "Unset fields take the scheme's defaults.",
    )
    grace_seconds_after_raise: int = Field(
        default=60,
        ge=0,
        le=MAX_CHALLENGE_LIFETIME_SECONDS,
        description="After difficulty rises, solutions of easier challenges pass for this long "
        "(clients already solving), then are refused: no stockpiling of cheap challenges.",
    )
    lifetime_seconds: int = Field(
        default=300,
        ge=5,
        le=MAX_CHALLENGE_LIFETIME_SECONDS,
        description="How long a challenge stays solvable (at most an hour: a longer one could "
        "be stockpiled while difficulty is low).",
    )


class KeyRotationSpec(WireModel):
    """How often the operator rotates the HMAC key that signs challenges."""

    rotation_interval_seconds: int = Field(
        default=7 * 86_400,
        ge=0,
        le=366 * 86_400,
        description="0 never rotates; otherwise at least the challenge lifetime.",
    )
    propagation_seconds: int = Field(
        default=180,
        ge=0,
        le=3600,
        description="When the sidecars' keys cannot be read from Prometheus (powgate_key_info): "
        "how long a new key is published before it signs, and the previous one keeps signing "
        "elsewhere. Longer than the kubelet's sync period (1 min by default), which is when a "
        "changed Secret reaches a pod. Observed, each phase waits for every sidecar instead.",
    )


#: A Secret opts in to being used as Prometheus credentials with this label set to "true".
CREDENTIALS_LABEL: Final = "powgate.dev/prometheus-credentials"


class SecretKeyRef(WireModel):
    """An Opaque Secret in the policy's namespace holding Prometheus credentials.

    Keys: ``token`` (sent as a bearer token) or ``username`` and ``password``
    (HTTP basic). The Secret must carry the label
    ``powgate.dev/prometheus-credentials: "true"``, and the operator sends the
    credentials only to addresses its administrator allowed
    (``--prometheus-credential-addresses``).
    """

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class PrometheusSpec(WireModel):
    """Where the signals come from."""

    address: str = Field(
        default="http://prometheus.monitoring.svc:9090",
        min_length=1,
        max_length=512,
        pattern=r"^https?://[^\s]+$",
    )
    auth_secret_ref: SecretKeyRef | None = None
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    insecure_skip_verify: bool = False


class OnEmpty(enum.StrEnum):
    """What an empty query result means (a quiet service often has no series at all)."""

    ZERO = "Zero"  # the value is 0: no traffic, no pressure
    FAILURE = "Failure"  # the signal failed: counts towards the fallback


class Aggregate(enum.StrEnum):
    """How a query that returns several series becomes one value."""

    FAIL = "Fail"  # several series are an error in the query: aggregate in PromQL
    MAX = "Max"
    SUM = "Sum"
    MEAN = "Mean"


class SignalSpec(WireModel):
    """One PromQL query with a target: above the target, difficulty rises in proportion."""

    name: str = Field(min_length=1, max_length=63, pattern=_DNS_LABEL)
    query: str = Field(
        min_length=1,
        max_length=4096,
        description="PromQL; `$namespace`, `$name` and `$policy` (namespace/name) are substituted.",
    )
    target: float = Field(gt=0, le=1e15, description="The value the controller steers towards.")
    weight: float = Field(
        default=1.0,
        gt=0,
        le=10,
        description="Scales how strongly this signal moves difficulty: 1 is proportional.",
    )
    on_empty: OnEmpty = OnEmpty.ZERO
    aggregate: Aggregate = Aggregate.FAIL

    def render_query(self, *, namespace: str, name: str) -> str:
        values = {"namespace": namespace, "name": name, "policy": f"{namespace}/{name}"}
        return string.Template(self.query).safe_substitute(values)


class StepPolicyType(enum.StrEnum):
    PERCENT = "Percent"  # change by at most this percentage of the period's starting value
    ABSOLUTE = "Absolute"  # change by at most this much difficulty


class StepPolicy(WireModel):
    """At most ``value`` change per ``periodSeconds`` (HPA's scaling policies)."""

    type: StepPolicyType
    value: int = Field(ge=1, le=MAX_DIFFICULTY)
    period_seconds: int = Field(ge=1, le=MAX_WINDOW_SECONDS)


class SelectPolicy(enum.StrEnum):
    MAX = "Max"  # the policy that allows the largest change
    MIN = "Min"  # the policy that allows the smallest change
    DISABLED = "Disabled"  # no change in this direction


class StepRules(WireModel):
    """The rules of one direction (increase or decrease), with HPA semantics."""

    stabilization_window_seconds: int = Field(
        default=0,
        ge=0,
        le=MAX_WINDOW_SECONDS,
        description="Increase: to the lowest recommendation of this window; decrease: to the "
        "highest. Note: a direction written out in full gets 0 unless set here.",
    )
    select_policy: SelectPolicy = SelectPolicy.MAX
    policies: list[StepPolicy] = Field(
        default_factory=list, max_length=8, description="Step limits per period; none: no limit."
    )


def _default_increase() -> StepRules:
    # React within one evaluation: up to 4x per 30 s, no stabilization.
    return StepRules(
        policies=[StepPolicy(type=StepPolicyType.PERCENT, value=300, period_seconds=30)]
    )


def _default_decrease() -> StepRules:
    # Relax slowly: the highest recommendation of the last 5 minutes, at most halving per minute.
    return StepRules(
        stabilization_window_seconds=300,
        policies=[StepPolicy(type=StepPolicyType.PERCENT, value=50, period_seconds=60)],
    )


class Behavior(WireModel):
    """How fast difficulty may move (HPA's ``behavior``, for difficulty instead of replicas)."""

    tolerance: float = Field(
        default=0.1, ge=0, le=1, description="No change while |value/target - 1| ≤ tolerance."
    )
    increase: StepRules = Field(default_factory=_default_increase)
    decrease: StepRules = Field(default_factory=_default_decrease)


class FallbackAction(enum.StrEnum):
    HOLD = "Hold"  # keep the current difficulty (never relax because a query failed)
    FIXED = "Fixed"  # after `afterFailures` failed evaluations, use `difficulty`


class FallbackSpec(WireModel):
    """What happens while signals fail."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "self.action != 'Fixed' || has(self.difficulty)",
                "fallback.difficulty is required when fallback.action is Fixed",
            )
        )
    )

    action: FallbackAction = Field(
        default=FallbackAction.HOLD,
        description="Hold: never lower while a signal fails. Fixed: use `difficulty` after "
        "`afterFailures` consecutive failures.",
    )
    after_failures: int = Field(default=3, ge=1, le=1000)
    difficulty: int | None = Field(default=None, ge=1, le=MAX_DIFFICULTY)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.action is FallbackAction.FIXED and self.difficulty is None:
            raise ValueError("fallback.difficulty is required when fallback.action is Fixed")
        return self


#: A ConfigMap or Secret opts in to being imported as a reputation list with this label = "true".
REPUTATION_SOURCE_LABEL: Final = "powgate.dev/reputation-source"


class ReputationSourceKind(enum.StrEnum):
    CONFIG_MAP = "ConfigMap"
    SECRET = "Secret"  # noqa: S105 - a kind of object


class ReputationImport(WireModel):
    """A reputation list the administrator keeps in the policy's namespace.

    Synced from another cluster's export or from a threat feed by whatever
    the administrator uses; the operator only reads it (never a URL). The
    object must carry the label `powgate.dev/reputation-source: "true"`.
    """

    kind: ReputationSourceKind = ReputationSourceKind.CONFIG_MAP
    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    key: str = Field(
        default=REPUTATION_DATA_KEY,
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="The data key holding the list.",
    )
    max_factor: float | None = Field(
        default=None,
        ge=1,
        le=MAX_FACTOR,
        description="Caps what this source may charge; unset: pricing.maxFactor.",
    )


class ReputationSpec(WireModel):
    """What the fleet learns and shares: heavy hitters of one sidecar pay more at every sidecar."""

    share: bool = Field(
        default=True,
        description="With pricing on: every evaluation, the sidecars' heaviest clients go into "
        "the list all the policy's sidecars apply, and into the policy's export "
        "(ConfigMap <policy>-powgate-reputation).",
    )
    ttl_seconds: int = Field(
        default=900,
        ge=60,
        le=7 * 86_400,
        description="How long a learnt entry stays after its client was last seen heavy.",
    )
    max_entries: int = Field(
        default=1000,
        ge=1,
        le=MAX_ENTRIES,
        description="The most entries the list the sidecars apply may hold (the costliest stay).",
    )
    imports: list[ReputationImport] = Field(default_factory=list, max_length=8)


class ReplaySpec(WireModel):
    """How sidecars remember spent solutions (single use).

    Each sidecar process keeps a cache of its own (sized below): alone, it
    makes a solution single use per process. `store` adds a Redis/Valkey
    server that every sidecar of the policy asks after its own cache, so a
    solution buys one request cluster-wide.
    """

    expected_admissions_per_second: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Admitted requests per second one sidecar should absorb at peak; its cache "
        "holds twice this rate times the challenge lifetime.",
    )
    max_entries: int | None = Field(
        default=None,
        ge=MIN_REPLAY_ENTRIES,
        le=MAX_REPLAY_ENTRIES,
        description="The cache's size outright (about 200 bytes per entry), instead of the "
        "rate. At the bound valid solutions are refused (replay_cache_full): never a replay.",
    )
    store: ReplayStoreSpec | None = Field(
        default=None,
        description="A Redis/Valkey server shared by the policy's sidecars (single use "
        "cluster-wide). Unset: the operator's default store (chart value replayStore), if "
        "any; else single use per sidecar process. Credentials: the Secret "
        "<policy>-powgate-replay-store (keys username, password, ca.crt, tls.crt, tls.key), "
        "mounted into the sidecar container only.",
    )

    def entries(self, *, lifetime_seconds: int) -> int:
        """The cache size for challenges that live ``lifetime_seconds``."""
        if self.max_entries is not None:
            return self.max_entries
        wanted = 2 * self.expected_admissions_per_second * lifetime_seconds
        return max(MIN_REPLAY_ENTRIES, min(MAX_REPLAY_ENTRIES, wanted))


class NetworkPolicyMode(enum.StrEnum):
    """When the operator writes the policy's NetworkPolicy."""

    AUTO = "Auto"
    ALWAYS = "Always"
    OFF = "Off"


class NetworkPolicySpec(WireModel):
    """A NetworkPolicy that lets other pods reach the injected pods only through the sidecar.

    It selects the pods carrying this policy's sidecar and admits ingress to
    the sidecar's ports and to every other port the pods declare, not to the
    app's port the sidecar took over (reachable as ``podIP:port`` otherwise).
    Ports a container listens on without declaring them are closed too.
    """

    mode: NetworkPolicyMode = Field(
        default=NetworkPolicyMode.AUTO,
        description="Auto: written unless another NetworkPolicy of the namespace selects the "
        "policy's pods (its own rules would be widened: ours admits every source to the "
        "sidecar); Always: written regardless; Off: none (removed if it was written).",
    )


class PolicySpec(WireModel):
    """The desired state of a PowPolicy."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.fallback.difficulty) || (self.fallback.difficulty >= self.difficulty.min"
                " && self.fallback.difficulty <= self.difficulty.max)",
                "fallback.difficulty must lie within [difficulty.min, difficulty.max]",
            ),
            (
                "self.keys.rotationIntervalSeconds == 0"
                " || self.keys.rotationIntervalSeconds >= self.challenge.lifetimeSeconds",
                "keys.rotationIntervalSeconds must be 0 or at least challenge.lifetimeSeconds",
            ),
            (
                "self.routes.all(r, double(self.difficulty.max) * (has(r.difficultyMultiplier)"
                f" ? r.difficultyMultiplier : 1.0) <= {float(MAX_DIFFICULTY)})",
                f"difficulty.max times a route's difficultyMultiplier must not exceed "
                f"{MAX_DIFFICULTY}",
            ),
        )
    )

    selector: LabelSelector
    mode: Mode = Mode.ENFORCE
    routes: list[RouteConfig] = Field(
        default_factory=default_routes,
        min_length=1,
        max_length=64,
        json_schema_extra=_list_map("name"),
    )
    exempt_paths: list[PathPattern] = Field(
        default_factory=lambda: list(DEFAULT_EXEMPT_PATHS), max_length=64
    )
    difficulty: DifficultyRange = Field(default_factory=DifficultyRange)
    challenge: ChallengeSpec = Field(default_factory=ChallengeSpec)
    keys: KeyRotationSpec = Field(default_factory=KeyRotationSpec)
    prometheus: PrometheusSpec = Field(default_factory=PrometheusSpec)
    signals: list[SignalSpec] = Field(
        default_factory=list, max_length=16, json_schema_extra=_list_map("name")
    )
    behavior: Behavior = Field(default_factory=Behavior)
    fallback: FallbackSpec = Field(default_factory=FallbackSpec)
    evaluation_interval_seconds: int = Field(
        default=15, ge=1, le=3600, description="How often the signals are queried and applied."
    )
    queue: QueueConfig = Field(default_factory=QueueConfig)
    overload: OverloadConfig = Field(default_factory=OverloadConfig)
    replay: ReplaySpec = Field(default_factory=lambda: ReplaySpec())
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    trusted_callers: list[TrustedCaller] = Field(
        default_factory=list,
        max_length=32,
        json_schema_extra=_list_map("name"),
        description="Callers who pay less or nothing; one matching several pays the least.",
    )
    reputation: ReputationSpec = Field(default_factory=ReputationSpec)
    trusted_proxies: list[Cidr] = Field(
        default_factory=list,
        max_length=64,
        description="Proxies in front of the selected pods (an ingress controller, a gateway) "
        "whose X-Forwarded-For, Forwarded, X-Real-IP and identity headers the sidecars "
        "believe: per-client prices and trusted callers key on the client they name. From "
        "any other peer those headers are replaced, and the peer is the client.",
    )
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)

    @model_validator(mode="after")
    def _check(self) -> Self:
        for field, items in (
            ("routes", self.routes),
            ("signals", self.signals),
            ("trustedCallers", self.trusted_callers),
        ):
            names = [item.name for item in items]
            if len(set(names)) != len(names):
                raise ValueError(f"{field} names must be unique")
        fixed = self.fallback.difficulty
        if fixed is not None and not self.difficulty.min <= fixed <= self.difficulty.max:
            raise ValueError("fallback.difficulty must lie within [difficulty.min, difficulty.max]")
        for route in self.routes:
            if self.difficulty.max * route.difficulty_multiplier > MAX_DIFFICULTY:
                raise ValueError(
                    f"difficulty.max times a route's difficultyMultiplier must not exceed "
                    f"{MAX_DIFFICULTY} (route {route.name})"
                )
        interval = self.keys.rotation_interval_seconds
        if interval and interval < self.challenge.lifetime_seconds:
            raise ValueError(
                "keys.rotationIntervalSeconds must be 0 or at least challenge.lifetimeSeconds"
            )
        # The steepest route issues the highest difficulty: it must fit the algorithm too.
        steepest = max(
            round(self.difficulty.max * route.difficulty_multiplier) for route in self.routes
        )
        check_scheme(
            self.challenge.algorithm,
            self.challenge.kdf,
            difficulty=max(self.difficulty.max, steepest),
        )
        return self


# -- status -------------------------------------------------------------------


class ConditionType(enum.StrEnum):
    READY = "Ready"
    PODS_PROTECTED = "PodsProtected"
    SIGNALS_HEALTHY = "SignalsHealthy"
    FALLBACK_ACTIVE = "FallbackActive"
    LIMITED = "Limited"
    #: Whether every sidecar of a policy with a shared replay store reaches it.
    REPLAY_STORE_AVAILABLE = "ReplayStoreAvailable"


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(WireModel):
    """A standard Kubernetes condition."""

    type: ConditionType
    status: ConditionStatus
    reason: str = Field(max_length=128)
    message: str = Field(default="", max_length=1024)
    last_transition_time: datetime


class DecisionReason(enum.StrEnum):
    """Why the controller chose the difficulty it chose."""

    INITIAL = "Initial"
    NO_SIGNALS = "NoSignals"
    ABOVE_TARGET = "AboveTarget"
    BELOW_TARGET = "BelowTarget"
    WITHIN_TOLERANCE = "WithinTolerance"
    STABILIZED = "Stabilized"
    RATE_LIMITED = "RateLimited"
    AT_BOUND = "AtBound"
    BOUNDS_CHANGED = "BoundsChanged"
    FALLBACK_HOLD = "FallbackHold"
    FALLBACK_FIXED = "FallbackFixed"


class LastDecision(WireModel):
    """The last evaluation, whether or not it changed anything."""

    time: datetime
    difficulty: int = Field(ge=1, le=MAX_DIFFICULTY)
    reason: DecisionReason
    message: str = Field(default="", max_length=1024)
    #: The signal that set the recommendation, and the raw recommendation before limits.
    signal: str = Field(default="", max_length=63)
    recommended: int = Field(default=0, ge=0, le=MAX_DIFFICULTY)


class SignalHealth(enum.StrEnum):
    OK = "OK"
    EMPTY = "Empty"
    FAILING = "Failing"
    UNKNOWN = "Unknown"


class SignalStatus(WireModel):
    """What the last query of one signal returned."""

    name: str = Field(max_length=63)
    health: SignalHealth = SignalHealth.UNKNOWN
    value: float | None = None
    last_success_time: datetime | None = None
    consecutive_failures: int = Field(default=0, ge=0)
    reason: str = Field(default="", max_length=128, description="The failure's cause, if failing.")
    message: str = Field(default="", max_length=1024)


class RolloutStatus(WireModel):
    """How many sidecars run the current config version (from their metric)."""

    version: str = Field(default="", max_length=64)
    updated: int = Field(default=0, ge=0)
    total: int = Field(default=0, ge=0)


class KeyStatus(WireModel):
    """Where key rotation stands: the signing key, and one waiting for the sidecars."""

    active: str = Field(default="", max_length=32)
    pending: str = Field(
        default="",
        max_length=32,
        description="Published, not signing yet: it signs once every sidecar holds it.",
    )
    retiring: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="No longer sign; verify until no sidecar signs with them, then a "
        "challenge lifetime more.",
    )
    sidecars: int | None = Field(
        default=None,
        ge=0,
        description="Sidecars that reported their keys at the last evaluation of a rotation "
        "(unset: not observed; the phases then wait keys.propagationSeconds).",
    )
    ready: int | None = Field(
        default=None,
        ge=0,
        description="Of them, those ready for the next phase (holding the pending key, or "
        "signing with the active one).",
    )


class UnprotectedPod(WireModel):
    """A pod the policy selects that runs without the sidecar, and why."""

    name: str = Field(max_length=253)
    reason: str = Field(
        max_length=32,
        description="NotInjected (created while the webhook was down or "
        "before the policy), OptedOut (powgate.dev/inject=false) or HostNetwork.",
    )


class ProtectionStatus(WireModel):
    """How many of the selected pods the sidecar guards, and the policy's NetworkPolicy."""

    injected_pods: int = Field(default=0, ge=0)
    unprotected_pods: int = Field(default=0, ge=0)
    unprotected: list[UnprotectedPod] = Field(
        default_factory=list, max_length=10, description="The first ten, by name."
    )
    network_policy: str = Field(
        default="",
        max_length=256,
        description="Applied, Off, or why it was not written (Auto: another NetworkPolicy "
        "selects the pods).",
    )


class Recommendation(WireModel):
    """One raw recommendation, kept for the stabilization windows."""

    time: datetime
    difficulty: int = Field(ge=1, le=MAX_DIFFICULTY)


class DifficultyChange(WireModel):
    """One applied change, kept for the step policies and for humans."""

    time: datetime
    previous: int = Field(ge=1, le=MAX_DIFFICULTY)
    difficulty: int = Field(ge=1, le=MAX_DIFFICULTY)
    reason: DecisionReason


class PricingStatus(WireModel):
    """Who pays: the reputation list the sidecars apply and the trusted API keys they hold."""

    reputation_entries: int = Field(default=0, ge=0, description="Entries the sidecars apply.")
    learnt: int = Field(default=0, ge=0, description="Entries the policy's own sidecars flagged.")
    imported: int = Field(default=0, ge=0, description="Live entries read from the imports.")
    api_keys: int = Field(default=0, ge=0, description="Trusted API-key digests in force.")
    problems: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list,
        max_length=8,
        description="Imports and API-key Secrets that could not be read.",
    )


class PolicyStatus(WireModel):
    """The observed state of a PowPolicy, written by the operator only."""

    observed_generation: int = Field(default=0, ge=0)
    difficulty: int | None = Field(default=None, ge=1, le=MAX_DIFFICULTY)
    mode: Mode | None = None
    config_version: str = Field(default="", max_length=64)
    last_decision: LastDecision | None = None
    signals: list[SignalStatus] = Field(
        default_factory=list, max_length=16, json_schema_extra=_list_map("name")
    )
    rollout: RolloutStatus = Field(default_factory=RolloutStatus)
    conditions: list[Condition] = Field(
        default_factory=list, max_length=8, json_schema_extra=_list_map("type")
    )
    history: list[DifficultyChange] = Field(default_factory=list, max_length=MAX_HISTORY)
    recommendations: list[Recommendation] = Field(
        default_factory=list, max_length=MAX_RECOMMENDATIONS
    )
    pricing: PricingStatus | None = None
    keys: KeyStatus | None = None
    protection: ProtectionStatus | None = None

    def condition(self, kind: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type is kind), None)


# -- owned objects ------------------------------------------------------------


def config_map_name(policy: str) -> str:
    """The ConfigMap holding a policy's rendered sidecar config (data key ``config.json``)."""
    return f"{policy}-powgate-config"


def key_secret_name(policy: str) -> str:
    """The Secret holding a policy's HMAC key ring (data key ``keyring.json``)."""
    return f"{policy}-powgate-keys"


def replay_store_secret_name(policy: str) -> str:
    """The Secret with a policy's replay-store credentials, mounted into its sidecars only."""
    return f"{policy}-powgate-replay-store"


def network_policy_name(policy: str) -> str:
    """The NetworkPolicy admitting ingress to a policy's pods only through the sidecar."""
    return f"{policy}-powgate"


def reputation_name(policy: str) -> str:
    """The ConfigMap exporting what a policy's sidecars learnt (data key ``reputation.json``)."""
    return f"{policy}-powgate-reputation"


# -- rendering ----------------------------------------------------------------


def last_raise(history: Sequence[DifficultyChange]) -> int:
    """Unix time of the last change that raised difficulty (0: none in the history)."""
    raises = [c.time for c in history if c.difficulty > c.previous]
    return int(max(raises).timestamp()) if raises else 0


def render_config(
    *,
    spec: PolicySpec,
    namespace: str,
    name: str,
    difficulty: int,
    raised_at: int = 0,
    default_store: ReplayStoreSpec | None = None,
) -> SidecarConfig:
    """The sidecar config for ``spec`` at ``difficulty``, with its content version set.

    ``raised_at`` (unix time of the last raise) lets sidecars retire easier
    challenges once the policy's grace has passed. ``default_store`` is the
    replay store of a policy that names none (the operator's default).
    """
    store = spec.replay.store or default_store
    # Validation keeps max times multiplier within the verifier's range; the clamp holds even
    # for a stored spec that predates that rule (the sidecar would refuse the document).
    steepest = max(route.difficulty_multiplier for route in spec.routes)
    ceiling = max(1, int(MAX_DIFFICULTY / steepest))
    config = SidecarConfig(
        policy=f"{namespace}/{name}",
        mode=spec.mode,
        difficulty=min(spec.difficulty.clamp(difficulty), ceiling),
        min_difficulty=spec.difficulty.min,
        algorithm=spec.challenge.algorithm,
        kdf=spec.challenge.kdf,
        challenge_ttl_seconds=spec.challenge.lifetime_seconds,
        routes=spec.routes,
        exempt_paths=spec.exempt_paths,
        queue=spec.queue,
        overload=spec.overload,
        raised_at=raised_at,
        raise_grace_seconds=spec.challenge.grace_seconds_after_raise,
        replay_cache_entries=spec.replay.entries(lifetime_seconds=spec.challenge.lifetime_seconds),
        # A sidecar too old to know the store must refuse the document, not ignore the store.
        contract=REPLAY_STORE_CONTRACT if store is not None else BASE_CONTRACT,
        replay_store=store,
        pricing=spec.pricing,
        trusted_callers=spec.trusted_callers,
        trusted_proxies=spec.trusted_proxies,
    )
    return config.model_copy(update={"version": config.content_version()})
