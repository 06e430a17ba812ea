"""The operator's RBAC grants and the injector's writes against the in-memory cluster.

Grants bind exactly the accounts of the pods that exist; several operator
replicas renew certificates at once: these tests play the other writer (a
write between our read and our write) and the API server's failures.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
from typing import Any

import kopf
import pytest

from memory_cluster import MemoryCluster
from powgate.policy import LabelSelector
from powgate_operator import _metrics as metrics
from powgate_operator._cluster import (
    MUTATING_WEBHOOK_CONFIGURATIONS,
    POW_POLICIES,
    ROLE_BINDINGS,
    ROLES,
    SECRETS,
    ConflictError,
    NotFoundError,
    UnavailableError,
)
from powgate_operator._grants import write_grants
from powgate_operator._inject import PolicyRef, SidecarTemplate
from powgate_operator._objects import (
    HOOKS,
    ForeignObjectError,
    role_binding_body,
    role_body,
    role_name,
)
from powgate_operator._options import WebhookOptions
from powgate_operator._policy_listing import PolicyListing
from powgate_operator._webhook_certs import WebhookTLS
from powgate_operator._webhook_registration import register, sync_tls
from powgate_operator.webhook import admit, policies_of

NS = "ai"
POLICY = PolicyRef(
    namespace=NS, name="llm", uid="u-1", selector=LabelSelector(match_labels={"app": "llm"})
)
TEMPLATE = SidecarTemplate(image="powgate/sidecar:test", operator_namespace="powgate-system")
OPTIONS = WebhookOptions(
    listen=("0.0.0.0", 8443),
    configuration="powgate-injector",
    operator_namespace="powgate-system",
    sidecar=TEMPLATE,
    service=("powgate-system", "powgate", 443),
)
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
LIFETIME = dt.timedelta(days=90)


def subjects(cluster: MemoryCluster) -> list[str]:
    binding = cluster.stored(ROLE_BINDINGS, role_name("llm"), NS)
    return [s["name"] for s in binding["subjects"]]


def other_writer_binds(account: str) -> Any:
    """A write by someone else between our read and our write: ``account`` is bound."""

    def act(cluster: MemoryCluster) -> None:
        cluster.put(ROLE_BINDINGS, role_binding_body(OWNER, [account]))

    return act


# -- grants: exactly the accounts of the pods that carry the sidecar ----------------------

OWNER = POLICY.metadata()


async def test_grants_create_the_role_and_bind_exactly_the_accounts_given() -> None:
    cluster = MemoryCluster()
    await write_grants(cluster, OWNER, {"web", "model"})
    assert cluster.has(ROLES, role_name("llm"), NS)
    assert subjects(cluster) == ["model", "web"]
    await write_grants(cluster, OWNER, {"model"})  # web's last pod went: pruned
    assert subjects(cluster) == ["model"]
    writes = len(cluster.calls)
    await write_grants(cluster, OWNER, {"model"})
    assert [c for c in cluster.calls[writes:] if c.verb != "get"] == []  # nothing to change
    await write_grants(cluster, OWNER, set())
    assert subjects(cluster) == []


async def test_no_pods_no_objects() -> None:
    cluster = MemoryCluster()
    await write_grants(cluster, OWNER, set())
    assert not cluster.has(ROLES, role_name("llm"), NS)
    assert not cluster.has(ROLE_BINDINGS, role_name("llm"), NS)


async def test_a_binding_raced_by_another_writer_ends_as_the_pods_say() -> None:
    cluster = MemoryCluster()
    await write_grants(cluster, OWNER, {"model"})
    cluster.inject("replace", ROLE_BINDINGS, before=other_writer_binds("intruder"))
    await write_grants(cluster, OWNER, {"model", "web"})
    assert subjects(cluster) == ["model", "web"]
    assert cluster.count("replace", "RoleBinding") == 2  # the stale one, then the retry


async def test_a_role_written_by_an_older_operator_gets_todays_rules() -> None:
    cluster = MemoryCluster()
    old = role_body(OWNER)
    old["rules"] = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    cluster.put(ROLES, old)
    await write_grants(cluster, OWNER, {"model"})
    rules = cluster.stored(ROLES, role_name("llm"), NS)["rules"]
    assert [r["resources"] for r in rules] == [["configmaps"]]


@pytest.mark.parametrize("kind", [ROLES, ROLE_BINDINGS])
async def test_a_role_or_binding_the_operator_did_not_create_is_never_adopted(
    kind: Any,
) -> None:
    """Someone who may create Roles in the namespace pre-creates the policy's names, e.g. a
    binding to a role of theirs: the operator would otherwise add accounts to it."""
    cluster = MemoryCluster()
    foreign = (role_body if kind is ROLES else role_binding_body)(
        OWNER, *(() if kind is ROLES else (["someone"],))
    )
    foreign["metadata"]["labels"] = {}
    foreign["metadata"]["ownerReferences"] = []
    if kind is ROLE_BINDINGS:
        foreign["roleRef"]["name"] = "cluster-admin-ish"
    cluster.put(kind, foreign)
    before = cluster.stored(kind, role_name("llm"), NS)
    with pytest.raises(ForeignObjectError, match="not created by the operator"):
        await write_grants(cluster, OWNER, {"model"})
    assert cluster.stored(kind, role_name("llm"), NS) == before


async def test_a_binding_of_ours_that_now_binds_another_role_is_refused() -> None:
    cluster = MemoryCluster()
    await write_grants(cluster, OWNER, {"model"})
    binding = cluster.stored(ROLE_BINDINGS, role_name("llm"), NS)
    binding["roleRef"]["name"] = "edit"
    cluster.put(ROLE_BINDINGS, binding)
    with pytest.raises(ForeignObjectError, match="binds another role"):
        await write_grants(cluster, OWNER, {"model", "web"})


async def test_a_binding_that_never_settles_gives_up_with_a_conflict() -> None:
    cluster = MemoryCluster()
    await write_grants(cluster, OWNER, {"model"})
    cluster.inject("replace", ROLE_BINDINGS, error=ConflictError("modified", status=409), times=9)
    with pytest.raises(ConflictError, match="kept changing"):
        await write_grants(cluster, OWNER, {"model", "web"})


# -- admission writes nothing ------------------------------------------------------------


def pod() -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": NS, "labels": {"app": "llm"}},
        "spec": {
            "serviceAccountName": "model",
            "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8000}]}],
        },
    }


async def test_admission_injects_and_writes_nothing() -> None:
    """A review, forged or real, dry or not, grants nothing: grants follow pods that exist."""
    patch: kopf.Patch = kopf.Patch()
    warnings: list[str] = []
    await admit(pod=pod(), policies=[POLICY], template=TEMPLATE, patch=patch, warnings=warnings)
    assert patch.fns, "the pod is injected"
    assert warnings == []


@pytest.mark.parametrize(
    ("change", "skip"),
    [
        (lambda p: p["spec"]["containers"][0].pop("ports"), "no container port"),
        (lambda p: p["spec"].__setitem__("hostNetwork", True), "hostNetwork"),
    ],
)
async def test_a_namespace_that_requires_the_sidecar_refuses_a_pod_it_cannot_protect(
    change: Any, skip: str
) -> None:
    """Labelled `required`: a selected pod never runs unprotected; elsewhere it is admitted."""
    source = pod()
    change(source)
    patch: kopf.Patch = kopf.Patch()
    await admit(pod=source, policies=[POLICY], template=TEMPLATE, patch=patch, warnings=[])
    assert not patch.fns  # `enabled`: admitted as sent
    with pytest.raises(kopf.AdmissionError, match=skip) as refused:
        await admit(
            pod=source,
            policies=[POLICY],
            template=TEMPLATE,
            patch=patch,
            warnings=[],
            required=True,
        )
    assert refused.value.code == 403
    # A pod no policy selects is none of its business, required or not.
    other = pod()
    other["metadata"]["labels"] = {"app": "other"}
    await admit(
        pod=other, policies=[POLICY], template=TEMPLATE, patch=patch, warnings=[], required=True
    )


# -- the TLS Secret: first writer wins -------------------------------------------------


async def test_certificates_are_issued_once_and_then_reused() -> None:
    cluster = MemoryCluster()
    first = await sync_tls(cluster, OPTIONS, now=NOW, lifetime=LIFETIME)
    again = await sync_tls(cluster, OPTIONS, now=NOW, lifetime=LIFETIME)
    assert again == first
    assert cluster.count("create", "Secret") == 1
    assert cluster.count("replace", "Secret") == 0


async def test_the_secret_is_owned_by_the_webhook_configuration_so_uninstalling_removes_it() -> (
    None
):
    cluster = MemoryCluster()
    await sync_tls(cluster, OPTIONS, now=NOW, lifetime=LIFETIME)
    stored = cluster.stored(SECRETS, OPTIONS.tls_secret, OPTIONS.operator_namespace)
    assert stored["metadata"]["ownerReferences"] == []  # no configuration yet: nothing to own it
    # The chart installs the configuration; the next sync hands the Secret to it.
    cluster.put(
        MUTATING_WEBHOOK_CONFIGURATIONS,
        {"metadata": {"name": OPTIONS.configuration, "uid": "mwc-1"}, "webhooks": []},
    )
    tls = await sync_tls(cluster, OPTIONS, now=NOW, lifetime=LIFETIME)
    stored = cluster.stored(SECRETS, OPTIONS.tls_secret, OPTIONS.operator_namespace)
    (owner,) = stored["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "MutatingWebhookConfiguration",
        OPTIONS.configuration,
        "mwc-1",
    )
    assert WebhookTLS.from_secret_data(stored["data"]) == tls  # the same certificates
    await sync_tls(cluster, OPTIONS, now=NOW, lifetime=LIFETIME)
    assert cluster.count("replace", "Secret") == 1  # and no write once it is owned


async def test_a_replica_that_loses_the_race_serves_the_winners_certificates() -> None:
    cluster = MemoryCluster()
    winner = await sync_tls(MemoryCluster(), OPTIONS, now=NOW, lifetime=LIFETIME)

    def other_replica_stores(c: MemoryCluster) -> None:
        c.put(
            SECRETS,
            {
                "metadata": {"name": OPTIONS.tls_secret, "namespace": OPTIONS.operator_namespace},
                "data": winner.to_secret_data(),
            },
        )

    cluster.inject("create", SECRETS, before=other_replica_stores)
    assert await sync_tls(cluster, OPTIONS, now=NOW, lifetime=LIFETIME) == winner


async def test_a_damaged_secret_is_replaced() -> None:
    cluster = MemoryCluster()
    cluster.put(
        SECRETS,
        {
            "metadata": {"name": OPTIONS.tls_secret, "namespace": OPTIONS.operator_namespace},
            "data": {"tls.crt": "%%%"},
        },
    )
    tls = await sync_tls(cluster, OPTIONS, now=NOW, lifetime=LIFETIME)
    stored = cluster.stored(SECRETS, OPTIONS.tls_secret, OPTIONS.operator_namespace)
    assert WebhookTLS.from_secret_data(stored["data"]) == tls


async def test_an_outage_while_renewing_raises_for_the_retry_loop() -> None:
    cluster = MemoryCluster()
    cluster.inject("get", SECRETS, error=UnavailableError("timed out"))
    with pytest.raises(UnavailableError):
        await sync_tls(cluster, OPTIONS, now=NOW, lifetime=LIFETIME)


# -- the caBundle -----------------------------------------------------------------------


def chart_configuration() -> dict[str, Any]:
    body = OPTIONS.configuration_body(ca_bundle=b"")
    for hook in body["webhooks"]:
        hook["clientConfig"].pop("caBundle")
    return body


async def test_only_the_ca_bundle_of_the_charts_configuration_is_patched() -> None:
    cluster = MemoryCluster()
    cluster.put(MUTATING_WEBHOOK_CONFIGURATIONS, chart_configuration())
    await register(cluster, OPTIONS, ca_bundle=b"CA")
    stored = cluster.stored(MUTATING_WEBHOOK_CONFIGURATIONS, OPTIONS.configuration)
    hooks = stored["webhooks"]
    assert [h["clientConfig"]["caBundle"] for h in hooks] == [base64.b64encode(b"CA").decode()] * 2
    assert [h["name"] for h in hooks] == [hook.name for hook in HOOKS]
    await register(cluster, OPTIONS, ca_bundle=b"CA")
    assert cluster.count("patch") == 1  # already current: nothing to write


async def test_a_missing_configuration_is_named() -> None:
    with pytest.raises(NotFoundError, match="install it with the chart"):
        await register(MemoryCluster(), OPTIONS, ca_bundle=b"CA")


async def test_without_the_chart_the_operator_writes_the_whole_configuration() -> None:
    cluster = MemoryCluster()
    options = dataclasses.replace(OPTIONS, create_configuration=True)
    await register(cluster, options, ca_bundle=b"CA1")
    await register(cluster, options, ca_bundle=b"CA2")
    stored = cluster.stored(MUTATING_WEBHOOK_CONFIGURATIONS, OPTIONS.configuration)
    assert stored["webhooks"][0]["clientConfig"]["caBundle"] == base64.b64encode(b"CA2").decode()


# -- the policies an admission sees ------------------------------------------------------


def put_policy(cluster: MemoryCluster, name: str, namespace: str = NS, **meta: Any) -> None:
    cluster.put(
        POW_POLICIES,
        {
            "metadata": {"name": name, "namespace": namespace, **meta},
            "spec": {"selector": {"matchLabels": {"app": "llm"}}},
        },
    )


async def test_an_admission_sees_the_policies_as_they_are_at_that_moment() -> None:
    cluster = MemoryCluster()
    listing = PolicyListing(cluster, [NS])
    put_policy(cluster, "old")
    assert [p.name for p in await listing.in_namespace(NS)] == ["old"]
    # Deleted and replaced between two admissions: the next one sees only the new one.
    del cluster.objects[(POW_POLICIES.plural, NS, "old")]
    put_policy(cluster, "new")
    assert [p.name for p in await listing.in_namespace(NS)] == ["new"]


async def test_a_policy_being_deleted_selects_nothing() -> None:
    cluster = MemoryCluster()
    put_policy(cluster, "going", deletionTimestamp="2030-01-01T00:00:00Z", finalizers=["x"])
    put_policy(cluster, "staying")
    assert [p.name for p in await PolicyListing(cluster, None).in_namespace(NS)] == ["staying"]


async def test_namespaces_outside_the_operators_scope_are_not_read() -> None:
    cluster = MemoryCluster()
    put_policy(cluster, "llm", namespace="elsewhere")
    assert await PolicyListing(cluster, [NS]).in_namespace("elsewhere") == []
    assert cluster.calls == []


@pytest.mark.parametrize(
    ("failure_policy", "refused"), [("Fail", True), ("Ignore", False)], ids=["Fail", "Ignore"]
)
async def test_unreadable_policies_follow_the_failure_policy(
    failure_policy: str, refused: bool
) -> None:
    cluster = MemoryCluster()
    put_policy(cluster, "llm")
    cluster.inject("list", POW_POLICIES, error=UnavailableError("timed out"))
    before = metrics.POLICY_LISTING_ERRORS._value.get()
    warnings: list[str] = []
    listing = PolicyListing(cluster, [NS])
    if refused:
        with pytest.raises(kopf.AdmissionError, match="could not be read") as caught:
            await policies_of(NS, listing=listing, failure_policy=failure_policy, warnings=warnings)
        assert caught.value.code == 503
    else:
        found = await policies_of(
            NS, listing=listing, failure_policy=failure_policy, warnings=warnings
        )
        assert found is None
        assert warnings == ["powgate: not injected: the PowPolicies could not be read"]
    assert metrics.POLICY_LISTING_ERRORS._value.get() == before + 1
    # The next admission reads again.
    assert [p.name for p in await listing.in_namespace(NS)] == ["llm"]
