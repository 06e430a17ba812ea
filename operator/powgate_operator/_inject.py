"""Sidecar injection as pure functions: a pod, the policies, the template → the pod to store.

No kopf and no I/O here: :mod:`.webhook` feeds admission requests through
:func:`plan` and turns the result into kopf's patch, so every rule (who is
injected, what the sidecar looks like) is unit-tested
without a cluster.

Traffic reaches the sidecar by *port takeover*: the app's named port that a
Service targets (``http``) is renamed (``http-app``) and the sidecar takes
the name on its own port number. A Service with ``targetPort: http`` then
routes through the sidecar unchanged, and the sidecar forwards to the app on
``127.0.0.1:<app port>``. The sidecar cannot take the app's port *number*: both
containers share the pod's network namespace, where the app already binds it.
"""

from __future__ import annotations

import copy
import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from powgate.contract import (
    INJECTED_ANNOTATION,
    METRICS_PORT_NAME,
    OPT_OUT_LABEL,
    POLICY_LABEL,
    PORT_ANNOTATION,
    SIDECAR_NAME,
    SidecarFlag,
)
from powgate.policy import (
    LabelSelector,
    config_map_name,
    key_secret_name,
    replay_store_secret_name,
)

__all__ = [
    "Plan",
    "PolicyRef",
    "SidecarTemplate",
    "Skip",
    "plan",
    "selector_matches",
    "supports_native_sidecars",
]

KEYS_MOUNT: Final = "/etc/powgate/keys"
REPLAY_STORE_MOUNT: Final = "/etc/powgate/replay-store"
TOKEN_MOUNT: Final = "/var/run/secrets/kubernetes.io/serviceaccount"  # noqa: S105 - a path
_KEYS_VOLUME: Final = "powgate-keys"
_REPLAY_STORE_VOLUME: Final = "powgate-replay-store"
_TOKEN_VOLUME: Final = "powgate-token"  # noqa: S105 - a volume name
_TMP_VOLUME: Final = "powgate-tmp"
#: Kubernetes port names: at most 15 characters, lowercase alphanumerics and single dashes.
_PORT_NAME: Final = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9]|-(?!-)){0,13}[a-z0-9]$|^[a-z]$")
#: Kubernetes 1.29 turned native sidecars (init containers with restartPolicy Always) on.
NATIVE_SIDECAR_VERSION: Final = (1, 29)
#: The projected token lives about an hour; the sidecar re-reads the file as kubelet rotates it.
_TOKEN_SECONDS: Final = 3607


class Skip(enum.StrEnum):
    """Why a pod is admitted unchanged (a metric label and a log field)."""

    EXCLUDED_NAMESPACE = "ExcludedNamespace"
    OPTED_OUT = "OptedOut"
    ALREADY_INJECTED = "AlreadyInjected"
    NO_POLICY = "NoMatchingPolicy"
    NO_PORT = "NoMatchingPort"
    HOST_NETWORK = "HostNetwork"
    INVALID_POD = "InvalidPod"


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """What injection needs to know of a PowPolicy."""

    namespace: str
    name: str
    uid: str
    selector: LabelSelector

    def metadata(self) -> dict[str, Any]:
        """The policy's identity as a manifest's ``metadata`` (for owner references)."""
        return {"metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid}}


def _default_resources() -> dict[str, dict[str, str]]:
    # No CPU limit: CFS throttling adds latency to every request of a proxy.
    return {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}


@dataclass(frozen=True, slots=True)
class SidecarTemplate:
    """What the operator is told about the sidecar it injects (its flags)."""

    image: str
    #: The namespace the operator runs in: never injected, like kube-system.
    operator_namespace: str
    image_pull_policy: str = "IfNotPresent"
    #: The app's port to take over when the pod has no ``powgate.dev/port`` annotation.
    port_name: str = "http"
    #: The sidecar's own port numbers; moved up when the pod already uses them.
    proxy_port: int = 8480
    metrics_port: int = 9480
    native_sidecar: bool = True
    log_level: str = "info"
    #: ALTCHA PoW v2 derivation threads and admitted derivations per sidecar process;
    #: ``None``: the sidecar's default (from its CPU limit).
    derivation_threads: int | None = None
    derivations_pending: int | None = None
    run_as_user: int = 65532
    resources: Mapping[str, Mapping[str, str]] = field(default_factory=_default_resources)

    @property
    def excluded_namespaces(self) -> frozenset[str]:
        return frozenset({"kube-system", "kube-public", "kube-node-lease", self.operator_namespace})


@dataclass(frozen=True, slots=True)
class Plan:
    """The result of :func:`plan`: the pod to store, or why it is left alone."""

    pod: dict[str, Any] | None
    policy: PolicyRef | None = None
    skip: Skip | None = None
    message: str = ""
    #: Shown to whoever created the pod (admission warnings).
    warnings: tuple[str, ...] = ()


def supports_native_sidecars(major: str, minor: str) -> bool:
    """Whether an API server of this version runs native sidecars (``/version`` fields).

    ``minor`` may carry a suffix (``"29+"`` on some managed clusters).
    """
    digits = re.match(r"\d+", minor)
    if not major.isdigit() or digits is None:
        return False
    return (int(major), int(digits.group())) >= NATIVE_SIDECAR_VERSION


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics (``matchLabels`` and ``matchExpressions``, ANDed)."""
    if any(labels.get(k) != v for k, v in selector.match_labels.items()):
        return False
    for requirement in selector.match_expressions:
        present = requirement.key in labels
        value = labels.get(requirement.key)
        match requirement.operator:
            case "In" if value not in requirement.values:
                return False
            case "NotIn" if present and value in requirement.values:
                return False
            case "Exists" if not present:
                return False
            case "DoesNotExist" if present:
                return False
    return True


def plan(
    pod: Mapping[str, Any],
    *,
    namespace: str,
    policies: Iterable[PolicyRef],
    template: SidecarTemplate,
) -> Plan:
    """Decide on one pod being created in ``namespace``, and build the injected pod."""
    if namespace in template.excluded_namespaces:
        return Plan(None, skip=Skip.EXCLUDED_NAMESPACE, message=f"namespace {namespace}")
    try:
        meta = _mapping(pod.get("metadata", {}), "metadata")
        labels = _strings(meta.get("labels") or {}, "metadata.labels")
        annotations = _strings(meta.get("annotations") or {}, "metadata.annotations")
        spec = _mapping(pod.get("spec"), "spec")
        containers = _containers(spec.get("containers"), "spec.containers")
        init_containers = _containers(spec.get("initContainers") or [], "spec.initContainers")
    except ValueError as exc:
        return Plan(None, skip=Skip.INVALID_POD, message=str(exc))
    if labels.get(OPT_OUT_LABEL) == "false":
        return Plan(None, skip=Skip.OPTED_OUT, message=f"label {OPT_OUT_LABEL}=false")
    if INJECTED_ANNOTATION in annotations or any(
        c.get("name") == SIDECAR_NAME for c in [*containers, *init_containers]
    ):
        return Plan(None, skip=Skip.ALREADY_INJECTED, message="the pod carries the sidecar")
    matching = sorted(
        (p for p in policies if p.namespace == namespace and selector_matches(p.selector, labels)),
        key=lambda p: p.name,
    )
    if not matching:
        return Plan(None, skip=Skip.NO_POLICY, message="no PowPolicy selects the pod")
    policy = matching[0]
    warnings: tuple[str, ...] = ()
    if len(matching) > 1:
        warnings = (
            f"powgate: PowPolicies {', '.join(p.name for p in matching)} all select this pod; "
            f"{policy.name} (first by name) applies",
        )
    if spec.get("hostNetwork"):
        # On the node's network the sidecar's port would be the node's port.
        return Plan(None, policy=policy, skip=Skip.HOST_NETWORK, message="hostNetwork pod")
    port_name = annotations.get(PORT_ANNOTATION, template.port_name)
    found = _find_port(containers, port_name)
    if found is None:
        return Plan(
            None,
            policy=policy,
            skip=Skip.NO_PORT,
            message=f"no container port named {port_name!r} (set annotation {PORT_ANNOTATION})",
            warnings=(
                *warnings,
                f"powgate: not injected: no container port named {port_name!r}",
            ),
        )
    injected = _inject(
        pod,
        namespace=namespace,
        policy=policy,
        template=template,
        port_name=port_name,
        app_index=found[0],
        app_port=found[1],
    )
    return Plan(injected, policy=policy, message=f"sidecar of {policy.name}", warnings=warnings)


# -- building the pod ---------------------------------------------------------


def _inject(
    pod: Mapping[str, Any],
    *,
    namespace: str,
    policy: PolicyRef,
    template: SidecarTemplate,
    port_name: str,
    app_index: int,
    app_port: int,
) -> dict[str, Any]:
    result = copy.deepcopy(dict(pod))
    meta = result.setdefault("metadata", {})
    meta["annotations"] = {**(meta.get("annotations") or {}), INJECTED_ANNOTATION: policy.name}
    meta["labels"] = {**(meta.get("labels") or {}), POLICY_LABEL: policy.name}
    spec = result["spec"]
    containers: list[dict[str, Any]] = spec["containers"]
    used_ports = {
        int(p["containerPort"])
        for c in [*containers, *(spec.get("initContainers") or [])]
        for p in c.get("ports") or []
        if isinstance(p.get("containerPort"), int)
    }
    used_names = {p.get("name") for c in containers for p in c.get("ports") or [] if p.get("name")}
    proxy_port = _free_port(template.proxy_port, used_ports)
    metrics_port = _free_port(template.metrics_port, used_ports | {proxy_port})
    app_port_name = _renamed(port_name, used_names)
    containers[app_index] = _rename_port(containers[app_index], old=port_name, new=app_port_name)

    sidecar = _sidecar(
        template=template,
        policy=policy,
        namespace=namespace,
        port_name=port_name,
        proxy_port=proxy_port,
        metrics_port=metrics_port,
        app_port=app_port,
    )
    if template.native_sidecar:
        # Last of the init containers: the others (migrations, downloads) run first,
        # and the app containers start once the sidecar's startup probe passes.
        spec["initContainers"] = [
            *(spec.get("initContainers") or []),
            {**sidecar, "restartPolicy": "Always"},
        ]
    else:
        spec["containers"] = [sidecar, *containers]
    spec["volumes"] = [*(spec.get("volumes") or []), *_volumes(policy)]
    return result


def _sidecar(
    *,
    template: SidecarTemplate,
    policy: PolicyRef,
    namespace: str,
    port_name: str,
    proxy_port: int,
    metrics_port: int,
    app_port: int,
) -> dict[str, Any]:
    def probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": METRICS_PORT_NAME},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 1,
        }

    def field_env(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    derivations = [
        {"name": flag.env, "value": str(value)}
        for flag, value in (
            (SidecarFlag.DERIVATION_THREADS, template.derivation_threads),
            (SidecarFlag.DERIVATIONS_PENDING, template.derivations_pending),
        )
        if value is not None
    ]

    return {
        "name": SIDECAR_NAME,
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "ports": [
            {"name": port_name, "containerPort": proxy_port, "protocol": "TCP"},
            {"name": METRICS_PORT_NAME, "containerPort": metrics_port, "protocol": "TCP"},
        ],
        "env": [
            # First: the kubelet expands $(POD_IP) only from variables defined before.
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_IP", "status.podIP"),
            field_env("NODE_NAME", "spec.nodeName"),
            {"name": SidecarFlag.LISTEN.env, "value": f"0.0.0.0:{proxy_port}"},
            {"name": SidecarFlag.UPSTREAM.env, "value": f"http://127.0.0.1:{app_port}"},
            # Metrics and probes on the pod's address only: the kubelet and Prometheus
            # reach it there, the pod's other containers do not on loopback.
            {"name": SidecarFlag.METRICS_LISTEN.env, "value": f"$(POD_IP):{metrics_port}"},
            {
                "name": SidecarFlag.CONFIG_OBJECT.env,
                "value": f"{namespace}/{config_map_name(policy.name)}",
            },
            {"name": SidecarFlag.KEY_FILE.env, "value": KEYS_MOUNT},
            {"name": SidecarFlag.REPLAY_STORE_CREDENTIALS.env, "value": REPLAY_STORE_MOUNT},
            {"name": SidecarFlag.LOG_LEVEL.env, "value": template.log_level},
            *derivations,
        ],
        "resources": {k: dict(v) for k, v in template.resources.items()},
        # /readyz answers 200 once a configuration is in force: the app starts after that.
        "startupProbe": probe("/readyz", period=1, failures=120),
        "readinessProbe": probe("/readyz", period=5, failures=3),
        "livenessProbe": probe("/healthz", period=10, failures=3),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": template.run_as_user,
            "runAsGroup": template.run_as_user,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": _KEYS_VOLUME, "mountPath": KEYS_MOUNT, "readOnly": True},
            {"name": _REPLAY_STORE_VOLUME, "mountPath": REPLAY_STORE_MOUNT, "readOnly": True},
            {"name": _TOKEN_VOLUME, "mountPath": TOKEN_MOUNT, "readOnly": True},
            {"name": _TMP_VOLUME, "mountPath": "/tmp"},  # noqa: S108 - an emptyDir, not the host's
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _volumes(policy: PolicyRef) -> list[dict[str, Any]]:
    # The sidecar's own token, projected even when the pod turns automounting off:
    # the ServiceAccount admission plugin has already run and mounts nothing for it.
    token = {
        "name": _TOKEN_VOLUME,
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": _TOKEN_SECONDS}},
                {
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
                {
                    "downwardAPI": {
                        "items": [
                            {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
                        ]
                    }
                },
            ],
        },
    }
    keys = {
        "name": _KEYS_VOLUME,
        # Readable by the non-root sidecar user; a new key is published before it signs,
        # so the kubelet's slower volume refresh is enough for keys.
        "secret": {"secretName": key_secret_name(policy.name), "defaultMode": 0o444},
    }
    # The replay store's credentials, in the sidecar container only (the app's containers
    # do not mount it, the pod's service account may not read it). Optional: a policy
    # without a store, or with a store that needs no password, has no such Secret, and
    # one created later reaches running pods with the kubelet's next sync.
    replay_store = {
        "name": _REPLAY_STORE_VOLUME,
        "secret": {
            "secretName": replay_store_secret_name(policy.name),
            "defaultMode": 0o444,
            "optional": True,
        },
    }
    return [
        keys,
        replay_store,
        token,
        {"name": _TMP_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]


def _free_port(wanted: int, used: set[int]) -> int:
    port = wanted
    while port in used:
        port += 1
    return port


def _renamed(name: str, used: set[Any]) -> str:
    """``http`` → ``http-app``, kept a valid port name (15 characters) and unique in the pod."""
    for suffix in ("app", *(f"app{i}" for i in range(2, 10))):
        stem = name[: 14 - len(suffix)].rstrip("-")
        candidate = f"{stem}-{suffix}"
        if candidate not in used and _PORT_NAME.match(candidate):
            return candidate
    raise ValueError(f"no free name to rename port {name!r}")  # ten renamed ports: not a real pod


def _rename_port(container: Mapping[str, Any], *, old: str, new: str) -> dict[str, Any]:
    """The app container with its port ``old`` renamed, and its probes following the rename.

    A probe's named port resolves within its own container, so an app probe on
    ``http`` would otherwise point at a name the container no longer has.
    """
    result = dict(container)
    result["ports"] = [
        {**p, "name": new} if p.get("name") == old else p for p in container.get("ports") or []
    ]
    for key in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = container.get(key)
        if not isinstance(probe, Mapping):
            continue
        updated = dict(probe)
        for action in ("httpGet", "tcpSocket"):
            handler = probe.get(action)
            if isinstance(handler, Mapping) and handler.get("port") == old:
                updated[action] = {**handler, "port": new}
        result[key] = updated
    return result


def _find_port(containers: Sequence[Mapping[str, Any]], name: str) -> tuple[int, int] | None:
    """(index of the container, port number) of the first TCP port called ``name``."""
    for index, container in enumerate(containers):
        for port in container.get("ports") or []:
            if (
                isinstance(port, Mapping)
                and port.get("name") == name
                and isinstance(port.get("containerPort"), int)
                and port.get("protocol", "TCP") == "TCP"
            ):
                return index, int(port["containerPort"])
    return None


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} is not an object")
    return value


def _strings(value: Any, where: str) -> dict[str, str]:
    mapping = _mapping(value, where)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise ValueError(f"{where} holds values that are not strings")
    return dict(mapping)


def _containers(value: Any, where: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(c, Mapping) for c in value):
        raise ValueError(f"{where} is not a list of containers")
    for container in value:
        ports = container.get("ports") or []
        if not isinstance(ports, list) or not all(isinstance(p, Mapping) for p in ports):
            raise ValueError(f"{where}: ports of {container.get('name')!r} are not a list")
    return value
