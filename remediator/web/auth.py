"""Request authentication: Bearer or Basic for webhooks, Bearer for the admin and read API.

Header values are untrusted bytes: aiohttp hands a non-UTF-8 byte over as a surrogate
escape, and every comparison here works on the bytes as sent, so such a header is just
wrong credentials (401), never an error.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping

from aiohttp import web

from remediator.settings import Auth
from remediator.web import server


def webhook_ok(request: web.Request, auth: Auth) -> bool:
    """True when the request carries the configured webhook credentials (or none are set)."""
    if auth.webhook_bearer_token is None and auth.webhook_basic_user is None:
        return True
    scheme, value = _authorization(request)
    if auth.webhook_bearer_token is not None and scheme == "bearer":
        return _same(value, auth.webhook_bearer_token)
    if auth.webhook_basic_user is not None and scheme == "basic":
        try:
            decoded = base64.b64decode(_bytes(value), validate=True).decode("utf-8")
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
    scheme, value = _authorization(request)
    return scheme == "bearer" and _same(value, auth.admin_token)


def read_refusal(request: web.Request, auth: Auth) -> tuple[int, str] | None:
    """Why a read (audit, rules, console) is refused — (status, message) — or None.

    With a read or admin token configured, the request must carry one of them (401).
    With none, only a loopback client may read (403): the TCP peer decides, never a
    forwarded header, which any client can write.
    """
    if auth.reads_need_token:
        scheme, value = _authorization(request)
        tokens = [t for t in (auth.read_token, auth.admin_token) if t is not None]
        # Every token is compared, so the time taken does not say which one was close.
        if scheme == "bearer" and sum(_same(value, t) for t in tokens) > 0:
            return None
        return 401, "missing or wrong token: send Authorization: Bearer <read or admin token>"
    if server.is_loopback(server.client_of(request.transport)):
        return None
    return 403, (
        "reads from other hosts need a token: set auth.read_token_env "
        "(REMEDIATOR_READ_TOKEN) and send it as a Bearer token"
    )


def _authorization(request: web.Request) -> tuple[str, str]:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower(), value.strip()


def approver(request: web.Request, tokens: Mapping[str, str]) -> str | None:
    """The name of the approver whose token the request carries (`approvals.tokens`)."""
    scheme, value = _authorization(request)
    if scheme != "bearer" or not tokens:
        return None
    found = None
    for name, token in tokens.items():  # every one compared: no early exit to time
        if _same(value, token):
            found = name
    return found


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # never raises, whatever was sent


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(_bytes(given), expected.encode("utf-8"))


# -- the console's sessions ------------------------------------------------------------

READ, ADMIN, APPROVER = "read", "admin", "approver"
SESSION_COOKIE = "remediator_session"
SESSION_SECONDS = 12 * 3600
"""How long a console sign-in lasts: one on-call night, then the token is asked again."""


def token_role(given: str, auth: Auth, tokens: Mapping[str, str]) -> tuple[str, str] | None:
    """(role, name) of the token given — the admin, read or an approver's token — or None.
    Every configured token is compared, so the time taken does not say which was close."""
    found = None
    for role, name, token in _tokens(auth, tokens):
        if _same(given, token) and found is None:
            found = role, name
    return found


def bearer_role(
    request: web.Request, auth: Auth, tokens: Mapping[str, str]
) -> tuple[str, str] | None:
    scheme, value = _authorization(request)
    return token_role(value, auth, tokens) if scheme == "bearer" and value else None


def session_cookie(role: str, name: str, token: str, *, now: float) -> str:
    """A signed sign-in: `role.name.expiry.mac`, the MAC keyed by the token itself.

    Nothing is kept server-side, so every replica knows the session, and changing a
    token ends every session signed with it. Names are approver names from the config
    (no dots asked of them: the name is hex-encoded)."""
    body = f"{role}.{name.encode().hex()}.{int(now) + SESSION_SECONDS}"
    return f"{body}.{_mac(token, 'session', body)}"


def session_role(
    value: str, auth: Auth, tokens: Mapping[str, str], *, now: float
) -> tuple[str, str, str] | None:
    """(role, name, token) of a valid, unexpired session cookie, else None."""
    parts = value.split(".")
    expiry = parts[2] if len(parts) == 4 else ""
    if not (0 < len(expiry) <= 12 and expiry.isascii() and expiry.isdigit()) or int(expiry) < now:
        return None
    role, hexname, _, mac = parts
    try:
        name = bytes.fromhex(hexname).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    for known_role, known_name, token in _tokens(auth, tokens):
        if known_role == role and known_name == name:
            body = ".".join(parts[:3])
            return (role, name, token) if _same(mac, _mac(token, "session", body)) else None
    return None


def csrf_token(token: str, cookie: str) -> str:
    """The value a console form must carry back with a cookie session: bound to the
    session, unknowable to another site (the cookie is HttpOnly and SameSite=Strict too)."""
    return _mac(token, "csrf", cookie)


def csrf_ok(given: str, token: str, cookie: str) -> bool:
    return _same(given, csrf_token(token, cookie))


def _tokens(auth: Auth, tokens: Mapping[str, str]) -> list[tuple[str, str, str]]:
    out = [(ADMIN, "admin", auth.admin_token)] if auth.admin_token else []
    if auth.read_token:
        out.append((READ, "read", auth.read_token))
    out.extend((APPROVER, name, token) for name, token in tokens.items() if token)
    return out


def _mac(token: str, purpose: str, body: str) -> str:
    key = token.encode("utf-8")
    return hmac.new(key, f"remediator-ui-{purpose}\0{body}".encode(), "sha256").hexdigest()
