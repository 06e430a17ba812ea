"""The webhook's self-managed CA and serving certificate: issue, renewal, trust, storage."""

from __future__ import annotations

import base64
import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from powgate_operator._webhook_certs import (
    CA_LIFETIME,
    SERVING_LIFETIME,
    WebhookTLS,
    not_after,
    renewed,
)

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
