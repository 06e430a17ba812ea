"""A bounded pool for key derivations, so that they never run on the event loop.

An ALTCHA v2 verification derives one key: milliseconds of CPU and up to
hundreds of MiB of memory (Argon2id, scrypt). The C code behind them
(OpenSSL's PBKDF2 and scrypt, libargon2) releases the GIL, so threads run
them in parallel. The pool bounds both the threads and the derivations
admitted at once (running or waiting); past that, :meth:`DerivationPool.reserve`
says no at once and the verifier answers ``verifier_busy`` without spending
the solution. A place stays taken until its derivation has finished, even if
the request that asked for it was cancelled meanwhile, so the bound holds.

By default a pool runs one thread per CPU the process may use: a container's
CPU limit (its cgroup's quota, v1 or v2) rounded up, or, without a limit, the
CPUs it may run on up to four, so that derivations beside the service a
sidecar protects never take every core of a large node.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Final, TypeVar

from ._errors import PoolFullError

__all__ = ["WAITING_PER_THREAD", "DerivationPool", "Ticket", "cpu_limit", "default_threads"]

T = TypeVar("T")
#: Derivations admitted per thread: a short queue absorbs a burst of genuine solutions.
WAITING_PER_THREAD: Final = 8
#: Threads without a CPU limit, at most.
_UNLIMITED_THREADS: Final = 4
_OCTAL_ESCAPE: Final = re.compile(r"\\([0-7]{3})")


def cpu_limit(*, proc: Path = Path("/proc/self")) -> float | None:
    """The process's CPU limit in CPUs (a container's limit), or ``None`` without one.

    The lowest CFS quota over the process's cgroup and its ancestors, read
    where ``proc``'s mount table says the CPU controller is mounted (cgroup
    v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``, v2 ``cpu.max``). Anything
    unreadable counts as no limit.
    """
    try:
        memberships = (proc / "cgroup").read_text()
        mounts = (proc / "mountinfo").read_text()
    except OSError:
        return None
    # hierarchy-id:controllers:path; v2's line is "0::path" (kept under "(v2)").
    paths: dict[str, str] = {}
    for line in memberships.splitlines():
        _, sep, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if sep and sep2:
            for controller in controllers.split(",") if controllers else ["(v2)"]:
                paths[controller] = path
    limits: list[float] = []
    for line in mounts.splitlines():
        # id parent major:minor root mount-point options [optional…] - type source super-options
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        dash = fields.index("-", 6)
        if len(fields) < dash + 4:
            continue
        kind, options = fields[dash + 1], fields[dash + 3].split(",")
        if kind == "cgroup2" and "(v2)" in paths:
            path, v2 = paths["(v2)"], True
        elif kind == "cgroup" and "cpu" in options and "cpu" in paths:
            path, v2 = paths["cpu"], False
        else:
            continue
        limits += _quotas(
            root=PurePosixPath(_unescape(fields[3])),
            mount_point=Path(_unescape(fields[4])),
            path=PurePosixPath(path),
            v2=v2,
        )
    return min(limits, default=None)


def _unescape(field: str) -> str:
    # The mount table writes spaces, tabs, newlines and backslashes as \ooo.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _quotas(
    *, root: PurePosixPath, mount_point: Path, path: PurePosixPath, v2: bool
) -> list[float]:
    """The quotas on the way from the process's cgroup up to the mount point."""
    # The mount shows the hierarchy from `root` down (a container sees its own cgroup
    # as the mount's top); a path outside it is the mount's top itself.
    folder = mount_point / path.relative_to(root) if path.is_relative_to(root) else mount_point
    found: list[float] = []
    while True:
        quota = _quota(folder, v2=v2)
        if quota is not None:
            found.append(quota)
        if folder == mount_point or mount_point not in folder.parents:
            return found
        folder = folder.parent


def _quota(folder: Path, *, v2: bool) -> float | None:
    try:
        if v2:
            quota, _, period = (folder / "cpu.max").read_text().partition(" ")
            if quota.strip() == "max":
                return None
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text()
            period = (folder / "cpu.cfs_period_us").read_text()
        value, every = int(quota), int(period)
    except (OSError, ValueError):
        return None
    return value / every if value > 0 and every > 0 else None


def default_threads(*, processes: int = 1, proc: Path = Path("/proc/self")) -> int:
    """Derivation threads for each of ``processes`` processes sharing one container.

    The container's CPU limit rounded up (never above the CPUs the process
    may run on), or without one those CPUs up to four, shared among the
    processes; at least one each.
    """
    available = len(os.sched_getaffinity(0))
    limit = cpu_limit(proc=proc)
    budget = min(available, _UNLIMITED_THREADS if limit is None else math.ceil(limit))
    return max(1, math.ceil(budget / processes))


class Ticket:
    """One place in the pool, held from :meth:`DerivationPool.reserve` until released."""

    __slots__ = ("_pool", "_used")

    def __init__(self, pool: DerivationPool) -> None:
        self._pool = pool
        self._used = False

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a pool thread; the place is released when it finishes."""
        if self._used:
            raise RuntimeError("a ticket runs one derivation")
        self._used = True
        future: Future[T] = self._pool._executor.submit(fn)
        future.add_done_callback(lambda _: self._pool._release())
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Give the place back if it was never used (idempotent)."""
        if not self._used:
            self._used = True
            self._pool._release()


class DerivationPool:
    """``workers`` threads and at most ``max_pending`` derivations admitted at once.

    By default :func:`default_threads` threads and :data:`WAITING_PER_THREAD`
    derivations admitted per thread.
    """

    def __init__(self, *, workers: int | None = None, max_pending: int | None = None) -> None:
        self.workers = workers or default_threads()
        self.max_pending = max_pending or self.workers * WAITING_PER_THREAD
        if self.workers < 1 or self.max_pending < self.workers:
            raise ValueError("need workers >= 1 and max_pending >= workers")
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="powgate-derive")
        self._lock = threading.Lock()
        #: Places taken (reserved, waiting or running); read by metrics.
        self.pending = 0
        #: Reservations refused because the pool was full, since start.
        self.refused = 0

    def reserve(self) -> Ticket | None:
        """A place for one derivation, or ``None`` at once when the pool is full."""
        with self._lock:
            if self.pending >= self.max_pending:
                self.refused += 1
                return None
            self.pending += 1
        return Ticket(self)

    async def run(self, fn: Callable[[], T]) -> T:
        """Reserve and run in one step; :class:`powgate.PoolFullError` when full."""
        ticket = self.reserve()
        if ticket is None:
            raise PoolFullError("the derivation pool is full")
        try:
            return await ticket.run(fn)
        finally:
            ticket.close()

    def _release(self) -> None:
        # Called from pool threads too (a finished future's callback).
        with self._lock:
            self.pending -= 1

    def close(self) -> None:
        """Stop the threads after the derivations already submitted."""
        self._executor.shutdown(wait=True, cancel_futures=True)
