"""Child processes that never outlive their owner.

Each child runs in its own session (so one signal reaches it and anything it
forks), writes its output to a log file, and is described by a
`ProcessRecord` that a later run can use to find and stop it if its owner was
killed before it could clean up. Records carry the process start time, so a
recycled pid is never mistaken for one of ours.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import socket
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "ManagedProcess",
    "ProcessRecord",
    "Service",
    "StartupError",
    "free_ports",
    "process_alive",
    "stop_all",
    "stop_recorded",
    "tail",
    "wait_until",
]


class Service(ABC):
    """Something started and stopped as a whole; a `with` block stops it even on error."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_PR_SET_PDEATHSIG = 1
# Loaded once in the parent: the child between fork and exec must not import
# or load anything, only call into an already resolved function.
_LIBC = ctypes.CDLL(None, use_errno=True)
_POLL_INTERVAL = 0.1


class StartupError(RuntimeError):
    """A component did not come up; the message carries the tails of the logs."""


def _die_with_parent() -> None:
    # Runs in the child before exec: the kernel kills it with SIGKILL when the
    # thread that started it ends, which covers an owner killed with SIGKILL,
    # the one case no handler in the owner can clean up.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _on_main_thread() -> bool:
    # The parent-death signal fires when the *thread* that started the child
    # ends, not the process: from a worker thread (asyncio.to_thread, a
    # thread pool) it would kill the child as soon as that thread finishes.
    # There, the owner's atexit hook and the next run's clean-up must do.
    return threading.current_thread() is threading.main_thread()


def _start_ticks(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split
    # after its closing parenthesis. State is field 3, start time field 22.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """What a state file remembers about a started process."""

    name: str
    pid: int
    start_ticks: int

    @classmethod
    def of(cls, *, name: str, pid: int) -> ProcessRecord:
        """Describe a running process (start time 0 if it has already ended)."""
        return cls(name=name, pid=pid, start_ticks=_start_ticks(pid) or 0)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "start_ticks": self.start_ticks}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRecord:
        return cls(
            name=str(data["name"]), pid=int(data["pid"]), start_ticks=int(data["start_ticks"])
        )


def process_alive(record: ProcessRecord) -> bool:
    """Whether the process a record describes still runs (and is the same process)."""
    return _start_ticks(record.pid) == record.start_ticks


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class ManagedProcess:
    """A started binary: its own process group, its output in a log file."""

    def __init__(
        self,
        *,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        die_with_parent: bool,
    ) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("wb") as log:
            self._popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent and _on_main_thread() else None,
            )
        self.record = ProcessRecord.of(name=name, pid=self._popen.pid)

    def exit_code(self) -> int | None:
        """None while running, the exit code once it has ended."""
        return self._popen.poll()

    def wait(self, timeout: float) -> bool:
        """Reap the process; False if it is still running after `timeout` seconds."""
        try:
            self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True


def _terminate(pgid: int, *, wait: Callable[[float], bool], grace: float) -> None:
    """SIGTERM a process group; SIGKILL it if `wait(grace)` reports it still running."""
    _signal_group(pgid, signal.SIGTERM)
    if not wait(grace):
        _signal_group(pgid, signal.SIGKILL)
        wait(grace)
    # Whatever the process forked shares its group and dies with it.
    _signal_group(pgid, signal.SIGKILL)


def stop_all(processes: Iterable[ManagedProcess], *, grace: float) -> None:
    """Stop started processes one after the other, in the given order.

    In order, not all at once: a server whose backend (the API server's etcd)
    vanishes first stalls in its graceful shutdown until it is killed.
    """
    for process in processes:
        _terminate(process.record.pid, wait=process.wait, grace=grace)


def _wait_gone(record: ProcessRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(record):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True


def stop_recorded(records: Iterable[ProcessRecord], *, grace: float) -> list[str]:
    """Stop, in the given order, the processes a run left behind (not our children).

    Returns the names of those that were still running.
    """
    found = []
    for record in records:
        if process_alive(record):
            found.append(record.name)
            _terminate(record.pid, wait=functools.partial(_wait_gone, record), grace=grace)
    return found


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    # All sockets stay open until every port is picked, so the kernel cannot
    # hand out the same port twice.
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def tail(path: Path, *, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    watch: Iterable[ManagedProcess],
) -> None:
    """Poll `check` until it holds; fail early if a watched process exits."""
    watched = list(watch)
    deadline = time.monotonic() + timeout
    while True:
        for process in watched:
            code = process.exit_code()
            if code is not None:
                raise StartupError(f"{process.name} exited with code {code} before {what}")
        if check():
            return
        if time.monotonic() > deadline:
            raise StartupError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(_POLL_INTERVAL)
