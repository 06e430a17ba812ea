# Types for the compiled build of _http.py (see _compiled.py): the request
# record as an extension type, its fields read by offset rather than by name.
# The .py is the source; a field added to Request's __slots__ goes here too.

cdef class Request:
    cdef public bint chunked
    cdef public object content_length
    cdef public bint expect_continue
    cdef public list fields
    cdef public bint has_body
    cdef public bint keep_alive
    cdef public str method
    cdef public list names
    cdef public str path
    cdef public str peer
    cdef public str query
    cdef public bytes target
    cdef public str version
