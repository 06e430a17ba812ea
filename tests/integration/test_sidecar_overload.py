"""One address opening thousands of connections does not starve another client's paid request.

A real ``powgate sidecar`` process runs with 256 file descriptors (``prlimit``,
as a container's ``ulimit -n`` would): one address holding more connections
than that would take every descriptor, and the next client's connection could
not be accepted, whoever it came from. With ``overload.maxConnectionsPerClient``
the flood's excess is answered 503 and closed on arrival, and a paid request
from another address goes through while the flood holds its connections.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
from _sidecar_process import start_sidecar, start_standin

from descriptors import allow_open_files
from powgate import CHALLENGE_PATH, Challenge, KeyRing, solve
from powgate.config import OverloadConfig, RouteConfig, SidecarConfig
from powgate_testbed._process import stop_all, wait_until

FILES: int = 256
CAP: int = 64
FLOOD: int = 2000


def test_a_flood_of_connections_from_one_address_leaves_room_for_a_paid_request(
    tmp_path: Path,
) -> None:
    allow_open_files(FLOOD + 512)
    standin, upstream = start_standin(tmp_path=tmp_path)
    config_file, key_file = tmp_path / "config.json", tmp_path / "keyring.json"
    config = SidecarConfig(
        policy="team/chat",
        difficulty=100,
        routes=[RouteConfig(name="models", paths=["/v1/*"], methods=["GET"])],
        overload=OverloadConfig(max_connections_per_client=CAP),
    )
    config_file.write_text(config.to_json())
    KeyRing.generate().save(key_file)
    sidecar, endpoints = start_sidecar(
        tmp_path=tmp_path,
        upstream=upstream,
        key_file=key_file,
        config_args=["--config-file", str(config_file)],
        launcher=["prlimit", f"--nofile={FILES}:{FILES}", "--"],
    )
    flood: list[socket.socket] = []
    try:
        endpoints.wait_ready(watch=[sidecar])
        host, port = endpoints.url.removeprefix("http://").split(":")
        # The paid client's challenge, fetched before the flood from the paid
        # client's own address: a connection from the flood's address that the
        # sidecar had not yet seen close would hold one of the cap's places.
        with _paid_client(endpoints.url) as client:
            answer = client.get(CHALLENGE_PATH, params={"path": "/v1/models", "method": "GET"})
            assert answer.status_code == 200
            challenge = Challenge.from_json(answer.content)
        payload = challenge.solution(solve(challenge).number).encode()
        # The flood: far more connections than the sidecar has descriptors, all from
        # 127.0.0.1, held open (the kernel completes each handshake before any accept).
        for _ in range(FLOOD):
            sock = socket.socket()
            sock.settimeout(10)
            sock.connect((host, int(port)))
            flood.append(sock)
        refusals = 'powgate_connections_refused_total{reason="client_connections"}'
        wait_until(
            lambda: endpoints.metric(refusals) == FLOOD - CAP,
            what="the flood's excess refused",
            timeout=60,
            watch=[sidecar],
        )
        refused = flood[-1].recv(4096)
        assert refused.startswith(b"HTTP/1.1 503 ")
        # Another address, with a valid solution, while the flood holds its connections.
        with _paid_client(endpoints.url) as client:
            paid = client.get("/v1/models", headers={"X-Powgate-Solution": payload})
        assert paid.status_code == 200
        assert endpoints.requests(route="models", outcome="admitted", reason="ok") == 1
    finally:
        for sock in flood:
            sock.close()
        stop_all([sidecar, standin], grace=10)


def _paid_client(url: str) -> httpx.Client:
    """The paid client, from another address than the flood's (127.0.0.1)."""
    return httpx.Client(
        base_url=url, timeout=30, transport=httpx.HTTPTransport(local_address="127.0.0.2")
    )
