"""What the operator keeps of a pod: who carries which sidecar, who runs without one."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from powgate.contract import INJECTED_ANNOTATION, OPT_OUT_LABEL, POLICY_LABEL, SIDECAR_NAME
from powgate.policy import LabelSelector
from powgate_operator._inject import PolicyRef, SidecarTemplate, plan
from powgate_operator._pods import Port, Unprotected, injected_accounts, pod_facts

NS = "ai"
POLICY = PolicyRef(
    namespace=NS, name="llm", uid="u-1", selector=LabelSelector(match_labels={"app": "llm"})
)
TEMPLATE = SidecarTemplate(image="powgate/sidecar:test", operator_namespace="powgate-system")


def app_pod(name: str = "p", account: str = "model", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "llm", **labels}},
        "spec": {
            "serviceAccountName": account,
            "containers": [
                {
                    "name": "app",
                    "ports": [
                        {"name": "http", "containerPort": 8000},
                        {"name": "grpc", "containerPort": 9000},
                        {"containerPort": 9100, "protocol": "UDP"},
                    ],
                }
            ],
        },
        "status": {"phase": "Running"},
    }


def injected(name: str = "p", account: str = "model") -> dict[str, Any]:
    """The pod as the injector stores it."""
    source = app_pod(name, account)
    decided = plan(source, namespace=NS, policies=[POLICY], template=TEMPLATE)
    assert decided.pod is not None
    return {**decided.pod, "status": {"phase": "Running"}}


def test_an_injected_pod_carries_its_policys_sidecar_and_its_other_ports() -> None:
    facts = pod_facts(injected())
    assert facts is not None
    assert facts.sidecar_of == "llm"
    assert facts.service_account == "model"
    assert {p.name for p in facts.sidecar_ports} == {"http", "powgate-metrics"}
    # The app's own port (renamed http-app) is the sidecar's upstream: not among the others.
    assert facts.other_ports == (Port(9000, "TCP", "grpc"), Port(9100, "UDP", ""))
    assert facts.unprotected("llm", POLICY.selector) is None


@pytest.mark.parametrize(
    "forge",
    [
        # The label and annotation alone, without the sidecar container.
        lambda p: p["spec"].__setitem__("initContainers", []),
        # The sidecar, but claiming another policy's label.
        lambda p: p["metadata"]["labels"].__setitem__(POLICY_LABEL, "other"),
        # No annotation.
        lambda p: p["metadata"]["annotations"].pop(INJECTED_ANNOTATION),
    ],
)
def test_a_pod_carries_a_sidecar_only_with_the_container_label_and_annotation(forge: Any) -> None:
    body = copy.deepcopy(injected())
    forge(body)
    facts = pod_facts(body)
    assert facts is not None
    assert facts.sidecar_of == ""


def test_accounts_are_those_of_running_pods_with_the_sidecar() -> None:
    done = injected("done", "batch")
    done["status"]["phase"] = "Succeeded"
    pods = [
        pod_facts(injected("a", "model")),
        pod_facts(injected("b", "model")),
        pod_facts(injected("c", "web")),
        pod_facts(done),
        pod_facts(app_pod("plain", "other")),
    ]
    assert injected_accounts([p for p in pods if p is not None], "llm") == {"model", "web"}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda p: None, Unprotected.NOT_INJECTED),
        (
            lambda p: p["metadata"]["labels"].__setitem__(OPT_OUT_LABEL, "false"),
            Unprotected.OPTED_OUT,
        ),
        (lambda p: p["spec"].__setitem__("hostNetwork", True), Unprotected.HOST_NETWORK),
        (lambda p: p["status"].__setitem__("phase", "Failed"), None),
        (lambda p: p["metadata"]["labels"].__setitem__("app", "other"), None),
    ],
)
def test_a_selected_running_pod_without_a_sidecar_is_unprotected(
    change: Any, expected: Unprotected | None
) -> None:
    body = app_pod()
    change(body)
    facts = pod_facts(body)
    assert facts is not None
    assert facts.unprotected("llm", POLICY.selector) == expected


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"metadata": {"name": ""}},
        {"metadata": {"name": 3}},
    ],
)
def test_a_pod_without_a_name_is_not_kept(body: dict[str, Any]) -> None:
    assert pod_facts(body) is None


def test_malformed_fields_are_read_as_absent() -> None:
    facts = pod_facts(
        {
            "metadata": {"name": "p", "labels": ["x"], "annotations": None},
            "spec": {
                "containers": [
                    "junk",
                    {"name": SIDECAR_NAME, "ports": [{"containerPort": True}, "x", None]},
                ],
                "initContainers": {"not": "a list"},
            },
        }
    )
    assert facts is not None
    assert (facts.labels, facts.sidecar_of, facts.other_ports) == ({}, "", ())
