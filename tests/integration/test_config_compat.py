"""An older sidecar process meets documents from a newer operator (issue: upgrades).

The real ``powgate sidecar`` reads its config file: a document with fields it
does not know is applied (the fields ignored), one of a newer contract is
refused while the last good config stays in force.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from _sidecar_process import ready, start_sidecar

from powgate import CHALLENGE_PATH, Challenge, KeyRing
from powgate.config import CONFIG_CONTRACT, SidecarConfig
from powgate_testbed._process import stop_all
from waiting import eventually


def document(difficulty: int, **extra: Any) -> str:
    body: dict[str, Any] = json.loads(
        SidecarConfig.from_dict(
            {"policy": "ai/chat", "difficulty": difficulty, "minDifficulty": 1}
        ).to_json()
    )
    body.update(extra)
    return json.dumps(body)


def test_a_newer_operators_document_is_applied_and_a_newer_contract_is_not(
    tmp_path: Path,
) -> None:
    config_file, key_file = tmp_path / "config.json", tmp_path / "keyring.json"
    KeyRing.generate().save(key_file)
    # Fields a later version adds: at the top, and inside a route.
    newer = json.loads(document(321, clientBudgets={"perMinute": 5}))
    newer["routes"][0]["burst"] = 4
    config_file.write_text(json.dumps(newer))
    process, sidecar = start_sidecar(
        tmp_path=tmp_path,
        upstream="http://127.0.0.1:9",
        key_file=key_file,
        config_args=["--config-file", str(config_file)],
    )
    try:
        eventually(lambda: ready(sidecar.metrics_url + "/readyz"), what="the sidecar ready")

        def difficulty() -> int:
            response = httpx.get(
                sidecar.url + CHALLENGE_PATH, params={"path": "/v1/chat"}, timeout=10
            )
            return Challenge.from_json(response.content).maxnumber

        assert difficulty() == 321
        before = sidecar.metric('powgate_config_reloads_total{result="invalid",source="file"}')
        config_file.write_text(document(999, contract=CONFIG_CONTRACT + 1))
        eventually(
            lambda: (
                sidecar.metric('powgate_config_reloads_total{result="invalid",source="file"}')
                > before
            ),
            what="the newer contract refused",
        )
        assert difficulty() == 321  # the last good config stays in force
    finally:
        stop_all([process], grace=10)
    assert (
        "unknown to this version ignored: clientBudgets, routes[0].burst"
        in (tmp_path / "sidecar.log").read_text()
    )
