"""Where a solution travels: a header, a single-use cookie, or ALTCHA's form field.

Only shapes are handled here; the verifier judges the content. Each reader
is bounded so that hostile input costs the sidecar no more than a genuine
request does.
"""

from __future__ import annotations

import re
from email.message import Message
from typing import Final
from urllib.parse import parse_qsl

from multidict import istr

import powgate

__all__ = [
    "FORM_FIELD",
    "SOLUTION_COOKIE",
    "SOLUTION_HEADER",
    "SOLVE_MS_HEADER",
    "form_solution",
    "is_form",
    "parse_solve_ms",
    "split_cookie",
]

SOLUTION_HEADER: Final = istr(powgate.SOLUTION_HEADER)
SOLVE_MS_HEADER: Final = istr(powgate.SOLVE_MS_HEADER)
SOLUTION_COOKIE: Final = "powgate_solution"
FORM_FIELD: Final = "altcha"

_URLENCODED: Final = "application/x-www-form-urlencoded"
_MULTIPART: Final = "multipart/form-data"
_MAX_FORM_FIELDS: Final = 256
_ALTCHA_PART: Final = re.compile(
    rb'(?im)^content-disposition:[^\r\n]*;\s*name="?altcha"?(?:;|\s*$)'
)
#: A client's honest solve time is well below a challenge lifetime; cap what we record.
_MAX_SOLVE_MS: Final = 3_600_000


def split_cookie(header: str) -> tuple[str | None, str | None]:
    """The solution cookie's value, and the Cookie header without it (``None`` if empty)."""
    solution: str | None = None
    kept: list[str] = []
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name == SOLUTION_COOKIE:
            solution = value.strip('"')
        elif part.strip():
            kept.append(part.strip())
    return solution, ("; ".join(kept) if kept else None)


def is_form(mimetype: str) -> bool:
    """Whether a body of this (lower-cased) media type can carry ALTCHA's form field."""
    return mimetype in (_URLENCODED, _MULTIPART)


def form_solution(*, mimetype: str, header: str, body: bytes) -> str | None:
    """The ``altcha`` field of an urlencoded or multipart body, if present.

    ``mimetype`` is the lower-cased media type, ``header`` the whole
    Content-Type (the multipart boundary is a parameter of it).
    """
    if mimetype == _URLENCODED:
        try:
            fields = parse_qsl(body.decode("latin-1"), max_num_fields=_MAX_FORM_FIELDS)
        except ValueError:
            return None
        return next((value for name, value in fields if name == FORM_FIELD), None)
    boundary = _boundary(header)
    if boundary is None:
        return None
    # The body is already bounded; a linear scan of its parts needs no full parser.
    for part in body.split(b"--" + boundary)[1:]:
        head, sep, content = part.partition(b"\r\n\r\n")
        if sep and _ALTCHA_PART.search(head):
            return content.removesuffix(b"\r\n").decode("latin-1")
    return None


def _boundary(content_type: str) -> bytes | None:
    message = Message()
    message["content-type"] = content_type
    value = message.get_param("boundary")
    if not isinstance(value, str) or not 1 <= len(value) <= 70:
        return None
    return value.encode("latin-1", "replace")


def parse_solve_ms(value: str) -> float | None:
    """Seconds from ``X-Powgate-Solve-Ms``; ``None`` if it is not a plausible number."""
    if not value.isascii() or not value.isdigit() or len(value) > 7:
        return None
    millis = int(value)
    return millis / 1000 if millis <= _MAX_SOLVE_MS else None
