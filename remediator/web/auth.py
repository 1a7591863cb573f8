"""Request authentication: Bearer or Basic for webhooks, Bearer for the admin API."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping

from aiohttp import web

from remediator.settings import Auth


def webhook_ok(request: web.Request, auth: Auth) -> bool:
    """True when the request carries the configured webhook credentials (or none are set)."""
    if auth.webhook_bearer_token is None and auth.webhook_basic_user is None:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if auth.webhook_bearer_token is not None and scheme.lower() == "bearer":
        return _same(value.strip(), auth.webhook_bearer_token)
    if auth.webhook_basic_user is not None and scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        return (
            bool(sep)
            and _same(user, auth.webhook_basic_user)
            and _same(password, auth.webhook_basic_password or "")
        )
    return False


def admin_ok(request: web.Request, auth: Auth) -> bool:
    if auth.admin_token is None:
        return False
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and _same(value.strip(), auth.admin_token)


def approver(request: web.Request, tokens: Mapping[str, str]) -> str | None:
    """The name of the approver whose token the request carries (`approvals.tokens`)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not tokens:
        return None
    found = None
    for name, token in tokens.items():  # every one compared: no early exit to time
        if _same(value.strip(), token):
            found = name
    return found


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
