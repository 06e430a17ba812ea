"""HTTP/1.1 on the wire: the request record, precomputed bytes, response heads.

Parsing is llhttp's (``httptools``) on both sides; what is here is what a
parser leaves to its user: the record of one parsed request, the framing
decisions RFC 9112 asks of a proxy, and the bytes the sidecar writes, built
once where they never change.
"""

from __future__ import annotations

import http
import time
from email.utils import formatdate
from typing import Final

__all__ = [
    "CHUNKED_END",
    "HOP_BY_HOP",
    "Request",
    "chunk",
    "date_line",
    "response",
    "status_line",
]

#: RFC 9110 §7.6.1 hop-by-hop fields, lower case, as compared.
HOP_BY_HOP: Final = frozenset(
    (
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
        b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    )
)  # fmt: skip
CHUNKED_END: Final = b"0\r\n\r\n"
_STATUS_LINES: Final = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode("latin-1")
    for status in http.HTTPStatus
}


def status_line(status: int, reason: bytes | None = None) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``; the standard phrase unless ``reason`` is given."""
    if reason is None:
        line = _STATUS_LINES.get(status)
        if line is not None:
            return line
        reason = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


class _Clock:
    """The ``Date`` line, formatted once a second rather than once a response."""

    __slots__ = ("line", "second")

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.line = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.line


#: ``Date: …\r\n`` for now (RFC 9110 §6.6.1: an origin with a clock sends it).
date_line: Final = _Clock()


def response(
    status: int,
    body: bytes = b"",
    *,
    content_type: bytes = b"text/plain; charset=utf-8",
    fields: bytes = b"",
    close: bool = False,
) -> bytes:
    """A whole response of the sidecar's own.

    ``fields`` are complete ``Name: value\\r\\n`` lines.
    """
    head = [status_line(status), date_line()]
    if body:
        head.append(b"Content-Type: " + content_type + b"\r\n")
    head.append(fields)
    head.append(b"Content-Length: %d\r\n" % len(body))
    if close:
        head.append(b"Connection: close\r\n")
    head.append(b"\r\n")
    head.append(body)
    return b"".join(head)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (never the empty last chunk: see ``CHUNKED_END``)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class Request:
    """One request as parsed: its head, and what framing it declared.

    Header names keep the client's spelling (they are forwarded as they
    came); ``names`` holds them in lower case for comparisons, index by index.
    Compiled, its fields are typed by ``_http.pxd`` (see ``_compiled``).
    """

    __slots__ = (
        "chunked",
        "content_length",
        "expect_continue",
        "fields",
        "has_body",
        "keep_alive",
        "method",
        "names",
        "path",
        "peer",
        "query",
        "target",
        "version",
    )

    def __init__(  # positional: the connection's call is the hot path's
        self,
        method: str,
        target: bytes,
        path: str,
        query: str,
        version: str,
        fields: list[tuple[bytes, bytes]],
        names: list[bytes],
        keep_alive: bool,
        content_length: int | None,
        chunked: bool,
        expect_continue: bool,
        peer: str,
    ) -> None:
        self.method = method
        #: The request target exactly as sent (origin-form: path and query).
        self.target = target
        #: The path as sent, before any decoding (see ``_routes.canonical``).
        self.path = path
        self.query = query
        self.version = version
        self.fields = fields
        self.names = names
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect_continue
        self.peer = peer
        #: A body follows the head (read once per request by each layer: stored).
        self.has_body = chunked or bool(content_length)

    def header(self, name: bytes) -> bytes | None:
        """The first field called ``name`` (lower case), or ``None``."""
        names = self.names
        if name in names:
            return self.fields[names.index(name)][1]
        return None

    def headers(self, name: bytes) -> list[bytes]:
        """Every field called ``name`` (lower case), in order."""
        return [self.fields[i][1] for i, each in enumerate(self.names) if each == name]
