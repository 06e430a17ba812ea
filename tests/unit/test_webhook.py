"""The webhook's certificates, its configuration object and its command-line options."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import re
import ssl
from pathlib import Path
from unittest import mock

import pytest
from cryptography import x509

from powgate_operator._inject import NAMESPACE_LABEL, OPT_OUT_LABEL
from powgate_operator._options import add_webhook_arguments, webhook_options
from powgate_operator._webhook_certs import (
    CA_LIFETIME,
    SERVING_LIFETIME,
    WebhookTLS,
    not_after,
    renewed,
)
from powgate_operator.webhook import WebhookOptions, webhook_configuration_body

# Certificates are checked by a real TLS handshake, which uses the real clock.
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
HOSTS = ["powgate.powgate-system.svc", "powgate.powgate-system.svc.cluster.local"]


def sans(pem: bytes) -> set[str]:
    names = (
        x509.load_pem_x509_certificate(pem)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    return {str(n.value) for n in names}


def verifies(tls: WebhookTLS, *, host: str, tmp_path: Path) -> bool:
    """Whether a TLS client trusting only the bundle accepts the serving certificate."""
    bundle, cert, key = tmp_path / "bundle.pem", tmp_path / "tls.crt", tmp_path / "tls.key"
    bundle.write_bytes(tls.ca_bundle)
    cert.write_bytes(tls.cert)
    key.write_bytes(tls.key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(bundle))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    back_in, back_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(incoming, outgoing, server_hostname=host)
    s = server.wrap_bio(back_in, back_out, server_side=True)
    for _ in range(10):
        for side in (c, s):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError:
                return False
        back_in.write(outgoing.read())
        incoming.write(back_out.read())
    return True


# -- certificates ----------------------------------------------------------------


def test_first_issue_serves_the_hosts_and_is_trusted(tmp_path: Path) -> None:
    tls = renewed(None, hosts=HOSTS, now=NOW)
    assert sans(tls.cert) == set(HOSTS)
    assert not_after(tls.cert) == NOW + SERVING_LIFETIME
    assert not_after(tls.ca_cert) == NOW + CA_LIFETIME
    assert verifies(tls, host=HOSTS[0], tmp_path=tmp_path)
    assert not verifies(tls, host="elsewhere.svc", tmp_path=tmp_path)


def test_ip_addresses_become_ip_sans(tmp_path: Path) -> None:
    tls = renewed(None, hosts=["127.0.0.1"], now=NOW)
    assert sans(tls.cert) == {"127.0.0.1"}
    assert verifies(tls, host="127.0.0.1", tmp_path=tmp_path)


def test_nothing_changes_while_both_are_fresh() -> None:
    tls = renewed(None, hosts=HOSTS, now=NOW)
    assert renewed(tls, hosts=HOSTS, now=NOW + dt.timedelta(days=59)) is tls


def test_a_shorter_lifetime_renews_with_a_third_left_and_never_loops() -> None:
    week = dt.timedelta(days=7)
    tls = renewed(None, hosts=HOSTS, now=NOW, lifetime=week)
    assert not_after(tls.cert) == NOW + week
    assert renewed(tls, hosts=HOSTS, now=NOW + dt.timedelta(days=4), lifetime=week) is tls
    again = renewed(tls, hosts=HOSTS, now=NOW + dt.timedelta(days=5), lifetime=week)
    assert again.cert != tls.cert
    # A long lifetime: the CA outlives it, so a fresh certificate is never cut short
    # (which would renew it on every check).
    year = dt.timedelta(days=365)
    long = renewed(None, hosts=HOSTS, now=NOW, lifetime=year)
    assert not_after(long.cert) == NOW + year
    for days in range(0, 4 * 365, 30):
        now = NOW + dt.timedelta(days=days)
        long = renewed(long, hosts=HOSTS, now=now, lifetime=year)
        assert renewed(long, hosts=HOSTS, now=now, lifetime=year) is long
        assert not_after(long.cert) - now > year / 3


def test_serving_certificate_renews_a_month_before_expiry() -> None:
    tls = renewed(None, hosts=HOSTS, now=NOW)
    later = NOW + dt.timedelta(days=61)
    again = renewed(tls, hosts=HOSTS, now=later)
    assert again.ca_cert == tls.ca_cert  # same CA: the bundle does not change
    assert again.cert != tls.cert
    assert not_after(again.cert) == later + SERVING_LIFETIME


def test_new_hosts_get_a_new_certificate() -> None:
    tls = renewed(None, hosts=HOSTS, now=NOW)
    again = renewed(tls, hosts=["other.ns.svc"], now=NOW)
    assert sans(again.cert) == {"other.ns.svc"}


def test_ca_renewal_keeps_the_old_ca_trusted_until_it_expires() -> None:
    tls = renewed(None, hosts=HOSTS, now=NOW)
    near_end = NOW + CA_LIFETIME - dt.timedelta(days=80)
    rotated = renewed(tls, hosts=HOSTS, now=near_end)
    assert rotated.ca_cert != tls.ca_cert
    assert rotated.previous_ca == tls.ca_cert
    assert rotated.ca_bundle == rotated.ca_cert + tls.ca_cert
    # Issued in the future, so checked by signature rather than by a handshake.
    issued = x509.load_pem_x509_certificate(rotated.cert)
    issued.verify_directly_issued_by(x509.load_pem_x509_certificate(rotated.ca_cert))
    # Once the old CA has expired, it leaves the bundle.
    after = renewed(rotated, hosts=HOSTS, now=NOW + CA_LIFETIME + dt.timedelta(days=1))
    assert after.previous_ca == b""


def test_secret_round_trip_and_damage() -> None:
    tls = renewed(None, hosts=HOSTS, now=NOW)
    assert WebhookTLS.from_secret_data(tls.to_secret_data()) == tls
    data = tls.to_secret_data()
    for damaged in (
        {**data, "tls.crt": base64.b64encode(b"not a certificate").decode()},
        {**data, "ca.key": "%%%"},
        {k: v for k, v in data.items() if k != "tls.key"},
    ):
        with pytest.raises(ValueError, match="unreadable"):
            WebhookTLS.from_secret_data(damaged)


# -- the configuration object ------------------------------------------------------


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
    body = webhook_configuration_body(opts, ca_bundle=b"CA")
    (hook,) = body["webhooks"]
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
    assert hook["sideEffects"] == "NoneOnDryRun"
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
    assert opts.operator_namespace == opts.injection.operator_namespace == "ops"
    injection = opts.injection
    assert (injection.image, injection.image_pull_policy) == ("reg/sidecar:1", "Always")
    assert injection.resources == {"requests": {"cpu": "1"}, "limits": {"memory": "1024"}}
    assert (injection.metrics_port, injection.log_level) == (9999, "debug")
    assert injection.native_sidecar is False
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
    (hook,) = webhook_configuration_body(opts, ca_bundle=b"CA")["webhooks"]
    assert hook["clientConfig"]["url"] == "https://127.0.0.1:9443/inject"
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
