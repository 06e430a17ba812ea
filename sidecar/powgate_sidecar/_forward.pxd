# Types for the compiled build of _forward.py (see _compiled.py): the upstream
# connection, the forward, the pool and the forwarder as extension types, so
# that the pass path reads their state (and the exchange's, the request's) by
# offset. The .py is the source; a field added there (to __init__ or
# __slots__) goes here too. The pool's methods take any borrower and any
# connection (tests hand it stand-ins): their arguments stay untyped.

from ._connection cimport Exchange
from ._http cimport Request


cdef class UpstreamPool
cdef class Forward
cdef class Forwarder


cdef class UpstreamConnection:
    cdef public UpstreamPool _pool
    cdef public object _loop
    cdef public object _parser
    cdef public object transport
    cdef public Forward forward
    cdef public bint closed
    cdef public Py_ssize_t used
    cdef public bytes _reason
    cdef public list _fields
    cdef public bint _skipping
    cdef public bint _until_close
    cdef public double _deadline
    cdef public object _timer
    cdef public double _timer_at
    cdef public list _out
    cdef public bint _posted


cdef class UpstreamPool:
    cdef public object limits
    cdef public object outbox
    cdef public object _open
    cdef public str host
    cdef public int port
    cdef public object ssl
    cdef public bytes base_path
    cdef public bytes authority
    cdef public Py_ssize_t reserve
    cdef public list _idle
    cdef public Py_ssize_t _lent
    cdef public Py_ssize_t _lent_free
    cdef public object _waiting
    cdef public set _connecting
    cdef public object _spare


cdef class Forwarder:
    cdef public UpstreamPool pool
    cdef public object metrics
    cdef public object trusted


cdef class Forward:
    cdef public list _body
    cdef public bint _body_sent
    cdef public bint _chunked_out
    cdef public bint _clear_cookie
    cdef public bint _close_after
    cdef public UpstreamConnection _conn
    cdef public Forwarder _forwarder
    cdef public object _on_done
    cdef public list _out
    cdef public bint _reused
    cdef public str _route
    cdef public double _sent_at
    cdef public int _state
    cdef public bint _streaming
    cdef public Exchange exchange
    cdef public bint gone
    cdef public bint lent
    cdef public bint paid
    cdef public object waiting
