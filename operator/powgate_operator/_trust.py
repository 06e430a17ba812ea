"""Trusted API keys: from the Secrets a policy names to the digests its sidecars hold.

Pure builders, no I/O. The administrator keeps the digests of a trusted
caller's keys in a Secret labelled ``powgate.dev/api-keys: "true"``; the
operator copies them into the policy's key Secret (data key
``apikeys.json``), which only the sidecar container mounts, so neither the
keys nor their digests reach a ConfigMap the application could read.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from powgate.policy import PolicySpec
from powgate.pricing import API_KEYS_LABEL, MAX_API_KEYS, ApiKeyHashes, parse_api_key_digests

__all__ = ["api_key_hashes", "api_key_secrets"]


def api_key_secrets(spec: PolicySpec) -> list[str]:
    """The Secrets the policy's trusted callers name, each once."""
    return sorted({c.api_keys.secret_name for c in spec.trusted_callers if c.api_keys is not None})


def api_key_hashes(
    spec: PolicySpec, secrets: Mapping[str, Mapping[str, Any] | None]
) -> tuple[ApiKeyHashes, list[str]]:
    """The digests of every trusted caller, and what could not be read.

    A Secret that is missing, not opted in or unreadable trusts nobody: its
    caller's keys pay the normal price until it is fixed (a deleted Secret
    revokes its keys). ``secrets`` maps each name of :func:`api_key_secrets`
    to the object read (None: absent).
    """
    callers: dict[str, list[str]] = {}
    problems: list[str] = []
    total = 0
    for caller in spec.trusted_callers:
        if caller.api_keys is None:
            continue
        name = caller.api_keys.secret_name
        try:
            digests = _digests(secrets.get(name))
        except ValueError as exc:
            problems.append(f"Secret {name} (trusted caller {caller.name}): {exc}"[:256])
            digests = []
        if total + len(digests) > MAX_API_KEYS:
            problems.append(f"trusted caller {caller.name}: more than {MAX_API_KEYS} API keys")
            digests = []
        total += len(digests)
        callers[caller.name] = sorted(set(digests))
    return ApiKeyHashes(callers=callers), problems


def _digests(secret: Mapping[str, Any] | None) -> list[str]:
    if secret is None:
        raise ValueError("does not exist")
    labels = (secret.get("metadata") or {}).get("labels") or {}
    if (secret.get("type") or "Opaque") != "Opaque" or labels.get(API_KEYS_LABEL) != "true":
        raise ValueError(f"is not an Opaque Secret labelled {API_KEYS_LABEL}=true")
    digests: list[str] = []
    for data_key, value in sorted((secret.get("data") or {}).items()):
        try:
            text = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise ValueError(f"{data_key} is not base64 of UTF-8 text") from None
        try:
            digests.extend(parse_api_key_digests(text))
        except ValueError as exc:
            raise ValueError(f"{data_key}: {exc}") from None
    return digests
