"""The operator against the real API server (and a real Prometheus for the signal tests).

The operator runs as its own process (``python -m powgate_operator``), watching
only the test's namespace, exactly as it would in a pod except for how it
finds the API server (a kubeconfig instead of a service account).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from _operator_process import OperatorProcess, apply_crd, delete_policies
from _sidecar_process import config_reader, ready, start_sidecar, start_standin
from kubernetes import client as k8s
from kubernetes import watch
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from powgate import CHALLENGE_PATH, Challenge, KeyRing, solve
from powgate.config import SidecarConfig
from powgate.policy import GROUP, PLURAL, VERSION, config_map_name, key_secret_name
from powgate_testbed._process import stop_all, wait_until
from powgate_testbed.cluster import ClusterAccess
from powgate_testbed.prometheus import PrometheusServer, ScrapeTarget
from powgate_testbed.store_server import StoreServer
from waiting import eventually as wait_for
from waiting import free_port

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "powpolicy.yaml").read_text())
#: Generous bounds for waits on a loaded 2-core machine; they bound a hang, never measure speed.
WAIT = 60.0
T = TypeVar("T")
#: The last policy read, for the message of a wait that timed out.
LAST_SEEN: dict[str, Any] = {}

pytestmark = pytest.mark.slow


def eventually(probe: Callable[[], T | None], *, what: str, timeout: float = WAIT) -> T:
    return wait_for(probe, what=what, timeout=timeout, context=last_status)


def last_status() -> str:
    return "last status seen:\n" + json.dumps(LAST_SEEN.get("status"), indent=1)


@pytest.fixture(scope="session")
def crd(kube_client: k8s.ApiClient) -> None:
    apply_crd(kube_client, CRD)


@pytest.fixture
def custom(kube_client: k8s.ApiClient, crd: None) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(kube_client)


@pytest.fixture
def core(kube_client: k8s.ApiClient) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(kube_client)


@pytest.fixture
def operator(
    cluster: ClusterAccess, namespace: str, custom: k8s.CustomObjectsApi, tmp_path: Path
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        namespace=namespace, kubeconfig=cluster.kubeconfig, log=tmp_path / "operator.log"
    )
    process.start()
    try:
        yield process
        # Policies carry the operator's finalizer: delete them while it runs, so the
        # namespace can go afterwards.
        if not process.running:
            process.start()
        delete_policies(custom, namespace=namespace)
    finally:
        process.stop()
        # Shown by pytest only when the test failed.
        print(process.log()[-6000:])


class ConfigMapEvents:
    """A watch of one ConfigMap from now on, as a sidecar's, collected in a thread."""

    def __init__(self, core: k8s.CoreV1Api, namespace: str, name: str) -> None:
        current = core.read_namespaced_config_map(name, namespace)
        assert current.metadata is not None
        self._events: list[tuple[str, SidecarConfig | None]] = []
        self._thread = threading.Thread(
            target=self._follow,
            args=(core, namespace, name, current.metadata.resource_version),
            daemon=True,
        )
        self._thread.start()

    def _follow(self, core: k8s.CoreV1Api, namespace: str, name: str, version: str) -> None:
        stream = watch.Watch().stream(
            core.list_namespaced_config_map,
            namespace,
            field_selector=f"metadata.name={name}",
            resource_version=version,
            timeout_seconds=int(WAIT),
        )
        for event in stream:
            data = event["object"].data or {}
            document = data.get("config.json")
            config = SidecarConfig.from_json(document) if document else None
            self._events.append((event["type"], config))
            if event["type"] == "DELETED":
                return

    def until_deleted(self) -> list[tuple[str, SidecarConfig | None]]:
        self._thread.join(timeout=WAIT)
        return self._events


def policy(name: str, **spec: Any) -> dict[str, Any]:
    body = {"selector": {"matchLabels": {"app": name}}}
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PowPolicy",
        "metadata": {"name": name},
        "spec": body,
    }


def create(custom: k8s.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def get(custom: k8s.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    assert isinstance(obj, dict)
    LAST_SEEN["status"] = obj.get("status")
    return obj


def patch_spec(
    custom: k8s.CustomObjectsApi, namespace: str, name: str, spec: dict[str, Any]
) -> None:
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": spec})


def condition(obj: dict[str, Any], kind: str) -> str | None:
    for entry in obj.get("status", {}).get("conditions", []):
        if entry["type"] == kind:
            return str(entry["status"])
    return None


def rendered(core: k8s.CoreV1Api, namespace: str, name: str) -> SidecarConfig | None:
    try:
        config_map = core.read_namespaced_config_map(config_map_name(name), namespace)
    except k8s.ApiException as exc:
        if exc.status == HTTPStatus.NOT_FOUND:
            return None
        raise
    assert config_map.data is not None
    return SidecarConfig.from_json(config_map.data["config.json"])


# -- the API server validates policies --------------------------------------------------

REJECTED = [
    ("min above max", {"difficulty": {"min": 500, "max": 100}}, "difficulty.min must not exceed"),
    (
        "initial outside the range",
        {"difficulty": {"min": 100, "max": 500, "initial": 900}},
        "difficulty.initial must lie within",
    ),
    ("unknown mode", {"mode": "panic"}, "spec.mode"),
    ("zero interval", {"evaluationIntervalSeconds": 0}, "evaluationIntervalSeconds"),
    ("empty selector", {"selector": {}}, "selector must not be empty"),
    (
        "duplicate signal names",
        {
            "signals": [
                {"name": "a", "query": "x", "target": 1},
                {"name": "a", "query": "y", "target": 2},
            ]
        },
        "Duplicate value",
    ),
    (
        "fixed fallback outside the range",
        {"difficulty": {"min": 10, "max": 20}, "fallback": {"action": "Fixed", "difficulty": 99}},
        "fallback.difficulty must lie within",
    ),
    # A typo in the algorithm would leave every sidecar unable to issue challenges.
    ("unregistered algorithm", {"challenge": {"algorithm": "SHA-265"}}, "spec.challenge.algorithm"),
    # Past the verifier's maximum every protected request would fail.
    (
        "difficulty times multiplier past the maximum",
        {
            "difficulty": {"min": 1, "max": 2**40},
            "routes": [{"name": "r", "paths": ["/*"], "difficultyMultiplier": 2}],
        },
        "difficultyMultiplier must not exceed",
    ),
    # Challenges solvable for a day could be stockpiled while difficulty is low.
    ("a day-long challenge lifetime", {"challenge": {"lifetimeSeconds": 86_400}}, "3600"),
    (
        "identity-header client key without a header",
        {"pricing": {"enabled": True, "clientKey": {"source": "Header"}}},
        "clientKey.header is required",
    ),
    ("no growth", {"pricing": {"growth": 0}}, "spec.pricing.growth"),
    (
        "trusted caller with no proof",
        {"trustedCallers": [{"name": "x"}]},
        "a trusted caller names exactly one of cidrs, apiKeys, identity",
    ),
    (
        "trusted caller with two proofs",
        {"trustedCallers": [{"name": "x", "cidrs": ["::/0"], "apiKeys": {"secretName": "k"}}]},
        "a trusted caller names exactly one of cidrs, apiKeys, identity",
    ),
    (
        "trusted multiplier finer than signed",
        {"trustedCallers": [{"name": "x", "cidrs": ["::/0"], "multiplier": 0.0001}]},
        "a multiplier is 0 or at least 0.001",
    ),
    (
        "trusted callers paying more",
        {"trustedCallers": [{"name": "x", "cidrs": ["::/0"], "multiplier": 2}]},
        "multiplier",
    ),
    ("not a CIDR", {"trustedCallers": [{"name": "x", "cidrs": ["10.0.0.0"]}]}, "cidrs"),
    (
        "duplicate trusted callers",
        {"trustedCallers": [{"name": "x", "cidrs": ["::/0"]}, {"name": "x", "cidrs": ["::/0"]}]},
        "Duplicate value",
    ),
    (
        "unbounded reputation list",
        {"reputation": {"maxEntries": 100_000}},
        "spec.reputation.maxEntries",
    ),
]


@pytest.mark.parametrize(
    ("spec", "message"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED]
)
def test_api_server_rejects_bad_policies(
    custom: k8s.CustomObjectsApi, namespace: str, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(k8s.ApiException) as caught:
        create(custom, namespace, policy("bad", **spec))
    assert caught.value.status == HTTPStatus.UNPROCESSABLE_ENTITY
    assert message in str(caught.value.body)


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_apply_cleanly(custom: k8s.CustomObjectsApi, namespace: str, path: Path) -> None:
    policies = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "PowPolicy"]
    assert policies, f"{path.name} has no PowPolicy"
    # The other documents (a replay store's Secret) accompany a policy; the API server
    # checks PowPolicies against the CRD here.
    for document in policies:
        document["metadata"]["namespace"] = namespace
        create(custom, namespace, document)
        stored = get(custom, namespace, document["metadata"]["name"])
        # The API server filled in the defaults the model declares.
        assert stored["spec"]["behavior"]["decrease"]["stabilizationWindowSeconds"] >= 0
        assert stored["spec"]["fallback"]["action"] in {"Hold", "Fixed"}


# -- lifecycle --------------------------------------------------------------------------


def test_policy_lifecycle(
    operator: OperatorProcess, custom: k8s.CustomObjectsApi, core: k8s.CoreV1Api, namespace: str
) -> None:
    create(
        custom, namespace, policy("chat", difficulty={"min": 1000, "initial": 4000, "max": 90_000})
    )

    def ready() -> dict[str, Any] | None:
        obj = get(custom, namespace, "chat")
        return obj if condition(obj, "Ready") == "True" else None

    obj = eventually(ready, what="Ready=True")
    assert obj["status"]["difficulty"] == 4000
    config = eventually(lambda: rendered(core, namespace, "chat"), what="the config map")
    assert (config.difficulty, config.policy, config.mode) == (4000, f"{namespace}/chat", "enforce")
    assert config.version == obj["status"]["configVersion"]
    secret = core.read_namespaced_secret(key_secret_name("chat"), namespace)
    assert secret.data is not None
    assert secret.metadata is not None
    ring = KeyRing.from_json(base64.b64decode(secret.data["keyring.json"]))
    assert len(ring.signing_key.secret) >= 32
    owners = {ref.uid for ref in secret.metadata.owner_references or []}
    assert owners == {obj["metadata"]["uid"]}

    # An edit of mode and bounds reaches the config object in one reconcile.
    patch_spec(
        custom, namespace, "chat", {"mode": "observe", "difficulty": {"min": 6000, "initial": None}}
    )

    def edited() -> SidecarConfig | None:
        current = rendered(core, namespace, "chat")
        return current if current and current.mode == "observe" else None

    config = eventually(edited, what="the edit in the config map")
    assert (config.difficulty, config.min_difficulty) == (6000, 6000)
    history = get(custom, namespace, "chat")["status"]["history"]
    assert history[-1]["reason"] == "BoundsChanged"

    # Deleting the policy stops the charging: the last document its sidecars see says
    # `mode: off` (a sidecar keeps its last config when its object disappears, as in an
    # API-server outage), then what it owns is collected (by owner reference).
    seen = ConfigMapEvents(core, namespace, config_map_name("chat"))
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chat")

    def gone() -> bool:
        maps = core.list_namespaced_config_map(namespace).items
        names = {c.metadata.name for c in maps if c.metadata}
        secrets = {
            s.metadata.name for s in core.list_namespaced_secret(namespace).items if s.metadata
        }
        return config_map_name("chat") not in names and key_secret_name("chat") not in secrets

    eventually(gone, what="owned objects to be collected")
    events = seen.until_deleted()
    assert events[-1][0] == "DELETED"
    (last_document,) = [c for kind, c in events[-2:-1] if kind == "MODIFIED"]
    assert last_document is not None
    assert last_document.mode == "off"


def test_bad_key_secret_is_kept_and_reported(
    operator: OperatorProcess, custom: k8s.CustomObjectsApi, core: k8s.CoreV1Api, namespace: str
) -> None:
    create(custom, namespace, policy("keys"))
    eventually(
        lambda: read_or_none(core.read_namespaced_secret, key_secret_name("keys"), namespace),
        what="the key Secret",
    )
    # Damaged while no operator runs (a restarted one reads it afresh).
    operator.stop()
    junk = base64.b64encode(b"{not json").decode()
    core.patch_namespaced_secret(
        key_secret_name("keys"), namespace, {"data": {"keyring.json": junk}}
    )
    operator.start()

    def not_ready() -> dict[str, Any] | None:
        obj = get(custom, namespace, "keys")
        return obj if condition(obj, "Ready") == "False" else None

    obj = eventually(not_ready, what="Ready=False")
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "KeySecretInvalid"
    secret = core.read_namespaced_secret(key_secret_name("keys"), namespace)
    assert secret.data["keyring.json"] == junk


def test_a_key_secret_someone_else_created_is_never_adopted(
    operator: OperatorProcess, custom: k8s.CustomObjectsApi, core: k8s.CoreV1Api, namespace: str
) -> None:
    """Whoever may create Secrets in the namespace plants a key ring they know."""
    planted = KeyRing.generate().to_json()
    core.create_namespaced_secret(
        namespace,
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name=key_secret_name("keys")),
            string_data={"keyring.json": planted},
        ),
    )
    create(custom, namespace, policy("keys"))

    def not_ready() -> dict[str, Any] | None:
        obj = get(custom, namespace, "keys")
        return obj if condition(obj, "Ready") == "False" else None

    obj = eventually(not_ready, what="Ready=False")
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ObjectNotOwned"
    assert key_secret_name("keys") in ready["message"]
    secret = core.read_namespaced_secret(key_secret_name("keys"), namespace)
    assert base64.b64decode(secret.data["keyring.json"]).decode() == planted
    assert read_or_none(core.read_namespaced_config_map, config_map_name("keys"), namespace) is None


# -- signals from a real Prometheus -------------------------------------------------------


TARGET = 10


class Pressure:
    """A gauge served on 127.0.0.1 for Prometheus to scrape: the test sets the signal."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gauge = Gauge("test_pressure", "what the signal reads", registry=self.registry)
        # At the policies' target from the first scrape on: a default 0 would be a real
        # (very low) reading and lower difficulty before the test has set anything.
        self.gauge.set(TARGET)
        self.port = free_port()
        self.server, self.thread = start_http_server(
            self.port, addr="127.0.0.1", registry=self.registry
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def pressure(prometheus: PrometheusServer) -> Iterator[Pressure]:
    source = Pressure()
    prometheus.set_targets(
        [ScrapeTarget(job=f"pressure-{source.port}", address=f"127.0.0.1:{source.port}")]
    )
    try:
        yield source
    finally:
        source.close()


def difficulty(custom: k8s.CustomObjectsApi, namespace: str, name: str) -> int | None:
    value = get(custom, namespace, name).get("status", {}).get("difficulty")
    return None if value is None else int(value)


def test_signals_drive_difficulty(
    operator: OperatorProcess,
    custom: k8s.CustomObjectsApi,
    core: k8s.CoreV1Api,
    namespace: str,
    prometheus: PrometheusServer,
    pressure: Pressure,
) -> None:
    create(
        custom,
        namespace,
        policy(
            "adaptive",
            # The gauge does not answer to difficulty: every evaluation until the test
            # lowers it would raise again (4x a second), however quickly the test is. The
            # maximum stops the rise at 40000: one raise in the history, then the decrease.
            difficulty={"min": 1000, "initial": 10_000, "max": 40_000},
            prometheus={"address": prometheus.url, "timeoutSeconds": 2},
            signals=[
                {
                    "name": "pressure",
                    "query": f'max(test_pressure{{job="pressure-{pressure.port}"}})',
                    "target": TARGET,
                    # Until Prometheus has scraped the gauge once, hold (no series yet).
                    "onEmpty": "Failure",
                }
            ],
            behavior={
                "increase": {"policies": []},
                "decrease": {"stabilizationWindowSeconds": 8, "policies": []},
            },
            evaluationIntervalSeconds=1,
        ),
    )

    def healthy() -> dict[str, Any] | None:
        obj = get(custom, namespace, "adaptive")
        return obj if condition(obj, "SignalsHealthy") == "True" else None

    eventually(healthy, what="SignalsHealthy=True")
    assert difficulty(custom, namespace, "adaptive") == 10_000

    # Four times the target: difficulty rises proportionally (no step policy configured).
    pressure.gauge.set(40)
    eventually(lambda: difficulty(custom, namespace, "adaptive") == 40_000, what="the increase")

    def raised_config() -> SidecarConfig | None:
        current = rendered(core, namespace, "adaptive")
        return current if current and current.difficulty == 40_000 else None

    eventually(raised_config, what="the raised config")

    # Back to a tenth of the target: held for the decrease window, then lowered.
    pressure.gauge.set(1)
    eventually(lambda: difficulty(custom, namespace, "adaptive") != 40_000, what="the decrease")
    raised, lowered = get(custom, namespace, "adaptive")["status"]["history"][-2:]
    assert (raised["reason"], lowered["reason"]) == ("AboveTarget", "BelowTarget")
    # High recommendations went on after the raise, so the window kept the decrease back.
    assert seconds_between(raised["time"], lowered["time"]) >= 8

    # A Prometheus outage (the address now leads nowhere) holds difficulty and says so.
    held = difficulty(custom, namespace, "adaptive")
    patch_spec(
        custom,
        namespace,
        "adaptive",
        {"prometheus": {"address": f"http://127.0.0.1:{free_port()}"}},
    )

    def failing() -> dict[str, Any] | None:
        current = get(custom, namespace, "adaptive")
        return current if condition(current, "SignalsHealthy") == "False" else None

    obj = eventually(failing, what="SignalsHealthy=False")
    assert condition(obj, "FallbackActive") == "True"
    assert obj["status"]["signals"][0]["reason"] == "Unreachable"
    assert difficulty(custom, namespace, "adaptive") == held

    # Recovery clears it.
    patch_spec(custom, namespace, "adaptive", {"prometheus": {"address": prometheus.url}})
    obj = eventually(healthy, what="SignalsHealthy=True again")
    assert condition(obj, "FallbackActive") == "False"


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def test_restart_keeps_difficulty(
    operator: OperatorProcess,
    custom: k8s.CustomObjectsApi,
    namespace: str,
    prometheus: PrometheusServer,
    pressure: Pressure,
) -> None:
    pressure.gauge.set(30)
    create(
        custom,
        namespace,
        policy(
            "sticky",
            difficulty={"min": 1000, "initial": 10_000, "max": 1_000_000},
            prometheus={"address": prometheus.url},
            signals=[
                {
                    "name": "pressure",
                    "query": f'max(test_pressure{{job="pressure-{pressure.port}"}})',
                    "target": TARGET,
                    # Until Prometheus has scraped the gauge once, hold (no series yet).
                    "onEmpty": "Failure",
                }
            ],
            behavior={
                # The gauge does not answer to difficulty, so each evaluation
                # would compound (3x per second): one step of at most +200 %
                # per 10 minutes stops at 30000 and keeps it there.
                "increase": {"policies": [{"type": "Percent", "value": 200, "periodSeconds": 600}]},
                "decrease": {"stabilizationWindowSeconds": 600},
            },
            evaluationIntervalSeconds=1,
        ),
    )
    eventually(lambda: difficulty(custom, namespace, "sticky") == 30_000, what="the increase")
    operator.stop()
    pressure.gauge.set(TARGET)  # at target: a fresh start from `initial` would settle at 10000
    operator.start()

    def evaluated_again() -> dict[str, Any] | None:
        obj = get(custom, namespace, "sticky")
        signals = obj["status"].get("signals", [])
        return obj if signals and signals[0].get("value") == TARGET else None

    obj = eventually(evaluated_again, what="an evaluation by the new process")
    assert obj["status"]["difficulty"] == 30_000
    assert json.dumps(obj["status"]["history"]).count("AboveTarget") == 1


# -- stockpiling, end to end: operator → ConfigMap → a sidecar process ------------

#: Seconds easier challenges keep paying after a raise: long enough that a loaded
#: machine spends a solution within it, short enough for a test.
GRACE = 30


def write_key_file(core: k8s.CoreV1Api, namespace: str, name: str, path: Path) -> None:
    """The policy's key ring where the kubelet would mount it (once the Secret exists)."""
    secret = eventually(
        lambda: read_or_none(core.read_namespaced_secret, key_secret_name(name), namespace),
        what="the key Secret",
    )
    path.write_bytes(base64.b64decode(secret.data["keyring.json"]))


def read_or_none(read: Callable[..., T], *args: str) -> T | None:
    try:
        return read(*args)
    except k8s.ApiException as exc:
        if exc.status == HTTPStatus.NOT_FOUND:
            return None
        raise


def test_challenges_fetched_before_a_raise_pay_within_the_grace_and_not_after(
    operator: OperatorProcess,
    custom: k8s.CustomObjectsApi,
    core: k8s.CoreV1Api,
    kube_client: k8s.ApiClient,
    cluster: ClusterAccess,
    namespace: str,
    prometheus: PrometheusServer,
    pressure: Pressure,
    tmp_path: Path,
) -> None:
    """Stockpiling through the whole product: a sidecar process follows the operator's
    ConfigMap, a signal makes the operator raise difficulty, and solutions of challenges
    fetched at the low difficulty pay only within the policy's grace after the raise."""
    create(
        custom,
        namespace,
        policy(
            "grace",
            # One raise, to the maximum: every later one would restart the grace.
            difficulty={"min": 1000, "max": 4000},
            challenge={"graceSecondsAfterRaise": GRACE},
            prometheus={"address": prometheus.url, "timeoutSeconds": 2},
            signals=[
                {
                    "name": "pressure",
                    "query": f'max(test_pressure{{job="pressure-{pressure.port}"}})',
                    "target": TARGET,
                    "onEmpty": "Failure",
                }
            ],
            behavior={"increase": {"policies": []}},
            evaluationIntervalSeconds=1,
        ),
    )
    eventually(lambda: rendered(core, namespace, "grace"), what="the rendered config")
    key_file = tmp_path / "keyring.json"
    write_key_file(core, namespace, "grace", key_file)
    reader = config_reader(
        cluster=cluster,
        kube_client=kube_client,
        namespace=namespace,
        name=config_map_name("grace"),
        root=tmp_path,
    )
    standin, upstream = start_standin(tmp_path=tmp_path)
    sidecar, endpoints = start_sidecar(
        tmp_path=tmp_path,
        upstream=upstream,
        key_file=key_file,
        config_args=reader.sidecar_args(namespace=namespace, name=config_map_name("grace")),
    )
    processes = [sidecar, standin]
    try:
        endpoints.wait_ready(watch=processes)

        def challenge() -> Challenge:
            response = httpx.get(
                endpoints.url + CHALLENGE_PATH, params={"path": "/v1/chat/completions"}, timeout=10
            )
            assert response.status_code == HTTPStatus.OK
            return Challenge.from_json(response.content)

        # Fetched and solved while difficulty is low: the stockpile.
        cheap = [challenge() for _ in range(2)]
        assert {c.maxnumber for c in cheap} == {1000}
        stockpile = [c.solution(solve(c).number).encode() for c in cheap]

        pressure.gauge.set(40)  # four times the target: the operator raises to the max
        eventually(
            lambda: challenge().maxnumber == 4000 or None,
            what="challenges of the raised difficulty from the sidecar",
        )
        config = rendered(core, namespace, "grace")
        assert config is not None
        assert config.raised_at > 0
        assert config.raise_grace_seconds == GRACE

        def spend(solution: str) -> httpx.Response:
            return httpx.post(
                endpoints.url + "/v1/chat/completions",
                headers={"X-Powgate-Solution": solution},
                json={"model": "standin", "messages": [{"role": "user", "content": "hi"}]},
                timeout=30,
            )

        # Within the grace: a client that was solving when difficulty rose still pays.
        within = spend(stockpile[0])
        spent_at = time.time()
        assert spent_at < config.raised_at + GRACE, "the raise reached the sidecar too late"
        assert within.status_code == HTTPStatus.OK, within.text

        # After the grace (a clock condition: the grace is a time), the stockpile is worth
        # nothing: the second cheap solution is refused as insufficient.
        eventually(
            lambda: time.time() > config.raised_at + GRACE + 1 or None,
            what="the grace to pass",
            timeout=GRACE + WAIT,
        )
        after = spend(stockpile[1])
        # Still the one raise: a later one would have restarted the grace.
        assert getattr(rendered(core, namespace, "grace"), "raised_at", None) == config.raised_at
        assert after.status_code != HTTPStatus.OK
        assert endpoints.requests(route="default", outcome="rejected", reason="insufficient") == 1
        # Today's challenges still pay.
        fresh = challenge()
        assert fresh.maxnumber == 4000
        assert spend(fresh.solution(solve(fresh).number).encode()).status_code == HTTPStatus.OK
    finally:
        stop_all(processes, grace=10)


# -- a shared replay store, through the operator ----------------------------------------


def test_a_policys_replay_store_makes_a_solution_pay_once_and_shows_in_its_status(
    operator: OperatorProcess,
    custom: k8s.CustomObjectsApi,
    core: k8s.CoreV1Api,
    kube_client: k8s.ApiClient,
    cluster: ClusterAccess,
    namespace: str,
    prometheus: PrometheusServer,
    store: StoreServer,
    tmp_path: Path,
) -> None:
    """`replay.store` through the whole product: the operator renders it, two sidecar
    processes following the ConfigMap admit one solution once, and the policy's
    ReplayStoreAvailable condition follows the store away and back."""
    create(
        custom,
        namespace,
        policy(
            "shared",
            difficulty={"min": 1000, "max": 1000},
            replay={"store": {"address": store.address, "timeoutMilliseconds": 500}},
            prometheus={"address": prometheus.url, "timeoutSeconds": 2},
            evaluationIntervalSeconds=1,
        ),
    )
    config = eventually(lambda: rendered(core, namespace, "shared"), what="the rendered config")
    assert config.replay_store is not None
    assert (config.replay_store.address, config.contract) == (store.address, 2)
    key_file = tmp_path / "keyring.json"
    write_key_file(core, namespace, "shared", key_file)
    reader = config_reader(
        cluster=cluster,
        kube_client=kube_client,
        namespace=namespace,
        name=config_map_name("shared"),
        root=tmp_path,
    )
    standin, upstream = start_standin(tmp_path=tmp_path)
    processes = [standin]
    sidecars = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        process, endpoints = start_sidecar(
            tmp_path=tmp_path / name,
            upstream=upstream,
            key_file=key_file,
            config_args=reader.sidecar_args(namespace=namespace, name=config_map_name("shared")),
        )
        processes.append(process)
        sidecars.append(endpoints)
    try:
        for endpoints in sidecars:
            wait_until(
                lambda url=endpoints.metrics_url: ready(url + "/readyz"),
                what="the sidecar ready",
                timeout=WAIT,
                watch=processes,
            )
        # Scraped as the chart's PodMonitor would: the namespace as a target label.
        prometheus.set_targets(
            [
                ScrapeTarget(
                    job="shared-sidecars",
                    address=endpoints.metrics_url.removeprefix("http://"),
                    labels={"namespace": namespace},
                )
                for endpoints in sidecars
            ]
        )

        def spend(url: str, solution: str) -> int:
            return httpx.post(
                url + "/v1/chat/completions",
                headers={"X-Powgate-Solution": solution},
                json={"model": "standin", "messages": [{"role": "user", "content": "hi"}]},
                timeout=30,
            ).status_code

        def solution() -> str:
            response = httpx.get(
                sidecars[0].url + CHALLENGE_PATH,
                params={"path": "/v1/chat/completions"},
                timeout=10,
            )
            challenge = Challenge.from_json(response.content)
            return challenge.solution(solve(challenge).number).encode()

        payload = solution()
        assert [spend(s.url, payload) for s in sidecars] == [HTTPStatus.OK, 428]
        assert sidecars[1].requests(route="default", outcome="rejected", reason="replayed") == 1

        def store_condition(wanted: str) -> bool | None:
            return (
                condition(get(custom, namespace, "shared"), "ReplayStoreAvailable") == wanted
                or None
            )

        eventually(lambda: store_condition("True"), what="ReplayStoreAvailable True")
        store.stop()
        assert spend(sidecars[0].url, solution()) == HTTPStatus.SERVICE_UNAVAILABLE
        eventually(lambda: store_condition("False"), what="ReplayStoreAvailable False")
        store.start()
        eventually(lambda: store_condition("True"), what="ReplayStoreAvailable True again")
        assert spend(sidecars[1].url, solution()) == HTTPStatus.OK
    finally:
        stop_all(processes, grace=10)
