"""Untrusted JSON, decoded once the same way for every source.

Every way a body can fail to be JSON we can store ends in errors.IntakeError (→ 400):
not UTF-8, malformed, nested too deeply, an integer literal too long to convert, or a
lone UTF-16 surrogate escape (valid JSON, but a string no UTF-8 store — the journal,
the audit, a canonical string to verify — can hold).
"""

from __future__ import annotations

import json
import re
from typing import Any

from remediator import errors

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def load_bytes(body: bytes, *, what: str = "body") -> Any:
    """Decode a request body (UTF-8 JSON)."""
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
