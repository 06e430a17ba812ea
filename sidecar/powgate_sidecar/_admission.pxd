# cython: annotation_typing=False
# Types for the compiled build of _admission.py (see _compiled.py): the
# admission as an extension type, so that a refusal reads its state (and the
# request's) by offset, and the steps of a judgement call one another directly
# (cpdef: still Python methods too, keyword-only arguments kept). The .py is
# the source; a field added to Admission's __init__ goes here too, and a
# signature changed there changes here. The directive above keeps the .py's
# annotations (``status: int``) from contradicting the cpdef signatures below;
# the def methods' annotations of builtin types still check their arguments
# exactly when compiled (a subclass, such as a StrEnum member, is refused), so
# they name what callers pass.

cimport cython

from ._challenges cimport ChallengeStock
from ._http cimport Request
from ._metrics cimport Metrics


@cython.final
cdef class Admission:
    cdef public object verifier
    cdef public object trusted
    cdef public object _replay
    cdef public ChallengeStock _stock
    cdef public Metrics _metrics
    cdef public bytes page
    cdef public object pricer
    cdef public object shared
    cdef public tuple _head

    cpdef quote(self, Request request)
    cpdef tuple find(self, Request request)
    cpdef judge(self, Request request, table, route, quote)
    @cython.locals(metrics=Metrics)
    cpdef conclude(self, Request request, table, route, quote, payload, bint from_cookie=*, verdict=*)
    cpdef _challenged(self, Request request, table, route, quote)
    cpdef client(self, Request request)
    cpdef bytes challenge(self, Request request, table, route, quote, status=*)
    cpdef bytes new_challenge(self, table, route, quote)
