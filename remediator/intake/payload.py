"""Untrusted JSON, decoded once the same way for every source.

Every way a body can fail to be JSON we can store ends in errors.IntakeError (→ 400):
not UTF-8, malformed, nested too deeply, an integer literal too long to convert, or a
lone UTF-16 surrogate escape (valid JSON, but a string no UTF-8 store — the journal,
the audit, a canonical string to verify — can hold).

Decoding is msgspec's (about twice as fast as the standard library's on a webhook body,
at one call per request), behind a fast path that only takes what both decoders read
alike: msgspec refuses what the standard library refuses and reads big integers, floats
and duplicate keys the same way, but it refuses NaN, 1e400 and lone surrogate escapes
(the standard library then decides, as before) and its nesting bound differs by a few
levels (bodies that could nest that deep are left to the standard library). Every
error and every value stays the same.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

from remediator import errors

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
FAST_MAX_DEPTH = 400
"""Bodies that may nest deeper than this go to the standard library, whose depth bound
(the interpreter's recursion limit, less the stack in use) is a few levels off msgspec's."""
_DECODER = msgspec.json.Decoder()
_SLOW: Any = object()


def _fast(body: bytes) -> Any:
    """msgspec's reading of `body` where it is the standard library's, else `_SLOW`."""
    # A complete body nests at most len/2 deep, and no deeper than its openings.
    if len(body) > 2 * FAST_MAX_DEPTH and body.count(b"[") + body.count(b"{") > FAST_MAX_DEPTH:
        return _SLOW
    try:
        # msgspec refuses invalid UTF-8 and lone surrogate escapes itself: what it
        # returns is storable, no check_storable needed.
        return _DECODER.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return _SLOW  # the standard library says why (or reads NaN and 1e400 as before)


def load_bytes(body: bytes, *, what: str = "body") -> Any:
    """Decode a request body (UTF-8 JSON)."""
    data = _fast(body)
    if data is not _SLOW:
        return data
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.IntakeError(f"{what} is not UTF-8 (byte {exc.start})") from exc
    return load_text(text, what=what)


def load_text(text: str, *, what: str = "body") -> Any:
    """Decode JSON text (a body, or JSON nested in a field such as SNS's Message)."""
    try:
        data = json.loads(text)
    except RecursionError as exc:
        raise errors.IntakeError(f"{what}: JSON nested too deeply") from exc
    except json.JSONDecodeError as exc:
        raise errors.IntakeError(f"{what}: malformed JSON: {exc.msg} at line {exc.lineno}") from exc
    except ValueError as exc:  # e.g. an integer literal too long to convert
        raise errors.IntakeError(f"{what}: malformed JSON: {exc}") from exc
    check_storable(text, data, what=what)
    return data


def check_storable(text: str, data: Any, *, what: str = "body") -> None:
    """Refuse decoded JSON holding a lone surrogate (from a `\\uD800` escape in `text`)."""
    if not _SURROGATE_ESCAPE.search(text):
        return  # raw UTF-8 cannot hold surrogates: only escapes can make one
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise errors.IntakeError(f"{what}: JSON string holds an unpaired UTF-16 surrogate") from exc
