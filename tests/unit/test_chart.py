"""The Helm chart, rendered by the real `helm template` (built by `make tools`).

Each important switch is rendered and inspected; every rendered manifest of
every variant is checked structurally (names, labels, namespaces, and a round
trip through the official client's typed models, which drops any field the
Kubernetes API does not know). The real API server's validation is in
tests/integration/test_chart_install.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from unittest import mock

import pytest
import yaml
from kubernetes import client as k8s

from helm_chart import (
    CHART,
    MONITORING,
    NAMESPACE,
    RELEASE,
    RenderError,
    find,
    helm,
    kubelet_environment,
    kubelet_expand,
    render,
)
from powgate.config import ReplayStoreSpec, StoreOutage
from powgate.contract import (
    NAMESPACE_LABEL,
    NAMESPACE_LABEL_REQUIRED,
    NAMESPACE_LABEL_VALUE,
    OPT_OUT_LABEL,
)
from powgate_operator._inject import SidecarTemplate
from powgate_operator._objects import HOOKS
from powgate_operator._options import WebhookOptions, webhook_options
from powgate_operator.cli import add_command

ROOT = Path(__file__).resolve().parents[2]
FULLNAME = f"{RELEASE}-powgate"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "ClusterKopfPeering",
}
#: Kinds the official client has typed models for: (module attribute of the model).
_MODELS = {
    "ConfigMap": "V1ConfigMap",
    "ServiceAccount": "V1ServiceAccount",
    "Service": "V1Service",
    "Deployment": "V1Deployment",
    "ClusterRole": "V1ClusterRole",
    "ClusterRoleBinding": "V1ClusterRoleBinding",
    "Role": "V1Role",
    "RoleBinding": "V1RoleBinding",
    "MutatingWebhookConfiguration": "V1MutatingWebhookConfiguration",
    "PodDisruptionBudget": "V1PodDisruptionBudget",
    "NetworkPolicy": "V1NetworkPolicy",
    "CustomResourceDefinition": "V1CustomResourceDefinition",
}
#: Every switch worth rendering, by name; the structural test runs on all of them.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"operator": {"watchNamespaces": ["ai", "ml"]}},
    "ha": {"operator": {"replicas": 3}},
    "cert-manager": {"certManager": {"enabled": True}},
    "cert-manager-issuer": {
        "certManager": {"enabled": True, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}
    },
    "no-webhook": {"webhook": {"enabled": False}},
    "derivation-pool": {"sidecar": {"derivationThreads": 3, "derivationsPending": 12}},
    "everything-off": {
        "crds": {"install": False},
        "peering": {"enabled": False},
        "rbac": {"create": False},
        "serviceAccount": {"create": False},
        "webhook": {"enabled": False},
        "metrics": {"service": {"enabled": False}},
        "dashboard": {"enabled": False},
    },
    "monitoring": {
        "networkPolicy": {"enabled": True, "metricsNamespaceSelector": {"matchLabels": {"a": "b"}}},
        "metrics": {
            "serviceMonitor": {"enabled": True},
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
        },
    },
}


def kinds(docs: Sequence[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def deployment(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return find(docs, "Deployment")


def container(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    (only,) = deployment(docs)["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


def env(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs)["env"]}


# -- lint and schema ------------------------------------------------------------


def test_helm_lint_is_clean_with_defaults_and_every_option() -> None:
    for variant in VARIANTS.values():
        values = json.dumps(variant)
        result = subprocess.run(
            [str(helm()), "lint", "--strict", str(CHART), "--values", "-"],
            input=values,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        # The only note helm lint may print is the optional icon.
        notes = [line for line in result.stdout.splitlines() if line.startswith("[")]
        assert notes == ["[INFO] Chart.yaml: icon is recommended"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"replicass": 2}}, "additional properties 'replicass' not allowed"),
        ({"webhok": {"enabled": False}}, "additional properties 'webhok' not allowed"),
        ({"sidecar": {"image": {"tags": "x"}}}, "additional properties 'tags' not allowed"),
        ({"metrics": {"serviceMonitor": {"intervall": "1m"}}}, "'intervall' not allowed"),
        ({"operator": {"replicas": "two"}}, "/operator/replicas"),
        ({"webhook": {"failurePolicy": "Maybe"}}, "/webhook/failurePolicy"),
        ({"webhook": {"timeoutSeconds": 31}}, "/webhook/timeoutSeconds"),
        ({"operator": {"image": {"digest": "latest"}}}, "/operator/image/digest"),
        ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, "/operator/watchNamespaces/0"),
        ({"operator": {"resources": {"requests": {"cpu": "lots"}}}}, "/operator/resources"),
        ({"sidecar": {"mode": "always"}}, "/sidecar/mode"),
        ({"sidecar": {"derivationThreads": -1}}, "/sidecar/derivationThreads"),
        ({"sidecar": {"derivationsPending": "lots"}}, "/sidecar/derivationsPending"),
        ({"webhook": {"path": "/elsewhere"}}, "additional properties 'path' not allowed"),
        ({"certManager": {"duration": "1 year"}}, "/certManager/duration"),
    ],
)
def test_the_schema_rejects_typos_and_bad_types(values: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderError, match=re.escape(message)):
        render(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"operator": {"replicas": 2}, "peering": {"enabled": False}},
            "operator.replicas > 1 needs peering.enabled=true",
        ),
        (
            {"certManager": {"enabled": True}, "webhook": {"enabled": False}},
            "it needs webhook.enabled=true",
        ),
        (
            {"sidecar": {"derivationThreads": 4, "derivationsPending": 2}},
            "it must be at least sidecar.derivationThreads",
        ),
    ],
)
def test_contradictory_values_fail_with_a_clear_message(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(RenderError, match=re.escape(message)):
        render(values)


def _schema_nodes(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from _schema_nodes(child, f"{path}/{name}")


def test_every_object_in_the_schema_rejects_unknown_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    loose = [
        path
        for path, node in _schema_nodes(schema)
        if "properties" in node and node.get("additionalProperties") is not False
    ]
    assert loose == []


def test_values_yaml_documents_every_key() -> None:
    """Each key has a comment right above it, or sits inside a documented key."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        previous = lines[number - 1].strip() if number else ""
        commented = previous.startswith("#")
        inherited = any(doc for _, doc in stack)
        is_leaf = not line.rstrip().endswith(":")
        if is_leaf and not commented and not inherited:
            undocumented.append(f"{number + 1}: {line.strip()}")
        stack.append((indent, commented or inherited))
    assert undocumented == []


# -- every manifest, structurally -----------------------------------------------


def _all_variant_docs() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, values in VARIANTS.items():
        for doc in render(values, api_versions=[MONITORING]):
            yield name, doc


def _round_trip(doc: dict[str, Any]) -> dict[str, Any]:
    """The manifest parsed into the client's model and serialized back."""
    api = k8s.ApiClient()
    model = api._ApiClient__deserialize(doc, _MODELS[doc["kind"]])  # type: ignore[attr-defined]
    result: dict[str, Any] = api.sanitize_for_serialization(model)  # type: ignore[no-untyped-call]
    return result


def _strip_free_form(doc: dict[str, Any]) -> dict[str, Any]:
    """CRD schemas are free-form JSON the client models only in part (defaults, CEL rules)."""
    if doc["kind"] == "CustomResourceDefinition":
        doc = json.loads(json.dumps(doc))
        for version in doc["spec"]["versions"]:
            version.pop("schema", None)
    return doc


def test_every_rendered_manifest_is_well_formed() -> None:
    problems: list[str] = []
    for variant, doc in _all_variant_docs():
        where = f"{variant}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        meta = doc["metadata"]
        if not _DNS_SUBDOMAIN.match(meta["name"]) or len(meta["name"]) > 253:
            problems.append(f"{where}: bad name")
        if doc["kind"] in {"Service", "Namespace"} and not _DNS_LABEL.match(meta["name"]):
            problems.append(f"{where}: a {doc['kind']} name must be a DNS label")
        if (doc["kind"] in _CLUSTER_SCOPED) == ("namespace" in meta):
            problems.append(f"{where}: namespace field does not match the kind's scope")
        for key, value in meta.get("labels", {}).items():
            if not isinstance(value, str) or not _LABEL_VALUE.match(value) or len(value) > 63:
                problems.append(f"{where}: label {key}={value!r} is not a valid label value")
        if meta.get("labels", {}).get("app.kubernetes.io/instance") != RELEASE:
            problems.append(f"{where}: missing the release's labels")
        if doc["kind"] in _MODELS:
            original = _strip_free_form(doc)
            if _round_trip(original) != original:
                problems.append(f"{where}: fields the API does not know, or wrong types")
    assert problems == []


def test_no_variant_renders_an_empty_document() -> None:
    for name, values in VARIANTS.items():
        result = subprocess.run(
            [str(helm()), "template", RELEASE, str(CHART), "-n", NAMESPACE, "--values", "-"],
            input=json.dumps(values),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        raw = result.stdout.split("\n---\n")
        empty = [d for d in raw if not yaml.safe_load(d)]
        assert empty == [], name


def test_the_structural_check_catches_a_misspelled_field() -> None:
    """The round trip really drops unknown fields (so the test above can fail)."""
    doc = deployment(render())
    doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert _round_trip(doc) != doc


# -- the switches -----------------------------------------------------------------


def test_defaults_install_a_cluster_wide_single_operator() -> None:
    docs = render()
    assert kinds(docs) == sorted(
        [
            "ClusterKopfPeering",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "ConfigMap",  # dashboard
            "CustomResourceDefinition",  # PowPolicy
            "CustomResourceDefinition",  # ClusterKopfPeering
            "Deployment",
            "MutatingWebhookConfiguration",
            "Role",  # the webhook's certificate Secret
            "RoleBinding",
            "Service",  # metrics
            "Service",  # webhook
            "ServiceAccount",
        ]
    )
    spec = deployment(docs)["spec"]
    assert spec["replicas"] == 1
    # One replica: the old pod stops before the new one starts.
    assert spec["strategy"] == {"type": "Recreate"}
    args = container(docs)["args"]
    assert "--all-namespaces" in args
    assert f"--peering={FULLNAME}" in args
    assert not any(d["kind"] == "PodDisruptionBudget" for d in docs)


def test_replicas_roll_one_at_a_time_under_a_disruption_budget() -> None:
    docs = render({"operator": {"replicas": 3}})
    strategy = deployment(docs)["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert (
        pdb["spec"]["selector"]["matchLabels"]
        == deployment(docs)["spec"]["selector"]["matchLabels"]
    )


def test_the_peering_object_is_a_post_install_hook_of_the_right_scope() -> None:
    peering = find(render(), "ClusterKopfPeering")
    assert peering["metadata"]["name"] == FULLNAME
    assert peering["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    crd = find(render(), "CustomResourceDefinition", "clusterkopfpeerings.kopf.dev")
    assert crd["spec"]["scope"] == "Cluster"

    docs = render({"operator": {"watchNamespaces": ["ai", "ml"]}, "peering": {"name": "p"}})
    peerings = [d for d in docs if d["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["ai", "ml"]
    assert {p["metadata"]["name"] for p in peerings} == {"p"}
    assert find(docs, "CustomResourceDefinition", "kopfpeerings.kopf.dev")["spec"]["scope"] == (
        "Namespaced"
    )
    assert "--peering=p" in container(docs)["args"]


def test_without_peering_there_are_no_peering_objects() -> None:
    docs = render({"peering": {"enabled": False}})
    assert not [d for d in docs if "kopf" in d["kind"].lower() or "kopf" in str(d["metadata"])]
    assert not any(a.startswith("--peering") for a in container(docs)["args"])


def test_watched_namespaces_get_roles_and_nothing_cluster_wide_about_policies() -> None:
    docs = render({"operator": {"watchNamespaces": ["ai", "ml"]}})
    args = container(docs)["args"]
    assert "--namespace=ai" in args
    assert "--namespace=ml" in args
    assert "--all-namespaces" not in args
    roles = {
        d["metadata"]["namespace"]: d
        for d in docs
        if d["kind"] == "Role" and d["metadata"]["name"] == FULLNAME
    }
    assert sorted(roles) == ["ai", "ml"]
    bindings = [d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == FULLNAME]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ai", "ml"]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
        ]
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert resources == {"customresourcedefinitions", "namespaces", "mutatingwebhookconfigurations"}


def _rules(docs: Sequence[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in {"Role", "ClusterRole"}:
            for rule in doc["rules"]:
                yield doc, rule


def test_rbac_has_no_wildcards_and_keeps_secrets_out_of_the_cluster_scoped_role() -> None:
    for variant in VARIANTS.values():
        docs = render(variant)
        for role, rule in _rules(docs):
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), (role["metadata"]["name"], rule)
            # Nothing may read every Secret of the cluster, except the policies' role.
            if role["kind"] == "ClusterRole" and not role["metadata"]["name"].endswith("-policies"):
                assert "secrets" not in rule["resources"]
                assert "configmaps" not in rule["resources"]


#: Where policies live, each resource with exactly the verbs the operator uses: what it
#: creates it then replaces or patches by name; what a policy names it only reads.
POLICY_RULES: Final = {
    ("powgate.dev", "powpolicies"): {"get", "list", "watch", "patch"},
    ("powgate.dev", "powpolicies/status"): {"get", "patch"},
    # list/watch: granted to sidecars by the policy's Role (the escalation check).
    ("", "configmaps"): {"get", "list", "watch", "create", "update", "patch"},
    ("", "secrets"): {"get", "create", "patch"},
    ("", "events"): {"create", "patch"},
    ("", "pods"): {"list", "watch"},
    ("networking.k8s.io", "networkpolicies"): {"get", "list", "create", "update", "delete"},
    ("rbac.authorization.k8s.io", "roles"): {"get", "create", "update"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"get", "create", "update"},
    ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
}


@pytest.mark.parametrize(
    ("values", "role"),
    [
        ({}, f"{NAMESPACE}-{FULLNAME}-policies"),
        ({"operator": {"watchNamespaces": ["ai"]}}, FULLNAME),
    ],
    ids=["cluster-wide", "namespaced"],
)
def test_the_policy_rules_grant_only_what_the_operator_uses(
    values: dict[str, Any], role: str
) -> None:
    """No Secret is listed, watched or deleted; nothing is deleted but NetworkPolicies."""
    (doc,) = [
        d
        for d in render(values)
        if d["kind"] in {"Role", "ClusterRole"} and d["metadata"]["name"] == role
    ]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in doc["rules"]:
        assert "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    # Namespaced peering objects only where the operator watches chosen namespaces.
    namespaced = "watchNamespaces" in values.get("operator", {})
    assert granted == {k: v for k, v in POLICY_RULES.items() if namespaced or k[0] != "kopf.dev"}
    # Without the webhook there are no injected pods to grant anything to.
    no_webhook = render({**values, "webhook": {"enabled": False}})
    rules = [r for d in no_webhook if d["metadata"]["name"] == role for r in d.get("rules", [])]
    assert not [r for r in rules if "rbac.authorization.k8s.io" in r["apiGroups"]]


def test_the_webhook_configuration_is_only_patchable_by_name() -> None:
    docs = render()
    webhook_config = find(docs, "MutatingWebhookConfiguration")
    name = webhook_config["metadata"]["name"]
    assert name == f"{NAMESPACE}-{FULLNAME}"
    (rule,) = [r for _, r in _rules(docs) if "mutatingwebhookconfigurations" in r["resources"]]
    assert rule["resourceNames"] == [name]
    assert env(docs)["POWGATE_WEBHOOK_CONFIGURATION"] == name


def test_webhook_defaults_fail_open_and_skip_system_namespaces() -> None:
    docs = render()
    hook, required = find(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    # Namespaces labelled `required` fail closed whatever the default.
    assert required["failurePolicy"] == "Fail"
    assert {"key": "powgate.dev/injection", "operator": "In", "values": ["required"]} in required[
        "namespaceSelector"
    ]["matchExpressions"]
    assert hook["timeoutSeconds"] == 5
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "operations": ["CREATE"],
            "scope": "Namespaced",
        }
    ]
    expressions = hook["namespaceSelector"]["matchExpressions"]
    assert {"key": "powgate.dev/injection", "operator": "In", "values": ["enabled"]} in expressions
    assert {
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["kube-system", NAMESPACE],
    } in expressions
    assert hook["objectSelector"]["matchExpressions"] == [
        {"key": "powgate.dev/inject", "operator": "NotIn", "values": ["false"]}
    ]
    service = find(docs, "Service", f"{FULLNAME}-webhook")
    assert hook["clientConfig"]["service"] == {
        "name": service["metadata"]["name"],
        "namespace": NAMESPACE,
        "path": "/inject",
        "port": service["spec"]["ports"][0]["port"],
    }
    # The operator manages the CA bundle: the chart must not own (and reset) it.
    assert "caBundle" not in hook["clientConfig"]
    assert "cert-manager.io/inject-ca-from" not in find(docs, "MutatingWebhookConfiguration")[
        "metadata"
    ].get("annotations", {})
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] == "webhook"
    assert ports["webhook"] == 8443


def test_failure_policy_and_timeout_are_configurable() -> None:
    docs = render({"webhook": {"failurePolicy": "Fail", "timeoutSeconds": 2}})
    for hook in find(docs, "MutatingWebhookConfiguration")["webhooks"]:
        assert hook["failurePolicy"] == "Fail"
        assert hook["timeoutSeconds"] == 2


def test_the_webhook_configuration_matches_what_the_operator_checks() -> None:
    """The chart's selectors and names are the operator's constants, not a second copy."""
    hooks = find(render(), "MutatingWebhookConfiguration")["webhooks"]
    own = WebhookOptions(
        listen=("0.0.0.0", 8443),
        configuration="x",
        operator_namespace=NAMESPACE,
        sidecar=SidecarTemplate(image="i", operator_namespace=NAMESPACE),
        service=(NAMESPACE, "x", 443),
    ).configuration_body(ca_bundle=b"")
    assert len(hooks) == len(HOOKS) == len(own["webhooks"])
    for hook, spec, theirs in zip(hooks, HOOKS, own["webhooks"], strict=True):
        assert hook["name"] == spec.name == theirs["name"]
        assert hook["clientConfig"]["service"]["path"] == f"/{spec.handler}"
        assert theirs["clientConfig"]["service"]["path"] == f"/{spec.handler}"
        assert {"key": NAMESPACE_LABEL, "operator": "In", "values": [spec.label_value]} in hook[
            "namespaceSelector"
        ]["matchExpressions"]
        assert theirs["namespaceSelector"]["matchLabels"] == {NAMESPACE_LABEL: spec.label_value}
        assert hook["objectSelector"] == theirs["objectSelector"]
        assert hook["objectSelector"]["matchExpressions"] == [
            {"key": OPT_OUT_LABEL, "operator": "NotIn", "values": ["false"]}
        ]
        # Admission writes nothing: declared as the operator's own body does.
        assert hook["sideEffects"] == theirs["sideEffects"] == "None"
    assert [spec.label_value for spec in HOOKS] == [NAMESPACE_LABEL_VALUE, NAMESPACE_LABEL_REQUIRED]


def test_cert_manager_issues_the_certificate_and_injects_the_ca() -> None:
    docs = render({"certManager": {"enabled": True}})
    certificate = find(docs, "Certificate")
    issuer = find(docs, "Issuer")
    webhook_config = find(docs, "MutatingWebhookConfiguration")
    service = find(docs, "Service", f"{FULLNAME}-webhook")
    meta = certificate["metadata"]
    assert webhook_config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{meta['namespace']}/{meta['name']}"
    )
    assert certificate["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
    assert f"{service['metadata']['name']}.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    volumes = {v["name"]: v for v in deployment(docs)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["webhook-tls"]["secret"]["secretName"] == certificate["spec"]["secretName"]
    mount = {m["name"]: m for m in container(docs)["volumeMounts"]}["webhook-tls"]
    opts = webhook_options_of(docs)
    assert opts.cert_manager is True
    assert opts.cert_dir == Path(mount["mountPath"])


def test_cert_manager_with_an_existing_issuer_creates_none() -> None:
    docs = render(
        {"certManager": {"enabled": True, "issuerRef": {"name": "corp", "kind": "ClusterIssuer"}}}
    )
    assert not any(d["kind"] == "Issuer" for d in docs)
    assert find(docs, "Certificate")["spec"]["issuerRef"] == {
        "name": "corp",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


def test_without_the_webhook_nothing_of_it_is_rendered() -> None:
    docs = render({"webhook": {"enabled": False}})
    assert not any(d["kind"] == "MutatingWebhookConfiguration" for d in docs)
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Service"] == [
        f"{FULLNAME}-metrics"
    ]
    assert not any(name.startswith("POWGATE_WEBHOOK") for name in env(docs))
    assert not [r for _, r in _rules(docs) if "roles" in r["resources"]]


def test_sidecar_settings_reach_the_operator_and_restart_it_when_changed() -> None:
    docs = render()
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    injection = webhook_options_of(docs).sidecar
    assert injection.image == f"powgate-sidecar:{chart['appVersion']}"
    assert injection.resources["limits"] == {"memory": "256Mi"}
    assert injection.metrics_port == 9480
    # The derivation pool is the sidecar's to size from its CPU limit unless told.
    assert (injection.derivation_threads, injection.derivations_pending) == (None, None)
    assert not {"POWGATE_SIDECAR_DERIVATION_THREADS", "POWGATE_SIDECAR_DERIVATIONS_PENDING"} & {
        e["name"] for e in container(docs)["env"]
    }
    digest = "sha256:" + "a" * 64
    changed = render(
        {
            "sidecar": {
                "image": {"digest": digest, "pullPolicy": "Always"},
                "logLevel": "debug",
                "mode": "container",
                "resources": {"requests": {"cpu": "250m"}, "limits": {"memory": "1Gi"}},
                "derivationThreads": 3,
                "derivationsPending": 12,
            }
        }
    )
    opts = webhook_options_of(changed)
    assert opts.sidecar.image == f"powgate-sidecar@{digest}"
    assert opts.sidecar.image_pull_policy == "Always"
    assert opts.sidecar.log_level == "debug"
    assert opts.sidecar.native_sidecar is False
    assert opts.sidecar_mode == "container"
    assert (opts.sidecar.derivation_threads, opts.sidecar.derivations_pending) == (3, 12)
    # Helm merges with the defaults: the memory request stays.
    assert opts.sidecar.resources == {
        "requests": {"cpu": "250m", "memory": "64Mi"},
        "limits": {"memory": "1Gi"},
    }
    # The settings are in the pod template, so changing them rolls the operator.
    template = deployment(docs)["spec"]["template"]
    assert template != deployment(changed)["spec"]["template"]


# -- the chart and the operator's parser agree ------------------------------------

#: What the kubelet would put into fieldRef variables.
POD_IP = "10.244.1.9"
_FIELDS = {
    "metadata.name": f"{FULLNAME}-5d9c7b-x2x4q",
    "metadata.namespace": NAMESPACE,
    "status.podIP": POD_IP,
}
#: Variables read by something other than the operator's parser (kopf: the peering
#: identity; the pod's address, expanded by the kubelet into listen addresses).
_NOT_FLAGS = {"POD_ID", "POD_IP"}


def operator_args(docs: Sequence[dict[str, Any]]) -> argparse.Namespace:
    """The Deployment's args and env through the operator's real parser, as in the pod."""
    main = container(docs)
    values = kubelet_environment(main.get("env", []), fields=_FIELDS)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POWGATE_")}
    args = [kubelet_expand(a, values) for a in main["args"]]
    with mock.patch.dict(os.environ, {**clean, **values}, clear=True):
        parser = argparse.ArgumentParser(prog="powgate")
        add_command(parser.add_subparsers(dest="command", required=True))
        return parser.parse_args(["operator", *args])


def parse_operator(docs: Sequence[dict[str, Any]]) -> WebhookOptions | None:
    return webhook_options(operator_args(docs))


def test_prometheus_credentials_go_only_where_the_administrator_says() -> None:
    assert operator_args(render()).prometheus_credential_addresses.entries == ()
    allowed = ["http://prometheus.monitoring.svc:9090", "https://thanos.example"]
    args = operator_args(render({"operator": {"prometheusCredentialAddresses": allowed}}))
    assert args.prometheus_credential_addresses.entries == tuple(allowed)
    with pytest.raises(RenderError, match="prometheusCredentialAddresses"):
        render({"operator": {"prometheusCredentialAddresses": ["prometheus:9090"]}})


def webhook_options_of(docs: Sequence[dict[str, Any]]) -> WebhookOptions:
    opts = parse_operator(docs)
    assert opts is not None
    return opts


def _operator_env_names() -> set[str]:
    parser = argparse.ArgumentParser(prog="powgate")
    add_command(parser.add_subparsers(dest="command", required=True))
    (subparser,) = [
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    ]  # the documented way to reach a subcommand's help
    text = subparser.choices["operator"].format_help()
    return set(re.findall(r"\[env (POWGATE_[A-Z_]+)\]", re.sub(r"\s+", " ", text)))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_setting_the_chart_passes_is_one_the_operator_reads(variant: str) -> None:
    docs = render(VARIANTS[variant])
    names = {e["name"] for e in container(docs).get("env", [])}
    assert names - _operator_env_names() - _NOT_FLAGS == set()
    opts = parse_operator(docs)  # an unknown flag would exit here
    webhook = VARIANTS[variant].get("webhook", {}).get("enabled", True)
    assert (opts is not None) == webhook
    if opts is None:
        return
    hook_config = find(docs, "MutatingWebhookConfiguration")
    hook = hook_config["webhooks"][0]
    service = hook["clientConfig"]["service"]
    assert opts.service == (service["namespace"], service["name"], service["port"])
    assert opts.configuration == hook_config["metadata"]["name"]
    assert opts.create_configuration is False  # the chart owns it
    assert opts.operator_namespace == NAMESPACE
    assert opts.listen == (POD_IP, container_port(docs, "webhook"))
    if opts.cert_manager:
        assert find(docs, "Certificate")["spec"]["secretName"] == secret_volume(docs)
    else:
        (rule,) = [
            r
            for d in docs
            if d["kind"] == "Role" and d["metadata"]["name"] == f"{FULLNAME}-webhook"
            for r in d["rules"]
            if r.get("resourceNames")
        ]
        assert rule["resourceNames"] == [opts.tls_secret]
        assert opts.cert_lifetime.days == 90


def container_port(docs: Sequence[dict[str, Any]], name: str) -> int:
    return int({p["name"]: p["containerPort"] for p in container(docs)["ports"]}[name])


def secret_volume(docs: Sequence[dict[str, Any]]) -> str:
    volumes = {v["name"]: v for v in deployment(docs)["spec"]["template"]["spec"]["volumes"]}
    return str(volumes["webhook-tls"]["secret"]["secretName"])


def test_the_parser_check_fails_on_a_variable_the_operator_does_not_read() -> None:
    """The check above can fail: a misspelled variable is caught."""
    docs = render()
    container(docs)["env"].append({"name": "POWGATE_WEBHOOK_LISTENN", "value": "x"})
    names = {e["name"] for e in container(docs)["env"]}
    assert names - _operator_env_names() - _NOT_FLAGS == {"POWGATE_WEBHOOK_LISTENN"}


def test_operator_image_tag_defaults_to_the_app_version_and_digest_wins() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert container(render())["image"] == f"powgate-operator:{chart['appVersion']}"
    assert container(render({"operator": {"image": {"tag": "1.2.3"}}}))["image"] == (
        "powgate-operator:1.2.3"
    )
    digest = "sha256:" + "b" * 64
    assert (
        container(render({"operator": {"image": {"tag": "1.2.3", "digest": digest}}}))["image"]
        == f"powgate-operator@{digest}"
    )


def test_the_operator_runs_locked_down_with_probes() -> None:
    docs = render()
    pod = deployment(docs)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    main = container(docs)
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert env(docs)["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}


@pytest.mark.parametrize(("bind", "host"), [("", POD_IP), ("0.0.0.0", "0.0.0.0"), ("::", "::")])
def test_the_operators_listeners_bind_the_pods_own_address_unless_told(
    bind: str, host: str
) -> None:
    """Metrics, health and webhook listen where the kubelet, Prometheus and the API server
    reach the pod, not on every address (loopback included) unless the values say so."""
    args = operator_args(render({"operator": {"bindAddress": bind}}))
    assert args.metrics_listen == (host, 9090)
    assert args.health_listen == (host, 8081)
    opts = webhook_options(args)
    assert opts is not None
    assert opts.listen == (host, 8443)
    with pytest.raises(RenderError, match="bindAddress"):
        render({"operator": {"bindAddress": "$(HOSTNAME)"}})


# -- CRDs -------------------------------------------------------------------------


def test_the_charts_crd_copy_matches_the_generated_crd() -> None:
    """`make chart-crds` copies crds/powpolicy.yaml into the chart; they must not drift."""
    copy = (CHART / "files" / "powpolicy.yaml").read_text()
    assert copy == (ROOT / "crds" / "powpolicy.yaml").read_text()


def test_the_rendered_crd_is_the_generated_one_and_kept_on_uninstall() -> None:
    crd = find(render(), "CustomResourceDefinition", "powpolicies.powgate.dev")
    generated = yaml.safe_load((ROOT / "crds" / "powpolicy.yaml").read_text())
    # Byte-for-byte equal after a YAML round trip: helm's number handling changed nothing.
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for key, value in generated["metadata"].get("annotations", {}).items():
        assert crd["metadata"]["annotations"][key] == value


def test_crds_can_be_left_out_or_left_to_uninstall() -> None:
    names = [
        d["metadata"]["name"]
        for d in render({"crds": {"install": False}})
        if d["kind"] == "CustomResourceDefinition"
    ]
    assert names == ["clusterkopfpeerings.kopf.dev"]
    crd = find(
        render({"crds": {"keep": False}}), "CustomResourceDefinition", "powpolicies.powgate.dev"
    )
    assert "helm.sh/resource-policy" not in crd["metadata"]["annotations"]


# -- metrics, monitoring, dashboard ---------------------------------------------


def test_monitoring_objects_need_the_prometheus_operator() -> None:
    values = {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
        }
    }
    monitoring_kinds = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert not monitoring_kinds & set(kinds(render(values)))
    docs = render(values, api_versions=[MONITORING])
    assert monitoring_kinds <= set(kinds(docs))
    monitor = find(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    service = find(docs, "Service", f"{FULLNAME}-metrics")
    for key, value in monitor["spec"]["selector"]["matchLabels"].items():
        assert service["metadata"]["labels"][key] == value
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    pod_monitor = find(docs, "PodMonitor")
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    # Nothing is rendered for a disabled option even when the CRDs exist.
    assert not monitoring_kinds & set(kinds(render(api_versions=[MONITORING])))


def _metric_names() -> set[str]:
    """Every series name the sidecar and the operator export (with _total/_bucket forms)."""
    from prometheus_client import REGISTRY, CollectorRegistry

    import powgate_operator._metrics  # noqa: F401  (registers the operator's metrics)
    from powgate_sidecar._metrics import Metrics, PricingCollector

    sidecar = Metrics().registry
    # Read at scrape time by the sidecar (which registers it): described without a view.
    sidecar.register(PricingCollector(lambda: None, clock=lambda: 0.0))
    registries: list[CollectorRegistry] = [sidecar, REGISTRY]
    # The registry's own index of names: it covers metrics that have no samples yet.
    return {
        name
        for registry in registries
        for names in registry._collector_to_names.values()
        for name in names
    }


_METRIC = re.compile(r"\b(powgate_[a-z_]+)")


def test_dashboard_and_alerts_query_only_metrics_that_exist() -> None:
    docs = render({"metrics": {"prometheusRule": {"enabled": True}}}, api_versions=[MONITORING])
    dashboard = json.loads(find(docs, "ConfigMap", f"{FULLNAME}-dashboard")["data"]["powgate.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [r["expr"] for g in find(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in _METRIC.findall(e)}
    assert used
    assert used - _metric_names() == set()


def test_the_dashboard_shows_difficulty_reasons_rollout_and_queue() -> None:
    cm = find(render(), "ConfigMap", f"{FULLNAME}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["powgate.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for needle in (
        "powgate_difficulty",
        'outcome="admitted"',
        "by (outcome, reason)",
        "powgate_config_info",
        "powgate_queue_depth",
        "powgate_queue_wait_seconds_bucket",
    ):
        assert needle in exprs
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_dashboard_shows_who_pays() -> None:
    """Per-client pricing: factors, concentration, trusted callers, counting across sidecars."""
    dashboard = json.loads(
        find(render(), "ConfigMap", f"{FULLNAME}-dashboard")["data"]["powgate.json"]
    )
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for needle in (
        "powgate_price_factor_bucket",
        "powgate_top_clients_share",
        "powgate_trusted_requests_total",
        "powgate_shared_rates_up",
        "powgate_shared_rate_fallback_requests_total",
    ):
        assert needle in exprs
    # No two panels in one place.
    places = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in dashboard["panels"]]
    assert len(places) == len(set(places))


def test_network_policy_opens_the_webhook_and_limits_metrics() -> None:
    docs = render(
        {
            "networkPolicy": {
                "enabled": True,
                "metricsNamespaceSelector": {"matchLabels": {"m": "1"}},
            }
        }
    )
    policy = find(docs, "NetworkPolicy")
    by_port = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
    assert "from" not in by_port["webhook"]
    assert by_port["metrics"]["from"] == [{"namespaceSelector": {"matchLabels": {"m": "1"}}}]
    container_ports = {p["name"] for p in container(docs)["ports"]}
    assert set(by_port) <= container_ports


def test_a_default_replay_store_reaches_the_operator_as_the_model_reads_it() -> None:
    """The chart points at an existing Redis/Valkey; it installs none."""
    assert operator_args(render()).default_replay_store is None
    values = {
        "replayStore": {
            "address": "valkey.cache.svc.cluster.local:6379",
            "tls": True,
            "whenUnavailable": "FallBackToLocal",
        }
    }
    docs = render(values)
    store = operator_args(docs).default_replay_store
    assert store == ReplayStoreSpec(
        address="valkey.cache.svc.cluster.local:6379",
        tls=True,
        when_unavailable=StoreOutage.FALL_BACK_TO_LOCAL,
    )
    kinds = {d["kind"] for d in docs}
    assert "StatefulSet" not in kinds  # no Redis of the chart's own
    assert operator_args(docs).replay_store_addresses.allows("anywhere:6379")
    listed = {"replayStore": {**values["replayStore"], "allowedAddresses": ["valkey.b:6379"]}}
    addresses = operator_args(render(listed)).replay_store_addresses
    assert addresses.allows("valkey.b:6379")
    assert not addresses.allows("anywhere:6379")
    with pytest.raises(RenderError, match="replayStore"):
        render({"replayStore": {"allowedAddresses": ["redis://valkey:6379"]}})
    with pytest.raises(RenderError, match="replayStore"):
        render({"replayStore": {"address": "redis://valkey:6379"}})
    with pytest.raises(RenderError, match="replayStore"):
        render({"replayStore": {"whenUnavailable": "Ignore"}})


CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_the_webhook_answers_only_the_api_servers_certificate_when_given_its_ca(
    tmp_path: Path,
) -> None:
    """The CA reaches the operator as a mounted file; the names as a variable it reads."""
    assert "POWGATE_WEBHOOK_CLIENT_CA" not in env(render())
    values = {"webhook": {"clientAuth": {"caBundle": CA_PEM, "names": ["kube-apiserver"]}}}
    docs = render(values)
    config_map = find(docs, "ConfigMap", f"{FULLNAME}-webhook-client-ca")
    assert config_map["data"]["ca.crt"].strip() == CA_PEM.strip()
    pod = deployment(docs)["spec"]["template"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["webhook-client-ca"]["configMap"]["name"] == config_map["metadata"]["name"]
    (mount,) = [m for m in container(docs)["volumeMounts"] if m["name"] == "webhook-client-ca"]
    variables = env(docs)
    assert Path(variables["POWGATE_WEBHOOK_CLIENT_CA"]).parent == Path(mount["mountPath"])
    # A new CA rolls the pods (the server reads it at start).
    assert "checksum/webhook-client-ca" in pod["metadata"]["annotations"]
    # Through the operator's parser, with the mounted file where the kubelet puts it.
    local = tmp_path / "ca.crt"
    local.write_text(CA_PEM)
    container(docs)["env"] = [
        e if e["name"] != "POWGATE_WEBHOOK_CLIENT_CA" else {**e, "value": str(local)}
        for e in container(docs)["env"]
    ]
    opts = parse_operator(docs)
    assert opts is not None
    assert (opts.client_ca, opts.client_names) == (local, ("kube-apiserver",))
    with pytest.raises(RenderError, match=r"clientAuth\.names needs"):
        render({"webhook": {"clientAuth": {"names": ["kube-apiserver"]}}})
    with pytest.raises(RenderError, match="caBundle"):
        render({"webhook": {"clientAuth": {"caBundle": "not a certificate"}}})
