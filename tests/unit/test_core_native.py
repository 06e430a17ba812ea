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
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from powgate import (
    Challenge,
    Issuer,
    KeyRing,
    MemoryReplayCache,
    Reason,
    Verifier,
    _algorithms,
    _fastpath,
    _verify,
    solve,
)
from powgate._keys import HmacKey
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
    # The one-call check, the one-pass reader, the general decoder alone.
    for checker, reader in (
        (native.check_v1, native.canonical_v1),
        (None, native.canonical_v1),
        (None, lambda payload: None),
    ):
        verifier = Verifier(keyring=ring, replay=MemoryReplayCache(), clock=lambda: now)
        with (
            patch.object(_verify, "check_v1", checker),
            patch.object(_verify, "canonical_v1", reader),
        ):
            # Twice: the first payload makes the key's signer, the second finds it.
            verdicts.append(verifier.verify(payload, binding=binding, min_difficulty=minimum))
            verdicts.append(verifier.verify(payload, binding=binding, min_difficulty=minimum))
    assert verdicts[0] == verdicts[2] == verdicts[4]
    assert verdicts[1] == verdicts[3] == verdicts[5]


# -- the one-call check (native.check_v1) against the reference path ---------------

_K2 = b"\x02" * 32
_BOUND = f"bind={BINDING}&"


def _ring() -> KeyRing:
    """k1 signs; k2 verifies until NOW + 30 (a rotation's previous key)."""
    ring = KeyRing.generate()
    return ring.with_key(HmacKey("k2", _K2)).retired("k2", at=int(NOW) + 30)


def _document(ring: KeyRing, *, kid: str = "k1") -> dict:
    signer = ring if kid == "k1" else KeyRing(active=kid, keys=ring.keys)
    issued = Issuer(keyring=signer, clock=lambda: NOW).issue(difficulty=20, ttl=60, binding=BINDING)
    assert isinstance(issued, Challenge)
    return issued.solution(solve(issued).number).to_dict()


def _encode(document: dict) -> str:
    return base64.b64encode(json.dumps(document, separators=(",", ":")).encode()).decode()


def _resigned(ring: KeyRing, document: dict, **changes: str) -> dict:
    """``document`` with ``changes`` made to its salt, its challenge and signature made anew
    (a genuine signature over the changed parameters)."""
    salt = document["salt"]
    for old, new in changes.items():
        salt = salt.replace(old, new)
    challenge = hashlib.sha256(f"{salt}{document['number']}".encode()).hexdigest()
    signature = hmac.new(ring.signing_key.secret, challenge.encode(), "sha256").hexdigest()
    return {**document, "salt": salt, "challenge": challenge, "signature": signature}


Maker = Callable[[KeyRing], str]


def _made(change: Callable[[dict], dict] = lambda d: d, *, kid: str = "k1") -> Maker:
    return lambda ring: _encode(change(_document(ring, kid=kid)))


def _field(name: str, change: Callable[[Any], Any]) -> Maker:
    return _made(lambda d: {**d, name: change(d[name])})


def _salt(old: str, new: str) -> Maker:
    return _field("salt", lambda salt: salt.replace(old, new))


def _signed_salt(old: str, new: str) -> Maker:
    return lambda ring: _encode(_resigned(ring, _document(ring), **{old: new}))


def _text(change: Callable[[str], str]) -> Maker:
    return lambda ring: change(_encode(_document(ring)))


def _url_safe(ring: KeyRing) -> str:
    """A payload in URL-safe base64 that standard base64 would write otherwise."""
    while True:
        payload = _made()(ring)
        url_safe = payload.replace("+", "-").replace("/", "_")
        if url_safe != payload:
            return url_safe


def _json(change: Callable[[bytes], bytes]) -> Maker:
    return lambda ring: base64.b64encode(change(base64.b64decode(_made()(ring)))).decode()


_SCOPE = {"binding": BINDING, "min_difficulty": 20}
_PRICED = f"{_BOUND}ck=c1&"

#: (id, payload, verified at, scope, whether the one-call check decides it).
_CASES = [
    ("valid", _made(), NOW, _SCOPE, True),
    ("valid, previous key before retirement", _made(kid="k2"), NOW, _SCOPE, True),
    ("previous key retired", _made(kid="k2"), NOW + 31, _SCOPE, True),
    ("unknown key id", _salt("kid=k1", "kid=k9"), NOW, _SCOPE, False),
    ("key id made empty", _salt("kid=k1", "kid="), NOW, _SCOPE, False),
    ("forged signature", _field("signature", lambda _: "0" * 64), NOW, _SCOPE, True),
    ("signature one digit short", _field("signature", lambda s: s[:-1]), NOW, _SCOPE, True),
    ("signature one digit long", _field("signature", lambda s: s + "0"), NOW, _SCOPE, True),
    ("signature in capitals", _field("signature", str.upper), NOW, _SCOPE, False),
    ("another challenge", _field("challenge", lambda _: "0" * 64), NOW, _SCOPE, True),
    ("challenge one digit short", _field("challenge", lambda c: c[:-1]), NOW, _SCOPE, True),
    ("expired", _made(), NOW + 61, _SCOPE, True),
    ("expired, signature forged", _field("signature", lambda _: "f" * 64), NOW + 61, _SCOPE, True),
    ("wrong number", _field("number", lambda n: n + 1), NOW, _SCOPE, True),
    ("difficulty raised, not re-signed", _salt("max=20", "max=99"), NOW, _SCOPE, True),
    ("difficulty below the route's", _made(), NOW, {**_SCOPE, "min_difficulty": 21}, True),
    ("difficulty lowered, re-signed", _signed_salt("max=20", "max=2"), NOW, _SCOPE, True),
    ("another binding", _made(), NOW, {**_SCOPE, "binding": "team/other:r"}, True),
    (
        "priced at 0.5x, judged unpriced",
        _signed_salt(_BOUND, f"{_PRICED}f=0.5&"),
        NOW,
        _SCOPE,
        True,
    ),
    (
        "priced for another client",
        _signed_salt(_BOUND, f"{_PRICED}f=1.000&"),
        NOW,
        {**_SCOPE, "client": "c2"},
        True,
    ),
    (
        "priced, unreadable factor",
        _signed_salt(_BOUND, f"{_PRICED}f=1..0&"),
        NOW,
        {**_SCOPE, "client": "c1"},
        True,
    ),
    ("another algorithm's name", _field("algorithm", lambda _: "SHA-512"), NOW, _SCOPE, False),
    ("number beyond 2**53", _field("number", lambda _: 2**53), NOW, _SCOPE, False),
    ("truncated base64", _text(lambda p: p[:-4]), NOW, _SCOPE, False),
    ("truncated by one character", _text(lambda p: p[:-1]), NOW, _SCOPE, False),
    ("bad base64", _text(lambda p: p[:8] + "*" + p[9:]), NOW, _SCOPE, False),
    ("url-safe base64", _url_safe, NOW, _SCOPE, False),
    ("truncated JSON", _json(lambda raw: raw[:-2]), NOW, _SCOPE, False),
    (
        "JSON with spaces",
        _json(lambda raw: json.dumps(json.loads(raw)).encode()),
        NOW,
        _SCOPE,
        False,
    ),
    ("oversized", _text(lambda p: p + "A" * 4096), NOW, _SCOPE, False),
    ("not ASCII", _text(lambda p: "é" + p), NOW, _SCOPE, False),
]


#: What each case is, whichever path judges it (a re-sent accepted one is a replay):
#: a factor below 1 where prices are not per client raises nothing and lowers
#: nothing; url-safe base64 and JSON with spaces are valid, read by the reference.
_OUTCOME: dict[str, Reason] = {
    "valid": Reason.OK,
    "valid, previous key before retirement": Reason.OK,
    "previous key retired": Reason.UNKNOWN_KEY,
    "unknown key id": Reason.UNKNOWN_KEY,
    "key id made empty": Reason.UNKNOWN_KEY,
    "forged signature": Reason.BAD_SIGNATURE,
    "signature one digit short": Reason.BAD_SIGNATURE,
    "signature one digit long": Reason.BAD_SIGNATURE,
    "signature in capitals": Reason.BAD_SIGNATURE,
    "another challenge": Reason.BAD_SIGNATURE,
    "challenge one digit short": Reason.BAD_SIGNATURE,
    "expired": Reason.EXPIRED,
    "expired, signature forged": Reason.BAD_SIGNATURE,
    "wrong number": Reason.WRONG_NUMBER,
    "difficulty raised, not re-signed": Reason.WRONG_NUMBER,
    "difficulty below the route's": Reason.INSUFFICIENT,
    "difficulty lowered, re-signed": Reason.INSUFFICIENT,
    "another binding": Reason.WRONG_BINDING,
    "priced at 0.5x, judged unpriced": Reason.OK,
    "priced for another client": Reason.WRONG_CLIENT,
    "priced, unreadable factor": Reason.MALFORMED,
    "another algorithm's name": Reason.BAD_SIGNATURE,
    "number beyond 2**53": Reason.MALFORMED,
    "truncated base64": Reason.MALFORMED,
    "truncated by one character": Reason.MALFORMED,
    "bad base64": Reason.MALFORMED,
    "url-safe base64": Reason.OK,
    "truncated JSON": Reason.MALFORMED,
    "JSON with spaces": Reason.OK,
    "oversized": Reason.OVERSIZED,
    "not ASCII": Reason.MALFORMED,
}


@pytest.mark.parametrize(
    ("payload_of", "now", "scope", "taken", "outcome"),
    [pytest.param(*case[1:], _OUTCOME[case[0]], id=case[0]) for case in _CASES],
)
def test_the_one_call_check_refuses_all_the_reference_path_refuses(
    payload_of: Maker, now: float, scope: dict[str, Any], taken: bool, outcome: Reason
) -> None:
    ring = _ring()
    payload = payload_of(ring)
    verdicts = []
    # The one-call check, and the general decoder with the checks in Python (the reference).
    for checker, reader in ((native.check_v1, native.canonical_v1), (None, lambda payload: None)):
        clock = [NOW]
        verifier = Verifier(
            keyring=ring, replay=MemoryReplayCache(), clock=lambda clock=clock: clock[0]
        )
        with (
            patch.object(_verify, "check_v1", checker),
            patch.object(_verify, "canonical_v1", reader),
        ):
            # Both keys' signers made first, as a running verifier has them.
            for kid in ("k1", "k2"):
                assert verifier.verify(_encode(_document(ring, kid=kid))).ok
            clock[0] = now
            # Twice: the second is a replay when the first was admitted.
            verdicts.append((verifier.verify(payload, **scope), verifier.verify(payload, **scope)))
        if checker is not None:
            found = checker(payload, verifier._signers[2], now)
            assert (found is not None) is taken
    fast, reference = verdicts
    assert fast == reference, "the one-call check and the reference path disagree"
    again = Reason.REPLAYED if outcome is Reason.OK else outcome
    assert (reference[0].reason, reference[1].reason) == (outcome, again)


def test_the_one_call_check_refuses_bad_arguments() -> None:
    payload = _encode(_document(KeyRing.generate()))
    with pytest.raises(TypeError):
        native.check_v1(payload, [], NOW)
    with pytest.raises(TypeError):
        native.check_v1(payload, {"k1": ("not a state", 1.0, None, None)}, NOW)
    with pytest.raises(TypeError):
        native.check_v1(12, {}, NOW)
    assert native.check_v1(payload, {}, NOW) is None


def test_a_signer_made_from_the_old_ring_does_not_serve_the_new_one() -> None:
    """A ring swapped while a verification still makes a signer from the old one
    (another thread): the removed key's payloads are refused afterwards."""
    kept, removed = HmacKey("a", b"\x01" * 32), HmacKey("old", b"\x09" * 32)
    old_ring = KeyRing(active="a", keys=(kept, removed))
    new_ring = KeyRing(active="a", keys=(kept,))  # "old" withdrawn (compromised)

    def payload(kid: str) -> str:
        issuer = Issuer(keyring=KeyRing(active=kid, keys=old_ring.keys), clock=lambda: NOW)
        challenge = issuer.issue(difficulty=8, ttl=600)
        return challenge.solution(solve(challenge).number).encode()

    under_old, under_kept, under_old_later, under_kept_later = (
        payload("old"),
        payload("a"),
        payload("old"),
        payload("a"),
    )
    verifier = Verifier(keyring=old_ring, replay=None, clock=lambda: NOW)
    keyed = _algorithms.HashAlgorithm.keyed
    swapped: list[Reason] = []

    def keyed_while_swapped(self: _algorithms.HashAlgorithm, secret: bytes) -> Any:
        if verifier.keyring is old_ring:
            # Here another thread replaces the ring and verifies under it.
            verifier.keyring = new_ring
            swapped.append(verifier.verify(under_kept).reason)
        return keyed(self, secret)

    with patch.object(_algorithms.HashAlgorithm, "keyed", keyed_while_swapped):
        verifier.verify(under_old)
    assert swapped == [Reason.OK]
    assert verifier.keyring is new_ring
    assert verifier.verify(under_old_later).reason is Reason.UNKNOWN_KEY
    assert verifier.verify(under_kept_later).ok


def test_a_key_retiring_past_floats_range_never_retires() -> None:
    key = HmacKey("k1", b"\x01" * 32, not_after=10**400)
    ring = KeyRing(active="k1", keys=(key,))
    challenge = Issuer(keyring=ring, clock=lambda: NOW).issue(difficulty=8, ttl=600)
    verifier = Verifier(keyring=ring, replay=None, clock=lambda: NOW)
    for _ in range(2):  # the signer made, then served from the cache (the C check's)
        challenge = Issuer(keyring=ring, clock=lambda: NOW).issue(difficulty=8, ttl=600)
        assert verifier.verify(challenge.solution(solve(challenge).number).encode()).ok
