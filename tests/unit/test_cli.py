"""The ``powgate`` command: in-process for every path, as a subprocess for the real thing."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from powgate import Challenge, KeyRing
from powgate.cli import ENTRY_POINT_GROUP, main, run


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "ring.json"
    assert main(["keys", "generate", "--out", str(path)]) == 0
    return path


def call(
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stdin: str = "",
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_challenge_solve_verify(
    key_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["challenge", "--key-file", str(key_file), "--difficulty", "3000", "--binding", "a/b:c"]
    code, challenge_json, _ = call(argv, capsys, monkeypatch)
    assert code == 0
    challenge = Challenge.from_json(challenge_json)
    assert (challenge.maxnumber, challenge.params.binding) == (3000, "a/b:c")
    code, payload, _ = call(["solve"], capsys, monkeypatch, challenge_json)
    assert code == 0
    verify = ["verify", "--key-file", str(key_file), "--binding", "a/b:c"]
    assert call(verify, capsys, monkeypatch, payload) == (0, "ok (difficulty 3000)\n", "")
    code, _, err = call([*verify[:3], "--binding", "x/y:z"], capsys, monkeypatch, payload)
    assert code == 1
    assert err.startswith("rejected: wrong_binding")
    code, _, err = call([*verify, "--min-difficulty", "5000"], capsys, monkeypatch, payload)
    assert (code, err.split(" (")[0]) == (1, "rejected: insufficient")


@pytest.mark.parametrize(
    ("options", "shape"),
    [
        (["--algorithm", "ARGON2ID", "--cost", "1", "--memory-cost", "64"], "parameters"),
        (["--algorithm", "PBKDF2/SHA-512", "--cost", "10"], "parameters"),
        (["--algorithm", "DeepSeekHashV1", "--target-path", "/api/v0/chat/completion"], "salt"),
    ],
)
def test_every_scheme_round_trips(
    key_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    options: list[str],
    shape: str,
) -> None:
    argv = ["challenge", "--key-file", str(key_file), "--difficulty", "40", "--binding", "a/b:c"]
    code, challenge_json, _ = call([*argv, *options], capsys, monkeypatch)
    assert code == 0
    assert shape in json.loads(challenge_json)
    code, payload, _ = call(["solve", "--workers", "2"], capsys, monkeypatch, challenge_json)
    assert code == 0
    verify = ["verify", "--key-file", str(key_file), "--binding", "a/b:c", "--min-difficulty", "40"]
    assert call(verify, capsys, monkeypatch, payload) == (0, "ok (difficulty 40)\n", "")


@pytest.mark.parametrize(
    ("stdin", "reason"), [("", "missing"), ("garbage!", "malformed"), ("A" * 3000, "oversized")]
)
def test_verify_rejects_garbage(
    key_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stdin: str,
    reason: str,
) -> None:
    code, _, err = call(["verify", "--key-file", str(key_file)], capsys, monkeypatch, stdin)
    assert code == 1
    assert err.startswith(f"rejected: {reason} (")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "not valid JSON"),
        ('{"version": 1, "active": "k1", "keys": []}', "'keys' must be a non-empty list"),
    ],
)
def test_key_file_errors_are_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    content: str | None,
    message: str,
) -> None:
    path = tmp_path / "keys.json"
    if content is not None:
        path.write_text(content)
    for command in (["challenge"], ["verify"], ["keys", "rotate", "publish"]):
        code, out, err = call([*command, "--key-file", str(path)], capsys, monkeypatch, "x")
        assert code == 2
        assert out == ""
        assert err.count("\n") == 1
        assert message in err
        assert err.startswith(f"powgate {command[0]}: key file {path}")


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (["solve"], "", "a challenge must be JSON"),
        (["solve"], "[]", "a challenge must be a JSON object"),
        (["solve", "--workers", "0"], "{}", "--workers must be at least 1"),
        (["solve"], "x" * 70_000, "input larger than"),
        (
            ["solve"],
            json.dumps(
                {
                    "algorithm": "SHA-1",
                    "challenge": "a",
                    "maxnumber": 1,
                    "salt": "s",
                    "signature": "s",
                }
            ),
            "unknown algorithm 'SHA-1'",
        ),
    ],
)
def test_solve_errors(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    stdin: str,
    message: str,
) -> None:
    code, _, err = call(argv, capsys, monkeypatch, stdin)
    assert code == 2
    assert err.startswith("powgate solve: ")
    assert message in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--difficulty", "0"], "--difficulty must be a positive integer"),
        (["--difficulty", str((1 << 40) + 1)], "difficulty must be within"),
        (["--ttl", "0"], "--ttl must be positive"),
        (["--cost", "3"], "do not apply to SHA-256"),
        (["--algorithm", "SCRYPT", "--cost", "1000"], "power of two"),
        (["--algorithm", "ARGON2ID", "--memory-cost", "999999999"], "memoryCost must lie"),
    ],
)
def test_challenge_option_errors(
    key_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    options: list[str],
    message: str,
) -> None:
    code, _, err = call(["challenge", "--key-file", str(key_file), *options], capsys, monkeypatch)
    assert code == 2
    assert message in err


def test_key_rotation_commands(
    key_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = ["keys", "rotate", "--key-file", str(key_file)]
    assert call([*keys, "activate"], capsys, monkeypatch)[0] == 2  # nothing published yet
    assert call([*keys, "publish"], capsys, monkeypatch)[1].startswith("published k2")
    assert KeyRing.load(key_file).active == "k1"
    assert call([*keys, "activate", "--grace", "0"], capsys, monkeypatch)[0] == 0
    ring = KeyRing.load(key_file)
    assert ring.active == "k2"
    assert [key.not_after is not None for key in ring.keys] == [True, False]
    # With no grace left, k1 is past its notAfter within the second after.
    monkeypatch.setattr("time.time", lambda: ring.keys[0].not_after + 1)  # type: ignore[operator]
    assert call([*keys, "prune"], capsys, monkeypatch)[1] == "dropped k1\n"
    assert [key.kid for key in KeyRing.load(key_file).keys] == ["k2"]
    assert call([*keys, "prune"], capsys, monkeypatch)[1] == "nothing to prune\n"


def test_generate_refuses_to_overwrite(
    key_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = key_file.read_text()
    code, _, err = call(["keys", "generate", "--out", str(key_file)], capsys, monkeypatch)
    assert (code, key_file.read_text()) == (2, before)
    assert "pass --force" in err
    assert (
        call(["keys", "generate", "--out", str(key_file), "--force"], capsys, monkeypatch)[0] == 0
    )
    assert key_file.read_text() != before


# -- plug-in subcommands --------------------------------------------------------


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[EntryPoint]:
    """Three real modules: one that works, one missing a dependency, one broken."""
    (tmp_path / "powgate_clitestok.py").write_text(
        textwrap.dedent(
            """
            def add_command(subparsers):
                parser = subparsers.add_parser("hello")
                parser.add_argument("--name", default="world")
                parser.set_defaults(func=lambda args: print(f"hello {args.name}") or 0)
            """
        )
    )
    (tmp_path / "powgate_clitestextra.py").write_text(
        "import powgate_dependency_that_is_not_installed\n\ndef add_command(subparsers): ...\n"
    )

    def entry(name: str, value: str) -> EntryPoint:
        return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)

    monkeypatch.syspath_prepend(str(tmp_path))
    return [
        entry("hello", "powgate_clitestok:add_command"),
        entry("needy", "powgate_clitestextra:add_command"),
        entry("gone", "powgate_clitestgone.cli:add_command"),
    ]


def test_plugin_command_runs(plugins: list[EntryPoint], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["hello", "--name", "pow"], commands=plugins) == 0
    assert capsys.readouterr().out == "hello pow\n"


def test_plugins_are_imported_only_when_run(
    plugins: list[EntryPoint], capsys: pytest.CaptureFixture[str]
) -> None:
    # The broken ones are listed but not imported when another command runs.
    with pytest.raises(SystemExit) as exited:
        run(["--help"], commands=plugins)
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "needy" in out
    assert "gone" in out
    assert "powgate_dependency_that_is_not_installed" not in sys.modules


def test_missing_extra_is_named(
    plugins: list[EntryPoint], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["needy"], commands=plugins) == 2
    assert capsys.readouterr().err == (
        "powgate needy: needs the 'clitestextra' extra (missing module "
        "'powgate_dependency_that_is_not_installed'): pip install 'powgate[clitestextra]'\n"
    )


def test_uninstallable_command_is_reported(
    plugins: list[EntryPoint], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["gone"], commands=plugins) == 2
    assert capsys.readouterr().err.startswith(
        "powgate gone: not available: powgate_clitestgone.cli:add_command cannot be imported"
    )


# -- as a subprocess ------------------------------------------------------------


def test_pipeline_as_subprocesses(key_file: Path) -> None:
    def powgate(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "powgate", *argv],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    challenge = powgate("challenge", "--key-file", str(key_file), "--difficulty", "2000")
    assert challenge.returncode == 0, challenge.stderr
    solved = powgate("solve", stdin=challenge.stdout)
    assert solved.returncode == 0, solved.stderr
    verified = powgate("verify", "--key-file", str(key_file), stdin=solved.stdout)
    assert (verified.returncode, verified.stdout) == (0, "ok (difficulty 2000)\n")
    mangled = powgate("verify", "--key-file", str(key_file), stdin=solved.stdout[::-1])
    assert mangled.returncode == 1
    assert mangled.stderr.startswith("rejected: ")
    missing = powgate("verify", "--key-file", str(key_file.with_name("nope.json")))
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
    assert missing.stderr.strip().endswith("does not exist")
