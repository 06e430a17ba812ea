"""The request parser of client connections: llhttp, a head collected whole.

A :class:`RequestParser` reads a connection's bytes and tells its protocol
four things: a request begins (``on_message_begin``), its head is complete
(``on_headers_complete``: the head is then in the parser's ``url``,
``fields``, ``names``, ``method``, ``version`` and ``keep_alive``, and what
the framing rules read in ``content_length``, ``coding_at``, ``expect_at``
and ``hosts``), a piece
of its body (``on_body``), the request is complete
(``on_message_complete``). Errors are ``httptools``'s: a framing error an
``HttpParserError``, the bytes after an upgrade's head
``HttpParserUpgrade``, and an exception raised by a callback (or a head over
the limits below: a :class:`HeadError`) an ``HttpParserCallbackError`` whose
``__context__`` is that exception.

Two builds of the same contract. This one runs ``httptools`` and collects
the head field by field in Python. Where the request path is compiled (see
``_compiled``), ``_cparse`` binds llhttp's C API itself and collects the head
in C: one call into Python per head rather than one per field. Both run
llhttp strict, with no lenient flags, and the same limits.
"""

from __future__ import annotations

from typing import Final, Protocol

import httptools

__all__ = [
    "FIELDS_TOO_LARGE",
    "MAX_FIELDS",
    "MAX_FIELD_BYTES",
    "TARGET_TOO_LONG",
    "HeadError",
    "ParserProtocol",
    "RequestParser",
]

#: Fields per request head (aiohttp's default before, and nginx's order of magnitude).
MAX_FIELDS: Final = 100
#: One request target or header field (name + value), in bytes.
MAX_FIELD_BYTES: Final = 8190
#: What a head over the limits is answered (414, 431), by both builds of the parser.
TARGET_TOO_LONG: Final = "request target too long\n"
FIELDS_TOO_LARGE: Final = "request header fields too large\n"
#: Method names as ``str``, decoded once rather than per request.
_METHODS: Final = {
    name.encode(): name for name in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}


class HeadError(Exception):
    """A request head the sidecar refuses: answered with ``status`` and ``text``."""

    def __init__(self, status: int, text: str, *, fields: bytes = b"") -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.fields = fields


class ParserProtocol(Protocol):
    def on_message_begin(self) -> None: ...

    def on_headers_complete(self) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_message_complete(self) -> None: ...


class RequestParser:
    """llhttp through ``httptools``, the head collected in Python."""

    __slots__ = (
        "_in_head",
        "_parser",
        "_protocol",
        "coding_at",
        "content_length",
        "expect_at",
        "feed_data",
        "fields",
        "hosts",
        "keep_alive",
        "method",
        "names",
        "on_body",
        "on_message_begin",
        "on_message_complete",
        "url",
        "version",
    )

    def __init__(self, protocol: ParserProtocol) -> None:
        self._protocol = protocol
        self._in_head = False
        #: The head just parsed: the target as sent, the fields (client's spelling)
        #: and their names in lower case, index by index.
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.names: list[bytes] = []
        self.method = ""
        self.version = ""
        self.keep_alive = False
        #: The value of ``Content-Length`` (``None``: none); the index of the first
        #: ``Transfer-Encoding`` and ``Expect`` fields (-1: none); ``Host`` fields.
        self.content_length: int | None = None
        self.coding_at = self.expect_at = -1
        self.hosts = 0
        # httptools calls these straight through to the protocol.
        self.on_message_begin = protocol.on_message_begin
        self.on_body = protocol.on_body
        self.on_message_complete = protocol.on_message_complete
        self._parser = httptools.HttpRequestParser(self)
        self.feed_data = self._parser.feed_data

    # -- httptools callbacks -------------------------------------------------

    def on_url(self, url: bytes) -> None:
        if not self._in_head:
            # The request line's first bytes: a new head.
            self._in_head = True
            self.fields = []
            self.names = []
        else:
            url = self.url + url
        if len(url) > MAX_FIELD_BYTES:
            raise HeadError(414, TARGET_TOO_LONG)
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer of a chunked body: not forwarded, not read
        fields = self.fields
        if len(fields) >= MAX_FIELDS or len(name) + len(value) > MAX_FIELD_BYTES:
            raise HeadError(431, FIELDS_TOO_LARGE)
        fields.append((name, value))
        self.names.append(name.lower())

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        raw = parser.get_method()
        self.method = _METHODS.get(raw) or raw.decode("ascii")
        self.version = parser.get_http_version()
        self.keep_alive = parser.should_keep_alive()
        names = self.names
        self.content_length = (
            # llhttp read it: digits only, one field, no overflow.
            int(self.fields[names.index(b"content-length")][1])
            if b"content-length" in names
            else None
        )
        self.coding_at = _index(names, b"transfer-encoding")
        self.expect_at = _index(names, b"expect")
        self.hosts = names.count(b"host")
        self._protocol.on_headers_complete()


def _index(names: list[bytes], name: bytes) -> int:
    return names.index(name) if name in names else -1
