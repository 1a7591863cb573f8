"""Mail through an SMTP relay: STARTTLS, optional AUTH, every step bounded, errors mapped.

The standard library's smtplib does the protocol; it blocks, so a send runs in a worker
thread, bounded by the socket timeout on every read and write (and by the action's
timeout around it). Nothing here logs the password or the message body.

    cannot connect, refused before anything was sent  → NotSent (safe to retry)
    TLS or authentication refused                      → PermanentError (fix the config)
    every recipient refused, sender refused            → PermanentError
    a timeout or a broken connection after DATA began  → TemporaryError: the relay may
                                                         have taken it; not retried by
                                                         the engine (notify.email is not
                                                         idempotent)
"""

from __future__ import annotations

import asyncio
import dataclasses
import smtplib
import socket
import ssl
from email.message import EmailMessage
from pathlib import Path

from remediator import errors


@dataclasses.dataclass(frozen=True, slots=True)
class Relay:
    """Where and how to hand mail over (the `notify.email` config)."""

    host: str
    port: int = 587
    starttls: bool = True
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    timeout: float = 10.0


async def send(relay: Relay, message: EmailMessage, *, what: str) -> list[str]:
    """Send `message`; returns the recipients the relay refused (the others took it)."""
    return await asyncio.to_thread(_send, relay, message, what)


def _send(relay: Relay, message: EmailMessage, what: str) -> list[str]:
    where = f"{what}: SMTP relay {relay.host}:{relay.port}"
    started_data = False
    try:
        with smtplib.SMTP(relay.host, relay.port, timeout=relay.timeout) as smtp:
            smtp.ehlo()
            if relay.starttls:
                context = ssl.create_default_context(
                    cafile=str(relay.ca_file) if relay.ca_file else None
                )
                smtp.starttls(context=context)
                smtp.ehlo()
            if relay.username is not None:
                smtp.login(relay.username, relay.password or "")
            started_data = True
            refused = smtp.send_message(message)
    except (ConnectionRefusedError, socket.gaierror, smtplib.SMTPConnectError) as exc:
        raise errors.NotSent(f"{where}: cannot connect ({type(exc).__name__})") from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise errors.PermanentError(
            f"{where}: the relay does not offer STARTTLS; never sent in clear "
            "(notify.email.starttls)"
        ) from exc
    except ssl.SSLError as exc:
        raise errors.PermanentError(
            f"{where}: TLS failed ({exc.reason or exc}); check the relay's certificate or "
            "notify.email.ca_file"
        ) from exc
    except smtplib.SMTPAuthenticationError as exc:
        raise errors.PermanentError(
            f"{where}: authentication refused ({exc.smtp_code}); check the credentials in "
            "notify.email.username_env / password_env"
        ) from exc
    except smtplib.SMTPRecipientsRefused as exc:
        refused_all = ", ".join(sorted(exc.recipients))
        raise errors.PermanentError(f"{where}: every recipient refused: {refused_all}") from exc
    except smtplib.SMTPSenderRefused as exc:
        raise errors.PermanentError(
            f"{where}: sender {exc.sender} refused ({exc.smtp_code}); check notify.email.from"
        ) from exc
    except smtplib.SMTPResponseException as exc:
        if 400 <= exc.smtp_code < 500 and not started_data:
            raise errors.NotSent(f"{where}: temporarily refused ({exc.smtp_code})") from exc
        raise errors.PermanentError(f"{where}: refused ({exc.smtp_code})") from exc
    except (TimeoutError, OSError, smtplib.SMTPException) as exc:
        if not started_data:
            raise errors.NotSent(f"{where}: {type(exc).__name__} before sending") from exc
        raise errors.TemporaryError(
            f"{where}: {type(exc).__name__} while sending: the relay may have taken it"
        ) from exc
    return sorted(refused)
