"""The ALTCHA v1 / SHA-256 hot path in C agrees with its Python definition, byte for byte.

``powgate._fastpath`` picks the C twin (``powgate._native``, built with
OpenSSL) where it is built; each test here runs the same inputs through both
and through the general code the fast path stands in for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from collections.abc import Callable
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from powgate import (
    Challenge,
    Issuer,
    KeyRing,
    MemoryReplayCache,
    Verifier,
    _fastpath,
    _verify,
    solve,
)
from powgate._protocol import canonical_v1_fields, decode_object, salt_fields, v1_fields

NOW = 1_800_000_000.0
BINDING = "team/chat:completions"

native = pytest.importorskip("powgate._native")


def test_the_c_hot_path_is_built() -> None:
    # make venv builds it (OpenSSL's headers come with make system-deps).
    assert _fastpath.NATIVE, "powgate._native was built without OpenSSL (libssl-dev)"
    assert _fastpath.canonical_v1 is native.canonical_v1


@given(st.binary(max_size=300))
def test_sha256_hex_is_hashlibs(data: bytes) -> None:
    assert native.sha256_hex(data) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("prefix_len", [0, 1, 54, 55, 56, 63, 64, 65, 119, 130])
@pytest.mark.parametrize(
    ("start", "answer"),
    # Answers where the decimal counter carries into a new digit, from a start below it.
    [(0, 0), (0, 9), (5, 10), (90, 100), (999_990, 1_000_000), (123, 4_567)],
)
def test_the_native_v1_search_finds_what_hashlib_finds(
    prefix_len: int, start: int, answer: int
) -> None:
    """Prefixes around SHA-256's 64-byte blocks; answers across the counter's carries."""
    prefix = bytes(range(65, 91)) * 5
    prefix = prefix[:prefix_len]
    target = hashlib.sha256(prefix + str(answer).encode()).digest()
    assert native.sha256_search(prefix, target, start, answer + 5) == answer
    # Not in the range: just below the answer, or an empty range.
    assert native.sha256_search(prefix, target, start, answer) == -1
    assert native.sha256_search(prefix, target, answer + 1, answer) == -1


def test_the_native_v1_search_solves_an_issued_challenge() -> None:
    challenge = Issuer(keyring=KeyRing.generate()).issue(difficulty=5_000, ttl=60)
    found = native.sha256_search(
        challenge.salt.encode(), bytes.fromhex(challenge.challenge), 0, challenge.maxnumber + 1
    )
    assert found == solve(challenge).number


@pytest.mark.parametrize(("target", "start"), [(b"short", 0), (b"\0" * 32, -1)])
def test_the_native_v1_search_refuses_bad_arguments(target: bytes, start: int) -> None:
    with pytest.raises(ValueError, match="32 bytes and start non-negative"):
        native.sha256_search(b"salt", target, start, 10)


@given(key=st.binary(max_size=200), message=st.binary(max_size=300))
def test_hmac_states_agree_with_the_hmac_module(key: bytes, message: bytes) -> None:
    expected = hmac.new(key, message, "sha256").hexdigest()
    assert native.HmacSha256(key).hexdigest(message) == expected
    assert _fastpath.PythonHmac(key).hexdigest(message) == expected


def _replayed(seed: int) -> Callable[[int], bytes]:
    """Randomness that gives the same bytes to every issuer made with ``seed``."""
    generator = random.Random(seed)
    return generator.randbytes


@pytest.mark.parametrize(
    ("difficulty", "binding", "client", "factor"),
    [
        (1, None, None, 1.0),
        (50_000, BINDING, None, 1.0),
        (2**40, BINDING, None, 1.0),
        (1_000, "team/x y:r%", "tag-1_x", 2.5),
        (999, None, "c", 0.125),
    ],
)
def test_issuing_in_c_writes_the_documents_python_writes(
    difficulty: int, binding: str | None, client: str | None, factor: float
) -> None:
    ring = KeyRing.generate()
    kwargs = {"difficulty": difficulty, "ttl": 60, "binding": binding}
    priced = {"client": client, "factor": factor}
    batch = Issuer(keyring=ring, clock=lambda: NOW, random=_replayed(7)).issue_documents(
        64, **kwargs, **priced
    )
    objects = Issuer(keyring=ring, clock=lambda: NOW, random=_replayed(7)).issue_many(
        64, **kwargs, **priced
    )
    assert batch == [challenge.to_json().encode() for challenge in objects]
    assert len(set(batch)) == 64
    for document in batch:
        assert Challenge.from_json(document).to_json().encode() == document
    # The whole batch in C against the whole batch in Python, primitives included.
    key, raw = ring.signing_key.secret, random.Random(3).randbytes(_fastpath.RANDOM_BYTES * 64)
    head = Challenge.from_json(batch[0]).salt[24:]
    assert native.HmacSha256(key).issue_v1("SHA-256", head, difficulty, raw) == (
        _fastpath.PythonHmac(key).issue_v1("SHA-256", head, difficulty, raw)
    )


def test_issue_v1_refuses_what_json_would_have_to_escape() -> None:
    state = native.HmacSha256(b"k" * 32)
    raw = bytes(_fastpath.RANDOM_BYTES)
    for head in ('?a="&', "?a=\\&", "?a=\x7f&", "?a=é&"):
        with pytest.raises(ValueError, match="out of range"):
            state.issue_v1("SHA-256", head, 10, raw)
    with pytest.raises(ValueError, match="out of range"):
        state.issue_v1("SHA-256", "?a&", 0, raw)


# -- reading payloads -------------------------------------------------------------


def _payload(**overrides: object) -> str:
    ring = KeyRing.generate()
    issuer = Issuer(keyring=ring, clock=lambda: NOW)
    issued = issuer.issue(difficulty=50, ttl=60, binding=BINDING)
    assert isinstance(issued, Challenge)
    document = issued.solution(solve(issued).number).to_dict()
    document.update(overrides)
    raw = json.dumps(document, separators=(",", ":")).encode()
    return base64.b64encode(raw).decode()


def _general(payload: str | bytes) -> object:
    """What the general decoder reads from a payload the fast path accepts."""
    name, challenge, number, salt, signature = v1_fields(decode_object(payload))
    return (name, challenge, signature, f"{salt}{number}".encode(), salt_fields(salt))


_SALTS = [
    "00ff?expires=1800000060&kid=k1&max=50&",
    "?expires=1&kid=&max=1&bind=a/b:c&",
    "ab?expires=1800000060&kid=k.1_~/:-&max=50&bind=team/chat:completions&ck=Az_-9&f=2.5&",
    "ab?expires=1800000060&kid=k1&max=50&ck=&f=&",
]


@pytest.mark.parametrize("salt", _SALTS)
def test_canonical_payloads_read_as_the_general_decoder_reads_them(salt: str) -> None:
    for payload in (_payload(salt=salt), _payload(salt=salt, number=0)):
        fast = canonical_v1_fields(payload)
        assert fast is not None
        assert fast == native.canonical_v1(payload) == native.canonical_v1(payload.encode())
        assert fast == _general(payload)


@pytest.mark.parametrize(
    "change",
    [
        {"number": 2**53},  # out of range: the general path says malformed
        {"number": -1},
        {"number": True},
        {"number": 1.5},
        {"salt": "x?expires=1&kid=k1&max=5&"},  # the nonce is not our hex
        {"salt": "ab?expires=1&kid=k1&max=5&extra=1&"},
        {"salt": "ab?expires=1&kid=k1&max=5"},
        {"salt": "ab?kid=k1&expires=1&max=5&"},
        {"challenge": "ABCD"},
        {"signature": ""},
        {"algorithm": "SHA/256"},
        {"took": 5},  # ALTCHA's widget adds fields
    ],
)
def test_other_shapes_take_the_general_path(change: dict[str, object]) -> None:
    payload = _payload(**change)
    assert canonical_v1_fields(payload) is None
    assert native.canonical_v1(payload) is None


def test_other_encodings_take_the_general_path() -> None:
    payload = _payload()
    raw = base64.b64decode(payload)
    spaced = json.dumps(json.loads(raw)).encode()  # ", " and ": " separators
    for other in (
        base64.urlsafe_b64encode(raw).decode().replace("=", ""),
        base64.b64encode(spaced).decode(),
        payload[:-1],
        payload + "\n",
        "=" + payload[1:],
        "é" + payload,
        "",
        "A" * 4096,
    ):
        assert canonical_v1_fields(other) is None
        assert native.canonical_v1(other) is None


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_c_and_python_readers_agree_on_mangled_payloads(data: st.DataObject) -> None:
    raw = bytearray(base64.b64decode(_PAYLOADS[data.draw(st.integers(0, len(_PAYLOADS) - 1))]))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = data.draw(st.sampled_from(b'"\\{}:,&?=0129afAF-_./ \x00\xff'))
        if action == "insert":
            raw.insert(at, byte)
        elif at < len(raw):
            if action == "flip":
                raw[at] = byte
            else:
                del raw[at]
    payload = base64.b64encode(bytes(raw))
    fast = canonical_v1_fields(payload)
    assert fast == native.canonical_v1(payload)
    if fast is not None:
        assert fast == _general(payload)


_PAYLOADS = [_payload(salt=salt) for salt in _SALTS]


# -- verdicts -----------------------------------------------------------------------


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_verdicts_are_the_same_with_and_without_the_fast_path(data: st.DataObject) -> None:
    ring = KeyRing.generate()
    issuer = Issuer(keyring=ring, clock=lambda: NOW)
    issued = issuer.issue(difficulty=20, ttl=60, binding=BINDING)
    assert isinstance(issued, Challenge)
    document = issued.solution(solve(issued).number).to_dict()
    field = data.draw(st.sampled_from(["number", "salt", "challenge", "signature", None]))
    if field == "number":
        document["number"] = data.draw(st.integers(0, 40))
    elif field is not None:
        text = document[field]
        at = data.draw(st.integers(0, len(text) - 1))
        document[field] = text[:at] + data.draw(st.sampled_from("0f&x=")) + text[at + 1 :]
    payload = base64.b64encode(json.dumps(document, separators=(",", ":")).encode())
    binding = data.draw(st.sampled_from([BINDING, "team/other:r", None]))
    minimum = data.draw(st.sampled_from([0, 20, 21]))
    now = data.draw(st.sampled_from([NOW, NOW + 61]))
    verdicts = []
    for reader in (native.canonical_v1, lambda payload: None):
        verifier = Verifier(keyring=ring, replay=MemoryReplayCache(), clock=lambda: now)
        with patch.object(_verify, "canonical_v1", reader):
            verdicts.append(verifier.verify(payload, binding=binding, min_difficulty=minimum))
    assert verdicts[0] == verdicts[1]
