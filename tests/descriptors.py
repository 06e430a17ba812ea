"""Open files for tests that hold many connections at once: one home for raising the limit.

A fresh machine's shell often starts processes with a soft limit of 1,024
open files; a test that floods with thousands of connections from its own
process raises it (up to the hard limit, which needs no privilege) or is
skipped with the reason.
"""

from __future__ import annotations

import resource

import pytest


def allow_open_files(count: int) -> None:
    """Let this process hold at least ``count`` open files, or skip the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < count:
        if hard != resource.RLIM_INFINITY and hard < count:
            pytest.skip(f"needs {count} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))
