"""The injection rules, as pure functions: who gets the sidecar, and what it looks like."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest

from powgate.contract import INJECTED_ANNOTATION, OPT_OUT_LABEL, PORT_ANNOTATION, SIDECAR_NAME
from powgate.policy import LabelSelector, LabelSelectorRequirement
from powgate_operator._inject import (
    PolicyRef,
    SidecarTemplate,
    Skip,
    plan,
    selector_matches,
    supports_native_sidecars,
)
from powgate_operator._objects import role_binding_body, role_body

NS = "ai"
SETTINGS = SidecarTemplate(image="powgate/sidecar:test", operator_namespace="powgate-system")
POLICY = PolicyRef(
    namespace=NS, name="llm", uid="u-1", selector=LabelSelector(match_labels={"app": "llm"})
)


def pod(**labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": NS, "labels": labels or {"app": "llm"}},
        "spec": {
            "containers": [
                {
                    "name": "model",
                    "image": "vllm",
                    "ports": [
                        {"name": "grpc", "containerPort": 9000},
                        {"name": "http", "containerPort": 8000},
                    ],
                    "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}},
                    "readinessProbe": {"tcpSocket": {"port": "grpc"}},
                }
            ]
        },
    }


def injected(source: dict[str, Any], settings: SidecarTemplate = SETTINGS) -> dict[str, Any]:
    outcome = plan(source, namespace=NS, policies=[POLICY], template=settings)
    assert outcome.skip is None, outcome.message
    assert outcome.pod is not None
    return outcome.pod


def sidecar_of(result: dict[str, Any]) -> dict[str, Any]:
    containers = result["spec"].get("initContainers", []) + result["spec"]["containers"]
    (sidecar,) = [c for c in containers if c["name"] == SIDECAR_NAME]
    return sidecar


# -- selection --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requirement", "labels", "expected"),
    [
        (
            LabelSelectorRequirement(key="tier", operator="In", values=["a", "b"]),
            {"tier": "b"},
            True,
        ),
        (LabelSelectorRequirement(key="tier", operator="In", values=["a"]), {"tier": "b"}, False),
        (LabelSelectorRequirement(key="tier", operator="In", values=["a"]), {}, False),
        (LabelSelectorRequirement(key="tier", operator="NotIn", values=["a"]), {}, True),
        (
            LabelSelectorRequirement(key="tier", operator="NotIn", values=["a"]),
            {"tier": "a"},
            False,
        ),
        (LabelSelectorRequirement(key="tier", operator="Exists"), {"tier": ""}, True),
        (LabelSelectorRequirement(key="tier", operator="Exists"), {}, False),
        (LabelSelectorRequirement(key="tier", operator="DoesNotExist"), {}, True),
        (LabelSelectorRequirement(key="tier", operator="DoesNotExist"), {"tier": "a"}, False),
    ],
)
def test_match_expressions_follow_kubernetes(
    requirement: LabelSelectorRequirement, labels: dict[str, str], expected: bool
) -> None:
    selector = LabelSelector(match_expressions=[requirement])
    assert selector_matches(selector, labels) is expected


def test_match_labels_and_expressions_are_anded() -> None:
    selector = LabelSelector(
        match_labels={"app": "llm"},
        match_expressions=[LabelSelectorRequirement(key="canary", operator="DoesNotExist")],
    )
    assert selector_matches(selector, {"app": "llm"})
    assert not selector_matches(selector, {"app": "llm", "canary": "1"})
    assert not selector_matches(selector, {"app": "web"})


@pytest.mark.parametrize(
    ("namespace", "labels", "skip"),
    [
        ("kube-system", {"app": "llm"}, Skip.EXCLUDED_NAMESPACE),
        ("powgate-system", {"app": "llm"}, Skip.EXCLUDED_NAMESPACE),
        (NS, {"app": "llm", OPT_OUT_LABEL: "false"}, Skip.OPTED_OUT),
        (NS, {"app": "web"}, Skip.NO_POLICY),
    ],
)
def test_pods_left_alone(namespace: str, labels: dict[str, str], skip: Skip) -> None:
    source = pod(**labels)
    policy = PolicyRef(namespace=namespace, name="llm", uid="u", selector=POLICY.selector)
    outcome = plan(source, namespace=namespace, policies=[policy], template=SETTINGS)
    assert (outcome.pod, outcome.skip) == (None, skip)


def test_a_policy_of_another_namespace_never_applies() -> None:
    outcome = plan(pod(), namespace="other", policies=[POLICY], template=SETTINGS)
    assert outcome.skip is Skip.NO_POLICY


def test_several_matching_policies_pick_the_first_by_name_and_warn() -> None:
    other = PolicyRef(namespace=NS, name="aaa", uid="u-0", selector=POLICY.selector)
    outcome = plan(pod(), namespace=NS, policies=[POLICY, other], template=SETTINGS)
    assert outcome.policy == other
    assert len(outcome.warnings) == 1
    assert "aaa, llm" in outcome.warnings[0]


def test_a_pod_without_the_port_is_skipped_with_a_warning() -> None:
    source = pod()
    source["metadata"]["annotations"] = {PORT_ANNOTATION: "web"}
    outcome = plan(source, namespace=NS, policies=[POLICY], template=SETTINGS)
    assert outcome.skip is Skip.NO_PORT
    assert outcome.policy == POLICY
    assert "'web'" in outcome.warnings[0]


def test_host_network_pods_are_skipped() -> None:
    source = pod()
    source["spec"]["hostNetwork"] = True
    assert (
        plan(source, namespace=NS, policies=[POLICY], template=SETTINGS).skip is Skip.HOST_NETWORK
    )


@pytest.mark.parametrize(
    "breakage",
    [
        lambda p: p.update(spec="nonsense"),
        lambda p: p["spec"].update(containers={"model": {}}),
        lambda p: p["spec"]["containers"][0].update(ports="8000"),
        lambda p: p["metadata"].update(labels={"app": 5}),
        lambda p: p.update(metadata=[]),
    ],
)
def test_malformed_pods_are_reported_not_crashed_on(breakage: Any) -> None:
    source = pod()
    breakage(source)
    outcome = plan(source, namespace=NS, policies=[POLICY], template=SETTINGS)
    assert (outcome.pod, outcome.skip) == (None, Skip.INVALID_POD)


# -- the injected pod ---------------------------------------------------------------


def test_port_takeover_renames_the_app_port_and_its_probes() -> None:
    result = injected(pod())
    (model,) = result["spec"]["containers"]
    assert model["ports"] == [
        {"name": "grpc", "containerPort": 9000},
        {"name": "http-app", "containerPort": 8000},
    ]
    assert model["livenessProbe"]["httpGet"]["port"] == "http-app"
    assert model["readinessProbe"]["tcpSocket"]["port"] == "grpc"  # another port: kept
    sidecar = sidecar_of(result)
    assert sidecar["ports"][0] == {"name": "http", "containerPort": 8480, "protocol": "TCP"}
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["POWGATE_UPSTREAM"] == "http://127.0.0.1:8000"
    assert env["POWGATE_LISTEN"] == "0.0.0.0:8480"
    # Only the pod's address: the kubelet expands $(POD_IP), defined earlier in the list.
    assert env["POWGATE_METRICS_LISTEN"] == "$(POD_IP):9480"
    names = [e["name"] for e in sidecar["env"]]
    assert names.index("POD_IP") < names.index("POWGATE_METRICS_LISTEN")
    assert env["POWGATE_CONFIG_OBJECT"] == "ai/llm-powgate-config"
    assert env["POWGATE_KEY_FILE"] == "/etc/powgate/keys"
    identity = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in sidecar["env"]
        if "valueFrom" in e
    }
    assert identity["POD_NAME"] == "metadata.name"
    assert identity["POD_NAMESPACE"] == "metadata.namespace"


def test_the_annotation_names_another_port() -> None:
    source = pod()
    source["metadata"]["annotations"] = {PORT_ANNOTATION: "grpc"}
    result = injected(source)
    assert sidecar_of(result)["ports"][0]["name"] == "grpc"
    names = [p["name"] for p in result["spec"]["containers"][0]["ports"]]
    assert names == ["grpc-app", "http"]


def test_the_sidecar_ports_move_off_ports_the_pod_uses() -> None:
    source = pod()
    source["spec"]["containers"][0]["ports"].append({"name": "x", "containerPort": 8480})
    source["spec"]["containers"][0]["ports"].append({"name": "y", "containerPort": 9480})
    ports = {p["name"]: p["containerPort"] for p in sidecar_of(injected(source))["ports"]}
    assert ports == {"http": 8481, "powgate-metrics": 9481}


def test_renamed_port_stays_a_valid_unique_port_name() -> None:
    source = pod()
    source["metadata"]["annotations"] = {PORT_ANNOTATION: "inference-http"}
    source["spec"]["containers"][0]["ports"] = [
        {"name": "inference-http", "containerPort": 8000},
        {"name": "inference-h-app", "containerPort": 8001},
    ]
    names = [p["name"] for p in injected(source)["spec"]["containers"][0]["ports"]]
    assert names[0] == "inference-app2"
    assert all(len(n) <= 15 for n in names)


def test_native_sidecar_is_the_last_init_container() -> None:
    source = pod()
    source["spec"]["initContainers"] = [{"name": "migrate", "image": "m"}]
    result = injected(source)
    names = [c["name"] for c in result["spec"]["initContainers"]]
    assert names == ["migrate", SIDECAR_NAME]
    sidecar = result["spec"]["initContainers"][-1]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "powgate-metrics"}


def test_regular_container_when_native_sidecars_are_unsupported() -> None:
    settings = SidecarTemplate(
        image="img", operator_namespace="powgate-system", native_sidecar=False
    )
    result = injected(pod(), settings)
    assert "initContainers" not in result["spec"]
    assert [c["name"] for c in result["spec"]["containers"]] == [SIDECAR_NAME, "model"]
    assert "restartPolicy" not in result["spec"]["containers"][0]


def test_sidecar_is_locked_down() -> None:
    sidecar = sidecar_of(injected(pod()))
    assert sidecar["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert sidecar["resources"]["requests"] == {"cpu": "100m", "memory": "64Mi"}
    assert "cpu" not in sidecar["resources"]["limits"]


def test_the_sidecar_has_its_own_token_even_without_automount() -> None:
    source = pod()
    source["spec"]["automountServiceAccountToken"] = False
    result = injected(source)
    volumes = {v["name"]: v for v in result["spec"]["volumes"]}
    sources = volumes["powgate-token"]["projected"]["sources"]
    assert sources[0]["serviceAccountToken"]["path"] == "token"
    assert sources[1]["configMap"]["name"] == "kube-root-ca.crt"
    mounts = {m["name"]: m["mountPath"] for m in sidecar_of(result)["volumeMounts"]}
    assert mounts["powgate-token"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert volumes["powgate-keys"]["secret"]["secretName"] == "llm-powgate-keys"
    assert result["spec"]["automountServiceAccountToken"] is False  # the app's choice stays


def test_replay_store_credentials_reach_the_sidecar_container_only() -> None:
    """The policy's store Secret is mounted (optional) into the sidecar, never into the app."""
    result = injected(pod())
    volumes = {v["name"]: v for v in result["spec"]["volumes"]}
    assert volumes["powgate-replay-store"]["secret"] == {
        "secretName": "llm-powgate-replay-store",
        "defaultMode": 0o444,
        "optional": True,
    }
    sidecar = sidecar_of(result)
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    assert mounts["powgate-replay-store"]["readOnly"] is True
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["POWGATE_REPLAY_STORE_CREDENTIALS"] == mounts["powgate-replay-store"]["mountPath"]
    others = [c for c in result["spec"]["containers"] if c["name"] != "powgate-sidecar"]
    assert others
    for container in others:
        names = {m["name"] for m in container.get("volumeMounts") or []}
        assert "powgate-replay-store" not in names


def test_injection_is_idempotent_and_leaves_the_input_alone() -> None:
    source = pod()
    before = copy.deepcopy(source)
    once = injected(source)
    assert source == before
    again = plan(once, namespace=NS, policies=[POLICY], template=SETTINGS)
    assert (again.pod, again.skip) == (None, Skip.ALREADY_INJECTED)
    assert once["metadata"]["annotations"][INJECTED_ANNOTATION] == "llm"
    assert once["metadata"]["labels"]["powgate.dev/policy"] == "llm"


def test_the_patch_only_adds_and_replaces_what_injection_owns() -> None:
    source = pod()
    patch = jsonpatch.make_patch(source, injected(source)).patch
    touched = {"/".join(op["path"].split("/")[1:3]) for op in patch}
    assert touched <= {
        "metadata/annotations",
        "metadata/labels",
        "spec/containers",
        "spec/initContainers",
        "spec/volumes",
    }
    assert jsonpatch.apply_patch(source, patch) == injected(source)


# -- least privilege and versions ---------------------------------------------------


def test_role_names_only_the_policys_config_and_never_its_keys() -> None:
    role = role_body(POLICY.metadata())
    assert role["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    # Every container of the pod shares the service account: a key it could read
    # would let the app container mint solutions. Keys arrive as a mounted volume.
    assert [(r["resources"], r["resourceNames"], r["verbs"]) for r in role["rules"]] == [
        (["configmaps"], ["llm-powgate-config"], ["get", "list", "watch"]),
    ]


def test_role_binding_lists_each_account_once() -> None:
    binding = role_binding_body(POLICY.metadata(), ["b", "a", "b"])
    assert [s["name"] for s in binding["subjects"]] == ["a", "b"]
    assert binding["roleRef"]["name"] == "llm-powgate-sidecar"


@pytest.mark.parametrize(
    ("major", "minor", "native"),
    [
        ("1", "35", True),
        ("1", "29", True),
        ("1", "29+", True),
        ("1", "28", False),
        ("2", "0", True),
        ("", "", False),
        ("1", "x", False),
    ],
)
def test_native_sidecars_from_the_server_version(major: str, minor: str, native: bool) -> None:
    assert supports_native_sidecars(major, minor) is native
