"""What the operator needs to know of pods, as pure facts kept per namespace.

kopf indexes every pod of the operator's namespaces into :class:`PodFacts`
(:func:`pod_facts`); handlers and the reconciler read them through a
:class:`PodView`. They tell which pods carry a policy's sidecar (their
service accounts are granted read access to its config, and nothing else
is), which selected pods run without one (reported), and which ports the
policy's NetworkPolicy must leave open.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from powgate.contract import (
    INJECTED_ANNOTATION,
    OPT_OUT_LABEL,
    POLICY_LABEL,
    SIDECAR_NAME,
    SidecarFlag,
)
from powgate.policy import LabelSelector

from ._inject import selector_matches

__all__ = ["PodFacts", "PodView", "Port", "Unprotected", "injected_accounts", "pod_facts"]

#: Phases in which no container runs any more.
_FINISHED = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True, slots=True)
class Port:
    """A container port as declared: by name when it has one, always by number."""

    number: int
    protocol: str = "TCP"
    name: str = ""


class Unprotected(enum.StrEnum):
    """Why a selected pod runs without the sidecar (a metric label and a status field)."""

    OPTED_OUT = "OptedOut"
    HOST_NETWORK = "HostNetwork"
    NOT_INJECTED = "NotInjected"


@dataclass(frozen=True, slots=True)
class PodFacts:
    """One pod, reduced to what policies care about."""

    name: str
    labels: Mapping[str, str]
    service_account: str
    #: The policy whose sidecar the pod carries ("" none): the injector's annotation and
    #: label, and a container of the sidecar's name, all three.
    sidecar_of: str
    #: Its containers have stopped for good (Succeeded or Failed).
    finished: bool
    opted_out: bool
    host_network: bool
    #: What the sidecar answers on (its own ports), and the other declared ports but the
    #: one the sidecar took over.
    sidecar_ports: tuple[Port, ...] = ()
    other_ports: tuple[Port, ...] = ()

    def unprotected(self, policy: str, selector: LabelSelector) -> Unprotected | None:
        """Why ``policy`` selects this running pod yet it has no sidecar; None otherwise."""
        if self.finished or self.sidecar_of or not selector_matches(selector, self.labels):
            return None
        if self.opted_out:
            return Unprotected.OPTED_OUT
        if self.host_network:
            return Unprotected.HOST_NETWORK
        return Unprotected.NOT_INJECTED


class PodView(Protocol):
    """The pods of one namespace, as last seen."""

    def in_namespace(self, namespace: str) -> Sequence[PodFacts]: ...


def injected_accounts(pods: Iterable[PodFacts], policy: str) -> set[str]:
    """Service accounts of the running pods that carry ``policy``'s sidecar."""
    return {p.service_account for p in pods if p.sidecar_of == policy and not p.finished}


def pod_facts(body: Mapping[str, Any]) -> PodFacts | None:
    """The facts of a pod manifest; None for one without a name (never stored)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return None
    labels = _strings(meta.get("labels"))
    annotations = _strings(meta.get("annotations"))
    containers = _containers(spec.get("containers"))
    init_containers = _containers(spec.get("initContainers"))
    sidecar = next(
        (c for c in [*init_containers, *containers] if c.get("name") == SIDECAR_NAME), None
    )
    policy = annotations.get(INJECTED_ANNOTATION, "")
    sidecar_of = (
        policy if sidecar is not None and policy and labels.get(POLICY_LABEL) == policy else ""
    )
    sidecar_ports: tuple[Port, ...] = ()
    other_ports: list[Port] = []
    if sidecar is not None:
        sidecar_ports = tuple(_ports(sidecar))
        taken = _upstream_port(sidecar)
        for container in containers:
            if container is not sidecar:
                other_ports += [p for p in _ports(container) if p.number != taken]
    else:
        for container in containers:
            other_ports += _ports(container)
    status = body.get("status") or {}
    return PodFacts(
        name=name,
        labels=labels,
        service_account=str(spec.get("serviceAccountName") or "default"),
        sidecar_of=sidecar_of,
        finished=status.get("phase") in _FINISHED,
        opted_out=labels.get(OPT_OUT_LABEL) == "false",
        host_network=bool(spec.get("hostNetwork")),
        sidecar_ports=sidecar_ports,
        other_ports=tuple(other_ports),
    )


def _strings(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _containers(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        return []
    return [c for c in value if isinstance(c, Mapping)]


def _ports(container: Mapping[str, Any]) -> list[Port]:
    found = []
    for port in container.get("ports") or []:
        if not isinstance(port, Mapping):
            continue
        number = port.get("containerPort")
        if isinstance(number, int) and not isinstance(number, bool) and 0 < number < 65536:
            found.append(
                Port(
                    number=number,
                    protocol=str(port.get("protocol") or "TCP"),
                    name=str(port.get("name") or ""),
                )
            )
    return found


def _upstream_port(sidecar: Mapping[str, Any]) -> int | None:
    """The app port the injected sidecar forwards to (its ``--upstream``, on loopback)."""
    for entry in sidecar.get("env") or []:
        if isinstance(entry, Mapping) and entry.get("name") == SidecarFlag.UPSTREAM.env:
            _, _, port = str(entry.get("value") or "").rpartition(":")
            return int(port) if port.isdigit() else None
    return None
