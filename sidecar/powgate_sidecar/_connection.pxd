# Types for the compiled build of _connection.py (see _compiled.py): the
# connection and the exchange as extension types. The .py is the source; a
# field added there (to __init__ or __slots__) goes here too.

from ._cparse cimport RequestParser as CRequestParser
from ._http cimport Request


cdef class Exchange:
    cdef public object _buffered
    cdef public object _consumer
    cdef public bint body_done
    cdef public Py_ssize_t body_limit
    cdef public ClientConnection conn
    cdef public Py_ssize_t received
    cdef public Request request
    cdef public bint response_done
    cdef public bint response_started


cdef class ClientConnection:
    cdef public object _listener
    cdef public object _limits
    cdef public CRequestParser _parser
    cdef public object _loop
    cdef public object _transport
    cdef public str peer
    cdef public object _client_key
    cdef public bint keep_alive
    cdef public int _paused
    cdef public bint _writable
    cdef public bint closed
    cdef public bint _feeding
    cdef public list _out
    cdef public bint _posted
    cdef public object _rest
    cdef public Py_ssize_t _rest_at
    cdef public list _deferred
    cdef public Py_ssize_t _head_bytes
    cdef public bint _in_head
    cdef public object _reading
    cdef public object _current
    cdef public object _pending
    cdef public int _phase
    cdef public double _deadline
    cdef public double _write_deadline
    cdef public double _body_start
    cdef public object _timer
    cdef public double _timer_at
