"""The container images, built on this machine without pulling anything.

    python -m powgate_testbed.images build     # = make images
    python -m powgate_testbed.images sizes     # the table in docs/images.md

No container registry is reachable from the machines this project is built
on, so every layer comes from what the package registries serve:

1. **Bases**: Debian root file systems with Python 3.11, made by
   `mmdebstrap` from the Debian mirror this machine's apt already uses (its
   own sources file, so no address is written down here), imported as
   `powgate-python:3.11-bookworm` (the part `python:3.11-slim-bookworm`
   plays for users who can pull) and, with a C compiler and the headers of
   Python and OpenSSL added, `powgate-python-build:3.11-bookworm` (the part of
   `python:3.11-bookworm`: the sidecar's build stage compiles its request
   path and `powgate._native`; the runtime stage has no compiler).
2. **Wheels**: the project's dependencies, built or fetched on this machine
   by pip into `<cache>/images/wheels` (then completed by the base's own pip,
   whose interpreter evaluates the dependencies' markers) and served to the
   builds on loopback.
3. **Images**: the unchanged Dockerfiles (`sidecar/`, `operator/`,
   `testbed/`), given the base as `PYTHON_IMAGE` and the wheel folder as
   `WHEELHOUSE`, then saved as `<cache>/images/checkouts/<checkout>/<name>.tar`
   (a folder per checkout) for the real node's container runtime.
4. **Pause**: the pod sandbox's image, a static C program (`hack/pause.c`).

Each step is skipped when its inputs have not changed since the last build
(a digest of them is kept beside the result), so a second `make images`
starts no Docker engine at all.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from powgate_testbed._docker import DockerEngine, DockerError, DockerMissingError
from powgate_testbed.cluster import cache_dir

__all__ = [
    "BASE_IMAGE",
    "BUILD_IMAGE",
    "IMAGES",
    "PAUSE",
    "Image",
    "ImageBuildError",
    "checkout_dir",
    "image_dir",
    "main",
]

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Image:
    """One image `make images` builds: its source, and the tar the node loads.

    The source is a Dockerfile, except for the pause image's: its C program.
    ``compiles``: its Dockerfile has a build stage with a C compiler
    (``ARG BUILD_IMAGE``).
    """

    name: str
    source: str
    compiles: bool = False

    def reference(self, tag: str) -> str:
        return f"powgate-{self.name}:{tag}"

    def archive(self, cache: Path) -> Path:
        return checkout_dir(cache) / f"{self.name}.tar"


IMAGES = (
    Image(name="sidecar", source="sidecar/Dockerfile", compiles=True),
    Image(name="operator", source="operator/Dockerfile"),
    Image(name="standin", source="testbed/Dockerfile"),
)
#: Debian's Python 3.11, as `python:3.11-slim-bookworm` has it.
BASE_IMAGE = "powgate-python:3.11-bookworm"
#: The same with a C compiler and the headers of Python and OpenSSL, as
#: `python:3.11-bookworm` has them: the build stage of the images that compile.
BUILD_IMAGE = "powgate-python-build:3.11-bookworm"
#: The pod sandbox image the real node's runtime is configured with.
PAUSE = Image(name="pause", source="hack/pause.c")
#: What the Dockerfiles copy into the build (the .dockerignore keeps the rest out).
_CONTEXT = ("pyproject.toml", "setup.py", "README.md", "src", "sidecar", "operator", "testbed")
#: The base: the interpreter, venv (ensurepip) and `python` as the images call it.
_BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
_BUILD_PACKAGES = (*_BASE_PACKAGES, "gcc", "libc6-dev", "python3-dev", "libssl-dev")
_SUITE = "bookworm"
#: Neither the build nor the services read these; they only add size.
_EXCLUDED = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")
_DIGEST_FILE = "inputs.json"
#: The record of a local build's compiled modules (setup.py), not a source.
_COMPILED = "_compiled.json"


class ImageBuildError(RuntimeError):
    """A step of the image build failed; the message says which and why."""


def image_dir(cache: Path) -> Path:
    return cache / "images"


def checkout_dir(cache: Path) -> Path:
    """This checkout's images and their inputs, beside the shared base and wheels.

    Checkouts that share one cache (git worktrees) build from different
    sources: one must never load the images another built.
    """
    return image_dir(cache) / "checkouts" / hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def _tree_digest(paths: Sequence[Path]) -> str:
    """A digest of the files under `paths` (names and contents), as the build context has them.

    Byte-code caches and what a local build compiled (`.dockerignore` keeps
    them out of the context too) are left aside.
    """
    h = hashlib.sha256()
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            if (
                "__pycache__" in path.parts
                or path.suffix in (".pyc", ".so")
                or path.name == _COMPILED
            ):
                continue
            h.update(str(path.relative_to(ROOT)).encode() + b"\0")
            h.update(path.read_bytes())
    return h.hexdigest()


class _Digests:
    """The inputs each result was built from, kept in `<images>/inputs.json`."""

    def __init__(self, path: Path) -> None:
        self._path = path
        try:
            self._known: dict[str, str] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            self._known = {}

    def current(self, name: str, digest: str, result: Path) -> bool:
        return self._known.get(name) == digest and result.exists()

    def of(self, name: str) -> str:
        return self._known.get(name, "")

    def record(self, name: str, digest: str) -> None:
        self._known[name] = digest
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._known, indent=2, sort_keys=True))
        tmp.replace(self._path)


def _step(message: str) -> None:
    print(f">> {message}", file=sys.stderr, flush=True)


def _run(argv: Sequence[str], *, what: str, cwd: Path | None = None) -> None:
    """Run a build tool, showing its output as it goes (the first build takes minutes)."""
    started = time.monotonic()
    result = subprocess.run(list(argv), cwd=cwd, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise ImageBuildError(f"{what} failed (exit code {result.returncode}): {' '.join(argv)}")
    _step(f"{what}: {time.monotonic() - started:.0f} s")


def _apt_sources() -> Path:
    """This machine's Debian sources: mmdebstrap copies them into the new root."""
    for candidate in (
        Path("/etc/apt/sources.list.d/debian.sources"),
        Path("/etc/apt/sources.list"),
    ):
        if candidate.is_file() and candidate.read_text().strip():
            return candidate
    raise ImageBuildError("no Debian sources in /etc/apt: the base is built from them")


def _apt_options() -> list[str]:
    """The host apt's `Acquire::` settings (proxies, date checks of a mirror), for mmdebstrap."""
    dump = subprocess.run(
        ["apt-config", "dump", "--format", '%f "%v";%n', "Acquire"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    wanted = (
        "Acquire::http::Proxy",
        "Acquire::https::Proxy",
        "Acquire::Check-Valid-Until",
        "Acquire::Check-Date",
    )
    return [f"--aptopt={line}" for line in dump.splitlines() if line.startswith(wanted)]


def build_base(
    *, cache: Path, digests: _Digests, name: str = "base", packages: Sequence[str] = _BASE_PACKAGES
) -> Path:
    """A base root file system as a tarball (`mmdebstrap`, from Debian's packages)."""
    out = image_dir(cache) / f"{name}-rootfs.tar"
    sources = _apt_sources()
    digest = _digest(_SUITE, *packages, *_EXCLUDED, sources.read_bytes())
    if digests.current(name, digest, out):
        return out
    if shutil.which("mmdebstrap") is None:
        raise ImageBuildError("mmdebstrap is not installed; run `make system-deps`")
    _step(f"building the {name} root file system from Debian {_SUITE} packages (mmdebstrap)")
    tmp = out.with_suffix(".tmp.tar")
    _run(
        [
            "mmdebstrap",
            "--variant=essential",
            f"--include={','.join(packages)}",
            # Merged /usr without the usrmerge package, which would pull in Perl.
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
            *_apt_options(),
            *(f"--dpkgopt=path-exclude={path}" for path in _EXCLUDED),
            _SUITE,
            str(tmp),
            str(sources),
        ],
        what="mmdebstrap",
    )
    tmp.replace(out)
    digests.record(name, digest)
    return out


def build_wheels(*, docker: DockerEngine, folder: Path) -> None:
    """Every wheel the images install, in ``folder``: this machine's pip, then the base's.

    This machine's pip builds what needs a compiler (the base has none). The
    base's own pip then adds what its interpreter needs beyond that: markers
    such as ``python_full_version`` differ between this machine's Python and
    Debian's (redis needs async-timeout below 3.11.3), and only the
    interpreter that installs the wheels evaluates them right. It runs in a
    container on the host's network with this machine's pip settings.
    """
    _step("building the wheels the images install (pip wheel)")
    shutil.rmtree(folder, ignore_errors=True)
    extras = ",".join(image.name for image in IMAGES)
    # The build backend too: the Dockerfiles build powgate itself from its sources.
    backend = _build_backend()
    _run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(folder),
         f".[{extras}]", *backend],
        what="pip wheel",
        cwd=ROOT,
    )  # fmt: skip
    _step(f"completing the wheels for {BASE_IMAGE}'s interpreter (its own pip)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="powgate-wheels-") as tmp:
        source = Path(tmp)
        for name in ("pyproject.toml", "setup.py", "README.md"):
            shutil.copy2(ROOT / name, source / name)
        skipped = shutil.ignore_patterns("__pycache__", "*.egg-info")
        for name in ("src", "sidecar", "operator", "testbed"):
            shutil.copytree(ROOT / name, source / name, ignore=skipped)
        env, mounts = _pip_settings()
        requirements = " ".join(f"'{r}'" for r in (f"/src[{extras}]", *backend))
        docker.stream(
            [
                "run", "--rm", "--network", "host",
                "--volume", f"{folder}:/wheels", "--volume", f"{source}:/src",
                *(f"--volume={path}:{path}:ro" for path in mounts),
                *(f"--env={name}={value}" for name, value in env.items()),
                BASE_IMAGE, "sh", "-c",
                "python -m venv /tmp/pip && /tmp/pip/bin/pip wheel --quiet --no-cache-dir "
                f"--wheel-dir /wheels --find-links /wheels {requirements}",
            ],
            prefix="   [wheels] ",
        )  # fmt: skip
    # powgate's own wheel is rebuilt inside each image from the sources.
    for own in folder.glob("powgate-*.whl"):
        own.unlink()
    _step(f"wheels for {BASE_IMAGE}: {time.monotonic() - started:.0f} s")


#: This machine's pip settings a container's pip needs to reach the same index.
_PIP_SETTINGS = ("index-url", "extra-index-url", "trusted-host", "cert", "proxy", "timeout")
_PIP_FILES = ("cert",)
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def _pip_settings() -> tuple[dict[str, str], list[str]]:
    """(environment, files to mount) that give a container's pip this machine's settings."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    env = {
        name: os.environ[name]
        for upper in _PROXY_VARIABLES
        for name in (upper, upper.lower())
        if name in os.environ
    }
    mounts = []
    for line in listed.splitlines():
        key, _, quoted = line.partition("=")
        name = key.rpartition(".")[2].removeprefix("default-")
        value = quoted.strip().strip("'\"")
        if name not in _PIP_SETTINGS or not value:
            continue
        env[f"PIP_{name.upper().replace('-', '_')}"] = value
        if name in _PIP_FILES and Path(value).is_file():
            mounts.append(value)
    return env, mounts


def _build_backend() -> list[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(data["build-system"]["requires"])


@contextlib.contextmanager
def _served(folder: Path) -> Iterator[str]:
    """`folder` on a loopback HTTP port for the length of the block; yields its URL.

    pip reads the listing as a `--find-links` page.
    """

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="wheelhouse", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def build_pause(*, cache: Path, digests: _Digests) -> Path:
    """The pause program's root file system (one static binary) as a tarball."""
    source = ROOT / PAUSE.source
    out = image_dir(cache) / "pause-rootfs.tar"
    digest = _digest(source.read_bytes())
    if digests.current("pause-rootfs", digest, out):
        return out
    _step("compiling the pause program (gcc -static)")
    binary = image_dir(cache) / "pause"
    _run(["gcc", "-static", "-Os", "-s", "-o", str(binary), str(source)], what="gcc")
    with tarfile.open(out, "w") as tar:
        info = tar.gettarinfo(str(binary), arcname="pause")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        with binary.open("rb") as handle:
            tar.addfile(info, handle)
    digests.record("pause-rootfs", digest)
    return out


def build(*, cache: Path, tag: str, python_image: str | None) -> None:
    """Every image, as `<name>.tar` in `checkout_dir(cache)`; unchanged ones are skipped."""
    folder = image_dir(cache)
    checkout_dir(cache).mkdir(parents=True, exist_ok=True)
    digests = _Digests(folder / _DIGEST_FILE)
    built = _Digests(checkout_dir(cache) / _DIGEST_FILE)
    started = time.monotonic()
    offline = python_image is None
    base = build_base(cache=cache, digests=digests) if offline else None
    builder = (
        build_base(cache=cache, digests=digests, name="build-base", packages=_BUILD_PACKAGES)
        if offline
        else None
    )
    wheels = folder / "wheels" if offline else None
    # The base's interpreter decides which wheels it needs, so its digest is an input.
    wheel_inputs = _digest((ROOT / "pyproject.toml").read_bytes(), sys.version, digests.of("base"))
    new_wheels = wheels is not None and not digests.current("wheels", wheel_inputs, wheels)
    pause = build_pause(cache=cache, digests=digests)
    context = _tree_digest([ROOT / name for name in _CONTEXT] + [ROOT / ".dockerignore"])
    # The base's digest stands for the base image: same packages, same sources.
    inputs = {
        image.name: _digest(
            context,
            (ROOT / image.source).read_bytes(),
            tag,
            python_image or digests.of("base"),
            wheel_inputs if offline else "",
            digests.of("build-base") if offline and image.compiles else "",
        )
        for image in IMAGES
    }
    inputs[PAUSE.name] = _digest(digests.of("pause-rootfs"), tag)
    stale = [
        image
        for image in (*IMAGES, PAUSE)
        if not built.current(image.name, inputs[image.name], image.archive(cache))
    ]
    if not stale and not new_wheels:
        _step(f"images up to date in {checkout_dir(cache)}")
        return
    with DockerEngine(root=cache / "docker") as docker:
        if base is not None:
            _import_base(docker, base=base, digest=digests.of("base"), reference=BASE_IMAGE)
        if builder is not None:
            _import_base(
                docker, base=builder, digest=digests.of("build-base"), reference=BUILD_IMAGE
            )
        if new_wheels and wheels is not None:
            build_wheels(docker=docker, folder=wheels)
            digests.record("wheels", wheel_inputs)
        for image in stale:
            reference = image.reference(tag)
            if image is PAUSE:
                docker.run("import", "--change", 'ENTRYPOINT ["/pause"]', str(pause), reference)
            else:
                _build_one(
                    docker, image=image, reference=reference, base=python_image or BASE_IMAGE,
                    build_base=None if python_image else BUILD_IMAGE, wheels=wheels,
                )  # fmt: skip
            _step(f"saving {reference} to {image.archive(cache)}")
            tmp = image.archive(cache).with_suffix(".tmp")
            docker.run("save", "--output", str(tmp), reference)
            tmp.replace(image.archive(cache))
            built.record(image.name, inputs[image.name])
    _step(f"images built in {time.monotonic() - started:.0f} s")


def _import_base(docker: DockerEngine, *, base: Path, digest: str, reference: str) -> None:
    """Import the base unless the engine has it from the same inputs.

    A fresh import is a new image, and would make every build after it start
    from scratch instead of from the engine's layer cache.
    """
    try:
        imported = docker.run("image", "inspect", "--format", "{{.Comment}}", reference)
    except DockerError:
        imported = ""
    if imported.strip() == digest:
        return
    _step(f"importing the base as {reference}")
    docker.run("import", "--message", digest, "--change", 'CMD ["python3"]', str(base), reference)


def _build_one(
    docker: DockerEngine,
    *,
    image: Image,
    reference: str,
    base: str,
    build_base: str | None,
    wheels: Path | None,
) -> None:
    """``build_base``: the compiling build stage's image (``None``: the Dockerfile's default)."""
    _step(f"docker build {reference} ({image.source})")
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        args = ["build", "--file", str(ROOT / image.source), "--tag", reference]
        args += ["--build-arg", f"PYTHON_IMAGE={base}"]
        if image.compiles and build_base is not None:
            args += ["--build-arg", f"BUILD_IMAGE={build_base}"]
        if wheels is not None:
            url = stack.enter_context(_served(wheels))
            # The build's containers share the host's network to reach the
            # wheel folder on loopback; nothing else is reachable or needed.
            args += ["--network", "host", "--build-arg", f"WHEELHOUSE={url}"]
        docker.stream([*args, str(ROOT)], prefix=f"   [{image.name}] ")
    _step(f"{reference}: {time.monotonic() - started:.0f} s")


def sizes(*, cache: Path) -> int:
    """Print each saved image's uncompressed size (its layers, as the runtime stores them)."""
    for image in (*IMAGES, PAUSE):
        archive = image.archive(cache)
        if not archive.exists():
            print(f"{image.name}: not built (make images)")
            continue
        with tarfile.open(archive) as tar:
            layers = sum(m.size for m in tar.getmembers() if m.name.endswith("layer.tar"))
        print(f"{image.name:<10} {layers / 1e6:8.1f} MB")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m powgate_testbed.images",
        description="Build the container images without pulling, or report their sizes.",
    )
    parser.add_argument("action", choices=["build", "sizes"])
    parser.add_argument("--tag", default=os.environ.get("IMAGE_TAG") or "dev")
    parser.add_argument(
        "--python-image",
        default=os.environ.get("PYTHON_IMAGE") or None,
        help="a base to pull instead of building one (e.g. python:3.11-slim-bookworm)",
    )
    args = parser.parse_args(argv)
    cache = cache_dir()
    if args.action == "sizes":
        return sizes(cache=cache)
    try:
        build(cache=cache, tag=args.tag, python_image=args.python_image)
    except (ImageBuildError, DockerError, DockerMissingError) as exc:
        print(f"make images failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
