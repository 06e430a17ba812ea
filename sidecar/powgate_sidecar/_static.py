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

__all__ = ["ASSETS", "Asset", "Interstitial", "load_asset", "load_interstitial"]

log = logging.getLogger("powgate.sidecar")

#: URL name → (package file, media type). The hash-wasm builds are what
#: solver.js loads, beside worker.js, for Argon2id and scrypt challenges.
ASSETS: Final = {
    "solver.js": ("solver.js", "text/javascript; charset=utf-8"),
    "worker.js": ("worker.js", "text/javascript; charset=utf-8"),
    "argon2.js": ("hash-wasm/argon2.umd.min.js", "text/javascript; charset=utf-8"),
    "scrypt.js": ("hash-wasm/scrypt.umd.min.js", "text/javascript; charset=utf-8"),
}
_PLACEHOLDER: Final = "__POWGATE_CHALLENGE__"


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


class Interstitial:
    """The page a browser navigation gets instead of a JSON challenge."""

    __slots__ = ("_head", "_tail")

    def __init__(self, template: str) -> None:
        head, found, tail = template.partition(_PLACEHOLDER)
        if not found:
            raise ValueError(f"the interstitial template has no {_PLACEHOLDER} placeholder")
        self._head = head.encode()
        self._tail = tail.encode()

    def render(self, challenge_json: bytes) -> bytes:
        # Inside a <script> element, "</script>" would end it early; escaping
        # "<" keeps any JSON inert there and is still the same JSON value.
        return self._head + challenge_json.replace(b"<", b"\\u003c") + self._tail


def load_interstitial() -> Interstitial | None:
    body = _read("interstitial.html")
    if body is None:
        log.warning(
            "interstitial page powgate/static/interstitial.html is not installed; browsers get JSON"
        )
        return None
    try:
        return Interstitial(body.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        log.error("interstitial page is unusable (%s); browsers get JSON", exc)
        return None
