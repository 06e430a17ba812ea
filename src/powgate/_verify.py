"""Issuing challenges and verifying solutions, for every family of the registry.

Verification order (docs/protocol.md): parse with hard limits → known algorithm →
signature under a key the ring still accepts (constant time) → not expired →
bound to this policy/route → enough difficulty → the work → not seen before.
ALTCHA v1 and DeepSeek challenges check the work (one hash) before claiming.
An ALTCHA v2 challenge's work is a key derivation, costly in time and memory:
its single use is claimed *before* deriving (:meth:`Verifier.begin`), so a
flood of forged or replayed v2 payloads costs no derivation at all, and the
derivation runs off the event loop in a bounded :class:`DerivationPool`.
Each failure has its own :class:`Reason` for logs and metrics; clients are
meant to see one uniform rejection (no oracle), which is the caller's job.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import math
import os
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from . import _altcha2, _deepseek
from ._algorithms import (
    MAX_SCALE,
    Algorithm,
    DeepSeekAlgorithm,
    Family,
    HashAlgorithm,
    KdfAlgorithm,
    KdfParams,
    get_algorithm,
    get_v2_algorithm,
)
from ._fastpath import (
    RANDOM_BYTES,
    canonical_v1,
    check_v1,
    issue_v1_challenges,
    native_signing_state,
)
from ._keys import HmacKey, KeyRing
from ._pool import DerivationPool
from ._protocol import (
    PARAM_BINDING,
    PARAM_CLIENT,
    PARAM_DIFFICULTY,
    PARAM_EXPIRES,
    PARAM_FACTOR,
    PARAM_KID,
    Challenge,
    MalformedPayloadError,
    SaltFields,
    decode_object,
    format_factor,
    format_salt,
    parse_factor,
    salt_fields,
    v1_fields,
)
from ._replay import AsyncReplayCache, Claim, ReplayCache

__all__ = [
    "AnyChallenge",
    "Attempt",
    "Issuer",
    "Reason",
    "Scope",
    "Verdict",
    "Verifier",
    "claim_reason",
    "max_difficulty",
]

#: Whatever an :class:`Issuer` issues: each has ``to_json()``.
AnyChallenge = Challenge | _altcha2.ChallengeV2 | _deepseek.DeepSeekChallenge

Clock = Callable[[], float]
#: Difficulty is ``maxnumber``; above this a browser would search for minutes.
MAX_DIFFICULTY: Final = 1 << 40
#: ALTCHA v2: at most 7 hex digits of key prefix (the counter is a uint32).
_MAX_PREFIX: Final = 7
MAX_V2_DIFFICULTY: Final = 2 * MAX_SCALE * 16**_MAX_PREFIX - 1
_V2_RANDOM_BYTES: Final = 32
#: Placeholders of a v2 batch's template (neither is hex, neither needs escaping).
_NONCE_SLOT: Final = "NONCE-SLOT"
_SALT_SLOT: Final = "SALT-SLOT"
_DEEPSEEK_SALT_BYTES: Final = 10
_MAX_SUFFIXES: Final = 256


class Reason(enum.StrEnum):
    """Why a solution was admitted or not. Values are metric label values."""

    OK = "ok"
    MISSING = "missing"
    OVERSIZED = "oversized"
    MALFORMED = "malformed"
    UNKNOWN_ALGORITHM = "unknown_algorithm"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    WRONG_NUMBER = "wrong_number"
    WRONG_BINDING = "wrong_binding"
    #: Priced for another client (per-client pricing, trusted callers).
    WRONG_CLIENT = "wrong_client"
    INSUFFICIENT = "insufficient"
    REPLAYED = "replayed"
    REPLAY_CACHE_FULL = "replay_cache_full"
    #: The shared replay store could not be asked and its policy is to refuse; not spent.
    REPLAY_STORE_UNAVAILABLE = "replay_store_unavailable"
    #: ALTCHA v2: the derivation pool had no room; the solution was not spent.
    VERIFIER_BUSY = "verifier_busy"


def max_difficulty(algorithm: Algorithm) -> int:
    """The highest difficulty an issuer accepts for ``algorithm``."""
    return MAX_V2_DIFFICULTY if algorithm.family is Family.ALTCHA_V2 else MAX_DIFFICULTY


class Verdict(NamedTuple):
    """The outcome of one verification.

    ``reason`` is safe to count; ``cause`` is the private detail for logs and
    must never be sent to the client. (A named tuple rather than a frozen
    dataclass: one is built per request, and it is four times cheaper.)
    """

    reason: Reason
    cause: str = ""
    difficulty: int = 0
    expires: int = 0

    @property
    def ok(self) -> bool:
        return self.reason is Reason.OK


MISSING: Final = Verdict(Reason.MISSING, "no solution sent")

#: Builds a named tuple without its Python-level ``__new__`` (a frame per call):
#: the hot path makes a verdict and an attempt per request.
_new_tuple: Final = tuple.__new__


def _ok(difficulty: int, expires: int) -> Verdict:
    """``Verdict(Reason.OK, "", difficulty, expires)``, as the hot path builds it."""
    return _new_tuple(Verdict, (Reason.OK, "", difficulty, expires))


class Scope(NamedTuple):
    """Where a solution is spent, and by whom: what a verifier compares a challenge with.

    ``binding`` (when set) must equal the challenge's. ``min_difficulty``
    refuses challenges easier than that, times the factor the challenge was
    priced at. ``client`` is set where prices depend on the client: a
    challenge priced for a client (``ck``) then counts only for that client,
    and an unpriced one only for a client owing at most the base price
    (``owed``, the factor it would pay now).
    """

    binding: str | None = None
    min_difficulty: int = 0
    client: str | None = None
    owed: float = 1.0


_ANYWHERE: Final = Scope()


def _scope(binding: str | None, min_difficulty: int, client: str | None, owed: float) -> Scope:
    """``Scope(...)`` as the hot path builds it, once per verification."""
    return _new_tuple(Scope, (binding, min_difficulty, client, owed))


class Attempt(NamedTuple):
    """The cheap part of a verification (:meth:`Verifier.begin`).

    ``verdict`` is final unless it is ok and ``work`` is set: then the caller
    claims ``replay_key`` first and runs ``work`` (a blocking key derivation,
    true when the solution is right) after, off the event loop.
    """

    verdict: Verdict
    replay_key: bytes | None = None
    work: Callable[[], bool] | None = None


_MISSING_ATTEMPT: Final = Attempt(MISSING)


class _Signer(NamedTuple):
    """What checking a v1 signature under one key needs, looked up once per key."""

    algorithm: HashAlgorithm
    #: The key's keyed HMAC state's ``hexdigest``.
    sign: Callable[[bytes], str]
    #: When the ring stops accepting the key (``None``: never).
    not_after: int | None
    #: The verdict on a signature that does not match.
    bad_signature: Verdict


def _unknown_key(kid: str | None) -> Verdict:
    return Verdict(Reason.UNKNOWN_KEY, f"key id {str(kid)[:40]!r} not accepted")


def _sha256() -> HashAlgorithm:
    found = get_algorithm("SHA-256")
    assert isinstance(found, HashAlgorithm)
    return found


#: The algorithm :data:`check_v1` checks (ALTCHA v1 over SHA-256).
_SHA256: Final = _sha256()


class Issuer:
    """Creates signed challenges of one algorithm with the ring's active key.

    ``params`` sets the price of one try of an ALTCHA v2 scheme (the
    algorithm's defaults when omitted); other families take none. ``random``
    (``os.urandom``) supplies the nonces and salts.
    """

    __slots__ = ("_algorithm", "_clock", "_params", "_random", "_suffixes", "keyring")

    def __init__(
        self,
        *,
        keyring: KeyRing,
        algorithm: str = "SHA-256",
        params: KdfParams | None = None,
        clock: Clock = time.time,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        found = get_algorithm(algorithm)
        if found is None:
            raise ValueError(f"unknown algorithm {algorithm!r}")
        if isinstance(found, KdfAlgorithm):
            params = params or found.default_params
            problem = found.check_base(params)
            if problem:
                raise ValueError(f"{algorithm} parameters: {problem}")
        elif params is not None:
            raise ValueError(f"{algorithm} takes no key-derivation parameters")
        self._algorithm: Algorithm = found
        self._params = params
        self._clock = clock
        #: The system's randomness (a seam: tests replay a batch from known bytes).
        self._random = random
        self._suffixes: dict[tuple[str, int, str | None, tuple[str, str] | None], str] = {}
        #: Replace to rotate; issuing reads it once per challenge.
        self.keyring = keyring

    @property
    def algorithm(self) -> Algorithm:
        return self._algorithm

    @property
    def params(self) -> KdfParams | None:
        """The parameters of one try (ALTCHA v2), or ``None``."""
        return self._params

    def issue(
        self,
        *,
        difficulty: int,
        ttl: float,
        binding: str | None = None,
        target_path: str = "/",
        client: str | None = None,
        factor: float = 1.0,
    ) -> AnyChallenge:
        """A fresh challenge of ``difficulty``, valid for ``ttl`` seconds.

        ``target_path`` is the path a DeepSeek-format challenge names;
        ``client`` and ``factor`` price it for one client (:meth:`issue_many`).
        """
        return self.issue_many(
            1,
            difficulty=difficulty,
            ttl=ttl,
            binding=binding,
            target_path=target_path,
            client=client,
            factor=factor,
        )[0]

    def issue_many(
        self,
        count: int,
        *,
        difficulty: int,
        ttl: float,
        binding: str | None = None,
        target_path: str = "/",
        client: str | None = None,
        factor: float = 1.0,
    ) -> list[AnyChallenge]:
        """``count`` fresh challenges alike but for their randomness.

        A batch shares one clock reading, one read of the system's randomness
        and one lookup of the salt's fixed part: a server that refuses a flood
        issues challenges in batches for that reason.

        With ``client`` (a digest naming who pays, see docs/pricing.md) the
        challenges are priced for that client: their difficulty is
        ``difficulty * factor`` (rounded up, at most the algorithm's
        maximum, at least 1), and both ``client`` and the factor (to three
        decimals) are signed in with the other parameters.
        """
        algorithm = self._algorithm
        difficulty, priced = self._price(algorithm, difficulty, client, factor)
        if isinstance(algorithm, KdfAlgorithm):
            return list(self._issue_v2(count, algorithm, difficulty, ttl, binding, priced))
        if isinstance(algorithm, DeepSeekAlgorithm):
            return list(
                self._issue_deepseek(
                    count, algorithm, difficulty, ttl, binding, priced, target_path
                )
            )
        return list(self._issue_v1(count, difficulty, ttl, binding, priced))

    def issue_documents(
        self,
        count: int,
        *,
        difficulty: int,
        ttl: float,
        binding: str | None = None,
        client: str | None = None,
        factor: float = 1.0,
    ) -> list[bytes]:
        """:meth:`issue_many`, as the JSON documents clients receive (``to_json()``).

        What a server refusing a flood hands out: for ALTCHA v1 the batch is
        written by the key's signing state in one call (in C where built),
        with no challenge objects in between.
        """
        algorithm = self._algorithm
        if not isinstance(algorithm, HashAlgorithm):
            batch = self.issue_many(
                count,
                difficulty=difficulty,
                ttl=ttl,
                binding=binding,
                client=client,
                factor=factor,
            )
            return [challenge.to_json().encode() for challenge in batch]
        difficulty, priced = self._price(algorithm, difficulty, client, factor)
        key, head = self._v1_head(difficulty, ttl, binding, priced)
        return algorithm.keyed(key.secret).issue_v1(
            algorithm.name, head, difficulty, self._random(RANDOM_BYTES * count)
        )

    def _price(
        self, algorithm: Algorithm, difficulty: int, client: str | None, factor: float
    ) -> tuple[int, tuple[str, str] | None]:
        """The difficulty to issue, and the signed ``(client, factor)`` when priced."""
        limit = max_difficulty(algorithm)
        if not 1 <= difficulty <= limit:
            raise ValueError(f"difficulty must be within 1..{limit}")
        if client is None:
            return difficulty, None
        shown = format_factor(factor)
        return _priced(difficulty, float(shown), limit), (client, shown)

    def _v1_head(
        self, difficulty: int, ttl: float, binding: str | None, priced: tuple[str, str] | None
    ) -> tuple[HmacKey, str]:
        """The signing key and what follows the nonce in a v1 salt (``?expires=…&``)."""
        key = self.keyring.signing_key
        suffix = self._suffixes.get((key.kid, difficulty, binding, priced))
        if suffix is None:
            suffix = self._suffix(
                kid=key.kid, difficulty=difficulty, binding=binding, priced=priced
            )
        return key, f"?{PARAM_EXPIRES}={int(self._clock() + ttl)}&{suffix}"

    def _issue_v1(
        self,
        count: int,
        difficulty: int,
        ttl: float,
        binding: str | None,
        priced: tuple[str, str] | None,
    ) -> list[Challenge]:
        key, head = self._v1_head(difficulty, ttl, binding, priced)
        algorithm = self._algorithm
        assert isinstance(algorithm, HashAlgorithm)
        return issue_v1_challenges(
            sign=algorithm.keyed(key.secret).hexdigest,
            work_hex=algorithm.work_hex,
            name=algorithm.name,
            head=head,
            difficulty=difficulty,
            random=self._random(RANDOM_BYTES * count),
        )

    def _issue_v2(
        self,
        count: int,
        algorithm: KdfAlgorithm,
        difficulty: int,
        ttl: float,
        binding: str | None,
        priced: tuple[str, str] | None,
    ) -> list[_altcha2.ChallengeV2]:
        """v2 challenges whose mean work is ``difficulty / 2`` tries at the policy's parameters.

        ``16^L`` tries (a key prefix of L hex digits) for the power of 16
        nearest to the work wanted, each try made ``1/4 … 4`` times as long
        as the policy's to make up the rest: many short tries rather than
        few long ones, since a verifier derives one.
        """
        assert self._params is not None
        tries = max(1.0, difficulty / 2)
        length = 0
        while tries >= MAX_SCALE * 16**length:
            length += 1
        if length > _MAX_PREFIX:
            raise ValueError(f"difficulty must be within 1..{MAX_V2_DIFFICULTY}")
        params = algorithm.scaled(self._params, tries / 16**length)
        key = self.keyring.signing_key
        data: dict[str, Any] = {PARAM_KID: key.kid, PARAM_DIFFICULTY: difficulty}
        if binding is not None:
            data[PARAM_BINDING] = binding
        if priced is not None:
            data[PARAM_CLIENT], data[PARAM_FACTOR] = priced
        expires = int(self._clock() + ttl)
        # The batch differs in its nonce and salt only: their canonical JSON
        # is one template (both are plain hex, which JSON never escapes).
        template = _altcha2.ChallengeV2.build(
            algorithm=algorithm.wire_name,
            nonce=_NONCE_SLOT,
            salt=_SALT_SLOT,
            params=params,
            key_prefix="0" * length,
            expires_at=expires,
            data=data,
        )
        head, rest = template.canonical().split(_NONCE_SLOT)
        middle, tail = rest.split(_SALT_SLOT)
        raw = self._random(_V2_RANDOM_BYTES * count)
        sign, secret = algorithm.sign, key.secret
        challenges = []
        for offset in range(0, len(raw), _V2_RANDOM_BYTES):
            half = offset + _V2_RANDOM_BYTES // 2
            nonce = raw[offset:half].hex()
            salt = raw[half : offset + _V2_RANDOM_BYTES].hex()
            signature = sign(secret, f"{head}{nonce}{middle}{salt}{tail}".encode())
            challenges.append(
                dataclasses.replace(
                    template,
                    nonce=nonce,
                    salt=salt,
                    signature=signature,
                    raw={**template.raw, "nonce": nonce, "salt": salt},
                )
            )
        return challenges

    def _issue_deepseek(
        self,
        count: int,
        algorithm: DeepSeekAlgorithm,
        difficulty: int,
        ttl: float,
        binding: str | None,
        priced: tuple[str, str] | None,
        target_path: str,
    ) -> list[_deepseek.DeepSeekChallenge]:
        key = self.keyring.signing_key
        expires = int(self._clock() + ttl)
        params = {
            PARAM_EXPIRES: str(expires),
            PARAM_KID: key.kid,
            PARAM_DIFFICULTY: str(difficulty),
        }
        if binding is not None:
            params[PARAM_BINDING] = binding
        if priced is not None:
            params[PARAM_CLIENT], params[PARAM_FACTOR] = priced
        query = format_salt("", params)[1:]
        expire_at = expires * 1000
        step = _DEEPSEEK_SALT_BYTES + 8
        raw = self._random(step * count)
        challenges = []
        for offset in range(0, len(raw), step):
            salt = raw[offset : offset + _DEEPSEEK_SALT_BYTES].hex()
            answer = int.from_bytes(raw[offset + _DEEPSEEK_SALT_BYTES : offset + step]) % difficulty
            work = algorithm.work(f"{salt}_{expire_at}_{answer}".encode()).hex()
            message = _deepseek.mac_message(
                challenge=work, salt=salt, target_path=target_path, query=query
            )
            challenges.append(
                _deepseek.DeepSeekChallenge(
                    challenge=work,
                    salt=salt,
                    signature=f"{algorithm.sign(key.secret, message)}?{query}",
                    difficulty=difficulty,
                    expire_at=expire_at,
                    expire_after=int(ttl * 1000),
                    target_path=target_path,
                )
            )
        return challenges

    def _suffix(
        self, *, kid: str, difficulty: int, binding: str | None, priced: tuple[str, str] | None
    ) -> str:
        """The salt's parameters after ``expires``: the same for every challenge of a route."""
        params = {PARAM_KID: kid, PARAM_DIFFICULTY: str(difficulty)}
        if binding is not None:
            params[PARAM_BINDING] = binding
        if priced is not None:
            params[PARAM_CLIENT], params[PARAM_FACTOR] = priced
        # format_salt with an empty nonce gives "?k=v&...&"; drop the "?".
        suffix = format_salt("", params)[1:]
        if len(self._suffixes) >= _MAX_SUFFIXES:
            # Difficulty moves with the operator, clients come and go: old entries are
            # dead weight.
            self._suffixes.clear()
        self._suffixes[(kid, difficulty, binding, priced)] = suffix
        return suffix


#: The ring signers were made from; v1 signers by (algorithm name, key id); the
#: SHA-256 ones as :data:`check_v1` takes them, by key id (see ``Verifier``).
_Signers = tuple[
    KeyRing, dict[tuple[str, str | None], _Signer], dict[str, tuple[Any, float, Attempt, Attempt]]
]
#: Seconds since the epoch past which a key's not-after means never (~285 million
#: years; a float holds every whole second up to it exactly).
_NEVER: Final = 2**53


class Verifier:
    """Checks solution payloads of every family against a key ring and a replay cache."""

    __slots__ = ("_clock", "_signers", "keyring", "replay")

    def __init__(
        self, *, keyring: KeyRing, replay: ReplayCache | None, clock: Clock = time.time
    ) -> None:
        #: Replace to rotate; each verification reads it once.
        self.keyring = keyring
        self.replay = replay
        self._clock = clock
        #: The ring the signers were made from, v1 signers by (algorithm name,
        #: key id) (:meth:`_signer`), and the SHA-256 ones among them as
        #: :data:`check_v1` takes them, by key id (C signing state, not-after or
        #: infinity, and the attempts it returns as they are: a bad signature,
        #: the key retired). One tuple, replaced whole when the ring changes and
        #: used only while its ring is :attr:`keyring`: a signer made from the
        #: old ring by a verification still running can only land in the old
        #: tuple, which nothing reads any more.
        self._signers: _Signers = (keyring, {}, {})

    def verify(
        self,
        payload: str | bytes | None,
        *,
        binding: str | None = None,
        min_difficulty: int = 0,
        client: str | None = None,
        owed: float = 1.0,
    ) -> Verdict:
        """Verify and, when valid, claim the solution in the replay cache.

        ``binding`` (when given) must equal the one the challenge was issued
        for; ``min_difficulty`` rejects challenges easier than that;
        ``client`` and ``owed`` apply per-client prices (:class:`Scope`).
        Never raises on hostile input. A key derivation (ALTCHA v2) runs
        inline, after the claim: servers call :meth:`verify_async` instead.
        """
        now = self._clock()
        attempt = self._begin(payload, _scope(binding, min_difficulty, client, owed), now)
        verdict, replay_key, work = attempt
        if replay_key is not None and self.replay is not None:
            outcome = self.replay.claim(replay_key, expires_at=verdict.expires, now=now)
            if outcome != Claim.NEW:
                return _claim_verdict(outcome, verdict)
        return verdict if work is None else _finish(attempt, work())

    async def verify_async(
        self,
        payload: str | bytes | None,
        *,
        pool: DerivationPool,
        binding: str | None = None,
        min_difficulty: int = 0,
        client: str | None = None,
        owed: float = 1.0,
        shared: AsyncReplayCache | None = None,
    ) -> Verdict:
        """:meth:`verify` for an event loop: derivations run in ``pool``.

        The order keeps forged and replayed payloads cheap: the cheap checks,
        then a place in the pool (none free: ``verifier_busy``, nothing
        spent), then the single-use claim (in ``shared`` when given, else the
        verifier's own cache), then the derivation.
        """
        now = self._clock()
        attempt = self._begin(payload, _scope(binding, min_difficulty, client, owed), now)
        verdict = attempt.verdict
        if attempt.replay_key is None:
            return verdict
        ticket = None
        if attempt.work is not None:
            ticket = pool.reserve()
            if ticket is None:
                return verdict._replace(reason=Reason.VERIFIER_BUSY, cause="derivation pool full")
        try:
            if shared is not None:
                outcome = await shared.claim(
                    attempt.replay_key, expires_at=verdict.expires, now=now
                )
            elif self.replay is not None:
                outcome = self.replay.claim(attempt.replay_key, expires_at=verdict.expires, now=now)
            else:
                outcome = Claim.NEW
            if outcome != Claim.NEW:
                return _claim_verdict(outcome, verdict)
            if ticket is None or attempt.work is None:
                return verdict
            return _finish(attempt, await ticket.run(attempt.work))
        finally:
            if ticket is not None:
                ticket.close()

    def check(
        self,
        payload: str | bytes | None,
        *,
        binding: str | None = None,
        min_difficulty: int = 0,
        client: str | None = None,
        owed: float = 1.0,
    ) -> tuple[Verdict, bytes | None]:
        """Verify everything but single use; returns the verdict and the replay key.

        For callers whose replay store is asynchronous (a shared store): they
        claim the key themselves when the verdict is ok. An ALTCHA v2 payload
        is derived here before any claim: use :meth:`begin` for those.
        """
        attempt = self._begin(payload, _scope(binding, min_difficulty, client, owed), self._clock())
        verdict, replay_key, work = attempt
        if work is not None:
            verdict = _finish(attempt, work())
        return verdict, replay_key if verdict.reason is Reason.OK else None

    def begin(
        self,
        payload: str | bytes | None,
        *,
        binding: str | None = None,
        min_difficulty: int = 0,
        client: str | None = None,
        owed: float = 1.0,
    ) -> Attempt:
        """Every cheap check; see :class:`Attempt` for what is left to the caller."""
        # _scope() written out: a server calls this once per request with a solution.
        scope = _new_tuple(Scope, (binding, min_difficulty, client, owed))
        return self._begin(payload, scope, self._clock())

    def _begin(self, payload: str | bytes | None, scope: Scope, now: float) -> Attempt:
        if not payload:
            return _MISSING_ATTEMPT
        signers = self._signers
        if check_v1 is not None and signers[0] is self.keyring:
            # ALTCHA v1 over SHA-256 as powgate's own clients write it, under a
            # key seen before: read and checked in one C call, the scope left.
            found = check_v1(payload, signers[2], now)
            if type(found) is tuple:
                return self._checked_v1(found, scope, now)
            if found is not None:
                # A prebuilt attempt: signed under another key, or the key is retired.
                return found  # type: ignore[return-value]
        # ALTCHA v1 as powgate's own clients write it: one match instead of
        # the JSON scanner (the same values; anything else takes the path below).
        fields = canonical_v1(payload)
        if fields is not None:
            name, challenge, signature, work_input, params = fields
            verdict, key = self._check_v1(
                name, challenge, challenge.encode(), signature, work_input, params, scope, now
            )
            return _new_tuple(Attempt, (verdict, key, None))
        try:
            data = decode_object(payload)
            if "solution" in data:
                return self._begin_v2(data, scope, now)
            if "answer" in data:
                return self._begin_deepseek(data, scope, now)
            name, challenge, number, salt, signature = v1_fields(data)
        except MalformedPayloadError as exc:
            return Attempt(Verdict(Reason(exc.reason), exc.cause))
        # ALTCHA's delimiter against splicing: hash as if the salt ended in "&".
        # JSON may carry lone surrogates; "surrogatepass" keeps them from raising.
        work_salt = salt if salt.endswith("&") else salt + "&"
        verdict, key = self._check_v1(
            name,
            challenge,
            challenge.encode("utf-8", "surrogatepass"),
            signature,
            f"{work_salt}{number}".encode("utf-8", "surrogatepass"),
            salt_fields(salt),
            scope,
            now,
        )
        return Attempt(verdict, key)

    def _checked_v1(self, found: tuple[Any, ...], scope: Scope, now: float) -> Attempt:
        """The attempt of a payload :data:`check_v1` read, and found signed (see there)."""
        code, difficulty, expires, bound_to, priced_for, factor, key = found
        if code:
            if code == 1:
                cause = f"expired {now - expires:.0f}s ago"
                return Attempt(Verdict(Reason.EXPIRED, cause, difficulty))
            cause = "hash of salt and number differs"
            return Attempt(Verdict(Reason.WRONG_NUMBER, cause, difficulty))
        if scope is not _ANYWHERE:
            refused = _out_of_scope(scope, bound_to, difficulty, priced_for, factor, _SHA256)
            if refused is not None:
                return _new_tuple(Attempt, (refused, None, None))
        return _new_tuple(Attempt, (_ok(difficulty, expires), key, None))

    def _check_v1(
        self,
        name: str,
        challenge: str,
        signed: bytes,
        signature: str,
        work_input: bytes,
        params: SaltFields,
        scope: Scope,
        now: float,
    ) -> tuple[Verdict, bytes | None]:
        """An ALTCHA v1 payload's checks; ``signed`` is the challenge encoded,
        ``work_input`` the salt (ending in ``&``) and the number, encoded."""
        expires, kid, difficulty, bound_to, priced_for, factor = params
        signers = self._signers
        signer = signers[1].get((name, kid)) if signers[0] is self.keyring else None
        if signer is None:
            found = self._signer(name, kid, now)
            if isinstance(found, Verdict):
                return found, None
            signer = found
        elif signer.not_after is not None and now > signer.not_after:
            return _unknown_key(kid), None
        # The same order and comparison as ever: a forged payload is refused
        # here, its reason (and log cause) prebuilt with the signer.
        if not signature.isascii() or not hmac.compare_digest(signer.sign(signed), signature):
            return signer.bad_signature, None
        algorithm = signer.algorithm
        difficulty = difficulty or 0
        if expires is None:
            return Verdict(Reason.EXPIRED, "challenge has no expires parameter", difficulty), None
        if now > expires:
            return Verdict(Reason.EXPIRED, f"expired {now - expires:.0f}s ago", difficulty), None
        if algorithm.work_hex(work_input) != challenge:
            return Verdict(Reason.WRONG_NUMBER, "hash of salt and number differs", difficulty), None
        if scope is not _ANYWHERE:
            refused = _out_of_scope(scope, bound_to, difficulty, priced_for, factor, algorithm)
            if refused is not None:
                return refused, None
        # The challenge is our own digest here, so it is valid hex.
        return _ok(difficulty, expires), bytes.fromhex(challenge)

    def _signer(self, name: str, kid: str | None, now: float) -> _Signer | Verdict:
        """The signer of v1 challenges named ``name`` under key ``kid``, kept for the
        next payload; or why there is none (not kept: a payload's names are the
        sender's, the cache holds only what the ring and the registry hold)."""
        algorithm = get_algorithm(name)
        if not isinstance(algorithm, HashAlgorithm):
            return Verdict(Reason.UNKNOWN_ALGORITHM, f"algorithm {name[:32]!r}")
        signers = self._signers
        ring = self.keyring
        if signers[0] is not ring:
            # Keys came or went: signers of the old ring are not reused.
            signers = self._signers = (ring, {}, {})
        # A challenge without a key id was made by a plain ALTCHA server with
        # our active key: the signature check still applies.
        key = ring.verification_key(kid if kid is not None else ring.active, now=now)
        if key is None:
            return _unknown_key(kid)
        state = algorithm.keyed(key.secret)
        signer = signers[1][(name, kid)] = _Signer(
            algorithm,
            state.hexdigest,
            key.not_after,
            Verdict(Reason.BAD_SIGNATURE, f"signature under key {key.kid}"),
        )
        if name == _SHA256.name and kid is not None and native_signing_state(state):
            # A key ring may name a time past float's range: never, as no time.
            retires = key.not_after
            not_after = math.inf if retires is None or retires > _NEVER else float(retires)
            signers[2][kid] = (
                state,
                not_after,
                Attempt(signer.bad_signature),
                Attempt(_unknown_key(kid)),
            )
        return signer

    def _begin_v2(self, data: dict[str, Any], scope: Scope, now: float) -> Attempt:
        challenge, counter, derived_key = _altcha2.parse_payload(data)
        algorithm = get_v2_algorithm(challenge.algorithm)
        if algorithm is None:
            return Attempt(
                Verdict(Reason.UNKNOWN_ALGORITHM, f"v2 algorithm {challenge.algorithm[:32]!r}")
            )
        meta = challenge.data
        kid = meta.get(PARAM_KID)
        ring = self.keyring
        key = ring.verification_key(kid if type(kid) is str else ring.active, now=now)
        if key is None:
            return Attempt(Verdict(Reason.UNKNOWN_KEY, f"key id {str(kid)[:40]!r} not accepted"))
        expected = algorithm.sign(key.secret, challenge.canonical().encode())
        if not challenge.signature.isascii() or not hmac.compare_digest(
            expected, challenge.signature
        ):
            return Attempt(Verdict(Reason.BAD_SIGNATURE, f"v2 signature under key {key.kid}"))
        difficulty = challenge.difficulty
        expires = challenge.expires_at
        if expires is None:
            return Attempt(Verdict(Reason.EXPIRED, "challenge has no expiresAt", difficulty))
        if now > expires:
            return Attempt(Verdict(Reason.EXPIRED, f"expired {now - expires:.0f}s ago", difficulty))
        problem = algorithm.check(challenge.params)
        if problem:
            # Signed by us, so issued under limits that have since changed.
            return Attempt(Verdict(Reason.MALFORMED, f"parameters out of bounds: {problem}"))
        refused = _out_of_scope(
            scope,
            meta.get(PARAM_BINDING),
            difficulty,
            meta.get(PARAM_CLIENT),
            meta.get(PARAM_FACTOR),
            algorithm,
        )
        if refused is not None:
            return Attempt(refused)
        if not derived_key.startswith(challenge.key_prefix) or len(derived_key) != 2 * (
            challenge.params.key_length
        ):
            # Wrong without deriving anything: not worth a claim either.
            return Attempt(
                Verdict(Reason.WRONG_NUMBER, "derived key misses the prefix", difficulty)
            )
        nonce, salt, params = (
            bytes.fromhex(challenge.nonce),
            bytes.fromhex(challenge.salt),
            challenge.params,
        )
        claimed = bytes.fromhex(derived_key)

        def work() -> bool:
            derived = algorithm.derive(params, salt, _altcha2.password(nonce, counter))
            return hmac.compare_digest(derived, claimed)

        # The signature is unique per challenge (random nonce and salt under it).
        replay_key = bytes.fromhex(expected)
        return Attempt(Verdict(Reason.OK, "", difficulty, expires), replay_key, work)

    def _begin_deepseek(self, data: dict[str, Any], scope: Scope, now: float) -> Attempt:
        name, challenge, salt, answer, signature, target_path = _deepseek.parse_payload(data)
        algorithm = get_algorithm(name)
        if not isinstance(algorithm, DeepSeekAlgorithm):
            return Attempt(Verdict(Reason.UNKNOWN_ALGORITHM, f"algorithm {name[:32]!r}"))
        mac, _, query = signature.partition("?")
        expires, kid, difficulty, bound_to, priced_for, factor = salt_fields(signature)
        key = self.keyring.verification_key(kid or "", now=now)
        if key is None:
            return Attempt(Verdict(Reason.UNKNOWN_KEY, f"key id {str(kid)[:40]!r} not accepted"))
        message = _deepseek.mac_message(
            challenge=challenge, salt=salt, target_path=target_path, query=query
        )
        expected = algorithm.sign(key.secret, message)
        if not mac.isascii() or not hmac.compare_digest(expected, mac):
            return Attempt(Verdict(Reason.BAD_SIGNATURE, f"signature under key {key.kid}"))
        difficulty = difficulty or 0
        if expires is None:
            return Attempt(Verdict(Reason.EXPIRED, "signature has no expires", difficulty))
        if now > expires:
            return Attempt(Verdict(Reason.EXPIRED, f"expired {now - expires:.0f}s ago", difficulty))
        work = algorithm.work(
            f"{salt}_{expires * 1000}_{answer}".encode("utf-8", "surrogatepass")
        ).hex()
        if work != challenge:
            return Attempt(Verdict(Reason.WRONG_NUMBER, "hash of the answer differs", difficulty))
        refused = _out_of_scope(scope, bound_to, difficulty, priced_for, factor, algorithm)
        if refused is not None:
            return Attempt(refused)
        return Attempt(Verdict(Reason.OK, "", difficulty, expires), bytes.fromhex(work))


def _priced(difficulty: int, factor: float, limit: int) -> int:
    """``difficulty * factor`` rounded up, within ``1 … limit``."""
    return max(1, min(limit, math.ceil(difficulty * factor)))


def _out_of_scope(
    scope: Scope,
    bound_to: object,
    difficulty: int,
    priced_for: object,
    factor_text: object,
    algorithm: Algorithm,
) -> Verdict | None:
    """A refusal when a valid challenge is used on another route, by another client, too cheap.

    A challenge priced for a client (``ck``) counts only where the verifier
    prices per client and only for that client; elsewhere its factor may
    raise the bar but never lower it. An unpriced one, where prices are per
    client, counts only for clients who owe no more than the base price.
    """
    binding = scope.binding
    if binding is not None and bound_to != binding:
        cause = f"issued for {bound_to!r}, used for {binding!r}"
        return Verdict(Reason.WRONG_BINDING, cause, difficulty)
    factor = 1.0
    client = scope.client
    if priced_for is not None or factor_text is not None:
        read = parse_factor(factor_text) if type(factor_text) is str else None
        if read is None:
            return Verdict(Reason.MALFORMED, "unreadable price factor", difficulty)
        if client is not None and priced_for != client:
            return Verdict(Reason.WRONG_CLIENT, "priced for another client", difficulty)
        factor = read if client is not None else max(read, 1.0)
    elif client is not None and scope.owed > 1.0:
        cause = f"unpriced challenge, the client owes {scope.owed:.3g}x"
        return Verdict(Reason.INSUFFICIENT, cause, difficulty)
    floor = scope.min_difficulty
    if factor != 1.0:
        floor = _priced(floor, factor, max_difficulty(algorithm)) if floor else 0
    if difficulty < floor:
        return Verdict(Reason.INSUFFICIENT, f"difficulty {difficulty} < {floor}", difficulty)
    return None


def claim_reason(outcome: str) -> Reason:
    """The reason of a claim's outcome (:class:`Claim`): ``ok`` for a new claim."""
    return _CLAIM_REASONS[outcome]


_CLAIM_REASONS: Final = {
    Claim.NEW: Reason.OK,
    Claim.SEEN: Reason.REPLAYED,
    Claim.FULL: Reason.REPLAY_CACHE_FULL,
    Claim.UNAVAILABLE: Reason.REPLAY_STORE_UNAVAILABLE,
}
_CLAIM_CAUSES: Final = {
    Claim.SEEN: "solution already used",
    Claim.FULL: "replay cache at its cap",
    Claim.UNAVAILABLE: "the shared replay store could not be asked",
}


def _claim_verdict(outcome: str, verdict: Verdict) -> Verdict:
    return verdict._replace(reason=_CLAIM_REASONS[outcome], cause=_CLAIM_CAUSES[outcome])


def _finish(attempt: Attempt, right: bool) -> Verdict:
    if right:
        return attempt.verdict
    return attempt.verdict._replace(
        reason=Reason.WRONG_NUMBER, cause="derived key differs", expires=0
    )
