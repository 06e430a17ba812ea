"""A Docker engine to build images with: the one already running, or a private one.

Machines without a running engine (CI, the development machines) get
Debian's `dockerd` started here with its state under the cache folder and no
say over the host's network: no bridge, no iptables rules, no forwarding.
Builds then run with the host's network namespace (`--network host`), which
is all they need to reach the wheel folder served on loopback. The private
engine is stopped when the build is done, like every other process the
testbed starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from powgate_testbed._process import (
    ManagedProcess,
    Service,
    StartupError,
    stop_all,
    tail,
    wait_until,
)

__all__ = ["DockerEngine", "DockerError", "DockerMissingError"]

_START_TIMEOUT = 60.0
_STOP_GRACE = 15.0
_LOG_TAIL_LINES = 30


class DockerError(RuntimeError):
    """A docker command failed; the message carries its output."""


class DockerMissingError(FileNotFoundError):
    """Neither a running Docker engine nor `dockerd` to start one."""


class DockerEngine(Service):
    """`docker` commands against a running engine, or against one started here.

    `root` holds the private engine's state (its image layers survive between
    builds, so a rebuild reuses them) and a lock: two builds on one machine
    take turns instead of fighting over the same data folder.
    """

    def __init__(self, *, root: Path) -> None:
        self.root = root
        self._client = shutil.which("docker")
        self._env = dict(os.environ)
        self._process: ManagedProcess | None = None
        self._lock: contextlib.ExitStack | None = None

    @property
    def private(self) -> bool:
        """Whether the engine is the one started here (an old Debian engine, legacy builder)."""
        return self._process is not None

    def start(self) -> None:
        if self._client is None:
            raise DockerMissingError("no `docker` command; run `make system-deps` (docker.io)")
        if self._answers():
            return
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise DockerMissingError(
                "no Docker engine is running and `dockerd` is not installed; "
                "run `make system-deps` (Debian's docker.io)"
            )
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(_locked(self.root / "lock"))
        socket = self.root / "docker.sock"
        # The engine's runtime folder holds containerd's socket: a short path
        # under /run keeps it within the 108 bytes a socket path may have.
        exec_root = Path("/run/powgate-docker") / hashlib.sha256(bytes(self.root)).hexdigest()[:12]
        self._env["DOCKER_HOST"] = f"unix://{socket}"
        # The old engine's BuildKit would fetch a Dockerfile front end from a
        # registry; the classic builder needs nothing from outside.
        self._env["DOCKER_BUILDKIT"] = "0"
        print(f">> starting a private Docker engine (state in {self.root})", file=sys.stderr)
        self._process = ManagedProcess(
            name="dockerd",
            argv=[
                dockerd,
                f"--data-root={self.root / 'data'}",
                f"--exec-root={exec_root}",
                f"--pidfile={self.root / 'dockerd.pid'}",
                f"--host=unix://{socket}",
                # Hands off the host's network: builds use --network host.
                "--bridge=none",
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
            ],
            log_path=self.root / "dockerd.log",
            die_with_parent=True,
        )
        try:
            wait_until(
                self._answers,
                what="the Docker engine",
                timeout=_START_TIMEOUT,
                watch=[self._process],
            )
        except StartupError as exc:
            self.stop()
            log = tail(self.root / "dockerd.log", lines=_LOG_TAIL_LINES)
            raise StartupError(f"{exc}\n--- dockerd.log ---\n{log}") from exc

    def stop(self) -> None:
        if self._process is not None:
            stop_all([self._process], grace=_STOP_GRACE)
            self._process = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def run(self, *args: str, stdin: Path | None = None) -> str:
        """Run `docker ARGS`, return its output; `DockerError` with the output if it fails."""
        assert self._client is not None
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(stdin.open("rb")) if stdin else subprocess.DEVNULL
            result = subprocess.run(
                [self._client, *args],
                stdin=source,
                capture_output=True,
                env=self._env,
                check=False,
            )
        output = result.stdout.decode(errors="replace")
        if result.returncode != 0:
            error = result.stderr.decode(errors="replace")
            raise DockerError(f"docker {' '.join(args)} failed:\n{output[-4000:]}{error[-4000:]}")
        return output

    def stream(self, args: Sequence[str], *, prefix: str) -> None:
        """Run `docker ARGS`, printing its output line by line (a long build shows progress)."""
        assert self._client is not None
        lines: list[str] = []
        with subprocess.Popen(
            [self._client, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._env,
            text=True,
            errors="replace",
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                print(f"{prefix}{line}", end="", file=sys.stderr)
        if process.returncode != 0:
            raise DockerError(f"docker {' '.join(args)} failed:\n{''.join(lines[-40:])}")

    def _answers(self) -> bool:
        assert self._client is not None
        result = subprocess.run(
            [self._client, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            env=self._env,
            check=False,
        )
        return result.returncode == 0


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f">> waiting for another image build ({path})", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
