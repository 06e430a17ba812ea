"""The webhook's TLS: a self-managed CA, the serving certificate, and when to renew them.

Pure apart from key generation: :func:`renewed` takes what the Secret holds
and the time, and returns what it should hold. :mod:`.webhook` stores the
result in a Secret (so every replica serves the same certificate), writes
the files kopf's server loads, and puts :attr:`WebhookTLS.ca_bundle` into
the MutatingWebhookConfiguration.

CA renewal keeps the previous CA in the bundle until it expires: the API
server trusts both while replicas switch to a certificate from the new CA.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_LIFETIME",
    "CA_RENEW_BEFORE",
    "SERVING_LIFETIME",
    "WebhookTLS",
    "not_after",
    "renewed",
]

CA_LIFETIME: Final = dt.timedelta(days=365)
CA_RENEW_BEFORE: Final = dt.timedelta(days=90)
#: The default; ``--webhook-cert-validity-days`` sets it. Renewal starts with a third left.
SERVING_LIFETIME: Final = dt.timedelta(days=90)
#: Tolerates clocks of API servers a little behind the operator's.
_BACKDATE: Final = dt.timedelta(minutes=5)
_KEYS: Final = ("ca.crt", "ca.key", "tls.crt", "tls.key", "ca-previous.crt")


@dataclass(frozen=True, slots=True)
class WebhookTLS:
    """Everything the webhook's Secret holds (PEM)."""

    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes
    #: The CA before the last renewal, trusted until it expires; empty when none.
    previous_ca: bytes = b""

    @property
    def ca_bundle(self) -> bytes:
        """What the API server must trust: the CA, and the previous one while it is valid."""
        return self.ca_cert + self.previous_ca

    def to_secret_data(self) -> dict[str, str]:
        values = (self.ca_cert, self.ca_key, self.cert, self.key, self.previous_ca)
        return {k: base64.b64encode(v).decode() for k, v in zip(_KEYS, values, strict=True)}

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str]) -> WebhookTLS:
        """From a Secret's ``data``; ``ValueError`` when a part is missing or unreadable."""
        try:
            values = [base64.b64decode(data.get(k) or "", validate=True) for k in _KEYS]
            tls = cls(*values)
            for pem in (tls.ca_cert, tls.cert):
                x509.load_pem_x509_certificate(pem)
            for pem in (tls.ca_key, tls.key):
                serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"the webhook certificate Secret is unreadable: {exc}") from exc
        return tls


def not_after(pem: bytes) -> dt.datetime:
    """When a certificate expires."""
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


def renewed(
    current: WebhookTLS | None,
    *,
    hosts: Sequence[str],
    now: dt.datetime,
    lifetime: dt.timedelta = SERVING_LIFETIME,
) -> WebhookTLS:
    """``current`` if it serves ``hosts`` for a while yet; otherwise what replaces it.

    The serving certificate lives ``lifetime`` and renews when a third of it is
    left. The CA outlives it at least fourfold and renews while it can still
    sign a full-lifetime certificate, so a serving certificate is never cut
    short by its CA (which would renew it on every check).
    """
    if lifetime <= dt.timedelta(0):
        raise ValueError("the serving certificate lifetime must be positive")
    ca_lifetime = max(CA_LIFETIME, 4 * lifetime)
    ca_renew_before = max(CA_RENEW_BEFORE, lifetime + lifetime / 3)
    if current is None:
        ca_cert, ca_key = _new_ca(now, lifetime=ca_lifetime)
        return _with_serving(
            WebhookTLS(ca_cert, ca_key, b"", b""), hosts=hosts, now=now, lifetime=lifetime
        )
    tls = current
    if tls.previous_ca and not_after(tls.previous_ca) <= now:
        tls = replace(tls, previous_ca=b"")
    if not_after(tls.ca_cert) - now <= ca_renew_before:
        ca_cert, ca_key = _new_ca(now, lifetime=ca_lifetime)
        return _with_serving(
            WebhookTLS(ca_cert, ca_key, b"", b"", previous_ca=tls.ca_cert),
            hosts=hosts,
            now=now,
            lifetime=lifetime,
        )
    if _serving_needs_renewal(tls, hosts=hosts, now=now, renew_before=lifetime / 3):
        return _with_serving(tls, hosts=hosts, now=now, lifetime=lifetime)
    return tls


def _serving_needs_renewal(
    tls: WebhookTLS, *, hosts: Sequence[str], now: dt.datetime, renew_before: dt.timedelta
) -> bool:
    cert = x509.load_pem_x509_certificate(tls.cert)
    ca = x509.load_pem_x509_certificate(tls.ca_cert)
    if cert.not_valid_after_utc - now <= renew_before or cert.issuer != ca.subject:
        return True
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    served = {str(n) for n in names.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in names.get_values_for_type(x509.IPAddress)
    }
    return served != {_normal(h) for h in hosts}


def _normal(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _new_key() -> ec.EllipticCurvePrivateKey:
    # ECDSA P-256: fast to generate and accepted by the API server's Go TLS stack.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _new_ca(now: dt.datetime, *, lifetime: dt.timedelta) -> tuple[bytes, bytes]:
    key = _new_key()
    # A unique subject per CA: a certificate's issuer then tells which CA signed it.
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"powgate-webhook-ca-{int(now.timestamp())}")]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def _with_serving(
    tls: WebhookTLS, *, hosts: Sequence[str], now: dt.datetime, lifetime: dt.timedelta
) -> WebhookTLS:
    if not hosts:
        raise ValueError("the serving certificate needs at least one host name or address")
    ca_cert = x509.load_pem_x509_certificate(tls.ca_cert)
    ca_key = serialization.load_pem_private_key(tls.ca_key, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the webhook CA key is not an ECDSA key")
    key = _new_key()
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + lifetime, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return replace(tls, cert=_cert_pem(cert), key=_key_pem(key))
