# Types for the compiled build of _forward.py (see _compiled.py): the upstream
# connection, the forward, the pool and the forwarder as extension types, so
# that the pass path reads their state (and the exchange's, the request's) by
# offset, and the methods they call on one another are called directly (cpdef:
# still Python methods too, keyword-only arguments kept). The .py is the
# source; a field added there (to __init__ or __slots__) goes here too, and a
# signature changed there changes here. The pool takes any borrower (tests
# hand it stand-ins): its borrowers stay untyped.

cimport cython

from ._connection cimport Exchange


cdef class UpstreamPool
cdef class Forward
cdef class Forwarder


@cython.final
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

    cpdef pause_reading(self)
    cpdef resume_reading(self)
    cpdef detach(self)
    cpdef close(self)
    cpdef _arm(self, double when)


@cython.final
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

    cpdef bint _room(self, bint paid)
    cpdef _lend(self, forward, bint fresh=*)
    cpdef withdraw(self, forward)
    cpdef give_back(self, forward, UpstreamConnection conn)
    cpdef replenish(self)
    cpdef lost(self, UpstreamConnection conn)


@cython.final
cdef class Forwarder:
    cdef public UpstreamPool pool
    cdef public object metrics
    cdef public object trusted


@cython.final
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

    cpdef start(self)
    cpdef _ask(self)
    cpdef _acquire(self)
    cpdef connected(self, UpstreamConnection conn, bint reused)
    cpdef _send(self)
    cpdef connect_failed(self, str kind, str cause)
    cpdef response_body(self, bytes data)
    cpdef response_done(self)
    cpdef flush(self)
    cpdef upstream_failed(self, str kind, str cause)
    cpdef _finish(self, bint reusable)
