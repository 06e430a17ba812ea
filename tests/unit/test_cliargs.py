"""The command-line conventions every powgate command shares."""

from __future__ import annotations

import argparse

import pytest

from powgate.cliargs import add_env_argument, env_name, host_port, parse_host_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:9090", ("::1", 9090)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_host_port_reads_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["8080", ":8080", "host:", "host:http", "host:65536", "host:-1"])
def test_host_port_refuses_what_is_not_an_address(text: str) -> None:
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        parse_host_port(text)
    with pytest.raises(argparse.ArgumentTypeError, match="is not HOST:PORT"):
        host_port(text)


def test_flags_fall_back_to_their_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_name("--metrics-listen") == "POWGATE_METRICS_LISTEN"
    monkeypatch.setenv("POWGATE_METRICS_LISTEN", "127.0.0.1:1")
    parser = argparse.ArgumentParser()
    add_env_argument(parser, "--metrics-listen", type=host_port, default="0.0.0.0:9", help="h")
    add_env_argument(parser, "--other", default="x", help="h")
    assert parser.parse_args([]).metrics_listen == ("127.0.0.1", 1)
    assert parser.parse_args([]).other == "x"
    # The command line wins over the environment.
    assert parser.parse_args(["--metrics-listen", "127.0.0.2:2"]).metrics_listen == ("127.0.0.2", 2)
    assert "[env POWGATE_METRICS_LISTEN]" in parser.format_help()


def test_a_bad_environment_value_is_an_argparse_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWGATE_LISTEN", "nowhere")
    parser = argparse.ArgumentParser()
    add_env_argument(parser, "--listen", type=host_port, help="h")
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "'nowhere' is not HOST:PORT" in capsys.readouterr().err
