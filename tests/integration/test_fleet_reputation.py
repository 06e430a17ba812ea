"""What one sidecar learns, the fleet knows: the whole loop, with nothing played.

The demo's stack at its quick scale (the session's control plane, a real
Prometheus, the operator and two sidecar processes watching the policy's
ConfigMap) with per-client prices on. One client floods the first sidecar
only; the second has never seen it, and yet prices it once the operator's
next evaluation has summed what the sidecars report, through Prometheus,
under sealed labels, into the list both sidecars apply.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from powgate import CHALLENGE_PATH, Challenge
from powgate.pricing import client_tag
from powgate_testbed._demo_scenario import QUICK, Defence
from powgate_testbed._demo_stack import DemoStack, Deployment
from powgate_testbed.cluster import ClusterAccess
from waiting import eventually

pytestmark = pytest.mark.slow

HEAVY = "100.64.7.9"  # a bot's network (the demo's bot range)
HEAVY_KEY = "100.64.7.0/24"
LIGHT = "198.18.3.7"


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
