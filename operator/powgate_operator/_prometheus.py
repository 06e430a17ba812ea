"""Reading signals from Prometheus, with every way a query can fail made explicit.

Each failure becomes a :class:`powgate.controller.Failure` with a short reason
(the lesson of KEDA's Prometheus scaler: a silent zero on error relaxes the
defence exactly when it is needed). The client, ``prometheus-api-client``,
is blocking, so queries run in a bounded thread pool off the event loop.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import requests
import urllib3
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.exceptions import NewConnectionError
from urllib3.util.retry import Retry

from powgate.contract import HEAVY_CLIENTS_METRIC, KEY_INFO_METRIC, REPLAY_STORE_UP_METRIC
from powgate.controller import Empty, Failure, Reading, Sample
from powgate.policy import Aggregate, PrometheusSpec, RolloutStatus, SignalSpec

__all__ = [
    "NO_CREDENTIAL_ADDRESSES",
    "CredentialAddresses",
    "Credentials",
    "FailureReason",
    "SidecarKeys",
    "SignalReader",
    "Signals",
    "StoreReach",
    "heavy_clients_query",
    "key_info_query",
    "reading_from_result",
    "replay_store_query",
    "rollout_query",
]


class FailureReason(enum.StrEnum):
    """The causes a signal can fail with (status ``reason`` and a metric label)."""

    TIMEOUT = "Timeout"
    UNREACHABLE = "Unreachable"
    AUTH_FAILED = "AuthFailed"
    BAD_QUERY = "BadQuery"
    HTTP_ERROR = "HTTPError"
    BAD_RESPONSE = "BadResponse"
    MULTIPLE_SERIES = "MultipleSeries"
    NOT_A_NUMBER = "NotANumber"
    CREDENTIALS = "CredentialsUnavailable"


log = logging.getLogger("powgate.operator.prometheus")
_STATUS = re.compile(r"HTTP Status Code (\d{3})")
_MESSAGE_LIMIT: Final = 300


@dataclass(frozen=True, slots=True)
class Credentials:
    """How to authenticate to Prometheus (from the policy's auth Secret)."""

    bearer_token: str | None = field(default=None, repr=False)
    basic: tuple[str, str] | None = field(default=None, repr=False)

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str]) -> Credentials:
        """From decoded Secret data: ``token``, or ``username`` and ``password``."""
        if token := data.get("token", "").strip():
            return cls(bearer_token=token)
        username, password = data.get("username"), data.get("password")
        if username and password is not None:
            return cls(basic=(username, password))
        raise ValueError("the Secret holds neither `token` nor `username` and `password`")


@dataclass(frozen=True, slots=True)
class CredentialAddresses:
    """Where the operator may send a policy's Prometheus credentials (set by its administrator).

    An address matches an entry with the same scheme, host and port and a path
    below the entry's. Empty: credentials go nowhere.
    """

    entries: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> CredentialAddresses:
        """From a comma-separated list of URLs; ``ValueError`` names a bad one."""
        entries = tuple(e.strip() for e in (text or "").split(",") if e.strip())
        for entry in entries:
            parts = urlsplit(entry)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{entry!r} is not an http:// or https:// URL")
        return cls(entries)

    def allows(self, address: str) -> bool:
        wanted = _origin(address)
        return any(
            _origin(entry)[:3] == wanted[:3]
            and (wanted[3] + "/").startswith(_origin(entry)[3].rstrip("/") + "/")
            for entry in self.entries
        )


#: Credentials go nowhere: the default until the administrator names addresses.
NO_CREDENTIAL_ADDRESSES: Final = CredentialAddresses()


def _origin(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1  # an invalid port matches nothing
    default = 443 if parts.scheme == "https" else 80
    return (parts.scheme, (parts.hostname or "").lower(), port or default, parts.path or "/")


def reading_from_result(result: Any, *, aggregate: Aggregate) -> Reading:
    """Turn the ``data.result`` of an instant query into a reading."""
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        # A scalar result is a bare [timestamp, "value"] pair.
        values: list[str] = [result[1]]
    elif isinstance(result, list):
        try:
            values = [series["value"][1] for series in result]
        except (KeyError, IndexError, TypeError):
            return Failure(FailureReason.BAD_RESPONSE, "result is not an instant vector")
    else:
        return Failure(
            FailureReason.BAD_RESPONSE, f"unexpected result type {type(result).__name__}"
        )
    if not values:
        return Empty()
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return Failure(FailureReason.BAD_RESPONSE, "a sample value is not a number")
    bad = [n for n in numbers if not math.isfinite(n)]
    if bad:
        return Failure(FailureReason.NOT_A_NUMBER, f"query returned {bad[0]}")
    return _aggregate(numbers, aggregate=aggregate)


def _aggregate(numbers: Sequence[float], *, aggregate: Aggregate) -> Reading:
    if len(numbers) == 1:
        return Sample(numbers[0])
    match aggregate:
        case Aggregate.FAIL:
            return Failure(
                FailureReason.MULTIPLE_SERIES,
                f"query returned {len(numbers)} series: aggregate it (sum, max) or set `aggregate`",
            )
        case Aggregate.MAX:
            return Sample(max(numbers))
        case Aggregate.SUM:
            return Sample(math.fsum(numbers))
        case Aggregate.MEAN:
            return Sample(math.fsum(numbers) / len(numbers))


def _failure_from_exception(exc: Exception) -> Failure:
    """The failure for ``exc``; its message never carries what the server answered.

    A policy author chooses the address, and failure messages land in the
    policy's status: copying an answer's body there would let anyone who can
    edit a policy read what an in-cluster endpoint returns. Bodies go to the
    operator's log only.
    """
    text = str(exc)[:_MESSAGE_LIMIT]
    if isinstance(exc, ValueError):
        # The client parses JSON itself: a proxy's HTML page or a truncated body ends here.
        log.info("Prometheus answer is not JSON: %s", text)
        return Failure(FailureReason.BAD_RESPONSE, "response is not the query API's JSON")
    if isinstance(exc, NewConnectionError):
        # urllib3 files refused connections under its connect-timeout class; they are not slow.
        return Failure(FailureReason.UNREACHABLE, text)
    if isinstance(exc, requests.Timeout | urllib3.exceptions.TimeoutError):
        return Failure(FailureReason.TIMEOUT, text)
    if isinstance(exc, requests.RequestException | urllib3.exceptions.HTTPError | OSError):
        return Failure(FailureReason.UNREACHABLE, text)
    if isinstance(exc, PrometheusApiClientException):
        match = _STATUS.search(text)
        status = int(match.group(1)) if match else 0
        log.info("Prometheus answered HTTP %d: %s", status, text)
        if status in (401, 403):
            return Failure(FailureReason.AUTH_FAILED, f"HTTP {status}: check the auth Secret")
        if status in (400, 422):
            return Failure(
                FailureReason.BAD_QUERY,
                f"HTTP {status}: Prometheus refused the query (its answer: the operator's log)",
            )
        return Failure(FailureReason.HTTP_ERROR, f"HTTP {status}")
    log.info("Prometheus query failed: %s: %s", type(exc).__name__, text)
    return Failure(FailureReason.BAD_RESPONSE, type(exc).__name__)


class Signals(Protocol):
    """What the reconciler asks of Prometheus; failures come back as readings, never raised."""

    async def read(
        self,
        *,
        prometheus: PrometheusSpec,
        credentials: Credentials | None,
        signals: Sequence[SignalSpec],
        namespace: str,
        name: str,
    ) -> dict[str, Reading]:
        """One reading per signal."""
        ...

    async def rollout(
        self,
        *,
        prometheus: PrometheusSpec,
        credentials: Credentials | None,
        policy: str,
        version: str,
    ) -> RolloutStatus | Failure:
        """How many sidecars of ``policy`` (namespace/name) run config ``version``."""
        ...

    async def heavy_clients(
        self, *, prometheus: PrometheusSpec, credentials: Credentials | None, policy: str
    ) -> dict[str, float] | Failure:
        """Requests per second of each sealed client the sidecars of ``policy`` report."""
        ...

    async def replay_store(
        self, *, prometheus: PrometheusSpec, credentials: Credentials | None, policy: str
    ) -> StoreReach | Failure:
        """How many sidecar processes of ``policy`` reach its replay store, and how many not."""
        ...

    async def sidecar_keys(
        self, *, prometheus: PrometheusSpec, credentials: Credentials | None, policy: str
    ) -> SidecarKeys | Failure:
        """How many sidecars of ``policy`` hold, and sign with, each key id."""
        ...


class SignalReader:
    """:class:`Signals` from a Prometheus server through ``prometheus-api-client``, in threads."""

    def __init__(self, *, max_workers: int = 16) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="promql")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def read(
        self,
        *,
        prometheus: PrometheusSpec,
        credentials: Credentials | None,
        signals: Sequence[SignalSpec],
        namespace: str,
        name: str,
    ) -> dict[str, Reading]:
        """One reading per signal; never raises for a failing query."""
        loop = asyncio.get_running_loop()
        client = _client(prometheus=prometheus, credentials=credentials)
        try:
            readings = await asyncio.gather(
                *(
                    loop.run_in_executor(
                        self._pool,
                        _query,
                        client,
                        signal.render_query(namespace=namespace, name=name),
                        signal.aggregate,
                        prometheus.timeout_seconds,
                    )
                    for signal in signals
                )
            )
        finally:
            client.close()
        return {signal.name: reading for signal, reading in zip(signals, readings, strict=True)}

    async def rollout(
        self,
        *,
        prometheus: PrometheusSpec,
        credentials: Credentials | None,
        policy: str,
        version: str,
    ) -> RolloutStatus | Failure:
        """How many sidecars report ``version`` for ``policy`` (``powgate_config_info``)."""
        promql = rollout_query(policy)
        loop = asyncio.get_running_loop()
        client = _client(prometheus=prometheus, credentials=credentials)
        try:
            return await loop.run_in_executor(
                self._pool, _rollout, client, promql, version, prometheus.timeout_seconds
            )
        finally:
            client.close()

    async def heavy_clients(
        self, *, prometheus: PrometheusSpec, credentials: Credentials | None, policy: str
    ) -> dict[str, float] | Failure:
        """The rate of each (sealed) client the sidecars of ``policy`` report, summed."""
        promql = heavy_clients_query(policy)
        loop = asyncio.get_running_loop()
        client = _client(prometheus=prometheus, credentials=credentials)
        try:
            return await loop.run_in_executor(
                self._pool, _by_label, client, promql, "client", prometheus.timeout_seconds
            )
        finally:
            client.close()

    async def replay_store(
        self, *, prometheus: PrometheusSpec, credentials: Credentials | None, policy: str
    ) -> StoreReach | Failure:
        """The sidecars' ``powgate_replay_store_up`` of ``policy``, counted by value."""
        promql = replay_store_query(policy)
        loop = asyncio.get_running_loop()
        client = _client(prometheus=prometheus, credentials=credentials)
        try:
            counts = await loop.run_in_executor(
                self._pool, _by_label, client, promql, "up", prometheus.timeout_seconds
            )
        finally:
            client.close()
        if isinstance(counts, Failure):
            return counts
        return StoreReach(answering=int(counts.get("1", 0)), unavailable=int(counts.get("0", 0)))

    async def sidecar_keys(
        self, *, prometheus: PrometheusSpec, credentials: Credentials | None, policy: str
    ) -> SidecarKeys | Failure:
        """How many sidecars of ``policy`` hold, and sign with, each key id."""
        promql = key_info_query(policy)
        loop = asyncio.get_running_loop()
        client = _client(prometheus=prometheus, credentials=credentials)
        try:
            return await loop.run_in_executor(
                self._pool, _sidecar_keys, client, promql, prometheus.timeout_seconds
            )
        finally:
            client.close()


@dataclass(frozen=True, slots=True)
class SidecarKeys:
    """What the sidecars of a policy report holding (``powgate_key_info``), as counts.

    ``held``: sidecars holding each key id; ``signing``: sidecars signing with
    each. Every sidecar signs with exactly one key, so their sum is how many
    sidecars reported.
    """

    held: Mapping[str, int] = field(default_factory=dict)
    signing: Mapping[str, int] = field(default_factory=dict)

    @property
    def sidecars(self) -> int:
        return sum(self.signing.values())

    def all_hold(self, kid: str) -> bool:
        return self.held.get(kid, 0) >= self.sidecars

    def all_sign(self, kid: str) -> bool:
        return self.signing.get(kid, 0) >= self.sidecars


@dataclass(frozen=True, slots=True)
class StoreReach:
    """Sidecar processes of a policy whose replay store answers, and whose does not."""

    answering: int
    unavailable: int

    @property
    def total(self) -> int:
        return self.answering + self.unavailable


def replay_store_query(policy: str) -> str:
    """Sidecar processes of ``policy`` by whether they reach its replay store (label ``up``).

    From the policy's namespace only, as the rollout query.
    """
    namespace = policy.partition("/")[0]
    matchers = f"namespace={json.dumps(namespace)},policy={json.dumps(policy)}"
    return f'count_values("up", {REPLAY_STORE_UP_METRIC}{{{matchers}}})'


def key_info_query(policy: str) -> str:
    """Sidecars of ``policy`` per key id they hold and whether they sign with it.

    From the policy's namespace only, like the rollout query: a pod elsewhere
    exporting the same ``policy`` label must not make a key look propagated.
    """
    namespace = policy.partition("/")[0]
    matchers = f"namespace={json.dumps(namespace)},policy={json.dumps(policy)}"
    return f"count by (kid, active) ({KEY_INFO_METRIC}{{{matchers}}})"


def _sidecar_keys(client: PrometheusConnect, promql: str, timeout: float) -> SidecarKeys | Failure:
    try:
        result = client.custom_query(promql, params={"timeout": _duration(timeout)})
        rows = [
            (
                str(series["metric"].get("kid", "")),
                series["metric"].get("active") == "true",
                float(series["value"][1]),
            )
            for series in result
        ]
    except Exception as exc:  # every failure is classified: none may escape into the loop
        return _failure_from_exception(exc)
    held: dict[str, int] = {}
    signing: dict[str, int] = {}
    for kid, active, count in rows:
        if not kid or not math.isfinite(count):
            continue
        held[kid] = held.get(kid, 0) + int(count)
        if active:
            signing[kid] = signing.get(kid, 0) + int(count)
    return SidecarKeys(held=held, signing=signing)


def heavy_clients_query(policy: str) -> str:
    """Each sealed client's rate over every sidecar of ``policy`` (one client, many sidecars).

    Scraped from the policy's namespace only, as the rollout query: labels
    forged elsewhere would not open anyway (they are sealed under the
    policy's key), but their rates would still be asked for and counted.
    """
    namespace = policy.partition("/")[0]
    matchers = f"namespace={json.dumps(namespace)},policy={json.dumps(policy)}"
    return f"sum by (client) ({HEAVY_CLIENTS_METRIC}{{{matchers}}})"


def _by_label(
    client: PrometheusConnect, promql: str, label: str, timeout: float
) -> dict[str, float] | Failure:
    """One value per ``label`` value of a vector result; NaN and infinite values are left out."""
    try:
        result = client.custom_query(promql, params={"timeout": _duration(timeout)})
        values = {
            str(series["metric"].get(label, "")): float(series["value"][1]) for series in result
        }
    except Exception as exc:  # every failure is classified: none may escape into the loop
        return _failure_from_exception(exc)
    return {name: value for name, value in values.items() if name and math.isfinite(value)}


def rollout_query(policy: str) -> str:
    """Sidecars per config version of ``policy`` (namespace/name), from their own series.

    Only series scraped from the policy's namespace count (the ``namespace``
    target label the PodMonitor attaches): a pod elsewhere that exports the
    same ``policy`` label must not make a rollout look complete, or stuck.
    """
    namespace = policy.partition("/")[0]
    # Label values are quoted by json.dumps: a PromQL string literal accepts JSON escapes.
    matchers = f"namespace={json.dumps(namespace)},policy={json.dumps(policy)}"
    return f"count by (version) (powgate_config_info{{{matchers}}})"


def _rollout(
    client: PrometheusConnect, promql: str, version: str, timeout: float
) -> RolloutStatus | Failure:
    try:
        result = client.custom_query(promql, params={"timeout": _duration(timeout)})
        counts = {
            series["metric"].get("version", ""): int(float(series["value"][1])) for series in result
        }
    except Exception as exc:  # every failure is classified: none may escape into the loop
        return _failure_from_exception(exc)
    return RolloutStatus(
        version=version, updated=counts.get(version, 0), total=sum(counts.values())
    )


def _duration(seconds: float) -> str:
    # Prometheus durations take no fractions ("2.5s" is invalid): whole milliseconds.
    return f"{max(1, round(seconds * 1000))}ms"


def _client(*, prometheus: PrometheusSpec, credentials: Credentials | None) -> PrometheusConnect:
    headers = None
    if credentials is not None and credentials.bearer_token is not None:
        headers = {"Authorization": f"Bearer {credentials.bearer_token}"}
    return PrometheusConnect(
        url=prometheus.address.rstrip("/"),
        headers=headers,
        auth=None if credentials is None else credentials.basic,
        disable_ssl=prometheus.insecure_skip_verify,
        # No retries: the next evaluation is the retry, and a retry would overrun the timeout.
        retry=Retry(total=False),
        timeout=prometheus.timeout_seconds,
    )


def _query(client: PrometheusConnect, promql: str, aggregate: Aggregate, timeout: float) -> Reading:
    try:
        # Prometheus abandons the query at the same deadline as the client.
        result = client.custom_query(promql, params={"timeout": _duration(timeout)})
    except Exception as exc:  # every failure is classified: none may escape into the loop
        return _failure_from_exception(exc)
    return reading_from_result(result, aggregate=aggregate)
