# The request parser bound to llhttp's C API (see _cparse.pyx): the type the
# compiled connection reads its fields from.

from libc.stdint cimport uint8_t, uint16_t, int32_t, uint64_t


cdef extern from "llhttp.h":
    ctypedef struct llhttp_t:
        int32_t error
        void* data
        uint64_t content_length
        uint8_t method
        uint8_t http_major
        uint8_t http_minor
        uint8_t upgrade
        uint16_t flags

    ctypedef enum llhttp_flags:
        F_CONTENT_LENGTH

    ctypedef int (*llhttp_data_cb)(llhttp_t*, const char* at, size_t length) noexcept
    ctypedef int (*llhttp_cb)(llhttp_t*) noexcept

    ctypedef struct llhttp_settings_t:
        llhttp_cb on_message_begin
        llhttp_data_cb on_url
        llhttp_data_cb on_header_field
        llhttp_data_cb on_header_value
        llhttp_cb on_header_value_complete
        llhttp_cb on_headers_complete
        llhttp_data_cb on_body
        llhttp_cb on_message_complete

    ctypedef enum llhttp_errno_t:
        HPE_OK
        HPE_PAUSED_UPGRADE
        HPE_USER
        HPE_CB_MESSAGE_BEGIN
        HPE_CB_HEADERS_COMPLETE
        HPE_CB_MESSAGE_COMPLETE
        HPE_CB_HEADER_VALUE_COMPLETE

    ctypedef enum llhttp_type_t:
        HTTP_REQUEST

    ctypedef enum llhttp_method_t:
        HTTP_QUERY  # the last of llhttp's methods

    void llhttp_settings_init(llhttp_settings_t* settings)
    void llhttp_init(llhttp_t* parser, llhttp_type_t type, const llhttp_settings_t* settings)
    llhttp_errno_t llhttp_execute(llhttp_t* parser, const char* data, size_t len)
    int llhttp_should_keep_alive(const llhttp_t* parser)
    void llhttp_resume_after_upgrade(llhttp_t* parser)
    const char* llhttp_get_error_reason(const llhttp_t* parser)
    void llhttp_set_error_reason(llhttp_t* parser, const char* reason)
    const char* llhttp_get_error_pos(const llhttp_t* parser)
    const char* llhttp_method_name(uint8_t method)


cdef enum:
    # Bytes of one request target or header field (name + value): _parse.MAX_FIELD_BYTES.
    FIELD_BYTES = 8190
    # Fields of one request head: _parse.MAX_FIELDS.
    MAX_FIELDS = 100


cdef class RequestParser:
    cdef llhttp_t _parser
    cdef object _on_message_begin
    cdef object _on_headers_complete
    cdef object _on_body
    cdef object _on_message_complete
    cdef object _error
    cdef bint _in_head
    # The target, and the field being read (its name, then its value), as they
    # arrive: buffers grown on demand up to FIELD_BYTES (an idle connection holds
    # little: 10,000 of them are a goal of their own).
    cdef char* _url
    cdef Py_ssize_t _url_capacity
    cdef Py_ssize_t _url_length
    cdef char* _field
    cdef Py_ssize_t _field_capacity
    cdef Py_ssize_t _name_length
    cdef Py_ssize_t _value_length
    # The field being read is over FIELD_BYTES (its bytes are no longer kept);
    # a field over the limits was read whole: the head is refused when the
    # next field begins or the head ends, where httptools hands over a field.
    cdef bint _overflow
    cdef bint _refused
    # The head just parsed (see _parse.RequestParser).
    cdef public bytes url
    cdef public list fields
    cdef public list names
    cdef public str method
    cdef public str version
    cdef public bint keep_alive
    cdef public object content_length
    cdef public Py_ssize_t coding_at
    cdef public Py_ssize_t expect_at
    cdef public Py_ssize_t hosts
