"""A lint of the Dockerfiles, for a machine without a Docker engine (docs/images.md).

Each Dockerfile is parsed (continuations joined, comments dropped, build
arguments resolved) and held to the image rules: a pinned base, a build stage
that makes wheels, a final stage without package managers or compilers, a
numeric non-root user, a HEALTHCHECK on a port the process listens on, and an
entrypoint that the real `powgate` command line accepts — together with the
arguments the Helm chart adds.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# The chart's rendering helpers (pytest puts this folder on sys.path).
from test_chart import container, render

from powgate_operator.cli import add_command as add_operator_command
from powgate_sidecar.cli import add_command as add_sidecar_command
from powgate_testbed.standin import add_command as add_standin_command

ROOT = Path(__file__).resolve().parents[2]
#: Image → the folder of its Dockerfile; each installs the extra of its name.
DOCKERFILES = {"sidecar": "sidecar", "operator": "operator", "standin": "testbed"}
COMPONENTS = tuple(DOCKERFILES)
#: Pinned: a Python minor version and a Debian release in the tag, or a digest.
#: The runtime is a slim image; a build stage that compiles may use the full one.
_PINNED = re.compile(
    r"^python:(?P<python>3\.\d+(\.\d+)?)-(?P<slim>slim-)?(?P<debian>bookworm|trixie)"
    r"(@sha256:[0-9a-f]{64})?$"
)
#: What must never be in the runtime stage: package managers, compilers, build front ends.
_BUILD_TOOLS = re.compile(
    r"\b(apt-get|apt|apk|dnf|yum|gcc|g\+\+|cc|make|build-essential|pip3? (install|wheel)|"
    r"python -m pip (install|wheel))\b"
)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name or self.base}"
        return found[-1]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) pairs; comment lines and line continuations handled as Docker does."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue  # Docker drops comment lines, even inside a continuation.
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "the file ends inside a line continuation"
    result = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def stages(text: str) -> list[Stage]:
    args: dict[str, str] = {}
    result: list[Stage] = []
    for keyword, rest in instructions(text):
        if keyword == "ARG" and not result:
            arg, _, default = rest.partition("=")
            args[arg] = default
        elif keyword == "FROM":
            parts = rest.split()
            base = re.sub(
                r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], parts[0]
            )
            alias = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            result.append(Stage(base=base, name=alias))
        else:
            assert result, f"{keyword} before the first FROM"
            result[-1].instructions.append((keyword, rest))
    return result


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), "use the exec form (a JSON list), not a shell string"
    assert all(isinstance(v, str) for v in value)
    return value


@pytest.fixture(params=COMPONENTS)
def component(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def parsed(component: str) -> list[Stage]:
    return stages((ROOT / DOCKERFILES[component] / "Dockerfile").read_text())


def test_the_parser_joins_continuations_and_drops_comments() -> None:
    text = "ARG B=python:3.11-slim-bookworm\nFROM ${B} AS x\n# note\nRUN a \\\n# inner\n && b\n"
    (stage,) = stages(text)
    assert stage.base == "python:3.11-slim-bookworm"
    assert stage.name == "x"
    assert stage.instructions == [("RUN", "a && b")]


def test_every_stage_starts_from_a_pinned_base(component: str) -> None:
    for stage in parsed(component):
        assert _PINNED.match(stage.base), stage.base


def test_the_runtime_is_slim_and_the_build_stage_has_its_python(component: str) -> None:
    # The venv made in the build stage runs in the final one: one Python, one Debian.
    build, *_, final = parsed(component)
    built, runs = _PINNED.match(build.base), _PINNED.match(final.base)
    assert built
    assert runs
    assert runs.group("slim"), final.base
    assert built.group("python", "debian") == runs.group("python", "debian")


def test_wheels_are_built_in_a_build_stage_and_only_the_result_is_copied(component: str) -> None:
    build, *_, final = parsed(component)
    assert final is not build
    run = " ".join(build.all("RUN"))
    wheel = re.search(r"pip wheel --wheel-dir /wheels (.*?) ?'\.\[(\w+)\]'", run)
    assert wheel, run
    assert wheel.group(2) == component
    # Offline (`make images`): only the wheels at $WHEELHOUSE; otherwise pip's index.
    assert wheel.group(1) in ("", '${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"}')
    # The venv is installed from those wheels only: what was built is what ships.
    assert f"--no-index --find-links /wheels 'powgate[{component}]'" in run
    copies = final.all("COPY")
    assert copies == [f"--from={build.name} /opt/powgate /opt/powgate"]


def test_the_final_stage_has_no_build_tools(component: str) -> None:
    final = parsed(component)[-1]
    for keyword, args in final.instructions:
        assert keyword != "ADD", "ADD can fetch URLs and unpack archives; COPY is explicit"
        if keyword == "RUN":
            assert not _BUILD_TOOLS.search(args), args


def test_the_final_stage_runs_as_a_numeric_non_root_user(component: str) -> None:
    final = parsed(component)[-1]
    user = final.last("USER")
    match = re.fullmatch(r"(\d+):(\d+)", user)
    assert match, f"USER {user}: numeric uid:gid, so runAsNonRoot can check it"
    assert int(match.group(1)) != 0
    assert int(match.group(2)) != 0
    # Nothing may switch back to root after it.
    keywords = [kw for kw, _ in final.instructions]
    assert keywords.index("USER") == len(keywords) - 1 - keywords[::-1].index("USER")


def _listen_ports(component: str, final: Stage) -> set[int]:
    text = " ".join(final.all("ENV") + final.all("ENTRYPOINT"))
    return {int(p) for p in re.findall(r"0\.0\.0\.0:(\d+)", text)}


def test_a_healthcheck_asks_a_port_the_process_listens_on(component: str) -> None:
    final = parsed(component)[-1]
    check = final.last("HEALTHCHECK")
    assert "--interval=" in check
    assert "--timeout=" in check
    options, _, command = check.partition("CMD ")
    command_line = exec_form(command)
    assert command_line[0] == "python"  # the slim image has no curl
    (port,) = re.findall(r"127\.0\.0\.1:(\d+)/healthz", " ".join(command_line))
    assert int(port) in _listen_ports(component, final)
    exposed = {int(p) for line in final.all("EXPOSE") for p in line.split()}
    assert _listen_ports(component, final) <= exposed
    assert options


def _parse_cli(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser(prog="powgate", exit_on_error=False)
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_sidecar_command(subparsers)
    add_operator_command(subparsers)
    add_standin_command(subparsers)
    parser.parse_args(argv)


def _env(final: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in final.all("ENV"):
        for token in shlex.split(line):
            key, _, value = token.partition("=")
            env[key] = value
    return env


def test_the_sidecar_entrypoint_is_accepted_by_the_real_cli(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    final = parsed("sidecar")[-1]
    entrypoint = exec_form(final.last("ENTRYPOINT"))
    assert entrypoint[:2] == ["powgate", "sidecar"]
    env = _env(final)
    # Every POWGATE_* variable the image sets is one the sidecar reads.
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    add_sidecar_command(subparsers)
    known = set(re.findall(r"POWGATE_[A-Z_]+", subparsers.choices["sidecar"].format_help()))
    assert {k for k in env if k.startswith("POWGATE_")} <= known
    # The injected container sets its upstream; with it, the image's defaults parse.
    _parse_cli(
        [*entrypoint[1:], "--upstream", "http://127.0.0.1:8000"], env=env, monkeypatch=monkeypatch
    )


def test_the_operator_entrypoint_with_the_charts_args_is_accepted_by_the_real_cli(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    final = parsed("operator")[-1]
    entrypoint = exec_form(final.last("ENTRYPOINT"))
    assert entrypoint[:2] == ["powgate", "operator"]
    for values in ({}, {"operator": {"watchNamespaces": ["a", "b"], "verbose": True}}):
        args = container(render(values))["args"]
        _parse_cli(entrypoint[1:] + args, env=_env(final), monkeypatch=monkeypatch)


def test_the_standin_entrypoint_with_a_deployments_args_is_accepted_by_the_real_cli(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    final = parsed("standin")[-1]
    entrypoint = exec_form(final.last("ENTRYPOINT"))
    assert entrypoint[:2] == ["powgate", "standin"]
    _parse_cli(
        [*entrypoint[1:], "--concurrency", "4", "--tokens-per-second", "200"],
        env=_env(final),
        monkeypatch=monkeypatch,
    )


def test_a_wrong_flag_is_caught_by_the_cli_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The two tests above can fail: an unknown flag does not parse."""
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        _parse_cli(
            ["operator", "--all-namespaces", "--watch", "x"], env={}, monkeypatch=monkeypatch
        )
