# cython: annotation_typing=False
# Types for the compiled build of _routes.py (see _compiled.py): the routing
# table as an extension type, so that matching a request reads the table by
# offset (cpdef: still a Python method too, keyword-only arguments kept). The
# .py is the source; a field added to RouteTable's __slots__ goes here too,
# and a signature changed there changes here. The directive above as in
# _admission.pxd. Route stays a Python dataclass.

cimport cython


@cython.final
cdef class RouteTable:
    cdef public object config
    cdef public object mode
    cdef public bint enforcing
    cdef public str version
    cdef public tuple routes
    cdef public frozenset _exempt_exact
    cdef public tuple _exempt_prefixes

    @cython.locals(prefixes=tuple, folded=str)
    cpdef match(self, str method, str path)
