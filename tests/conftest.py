"""Settings for every test under tests/, and how `make test` spreads them over workers.

`make test` runs the suite on 3 pytest-xdist workers (`-n 3 --dist
loadfile`): most of its time is spent waiting (control planes starting, pods,
scrapes, browsers), not computing. Each test module is one unit of work, run
whole by one worker, so a module's fixtures are set up once; the modules that
start a real node (containerd, kubelet, kube-proxy) form one unit, so a run
never has two real nodes of its own at once. Units are handed out in
collection order (`--no-loadscope-reorder`), which this file makes longest
first.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from xdist.scheduler import LoadScopeScheduling

# Tests check behaviour, never wall-clock time: Hypothesis' default deadline
# (200 ms per example) fails property tests whenever CI's shared cores are busy.
settings.register_profile("powgate", deadline=None)
settings.load_profile("powgate")

#: Fixtures that start a real node (or a cluster of their own with one).
_REAL_NODE_FIXTURES = frozenset({"real_node", "real_node_ready"})
#: The modules with tests using them: one unit of work.
_REAL_NODE_MODULES = frozenset(
    {"tests/integration/test_real_pods.py", "tests/integration/test_cluster_lifecycle.py"}
)
_REAL_NODE_UNIT = "real node"
#: The units that take longest, in seconds (a warm `make test`'s JUnit report on
#: 4 workers, docs/testing.md). Workers start them first, longest first, so the
#: run does not end waiting on one of them; the rest follow in collection order.
_MEASURED_SECONDS = {
    "tests/integration/test_demo.py": 589,
    _REAL_NODE_UNIT: 186,
    "tests/integration/test_key_rotation.py": 112,
    "tests/integration/test_webhook_injection.py": 105,
    "tests/integration/test_operator_cluster.py": 81,
    "tests/integration/test_browser_solver.py": 34,
    "tests/unit/test_fuzz.py": 33,
    "tests/integration/test_sidecar_e2e.py": 32,
}


def _unit(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return _REAL_NODE_UNIT if module in _REAL_NODE_MODULES else module


def _rank(unit: str) -> int:
    return -_MEASURED_SECONDS.get(unit, 0)


class ModuleScheduling(LoadScopeScheduling):
    """pytest-xdist's `loadfile`, with the real node's modules as one unit."""

    def _split_scope(self, nodeid: str) -> str:
        return _unit(nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> ModuleScheduling | None:
    if config.getvalue("dist") != "loadfile":
        return None
    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    strays = sorted(
        item.nodeid
        for item in items
        if _REAL_NODE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        and _unit(item.nodeid) != _REAL_NODE_UNIT
    )
    if strays:
        raise pytest.UsageError(
            f"tests/conftest.py: add the modules of {strays} to _REAL_NODE_MODULES "
            "(one real node per run)"
        )
    if not hasattr(config, "workerinput"):
        return  # a serial run keeps pytest's order
    # sorted() is stable: collection order within a rank and within a module.
    items[:] = sorted(items, key=lambda item: _rank(_unit(item.nodeid)))
