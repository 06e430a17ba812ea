"""Estimate what a component adds to its image: the installed size of its wheels.

    python hack/image_size.py sidecar     # or: make image-size

Walks the dependency closure of ``powgate[<extra>]`` through the metadata of
the distributions installed in this environment (the same wheels the
Dockerfile's build stage installs into /opt/powgate) and sums the sizes of
the files each one installed (its RECORD). Byte-code caches are left out:
the images set PYTHONDONTWRITEBYTECODE and never write them. The base image
(python:3.11-slim-bookworm) comes on top and is reported separately in
docs/images.md, since it cannot be measured without a Docker engine.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

#: Installed alongside in the build stage and removed before the runtime stage.
_REMOVED = frozenset({"pip", "setuptools"})


def closure(root: str, extra: str) -> dict[str, Distribution]:
    """Every distribution ``root[extra]`` needs, by canonical name."""
    found: dict[str, Distribution] = {}
    visited: set[tuple[str, frozenset[str]]] = set()
    pending = [(canonicalize_name(root), frozenset({extra}))]
    while pending:
        name, extras = pending.pop()
        if (name, extras) in visited:
            continue
        visited.add((name, extras))
        dist = found.setdefault(name, distribution(name))
        for text in dist.requires or []:
            req = Requirement(text)
            # A requirement counts when its marker holds for one of the extras asked for.
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": e}) for e in extras or {""}
            ):
                continue
            child = canonicalize_name(req.name)
            if child not in _REMOVED:
                pending.append((child, frozenset(req.extras)))
    return found


def installed_bytes(dist: Distribution) -> int:
    """Bytes of the files a distribution installed (its sources, for an editable install)."""
    root = _editable_root(dist)
    # An editable install records only a path hook; the wheel holds the package folders.
    files = (
        list(root.glob("*/powgate*/**/*"))
        if root is not None
        else [Path(str(f.locate())) for f in dist.files or []]
    )
    return sum(
        p.stat().st_size
        for p in files
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def _editable_root(dist: Distribution) -> Path | None:
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    info = json.loads(text)
    if not info.get("dir_info", {}).get("editable"):
        return None
    return Path(info["url"].removeprefix("file://"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("extra", help="the component's extra: sidecar or operator")
    args = parser.parse_args()
    try:
        dists = closure("powgate", args.extra)
    except PackageNotFoundError as exc:
        print(f"not installed here: {exc}", file=sys.stderr)
        return 1
    sizes = sorted(((installed_bytes(d), n) for n, d in dists.items()), reverse=True)
    for size, name in sizes:
        print(f"{size / 2**20:8.2f} MiB  {name}")
    total = sum(size for size, _ in sizes)
    print(f"{total / 2**20:8.2f} MiB  total in /opt/powgate ({len(sizes)} distributions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
