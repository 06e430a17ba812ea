# cython: annotation_typing=False
# Types for the compiled build of _challenges.py (see _compiled.py): the stock
# and its shelves as extension types, so that handing out a challenge reads
# them by offset, and the admission calls the stock directly (cpdef: still a
# Python method too, keyword-only arguments kept). The .py is the source; a
# field added to a class's __slots__ goes here too, and a signature changed
# there changes here. The directive above as in _admission.pxd: the cpdef
# signature below is take's (ttl and factor as doubles: 1 and 1.0 issue alike).

cimport cython


@cython.final
cdef class _Shelf:
    cdef public list documents
    cdef public double made_at
    cdef public Py_ssize_t size


@cython.final
cdef class ChallengeStock:
    cdef public object issuer
    cdef public object _clock
    cdef public dict _shelves

    @cython.locals(shelves=dict, shelf=_Shelf, documents=list, now=double)
    cpdef bytes take(self, binding, difficulty, double ttl, client=*, double factor=*)
    cpdef restock(self, issuer=*)
