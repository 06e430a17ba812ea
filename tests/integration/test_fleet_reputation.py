"""What one sidecar learns, the fleet knows: the whole loop, with nothing played.

The demo's stack at its quick scale (the session's control plane, a real
Prometheus, the operator and two sidecar processes watching the policy's
ConfigMap) with per-client prices on. One client floods the first sidecar
only; the second has never seen it, and yet prices it once the operator's
next evaluation has summed what the sidecars report, through Prometheus,
under sealed labels, into the list both sidecars apply. Then a list from
"another cluster", in the export format and synced into the namespace the
way an administrator would, is imported by the policy: both sidecars price
its key, at most at the import's cap, until the import is removed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kubernetes import client as k8s

from powgate import CHALLENGE_PATH, Challenge
from powgate.policy import GROUP, PLURAL, REPUTATION_SOURCE_LABEL, VERSION
from powgate.pricing import client_tag
from powgate.reputation import REPUTATION_DATA_KEY, ReputationEntry, ReputationList
from powgate_testbed._demo_scenario import QUICK, Defence
from powgate_testbed._demo_stack import DemoStack, Deployment
from powgate_testbed.cluster import ClusterAccess
from waiting import eventually

pytestmark = pytest.mark.slow

HEAVY = "100.64.7.9"  # a bot's network (the demo's bot range)
HEAVY_KEY = "100.64.7.0/24"
LIGHT = "198.18.3.7"
#: A network another cluster flagged; nobody here has seen it.
FOREIGN = "203.0.113.50"
FOREIGN_KEY = "203.0.113.0/24"


@pytest.fixture(scope="module")
def deployment(
    cluster: ClusterAccess, prometheus_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DemoStack, Deployment]]:
    workdir = tmp_path_factory.mktemp("fleet")
    with (
        DemoStack(
            scenario=QUICK, workdir=workdir, logs=workdir / "logs", kubeconfig=cluster.kubeconfig
        ) as stack,
        stack.deploy(Defence.HEAVY_PER_CLIENT) as deployed,
    ):
        yield stack, deployed


def quote(sidecar: str, client: str) -> Challenge:
    """The challenge ``sidecar`` hands ``client`` (named by the trusted proxy in front)."""
    response = httpx.get(
        sidecar + CHALLENGE_PATH,
        params={"path": "/v1/chat/completions"},
        headers={"X-Forwarded-For": client},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return Challenge.from_json(response.content)


def factor(challenge: Challenge) -> float:
    return float(challenge.params.factor or 0)


#: Asking a sidecar for a challenge is a request it counts towards the client's rate.
#: Probing the foreign key every 0.2 s priced it above 1x at the sidecars on its own, so
#: on a busy machine (a longer first wait, more probes) "forget the import" never came.
#: One probe per sidecar every 10 s keeps the key's decayed rate (half-life 5 s) at its
#: peak, summed over both sidecars, below the scenario's fair rate.
PROBE_INTERVAL = 10.0
_HALF_LIFE = QUICK.who_pays.half_life_seconds
_PEAK_RATE = math.log(2) / _HALF_LIFE / (1 - 2 ** (-PROBE_INTERVAL / _HALF_LIFE))
assert QUICK.who_pays.fair_rate > 2 * _PEAK_RATE


def seen(sidecar: str) -> str:
    challenge = quote(sidecar, FOREIGN)
    return f"last seen: factor {factor(challenge):g} for client {challenge.params.client}"


def test_a_client_flagged_by_one_sidecar_pays_more_at_another(
    deployment: tuple[DemoStack, Deployment],
) -> None:
    stack, deployed = deployment
    first, second = deployed.sidecar_urls
    # The second sidecar has never seen the client: it pays the route's price there.
    assert factor(quote(second, HEAVY)) == 1.0
    base = quote(second, LIGHT).maxnumber
    # 20 requests a second at the first sidecar only, 40 times the fair rate.
    started = time.monotonic()

    def learnt() -> bool:
        for _ in range(20):
            quote(first, HEAVY)
            time.sleep(0.05)
        status = stack.policy_status(Defence.HEAVY_PER_CLIENT)
        return int((status.get("pricing") or {}).get("learnt", 0)) >= 1

    eventually(learnt, what="the operator to learn the heavy client", timeout=120)
    learnt_after = time.monotonic() - started
    # The list is written before the status that counts it: the second sidecar has
    # it as soon as its watch delivers (milliseconds).
    priced = eventually(
        lambda: factor(quote(second, HEAVY)) > 1.0 or None,
        what="the second sidecar to price the client",
        timeout=30,
    )
    assert priced
    at_second = quote(second, HEAVY)
    assert at_second.params.client == client_tag(HEAVY_KEY)
    assert at_second.maxnumber > base
    # Its neighbours in other networks still pay the base price there.
    assert factor(quote(second, LIGHT)) == 1.0
    print(
        f"learnt {learnt_after:.1f} s after the flood began "
        f"(scrape and evaluation every {QUICK.interval} s); "
        f"priced at {factor(at_second):g}x by the sidecar that never saw it"
    )


def test_a_list_imported_from_another_cluster_raises_the_price_within_its_cap(
    deployment: tuple[DemoStack, Deployment],
) -> None:
    stack, deployed = deployment
    assert all(factor(quote(sidecar, FOREIGN)) == 1.0 for sidecar in deployed.sidecar_urls)
    # Another cluster's export (its <policy>-powgate-reputation), synced here: it asks 40x.
    exported = ReputationList(
        entries=(ReputationEntry(key=FOREIGN_KEY, factor=40, expires=int(time.time()) + 600),)
    )
    core = k8s.CoreV1Api(stack.api)
    core.create_namespaced_config_map(
        stack.namespace,
        {
            "metadata": {
                "name": "peer-cluster-reputation",
                "labels": {REPUTATION_SOURCE_LABEL: "true"},
            },
            "data": {REPUTATION_DATA_KEY: exported.to_json()},
        },
    )
    policies = k8s.CustomObjectsApi(stack.api)
    name = str(Defence.HEAVY_PER_CLIENT)

    def imports(listed: list[dict[str, object]]) -> None:
        patch = {"spec": {"reputation": {"imports": listed}}}
        policies.patch_namespaced_custom_object(
            GROUP, VERSION, stack.namespace, PLURAL, name, patch
        )

    try:
        # This policy trusts that source up to 8x.
        imports([{"name": "peer-cluster-reputation", "maxFactor": 8}])
        for sidecar in deployed.sidecar_urls:
            eventually(
                lambda sidecar=sidecar: factor(quote(sidecar, FOREIGN)) == 8.0,
                what=f"{sidecar} to price the imported key at the import's cap",
                timeout=90,
                interval=PROBE_INTERVAL,
                context=lambda sidecar=sidecar: seen(sidecar),
            )
        status = stack.policy_status(Defence.HEAVY_PER_CLIENT)
        assert int(status["pricing"]["imported"]) == 1
        assert factor(quote(deployed.sidecar_urls[0], LIGHT)) == 1.0
        # Imports are never exported again (clusters importing each other cannot echo).
        assert FOREIGN_KEY not in exported_text(core, stack.namespace, name)
        # The import removed: the list the sidecars apply drops the key.
        imports([])
        for sidecar in deployed.sidecar_urls:
            eventually(
                lambda sidecar=sidecar: factor(quote(sidecar, FOREIGN)) == 1.0,
                what=f"{sidecar} to forget the import",
                timeout=90,
                interval=PROBE_INTERVAL,
                context=lambda sidecar=sidecar: seen(sidecar),
            )
    finally:
        imports([])
        core.delete_namespaced_config_map("peer-cluster-reputation", stack.namespace)


def exported_text(core: k8s.CoreV1Api, namespace: str, policy: str) -> str:
    """The policy's own export (empty when it has learnt nothing yet)."""
    try:
        own = core.read_namespaced_config_map(f"{policy}-powgate-reputation", namespace)
    except k8s.ApiException as exc:
        if exc.status != 404:
            raise
        return ""
    return str((own.data or {}).get(REPUTATION_DATA_KEY, ""))
