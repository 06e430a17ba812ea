# cython: annotation_typing=False
# Types for the compiled build of _metrics.py (see _compiled.py): the metrics
# every request touches, their histograms and series as extension types, so
# that counting a request or observing a value reads them by offset and the
# admission calls them directly (cpdef: still Python methods too,
# keyword-only arguments kept). The .py is the source; a field added to a
# class's __init__ or __slots__ goes here too, and a signature changed there
# changes here. The directive above as in _admission.pxd (a reason may be a
# StrEnum member: count_request's arguments stay untyped).

cimport cython


@cython.final
cdef class _Series:
    cdef public list counts
    cdef public double total


@cython.final
cdef class LoopHistogram:
    cdef public tuple _bounds
    cdef public dict _series
    cdef public str documentation
    cdef public tuple labelnames
    cdef public str name

    @cython.locals(series=_Series)
    cpdef observe(self, double value, tuple labels=*)


@cython.final
cdef class Metrics:
    cdef public object registry
    cdef public dict requests
    cdef public object inflight
    cdef public LoopHistogram verify_seconds
    cdef public LoopHistogram upstream_seconds
    cdef public LoopHistogram queue_wait_seconds
    cdef public LoopHistogram client_solve_seconds
    cdef public LoopHistogram price_factor
    cdef public LoopHistogram replay_store_seconds
    cdef public tuple histograms
    cdef public object difficulty
    cdef public object config_info
    cdef public object config_reloads_total
    cdef public object config_fields_ignored_total
    cdef public object queue_depth
    cdef public object queue_dropped_total
    cdef public object derivations_pending
    cdef public object replay_cache_entries
    cdef public object replay_cache_capacity
    cdef public object replay_store_claims_total
    cdef public object replay_store_errors_total
    cdef public object replay_store_unavailable_total
    cdef public object replay_store_up
    cdef public object upstream_errors_total
    cdef public object client_errors_total

    @cython.locals(requests=dict)
    cpdef count_request(self, route, outcome, reason)
