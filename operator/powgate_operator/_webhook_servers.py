"""The webhook's HTTPS servers: kopf's, fed with self-managed or mounted certificates.

kopf's :class:`kopf.WebhookServer` serves the admission handlers and
restarts its listener when the certificate files change; these subclasses
decide where the files come from and when serving may start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import kopf

from . import _metrics as metrics
from ._cluster import Cluster
from ._options import WebhookOptions
from ._webhook_auth import guarded
from ._webhook_certs import not_after
from ._webhook_registration import register, sync_tls

__all__ = ["MountedCertServer", "SelfManagedServer"]

log = logging.getLogger("powgate.operator.webhook")

#: How often the certificates are checked; renewal starts weeks before expiry.
RENEW_CHECK_SECONDS: Final = 3600.0
#: After a failed certificate or configuration step (e.g. RBAC not there yet).
RETRY_SECONDS: Final = 10.0
#: kopf restarts its server when the certificate files change; this is how often it looks.
_FILE_CHECK_SECONDS: Final = 10.0


class SelfManagedServer(kopf.WebhookServer):
    """kopf's HTTPS server, fed with certificates this operator issues and renews.

    kopf reloads the certificate files when they change; the CA bundle goes
    into the webhook configuration before a certificate from a new CA is served.
    """

    def __init__(
        self, *, cluster: Cluster, options: WebhookOptions, cert_dir: Path, serving: asyncio.Event
    ) -> None:
        host, port = options.listen
        super().__init__(
            addr=host,
            port=port,
            certfile=cert_dir / "tls.crt",
            pkeyfile=cert_dir / "tls.key",
            cafile=cert_dir / "ca.crt",
            file_check_interval=_FILE_CHECK_SECONDS,
            **_client_verification(options),
        )
        self._cluster = cluster
        self._options = options
        self._cert_dir = cert_dir
        self._serving = serving

    async def refresh(self) -> None:
        """One round: the certificates from the Secret, the bundle registered, the files written."""
        try:
            tls = await sync_tls(
                self._cluster,
                self._options,
                now=dt.datetime.now(dt.UTC),
                lifetime=self._options.cert_lifetime,
            )
        except Exception:
            metrics.TLS_ERRORS.labels("secret").inc()
            raise
        try:
            # Trust first, serve second: the bundle holds the new CA before the files change.
            await register(self._cluster, self._options, ca_bundle=tls.ca_bundle)
        except Exception:
            metrics.TLS_ERRORS.labels("configuration").inc()
            raise
        _write_private(self._cert_dir / "ca.crt", tls.ca_bundle)
        _write_private(self._cert_dir / "tls.key", tls.key)
        _write_private(self._cert_dir / "tls.crt", tls.cert)
        metrics.CERT_EXPIRY.set(not_after(tls.cert).timestamp())

    async def _refresh_forever(self) -> None:
        delay = 0.0
        while True:
            await asyncio.sleep(delay)
            try:
                await self.refresh()
            except Exception:
                # Before the first success nothing is served (the pod stays unready); after
                # it, the current certificate is valid for weeks yet. Either way: retry soon.
                log.exception("webhook certificate or caBundle update failed")
                delay = RETRY_SECONDS
                continue
            self._serving.set()
            delay = RENEW_CHECK_SECONDS

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        refresher = asyncio.create_task(self._refresh_forever())
        try:
            await self._serving.wait()
            async for client_config in super().__call__(
                guarded(fn, client_names=self._options.client_names)
            ):
                yield client_config
        finally:
            refresher.cancel()


class MountedCertServer(kopf.WebhookServer):
    """kopf's HTTPS server on mounted certificate files (cert-manager's Secret).

    kopf restarts the listener when the files change, which is how a renewed
    certificate is picked up; the caBundle is cert-manager's CA injector's job.
    """

    def __init__(self, *, options: WebhookOptions, cert_dir: Path, serving: asyncio.Event) -> None:
        host, port = options.listen
        super().__init__(
            addr=host,
            port=port,
            certfile=cert_dir / "tls.crt",
            pkeyfile=cert_dir / "tls.key",
            file_check_interval=_FILE_CHECK_SECONDS,
            **_client_verification(options),
        )
        self._options = options
        self._cert_dir = cert_dir
        self._serving = serving

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        # The Secret volume may be empty until cert-manager has issued the certificate.
        while not all((self._cert_dir / f).is_file() for f in ("tls.crt", "tls.key")):
            metrics.TLS_ERRORS.labels("mounted-files").inc()
            log.warning("waiting for tls.crt and tls.key in %s", self._cert_dir)
            await asyncio.sleep(RETRY_SECONDS)
        metrics.CERT_EXPIRY.set(not_after((self._cert_dir / "tls.crt").read_bytes()).timestamp())
        self._serving.set()
        async for client_config in super().__call__(
            guarded(fn, client_names=self._options.client_names)
        ):
            yield client_config


def _client_verification(options: WebhookOptions) -> dict[str, Any]:
    """kopf's settings for requiring the API server's client certificate, when configured."""
    if options.client_ca is None:
        return {}
    return {"verify_mode": ssl.CERT_REQUIRED, "verify_cafile": options.client_ca}


def _write_private(path: Path, data: bytes) -> None:
    # Write then rename: kopf never reads a half-written file.
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_bytes(data)
    tmp.replace(path)
