"""Key-ring documents, and rotation that never rejects a challenge valid when issued."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from powgate import (
    HmacKey,
    Issuer,
    KeyRing,
    KeyRingError,
    MemoryReplayCache,
    Reason,
    Verifier,
    solve,
)
from powgate._keys import new_secret
from powgate.contract import KEYRING_SECRET_KEY

SECRET = base64.b64encode(b"s" * 32).decode()


def ring_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": 1, "active": "k1", "keys": [{"id": "k1", "secret": SECRET}]}
    doc.update(changes)
    return doc


def key_doc(**changes: Any) -> dict[str, Any]:
    return ring_doc(keys=[{"id": "k1", "secret": SECRET, **changes}])


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ("[]", "must be a JSON object"),
        (ring_doc(version=2), "unsupported key ring version 2"),
        (ring_doc(version=None), "unsupported key ring version None"),
        (ring_doc(active=None), "'active' must be a key id"),
        (ring_doc(active="k9"), "active key 'k9' is not in the ring"),
        (ring_doc(keys=[]), "'keys' must be a non-empty list"),
        (ring_doc(keys={"k1": SECRET}), "'keys' must be a non-empty list"),
        (ring_doc(keys=["k1"]), r"keys\[0\] must be an object"),
        (key_doc(id="bad id!"), r"keys\[0\]\.id must match"),
        (key_doc(id=""), r"keys\[0\]\.id must match"),
        (key_doc(id="k" * 33), r"keys\[0\]\.id must match"),
        (key_doc(secret=None), r"keys\[0\]\.secret must be a base64 string"),
        (key_doc(secret="not base64!"), r"keys\[0\]\.secret is not valid base64"),
        (key_doc(secret=base64.b64encode(b"s" * 31).decode()), "at least 32 bytes"),
        (key_doc(notAfter="soon"), r"keys\[0\]\.notAfter must be unix seconds"),
        (key_doc(notAfter=True), r"keys\[0\]\.notAfter must be unix seconds"),
        (key_doc(notAfter=1.5), r"keys\[0\]\.notAfter must be unix seconds"),
        (
            ring_doc(keys=[{"id": "k1", "secret": SECRET}, {"id": "k1", "secret": SECRET}]),
            "key ids must be unique",
        ),
        ("x" * 70_000, "larger than"),
    ],
)
def test_malformed_documents(document: str | bytes | dict[str, Any], message: str) -> None:
    text = document if isinstance(document, str | bytes) else json.dumps(document)
    with pytest.raises(KeyRingError, match=message):
        KeyRing.from_json(text)


def test_document_round_trip_and_file_forms(tmp_path: Path) -> None:
    ring = KeyRing.generate().with_key(HmacKey("k2", b"x" * 40, not_after=123))
    assert KeyRing.from_json(ring.to_json()) == ring
    path = tmp_path / "ring.json"
    ring.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert KeyRing.load(path) == ring
    # A mounted Secret is a folder holding keyring.json.
    folder = tmp_path / "secret"
    folder.mkdir()
    ring.save(folder)
    assert (folder / KEYRING_SECRET_KEY).exists()
    assert KeyRing.load(folder) == ring


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match=r"key file .*missing\.json does not exist"):
        KeyRing.load(tmp_path / "missing.json")
    with pytest.raises(KeyRingError, match=r"keyring\.json does not exist"):
        KeyRing.load(tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1}')
    with pytest.raises(KeyRingError, match=r"broken\.json: 'active' must be a key id"):
        KeyRing.load(broken)
    with pytest.raises(KeyRingError, match="cannot be written"):
        KeyRing.generate().save(tmp_path / "no" / "such" / "dir.json")


def test_secret_is_not_in_repr() -> None:
    ring = KeyRing.generate()
    assert ring.signing_key.secret.hex() not in repr(ring)


def test_rotation_steps() -> None:
    ring = KeyRing.generate()
    with pytest.raises(KeyRingError, match="already in the ring"):
        ring.with_key(HmacKey("k1", b"y" * 32))
    with pytest.raises(KeyRingError, match="not in the ring"):
        ring.activated("k2", retire_previous_at=10)
    rotated = ring.with_key(HmacKey("k2", b"y" * 32)).activated("k2", retire_previous_at=100)
    assert rotated.active == "k2"
    assert rotated.verification_key("k1", now=100) is not None
    assert rotated.verification_key("k1", now=101) is None
    assert [k.kid for k in rotated.pruned(now=100).keys] == ["k1", "k2"]
    assert [k.kid for k in rotated.pruned(now=101).keys] == ["k2"]


def test_rotation_never_rejects_a_challenge_valid_when_issued() -> None:
    """publish → activate → prune, with verifiers a phase behind the issuer at each step."""
    ttl = 60
    now = [1_000_000.0]
    cache = MemoryReplayCache()

    def clock() -> float:
        return now[0]

    def issue(ring: KeyRing) -> str:
        challenge = Issuer(keyring=ring, clock=clock).issue(difficulty=100, ttl=ttl)
        return challenge.solution(solve(challenge).number).encode()

    def verify(ring: KeyRing, payload: str) -> Reason:
        return Verifier(keyring=ring, replay=cache, clock=clock).verify(payload).reason

    ring1 = KeyRing.generate()
    before = issue(ring1)
    # Phase 1: publish k2. Issuers still sign with k1; verifiers take the ring first.
    ring2 = ring1.with_key(HmacKey("k2", b"z" * 32))
    assert verify(ring2, issue(ring1)) is Reason.OK
    # Phase 2: activate k2 once every verifier has it; k1 verifies for one more TTL.
    now[0] += 30
    ring3 = ring2.activated("k2", retire_previous_at=int(now[0] + ttl))
    after = issue(ring3)
    assert verify(ring2, after) is Reason.OK  # a verifier still on the phase-1 ring
    assert verify(ring3, before) is Reason.OK  # a challenge signed before the switch
    late = issue(ring1)  # an issuer that had not yet switched
    # Phase 3: prune once the old key is past its notAfter; old challenges expired.
    now[0] += ttl + 1
    ring4 = ring3.pruned(now=now[0])
    assert [key.kid for key in ring4.keys] == ["k2"]
    assert verify(ring4, late) in {Reason.EXPIRED, Reason.UNKNOWN_KEY}
    assert verify(ring4, issue(ring4)) is Reason.OK


def test_a_retired_key_verifies_until_its_time_and_the_signing_key_cannot_retire() -> None:
    ring = (
        KeyRing.generate(kid="a")
        .with_key(HmacKey("b", new_secret()))
        .activated("b", retire_previous_at=None)
    )
    retired = ring.retired("a", at=1000)
    assert retired.verification_key("a", now=1000) is not None
    assert retired.verification_key("a", now=1001) is None
    with pytest.raises(KeyRingError):
        ring.retired("b", at=1000)
    with pytest.raises(KeyRingError):
        ring.retired("c", at=1000)


def test_one_verifier_follows_its_ring_through_retirement_and_replacement() -> None:
    """What a verifier looked up for a key is never used past the key's time or ring."""
    now = [1_000.0]

    def clock() -> float:
        return now[0]

    def payload(ring: KeyRing) -> str:
        challenge = Issuer(keyring=ring, clock=clock).issue(difficulty=100, ttl=3600)
        return challenge.solution(solve(challenge).number).encode()

    ring = KeyRing.generate(kid="a").with_key(HmacKey("b", new_secret()))
    verifier = Verifier(keyring=ring, replay=None, clock=clock)
    old = payload(ring)
    assert verifier.verify(old).reason is Reason.OK
    ring = ring.activated("b", retire_previous_at=1_010)
    verifier.keyring = ring
    assert verifier.verify(old).reason is Reason.OK  # "a" still verifies until 1010
    now[0] = 1_011.0
    assert verifier.verify(old).reason is Reason.UNKNOWN_KEY
    # The same key id with another secret: challenges of the old secret are forged now.
    verifier.keyring = KeyRing(active="a", keys=(HmacKey("a", new_secret()),))
    assert verifier.verify(old).reason is Reason.BAD_SIGNATURE
    assert verifier.verify(payload(verifier.keyring)).reason is Reason.OK
