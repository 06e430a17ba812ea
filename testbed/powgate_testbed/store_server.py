"""A throw-away Redis server on loopback: the shared replay store of tests and benchmarks.

    with StoreServer(root=tmp_path) as store:
        # store.address is "127.0.0.1:<port>"; store.client() is a redis-py client

It runs Debian's `redis-server` (or `valkey-server`, whichever is on PATH;
`make system-deps` installs Redis) with its own configuration under `root`:
a free loopback port, no persistence, optional ACL users and TLS. The server
can be paused (SIGSTOP: it accepts connections and answers nothing, a store
that is slow past any timeout), stopped and started again on the same port,
which is how tests take the store away and bring it back.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
from collections.abc import Mapping
from pathlib import Path

import redis

from powgate_testbed._pki import CertificateAuthority
from powgate_testbed._process import (
    ManagedProcess,
    Service,
    StartupError,
    free_ports,
    stop_all,
    wait_until,
)
from powgate_testbed._process import tail as log_tail

__all__ = ["StoreNotFoundError", "StoreServer", "find_store_server"]

_START_TIMEOUT = 20.0
_STOP_GRACE = 5.0
_BINARIES = ("valkey-server", "redis-server")


class StoreNotFoundError(FileNotFoundError):
    """Neither `valkey-server` nor `redis-server` is on this machine."""


def find_store_server() -> Path:
    for name in _BINARIES:
        found = shutil.which(name)
        if found is not None:
            return Path(found)
    raise StoreNotFoundError(
        "no `redis-server` or `valkey-server` on PATH; run `make system-deps` "
        "(Debian package redis-server)"
    )


class StoreServer(Service):
    """A Redis/Valkey process with its configuration and log under `root`.

    `users` maps ACL user names to their rules (`"on >secret ~* +@all"`);
    with users the default user is turned off, so every client must log in.
    With `tls` the server speaks TLS only, with a certificate for 127.0.0.1
    from its own CA (`ca_file`).
    """

    def __init__(
        self,
        *,
        root: Path,
        binary: Path | None = None,
        users: Mapping[str, str] | None = None,
        tls: bool = False,
        host: str = "127.0.0.1",
    ) -> None:
        self.root = root
        self._binary = binary
        self._users = dict(users or {})
        self._tls = tls
        self._host = host
        self._process: ManagedProcess | None = None
        self.port = 0
        self.ca_file: Path | None = None

    @property
    def address(self) -> str:
        return f"{self._host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.root / "store.log"

    @property
    def running(self) -> bool:
        return self._process is not None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the store is not running")
        return self._process.record.pid

    def start(self) -> None:
        binary = self._binary or find_store_server()
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.port:
            (self.port,) = free_ports(1)
        config = self.root / "store.conf"
        config.write_text(self._config())
        self._process = ManagedProcess(
            name="store",
            argv=[str(binary), str(config)],
            log_path=self.log_file,
            die_with_parent=True,
        )
        atexit.register(self.stop)
        try:
            wait_until(
                self._listening,
                what="the store's port",
                timeout=_START_TIMEOUT,
                watch=[self._process],
            )
        except StartupError as exc:
            self.stop()
            raise StartupError(
                f"{exc}\n--- {self.log_file.name} ---\n{log_tail(self.log_file, lines=25)}"
            ) from exc

    def stop(self) -> None:
        """Stop the server (the port is kept: `start` brings it back at the same address)."""
        if self._process is not None:
            self.resume()
            stop_all([self._process], grace=_STOP_GRACE)
            self._process = None
        atexit.unregister(self.stop)

    def pause(self) -> None:
        """Freeze the server: connections are accepted by the kernel, nothing is answered."""
        if self._process is not None:
            os.kill(self._process.record.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            os.kill(self._process.record.pid, signal.SIGCONT)

    def client(self, *, username: str | None = None, password: str | None = None) -> redis.Redis:
        """A redis-py client for checks from the test (as `username`, or the default user)."""
        options: dict[str, object] = {}
        if self._tls:
            options = {"ssl": True, "ssl_ca_certs": str(self.ca_file)}
        return redis.Redis(
            host=self._host,
            port=self.port,
            username=username,
            password=password,
            socket_timeout=5,
            **options,  # type: ignore[arg-type]
        )

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self._host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _config(self) -> str:
        lines = [
            f"bind {self._host}",
            f"dir {self.root}",
            # Nothing is written to disk: the store lives as long as the test.
            'save ""',
            "appendonly no",
            "daemonize no",
            "databases 16",
            "loglevel notice",
        ]
        if self._users:
            lines.append("user default off")
            lines.extend(f"user {name} {rules}" for name, rules in self._users.items())
        if self._tls:
            lines.extend(self._tls_config())
        else:
            lines.append(f"port {self.port}")
        return "\n".join(lines) + "\n"

    def _tls_config(self) -> list[str]:
        if self.ca_file is None:
            authority = CertificateAuthority(common_name="powgate test store CA")
            pair = authority.issue(
                common_name="store",
                dns_names=("localhost",),
                ip_addresses=(self._host,),
                server=True,
            )
            self.ca_file = self.root / "ca.crt"
            self.ca_file.write_bytes(authority.pair.cert_pem)
            pair.write(cert_path=self.root / "tls.crt", key_path=self.root / "tls.key")
        return [
            "port 0",
            f"tls-port {self.port}",
            f"tls-cert-file {self.root / 'tls.crt'}",
            f"tls-key-file {self.root / 'tls.key'}",
            f"tls-ca-cert-file {self.ca_file}",
            # Clients show no certificate unless a test asks for mutual TLS.
            "tls-auth-clients optional",
        ]
