"""The injector's options: flags and environment, and the configuration object they make."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import re
from pathlib import Path
from unittest import mock

import pytest

from powgate.contract import NAMESPACE_LABEL, OPT_OUT_LABEL
from powgate_operator._options import WebhookOptions, add_webhook_arguments, webhook_options


def options(*argv: str, env: dict[str, str] | None = None) -> WebhookOptions | None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POWGATE_")}
    with mock.patch.dict(os.environ, {**clean, **(env or {})}, clear=True):
        parser = argparse.ArgumentParser()
        add_webhook_arguments(parser)
        return webhook_options(parser.parse_args(list(argv)))


def test_webhook_is_off_without_listen() -> None:
    assert options() is None


def test_configuration_selects_opted_in_namespaces_and_honours_opt_out() -> None:
    opts = options(
        "--webhook-listen",
        "0.0.0.0:9443",
        "--webhook-service",
        "powgate-system/powgate",
        "--operator-namespace",
        "powgate-system",
    )
    assert opts is not None
    body = opts.configuration_body(ca_bundle=b"CA")
    hook, required = body["webhooks"]
    assert required["clientConfig"]["service"]["path"] == "/inject-required"
    assert required["namespaceSelector"]["matchLabels"] == {NAMESPACE_LABEL: "required"}
    assert required["failurePolicy"] == "Fail"
    assert hook["clientConfig"] == {
        "caBundle": base64.b64encode(b"CA").decode(),
        "service": {
            "namespace": "powgate-system",
            "name": "powgate",
            "port": 443,
            "path": "/inject",
        },
    }
    assert hook["rules"][0]["operations"] == ["CREATE"]
    assert hook["rules"][0]["resources"] == ["pods"]
    assert hook["namespaceSelector"]["matchLabels"] == {NAMESPACE_LABEL: "enabled"}
    excluded = hook["namespaceSelector"]["matchExpressions"][0]["values"]
    assert {"kube-system", "powgate-system"} <= set(excluded)
    assert hook["objectSelector"]["matchExpressions"] == [
        {"key": OPT_OUT_LABEL, "operator": "NotIn", "values": ["false"]}
    ]
    assert (hook["failurePolicy"], hook["timeoutSeconds"]) == ("Ignore", 5)
    assert hook["sideEffects"] == "None"
    assert opts.hosts() == [
        "powgate.powgate-system.svc",
        "powgate.powgate-system.svc.cluster.local",
    ]


def test_the_environment_configures_every_flag_and_the_command_line_wins() -> None:
    env = {
        "POWGATE_WEBHOOK_LISTEN": "0.0.0.0:8443",
        "POWGATE_WEBHOOK_SERVICE": "ops/pg-webhook:443",
        "POWGATE_WEBHOOK_CONFIGURATION": "ops-pg",
        "POWGATE_WEBHOOK_CERT_SECRET": "pg-webhook-tls",
        "POWGATE_WEBHOOK_CERT_MANAGER": "false",
        "POWGATE_WEBHOOK_CERT_VALIDITY_DAYS": "30",
        "POWGATE_OPERATOR_NAMESPACE": "ops",
        "POWGATE_SIDECAR_IMAGE": "reg/sidecar:1",
        "POWGATE_SIDECAR_PULL_POLICY": "Always",
        "POWGATE_SIDECAR_RESOURCES": '{"requests": {"cpu": "1"}, "limits": {"memory": 1024}}',
        "POWGATE_SIDECAR_METRICS_PORT": "9999",
        "POWGATE_SIDECAR_LOG_LEVEL": "debug",
        "POWGATE_SIDECAR_MODE": "container",
    }
    opts = options(env=env)
    assert opts is not None
    assert opts.service == ("ops", "pg-webhook", 443)
    assert (opts.configuration, opts.tls_secret) == ("ops-pg", "pg-webhook-tls")
    assert (opts.create_configuration, opts.cert_manager) == (False, False)
    assert opts.cert_lifetime == dt.timedelta(days=30)
    assert opts.operator_namespace == opts.sidecar.operator_namespace == "ops"
    sidecar = opts.sidecar
    assert (sidecar.image, sidecar.image_pull_policy) == ("reg/sidecar:1", "Always")
    assert sidecar.resources == {"requests": {"cpu": "1"}, "limits": {"memory": "1024"}}
    assert (sidecar.metrics_port, sidecar.log_level) == (9999, "debug")
    assert sidecar.native_sidecar is False
    overridden = options(
        "--webhook-configuration", "mine", "--webhook-create-configuration", env=env
    )
    assert overridden is not None
    assert (overridden.configuration, overridden.create_configuration) == ("mine", True)
    assert overridden.tls_secret == "pg-webhook-tls"


def test_cert_manager_serves_mounted_files() -> None:
    base = {"POWGATE_WEBHOOK_LISTEN": "0.0.0.0:8443", "POWGATE_WEBHOOK_SERVICE": "a/b"}
    opts = options(env={**base, "POWGATE_WEBHOOK_CERT_MANAGER": "true",
                        "POWGATE_WEBHOOK_CERT_DIR": "/etc/tls"})  # fmt: skip
    assert opts is not None
    assert opts.cert_manager is True
    assert opts.cert_dir == Path("/etc/tls")
    with pytest.raises(ValueError, match="needs --webhook-cert-dir"):
        options(env={**base, "POWGATE_WEBHOOK_CERT_MANAGER": "true"})


def test_the_api_servers_client_certificate_is_required_when_its_ca_is_given(
    tmp_path: Path,
) -> None:
    base = {"POWGATE_WEBHOOK_LISTEN": "0.0.0.0:8443", "POWGATE_WEBHOOK_SERVICE": "a/b"}
    opts = options(env=base)
    assert opts is not None
    assert (opts.client_ca, opts.client_names) == (None, ())
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    opts = options(
        env={
            **base,
            "POWGATE_WEBHOOK_CLIENT_CA": str(ca),
            "POWGATE_WEBHOOK_CLIENT_NAMES": "kube-apiserver, apiserver.internal",
        }
    )
    assert opts is not None
    assert opts.client_ca == ca
    assert opts.client_names == ("kube-apiserver", "apiserver.internal")
    with pytest.raises(ValueError, match="is not a file"):
        options(env={**base, "POWGATE_WEBHOOK_CLIENT_CA": str(tmp_path / "absent")})
    with pytest.raises(ValueError, match="needs --webhook-client-ca"):
        options(env={**base, "POWGATE_WEBHOOK_CLIENT_NAMES": "kube-apiserver"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"POWGATE_WEBHOOK_CERT_MANAGER": "maybe"}, "POWGATE_WEBHOOK_CERT_MANAGER='maybe'"),
        ({"POWGATE_SIDECAR_MODE": "always"}, "--sidecar-mode 'always' is not one of"),
        ({"POWGATE_SIDECAR_PULL_POLICY": "Sometimes"}, "--sidecar-pull-policy"),
        ({"POWGATE_WEBHOOK_FAILURE_POLICY": "Maybe"}, "--webhook-failure-policy"),
        ({"POWGATE_SIDECAR_RESOURCES": "{not json"}, "not JSON"),
        ({"POWGATE_SIDECAR_RESOURCES": '{"limit": {}}'}, "requests and/or limits"),
        ({"POWGATE_SIDECAR_RESOURCES": '{"limits": {"cpu": true}}'}, "quantities"),
        ({"POWGATE_WEBHOOK_CERT_VALIDITY_DAYS": "0"}, "between 1 and 3650"),
        ({"POWGATE_SIDECAR_METRICS_PORT": "70000"}, "between 1 and 65535"),
        ({"POWGATE_SIDECAR_DERIVATION_THREADS": "0"}, "threads must be at least 1"),
        (
            {"POWGATE_SIDECAR_DERIVATION_THREADS": "4", "POWGATE_SIDECAR_DERIVATIONS_PENDING": "2"},
            "pending must be at least --sidecar-derivation-threads",
        ),
        ({"POWGATE_SIDECAR_DERIVATIONS_PENDING": "0"}, "pending must be at least"),
        ({"POWGATE_WEBHOOK_URL": "https://a"}, "not both"),
    ],
)
def test_bad_environment_values_are_named(env: dict[str, str], message: str) -> None:
    base = {"POWGATE_WEBHOOK_LISTEN": "0.0.0.0:8443", "POWGATE_WEBHOOK_SERVICE": "a/b"}
    with pytest.raises(ValueError, match=re.escape(message)):
        options(env={**base, **env})


def test_url_mode_and_fail_policy() -> None:
    opts = options(
        "--webhook-listen",
        "127.0.0.1:9443",
        "--webhook-url",
        "https://127.0.0.1:9443",
        "--webhook-failure-policy",
        "Fail",
        "--webhook-timeout",
        "3",
        "--operator-namespace",
        "x",
    )
    assert opts is not None
    hook, required = opts.configuration_body(ca_bundle=b"CA")["webhooks"]
    assert hook["clientConfig"]["url"] == "https://127.0.0.1:9443/inject"
    assert required["clientConfig"]["url"] == "https://127.0.0.1:9443/inject-required"
    assert (hook["failurePolicy"], hook["timeoutSeconds"]) == ("Fail", 3)
    assert opts.hosts() == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--webhook-listen", "9443", "--webhook-url", "https://a"], "HOST:PORT"),
        (["--webhook-listen", "a:1"], "--webhook-service or --webhook-url"),
        (["--webhook-listen", "a:1", "--webhook-url", "http://a"], "https://"),
        (["--webhook-listen", "a:1", "--webhook-service", "nameonly"], "NS/NAME"),
        (["--webhook-listen", "a:1", "--webhook-service", "a/b:x"], "NS/NAME"),
        (
            ["--webhook-listen", "a:1", "--webhook-url", "https://a", "--webhook-timeout", "31"],
            "30",
        ),
    ],
)
def test_bad_flags_are_named(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        options(*argv)
