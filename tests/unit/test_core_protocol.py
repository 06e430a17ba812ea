"""Challenge documents, salts, payload decoding; hypothesis throws garbage at them."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from powgate import (
    MAX_PAYLOAD_BYTES,
    Challenge,
    Issuer,
    KeyRing,
    MemoryReplayCache,
    ProtocolError,
    Reason,
    Solution,
    Verifier,
    parse_salt,
    solve,
)
from powgate._protocol import (
    SaltParams,
    _any_salt_fields,
    decode_solution,
    format_salt,
    salt_fields,
)

NOW = 1_800_000_000.0
RING = KeyRing.generate()
GOOD: dict[str, Any] = {
    "algorithm": "SHA-256",
    "challenge": "ab" * 32,
    "maxnumber": 1000,
    "salt": "00ff?expires=1&",
    "signature": "cd" * 32,
}


def test_challenge_round_trip() -> None:
    challenge = Issuer(keyring=RING).issue(difficulty=77, ttl=30, binding="a/b:c")
    assert Challenge.from_json(challenge.to_json()) == challenge
    assert json.loads(challenge.to_json()) == challenge.to_dict()
    params = challenge.params
    assert (params.kid, params.difficulty, params.binding) == ("k1", 77, "a/b:c")
    assert challenge.salt.endswith("&")


def test_challenge_reads_altcha_spelling_of_maxnumber() -> None:
    data = {**GOOD, "maxNumber": 5}
    del data["maxnumber"]
    assert Challenge.from_dict(data).maxnumber == 5


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("[]", "JSON object"),
        ("{", "must be JSON"),
        (b"\xff", "must be JSON"),
        (json.dumps({**GOOD, "salt": ""}), "'salt' must be a non-empty string"),
        (json.dumps({**GOOD, "algorithm": 1}), "'algorithm' must be a non-empty string"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "signature"}), "'signature'"),
        (json.dumps({**GOOD, "maxnumber": 0}), "'maxnumber' must be a positive integer"),
        (json.dumps({**GOOD, "maxnumber": True}), "'maxnumber'"),
        (json.dumps({**GOOD, "maxnumber": "9"}), "'maxnumber'"),
        (json.dumps({**GOOD, "maxnumber": 1.0}), "'maxnumber'"),
    ],
)
def test_challenge_document_errors(document: str | bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        Challenge.from_json(document)


def test_solution_encoding_is_an_altcha_payload() -> None:
    solution = Solution("SHA-256", "ab", 3, "s&", "cd")
    data = json.loads(base64.b64decode(solution.encode()))
    assert data == {
        "algorithm": "SHA-256",
        "challenge": "ab",
        "number": 3,
        "salt": "s&",
        "signature": "cd",
    }
    assert decode_solution(solution.encode()) == solution


@pytest.mark.parametrize(
    ("salt", "expected"),
    [
        ("abc", SaltParams(None, None, None, None)),
        ("abc&", SaltParams(None, None, None, None)),
        ("abc?expires=10&kid=k2&max=50&bind=a%2Fb&", SaltParams(10, "k2", 50, "a/b")),
        ("abc?expires=10&expires=11&", SaltParams(None, None, None, None)),
        ("abc?kid=a&kid=a&bind=x&bind=x&", SaltParams(None, "", None, "")),
        ("abc?expires=-5&max=1e3&", SaltParams(None, None, None, None)),
        ("abc?expires=١٢&", SaltParams(None, None, None, None)),
        ("abc?max=" + "9" * 19 + "&", SaltParams(None, None, None, None)),
        ("abc?other=1&&=&kid&", SaltParams(None, "", None, None)),
        ("abc?bind=%ZZ&", SaltParams(None, None, None, "%ZZ")),
        # The issuer's own shape, read by the fast path.
        ("abc?expires=10&kid=k2&max=50&bind=ns/p:r&", SaltParams(10, "k2", 50, "ns/p:r")),
        ("abc?expires=0010&kid=&max=50&", SaltParams(10, "", 50, None)),
        # Near misses fall through to the general reader.
        ("abc?expires=10&kid=k2&max=50&bind=a&bind=b&", SaltParams(10, "k2", 50, "")),
        ("abc?expires=10&kid=k2&max=50&bind=a", SaltParams(10, "k2", 50, "a")),
        ("a?b?expires=10&kid=k2&max=50&", SaltParams(None, "k2", 50, None)),
        # Per-client prices: who pays and the factor, after the binding.
        (
            "abc?expires=10&kid=k2&max=50&bind=ns/p:r&ck=Ab-_9&f=2.5&",
            SaltParams(10, "k2", 50, "ns/p:r", "Ab-_9", "2.5"),
        ),
        ("abc?expires=10&kid=k2&max=50&ck=x&f=1&", SaltParams(10, "k2", 50, None, "x", "1")),
        ("abc?expires=10&kid=k2&max=50&f=1&ck=x&", SaltParams(10, "k2", 50, None, "x", "1")),
        ("abc?expires=10&kid=k2&max=50&ck=x&ck=y&f=1&", SaltParams(10, "k2", 50, None, "", "1")),
    ],
)
def test_parse_salt(salt: str, expected: SaltParams) -> None:
    assert parse_salt(salt) == expected


_salt_values = st.one_of(
    st.integers(min_value=0, max_value=10**19).map(str),
    st.text(alphabet="az09._~/:-%&=? ", max_size=12),
)


@given(
    nonce=st.text(alphabet="0123456789abcdef?", max_size=8),
    params=st.lists(
        st.tuples(
            st.sampled_from(["expires", "kid", "max", "bind", "ck", "f", "other"]), _salt_values
        ),
        max_size=6,
    ),
    raw=st.booleans(),
)
def test_salt_fast_path_reads_as_the_general_reader(
    nonce: str, params: list[tuple[str, str]], raw: bool
) -> None:
    # Raw joins produce the canonical shape (and near misses) as often as
    # format_salt produces encoded values: both readers must agree on all.
    if raw:
        salt = f"{nonce}?" + "".join(f"{k}={v}&" for k, v in params)
    else:
        salt = format_salt(nonce, dict(params))
    assert salt_fields(salt) == _any_salt_fields(salt)


@given(
    values=st.lists(_salt_values, min_size=3, max_size=6),
    nonce=st.text(alphabet="0123456789abcdef?", max_size=8),
)
def test_salt_fast_path_in_the_issuers_order(values: list[str], nonce: str) -> None:
    names = ("expires", "kid", "max", "bind", "ck", "f")
    salt = f"{nonce}?" + "".join(f"{k}={v}&" for k, v in zip(names, values, strict=False))
    assert salt_fields(salt) == _any_salt_fields(salt)


def test_format_salt_round_trips_through_parse_salt() -> None:
    salt = format_salt("n0nce", {"expires": "5", "kid": "k.1", "bind": "a b&c=d/e:f"})
    assert salt.startswith("n0nce?")
    assert salt.endswith("&")
    assert parse_salt(salt) == SaltParams(5, "k.1", None, "a b&c=d/e:f")
    assert format_salt("n", {}) == "n&"


# -- hostile input: the decoder and verifier never raise, never admit ---------

_VERIFIER = Verifier(keyring=RING, replay=MemoryReplayCache(), clock=lambda: NOW)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_payload_objects = st.dictionaries(
    st.sampled_from(["algorithm", "challenge", "number", "salt", "signature", "extra"]),
    _json_values
    | st.sampled_from(["SHA-256", "SHA-512", "ab" * 32, "s?expires=9999999999&kid=k1&"]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.binary(max_size=MAX_PAYLOAD_BYTES + 10), st.text(max_size=MAX_PAYLOAD_BYTES + 10))
)
def test_garbage_payloads_are_rejected(payload: str | bytes) -> None:
    verdict = _VERIFIER.verify(payload, binding="b")
    assert not verdict.ok
    assert isinstance(verdict.reason, Reason)


@settings(max_examples=300, deadline=None)
@given(_payload_objects)
def test_garbage_json_objects_are_rejected(data: dict[str, Any]) -> None:
    payload = base64.b64encode(json.dumps(data).encode("utf-8", "surrogatepass")).decode()
    assert not _VERIFIER.verify(payload).ok


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_parse_salt_never_raises(salt: str) -> None:
    params = parse_salt(salt)
    assert params.expires is None or params.expires >= 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_no_edit_of_a_used_payload_is_admitted(data: st.DataObject) -> None:
    verifier = Verifier(keyring=RING, replay=MemoryReplayCache(), clock=lambda: NOW)
    challenge = Issuer(keyring=RING, clock=lambda: NOW).issue(difficulty=50, ttl=60)
    payload = challenge.solution(solve(challenge).number).encode()
    assert verifier.verify(payload).ok
    index = data.draw(st.integers(0, len(payload) - 1))
    replacement = data.draw(st.characters(codec="ascii"))
    edited = payload[:index] + replacement + payload[index + 1 :]
    assert not verifier.verify(edited).ok
