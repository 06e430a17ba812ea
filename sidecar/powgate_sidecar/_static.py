"""The browser solver's files and the interstitial page, loaded once from package data.

The files live in the core package (``powgate/static/``) so that every
distribution of the solver is the same bytes. Each asset is read at start-up
and served from memory with a strong ETag; a missing file is a 404, not a
crash, so a sidecar without the browser solver still protects API clients.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Final

__all__ = ["ASSETS", "Asset", "load_asset", "load_interstitial"]

log = logging.getLogger("powgate.sidecar")

#: URL name → (package file, media type). The hash-wasm builds are what
#: solver.js loads, beside worker.js, for Argon2id and scrypt challenges.
ASSETS: Final = {
    "solver.js": ("solver.js", "text/javascript; charset=utf-8"),
    "worker.js": ("worker.js", "text/javascript; charset=utf-8"),
    "argon2.js": ("hash-wasm/argon2.umd.min.js", "text/javascript; charset=utf-8"),
    "scrypt.js": ("hash-wasm/scrypt.umd.min.js", "text/javascript; charset=utf-8"),
    "interstitial.js": ("interstitial.js", "text/javascript; charset=utf-8"),
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _read(name: str) -> bytes | None:
    try:
        return (resources.files("powgate").joinpath("static", *name.split("/"))).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def load_asset(name: str) -> Asset | None:
    """The asset published as ``/.well-known/powgate/<name>``, or ``None`` if not installed."""
    entry = ASSETS.get(name)
    if entry is None:
        return None
    body = _read(entry[0])
    if body is None:
        log.warning("browser solver file powgate/static/%s is not installed; serving 404", entry[0])
        return None
    return Asset(body, entry[1], f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def load_interstitial() -> bytes | None:
    """The page a browser navigation gets instead of a JSON challenge: static, the same for all.

    It carries no challenge: its script fetches one. So a refused navigation
    costs neither a challenge nor more bytes than the page, and the script
    and solver it loads are cached by the browser.
    """
    body = _read("interstitial.html")
    if body is None:
        log.warning(
            "interstitial page powgate/static/interstitial.html is not installed; browsers get JSON"
        )
    return body
