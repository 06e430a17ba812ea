"""Reloading the config file, the key ring and what sits beside them when they change on disk.

Beside the key ring (a mounted Secret folder) the operator puts the trusted
API-key digests (``apikeys.json``); beside the config file (a mounted
ConfigMap folder) the reputation list (``reputation.json``). Either may be
absent: no trusted keys, no list.

Polling ``stat`` is a system call per file per interval: cheaper than any
notification machinery, and it sees what inotify misses in Kubernetes, where
a mounted Secret or ConfigMap is updated by swapping a symlink (``..data``)
rather than writing the file. The signature includes the inode, so a swap to
a file with the same size and mtime is still noticed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from powgate import KeyRing, KeyRingError
from powgate.contract import KEYRING_SECRET_KEY
from powgate.pricing import API_KEYS_DATA_KEY, ApiKeyHashes
from powgate.reputation import REPUTATION_DATA_KEY

from ._app import Sidecar

__all__ = ["FileWatch", "key_path", "poll_files"]

log = logging.getLogger("powgate.sidecar")

_Signature = tuple[int, int, int, int] | None


class FileWatch:
    """Tells whether a file differs from when it was last looked at."""

    __slots__ = ("_last", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last = self._signature()

    def _signature(self) -> _Signature:
        try:
            st = os.stat(self.path)  # follows symlinks: a swapped target is a new inode
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def changed(self) -> bool:
        current = self._signature()
        if current == self._last:
            return False
        self._last = current
        return True


def key_path(path: Path) -> Path:
    """The key file itself: a mounted Secret folder holds it as ``keyring.json``."""
    return path / KEYRING_SECRET_KEY if path.is_dir() else path


def _reload_keys(*, sidecar: Sidecar, path: Path) -> None:
    try:
        ring = KeyRing.load(path)
    except KeyRingError as exc:
        sidecar.metrics.config_reloads_total.labels("keyfile", "invalid").inc()
        log.error("%s; keeping the key ring in force", exc, extra={"source": "keyfile"})
        return
    sidecar.apply_keyring(ring)


def _reload_api_keys(*, sidecar: Sidecar, path: Path) -> None:
    try:
        hashes = ApiKeyHashes.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        hashes = ApiKeyHashes()  # removed: nobody is trusted by key any more
    except (OSError, ValidationError) as exc:
        sidecar.metrics.config_reloads_total.labels("apikeys", "invalid").inc()
        log.error(
            "trusted API keys in %s unusable (%s); keeping those in force",
            path,
            str(exc).splitlines()[0],
            extra={"source": "apikeys"},
        )
        return
    sidecar.apply_api_keys(hashes)


def _reload_reputation(*, sidecar: Sidecar, path: Path) -> None:
    try:
        text: bytes | None = path.read_bytes()
    except FileNotFoundError:
        text = None
    except OSError as exc:
        sidecar.report_source_error(
            source="reputation", why=f"reputation list {path} cannot be read: {exc.strerror}"
        )
        return
    sidecar.apply_reputation(text, source="reputation")


def _reload_config(*, sidecar: Sidecar, path: Path) -> None:
    try:
        text = path.read_bytes()
    except OSError as exc:
        sidecar.report_source_error(
            source="file", why=f"config file {path} cannot be read: {exc.strerror}"
        )
        return
    sidecar.apply_document(text, source="file")


async def poll_files(
    sidecar: Sidecar, *, key_file: Path, config_file: Path | None, interval: float = 1.0
) -> None:
    """Reload the key ring and (if given) the config file when they change, until cancelled."""
    watches: list[tuple[FileWatch, Callable[[], None]]] = []
    keys = key_path(key_file)
    watches.append((FileWatch(keys), lambda: _reload_keys(sidecar=sidecar, path=keys)))
    api_keys = keys.with_name(API_KEYS_DATA_KEY)
    _reload_api_keys(sidecar=sidecar, path=api_keys)
    watches.append((FileWatch(api_keys), lambda: _reload_api_keys(sidecar=sidecar, path=api_keys)))
    if config_file is not None:
        config = config_file
        watches.append((FileWatch(config), lambda: _reload_config(sidecar=sidecar, path=config)))
        listed = config.with_name(REPUTATION_DATA_KEY)
        _reload_reputation(sidecar=sidecar, path=listed)
        watches.append(
            (FileWatch(listed), lambda: _reload_reputation(sidecar=sidecar, path=listed))
        )
    while True:
        await asyncio.sleep(interval)
        for watch, reload in watches:
            if watch.changed():
                reload()
