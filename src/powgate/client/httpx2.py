"""``PowAuth`` for ``httpx2`` clients (the OpenAI SDK from version 3 is built on httpx2)::

    import httpx2
    from openai import OpenAI
    from powgate.client.httpx2 import PowAuth

    client = OpenAI(base_url=..., http_client=httpx2.Client(auth=PowAuth()))

httpx2 keeps httpx's authentication-flow protocol, so the flow is the same
class; this one is also an ``httpx2.Auth``, which httpx2 clients require.
"""

from __future__ import annotations

try:
    import httpx2
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("powgate.client.httpx2 needs httpx2: pip install httpx2") from exc

from powgate.client._httpx import PowAuth as _HttpxPowAuth

__all__ = ["PowAuth"]


# The two Auth bases declare the same methods over their own Request and
# Response classes; the flow only uses what both provide.
class PowAuth(_HttpxPowAuth, httpx2.Auth):  # type: ignore[misc]
    """:class:`powgate.client.PowAuth`, usable by ``httpx2.Client`` and ``httpx2.AsyncClient``."""
