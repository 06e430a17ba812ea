"""The rendered sidecar configuration: the contract between operator and sidecar.

The operator renders one :class:`SidecarConfig` per PowPolicy into a
ConfigMap (data key ``config.json``); each sidecar watches that object, or
reads the same document from a file. Field names are camelCase on the wire,
as everywhere in Kubernetes.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import logging
import types
import typing
from typing import Annotated, Any, Final, NamedTuple, Self

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, model_validator

from ._algorithms import KdfAlgorithm, KdfParams, algorithm_names, get_algorithm
from ._replay import DEFAULT_MAX_ENTRIES
from ._verify import MAX_DIFFICULTY, max_difficulty
from ._wire import WireModel
from .pricing import Cidr, PricingConfig, TrustedCaller

__all__ = [
    "BASE_CONTRACT",
    "CONFIG_CONTRACT",
    "CONFIG_DATA_KEY",
    "DEFAULT_EXEMPT_PATHS",
    "MAX_CHALLENGE_LIFETIME_SECONDS",
    "MAX_REPLAY_ENTRIES",
    "MIN_REPLAY_ENTRIES",
    "REPLAY_STORE_CONTRACT",
    "KdfSpec",
    "Mode",
    "OverloadConfig",
    "ParsedConfig",
    "QueueConfig",
    "ReplayStoreSpec",
    "RouteConfig",
    "SidecarConfig",
    "StoreOutage",
    "default_routes",
]

#: The data key of the rendered ConfigMap (and the conventional file name).
CONFIG_DATA_KEY: Final = "config.json"
#: The newest contract of the rendered document this code understands. Adding an
#: optional field keeps a document's contract: a sidecar ignores (and reports) fields it
#: does not know, so an operator upgrade never freezes running sidecars. A field an older
#: sidecar must not apply half-understood raises the contract of the documents that use
#: it (and only of those); such a sidecar then keeps its last config.
CONFIG_CONTRACT: Final = 2
#: The contract of a document that uses nothing newer than the first one.
BASE_CONTRACT: Final = 1
#: A shared replay store (contract 2): a sidecar that ignored it would admit each
#: solution once per process while the policy promises once per cluster.
REPLAY_STORE_CONTRACT: Final = 2

log = logging.getLogger("powgate.config")
_JSON: Final = TypeAdapter(Any)
#: Probes and scrapes are never challenged unless a policy says otherwise.
DEFAULT_EXEMPT_PATHS: Final = ("/healthz", "/readyz", "/livez", "/metrics")
#: Bounds of a sidecar's replay cache (entries take about 200 bytes each).
MIN_REPLAY_ENTRIES: Final = 1_000
MAX_REPLAY_ENTRIES: Final = 50_000_000
#: A challenge solvable for longer can be stockpiled while difficulty is low.
MAX_CHALLENGE_LIFETIME_SECONDS: Final = 3600


class Mode(enum.StrEnum):
    """How a policy acts on requests to protected routes."""

    ENFORCE = "enforce"  # only requests with a valid solution reach the upstream
    OBSERVE = "observe"  # verify and count, but let every request through
    OFF = "off"  # no challenge, no verification: a plain proxy


PathPattern = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        pattern=r"^/[^\s]*$",
        description="An exact path, or a prefix ending in `*` (`/v1/*`).",
    ),
]


#: The registry's names, in the CRD as an enum: the registry is their one source.
AlgorithmName = Annotated[
    str,
    Field(
        json_schema_extra={"enum": list(algorithm_names())},
        description="The challenge scheme: ALTCHA v1 (`SHA-256`, `SHA-512`), ALTCHA PoW v2 "
        "(`PBKDF2/SHA-256|384|512`, `ITERATED/SHA-256|384|512`, `SCRYPT`, `ARGON2ID`) or "
        "`DeepSeekHashV1`. See docs/protocol.md.",
    ),
]


class KdfSpec(WireModel):
    """The price of one try of an ALTCHA PoW v2 scheme; unset fields take the scheme's defaults.

    Difficulty for these schemes is twice the mean number of tries at these
    parameters (docs/protocol.md): these fix what one try costs in time and
    memory, difficulty how many tries a client makes.
    """

    cost: int | None = Field(
        default=None,
        ge=1,
        le=1 << 20,
        description="PBKDF2 and iterated-SHA iterations; scrypt's N (a power of two); "
        "Argon2id's passes.",
    )
    memory_cost: int | None = Field(
        default=None,
        ge=1,
        le=1 << 18,
        description="Argon2id: memory in KiB. scrypt: r, the block size (memory is 128·N·r bytes).",
    )
    parallelism: int | None = Field(
        default=None, ge=1, le=256, description="Argon2id's lanes; scrypt's p."
    )
    key_length: int | None = Field(
        default=None, ge=16, le=64, description="Bytes of the derived key (default 32)."
    )

    def params(self, algorithm: KdfAlgorithm) -> KdfParams:
        """These values over ``algorithm``'s defaults."""
        base = algorithm.default_params
        return KdfParams(
            cost=self.cost if self.cost is not None else base.cost,
            memory_cost=self.memory_cost if self.memory_cost is not None else base.memory_cost,
            parallelism=self.parallelism if self.parallelism is not None else base.parallelism,
            key_length=self.key_length if self.key_length is not None else base.key_length,
        )


def check_scheme(algorithm: str, kdf: KdfSpec | None, *, difficulty: int) -> None:
    """Raise ``ValueError`` unless ``algorithm`` takes ``kdf`` and ``difficulty``."""
    found = get_algorithm(algorithm)
    if found is None:
        raise ValueError(f"unknown algorithm {algorithm!r}; known: {', '.join(algorithm_names())}")
    if isinstance(found, KdfAlgorithm):
        problem = found.check_base((kdf or KdfSpec()).params(found))
        if problem:
            raise ValueError(f"{algorithm} parameters: {problem}")
    elif kdf is not None:
        raise ValueError(f"kdf parameters apply to ALTCHA PoW v2 schemes only, not {algorithm}")
    limit = max_difficulty(found)
    if difficulty > limit:
        raise ValueError(f"difficulty above {limit}, the most {algorithm} can express")


class RouteConfig(WireModel):
    """A protected route: which requests pay, and how much relative to the base difficulty."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Identifies the route in metrics and in the challenge binding.",
    )
    paths: list[PathPattern] = Field(min_length=1, max_length=64)
    methods: list[Annotated[str, Field(pattern=r"^[A-Z]{1,16}$")]] = Field(
        default_factory=lambda: ["POST"],
        max_length=16,
        description="HTTP methods that must pay; others pass through unchallenged.",
    )
    difficulty_multiplier: float = Field(
        default=1.0, gt=0, le=1000, description="Scales the base difficulty for this route."
    )


def default_routes() -> list[RouteConfig]:
    """Without routes, every path pays (for POST, the default method)."""
    return [RouteConfig(name="default", paths=["/*"])]


class QueueConfig(WireModel):
    """Priority by effort: cap concurrent upstream requests; highest difficulty waits least."""

    max_concurrent: int = Field(
        default=0, ge=0, le=100_000, description="0 disables the cap (and the queue)."
    )
    max_waiting: int = Field(default=1000, ge=0, le=1_000_000)
    max_wait_seconds: float = Field(default=30.0, gt=0, le=600)


class OverloadConfig(WireModel):
    """How a sidecar keeps serving paid requests while it is flooded."""

    max_connections_per_client: int = Field(
        default=256,
        ge=0,
        le=1_000_000,
        description="Connections one client address (an IPv6 /64) may hold open at once; "
        "past it a new connection is answered 503 and closed "
        "(powgate_connections_refused_total). Peers among the trusted proxies are not "
        "capped: they carry many clients. 0 disables the cap.",
    )
    lag_threshold_milliseconds: int = Field(
        default=10,
        ge=0,
        le=10_000,
        description="When the event loop runs this late, requests to protected routes that "
        "carry no solution are answered in later turns of the loop, within its backlog "
        "budget, while requests carrying one go first (powgate_requests_deferred_total). "
        "0 disables deferring.",
    )


class StoreOutage(enum.StrEnum):
    """What a sidecar does with a valid solution while the shared replay store cannot be asked."""

    #: Refuse it (503, Retry-After, a fresh challenge; the solution is not spent): no
    #: solution is ever admitted twice, and paid traffic stops while the store is down.
    REFUSE = "Refuse"
    #: Admit it once per sidecar process (the local cache): paid traffic goes on, and a
    #: solution may be admitted once by each process during the outage.
    FALL_BACK_TO_LOCAL = "FallBackToLocal"


class ReplayStoreSpec(WireModel):
    """A Redis or Valkey server shared by every sidecar of a policy: a solution buys one
    request cluster-wide, not one per process.

    Credentials never appear here: each sidecar reads them from the Secret
    ``<policy>-powgate-replay-store`` (keys ``username``, ``password``, and for
    TLS ``ca.crt``, ``tls.crt``, ``tls.key``), which the injector mounts into
    the sidecar container only. See docs/sidecar.md and docs/security.md.
    """

    address: str = Field(
        min_length=3,
        max_length=261,
        pattern=r"^([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$",
        description="`HOST:PORT` of the Redis/Valkey server (a Service name, `[::1]:6379` "
        "for IPv6). One endpoint: a cluster-mode deployment is not supported.",
    )
    database: int = Field(default=0, ge=0, le=1023, description="The logical database.")
    tls: bool = Field(
        default=False,
        description="Talk TLS, verifying the server's certificate for the address's host "
        "against `ca.crt` of the Secret (the system's CAs without it); `tls.crt`/`tls.key` of "
        "the Secret are sent as a client certificate.",
    )
    timeout_milliseconds: int = Field(
        default=100,
        ge=1,
        le=5000,
        description="The most one claim may add to a paid request; past it the store counts "
        "as unavailable for that request.",
    )
    when_unavailable: StoreOutage = Field(
        default=StoreOutage.REFUSE,
        description="Refuse: valid solutions are refused (503, reason "
        "replay_store_unavailable) while the store cannot be asked. FallBackToLocal: they are "
        "admitted once per sidecar process. Both are counted "
        "(powgate_replay_store_unavailable_total) and shown in the ReplayStoreAvailable "
        "condition.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not 0 < int(self.address.rpartition(":")[2]) < 65536:
            raise ValueError(f"port out of range in address {self.address!r}")
        return self

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].removeprefix("[").removesuffix("]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])


class SidecarConfig(WireModel):
    """Everything a sidecar enforces. Keys travel separately (the key-ring Secret)."""

    contract: int = Field(
        default=BASE_CONTRACT,
        ge=1,
        le=1000,
        description="The document's contract; a sidecar refuses a newer one than it knows.",
    )
    version: str = Field(
        default="",
        max_length=64,
        description="Content version written by the operator; exported as a metric for rollout.",
    )
    policy: str = Field(
        default="local/default",
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="`namespace/name` of the PowPolicy; part of every challenge binding.",
    )
    mode: Mode = Mode.ENFORCE
    difficulty: int = Field(default=50_000, ge=1, le=MAX_DIFFICULTY)
    min_difficulty: int = Field(
        default=1,
        ge=1,
        le=MAX_DIFFICULTY,
        description="Solutions of challenges easier than this are refused (the policy's minimum).",
    )
    algorithm: AlgorithmName = "SHA-256"
    kdf: KdfSpec | None = Field(
        default=None, description="ALTCHA PoW v2 only: the parameters of one try."
    )
    challenge_ttl_seconds: int = Field(default=300, ge=5, le=MAX_CHALLENGE_LIFETIME_SECONDS)
    routes: list[RouteConfig] = Field(default_factory=default_routes, max_length=64)
    exempt_paths: list[PathPattern] = Field(
        default_factory=lambda: list(DEFAULT_EXEMPT_PATHS),
        max_length=64,
        description="Never challenged, whatever the routes say.",
    )
    queue: QueueConfig = Field(default_factory=QueueConfig)
    overload: OverloadConfig = Field(default_factory=OverloadConfig)
    raised_at: int = Field(
        default=0,
        ge=0,
        description="Unix time of the last difficulty raise (0: none). From raisedAt + "
        "raiseGraceSeconds on, solutions of challenges easier than today's are refused, so "
        "challenges fetched while difficulty was low cannot be stockpiled.",
    )
    raise_grace_seconds: int = Field(
        default=60,
        ge=0,
        le=MAX_CHALLENGE_LIFETIME_SECONDS,
        description="How long after a raise easier challenges still pass (clients in flight).",
    )
    replay_cache_entries: int = Field(
        default=DEFAULT_MAX_ENTRIES,
        ge=MIN_REPLAY_ENTRIES,
        le=MAX_REPLAY_ENTRIES,
        description="How many spent solutions the sidecar remembers (each until its challenge "
        "expires). When full, valid solutions are refused (replay_cache_full), never admitted "
        "twice: size it for the admission rate times the challenge lifetime.",
    )
    replay_store: ReplayStoreSpec | None = Field(
        default=None,
        description="The shared replay store (contract 2); without it each sidecar process "
        "remembers spent solutions on its own.",
    )
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    trusted_callers: list[TrustedCaller] = Field(default_factory=list, max_length=32)
    trusted_proxies: list[Cidr] = Field(
        default_factory=list,
        max_length=64,
        description="Proxies in front of the pods (an ingress, a gateway, a mesh) whose "
        "X-Forwarded-For, Forwarded, X-Real-IP and identity headers are believed, besides "
        "the sidecar's own --trusted-proxies: the client is the nearest address they name.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.contract > CONFIG_CONTRACT:
            raise ValueError(
                f"the document follows config contract {self.contract}; this sidecar knows "
                f"contract {CONFIG_CONTRACT} at most: upgrade the sidecar"
            )
        if self.replay_store is not None and self.contract < REPLAY_STORE_CONTRACT:
            raise ValueError(
                f"a document with replayStore follows contract {REPLAY_STORE_CONTRACT} at least"
            )
        names = [route.name for route in self.routes]
        if len(set(names)) != len(names):
            raise ValueError("route names must be unique")
        callers = [caller.name for caller in self.trusted_callers]
        if len(set(callers)) != len(callers):
            raise ValueError("trusted caller names must be unique")
        if self.min_difficulty > self.difficulty:
            raise ValueError("minDifficulty must not exceed difficulty")
        # The sidecar issues difficulty times each route's multiplier: past what the
        # algorithm can express every protected request would fail, so such a
        # document is refused as a whole.
        steepest = max(
            (round(self.difficulty * r.difficulty_multiplier) for r in self.routes), default=0
        )
        check_scheme(self.algorithm, self.kdf, difficulty=max(self.difficulty, steepest))
        return self

    def kdf_params(self) -> KdfParams | None:
        """The parameters an :class:`powgate.Issuer` takes for this config's algorithm."""
        found = get_algorithm(self.algorithm)
        if isinstance(found, KdfAlgorithm):
            return (self.kdf or KdfSpec()).params(found)
        return None

    def content_version(self) -> str:
        """A short hash of everything but ``version``: equal documents, equal versions."""
        body = self.model_dump(mode="json", by_alias=True, exclude={"version"})
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return digest[:16]

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)

    @classmethod
    def parse(cls, text: str | bytes) -> ParsedConfig:
        """The config of a document, and the fields it ignored (written by a newer operator).

        Raises :class:`pydantic.ValidationError` for invalid JSON, an invalid
        value, or a newer contract.
        """
        try:
            # Fast path, taken by every document this version fully knows (each watch event
            # and reload parses one): pydantic-core parses the JSON straight into the model,
            # 2-3 times faster than the tolerant parse below.
            return ParsedConfig(cls.model_validate_json(text), ())
        except ValidationError:
            # A field from a newer operator (the model forbids unknown fields) or an
            # invalid document: the tolerant parse gives the config or the precise error.
            return _parse_tolerant(cls, text)

    @classmethod
    def from_json(cls, text: str | bytes) -> SidecarConfig:
        """:meth:`parse`, logging the fields it ignored."""
        config, ignored = cls.parse(text)
        if ignored:
            log.warning("config fields unknown to this version ignored: %s", ", ".join(ignored))
        return config

    @classmethod
    def from_dict(cls, data: Any) -> SidecarConfig:
        return cls.model_validate(data)


class ParsedConfig(NamedTuple):
    """A parsed document: its config, and the paths of fields this version ignored."""

    config: SidecarConfig
    ignored: tuple[str, ...]


def _parse_tolerant(model: type[SidecarConfig], text: str | bytes) -> ParsedConfig:
    """:meth:`SidecarConfig.parse` of any document: the fields this version does not know
    dropped (and named), then the rest validated. Tests hold the fast path to it."""
    ignored: list[str] = []
    known = _known_fields(model, _JSON.validate_json(text), path="", ignored=ignored)
    return ParsedConfig(model.model_validate(known), tuple(sorted(ignored)))


def _known_fields(model: type[BaseModel], data: Any, *, path: str, ignored: list[str]) -> Any:
    """``data`` without the keys ``model`` (and its nested models) does not know."""
    if not isinstance(data, dict):
        return data  # validation reports the wrong type
    fields = _field_table(model)
    kept: dict[str, Any] = {}
    for key, value in data.items():
        known = fields.get(key)
        if known is None:
            ignored.append(f"{path}{key}")
            continue
        nested, many = known
        if nested is not None and many and isinstance(value, list):
            value = [
                _known_fields(nested, item, path=f"{path}{key}[{index}].", ignored=ignored)
                for index, item in enumerate(value)
            ]
        elif nested is not None:
            value = _known_fields(nested, value, path=f"{path}{key}.", ignored=ignored)
        kept[key] = value
    return kept


@functools.cache
def _field_table(model: type[BaseModel]) -> dict[str, tuple[type[BaseModel] | None, bool]]:
    """Per key ``model`` accepts, by alias and by name (populate_by_name): the model inside
    the field's type and whether it is a list.

    Computed once per model: every watch event and reload parses a document, and reading
    the annotations again each time cost several times the validation itself.
    """
    table: dict[str, tuple[type[BaseModel] | None, bool]] = {}
    for name, field in model.model_fields.items():
        table[name] = _nested_model(field.annotation)
        if field.alias:
            table[field.alias] = table[name]
    return table


def _nested_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model inside a field's type (``M``, ``M | None``, ``list[M]``), and if it is a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is list and args:
        inner, _ = _nested_model(args[0])
        return inner, True
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            inner, many = _nested_model(arg)
            if inner is not None:
                return inner, many
    return None, False
