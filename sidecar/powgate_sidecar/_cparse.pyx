# cython: language_level=3
"""The request parser bound to llhttp's C API: a head collected in C.

The compiled build's :class:`RequestParser` (the contract, and the build
that runs ``httptools`` instead, are in ``_parse``): llhttp (the sources
``httptools`` vendors, built with this module) calls C functions here for
the target and each header field, which copy them into buffers grown on
demand up to :data:`_parse.MAX_FIELD_BYTES`; the protocol is called once a
head is whole, and for the body and the end of each request. No lenient flag is
set: llhttp's strict parse, as with ``httptools``. A head over the limits is
refused where ``_parse`` refuses it: the target as its bytes arrive, a field
when ``httptools`` would hand it over (once the next field's name begins, or
the head ends), so a malformed byte after it is the same error in both builds.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.string cimport memcmp, memcpy

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade

from ._parse import FIELDS_TOO_LARGE, TARGET_TOO_LONG, HeadError

# Method names as str, by llhttp's number (what it parses is one of them).
cdef tuple _METHOD_NAMES = tuple(
    llhttp_method_name(<uint8_t>number).decode("ascii") for number in range(HTTP_QUERY + 1)
)


cdef class RequestParser:
    """llhttp, strict; see ``_parse.RequestParser`` for the contract."""

    def __init__(self, protocol):
        llhttp_init(&self._parser, HTTP_REQUEST, &_SETTINGS)
        self._parser.data = <void*>self
        self._on_message_begin = protocol.on_message_begin
        self._on_headers_complete = protocol.on_headers_complete
        self._on_body = protocol.on_body
        self._on_message_complete = protocol.on_message_complete
        self._error = None
        self._in_head = False
        self.url = b""
        self.fields = []
        self.names = []
        self.method = ""
        self.version = ""
        self.keep_alive = False
        self.content_length = None
        self.coding_at = self.expect_at = -1
        self.hosts = 0

    def __dealloc__(self):
        PyMem_Free(self._url)
        PyMem_Free(self._field)

    def feed_data(self, data):
        cdef Py_buffer view
        cdef llhttp_errno_t err
        cdef const char* why
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            err = llhttp_execute(&self._parser, <const char*>view.buf, <size_t>view.len)
            if err == HPE_OK:
                return
            if err == HPE_PAUSED_UPGRADE and self._parser.upgrade:
                at = llhttp_get_error_pos(&self._parser) - <const char*>view.buf
                llhttp_resume_after_upgrade(&self._parser)
                raise HttpParserUpgrade(at)
        finally:
            PyBuffer_Release(&view)
        why = llhttp_get_error_reason(&self._parser)
        reason = why.decode("latin-1") if why != NULL else ""
        error = self._error
        if error is None:
            raise HttpParserError(reason)
        self._error = None
        exc = HttpParserCallbackError(reason)
        exc.__context__ = error
        raise exc


# One set of callbacks for every parser.
cdef llhttp_settings_t _SETTINGS
llhttp_settings_init(&_SETTINGS)
_SETTINGS.on_message_begin = _on_message_begin
_SETTINGS.on_url = _on_url
_SETTINGS.on_header_field = _on_header_field
_SETTINGS.on_header_value = _on_header_value
_SETTINGS.on_header_value_complete = _on_header_value_complete
_SETTINGS.on_headers_complete = _on_headers_complete
_SETTINGS.on_body = _on_body
_SETTINGS.on_message_complete = _on_message_complete


cdef inline RequestParser _of(llhttp_t* parser):
    return <RequestParser>parser.data


cdef int _failed(llhttp_t* parser, RequestParser self, error) noexcept:
    self._error = error
    llhttp_set_error_reason(parser, "callback error")
    return HPE_USER


cdef int _on_message_begin(llhttp_t* parser) noexcept:
    cdef RequestParser self = _of(parser)
    self._in_head = True
    self.coding_at = self.expect_at = -1
    self.hosts = 0
    self._url_length = 0
    self._name_length = 0
    self._value_length = 0
    self._overflow = self._refused = False
    try:
        self.fields = []
        self.names = []
        self._on_message_begin()
    except BaseException as exc:
        self._error = exc
        return -1
    return 0


cdef int _append(
    char** buffer,
    Py_ssize_t* capacity,
    Py_ssize_t* length,
    Py_ssize_t start,
    const char* at,
    size_t size,
) noexcept:
    """Copy a piece of a span after ``start + *length``: 1, or 0 past the limit, -1 no memory."""
    cdef Py_ssize_t end = start + length[0]
    cdef Py_ssize_t need = end + <Py_ssize_t>size
    cdef Py_ssize_t grown
    cdef char* moved
    if need > FIELD_BYTES:
        return 0
    if need > capacity[0]:
        grown = min(max(need, 2 * capacity[0], 256), <Py_ssize_t>FIELD_BYTES)
        moved = <char*>PyMem_Realloc(buffer[0], grown)
        if moved == NULL:
            return -1
        buffer[0] = moved
        capacity[0] = grown
    if size:
        memcpy(buffer[0] + end, at, size)
        length[0] += size
    return 1


cdef int _too_large(llhttp_t* parser, RequestParser self, int fits, int status, str text) noexcept:
    return _failed(parser, self, HeadError(status, text) if fits == 0 else MemoryError())


cdef int _on_url(llhttp_t* parser, const char* at, size_t length) noexcept:
    cdef RequestParser self = _of(parser)
    cdef int fits = _append(&self._url, &self._url_capacity, &self._url_length, 0, at, length)
    if fits > 0:
        return 0
    return _too_large(parser, self, fits, 414, TARGET_TOO_LONG)


cdef int _on_header_field(llhttp_t* parser, const char* at, size_t length) noexcept:
    cdef RequestParser self = _of(parser)
    cdef int fits
    if not self._in_head:
        return 0  # a trailer of a chunked body: not forwarded, not read
    if self._refused:
        # The field before was over the limits: httptools hands it over now.
        return _too_large(parser, self, 0, 431, FIELDS_TOO_LARGE)
    if self._overflow:
        return 0
    fits = _append(&self._field, &self._field_capacity, &self._name_length, 0, at, length)
    if fits > 0:
        return 0
    if fits == 0:
        self._overflow = True  # refused once read whole
        return 0
    return _too_large(parser, self, fits, 431, FIELDS_TOO_LARGE)


cdef int _on_header_value(llhttp_t* parser, const char* at, size_t length) noexcept:
    cdef RequestParser self = _of(parser)
    cdef int fits
    if not self._in_head or self._overflow:
        return 0
    fits = _append(
        &self._field, &self._field_capacity, &self._value_length, self._name_length, at, length
    )
    if fits > 0:
        return 0
    if fits == 0:
        self._overflow = True
        return 0
    return _too_large(parser, self, fits, 431, FIELDS_TOO_LARGE)


cdef int _on_header_value_complete(llhttp_t* parser) noexcept:
    cdef RequestParser self = _of(parser)
    cdef Py_ssize_t size = self._name_length
    cdef Py_ssize_t i
    cdef char c
    cdef char* lower
    if not self._in_head:
        return 0
    if self._overflow or len(self.fields) >= MAX_FIELDS:
        # Over the limits: refused when httptools would hand the field over.
        self._overflow = False
        self._refused = True
        self._name_length = 0
        self._value_length = 0
        return 0
    try:
        name = PyBytes_FromStringAndSize(self._field, size)
        value = PyBytes_FromStringAndSize(self._field + size, self._value_length)
        lowered = PyBytes_FromStringAndSize(NULL, size)
        lower = PyBytes_AS_STRING(lowered)
        for i in range(size):
            c = self._field[i]
            lower[i] = c + 32 if 65 <= c <= 90 else c  # A-Z to a-z
        # The fields the framing rules read (the connection's _request).
        if size == 4 and memcmp(lower, b"host", 4) == 0:
            self.hosts += 1
        elif size == 6 and self.expect_at < 0 and memcmp(lower, b"expect", 6) == 0:
            self.expect_at = len(self.fields)
        elif (
            size == 17 and self.coding_at < 0 and memcmp(lower, b"transfer-encoding", 17) == 0
        ):
            self.coding_at = len(self.fields)
        self.fields.append((name, value))
        self.names.append(lowered)
    except BaseException as exc:
        return _failed(parser, self, exc)
    self._name_length = 0
    self._value_length = 0
    return 0


# Bytes of buffers a parser keeps between heads (more is freed once a head is whole).
cdef Py_ssize_t _KEPT = 1024


cdef void _release(RequestParser self) noexcept:
    """Free the buffers of a large head: the connection may idle for long now."""
    PyMem_Free(self._url)
    PyMem_Free(self._field)
    self._url = self._field = NULL
    self._url_capacity = self._field_capacity = 0


cdef int _on_headers_complete(llhttp_t* parser) noexcept:
    cdef RequestParser self = _of(parser)
    self._in_head = False
    if self._refused:
        self._error = HeadError(431, FIELDS_TOO_LARGE)
        return -1
    try:
        self.url = PyBytes_FromStringAndSize(self._url, self._url_length)
        if self._url_capacity > _KEPT or self._field_capacity > _KEPT:
            _release(self)
        self.method = <str>_METHOD_NAMES[parser.method]
        if parser.http_major == 1 and parser.http_minor == 1:
            self.version = "1.1"
        elif parser.http_major == 1 and parser.http_minor == 0:
            self.version = "1.0"
        else:
            self.version = f"{parser.http_major}.{parser.http_minor}"
        self.keep_alive = llhttp_should_keep_alive(parser)
        # llhttp read it (digits only, one field, no overflow) and counts it down in the body.
        self.content_length = (
            parser.content_length if parser.flags & F_CONTENT_LENGTH else None
        )
        self._on_headers_complete()
    except BaseException as exc:
        self._error = exc
        return -1
    # An upgrade's body is not parsed: llhttp pauses after the head.
    return 1 if parser.upgrade else 0


cdef int _on_body(llhttp_t* parser, const char* at, size_t length) noexcept:
    cdef RequestParser self = _of(parser)
    try:
        self._on_body(PyBytes_FromStringAndSize(at, length))
    except BaseException as exc:
        return _failed(parser, self, exc)
    return 0


cdef int _on_message_complete(llhttp_t* parser) noexcept:
    cdef RequestParser self = _of(parser)
    try:
        self._on_message_complete()
    except BaseException as exc:
        self._error = exc
        return -1
    return 0
