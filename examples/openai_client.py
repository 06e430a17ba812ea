"""Call an OpenAI-compatible service behind a powgate sidecar with the OpenAI SDK.

    python examples/openai_client.py http://127.0.0.1:8080/v1 "Say hello"
    POWGATE_BASE_URL=http://127.0.0.1:8080/v1 python examples/openai_client.py

The only change to ordinary OpenAI SDK code is the ``http_client``: its
``PowAuth`` answers the sidecar's proof-of-work challenges (solve, retry)
before the request reaches the model. ``OPENAI_API_KEY`` and
``POWGATE_MODEL`` are read from the environment when set.
"""

from __future__ import annotations

import os
import sys

import httpx
from openai import OpenAI

from powgate.client import PowAuth


def main(argv: list[str]) -> int:
    base_url = argv[1] if len(argv) > 1 else os.environ.get("POWGATE_BASE_URL")
    if not base_url:
        print(
            "usage: openai_client.py BASE_URL [PROMPT]  (or set POWGATE_BASE_URL)", file=sys.stderr
        )
        return 2
    prompt = argv[2] if len(argv) > 2 else "Say hello in five words."
    client = OpenAI(
        base_url=base_url,
        api_key=os.environ.get("OPENAI_API_KEY", "unused"),
        # prefetch: fetch and solve a challenge before each call instead of
        # learning about it from a rejection; saves one round trip.
        # The OpenAI SDK from version 3 is typed for httpx2 clients but takes
        # httpx ones too; with httpx2 use powgate.client.httpx2.PowAuth.
        http_client=httpx.Client(auth=PowAuth(prefetch=True), timeout=60),  # type: ignore[arg-type]
    )
    stream = client.chat.completions.create(
        model=os.environ.get("POWGATE_MODEL", "standin"),
        messages=[{"role": "user", "content": prompt}],
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
